//! The demo's progress line and final table, read from the exporter's own
//! text (what a Prometheus server would scrape), with metric names from
//! `tierscope::names`.

use std::time::Duration;

use tierscope::{names, sizing::SizingReport};

use crate::{bytes, expo::Scrape};

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
        bytes::human(s.sum(RESIDENT_MEMORY, &[])),
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

/// One row of the final table, before formatting.
struct Row {
    tier: &'static str,
    lookups: f64,
    hit_ratio: Option<f64>,
    at_half: Option<f64>,
    at_double: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    promoted: f64,
    evicted: f64,
    errors: f64,
    resident: f64,
    served: f64,
    saved: Option<f64>,
}

/// A percentage with two decimals, or `-`.
fn percent(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}", 100.0 * v))
}

/// The unit for a column of durations in seconds: the one that suits its
/// largest value, so that a column reads in one unit.
fn duration_unit(values: impl Iterator<Item = f64>) -> (&'static str, f64) {
    let max = values.fold(0.0f64, f64::max);
    if max < 1e-3 {
        ("us", 1e6)
    } else if max < 1.0 {
        ("ms", 1e3)
    } else if max < 600.0 {
        ("s", 1.0)
    } else if max < 36_000.0 {
        ("min", 1.0 / 60.0)
    } else {
        ("h", 1.0 / 3600.0)
    }
}

/// The unit for a column of bytes.
fn bytes_unit(values: impl Iterator<Item = f64>) -> (&'static str, f64) {
    let max = values.fold(0.0f64, f64::max);
    if max < (1u64 << 20) as f64 {
        ("KiB", 1024.0)
    } else if max < (1u64 << 30) as f64 {
        ("MiB", (1u64 << 20) as f64)
    } else {
        ("GiB", (1u64 << 30) as f64)
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
    let what_if = |tier: &str, scale: f64| -> Option<f64> {
        sizing
            .and_then(|r| r.tier(tier))
            .and_then(|t| t.at(scale))
            .map(|p| p.hit_ratio)
    };
    let mut rows = Vec::new();
    for tier in TIERS {
        let labels = [("cache", CACHE), ("tier", tier)];
        let lookups = s.sum(names::LOOKUPS, &labels);
        if lookups == 0.0 && s.sum(names::SAVES, &labels) == 0.0 {
            continue;
        }
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
        rows.push(Row {
            tier,
            lookups,
            hit_ratio: (lookups > 0.0).then(|| hits / lookups),
            at_half: what_if(tier, 0.5),
            at_double: what_if(tier, 2.0),
            p50: s.quantile(names::OPERATION_DURATION, &load, 0.5),
            p99: s.quantile(names::OPERATION_DURATION, &load, 0.99),
            promoted: s.sum(
                names::PROMOTIONS,
                &[("cache", CACHE), ("to", tier), ("result", "ok")],
            ),
            evicted: s.sum(names::EVICTIONS, &labels),
            errors: s.sum(names::ERRORS, &labels),
            resident: s.sum(names::SIZE_BYTES, &labels),
            served: s.sum(names::READ_BYTES, &labels),
            saved: mean_compile.map(|m| hits * m),
        });
    }
    let (lat_unit, lat_scale) = duration_unit(rows.iter().flat_map(|r| [r.p50, r.p99]).flatten());
    let (resident_unit, resident_scale) = bytes_unit(rows.iter().map(|r| r.resident));
    let (served_unit, served_scale) = bytes_unit(rows.iter().map(|r| r.served));
    let (saved_unit, saved_scale) = duration_unit(rows.iter().filter_map(|r| r.saved));
    let latency = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2}", v * lat_scale));
    println!();
    println!(
        "{:<7} {:>11} {:>9} {:>8} {:>8} {:>10} {:>10} {:>9} {:>9} {:>7} {:>12} {:>10} {:>17}",
        "tier",
        "lookups",
        "hit %",
        "at 0.5x",
        "at 2x",
        format!("p50 {lat_unit}"),
        format!("p99 {lat_unit}"),
        "promoted",
        "evicted",
        "errors",
        format!("resident {resident_unit}"),
        format!("served {served_unit}"),
        format!("compile saved {saved_unit}"),
    );
    for r in &rows {
        println!(
            "{:<7} {:>11} {:>9} {:>8} {:>8} {:>10} {:>10} {:>9} {:>9} {:>7} {:>12} {:>10} {:>17}",
            r.tier,
            r.lookups as u64,
            percent(r.hit_ratio),
            percent(r.at_half),
            percent(r.at_double),
            latency(r.p50),
            latency(r.p99),
            r.promoted as u64,
            r.evicted as u64,
            r.errors as u64,
            format!("{:.1}", r.resident / resident_scale),
            format!("{:.1}", r.served / served_scale),
            r.saved
                .map_or("-".into(), |v| format!("{:.1}", v * saved_scale)),
        );
    }
    println!(
        "(lookups: callers' requests that reached the tier; at 0.5x / 2x: live sizing's hit % at half / double the capacity; p50, p99: hit latency; served: artifact bytes its hits handed out, no I/O for memory; errors: every error the tier returned, by kind in /metrics)"
    );
    println!();
    let first_lookups = rows.first().map(|r| r.lookups).filter(|l| *l > 0.0);
    let overall = first_lookups.map(|l| 1.0 - (compiles_ok + compiles_err) / l);
    println!(
        "requests      {requests} in {:.1} s ({}/s), failed {failures}",
        elapsed.as_secs_f64(),
        si(requests as f64 / elapsed.as_secs_f64().max(1e-9)),
    );
    println!(
        "compiles      {compiles_ok:.0} ok, {compiles_err:.0} failed, mean {}; {:.0} callers waited on another's compile; overall hit ratio {}",
        duration(mean_compile),
        s.sum(names::COALESCED, &cache),
        overall.map_or("-".into(), |o| format!("{:.3}%", 100.0 * o)),
    );
    let code = |state: &str| {
        bytes::human(s.sum(
            names::ENGINE_CODE_BYTES,
            &[("cache", CACHE), ("state", state)],
        ))
    };
    println!(
        "memory        {} resident; engine code cached {}, evicted {} (budget {}), retired {}",
        bytes::human(s.sum(RESIDENT_MEMORY, &[])),
        code("cached"),
        code("evicted"),
        bytes::human(s.sum(names::ENGINE_CODE_BUDGET, &cache)),
        code("retired"),
    );
    println!(
        "engines       {:.0} switches ({:.0} generations alive), {:.0} modules reloaded from the lower tiers (not counted as lookups)",
        (s.sum(names::ENGINE_GENERATIONS, &cache) - 1.0).max(0.0),
        s.sum(names::ENGINE_GENERATIONS_ALIVE, &cache),
        s.sum(names::RELOADS, &[("cache", CACHE), ("result", "hit")]),
    );
    if let Some(r) = sizing {
        print_sizing(r);
    }
}

/// Live sizing's report as a small table: per tier, its working set and
/// the hit ratio it would have at each scale of its capacity.
fn print_sizing(r: &SizingReport) {
    let window = r.tiers.first().map_or(0, |t| t.window_requests);
    let mut scales: Vec<f64> = r
        .tiers
        .iter()
        .flat_map(|t| t.points.iter().map(|p| p.scale))
        .collect();
    scales.sort_by(f64::total_cmp);
    scales.dedup();
    println!();
    println!(
        "live sizing   hit % if the tier had this share of its capacity (over the last {window} lookups)"
    );
    let mut header = format!("{:<8} {:>12}", "tier", "working set");
    for scale in &scales {
        header.push_str(&format!(" {:>7}", format!("{scale}x")));
    }
    println!("{header}");
    for t in &r.tiers {
        let mut line = format!(
            "{:<8} {:>12}",
            t.tier,
            bytes::human(t.working_set_bytes as f64)
        );
        for scale in &scales {
            line.push_str(&format!(
                " {:>7}",
                percent(t.at(*scale).map(|p| p.hit_ratio))
            ));
        }
        println!("{line}");
    }
    if !r.compiles.is_empty() {
        let mut line = format!("{:<8} {:>12}", "compiles", "");
        for scale in &scales {
            let c = r.compiles.iter().find(|c| c.scale == *scale);
            line.push_str(&format!(
                " {:>7}",
                c.map_or("-".into(), |c| format!("{:.0}", c.compiles))
            ));
        }
        println!("{line}   (projected in the window, by the memory tier's scale)");
    }
    if r.dropped > 0 {
        println!(
            "({} lookup events were dropped: the hit path's buffer was full, the model fell behind)",
            r.dropped
        );
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
            let kinds: Vec<&str> = tierscope::CacheErrorKind::ERRORS
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
