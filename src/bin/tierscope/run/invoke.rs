//! `--invoke FUNCTION`: call one exported function of a module (a reactor,
//! a library) instead of `_start`, with the numbers given after the file as
//! its arguments, and print its results on stdout, one per line, as
//! `wasmtime run --invoke` does. The module gets the same WASI environment
//! (stdio, directories, variables) and `_initialize` runs first if exported.

use wasmer::{Module, Store, Value};
use wasmer_types::ModuleHash;
use wasmer_wasix::{WasiEnvBuilder, WasiError, WasiRuntimeError};

use super::check::{Scalar, Signature};

/// Parse the program's arguments as the function's parameters.
pub fn parse_args(name: &str, sig: &Signature, args: &[String]) -> Result<Vec<Value>, String> {
    sig.params
        .iter()
        .zip(args)
        .enumerate()
        .map(|(i, (ty, text))| {
            let bad = || {
                format!(
                    "--invoke {name}: argument {} `{text}` is not an {}",
                    i + 1,
                    ty.name()
                )
            };
            Ok(match ty {
                Scalar::I32 => {
                    let v: i64 = text.parse().map_err(|_| bad())?;
                    if !(i64::from(i32::MIN)..=i64::from(u32::MAX)).contains(&v) {
                        return Err(bad());
                    }
                    Value::I32(v as i32)
                }
                Scalar::I64 => match text.parse::<i64>() {
                    Ok(v) => Value::I64(v),
                    Err(_) => Value::I64(text.parse::<u64>().map_err(|_| bad())? as i64),
                },
                Scalar::F32 => Value::F32(text.parse().map_err(|_| bad())?),
                Scalar::F64 => Value::F64(text.parse().map_err(|_| bad())?),
            })
        })
        .collect()
}

/// How an invoked function ended.
pub enum Outcome {
    /// It returned these values.
    Returned(Vec<Value>),
    /// It called `proc_exit` with this code.
    Exited(i32),
    /// It trapped (or the instance could not start), with the message.
    Failed(String),
}

/// Instantiate `module` in `builder`'s environment and call `name`.
pub fn call(
    builder: WasiEnvBuilder,
    module: Module,
    hash: ModuleHash,
    store: &mut Store,
    name: &str,
    args: &[Value],
) -> Outcome {
    let (instance, env) = match builder.instantiate_ext(module, hash, store) {
        Ok(pair) => pair,
        Err(e) => return outcome_of_error(&e),
    };
    let function = match instance.exports.get_function(name) {
        Ok(f) => f.clone(),
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let result = function.call(store, args);
    let outcome = match result {
        Ok(values) => Outcome::Returned(values.into_vec()),
        Err(e) => match e.downcast_ref::<WasiError>() {
            Some(WasiError::Exit(code)) => Outcome::Exited(code.raw()),
            _ => Outcome::Failed(e.message()),
        },
    };
    env.on_exit(store, None);
    outcome
}

fn outcome_of_error(e: &WasiRuntimeError) -> Outcome {
    match e.as_exit_code() {
        Some(code) => Outcome::Exited(code.raw()),
        None => Outcome::Failed(e.to_string()),
    }
}

/// A result as `wasmtime run --invoke` prints it.
pub fn show(v: &Value) -> String {
    match v {
        Value::I32(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F32(x) => x.to_string(),
        Value::F64(x) => x.to_string(),
        other => format!("{other:?}"),
    }
}
