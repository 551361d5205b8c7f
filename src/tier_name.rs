//! [`TierName`]: the interned name of one tier, as metrics and errors
//! spell it.
//!
//! The interner is one of the crate's process-wide tables: it holds each
//! distinct name once for the life of the process. Names come from
//! configuration (`.instrumented(cache, tier)`), so there are few; the
//! table is not bounded by count, and a program that made names from
//! untrusted input would grow it (do not).

/// The user's name for one tier (e.g. `memory`, `disk`, `redis`).
///
/// Interned: each distinct name is stored once for the life of the process
/// (names come from configuration, so there are few), which makes a
/// `TierName` a copyable pointer. A memory hit carries one without touching
/// a reference count.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TierName(&'static str);

impl TierName {
    /// The interned name for `name`.
    pub fn intern(name: &str) -> TierName {
        static NAMES: std::sync::OnceLock<
            parking_lot::Mutex<std::collections::HashSet<&'static str>>,
        > = std::sync::OnceLock::new();
        let mut names = NAMES.get_or_init(Default::default).lock();
        if let Some(known) = names.get(name) {
            return TierName(known);
        }
        let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
        names.insert(leaked);
        TierName(leaked)
    }

    /// The name.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl std::ops::Deref for TierName {
    type Target = str;
    fn deref(&self) -> &str {
        self.0
    }
}

impl std::fmt::Display for TierName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::fmt::Debug for TierName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.0, f)
    }
}

impl PartialEq<str> for TierName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for TierName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl From<&str> for TierName {
    /// Interns `name` (see [`TierName::intern`]).
    fn from(name: &str) -> TierName {
        TierName::intern(name)
    }
}
