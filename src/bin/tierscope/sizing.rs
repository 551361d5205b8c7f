//! `tierscope size TRACE`: what each tier would hit at other sizes,
//! offline, from a trace (see `tierscope::sizing`).

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use clap::{Args, ValueEnum, value_parser};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tierscope::sizing::{
    Curve, Point, Request,
    lru::LruModel,
    memory::{MemoryModel, ShadowOptions},
    sampling::Sampling,
    stack::{StackModel, StackPoint},
    trace::{CsvOptions, Format, TraceError, TraceReader},
};

use crate::{demo::Failure, plot, size};

/// `println!` that ignores a closed stdout (`| head`) instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `print!`, likewise.
macro_rules! outp {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TraceFormat {
    /// From the file: a tierscope header, a `.bin`/`oracleGeneral` name, else CSV.
    Auto,
    /// The tierscope trace (`tierscope demo --record`).
    Tierscope,
    /// libCacheSim oracleGeneral binary.
    Oracle,
    /// CSV; columns with --csv.
    Csv,
}

#[derive(Debug, Args)]
pub struct SizeArgs {
    /// The trace file.
    trace: PathBuf,
    /// Current size of the memory tier (e.g. 8MiB): model it.
    #[arg(long, value_parser = size::parse)]
    memory: Option<u64>,
    /// Current size of the disk tier (e.g. 1GiB): model it (an LRU; behind
    /// the memory tier when --memory is given too).
    #[arg(long, value_parser = size::parse)]
    disk: Option<u64>,
    /// The grid as multiples of each current size.
    #[arg(long, value_delimiter = ',', default_value = "0.125,0.25,0.5,1,2,4,8", value_parser = parse_scale)]
    scales: Vec<f64>,
    /// The grid as a range instead (e.g. 1MiB..4GiB), log-spaced, with
    /// --points points; the current sizes and their halves and doubles are
    /// added.
    #[arg(long, value_parser = parse_range)]
    range: Option<(u64, u64)>,
    /// Points of --range.
    #[arg(long, default_value_t = 12, value_parser = value_parser!(u64).range(2..=200))]
    points: u64,
    /// Input format.
    #[arg(long, value_enum, default_value_t = TraceFormat::Auto)]
    format: TraceFormat,
    /// CSV columns, as libCacheSim takes them:
    /// `time-col=1,obj-id-col=2,obj-size-col=3,obj-id-is-num=true,has-header=false,delimiter=,,time-unit=s`.
    #[arg(long, value_name = "OPTIONS")]
    csv: Option<String>,
    /// Model at most this many distinct keys exactly; past it, sample keys
    /// (SHARDS) at the rate that keeps this many.
    #[arg(long, default_value_t = 100_000, value_parser = value_parser!(u64).range(1..=100_000_000))]
    max_keys: u64,
    /// Sample keys at this fixed rate instead, in (0, 1].
    #[arg(long, value_parser = parse_rate)]
    sampling_rate: Option<f64>,
    /// Memory tier shards, as its builder takes them (default: the tier's own).
    #[arg(long, value_parser = value_parser!(u64).range(1..=1024))]
    shards: Option<u64>,
    /// Cores of the machine the memory tier runs on (its default shard
    /// count depends on them; default: this machine's).
    #[arg(long, value_parser = value_parser!(u64).range(1..=4096))]
    cores: Option<u64>,
    /// Write charts: PREFIX-memory.svg/.png, PREFIX-disk.svg/.png.
    #[arg(long, value_name = "PREFIX")]
    plot: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// No progress bar (also hidden when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

fn parse_scale(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() && v > 0.0 && v <= 1e6 {
        Ok(v)
    } else {
        Err(format!("scale `{s}` must be in (0, 1e6]"))
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err("the sampling rate must be in (0, 1]".into())
    }
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("`{s}`: expected MIN..MAX, e.g. 1MiB..4GiB"))?;
    let (a, b) = (size::parse(a)?, size::parse(b)?);
    if a >= b {
        return Err(format!("`{s}`: MIN must be below MAX"));
    }
    Ok((a, b))
}

/// The capacities to model around a current size.
fn grid(args: &SizeArgs, current: u64) -> Vec<u64> {
    let mut g: Vec<u64> = match args.range {
        Some((lo, hi)) => {
            let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
            let n = args.points.max(2);
            (0..n)
                .map(|i| (l + (h - l) * i as f64 / (n - 1) as f64).exp().round() as u64)
                .collect()
        }
        None => args
            .scales
            .iter()
            .map(|s| (current as f64 * s).round().min(u64::MAX as f64) as u64)
            .collect(),
    };
    g.extend([current, (current / 2).max(1), current.saturating_mul(2)]);
    tierscope::sizing::normalize_grid(&g)
}

pub fn run(args: SizeArgs) -> Result<(), Failure> {
    if args.memory.is_none() && args.disk.is_none() {
        return Err(Failure::Usage(
            "give the current size of the tiers to model: --memory 8MiB and/or --disk 1GiB".into(),
        ));
    }
    let format = match args.format {
        TraceFormat::Tierscope => Format::Tierscope,
        TraceFormat::Oracle => Format::OracleGeneral,
        TraceFormat::Csv => Format::Csv(CsvOptions::default()),
        TraceFormat::Auto => Format::detect(&args.trace).map_err(|e| unreadable(&args.trace, e))?,
    };
    let format = match (&args.csv, args.format) {
        (None, _) => format,
        (Some(o), TraceFormat::Auto | TraceFormat::Csv) => {
            Format::Csv(CsvOptions::parse(o).map_err(|e| Failure::Usage(format!("--csv: {e}")))?)
        }
        (Some(_), _) => {
            return Err(Failure::Usage("--csv applies to CSV traces only".into()));
        }
    };
    let sampling = match args.sampling_rate {
        Some(r) => Sampling::Rate(r),
        None => Sampling::Bounded {
            max_keys: args.max_keys as usize,
        },
    };
    let mut options = ShadowOptions {
        shards: args.shards.map(|s| s as usize),
        ..ShadowOptions::default()
    };
    if let Some(c) = args.cores {
        options.parallelism = c as usize;
    }
    let file_len = std::fs::metadata(&args.trace)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", args.trace.display())))?
        .len();
    let reader =
        TraceReader::open(&args.trace, format.clone()).map_err(|e| unreadable(&args.trace, e))?;

    let memory_grid = args.memory.map(|m| grid(&args, m));
    let disk_grid = args.disk.map(|d| grid(&args, d));
    let mut models = match (&memory_grid, &disk_grid) {
        (Some(m), Some(d)) => Models::Stack(StackModel::new(m, d, options, sampling)),
        (Some(m), None) => Models::Memory(MemoryModel::new(m, options, sampling)),
        (None, Some(d)) => Models::Disk(LruModel::new(d, sampling)),
        (None, None) => return Err(Failure::Usage("give --memory and/or --disk".into())),
    };

    let pb = if args.no_progress || args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(file_len)
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} modelling [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
        )
        .expect("valid template"),
    );
    let started = Instant::now();
    let mut reader = reader;
    let mut n: u64 = 0;
    while let Some(req) = reader.next() {
        let req: Request = req.map_err(|e| unreadable(&args.trace, e))?;
        models.access(&req);
        n += 1;
        if n.is_multiple_of(65_536) {
            pb.set_position(reader.bytes_read());
            pb.set_message(format!("{n} requests"));
        }
    }
    pb.finish_and_clear();
    if n == 0 {
        return Err(Failure::Usage(format!(
            "{}: no requests in the trace",
            args.trace.display()
        )));
    }
    let elapsed = started.elapsed().as_secs_f64();

    let mut tiers: Vec<Tier> = Vec::new();
    let mut stack: Vec<StackPoint> = Vec::new();
    match &models {
        Models::Memory(m) => tiers.push(Tier::new("memory", m.curve(), args.memory)),
        Models::Disk(d) => tiers.push(Tier::new("disk", d.curve(), args.disk)),
        Models::Stack(s) => {
            tiers.push(Tier::new("memory", s.memory_curve(), args.memory));
            if let Some(c) = args.memory.and_then(|m| s.disk_curve(m)) {
                let mut t = Tier::new("disk", c, args.disk);
                t.behind_memory = true;
                tiers.push(t);
            }
            stack = s.grid();
        }
    }

    let mut written = Vec::new();
    if let Some(prefix) = &args.plot {
        for t in &tiers {
            let pts: Vec<(u64, f64, f64)> = t
                .curve
                .points
                .iter()
                .map(|p| (p.capacity, p.hit_ratio, p.byte_hit_ratio))
                .collect();
            let name = format!(
                "{}-{}",
                prefix
                    .file_name()
                    .map_or_else(|| "tierscope".into(), |n| n.to_string_lossy().into_owned()),
                t.name
            );
            let path = prefix.with_file_name(name);
            let chart = plot::Chart {
                title: format!(
                    "{} tier: hit ratio by capacity ({})",
                    t.name,
                    trace_name(&args.trace)
                ),
                points: &pts,
                current: t.current,
                knee: t.curve.knee(0.01).map(|p| p.capacity),
            };
            written.extend(plot::write(&path, &chart).map_err(Failure::Runtime)?);
        }
        if !plot::fonts() {
            eprintln!(
                "note: no TrueType font found (set TIERSCOPE_FONT=/path/to/font.ttf): the charts have no text"
            );
        }
    }

    if args.json {
        let out = json!({
            "trace": args.trace.display().to_string(),
            "format": format_name(&format),
            "requests": n,
            "seconds": elapsed,
            "tiers": tiers.iter().map(Tier::json).collect::<Vec<_>>(),
            "stack": stack.iter().map(|p| json!({
                "memory": p.memory,
                "disk": p.disk,
                "memory_hit_ratio": p.memory_hit_ratio,
                "hit_ratio": p.hit_ratio,
                "compiles": p.compiles,
                "compile_seconds": p.compile_seconds,
                "compile_seconds_per_hour": p.compile_seconds_per_hour,
            })).collect::<Vec<_>>(),
            "plots": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        });
        out!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }

    let first = &tiers[0].curve;
    out!(
        "{}: {n} requests ({}), {} distinct objects, working set {}, {}{} ({:.1} s, {:.2} M requests/s)",
        args.trace.display(),
        format_name(&format),
        first.distinct_keys,
        size::human(first.working_set_bytes as f64),
        match first.duration_seconds {
            Some(d) => format!("{} of trace", human_duration(d)),
            None => "no timestamps".into(),
        },
        if first.sampling_rate < 1.0 {
            format!(", keys sampled at {:.4} (estimates)", first.sampling_rate)
        } else {
            ", exact".into()
        },
        elapsed,
        n as f64 / elapsed.max(1e-9) / 1e6,
    );
    for t in &tiers {
        t.print();
    }
    if !stack.is_empty() {
        print_stack(&stack, args.memory, args.disk);
    }
    for p in &written {
        out!("wrote {}", p.display());
    }
    Ok(())
}

enum Models {
    Memory(MemoryModel),
    Disk(LruModel),
    Stack(StackModel),
}

impl Models {
    fn access(&mut self, r: &Request) {
        match self {
            Models::Memory(m) => m.access(r),
            Models::Disk(m) => m.access(r),
            Models::Stack(m) => m.access(r),
        }
    }
}

fn unreadable(path: &Path, e: TraceError) -> Failure {
    Failure::Usage(format!("{}: {e}", path.display()))
}

fn trace_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

fn format_name(f: &Format) -> &'static str {
    match f {
        Format::OracleGeneral => "oracleGeneral",
        Format::Csv(_) => "csv",
        Format::Tierscope => "tierscope",
    }
}

fn human_duration(s: f64) -> String {
    if s >= 7200.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 120.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.1} s")
    }
}

fn pct(r: f64) -> String {
    format!("{:.2}%", 100.0 * r)
}

struct Tier {
    name: &'static str,
    curve: Curve,
    current: Option<u64>,
    /// A disk tier that sees only the memory tier's misses.
    behind_memory: bool,
}

impl Tier {
    fn new(name: &'static str, curve: Curve, current: Option<u64>) -> Self {
        Tier {
            name,
            curve,
            current,
            behind_memory: false,
        }
    }

    fn compile_per_hour(&self, p: &Point) -> Option<f64> {
        self.curve.compile_seconds_per_hour(p)
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
            size::human(knee.capacity as f64),
            pct(knee.hit_ratio),
            pct(best.hit_ratio),
            size::human(best.capacity as f64),
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
                        let mut s = format!(
                            "; {verb} to {}: {} ({d:+.2} points, {dm:+} misses",
                            size::human(p.capacity as f64),
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
                            json!({"capacity": p.capacity, "hit_ratio": p.hit_ratio, "misses": p.misses, "hit_ratio_change": p.hit_ratio - cur.hit_ratio}),
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
                size::human(cur.capacity as f64),
                pct(cur.hit_ratio)
            ));
            let verdict = if knee.capacity < cur.capacity {
                format!(
                    "  {} would do as well within 1 point: the tier is larger than it needs to be.",
                    size::human(knee.capacity as f64)
                )
            } else if knee.capacity > cur.capacity {
                format!(
                    "  Raising it to {} gains {:.2} points.",
                    size::human(knee.capacity as f64),
                    100.0 * (knee.hit_ratio - cur.hit_ratio)
                )
            } else {
                "  The current size is the knee.".into()
            };
            text.push('\n');
            text.push_str(&verdict);
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
            "working_set_bytes": c.working_set_bytes,
            "sampling_rate": c.sampling_rate,
            "duration_seconds": c.duration_seconds,
            "points": c.points.iter().map(|p| json!({
                "capacity": p.capacity,
                "hit_ratio": p.hit_ratio,
                "byte_hit_ratio": p.byte_hit_ratio,
                "misses": p.misses,
                "compile_seconds": p.compile_seconds,
                "compile_seconds_per_hour": self.compile_per_hour(p),
            })).collect::<Vec<_>>(),
            "recommendation": self.recommendation().map(|r| r.1),
        })
    }

    fn print(&self) {
        let c = &self.curve;
        out!();
        out!(
            "{} tier{} ({} lookups)",
            self.name,
            if self.behind_memory {
                " behind memory"
            } else {
                ""
            },
            c.requests
        );
        let compile = c.points.iter().any(|p| p.compile_seconds.is_some());
        outp!(
            "  {:>12} {:>10} {:>15} {:>10}",
            "capacity",
            "hit ratio",
            "byte hit ratio",
            "misses"
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
                "  {:>12} {:>10} {:>15} {:>10}",
                size::human(p.capacity as f64),
                pct(p.hit_ratio),
                pct(p.byte_hit_ratio),
                p.misses
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
        if let Some((text, _)) = self.recommendation() {
            out!("  {}", text.replace('\n', "\n  "));
        }
    }
}

fn print_stack(stack: &[StackPoint], memory: Option<u64>, disk: Option<u64>) {
    let compile = stack.iter().any(|p| p.compile_seconds_per_hour.is_some());
    out!();
    out!(
        "whole stack: {} (rows: memory, columns: disk)",
        if compile {
            "compile seconds per hour"
        } else {
            "compiles (misses of both tiers)"
        }
    );
    let mut disks: Vec<u64> = stack.iter().map(|p| p.disk).collect();
    disks.sort_unstable();
    disks.dedup();
    outp!("  {:>12}", "");
    for d in &disks {
        let m = if Some(*d) == disk { "*" } else { "" };
        outp!(" {:>11}", format!("{}{m}", size::human(*d as f64)));
    }
    out!();
    let mut mems: Vec<u64> = stack.iter().map(|p| p.memory).collect();
    mems.dedup();
    for m in mems {
        let mark = if Some(m) == memory { "*" } else { "" };
        outp!("  {:>12}", format!("{}{mark}", size::human(m as f64)));
        for d in &disks {
            let cell = stack.iter().find(|p| p.memory == m && p.disk == *d).map_or(
                "-".into(),
                |p| match p.compile_seconds_per_hour {
                    Some(c) => format!("{c:.1}"),
                    None => p.compiles.to_string(),
                },
            );
            outp!(" {cell:>11}");
        }
        out!();
    }
    out!("  (* current sizes)");
}
