//! `tierscope size TRACE`: what each tier would hit at other sizes,
//! offline, from a trace (see `tierscope::sizing`).
//!
//! - this file: the command's arguments and its run;
//! - [`models`]: the models, split over threads, fed the trace in batches;
//! - [`report`]: tables, the recommendation, JSON, and the charts' data.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use clap::{Args, ValueEnum, value_parser};
use indicatif::{ProgressBar, ProgressStyle};
use tierscope::sizing::{
    lru::SizeOnHit,
    memory::ShadowOptions,
    sampling::{FrequentKeys, Sampling},
    trace::{CsvOptions, Format, TraceError, TraceReader},
};

use self::report::{Facts, Tier};
use crate::{bytes, common::Failure};

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

mod models;
mod report;

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

/// What a hit does to an object asked for at another size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SizeRule {
    /// The object is stored again at the size the request gives.
    Update,
    /// The object keeps the size it was stored with (libCacheSim's rule).
    Keep,
}

const EXAMPLES: &str = "\
Examples:
  tierscope size demo.trace --memory 64MiB --disk 1GiB --plot sizing
  tierscope size demo.trace --disk 1GiB --range 64MiB..16GiB --points 16 --json
  tierscope size cloudPhysicsIO.oracleGeneral.bin --disk 1GB --size-on-hit keep";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct SizeArgs {
    /// The trace file.
    trace: PathBuf,
    /// Current size of the memory tier (e.g. 8MiB): model it.
    #[arg(long, value_parser = bytes::parse)]
    memory: Option<u64>,
    /// Current size of the disk tier (e.g. 1GiB): model it (an LRU; behind
    /// the memory tier when --memory is given too).
    #[arg(long, value_parser = bytes::parse)]
    disk: Option<u64>,
    /// The sizes to try, as multiples of each current size.
    #[arg(long, value_delimiter = ',', default_value = "0.125,0.25,0.5,1,2,4,8", value_parser = parse_scale, allow_negative_numbers = true)]
    scales: Vec<f64>,
    /// The sizes to try as a range instead (e.g. 1MiB..4GiB), log-spaced,
    /// with --points points; the current sizes and their halves and doubles
    /// are added.
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
    /// Model at most this many distinct objects exactly; past it, model a
    /// random share of the objects (chosen by a hash of their ids) that
    /// keeps this many, and estimate the rest from them (the rate is
    /// shown). With the disk tier alone, a first pass also finds the most
    /// requested objects (a tenth of this many), followed at every request.
    #[arg(long, default_value_t = 100_000, value_parser = value_parser!(u64).range(1..=100_000_000))]
    max_keys: u64,
    /// Model this fixed share of the objects instead, in (0, 1].
    #[arg(long, value_parser = parse_rate)]
    sampling_rate: Option<f64>,
    /// Shards the memory tier is split into (default: as the tier chooses
    /// from the cores it runs on).
    #[arg(long, value_name = "N", value_parser = value_parser!(u64).range(1..=1024))]
    shards: Option<u64>,
    /// Cores of the machine the memory tier runs on (its default shard
    /// count depends on them; default: this machine's).
    #[arg(long, value_parser = value_parser!(u64).range(1..=4096))]
    cores: Option<u64>,
    /// Write charts: PREFIX-memory.svg/.png, PREFIX-disk.svg/.png, and with
    /// both tiers PREFIX-stack.svg/.png.
    #[arg(long, value_name = "PREFIX")]
    plot: Option<PathBuf>,
    /// When an object is asked for at a size other than the one stored, a
    /// hit either stores it again at the new size (`update`, the default)
    /// or keeps the stored size (`keep`, as libCacheSim's simulators do, to
    /// compare with them exactly; each size is then its own pass). Only the
    /// disk tier alone (--disk without --memory) offers `keep`; traces whose
    /// sizes never change give the same answer under both.
    #[arg(long, value_enum, default_value_t = SizeRule::Update)]
    size_on_hit: SizeRule,
    /// Threads to model with (default: one per core); the memory tier's
    /// sizes are shared among them.
    #[arg(long, value_parser = value_parser!(u64).range(1..=256))]
    threads: Option<u64>,
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
    let (a, b) = (bytes::parse(a)?, bytes::parse(b)?);
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
    if args.size_on_hit == SizeRule::Keep && args.memory.is_some() {
        return Err(Failure::Usage(
            "--size-on-hit keep applies to the disk tier alone: drop --memory".into(),
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
    let pb = if args.no_progress || args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(file_len)
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} {prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
        )
        .expect("valid template"),
    );
    let started = Instant::now();
    // The disk tier alone, sampled: a first pass finds the most requested
    // objects, which the model then follows at every request (where a few
    // objects carry much of the traffic, whether they fall in the sample
    // is what moves a sampled curve most). A file only: a pipe is read
    // once.
    // No pass when the bound holds every request (`--max-keys` at least
    // the requests the file can hold: all is exact anyway).
    let most_requests = file_len
        / if format == Format::OracleGeneral {
            24
        } else {
            4
        };
    let sampled = match sampling {
        Sampling::Rate(r) => r < 1.0,
        Sampling::Bounded { max_keys } => (max_keys as u64) < most_requests,
        Sampling::Off => false,
    };
    let exact_keys = if args.memory.is_none()
        && sampled
        && std::fs::metadata(&args.trace).is_ok_and(|m| m.is_file())
    {
        pb.set_prefix("finding the most requested objects");
        let mut frequent = FrequentKeys::new((args.max_keys as usize / 10).max(1_000));
        let mut reader = TraceReader::open(&args.trace, format.clone())
            .map_err(|e| unreadable(&args.trace, e))?;
        let mut n = 0u64;
        while let Some(r) = reader.next() {
            frequent.observe(r.map_err(|e| unreadable(&args.trace, e))?.key);
            n += 1;
            if n.is_multiple_of(1 << 16) {
                pb.set_position(reader.bytes_read());
            }
        }
        pb.set_position(0);
        frequent.keys()
    } else {
        Vec::new()
    };
    pb.set_prefix("modelling");
    let mut reader =
        TraceReader::open(&args.trace, format.clone()).map_err(|e| unreadable(&args.trace, e))?;
    let plan = models::Plan {
        exact_keys,
        memory: args.memory.map(|m| grid(&args, m)),
        disk: args.disk.map(|d| grid(&args, d)),
        options,
        sampling,
        size_on_hit: match args.size_on_hit {
            SizeRule::Update => SizeOnHit::Update,
            SizeRule::Keep => SizeOnHit::Keep,
        },
        threads: args.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |t| t as usize,
        ),
    };

    // The reader's position is what the models have been handed, at most
    // two batches ahead of the slowest: the bar moves with the modelling.
    let position = std::cell::Cell::new(0u64);
    let (results, n) = plan
        .run(
            args.memory,
            || {
                let next = reader.next();
                position.set(reader.bytes_read());
                next
            },
            |n| {
                pb.set_position(position.get());
                pb.set_message(format!("{n} requests"));
            },
        )
        .map_err(|e| unreadable(&args.trace, e))?;
    pb.finish_and_clear();
    if n == 0 {
        return Err(Failure::Usage(format!(
            "{}: no requests in the trace",
            args.trace.display()
        )));
    }
    let elapsed = started.elapsed().as_secs_f64();

    let mut tiers: Vec<Tier> = Vec::new();
    if let Some(c) = results.memory {
        tiers.push(Tier::new("memory", c, args.memory));
    }
    if let Some(c) = results.disk {
        let mut t = Tier::new("disk", c, args.disk);
        t.behind_memory = args.memory.is_some();
        tiers.push(t);
    }
    let report = report::Report {
        facts: Facts {
            trace: args.trace.display().to_string(),
            format: format_name(&format),
            requests: n,
            seconds: elapsed,
            size_on_hit: match args.size_on_hit {
                SizeRule::Update => "update",
                SizeRule::Keep => "keep",
            },
        },
        tiers,
        stack: results.stack,
        memory: args.memory,
        disk: args.disk,
    };

    // Charts first (their paths go in the JSON), but a chart that cannot
    // be written does not hide the tables: its error comes after them.
    let mut written = Vec::new();
    let mut plot_error = None;
    if let Some(prefix) = &args.plot {
        match report.plot(prefix) {
            Ok(w) => written = w,
            Err(e) => plot_error = Some(e),
        }
    }
    if args.json {
        report.print_json(&written);
    } else {
        report.print(&written);
    }
    match plot_error {
        Some(e) => Err(Failure::Runtime(format!("--plot: {e}"))),
        None => Ok(()),
    }
}

fn unreadable(path: &Path, e: TraceError) -> Failure {
    Failure::Usage(format!("{}: {e}", path.display()))
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
