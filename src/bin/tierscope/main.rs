//! `tierscope`: the command-line tool.
//!
//! - `tierscope demo`: a memory -> disk (-> Redis) stack under a
//!   Zipf-popular workload of real wasm modules, every tier instrumented,
//!   `/metrics` served for Prometheus, a live progress line and a final
//!   per-tier table.

mod demo;
mod expo;
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
    Demo(demo::DemoArgs),
    /// Run a WASI program through a wasmer-wasix runtime cached by an
    /// instrumented memory -> disk (-> Redis) stack (feature `wasix`).
    #[cfg(feature = "wasix")]
    Run(run::RunArgs),
}

/// Exit code for bad input (flags, unreadable files), as clap uses.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => match demo::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(demo::Failure::Usage(msg)) => {
                eprintln!("error: {msg}");
                ExitCode::from(USAGE)
            }
            Err(demo::Failure::Runtime(msg)) => {
                eprintln!("error: {msg}");
                ExitCode::FAILURE
            }
        },
        #[cfg(feature = "wasix")]
        Command::Run(args) => match run::run(args) {
            Ok(code) => ExitCode::from(code),
            Err(demo::Failure::Usage(msg)) => {
                eprintln!("error: {msg}");
                ExitCode::from(USAGE)
            }
            Err(demo::Failure::Runtime(msg)) => {
                eprintln!("error: {msg}");
                ExitCode::FAILURE
            }
        },
    }
}
