//! Real third-party modules for the benches, fetched by
//! `scripts/fetch-real-modules` (pinned npm package versions, SHA-256
//! checked) into `target/real-modules` or `$TIERSCOPE_REAL_MODULES`.
//!
//! Include with `#[path = "support/real_modules.rs"] mod real_modules;`.
//! A bench that cannot find them says so loudly on stderr and goes on with
//! the generated corpus alone.

#![allow(dead_code)]

use std::path::PathBuf;

use tierscope::{FileSystemCache, ModuleCache, ModuleHash};
use wasmer::{Engine, Module};

/// The fixed set, smallest first (names of `scripts/fetch-real-modules`).
pub const NAMES: [&str; 5] = [
    "tree-sitter-json", // tree-sitter-wasms@0.1.13, 6 KB of wasm
    "sql-wasm",         // sql.js@1.16.0, 688 KB
    "tree-sitter-rust", // tree-sitter-wasms@0.1.13, 819 KB
    "tree-sitter-cpp",  // tree-sitter-wasms@0.1.13, 4.7 MB
    "esbuild",          // esbuild-wasm@0.28.2, 14 MB
];

/// Where the modules are looked for.
pub fn dir() -> PathBuf {
    match std::env::var_os("TIERSCOPE_REAL_MODULES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/real-modules"),
    }
}

/// The modules found, as (name, wasm bytes), in [`NAMES`] order; those not
/// found are reported on stderr. `TIERSCOPE_REAL_MODULES_SKIP` (names,
/// comma-separated) leaves some out on purpose, e.g. `esbuild`, whose
/// first compilation takes a while.
pub fn load() -> Vec<(&'static str, Vec<u8>)> {
    let dir = dir();
    let skip = std::env::var("TIERSCOPE_REAL_MODULES_SKIP").unwrap_or_default();
    let skip: Vec<&str> = skip.split(',').map(str::trim).collect();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in NAMES {
        if skip.contains(&name) {
            eprintln!("real module {name}: skipped (TIERSCOPE_REAL_MODULES_SKIP)");
            continue;
        }
        let path = dir.join(format!("{name}.wasm"));
        match std::fs::read(&path) {
            Ok(wasm) => found.push((name, wasm)),
            Err(e) => missing.push(format!("{} ({e})", path.display())),
        }
    }
    if !missing.is_empty() {
        let bar = "!".repeat(78);
        eprintln!("{bar}");
        eprintln!("!!! REAL MODULES MISSING: these benches run on the generated corpus only for:");
        for m in &missing {
            eprintln!("!!!   {m}");
        }
        eprintln!("!!! Fetch them with: scripts/fetch-real-modules");
        eprintln!("!!! (or point TIERSCOPE_REAL_MODULES at a directory that holds them)");
        eprintln!("{bar}");
    }
    found
}

/// `wasm` compiled by `engine`, through a persistent tierscope disk tier in
/// `<dir>/compiled` so that reruns skip the compilation (esbuild takes
/// minutes with Cranelift on a small machine).
pub fn compile(engine: &Engine, name: &str, wasm: &[u8]) -> Module {
    let key = ModuleHash::new(wasm);
    let cache = FileSystemCache::builder(dir().join("compiled"))
        .capacity(4 << 30)
        .inline_io(true)
        .build();
    let cache = match cache {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("real module {name}: compiled-artifact cache unavailable ({e}): compiling");
            None
        }
    };
    if let Some(c) = &cache
        && let Ok(m) = futures::executor::block_on(c.load(key, engine))
    {
        return m;
    }
    let start = std::time::Instant::now();
    let module = Module::new(engine, wasm).expect("compile real module");
    eprintln!(
        "real module {name}: compiled in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    if let Some(c) = &cache
        && let Err(e) = futures::executor::block_on(c.save(key, engine, &module))
    {
        eprintln!("real module {name}: not kept for the next run ({e})");
    }
    module
}
