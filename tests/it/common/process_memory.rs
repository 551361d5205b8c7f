//! This process's resident memory, as `/proc` tells it (Linux): the one
//! reader the tests and benches share.
#![allow(dead_code)]

/// Resident set size now, in bytes.
pub fn rss_bytes() -> u64 {
    use procfs::WithCurrentSystemInfo as _;
    let stat = procfs::process::Process::myself().and_then(|p| p.stat());
    stat.expect("/proc/self/stat").rss_bytes().get()
}

/// Peak resident set size (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> u64 {
    let status = procfs::process::Process::myself()
        .and_then(|p| p.status())
        .expect("/proc/self/status");
    status.vmhwm.expect("VmHWM in /proc/self/status") << 10
}

/// Reset the peak to the current resident size where the kernel allows
/// (`/proc/self/clear_refs`), and return the peak then.
pub fn reset_peak_rss_bytes() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    peak_rss_bytes()
}

/// Resident set size of another process (a child), in bytes; `None` once
/// it is gone.
pub fn rss_bytes_of(pid: u32) -> Option<u64> {
    use procfs::WithCurrentSystemInfo as _;
    let stat = procfs::process::Process::new(pid as i32).and_then(|p| p.stat());
    stat.ok().map(|s| s.rss_bytes().get())
}
