//! The demo's progress line and final table, read from the exporter's own
//! text (what a Prometheus server would scrape), with metric names from
//! `tierscope::names`.

use std::time::Duration;

use tierscope::{names, sizing::live::SizingReport};

use crate::{expo::Scrape, size};

use super::*;

pub(super) const TIERS: [&str; 3] = ["memory", "disk", "redis"];

pub(super) fn progress_line(s: &Scrape, requests: u64, elapsed: Duration) -> String {
    let rate = requests as f64 / elapsed.as_secs_f64().max(1e-9);
    let mut line = format!("{} req ({}/s)", si(requests as f64), si(rate));
    for tier in TIERS {
        let labels = [("cache", CACHE), ("tier", tier)];
        let lookups = s.sum(names::LOOKUPS, &labels);
        let errors = s.sum(names::ERRORS, &labels);
        if lookups > 0.0 {
            let hits = s.sum(
                names::LOOKUPS,
                &[("cache", CACHE), ("tier", tier), ("result", "hit")],
            );
            line.push_str(&format!(" | {tier} {:.1}%", 100.0 * hits / lookups));
        }
        if errors > 0.0 {
            line.push_str(&format!(" ({tier} errors {errors:.0})"));
        }
    }
    let compiles = s.sum(names::COMPILATIONS, &[("cache", CACHE)]);
    let promotions = s.sum(names::PROMOTIONS, &[("cache", CACHE), ("result", "ok")]);
    let evictions = s.sum(names::EVICTIONS, &[("cache", CACHE)]);
    line.push_str(&format!(
        " | compiles {compiles:.0} | promotions {promotions:.0} | evictions {evictions:.0}"
    ));
    line.push_str(&format!(
        " | rss {} | engine switches {:.0}",
        size::human(s.sum(RESIDENT_MEMORY, &[])),
        (s.sum(names::ENGINE_GENERATIONS, &[("cache", CACHE)]) - 1.0).max(0.0),
    ));
    line
}

pub(super) fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

pub(super) fn duration(secs: Option<f64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 1e-6 => format!("{:.0} ns", s * 1e9),
        Some(s) if s < 1e-3 => format!("{:.1} us", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.2} ms", s * 1e3),
        Some(s) => format!("{s:.2} s"),
    }
}

pub(super) fn print_table(
    s: &Scrape,
    requests: u64,
    failures: u64,
    elapsed: Duration,
    sizing: Option<&SizingReport>,
) {
    let cache = [("cache", CACHE)];
    let compiles_ok = s.sum(names::COMPILATIONS, &[("cache", CACHE), ("result", "ok")]);
    let compiles_err = s.sum(
        names::COMPILATIONS,
        &[("cache", CACHE), ("result", "error")],
    );
    let compile_sum = s.sum(&format!("{}_sum", names::COMPILE_DURATION), &cache);
    let compile_count = s.sum(&format!("{}_count", names::COMPILE_DURATION), &cache);
    let mean_compile = (compile_count > 0.0).then(|| compile_sum / compile_count);

    // What each tier would have hit at half and at double its size (live
    // sizing, over its window).
    let what_if = |tier: &str, scale: f64| -> String {
        sizing
            .and_then(|r| r.tier(tier))
            .and_then(|t| t.at(scale))
            .map_or("-".into(), |p| format!("{:.2}%", 100.0 * p.hit_ratio))
    };
    println!();
    println!(
        "{:<7} {:>11} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {:>8} {:>10} {:>10} {:>12}",
        "tier",
        "lookups",
        "hit ratio",
        "at 0.5x",
        "at 2x",
        "hit p50",
        "hit p99",
        "promoted",
        "evicted",
        "errors",
        "resident",
        "served",
        "compile saved"
    );
    let mut first_lookups = None;
    for tier in TIERS {
        let labels = [("cache", CACHE), ("tier", tier)];
        let lookups = s.sum(names::LOOKUPS, &labels);
        if lookups == 0.0 && s.sum(names::SAVES, &labels) == 0.0 {
            continue;
        }
        first_lookups.get_or_insert(lookups);
        let hits = s.sum(
            names::LOOKUPS,
            &[("cache", CACHE), ("tier", tier), ("result", "hit")],
        );
        // Hits only: memory hits are timed one in 128, misses always, so
        // mixing results would over-weight misses.
        let load = [
            ("cache", CACHE),
            ("tier", tier),
            ("op", "load"),
            ("result", "hit"),
        ];
        let p50 = s.quantile(names::OPERATION_DURATION, &load, 0.5);
        let p99 = s.quantile(names::OPERATION_DURATION, &load, 0.99);
        let promoted = s.sum(
            names::PROMOTIONS,
            &[("cache", CACHE), ("to", tier), ("result", "ok")],
        );
        let evicted = s.sum(names::EVICTIONS, &labels);
        let errors = s.sum(names::ERRORS, &labels);
        let resident = s.sum(names::SIZE_BYTES, &labels);
        let served = s.sum(names::READ_BYTES, &labels);
        let saved = mean_compile.map(|m| hits * m);
        println!(
            "{:<7} {:>11} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {:>8} {:>10} {:>10} {:>12}",
            tier,
            lookups as u64,
            if lookups > 0.0 {
                format!("{:.2}%", 100.0 * hits / lookups)
            } else {
                "-".into()
            },
            what_if(tier, 0.5),
            what_if(tier, 2.0),
            duration(p50),
            duration(p99),
            promoted as u64,
            evicted as u64,
            errors as u64,
            size::human(resident),
            size::human(served),
            duration(saved),
        );
    }
    println!(
        "(lookups: callers' requests that reached the tier; served: artifact bytes its hits handed out, no I/O for memory; errors: every error the tier returned, by kind in /metrics)"
    );
    println!();
    let overall = first_lookups
        .filter(|l| *l > 0.0)
        .map(|l| 1.0 - (compiles_ok + compiles_err) / l);
    println!(
        "requests {requests} in {:.1} s ({}/s), failed {failures}; compiles {compiles_ok:.0} ok, {compiles_err:.0} failed, mean {}; coalesced {:.0}; overall hit ratio {}",
        elapsed.as_secs_f64(),
        si(requests as f64 / elapsed.as_secs_f64().max(1e-9)),
        duration(mean_compile),
        s.sum(names::COALESCED, &cache),
        overall.map_or("-".into(), |o| format!("{:.3}%", 100.0 * o)),
    );
    let code = |state: &str| {
        size::human(s.sum(
            names::ENGINE_CODE_BYTES,
            &[("cache", CACHE), ("state", state)],
        ))
    };
    println!(
        "resident memory {}; engine switches {:.0} ({:.0} generations alive), reloading {:.0} modules from the lower tiers (not counted as lookups); engine code: cached {}, evicted {} (budget {}), retired {}",
        size::human(s.sum(RESIDENT_MEMORY, &[])),
        (s.sum(names::ENGINE_GENERATIONS, &cache) - 1.0).max(0.0),
        s.sum(names::ENGINE_GENERATIONS_ALIVE, &cache),
        s.sum(names::RELOADS, &[("cache", CACHE), ("result", "hit")]),
        code("cached"),
        code("evicted"),
        size::human(s.sum(names::ENGINE_CODE_BUDGET, &cache)),
        code("retired"),
    );
    if let Some(r) = sizing {
        let mut line = String::from(
            "live sizing (at 0.5x / 2x: hit ratio at half / double the tier's capacity",
        );
        let window = r.tiers.first().map_or(0, |t| t.window_requests);
        line.push_str(&format!(", over the last {window} lookups); working set"));
        for t in &r.tiers {
            line.push_str(&format!(
                " {} {}",
                t.tier,
                size::human(t.working_set_bytes as f64)
            ));
        }
        let compiles: Vec<String> = r
            .compiles
            .iter()
            .map(|c| format!("{}x {:.0}", c.scale, c.compiles))
            .collect();
        if !compiles.is_empty() {
            line.push_str(&format!(
                "; projected compiles in the window by memory scale: {}",
                compiles.join(", ")
            ));
        }
        line.push_str(&format!("; updates dropped {}", r.dropped));
        println!("{line}");
    }
}

/// The process's resident memory, exported by `metrics-process`.
pub(super) const RESIDENT_MEMORY: &str = "process_resident_memory_bytes";

/// The first tier's hit ratio as the metrics count it, beside what the
/// loader answered the callers, sampled on every tick of the progress line:
/// what the final "last 20 s" line compares.
#[derive(Default)]
pub(super) struct History {
    /// (elapsed, metric hits, metric lookups, loads from memory, loads).
    samples: Vec<(Duration, f64, f64, u64, u64)>,
}

impl History {
    pub(super) fn push(&mut self, at: Duration, s: &Scrape, (memory, total): (u64, u64)) {
        let tier = [("cache", CACHE), ("tier", TIERS[0])];
        let hits = s.sum(
            names::LOOKUPS,
            &[("cache", CACHE), ("tier", TIERS[0]), ("result", "hit")],
        );
        self.samples
            .push((at, hits, s.sum(names::LOOKUPS, &tier), memory, total));
    }

    /// The memory tier's hit ratio over the last `window` of the run, from
    /// the metrics and from the loader's answers, beside the live model's.
    pub(super) fn print_last(&self, window: Duration, sizing: Option<&SizingReport>) {
        let Some(&(end, hits, lookups, memory, total)) = self.samples.last() else {
            return;
        };
        let from = end.saturating_sub(window);
        let &(start, hits0, lookups0, memory0, total0) = self
            .samples
            .iter()
            .rev()
            .find(|s| s.0 <= from)
            .unwrap_or(&(Duration::ZERO, 0.0, 0.0, 0, 0));
        let (lookups, total) = (lookups - lookups0, total - total0);
        if lookups <= 0.0 || total == 0 {
            return;
        }
        let metric = (hits - hits0) / lookups;
        let callers = (memory - memory0) as f64 / total as f64;
        let model = sizing
            .and_then(|r| r.tier(TIERS[0]))
            .and_then(|t| t.at(1.0))
            .map_or("-".into(), |p| format!("{:.2}%", 100.0 * p.hit_ratio));
        println!(
            "memory tier over the last {:.1} s: hit ratio {:.2}% in /metrics ({lookups:.0} lookups), {:.2}% of the loader's {total} answers from memory; live model at 1x {model} (over its own window)",
            (end - start).as_secs_f64(),
            100.0 * metric,
            100.0 * callers,
        );
    }
}

/// Says once, per tier, when every save so far has failed (a cache
/// directory that cannot be written, a full disk): the table would
/// otherwise show a tier that silently holds nothing.
#[derive(Default)]
pub(super) struct FailingSaves {
    warned: Vec<&'static str>,
}

impl FailingSaves {
    pub(super) fn check(&mut self, s: &Scrape) -> Vec<String> {
        let mut warnings = Vec::new();
        for tier in TIERS {
            let labels = |r| [("cache", CACHE), ("tier", tier), ("result", r)];
            let (ok, failed) = (
                s.sum(names::SAVES, &labels("ok")),
                s.sum(names::SAVES, &labels("error")),
            );
            if ok > 0.0 || failed == 0.0 || self.warned.contains(&tier) {
                continue;
            }
            self.warned.push(tier);
            let kinds: Vec<&str> = tierscope::ErrorKind::ERRORS
                .iter()
                .map(|k| k.as_str())
                .filter(|k| {
                    s.sum(
                        names::ERRORS,
                        &[
                            ("cache", CACHE),
                            ("tier", tier),
                            ("op", "save"),
                            ("kind", k),
                        ],
                    ) > 0.0
                })
                .collect();
            warnings.push(format!(
                "warning: every save to the {tier} tier has failed so far ({failed:.0}, {}): it holds nothing",
                kinds.join(", ")
            ));
        }
        warnings
    }
}
