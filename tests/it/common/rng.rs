//! A seeded xorshift64* generator for generated workloads: the same stream
//! on every run and machine; and Zipf popularity over it. Shared by the
//! tests (`mod common`) and the sizing benches (`#[path]`).

#![allow(dead_code)]

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n) (0 for n = 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A rank in [0, cdf.len()) drawn from `cdf` (see [`zipf_cdf`]).
    pub fn pick(&mut self, cdf: &[f64]) -> usize {
        let u = self.unit();
        cdf.partition_point(|&c| c < u)
            .min(cdf.len().saturating_sub(1))
    }
}

/// Zipf(`a`) over `n` ranks: the cumulative distribution, normalised.
pub fn zipf_cdf(n: usize, a: f64) -> Vec<f64> {
    let mut acc = 0.0;
    let w: Vec<f64> = (1..=n)
        .map(|r| {
            acc += 1.0 / (r as f64).powf(a);
            acc
        })
        .collect();
    w.iter().map(|x| x / acc).collect()
}
