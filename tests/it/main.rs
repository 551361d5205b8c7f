//! Integration tests gathered in one binary (one link of wasmer).

#[path = "../common/mod.rs"]
mod common;

mod sizing_accuracy;
mod sizing_cli;
mod sizing_size_rule;
mod sizing_trace;
mod sizing_traces;
mod sizing_window;
