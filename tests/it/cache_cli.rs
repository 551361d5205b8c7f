//! `tierscope cache` on a real cache directory: warmed, then given a
//! corrupt entry, files that are not tierscope's, a leftover temporary file
//! and a save in progress, while another process (`tierscope run` of a
//! program waiting on its stdin) uses a module loaded from it. `stats`
//! tells each apart, `verify` finds the corrupt entry, `trim` waits for the
//! directory's lock and removes by last use, `clear` removes the entries,
//! and the running program keeps working.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, SystemTime},
};

use tierscope::ModuleHash;

use crate::{
    common::walk,
    run_io::{CAT, ENV, REACTOR, text},
};

fn tierscope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tierscope"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// The entry file of `wasm` under `cache`.
fn entry_of(cache: &Path, wasm: &Path) -> PathBuf {
    let name = format!("{}.bin", ModuleHash::new(std::fs::read(wasm).unwrap()));
    walk(cache)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == name))
        .unwrap_or_else(|| panic!("no entry {name} under {}", cache.display()))
}

#[test]
fn stats_verify_trim_clear_and_warm_while_another_process_uses_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let c = cache.to_str().unwrap();
    let modules = tmp.path().join("modules");
    std::fs::create_dir_all(modules.join("nested")).unwrap();
    let put = |name: &str, wat: &str| {
        let path = modules.join(name);
        std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
        path
    };
    let cat = put("cat.wasm", CAT);
    let copy = put("nested/copy-of-cat.wasm", CAT);
    let env = put("env.wasm", ENV);
    let reactor = put("reactor.wasm", REACTOR);
    std::fs::write(modules.join("README.md"), "not wasm, not named .wasm").unwrap();

    // warm: every module compiled once (the copy is the same module).
    let out = tierscope(&["cache", "warm", "--cache-dir", c, modules.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("compiled 3 ("), "{said}");
    assert!(said.contains("already cached 0, failed 0"), "{said}");
    assert!(
        said.contains(&format!("{}, {}", cat.display(), copy.display())),
        "the sources of one module are named together: {said}"
    );
    let out = tierscope(&["cache", "warm", "--cache-dir", c, modules.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("compiled 0, already cached 3, failed 0"));
    // A file that is not WebAssembly fails, and says why.
    let junk = modules.join("junk.wasm");
    std::fs::write(&junk, "junk").unwrap();
    let out = tierscope(&["cache", "warm", "--cache-dir", c, junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("junk.wasm: not a WebAssembly binary"));
    std::fs::remove_file(&junk).unwrap();

    // Another process uses the cache: `run` loads cat from it (a disk hit)
    // and the program waits on its stdin.
    let mut user = Command::new(env!("CARGO_BIN_EXE_tierscope"))
        .args(["run", "-v", "--cache-dir", c, cat.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut user_err = BufReader::new(user.stderr.take().unwrap());
    let mut loaded = String::new();
    user_err.read_line(&mut loaded).unwrap();
    assert!(loaded.contains("served by the disk tier"), "{loaded}");

    // What is not tierscope's, a leftover, a save in progress, a corrupt entry.
    let cat_entry = entry_of(&cache, &cat);
    let namespace = cat_entry.parent().unwrap().to_path_buf();
    std::fs::write(cache.join("README"), "an operator's note").unwrap();
    std::fs::write(namespace.join("notes.txt"), "x").unwrap();
    let key = ModuleHash::new(b"some module being saved");
    let leftover = namespace.join(format!(".tmp-{key}-4000001-0"));
    std::fs::write(&leftover, vec![0u8; 1000]).unwrap();
    File::open(&leftover)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let in_progress = namespace.join(format!(".tmp-{key}-4000002-0"));
    std::fs::write(&in_progress, vec![0u8; 500]).unwrap();
    let writer = File::open(&in_progress).unwrap();
    writer.lock().unwrap();
    let env_entry = entry_of(&cache, &env);
    corrupt(&env_entry);

    // stats tells them apart, and names sources given to it.
    let out = tierscope(&["cache", "stats", "--cache-dir", c]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    for line in [
        "(this build's engine)",
        "entries         3 (",
        "writes in progress   1 (500 B)",
        "leftover temporary   1 (1000 B)",
        "not tierscope's      2 (",
        "notes.txt (not named as a cache entry)",
    ] {
        assert!(said.contains(line), "{line:?} not in:\n{said}");
    }
    let out = tierscope(&[
        "cache",
        "stats",
        "--cache-dir",
        c,
        "--json",
        "--sources",
        modules.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["total"]["entries"], 3);
    let ns = &json["namespaces"][0];
    assert_eq!(ns["this_build"], true);
    assert_eq!(ns["last_used"]["under_1h"], 3);
    let cat_json = ns["entry_list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == cat_entry.to_str().unwrap())
        .unwrap();
    assert_eq!(
        cat_json["sources"].as_array().unwrap().len(),
        2,
        "{cat_json}"
    );
    assert_eq!(json["writes_in_progress"].as_array().unwrap().len(), 1);
    assert_eq!(
        json["leftover_temporary_files"].as_array().unwrap().len(),
        1
    );
    assert_eq!(json["not_tierscopes"].as_array().unwrap().len(), 2);

    // verify finds the corrupt entry; --remove removes it; then all is well.
    let out = tierscope(&["cache", "verify", "--cache-dir", c]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("checksum mismatch (left in place)"), "{said}");
    assert!(said.contains(&env_entry.display().to_string()), "{said}");
    assert!(said.contains("checked 3 entries"), "{said}");
    assert!(said.contains("2 good, 1 bad"), "{said}");
    assert!(env_entry.exists());
    let out = tierscope(&["cache", "verify", "--cache-dir", c, "--remove"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("1 bad (1 removed)"));
    assert!(!env_entry.exists());
    let out = tierscope(&["cache", "verify", "--cache-dir", c]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("checked 2 entries"));

    // trim waits for the directory's lock, which another process holds.
    let reactor_entry = entry_of(&cache, &reactor);
    File::open(&reactor_entry)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3 * 86_400))
        .unwrap();
    let lock = File::open(cache.join(".tierscope-lock")).unwrap();
    lock.lock().unwrap();
    let mut trim = Command::new(env!("CARGO_BIN_EXE_tierscope"))
        .args(["cache", "trim", "--cache-dir", c, "--older-than", "1d"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        trim.try_wait().unwrap().is_none(),
        "trim went on while another process held the lock"
    );
    assert!(reactor_entry.exists() && leftover.exists());
    lock.unlock().unwrap();
    let out = trim.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("removed 1 entry") && said.contains("not used for 1day"),
        "{said}"
    );
    assert!(
        said.contains("removed 1 temporary file left by writers that died"),
        "{said}"
    );
    assert!(!reactor_entry.exists() && !leftover.exists());
    assert!(cat_entry.exists());

    // clear removes the entries, not what is not tierscope's, nor a save
    // in progress.
    let out = tierscope(&["cache", "clear", "--cache-dir", c]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("removed 1 entry"),
        "{}",
        text(&out.stdout)
    );
    assert!(!cat_entry.exists());
    assert!(in_progress.exists() && namespace.join("notes.txt").exists());
    assert!(cache.join("README").exists());
    drop(writer);

    // The program loaded from a removed entry still runs.
    let mut stdin = user.stdin.take().unwrap();
    stdin.write_all(b"still works").unwrap();
    drop(stdin);
    let mut output = String::new();
    user.stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    let status = user.wait().unwrap();
    let mut err = String::new();
    user_err.read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(output, "still works");
    assert_eq!(err, "", "nothing more to say");
}

/// Flip one byte in the middle of an entry (made writable first, as only
/// its owner could).
fn corrupt(entry: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(entry, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut bytes = std::fs::read(entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(entry, bytes).unwrap();
    std::fs::set_permissions(entry, std::fs::Permissions::from_mode(0o400)).unwrap();
}

/// What a fleet does before a deploy: one machine warms the shared Redis
/// tier, and a node with an empty disk gets its first request from Redis,
/// not from a compile (and keeps a copy on its disk).
#[cfg(feature = "redis")]
#[test]
fn warm_fills_the_shared_tier_and_a_fresh_node_does_not_compile() {
    use crate::support::redis_server::RedisServer;
    let server = RedisServer::start();
    let key = "ab".repeat(32);
    let tmp = tempfile::tempdir().unwrap();
    let cat = tmp.path().join("cat.wasm");
    std::fs::write(&cat, wat::parse_str(CAT).unwrap()).unwrap();
    let with_key = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tierscope"))
            .args(args)
            .env("TIERSCOPE_REDIS_KEY", &key)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let builder = tmp.path().join("builder-cache");
    let out = with_key(&[
        "cache",
        "warm",
        "--cache-dir",
        builder.to_str().unwrap(),
        "--redis",
        &server.url(),
        cat.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("compiled 1"),
        "{}",
        text(&out.stdout)
    );

    // A fresh node: an empty disk, the same Redis.
    let node = tmp.path().join("node-cache");
    let out = with_key(&[
        "run",
        "-v",
        "--cache-dir",
        node.to_str().unwrap(),
        "--redis",
        &server.url(),
        cat.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("served by the redis tier"), "{err}");
    assert!(!err.contains("compil"), "{err}");

    // Warming that node again finds the module on its disk already (the
    // Redis hit was promoted there).
    let out = with_key(&[
        "cache",
        "warm",
        "--cache-dir",
        node.to_str().unwrap(),
        "--redis",
        &server.url(),
        cat.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("compiled 0, already cached 1"),
        "{}",
        text(&out.stdout)
    );
}
