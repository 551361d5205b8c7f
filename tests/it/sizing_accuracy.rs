//! Sampled curves against exact ones on generated traces.
