//! Flights: one load or compile per module and engine, however many
//! callers ask at once; the leader's work runs in a task of its own.

use std::sync::{Arc, atomic::Ordering};

use futures::FutureExt;
use parking_lot::Mutex;
use tracing::Instrument as _;
use wasmer::{Engine, EngineId, Module};
use wasmer_types::ModuleHash;

use super::*;
use crate::{
    cache::{Control, Lookup},
    engine::{engine_key, note_code_loaded},
    weights,
};

/// What answers a flight's callers.
type Answer = futures::channel::oneshot::Sender<Result<(Module, Served), LoadError>>;

impl<C> ModuleLoader<C>
where
    C: ModuleCache + Send + Sync + 'static,
{
    /// Load or compile `key` into `engine` once, however many callers ask
    /// meanwhile: the first leads (in a task of its own), the others wait
    /// for its answer. Each caller's `load_now` has missed already.
    pub(super) async fn flight(
        &self,
        engine: &Engine,
        key: ModuleHash,
        wasm: Box<dyn FnOnce() -> bytes::Bytes + Send>,
        generation: Option<Arc<EngineGeneration>>,
    ) -> Result<(Module, Served), LoadError> {
        let slot = (key, engine.id());
        // Join the flight in progress, or start one (the map's lock is
        // released before any wait).
        let joined = {
            let mut inflight = self.inner.inflight.lock();
            match inflight.get(&slot) {
                Some((_, flight)) => Ok(flight.clone()),
                None => {
                    let (id, flight, tx) = self.inner.new_flight(key);
                    inflight.insert(slot, (id, flight.clone()));
                    Err((flight, (id, tx)))
                }
            }
        };
        let (flight, work) = match joined {
            Ok(flight) => {
                // This caller's memory miss, which no lookup of its own
                // will count.
                self.inner.cache.control(&mut Control::Missed(engine, key));
                self.inner.coalesced.increment(1);
                return flight.await.map(|(module, _)| (module, Served::Coalesced));
            }
            Err(lead) => lead,
        };
        // Spawned after the map's lock is released: a runtime that is
        // shutting down drops the task at once, and its guard takes the lock.
        let (id, tx) = work;
        let inner = Arc::clone(&self.inner);
        let engine = engine.clone();
        let span = tracing::debug_span!("tierscope.load_into", cache = %self.inner.name, %key);
        // The work runs in its own task: a cancelled caller never strands
        // the others. Waiters are answered as soon as the module exists;
        // the save happens after.
        tokio::spawn(
            async move {
                // Removes this flight (and only this one) from the map
                // however the task ends: answered, panicked, or dropped by a
                // runtime shutting down.
                let guard = FlightGuard {
                    inflight: &inner.inflight,
                    slot,
                    id,
                };
                let (result, compiled) = inner.lead(key, &engine, wasm).await;
                match compiled {
                    Some((module, wasm_len)) => {
                        // Callers arriving during the save join this flight
                        // and get the module at once.
                        let _ = tx.send(result);
                        inner.save(key, &engine, &module).await;
                        let bytes = weights::lookup(key, engine_key(&engine)).unwrap_or(wasm_len);
                        note_code_loaded(&engine, bytes);
                        drop(guard);
                    }
                    None => {
                        // Nothing to save: remove the flight first, so a
                        // caller arriving after the answer starts afresh (an
                        // error is never cached).
                        drop(guard);
                        let _ = tx.send(result);
                    }
                }
                // Off every caller's path: a switch it causes reloads in a
                // task of its own.
                Inner::after_load(&inner, generation.as_ref());
            }
            .instrument(span),
        );
        flight.await
    }
}

/// Removes one flight from the in-flight map when dropped, if the entry
/// is still that flight.
struct FlightGuard<'a> {
    inflight: &'a Mutex<InFlight>,
    slot: (ModuleHash, EngineId),
    id: u64,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut inflight = self.inflight.lock();
        if inflight
            .get(&self.slot)
            .is_some_and(|(id, _)| *id == self.id)
        {
            inflight.remove(&self.slot);
        }
    }
}

impl<C> Inner<C> {
    /// A new flight for `key`: its id, its shared answer, and the sender
    /// that answers it (a dropped sender answers [`LoadError::Task`]).
    fn new_flight(&self, key: ModuleHash) -> (u64, Flight, Answer) {
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = futures::channel::oneshot::channel();
        let flight = rx
            .map(move |received| {
                received.unwrap_or_else(|_| {
                    Err(LoadError::Task {
                        key,
                        reason:
                            "the loading task ended without an answer (panic or runtime shutdown)"
                                .into(),
                    })
                })
            })
            .boxed()
            .shared();
        (id, flight, tx)
    }
}

impl<C: ModuleCache + Send + Sync + 'static> Inner<C> {
    async fn lead(
        &self,
        key: ModuleHash,
        engine: &Engine,
        wasm: Box<dyn FnOnce() -> bytes::Bytes + Send>,
    ) -> (Result<(Module, Served), LoadError>, Option<(Module, u64)>) {
        // The caller's `load_now` missed; this lookup asks again and counts
        // that miss once.
        match self.cache.lookup(key, engine, Lookup::request()).await {
            Ok(hit) => {
                let served = Served::Tier(hit.tier());
                return (Ok((hit.module, served)), None);
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::debug!(
                %key,
                error = &e as &dyn std::error::Error,
                "cache failed; compiling instead",
            ),
        }
        let compile_engine = engine.clone();
        let start = quanta::Instant::now();
        let compiled = tokio::task::spawn_blocking(move || {
            let wasm = wasm();
            Module::new(&compile_engine, &wasm).map(|m| (m, wasm.len() as u64))
        })
        .await;
        let elapsed = start.elapsed().as_secs_f64();
        let (module, wasm_len) = match compiled {
            Ok(Ok(compiled)) => {
                self.compiled_ok.increment(1);
                self.compile_duration.record(elapsed);
                compiled
            }
            Ok(Err(e)) => {
                self.compiled_err.increment(1);
                let error = LoadError::Compile {
                    key,
                    source: Arc::new(e),
                };
                return (Err(error), None);
            }
            Err(e) => {
                self.compiled_err.increment(1);
                let error = LoadError::Task {
                    key,
                    reason: e.to_string(),
                };
                return (Err(error), None);
            }
        };
        (
            Ok((module.clone(), Served::Compiled)),
            Some((module, wasm_len)),
        )
    }

    /// Save a freshly compiled module; a failure is logged (and counted by
    /// the tiers' spies), never fatal.
    async fn save(&self, key: ModuleHash, engine: &Engine, module: &Module) {
        if let Err(e) = self.cache.save(key, engine, module).await {
            tracing::warn!(
                %key,
                error = &e as &dyn std::error::Error,
                "compiled module could not be saved in every tier",
            );
        }
    }
}
