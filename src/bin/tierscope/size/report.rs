//! What `size` prints: per tier a table and a recommendation, the whole
//! stack's memory × disk grid, JSON for machines, and the charts.
//!
//! Misses are split into first requests (cold misses: the first request of
//! each object misses at every size) and capacity misses (the rest: what a
//! size can change). Compile seconds per hour count capacity misses only:
//! first compiles do not recur, so an hourly rate of them would extrapolate
//! a one-off; they are reported as a total over the trace.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tierscope::sizing::{Curve, Point, stack::StackPoint};

use super::human_duration;
use crate::{bytes, plot};

/// The trace and the run, as the report opens with them.
pub struct Facts {
    pub trace: String,
    pub format: &'static str,
    pub requests: u64,
    pub seconds: f64,
    pub size_on_hit: &'static str,
}

/// Everything `size` answers.
pub struct Report {
    pub facts: Facts,
    pub tiers: Vec<Tier>,
    pub stack: Vec<StackPoint>,
    /// Current sizes.
    pub memory: Option<u64>,
    pub disk: Option<u64>,
}

fn pct(r: f64) -> String {
    format!("{:.2}%", 100.0 * r)
}

/// `prefix` with `suffix` appended to its last component, whatever dots
/// it holds (`run.v2` gives `run.v2-memory.svg`).
pub fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

pub struct Tier {
    pub name: &'static str,
    pub curve: Curve,
    pub current: Option<u64>,
    /// A disk tier that sees only the memory tier's misses.
    pub behind_memory: bool,
}

impl Tier {
    pub fn new(name: &'static str, curve: Curve, current: Option<u64>) -> Self {
        Tier {
            name,
            curve,
            current,
            behind_memory: false,
        }
    }

    /// Compile seconds per hour of the capacity misses at `p`.
    fn compile_per_hour(&self, p: &Point) -> Option<f64> {
        self.curve.capacity_compile_seconds_per_hour(p)
    }

    /// The knee, and what halving and doubling the current size change.
    fn recommendation(&self) -> Option<(String, Value)> {
        let best = self
            .curve
            .points
            .iter()
            .max_by(|a, b| a.hit_ratio.total_cmp(&b.hit_ratio))?;
        let knee = self.curve.knee(0.01)?;
        if best.hit_ratio <= 0.0 {
            return Some((
                format!(
                    "{}: nothing hits at any size tried (every request is a first request, or the objects are larger than the sizes tried); try a larger --range",
                    self.name
                ),
                json!({"knee": null, "best_hit_ratio": 0.0}),
            ));
        }
        let current = self.current.and_then(|c| self.curve.at(c));
        let mut text = format!(
            "{}: the knee is {} ({} hit ratio, within 1 point of the best the grid reaches, {} at {})",
            self.name,
            bytes::human(knee.capacity as f64),
            pct(knee.hit_ratio),
            pct(best.hit_ratio),
            bytes::human(best.capacity as f64),
        );
        let mut js = json!({
            "knee": knee.capacity,
            "knee_hit_ratio": knee.hit_ratio,
            "best": best.capacity,
            "best_hit_ratio": best.hit_ratio,
        });
        if let Some(cur) = current {
            let change = |to: Option<&Point>, verb: &str| -> (String, Value) {
                match to {
                    None => (String::new(), Value::Null),
                    Some(p) => {
                        let d = 100.0 * (p.hit_ratio - cur.hit_ratio);
                        let dm = p.misses as i128 - cur.misses as i128;
                        // First requests miss at every size: the change is
                        // all in capacity misses.
                        let mut s = format!(
                            "; {verb} to {}: {} ({d:+.2} points, {dm:+} misses",
                            bytes::human(p.capacity as f64),
                            pct(p.hit_ratio)
                        );
                        if let (Some(a), Some(b)) =
                            (self.compile_per_hour(p), self.compile_per_hour(cur))
                        {
                            s.push_str(&format!(", {:+.1} compile s/hour", a - b));
                        }
                        s.push(')');
                        (
                            s,
                            json!({
                                "capacity": p.capacity,
                                "hit_ratio": p.hit_ratio,
                                "misses": p.misses,
                                "hit_ratio_change": p.hit_ratio - cur.hit_ratio,
                                "compile_seconds_per_hour_change": self.compile_per_hour(p).zip(self.compile_per_hour(cur)).map(|(a, b)| a - b),
                            }),
                        )
                    }
                }
            };
            let (hs, hj) = change(
                self.curve
                    .at((cur.capacity / 2).max(1))
                    .filter(|p| p.capacity < cur.capacity),
                "halving",
            );
            let (ds, dj) = change(
                self.curve
                    .at(cur.capacity.saturating_mul(2))
                    .filter(|p| p.capacity > cur.capacity),
                "doubling",
            );
            text.push_str(&format!(
                ".\n  now {}: {}{hs}{ds}.",
                bytes::human(cur.capacity as f64),
                pct(cur.hit_ratio)
            ));
            let verdict = if knee.capacity < cur.capacity {
                format!(
                    "  {} would do as well within 1 point: the tier is larger than it needs to be.",
                    bytes::human(knee.capacity as f64)
                )
            } else if knee.capacity > cur.capacity {
                format!(
                    "  Raising it to {} gains {:.2} points.",
                    bytes::human(knee.capacity as f64),
                    100.0 * (knee.hit_ratio - cur.hit_ratio)
                )
            } else {
                "  The current size is the knee.".into()
            };
            text.push('\n');
            text.push_str(&verdict);
            let cold = self.curve.distinct_keys;
            if cur.misses > 0 {
                text.push_str(&format!(
                    "\n  Of the {} misses at {}, {cold} are first requests ({:.0}%): no size avoids those.",
                    cur.misses,
                    bytes::human(cur.capacity as f64),
                    100.0 * cold.min(cur.misses) as f64 / cur.misses as f64,
                ));
            }
            js["current"] = json!(cur.capacity);
            js["current_hit_ratio"] = json!(cur.hit_ratio);
            js["halving"] = hj;
            js["doubling"] = dj;
        }
        Some((text, js))
    }

    fn json(&self) -> Value {
        let c = &self.curve;
        json!({
            "tier": self.name,
            "behind_memory": self.behind_memory,
            "current": self.current,
            "requests": c.requests,
            "distinct_keys": c.distinct_keys,
            "cold_misses": c.distinct_keys,
            "cold_compile_seconds": c.cold_compile_seconds,
            "working_set_bytes": c.working_set_bytes,
            "sampling_rate": c.sampling_rate,
            "duration_seconds": c.duration_seconds,
            "points": c.points.iter().map(|p| json!({
                "capacity": p.capacity,
                "hit_ratio": p.hit_ratio,
                "byte_hit_ratio": p.byte_hit_ratio,
                "misses": p.misses,
                "capacity_misses": c.capacity_misses(p),
                "compile_seconds": p.compile_seconds,
                "compile_seconds_per_hour": c.compile_seconds_per_hour(p),
                "capacity_compile_seconds_per_hour": self.compile_per_hour(p),
            })).collect::<Vec<_>>(),
            "recommendation": self.recommendation().map(|r| r.1),
        })
    }

    fn print(&self) {
        let c = &self.curve;
        out!();
        out!(
            "{} tier{}: {} lookups, {} of them first requests (they miss at every size{})",
            self.name,
            if self.behind_memory {
                " behind memory"
            } else {
                ""
            },
            c.requests,
            c.distinct_keys,
            match c.cold_compile_seconds {
                Some(s) => format!("; {s:.1} compile s in the trace"),
                None => String::new(),
            }
        );
        let compile =
            c.points.iter().any(|p| p.compile_seconds.is_some()) && c.duration_seconds.is_some();
        outp!(
            "  {:>12} {:>10} {:>15} {:>10} {:>16}",
            "capacity",
            "hit ratio",
            "byte hit ratio",
            "misses",
            "capacity misses"
        );
        if compile {
            outp!(" {:>15}", "compile s/hour");
        }
        out!();
        for p in &c.points {
            let mark = if Some(p.capacity) == self.current {
                " <- current"
            } else {
                ""
            };
            outp!(
                "  {:>12} {:>10} {:>15} {:>10} {:>16}",
                bytes::human(p.capacity as f64),
                pct(p.hit_ratio),
                pct(p.byte_hit_ratio),
                p.misses,
                c.capacity_misses(p)
            );
            if compile {
                outp!(
                    " {:>15}",
                    self.compile_per_hour(p)
                        .map_or("-".into(), |v| format!("{v:.1}"))
                );
            }
            out!("{mark}");
        }
        if compile {
            out!("  (compile s/hour: of the capacity misses only; first compiles do not recur)");
        }
        if let Some((text, _)) = self.recommendation() {
            out!("  {}", text.replace('\n', "\n  "));
        }
    }
}

impl Report {
    /// The line that opens the report, and the charts' caption.
    fn summary(&self) -> String {
        let Some(first) = self.tiers.first().map(|t| &t.curve) else {
            return String::new();
        };
        format!(
            "{} requests, {} distinct objects, working set {}, {}{}",
            self.facts.requests,
            first.distinct_keys,
            bytes::human(first.working_set_bytes as f64),
            match first.duration_seconds {
                Some(d) => format!("{} of trace", human_duration(d)),
                None => "no timestamps".into(),
            },
            if first.sampling_rate < 1.0 {
                format!(
                    ", objects sampled at {:.4} (estimates)",
                    first.sampling_rate
                )
            } else {
                ", exact".into()
            },
        )
    }

    pub fn print(&self, written: &[PathBuf]) {
        let f = &self.facts;
        out!(
            "{} ({}): {} ({:.1} s, {:.2} M requests/s; a hit with another size: {})",
            f.trace,
            f.format,
            self.summary(),
            f.seconds,
            f.requests as f64 / f.seconds.max(1e-9) / 1e6,
            f.size_on_hit,
        );
        for t in &self.tiers {
            t.print();
        }
        if !self.stack.is_empty() {
            print_stack(&self.stack, self.memory, self.disk);
        }
        for p in written {
            out!("wrote {}", p.display());
        }
    }

    pub fn print_json(&self, written: &[PathBuf]) {
        let f = &self.facts;
        let current = self
            .stack
            .iter()
            .find(|p| Some(p.memory) == self.memory && Some(p.disk) == self.disk)
            .and_then(|p| p.capacity_compile_seconds_per_hour);
        let out = json!({
            "trace": f.trace,
            "format": f.format,
            "requests": f.requests,
            "seconds": f.seconds,
            "size_on_hit": f.size_on_hit,
            "tiers": self.tiers.iter().map(Tier::json).collect::<Vec<_>>(),
            "stack": self.stack.iter().map(|p| json!({
                "memory": p.memory,
                "disk": p.disk,
                "memory_hit_ratio": p.memory_hit_ratio,
                "hit_ratio": p.hit_ratio,
                "compiles": p.compiles,
                "cold_compiles": p.cold_compiles,
                "compile_seconds": p.compile_seconds,
                "compile_seconds_per_hour": p.compile_seconds_per_hour,
                "capacity_compile_seconds_per_hour": p.capacity_compile_seconds_per_hour,
                "saved_compile_seconds_per_hour": current
                    .zip(p.capacity_compile_seconds_per_hour)
                    .map(|(now, here)| now - here),
            })).collect::<Vec<_>>(),
            "plots": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        });
        out!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }

    /// Write the charts: one per tier, and the stack's; the paths written.
    pub fn plot(&self, prefix: &Path) -> Result<Vec<PathBuf>, String> {
        let mut written = Vec::new();
        let caption = format!("{}: {}", trace_name(&self.facts.trace), self.summary());
        for t in &self.tiers {
            let points: Vec<(u64, f64)> = t
                .curve
                .points
                .iter()
                .map(|p| (p.capacity, p.hit_ratio))
                .collect();
            let bytes: Vec<(u64, f64)> = t
                .curve
                .points
                .iter()
                .map(|p| (p.capacity, p.byte_hit_ratio))
                .collect();
            let chart = plot::Chart {
                title: format!(
                    "{} tier{}: hit ratio by capacity",
                    t.name,
                    if t.behind_memory {
                        " (behind memory)"
                    } else {
                        ""
                    }
                ),
                caption: caption.clone(),
                x_desc: format!("{} tier capacity", t.name),
                series: vec![
                    plot::Series::new("hit ratio", points, 0).labelled(),
                    plot::Series::new("byte hit ratio", bytes, 1),
                ],
                current: t.current,
                knee: t.curve.knee(0.01).map(|p| p.capacity),
            };
            written.extend(plot::write(
                &with_suffix(prefix, &format!("-{}", t.name)),
                &chart,
            )?);
        }
        if !self.stack.is_empty() {
            let mut disks: Vec<u64> = self.stack.iter().map(|p| p.disk).collect();
            disks.sort_unstable();
            disks.dedup();
            let series = disks
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    let pts = self
                        .stack
                        .iter()
                        .filter(|p| p.disk == d)
                        .map(|p| (p.memory, p.hit_ratio))
                        .collect();
                    let current = Some(d) == self.disk;
                    let s = plot::Series::new(
                        &format!(
                            "disk {}{}",
                            bytes::human(d as f64),
                            if current { " (current)" } else { "" }
                        ),
                        pts,
                        i + 2,
                    );
                    if current { s.labelled() } else { s }
                })
                .collect();
            let chart = plot::Chart {
                title: "whole stack: share of lookups served without compiling".into(),
                caption,
                x_desc: "memory tier capacity".into(),
                series,
                current: self.memory,
                knee: None,
            };
            written.extend(plot::write(&with_suffix(prefix, "-stack"), &chart)?);
        }
        if !plot::fonts() {
            eprintln!(
                "note: no TrueType font found (set TIERSCOPE_FONT=/path/to/font.ttf): the charts have no text"
            );
        }
        Ok(written)
    }
}

fn trace_name(p: &str) -> String {
    Path::new(p)
        .file_name()
        .map_or_else(|| p.to_string(), |n| n.to_string_lossy().into_owned())
}

fn print_stack(stack: &[StackPoint], memory: Option<u64>, disk: Option<u64>) {
    let compile = stack
        .iter()
        .any(|p| p.capacity_compile_seconds_per_hour.is_some());
    let current = stack
        .iter()
        .find(|p| Some(p.memory) == memory && Some(p.disk) == disk);
    out!();
    out!(
        "whole stack: served without compiling{} (rows: memory, columns: disk)",
        if compile {
            " · compile s/hour saved against the current sizes (capacity misses)"
        } else {
            ""
        }
    );
    let mut disks: Vec<u64> = stack.iter().map(|p| p.disk).collect();
    disks.sort_unstable();
    disks.dedup();
    let width = if compile { 17 } else { 9 };
    outp!("  {:>12}", "");
    for d in &disks {
        let m = if Some(*d) == disk { "*" } else { "" };
        outp!(" {:>width$}", format!("{}{m}", bytes::human(*d as f64)));
    }
    out!();
    let mut mems: Vec<u64> = stack.iter().map(|p| p.memory).collect();
    mems.dedup();
    for m in mems {
        let mark = if Some(m) == memory { "*" } else { "" };
        outp!("  {:>12}", format!("{}{mark}", bytes::human(m as f64)));
        for d in &disks {
            let cell =
                stack
                    .iter()
                    .find(|p| p.memory == m && p.disk == *d)
                    .map_or("-".into(), |p| {
                        let saved = current
                            .and_then(|c| c.capacity_compile_seconds_per_hour)
                            .zip(p.capacity_compile_seconds_per_hour)
                            .map(|(now, here)| now - here);
                        match saved {
                            Some(s) if compile => format!("{} {s:+8.1}", pct(p.hit_ratio)),
                            _ => pct(p.hit_ratio),
                        }
                    });
            outp!(" {cell:>width$}");
        }
        out!();
    }
    out!("  (* current sizes)");
    if let Some(p) = stack.first() {
        out!(
            "  plus {} first requests, compiled at every size{}",
            p.cold_compiles,
            match p.compile_seconds.zip(p.capacity_compile_seconds_per_hour) {
                Some(_) => " (their compile seconds are in each tier's line above)",
                None => "",
            }
        );
    }
}
