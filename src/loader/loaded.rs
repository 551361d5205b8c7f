//! What a load hands the caller: the module with the engine that holds its
//! code ([`LoadedModule`]), and how it was answered ([`Served`]).

use std::{fmt, sync::Arc};

use wasmer::{Engine, Module, Store};

use super::generations::EngineGeneration;
use crate::cache::TierName;

/// How a load was answered: what [`LoadedModule::served`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Served {
    /// At once, by a tier that answers synchronously (the memory tier):
    /// the caller's lookup was a memory hit.
    Memory,
    /// By a tier's lookup after the memory tier's synchronous answer
    /// missed: the tier that held the module, when it is named
    /// (instrumented). That lookup asks the memory tier again, so this is
    /// the memory tier when an engine switch completed in between.
    Tier(Option<TierName>),
    /// By waiting for another caller's load of the same module (the memory
    /// tier missed; `tierscope_coalesced_total` counts these).
    Coalesced,
    /// By compiling the wasm: every tier missed, or failed.
    Compiled,
}

/// A module together with the engine that holds its machine code.
///
/// Build stores with [`LoadedModule::store`] (or from
/// [`LoadedModule::engine`]): a store of any other engine must not
/// instantiate it. Holding a `LoadedModule` (or any clone) keeps its
/// engine generation alive, so the code stays valid even after the loader
/// has moved on to a newer generation. It dereferences to the [`Module`].
#[derive(Clone)]
pub struct LoadedModule {
    module: Module,
    generation: Arc<EngineGeneration>,
    served: Served,
}

impl LoadedModule {
    pub(crate) fn new(module: Module, generation: Arc<EngineGeneration>, served: Served) -> Self {
        LoadedModule {
            module,
            generation,
            served,
        }
    }

    /// How this load was answered: a memory hit, a lower tier, another
    /// caller's load, or a compile. The tiers' metrics count the same
    /// events: `Memory`, or `Tier` naming the memory tier, is a `hit` of
    /// the memory tier's `tierscope_lookups_total`, anything else one of
    /// its misses.
    pub fn served(&self) -> Served {
        self.served
    }

    /// The module.
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// The engine that holds the module's code: build every store that
    /// instantiates this module from it.
    pub fn engine(&self) -> &Engine {
        self.generation.engine()
    }

    /// A new store of the module's engine.
    pub fn store(&self) -> Store {
        Store::new(self.generation.engine().clone())
    }

    /// The engine generation the module belongs to.
    pub fn generation(&self) -> &EngineGeneration {
        &self.generation
    }

    /// The module and its engine. The module's code lives as long as the
    /// engine (or a store built from it) does.
    pub fn into_parts(self) -> (Module, Engine) {
        (self.module, self.generation.engine().clone())
    }
}

impl std::ops::Deref for LoadedModule {
    type Target = Module;
    fn deref(&self) -> &Module {
        &self.module
    }
}

impl AsRef<Module> for LoadedModule {
    fn as_ref(&self) -> &Module {
        &self.module
    }
}

impl fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedModule")
            .field("module", &self.module.name())
            .field("generation", &self.generation.number())
            .field("served", &self.served)
            .finish()
    }
}
