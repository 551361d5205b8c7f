//! What a program needs, read from its sections before anything is
//! compiled: its imports (only WASI's can be provided) and its exports (a
//! command's `_start`, or the function `--invoke` names, with arguments it
//! can take). A module that cannot run is refused in milliseconds, not after
//! a compile of tens of seconds and a cache entry of tens of megabytes.

use std::collections::BTreeMap;

use wasmparser::{ExternalKind, Parser, Payload, TypeRef, ValType};

/// The import namespaces wasmer-wasix provides functions for.
const WASI_MODULES: [&str; 4] = [
    "wasi_snapshot_preview1",
    "wasi_unstable",
    "wasix_32v1",
    "wasix_64v1",
];

/// A value type `--invoke` can pass and print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    I32,
    I64,
    F32,
    F64,
}

impl Scalar {
    fn of(v: ValType) -> Option<Scalar> {
        match v {
            ValType::I32 => Some(Scalar::I32),
            ValType::I64 => Some(Scalar::I64),
            ValType::F32 => Some(Scalar::F32),
            ValType::F64 => Some(Scalar::F64),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scalar::I32 => "i32",
            Scalar::I64 => "i64",
            Scalar::F32 => "f32",
            Scalar::F64 => "f64",
        }
    }
}

/// An exported function's parameters, when every type in its signature
/// is a number (results are printed from the values returned).
#[derive(Debug, Clone)]
pub struct Signature {
    pub params: Vec<Scalar>,
}

/// What the sections say.
#[derive(Debug, Default)]
pub struct Shape {
    /// Imports WASI does not provide, by module namespace: how many, and
    /// the first name.
    foreign_imports: BTreeMap<String, (usize, String)>,
    /// Whether all of them are functions.
    foreign_all_functions: bool,
    /// Exported functions: name to signature (`None`: a type `--invoke`
    /// cannot pass, such as a reference).
    functions: BTreeMap<String, Option<Signature>>,
}

impl Shape {
    /// Read the imports and exports of `wasm`. An error is a file that is
    /// not a well-formed WebAssembly module.
    pub fn read(wasm: &[u8]) -> Result<Shape, String> {
        let mut types: Vec<Option<Signature>> = Vec::new();
        let mut func_types: Vec<u32> = Vec::new();
        let mut exports: Vec<(String, u32)> = Vec::new();
        let mut imports: Vec<(String, String, bool)> = Vec::new();
        let mut dynamic = false;
        for payload in Parser::new(0).parse_all(wasm) {
            match payload.map_err(|e| e.to_string())? {
                Payload::Version { encoding, .. } if encoding != wasmparser::Encoding::Module => {
                    return Err("it is a WebAssembly component, not a core module: tierscope runs WASI core modules (`wasm32-wasip1`)".into());
                }
                Payload::TypeSection(reader) => {
                    for group in reader {
                        let group = group.map_err(|e| e.to_string())?;
                        for sub in group.into_types() {
                            types.push(match sub.composite_type.inner {
                                wasmparser::CompositeInnerType::Func(f) => {
                                    let params: Option<Vec<Scalar>> =
                                        f.params().iter().map(|v| Scalar::of(*v)).collect();
                                    let results: Option<Vec<Scalar>> =
                                        f.results().iter().map(|v| Scalar::of(*v)).collect();
                                    params.zip(results).map(|(params, _)| Signature { params })
                                }
                                _ => None,
                            });
                        }
                    }
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import.map_err(|e| e.to_string())?;
                        let is_func = match import.ty {
                            TypeRef::Func(t) | TypeRef::FuncExact(t) => {
                                func_types.push(t);
                                true
                            }
                            _ => false,
                        };
                        imports.push((import.module.to_string(), import.name.to_string(), is_func));
                    }
                }
                Payload::FunctionSection(reader) => {
                    for t in reader {
                        func_types.push(t.map_err(|e| e.to_string())?);
                    }
                }
                Payload::ExportSection(reader) => {
                    for export in reader {
                        let export = export.map_err(|e| e.to_string())?;
                        if export.kind == ExternalKind::Func {
                            exports.push((export.name.to_string(), export.index));
                        }
                    }
                }
                Payload::CustomSection(c) if c.name() == "dylink.0" => dynamic = true,
                _ => {}
            }
        }
        // A `dylink.0` section: a dynamically linked module, whose `env`
        // imports wasix's linker resolves.
        let mut shape = Shape {
            foreign_all_functions: true,
            ..Shape::default()
        };
        for (module, name, is_func) in imports {
            let provided = WASI_MODULES.contains(&module.as_str())
                || (module == "env" && (name == "memory" || dynamic))
                || (dynamic && matches!(module.as_str(), "GOT.mem" | "GOT.func"));
            if !provided && (is_func || module != "env") {
                let e = shape.foreign_imports.entry(module).or_insert((0, name));
                e.0 += 1;
                shape.foreign_all_functions &= is_func;
            }
        }
        for (name, index) in exports {
            let signature = func_types
                .get(index as usize)
                .and_then(|t| types.get(*t as usize))
                .cloned()
                .flatten();
            shape.functions.insert(name, signature);
        }
        Ok(shape)
    }

    /// Why the program cannot run as asked (`invoke`: the function
    /// `--invoke` names), in one line; `None` when it can.
    pub fn refusal(&self, invoke: Option<&str>, args: usize) -> Option<String> {
        let mut problems = Vec::new();
        if !self.foreign_imports.is_empty() {
            let total: usize = self.foreign_imports.values().map(|(n, _)| n).sum();
            let mut modules: Vec<(&String, &(usize, String))> =
                self.foreign_imports.iter().collect();
            modules.sort_by_key(|(name, (n, _))| (std::cmp::Reverse(*n), *name));
            let (module, (_, first)) = modules[0];
            let mut from: Vec<String> = modules
                .iter()
                .take(3)
                .map(|(m, (n, _))| format!("{n} from `{m}`"))
                .collect();
            if modules.len() > 3 {
                from.push(format!("{} more modules", modules.len() - 3));
            }
            problems.push(format!(
                "it imports {total} {} that WASI does not provide ({}; e.g. `{module}.{first}`): it needs a host that implements {}",
                match (self.foreign_all_functions, total) {
                    (true, 1) => "function",
                    (true, _) => "functions",
                    (false, 1) => "item",
                    (false, _) => "items",
                },
                from.join(", "),
                if modules.len() > 1 { "them" } else { "that module" },
            ));
        }
        match invoke {
            None if !self.functions.contains_key("_start") => {
                let listed = self.listed_functions();
                problems.push(if self.functions.contains_key("_initialize") {
                    format!(
                        "it is a reactor (a library: `_initialize`, no `_start`), not a command; call one of its functions with --invoke NAME ({listed})"
                    )
                } else {
                    format!(
                        "it has no `_start` (not a WASI command); call one of its functions with --invoke NAME ({listed})"
                    )
                });
            }
            None => {}
            Some(name) => match self.functions.get(name) {
                None => problems.push(format!(
                    "it exports no function `{name}` ({})",
                    self.listed_functions()
                )),
                Some(None) => problems.push(format!(
                    "`{name}` takes or returns values other than numbers (i32, i64, f32, f64), which --invoke cannot pass"
                )),
                Some(Some(sig)) if sig.params.len() != args => problems.push(format!(
                    "`{name}` takes {} argument{} ({}), {args} given",
                    sig.params.len(),
                    plural(sig.params.len()),
                    describe(&sig.params),
                )),
                Some(Some(_)) => {}
            },
        }
        (!problems.is_empty()).then(|| problems.join("; and "))
    }

    /// The signature of an exported function.
    pub fn signature(&self, name: &str) -> Option<&Signature> {
        self.functions.get(name).and_then(Option::as_ref)
    }

    fn listed_functions(&self) -> String {
        const SHOWN: usize = 5;
        let names: Vec<&str> = self
            .functions
            .keys()
            .map(String::as_str)
            .filter(|n| *n != "_initialize")
            .collect();
        if names.is_empty() {
            return "it exports no functions".into();
        }
        let mut text = format!("it exports {}", names[..names.len().min(SHOWN)].join(", "));
        if names.len() > SHOWN {
            text.push_str(&format!(" and {} more", names.len() - SHOWN));
        }
        text
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn describe(types: &[Scalar]) -> String {
    if types.is_empty() {
        return "none".into();
    }
    types
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(wat: &str) -> Shape {
        Shape::read(&wat::parse_str(wat).unwrap()).unwrap()
    }

    #[test]
    fn a_command_passes_and_a_reactor_is_refused_with_its_functions() {
        let command = shape(
            r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
                (memory (export "memory") 1) (func (export "_start")))"#,
        );
        assert_eq!(command.refusal(None, 0), None);
        let reactor = shape(
            r#"(module (func (export "_initialize")) (func (export "add") (param i32 i32) (result i32) i32.const 0))"#,
        );
        let why = reactor.refusal(None, 0).unwrap();
        assert!(why.contains("reactor") && why.contains("add"), "{why}");
        assert_eq!(reactor.refusal(Some("add"), 2), None);
        let why = reactor.refusal(Some("add"), 1).unwrap();
        assert!(
            why.contains("takes 2 arguments (i32, i32), 1 given"),
            "{why}"
        );
        let why = reactor.refusal(Some("mul"), 0).unwrap();
        assert!(why.contains("no function `mul`"), "{why}");
    }

    #[test]
    fn foreign_imports_are_named() {
        let s = shape(
            r#"(module (import "rb-js-abi-host" "eval-js" (func)) (import "rb-js-abi-host" "global-this" (func))
                (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                (import "env" "memory" (memory 1))
                (func (export "_start")))"#,
        );
        let why = s.refusal(None, 0).unwrap();
        assert!(
            why.contains("imports 2 functions that WASI does not provide (2 from `rb-js-abi-host`; e.g. `rb-js-abi-host.eval-js`)"),
            "{why}"
        );
        assert!(!why.contains("env"), "{why}");
    }

    #[test]
    fn a_component_is_not_a_module() {
        let component = [0u8, b'a', b's', b'm', 0x0d, 0, 1, 0];
        let e = Shape::read(&component).unwrap_err();
        assert!(e.contains("component"), "{e}");
    }
}
