//! tierscope inside a wasmer-wasix runtime: real WASI programs (written in
//! WAT) run through `PluggableRuntime` with instrumented tierscope stacks,
//! and wasix's own `SharedCache` as a tierscope tier.

use crate::common;

use std::{
    fs,
    path::Path,
    sync::{Arc, Mutex},
};

use common::snapshot::{counter, take};
use metrics_util::debugging::{DebuggingRecorder, Snapshotter};
use tierscope::{
    CacheErrorKind, FileSystemCache, InstrumentExt, MemoryCache, ModuleCache, ModuleHash, entry,
    wasix::{LoadEvent, WasixCache, WasixTier, runtime_with_engine},
};
use wasmer::Engine;
use wasmer_wasix::{
    Pipe, PluggableRuntime,
    runners::wasi::{RuntimeOrEngine, WasiRunner},
    runtime::{
        Runtime,
        module_cache::{
            HashedModuleData, ModuleCache as WasixModuleCache, SharedCache,
            progress::{ModuleLoadProgress, ModuleLoadProgressReporter},
        },
    },
};

use common::WASI_HELLO_WAT as HELLO;

const OUTPUT: &str = "hello from wasix\n";

fn hello() -> Vec<u8> {
    wat::parse_str(HELLO).unwrap()
}

/// A tokio runtime for the task manager; programs run from the test
/// thread (wasix blocks on them), inside its context.
fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Load `wasm` through the runtime's module cache (as a runtime does),
/// run it as a WASI program and return what it printed.
fn run(runtime: &Arc<PluggableRuntime>, wasm: &[u8]) -> String {
    let data = HashedModuleData::new(wasm.to_vec());
    let module = runtime
        .load_hashed_module_sync(data.clone(), None)
        .expect("module loads");
    let (stdout, mut out) = Pipe::channel();
    let mut runner = WasiRunner::new();
    runner.with_stdout(Box::new(stdout));
    runner
        .run_wasm(
            RuntimeOrEngine::Runtime(runtime.clone()),
            "hello",
            module,
            *data.hash(),
        )
        .expect("the program runs");
    drop(runner);
    let mut printed = Vec::new();
    let mut buf = [0u8; 256];
    while let Some(n) = out.try_read(&mut buf) {
        if n == 0 {
            break;
        }
        printed.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(printed).unwrap()
}

type Events = Arc<Mutex<Vec<LoadEvent>>>;

/// An instrumented memory -> disk stack on `dir` in a wasix runtime with a
/// fresh engine; counters go to a new `DebuggingRecorder`.
fn stack_runtime(
    tokio: &tokio::runtime::Runtime,
    name: &str,
    dir: &Path,
) -> (Arc<PluggableRuntime>, FileSystemCache, Snapshotter, Events) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let disk = FileSystemCache::open(dir, 1 << 30).unwrap();
    let events: Events = Arc::default();
    let seen = events.clone();
    let cache = metrics::with_local_recorder(&recorder, || {
        let stack = MemoryCache::new(64 << 20)
            .instrumented(name, "memory")
            .with_fallback(disk.clone().instrumented(name, "disk"));
        WasixCache::new(name, stack).on_load(move |_, e| seen.lock().unwrap().push(e.clone()))
    });
    let runtime = runtime_with_engine(tokio.handle().clone(), Engine::default(), cache);
    (Arc::new(runtime), disk, snapshotter, events)
}

fn lookups(snap: &common::snapshot::Snapshot, tier: &str, result: &str) -> u64 {
    counter(
        snap,
        "tierscope_lookups_total",
        &[("tier", tier), ("result", result)],
    )
}

#[test]
fn a_wasi_program_runs_through_an_instrumented_stack_then_hits_memory_then_disk() {
    let tokio = tokio();
    let _context = tokio.enter();
    let dir = tempfile::tempdir().unwrap();
    let wasm = hello();

    let (runtime, _disk, snap, _) = stack_runtime(&tokio, "wasix-run", dir.path());
    assert_eq!(run(&runtime, &wasm), OUTPUT);
    let s = take(&snap);
    assert_eq!(
        counter(&s, "tierscope_compilations_total", &[("result", "ok")]),
        1
    );
    assert_eq!(lookups(&s, "memory", "miss"), 1);
    assert_eq!(lookups(&s, "disk", "miss"), 1);
    for tier in ["memory", "disk"] {
        assert_eq!(
            counter(
                &s,
                "tierscope_saves_total",
                &[("tier", tier), ("result", "ok")]
            ),
            1,
            "{tier}"
        );
    }

    // The same runtime again: a memory hit, no compile, disk untouched
    // (the debugging recorder's snapshots drain counters).
    assert_eq!(run(&runtime, &wasm), OUTPUT);
    let s = take(&snap);
    assert_eq!(
        counter(&s, "tierscope_compilations_total", &[("result", "ok")]),
        0
    );
    assert_eq!(lookups(&s, "memory", "hit"), 1);
    assert_eq!(lookups(&s, "memory", "miss"), 0);
    assert_eq!(lookups(&s, "disk", "hit") + lookups(&s, "disk", "miss"), 0);
    drop(runtime);

    // A fresh runtime (new engine, empty memory) on the same directory: a
    // disk hit, promoted into memory, zero compilations.
    let (runtime, _disk, snap, events) = stack_runtime(&tokio, "wasix-run", dir.path());
    assert_eq!(run(&runtime, &wasm), OUTPUT);
    let s = take(&snap);
    assert_eq!(
        counter(&s, "tierscope_compilations_total", &[("result", "ok")]),
        0
    );
    assert_eq!(lookups(&s, "memory", "miss"), 1);
    assert_eq!(lookups(&s, "disk", "hit"), 1);
    assert_eq!(
        counter(
            &s,
            "tierscope_promotions_total",
            &[("from", "disk"), ("to", "memory"), ("result", "ok")]
        ),
        1
    );
    let events = events.lock().unwrap();
    assert!(
        matches!(&events[..], [LoadEvent::Hit { tier: Some(t) }] if t.as_str() == "disk"),
        "{events:?}"
    );
}

#[test]
fn a_corrupt_disk_entry_is_counted_never_deserialized_and_the_program_still_runs() {
    let tokio = tokio();
    let _context = tokio.enter();
    let dir = tempfile::tempdir().unwrap();
    let wasm = hello();
    let key = ModuleHash::new(&wasm);

    let (runtime, disk, _, _) = stack_runtime(&tokio, "wasix-corrupt", dir.path());
    assert_eq!(run(&runtime, &wasm), OUTPUT);
    let engine = runtime.engine();
    let path = disk.entry_path(key, &engine);
    let mut bytes = fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs::write(&path, &bytes).unwrap();
    drop(runtime);

    let (runtime, _disk, snap, events) = stack_runtime(&tokio, "wasix-corrupt", dir.path());
    assert_eq!(run(&runtime, &wasm), OUTPUT, "recompiled and run");
    let s = take(&snap);
    assert_eq!(
        counter(
            &s,
            "tierscope_errors_total",
            &[("tier", "disk"), ("op", "load"), ("kind", "corrupt")]
        ),
        1
    );
    // Refused before wasmer's deserializer: no deserialize error, no hit.
    assert_eq!(
        counter(
            &s,
            "tierscope_errors_total",
            &[("tier", "disk"), ("op", "load"), ("kind", "deserialize")]
        ),
        0
    );
    assert_eq!(lookups(&s, "disk", "hit"), 0);
    assert_eq!(
        counter(&s, "tierscope_compilations_total", &[("result", "ok")]),
        1
    );
    assert_eq!(
        counter(
            &s,
            "tierscope_evictions_total",
            &[("tier", "disk"), ("cause", "corrupt")]
        ),
        1
    );
    {
        let events = events.lock().unwrap();
        assert!(
            matches!(
                &events[..],
                [LoadEvent::Error { kind: CacheErrorKind::Corrupt, message }, LoadEvent::Compiled]
                    if message.contains("checksum")
            ),
            "{events:?}"
        );
    }
    // The runtime's save rewrote a good entry.
    let engine = runtime.engine();
    let rewritten = fs::read(&path).unwrap();
    entry::decode(&rewritten, &key, &tierscope::engine::ident_of(&engine)).unwrap();
}

#[test]
fn wasix_shared_cache_as_a_tier_in_front_of_disk_promotes_and_saves_to_both() {
    let tokio = tokio();
    let _context = tokio.enter();
    let dir = tempfile::tempdir().unwrap();
    let wasm = hello();
    let key = ModuleHash::new(&wasm);

    // One SharedCache per runtime (engine): wasix keys it by configuration.
    let build = || {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        // wasix's `SharedCache::clone` copies the map: share it through an Arc.
        let shared = Arc::new(SharedCache::default());
        let cache = metrics::with_local_recorder(&recorder, || {
            let stack = WasixTier::new(shared.clone())
                .instrumented("wasix-shared", "shared")
                .with_fallback(
                    FileSystemCache::open(dir.path(), 1 << 30)
                        .unwrap()
                        .instrumented("wasix-shared", "disk"),
                );
            WasixCache::new("wasix-shared", stack)
        });
        let runtime = runtime_with_engine(tokio.handle().clone(), Engine::default(), cache);
        (Arc::new(runtime), shared, snapshotter)
    };

    let (runtime, shared, snap) = build();
    assert_eq!(run(&runtime, &wasm), OUTPUT);
    let s = take(&snap);
    assert_eq!(
        counter(&s, "tierscope_compilations_total", &[("result", "ok")]),
        1
    );
    for tier in ["shared", "disk"] {
        assert_eq!(lookups(&s, tier, "miss"), 1, "{tier}");
        assert_eq!(
            counter(
                &s,
                "tierscope_saves_total",
                &[("tier", tier), ("result", "ok")]
            ),
            1,
            "saved to both: {tier}"
        );
    }
    let engine = runtime.engine();
    assert!(
        tokio
            .block_on(WasixModuleCache::contains(&*shared, key, &engine))
            .unwrap()
    );
    drop(runtime);

    // A fresh runtime and SharedCache over the same disk: a disk hit,
    // promoted into wasix's cache, then served by it.
    let (runtime, shared, snap) = build();
    assert_eq!(run(&runtime, &wasm), OUTPUT);
    let s = take(&snap);
    assert_eq!(
        counter(&s, "tierscope_compilations_total", &[("result", "ok")]),
        0
    );
    assert_eq!(lookups(&s, "shared", "miss"), 1);
    assert_eq!(lookups(&s, "disk", "hit"), 1);
    assert_eq!(
        counter(
            &s,
            "tierscope_promotions_total",
            &[("from", "disk"), ("to", "shared"), ("result", "ok")]
        ),
        1
    );
    let engine = runtime.engine();
    assert!(
        tokio
            .block_on(WasixModuleCache::contains(&*shared, key, &engine))
            .unwrap()
    );
    assert_eq!(run(&runtime, &wasm), OUTPUT);
    let s = take(&snap);
    // Served by wasix's cache: the disk tier saw nothing this time (the
    // debugging recorder's snapshots drain counters, and hits are published
    // as increments).
    assert_eq!(lookups(&s, "shared", "hit"), 1);
    assert_eq!(
        (lookups(&s, "disk", "hit"), lookups(&s, "disk", "miss")),
        (0, 0)
    );
}

#[test]
fn the_adapter_takes_arc_dyn_stacks_and_load_with_progress_keeps_the_load() {
    let tokio = tokio();
    let engine = Engine::default();
    let wasm = hello();
    let key = ModuleHash::new(&wasm);
    let module = wasmer::Module::new(&engine, &wasm).unwrap();
    let dyn_stack: Arc<dyn ModuleCache + Send + Sync> = Arc::new(MemoryCache::new(1 << 20));
    let cache = WasixCache::new("wasix-dyn", dyn_stack.clone());

    tokio.block_on(async {
        // A miss is NotFound, so the runtime compiles quietly.
        let reported: Arc<Mutex<Vec<String>>> = Arc::default();
        let r = reported.clone();
        let reporter = ModuleLoadProgressReporter::new(move |p: ModuleLoadProgress| {
            r.lock().unwrap().push(format!("{p:?}"));
            Ok(())
        });
        let miss = cache
            .load_with_progress(key, &engine, reporter.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(
                miss,
                wasmer_wasix::runtime::module_cache::CacheError::NotFound
            ),
            "{miss:?}"
        );
        WasixModuleCache::save(&cache, key, &engine, &module)
            .await
            .unwrap();
        assert!(dyn_stack.contains(key, &engine).await.unwrap());
        let loaded = cache
            .load_with_progress(key, &engine, reporter)
            .await
            .unwrap();
        assert_eq!(loaded, module);
        assert_eq!(*reported.lock().unwrap(), ["LocalCacheHit"]);
        assert!(
            WasixModuleCache::contains(&cache, key, &engine)
                .await
                .unwrap()
        );
    });
}

#[test]
fn every_compile_after_a_miss_is_counted_even_when_two_race() {
    let tokio = tokio();
    let engine = Engine::default();
    let wasm = hello();
    let key = ModuleHash::new(&wasm);
    let module = wasmer::Module::new(&engine, &wasm).unwrap();
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let cache = metrics::with_local_recorder(&recorder, || {
        WasixCache::new("wasix-race", MemoryCache::new(1 << 20))
    });
    tokio.block_on(async {
        // Two runtimes' tasks miss before either compile is saved.
        assert!(WasixModuleCache::load(&cache, key, &engine).await.is_err());
        assert!(WasixModuleCache::load(&cache, key, &engine).await.is_err());
        WasixModuleCache::save(&cache, key, &engine, &module)
            .await
            .unwrap();
        WasixModuleCache::save(&cache, key, &engine, &module)
            .await
            .unwrap();
        // A save nobody missed for (the user's own) is not a compile.
        WasixModuleCache::save(&cache, key, &engine, &module)
            .await
            .unwrap();
    });
    let s = take(&snap);
    assert_eq!(
        counter(&s, "tierscope_compilations_total", &[("result", "ok")]),
        2
    );
}
