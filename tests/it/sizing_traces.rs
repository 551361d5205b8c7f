//! Seeded traces for sampling-accuracy checks, and the error between two
//! curves. Shared by `tests/it/sizing_accuracy.rs` and
//! `benches/sizing_accuracy.rs` (included there by path): self-contained.

#![allow(dead_code)]

use tierscope::sizing::{Curve, Request};

/// splitmix64: a seeded stream, the same on every machine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What a generated trace is.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Zipf exponent of popularity.
    pub alpha: f64,
    pub objects: u64,
    pub requests: u64,
    /// Object sizes, log-uniform in [lo, hi] bytes.
    pub lo: u64,
    pub hi: u64,
    pub seed: u64,
}

impl Spec {
    /// Zipf(`alpha`) over `objects`, sizes 10 KB-2 MB (the shape).
    pub fn zipf(alpha: f64, objects: u64, requests: u64, seed: u64) -> Spec {
        Spec {
            alpha,
            objects,
            requests,
            lo: 10_000,
            hi: 2_000_000,
            seed,
        }
    }

    /// The requests, one at a time (ids spread over 64 bits, so that key
    /// hashes are unrelated to popularity, as in real traces).
    pub fn requests(&self) -> impl Iterator<Item = Request> + use<> {
        let mut rng = Rng(self.seed);
        let (l, h) = ((self.lo as f64).ln(), (self.hi as f64).ln());
        let sizes: Vec<u32> = (0..self.objects)
            .map(|_| (l + (h - l) * rng.unit()).exp() as u32)
            .collect();
        let cdf = zipf_cdf(self.objects as usize, self.alpha);
        let salt = self.seed.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        (0..self.requests).map(move |i| {
            let u = rng.unit();
            let k = cdf.partition_point(|&c| c < u).min(cdf.len() - 1);
            let mut id = Rng(k as u64 ^ salt);
            Request::new(i * 1_000, id.next(), u64::from(sizes[k]))
        })
    }
}

/// Zipf(`a`) over `n` ranks: the cumulative distribution, normalised.
pub fn zipf_cdf(n: usize, a: f64) -> Vec<f64> {
    let mut acc = 0.0;
    let mut w: Vec<f64> = (1..=n)
        .map(|r| {
            acc += (r as f64).powf(-a);
            acc
        })
        .collect();
    for x in &mut w {
        *x /= acc;
    }
    w
}

/// `points` capacities log-spaced from `lo` to `hi` bytes.
pub fn log_grid(lo: u64, hi: u64, points: usize) -> Vec<u64> {
    let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
    (0..points)
        .map(|i| (l + (h - l) * i as f64 / (points - 1) as f64).exp() as u64)
        .collect()
}

/// Mean and largest absolute error of hit ratio and of byte hit ratio:
/// `(hit mae, hit max, byte mae, byte max)`.
pub fn errors(exact: &Curve, sampled: &Curve) -> (f64, f64, f64, f64) {
    let n = exact.points.len().max(1) as f64;
    let (mut hs, mut hm, mut bs, mut bm) = (0.0, 0.0f64, 0.0, 0.0f64);
    for (e, s) in exact.points.iter().zip(&sampled.points) {
        assert_eq!(e.capacity, s.capacity);
        let h = (e.hit_ratio - s.hit_ratio).abs();
        let b = (e.byte_hit_ratio - s.byte_hit_ratio).abs();
        hs += h;
        bs += b;
        hm = hm.max(h);
        bm = bm.max(b);
    }
    (hs / n, hm, bs / n, bm)
}
