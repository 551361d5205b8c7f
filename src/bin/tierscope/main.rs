//! `tierscope`: the command-line tool.
//!
//! - `tierscope demo`: a memory -> disk (-> Redis) stack under a
//!   Zipf-popular workload of real wasm modules, every tier instrumented,
//!   `/metrics` served for Prometheus, a live progress line and a final
//!   per-tier table.
//! - `tierscope size TRACE`: hit ratio against capacity per tier, offline,
//!   from a trace (tables, charts, a recommendation).

mod demo;
mod expo;
mod plot;
mod record;
#[cfg(feature = "wasix")]
mod run;
mod size;
mod sizing;

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
    Demo(demo::DemoArgs),
    /// Model each tier at other sizes from a trace: hit ratio against
    /// capacity, charts, and a recommendation.
    Size(sizing::SizeArgs),
    /// Run a WASI program through a wasmer-wasix runtime cached by an
    /// instrumented memory -> disk (-> Redis) stack (feature `wasix`).
    #[cfg(feature = "wasix")]
    Run(run::RunArgs),
}

/// Exit code for bad input (flags, unreadable files), as clap uses.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Size(args) => sizing::run(args),
        #[cfg(feature = "wasix")]
        Command::Run(args) => match run::run(args) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(demo::Failure::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(USAGE)
        }
        Err(demo::Failure::Runtime(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
