//! Alternating rounds, shared by the benches that print them: how many
//! (`TIERSCOPE_ROUNDS`, 0 skips them) and the quartiles of what they
//! measured.
//!
//! Include with `#[path = "support/rounds.rs"] mod rounds;`.

#![allow(dead_code)]

/// Rounds to run: `TIERSCOPE_ROUNDS`, else `default`.
pub fn count(default: usize) -> usize {
    std::env::var("TIERSCOPE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

/// The `q`-th quartile of `v` (2: the median), sorting it in place.
pub fn quartile(v: &mut [f64], q: usize) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) * q / 4]
}
