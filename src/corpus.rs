//! Synthetic but real WebAssembly modules of chosen sizes, for tests,
//! benchmarks and the demo (feature `test-util`).
//!
//! Each module is valid wasm that wasmer compiles like any other: a number
//! of functions doing integer and floating-point arithmetic with locals,
//! loops, branches, calls, a table and memory accesses, so code size and
//! compile time grow with the wasm size roughly as they do for compiled
//! languages (a 10 KB module compiles in milliseconds, a 5 MB one in about
//! a second on this project's reference machine). The `seed` makes
//! modules of equal size distinct (different hashes).

use std::fmt::Write as _;

/// Generate a module of about `target_bytes` of wasm (never less than a
/// few hundred bytes), distinct for each `seed`.
pub fn module(target_bytes: usize, seed: u64) -> Vec<u8> {
    // One function body is ~180-200 bytes of wasm; grow the count to fit.
    let mut funcs = (target_bytes / 190).max(1);
    loop {
        let wasm = build(funcs, seed);
        if wasm.len() >= target_bytes * 9 / 10 || funcs > 1 << 20 {
            return wasm;
        }
        let grow = (target_bytes as f64 / wasm.len() as f64).clamp(1.05, 4.0);
        funcs = ((funcs as f64) * grow).ceil() as usize;
    }
}

fn build(funcs: usize, seed: u64) -> Vec<u8> {
    let mut wat = String::with_capacity(funcs * 600 + 512);
    wat.push_str("(module\n");
    wat.push_str("  (memory (export \"memory\") 1)\n");
    wat.push_str("  (global $g (mut i64) (i64.const 0))\n");
    let _ = writeln!(wat, "  (table {funcs} funcref)");
    let _ = writeln!(wat, "  (type $t (func (param i64 i64) (result i64)))");
    let mut rng = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        // xorshift64*
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for i in 0..funcs {
        let k1 = next() as i64;
        let k2 = (next() % 61 + 1) as i64;
        let k3 = next() % 997;
        let callee = if i > 0 { next() as usize % i } else { 0 };
        let _ = write!(
            wat,
            "  (func $f{i} (export \"f{i}\") (type $t) (local $i i64) (local $acc i64) (local $x f64)
    (local.set $acc (i64.xor (local.get 0) (i64.const {k1})))
    (local.set $x (f64.convert_i64_s (local.get 1)))
    (block $done
      (loop $top
        (br_if $done (i64.ge_u (local.get $i) (i64.const {k2})))
        (local.set $acc (i64.add (i64.mul (local.get $acc) (i64.const 6364136223846793005)) (i64.rotl (local.get $i) (i64.const 7))))
        (local.set $x (f64.add (f64.mul (local.get $x) (f64.const 1.0001)) (f64.convert_i64_u (local.get $i))))
        (if (i64.eqz (i64.rem_u (local.get $acc) (i64.const {k3}1)))
          (then (global.set $g (i64.add (global.get $g) (local.get $acc)))))
        (i64.store (i32.wrap_i64 (i64.and (local.get $i) (i64.const 4088))) (local.get $acc))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $top)))
    (i64.add (i64.trunc_sat_f64_s (local.get $x))
      {call}))
",
            call = if i > 0 {
                format!("(call $f{callee} (local.get $acc) (i64.load (i32.const 8)))")
            } else {
                "(local.get $acc)".to_string()
            }
        );
    }
    wat.push_str("  (elem (i32.const 0)");
    for i in 0..funcs {
        let _ = write!(wat, " $f{i}");
    }
    wat.push_str(")\n)\n");
    wat::parse_str(&wat).expect("generated WAT is valid by construction")
}

/// A tiny valid module (a few dozen bytes), distinct per `seed`.
pub fn tiny(seed: u64) -> Vec<u8> {
    wat::parse_str(format!(
        "(module (func (export \"add\") (param i64 i64) (result i64)
            (i64.add (i64.add (local.get 0) (local.get 1)) (i64.const {seed}))))"
    ))
    .expect("valid WAT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_reach_their_size_and_differ_by_seed() {
        for target in [2_000, 20_000, 200_000] {
            let a = module(target, 1);
            let b = module(target, 2);
            assert!(a.len() >= target * 9 / 10, "{} < {target}", a.len());
            assert!(a.len() <= target * 3, "{} >> {target}", a.len());
            assert_ne!(a, b);
            wasmer::Module::validate(&wasmer::Engine::default(), &a).unwrap();
        }
    }
}
