//! What the hit path writes, for the metrics and for live sizing alike: a
//! leaf both the spy ([`crate::observe`]) and live sizing
//! ([`crate::sizing::live`]) build on, so that neither needs the other.
//!
//! - [`counters`]: each instrumented tier's per-thread hit counts, published
//!   to its metric handles on [`crate::observe::flush`], and the rings of
//!   sizing events kept beside them;
//! - [`ring`]: the fixed per-thread rings of sizing events and the event
//!   type.

pub(crate) mod counters;
pub(crate) mod ring;
