//! The model standing for one sized tier, by the tier's policy: memory
//! shadows (alone or feeding the tier below), a byte-bounded LRU, or
//! nothing for an unbounded tier (its working set is counted apart).

use crate::sizing::{Curve, Request, lru::LruModel, memory::MemoryModel, stack::StackModel};

/// One tier's model.
pub(super) enum Model {
    /// A memory tier with a bounded tier below: memory shadows feeding an
    /// LRU of that tier's capacity (gives the compile projection too).
    Stack(Box<StackModel>, u64),
    /// A memory tier alone.
    Memory(Box<MemoryModel>),
    /// A byte-bounded LRU tier (disk).
    Lru(Box<LruModel>),
    /// An unbounded tier: working set only.
    Unbounded,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Model::Stack(..) => "Stack",
            Model::Memory(_) => "Memory",
            Model::Lru(_) => "Lru",
            Model::Unbounded => "Unbounded",
        })
    }
}

impl Model {
    pub(super) fn access(&mut self, req: &Request) {
        match self {
            Model::Stack(m, _) => m.access(req),
            Model::Memory(m) => m.access(req),
            Model::Lru(m) => m.access(req),
            Model::Unbounded => {}
        }
    }

    /// The tier's entries were inserted again, fresh, in `order` (mixed
    /// model keys): memory shadows do the same; other models ignore it.
    pub(super) fn reinsert(&mut self, order: &[u64], capacity: u64) {
        match self {
            Model::Stack(m, _) => m.reinsert(order, capacity),
            Model::Memory(m) => m.reinsert(order, capacity),
            Model::Lru(_) | Model::Unbounded => {}
        }
    }

    pub(super) fn curve(&self) -> Option<Curve> {
        match self {
            Model::Stack(m, _) => Some(m.memory_curve()),
            Model::Memory(m) => Some(m.curve()),
            Model::Lru(m) => Some(m.curve()),
            Model::Unbounded => None,
        }
    }
}
