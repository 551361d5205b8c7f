//! `tierscope`: the command-line tool.
//!
//! - `tierscope demo`: a memory -> disk (-> Redis) stack under a
//!   Zipf-popular workload of real wasm modules, every tier instrumented,
//!   `/metrics` served for Prometheus, a live progress line and a final
//!   per-tier table.
//! - `tierscope size TRACE`: hit ratio against capacity per tier, offline,
//!   from a trace (tables, charts, a recommendation).
//! - `tierscope run FILE.wasm [ARGS]`: a WASI program, as `wasmer run` runs
//!   it, its compiled module cached.
//! - `tierscope cache stats|verify|trim|clear|warm`: an operator's view of
//!   a cache directory.

mod bytes;
mod cache;
mod common;
mod demo;
mod duration;
mod expo;
mod plot;
mod record;
#[cfg(feature = "wasix")]
mod run;
mod size;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tierscope",
    version,
    about = "Tiered, observable caches for compiled wasmer modules"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a workload through an instrumented memory -> disk (-> Redis)
    /// stack and serve its metrics.
    #[command(after_help = demo::EXAMPLES)]
    Demo(demo::DemoArgs),
    /// Model each tier at other sizes from a trace: hit ratio against
    /// capacity, charts, and a recommendation.
    Size(size::SizeArgs),
    /// Run a WASI program (as `wasmer run` does), its compiled module
    /// cached in memory and on disk: the second run loads it, no compile.
    #[cfg(feature = "wasix")]
    Run(run::RunArgs),
    /// Look inside a cache directory: statistics, verification, trimming,
    /// and warming it before a deploy.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
}

/// Exit code for bad input (flags, unreadable files), as clap uses.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Size(args) => size::run(args),
        Command::Cache(command) => match cache::run(command) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        #[cfg(feature = "wasix")]
        Command::Run(args) => match run::run(args) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(common::Failure::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(USAGE)
        }
        Err(common::Failure::Runtime(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
