//! Engine switches: when a generation's evicted code passes the budget, a
//! task of its own loads what the memory tier holds into a fresh engine
//! while the old one serves, then hands the memory tier over.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Weak},
};

use futures::StreamExt;
use tracing::Instrument as _;
use wasmer::Module;
use wasmer_types::ModuleHash;

use super::{generations::SwitchGuard, *};
use crate::cache::{Control, Lookup, Origin, TierName, engine_entries, forget_engine};

/// How many modules an engine switch loads into the next engine at once.
const RELOAD_CONCURRENCY: usize = 2;

/// Passes an engine switch makes over the memory tier's entries: each picks
/// up what callers loaded into the old engine during the one before.
const RELOAD_PASSES: usize = 4;

impl<C: ModuleCache + Send + Sync + 'static> Inner<C> {
    /// After a flight of `generation`: if its evicted code passed the
    /// budget, start the switch to a fresh engine in a task of its own
    /// ([`Inner::switch`]; no caller waits for it); drop in-process entries
    /// a flight of a retired generation saved after its switch.
    pub(super) fn after_load(this: &Arc<Self>, generation: Option<&Arc<EngineGeneration>>) {
        let Some(generation) = generation else {
            return;
        };
        if let Some(guard) = this.generations.should_switch(generation) {
            let (weak, old) = (Arc::downgrade(this), Arc::clone(generation));
            let span = tracing::debug_span!("tierscope.engine_switch", cache = %this.name);
            tokio::spawn(Inner::switch(weak, guard, old).instrument(span));
        } else if generation.is_retired() {
            forget_engine(&this.cache, generation.engine());
        }
        this.generations.refresh();
    }

    /// Switch from `old` to a fresh engine without making callers wait or
    /// miss: load what the memory tier holds for `old` into the next
    /// engine from the tiers below, as reloads (counted in
    /// `tierscope_reloads_total`, not as callers' lookups), at most
    /// [`RELOAD_CONCURRENCY`] at a time, while `old` goes on serving; then
    /// make the next generation current, drop `old`'s entries from the
    /// memory tier and put the reloaded modules in their place. Later
    /// passes (at most [`RELOAD_PASSES`]) pick up what callers loaded into
    /// `old` during the one before. Gives the switch up if the loader goes
    /// away.
    async fn switch(this: Weak<Self>, guard: SwitchGuard, old: Arc<EngineGeneration>) {
        let Some(next) = this.upgrade().map(|inner| inner.generations.prepare()) else {
            return;
        };
        let mut staged: HashMap<ModuleHash, (Module, Option<TierName>)> = HashMap::new();
        let mut asked: HashSet<ModuleHash> = HashSet::new();
        for _pass in 0..RELOAD_PASSES {
            let Some(inner) = this.upgrade() else {
                return;
            };
            let keys: Vec<ModuleHash> = engine_entries(&inner.cache, old.engine())
                .into_iter()
                .filter(|k| asked.insert(*k))
                .collect();
            if keys.is_empty() {
                break;
            }
            let engine = next.engine();
            let cache = &inner.cache;
            let loaded: Vec<_> = futures::stream::iter(keys)
                .map(|key| async move { (key, cache.lookup(key, engine, Lookup::reload()).await) })
                .buffer_unordered(RELOAD_CONCURRENCY)
                .collect()
                .await;
            for (key, result) in loaded {
                match result {
                    Ok(hit) => {
                        let from = hit.tier();
                        staged.insert(key, (hit.module, from));
                    }
                    Err(e) => tracing::debug!(
                        %key,
                        error = &e as &dyn std::error::Error,
                        "an engine switch could not reload a module; its next request loads it",
                    ),
                }
            }
        }
        let Some(inner) = this.upgrade() else {
            return;
        };
        // What the memory tier holds for `old` at the switch, longest held
        // first: the next engine gets exactly that (what it reloaded of
        // it), so the tier's contents, and live sizing's shadows of them,
        // carry across. Inserted shortest held first, so that the tier's
        // next evictions take those before the long-held ones.
        let held = engine_entries(&inner.cache, old.engine());
        let Some(retired) = inner.generations.switch_to(guard, Arc::clone(&next)) else {
            return;
        };
        forget_engine(&inner.cache, retired.engine());
        let engine = next.engine();
        let mut reloaded = Vec::with_capacity(staged.len());
        for key in held.iter().rev() {
            let Some((module, from)) = staged.remove(key) else {
                continue;
            };
            let origin = Origin::Promotion {
                from,
                lookup: Lookup::reload(),
            };
            match inner.cache.store(*key, engine, &module, origin).await {
                Ok(()) => reloaded.push(*key),
                Err(e) => tracing::debug!(
                    %key,
                    error = &e as &dyn std::error::Error,
                    "a reloaded module could not be stored",
                ),
            }
        }
        inner
            .cache
            .control(&mut Control::Reinserted(engine, &reloaded));
        tracing::debug!(
            generation = next.number(),
            reloaded = reloaded.len(),
            held = held.len(),
            "engine switch done"
        );
        inner.generations.refresh();
    }
}
