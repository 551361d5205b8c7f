//! The shared remote tier on Redis (work in progress).
