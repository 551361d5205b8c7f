//! A program that traps and one that calls `proc_exit(45)` end with the
//! same exit code in wasix (a trap becomes `ENOEXEC`, 45); only the
//! runtime's taint callback tells them apart. [`Watched`] is the runtime
//! `run` gives wasix: everything is the inner runtime's, and a trap is
//! remembered.

use std::sync::Arc;

use parking_lot::Mutex;
use wasmer::{Engine, Module};
use wasmer_wasix::{
    Runtime,
    http::DynHttpClient,
    os::TtyBridge,
    runtime::{
        InstantiationState, TaintReason, module_cache::ModuleCache, package_loader::PackageLoader,
        resolver::Source, task_manager::VirtualTaskManager,
    },
    virtual_net::DynVirtualNetworking,
};

/// A runtime that remembers the program's trap.
#[derive(Debug)]
pub struct Watched {
    inner: Arc<dyn Runtime + Send + Sync>,
    trap: Mutex<Option<String>>,
}

impl Watched {
    pub fn new(inner: Arc<dyn Runtime + Send + Sync>) -> Self {
        Watched {
            inner,
            trap: Mutex::new(None),
        }
    }

    /// The message of the first trap, if the program trapped.
    pub fn trap(&self) -> Option<String> {
        self.trap.lock().clone()
    }
}

impl Runtime for Watched {
    fn networking(&self) -> &DynVirtualNetworking {
        self.inner.networking()
    }

    fn task_manager(&self) -> &Arc<dyn VirtualTaskManager> {
        self.inner.task_manager()
    }

    fn package_loader(&self) -> Arc<dyn PackageLoader + Send + Sync> {
        self.inner.package_loader()
    }

    fn module_cache(&self) -> Arc<dyn ModuleCache + Send + Sync> {
        self.inner.module_cache()
    }

    fn source(&self) -> Arc<dyn Source + Send + Sync> {
        self.inner.source()
    }

    fn engine(&self) -> Engine {
        self.inner.engine()
    }

    fn new_store(&self) -> wasmer::Store {
        self.inner.new_store()
    }

    fn additional_imports(
        &self,
        module: &Module,
        store: &mut wasmer::StoreMut,
    ) -> anyhow::Result<(wasmer::Imports, InstantiationState)> {
        self.inner.additional_imports(module, store)
    }

    fn prepare_imports(
        &self,
        module: &Module,
        store: &mut wasmer::StoreMut,
        imports: &mut wasmer::Imports,
    ) -> anyhow::Result<InstantiationState> {
        self.inner.prepare_imports(module, store, imports)
    }

    fn configure_new_instance(
        &self,
        module: &Module,
        store: &mut wasmer::StoreMut,
        instance: &wasmer::Instance,
        imported_memory: Option<&wasmer::Memory>,
        state: InstantiationState,
    ) -> anyhow::Result<()> {
        self.inner
            .configure_new_instance(module, store, instance, imported_memory, state)
    }

    fn http_client(&self) -> Option<&DynHttpClient> {
        self.inner.http_client()
    }

    fn tty(&self) -> Option<&(dyn TtyBridge + Send + Sync)> {
        self.inner.tty()
    }

    fn on_taint(&self, reason: TaintReason) {
        if let TaintReason::RuntimeError(e) = &reason {
            self.trap.lock().get_or_insert_with(|| e.message());
        }
        self.inner.on_taint(reason);
    }
}
