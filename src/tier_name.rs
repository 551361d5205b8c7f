//! [`TierName`]: the interned name of one tier, as metrics and errors
//! spell it.
//!
//! The interner is one of the crate's process-wide tables: it holds each
//! distinct name once for the life of the process. Names come from
//! configuration (`.instrumented(cache, tier)`), so there are few; the
//! table is not bounded by count, and a program that made names from
//! untrusted input would grow it (do not). The first
//! [`TierName::MAX_IDS`] distinct names also get a small number, so that a
//! [`crate::Hit`] can carry its tier's name in part of one word; a hit
//! from a tier named after those says no tier ([`crate::Hit::tier`]).

/// The user's name for one tier (e.g. `memory`, `disk`, `redis`).
///
/// Interned: each distinct name is stored once for the life of the process
/// (names come from configuration, so there are few), which makes a
/// `TierName` a copyable pointer. A memory hit carries one without touching
/// a reference count.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TierName(&'static str, u16);

/// The names that have a number, by number (0 is no name).
static BY_ID: [std::sync::OnceLock<TierName>; TierName::MAX_IDS as usize + 1] =
    [const { std::sync::OnceLock::new() }; TierName::MAX_IDS as usize + 1];

impl TierName {
    /// How many distinct names get a number: a [`crate::Hit`] names its
    /// tier by that number, and a hit from a tier named after the first
    /// `MAX_IDS` names says no tier.
    pub const MAX_IDS: u16 = 1023;

    /// The interned name for `name`.
    pub fn intern(name: &str) -> TierName {
        static NAMES: std::sync::OnceLock<
            parking_lot::Mutex<std::collections::HashMap<&'static str, TierName>>,
        > = std::sync::OnceLock::new();
        let mut names = NAMES.get_or_init(Default::default).lock();
        if let Some(known) = names.get(name) {
            return *known;
        }
        let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
        // Numbers are handed out under the lock, in order: 1, 2, ...
        let id = u16::try_from(names.len() + 1)
            .ok()
            .filter(|id| *id <= Self::MAX_IDS)
            .unwrap_or(0);
        let interned = TierName(leaked, id);
        if id != 0 {
            // Each number is set once, under the lock: this cannot fail.
            let _ = BY_ID[usize::from(id)].set(interned);
        }
        names.insert(leaked, interned);
        interned
    }

    /// The name.
    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// This name's number (1 to [`Self::MAX_IDS`]), or 0 for a name
    /// interned after the numbers ran out.
    pub(crate) fn id(self) -> u16 {
        self.1
    }

    /// The name numbered `id`, if any.
    pub(crate) fn from_id(id: u16) -> Option<TierName> {
        BY_ID.get(usize::from(id))?.get().copied()
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
