//! Summaries of tierscope's own metrics as a Prometheus server would scrape
//! them (the demo's progress line and final table): the exposition text is
//! parsed by the `prometheus-parse` crate; what is kept here is the
//! arithmetic (sums over label sets, and histogram quantiles interpolated
//! as PromQL's `histogram_quantile` does).

use std::collections::BTreeMap;

use prometheus_parse::Value;

/// All samples of one scrape.
#[derive(Debug)]
pub struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    /// Parse exposition text; lines that do not parse are skipped.
    pub fn parse(text: &str) -> Scrape {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        Scrape(
            prometheus_parse::Scrape::parse(lines).unwrap_or(prometheus_parse::Scrape {
                docs: Default::default(),
                samples: Vec::new(),
            }),
        )
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a prometheus_parse::Sample> + 'a {
        self.0.samples.iter().filter(move |s| {
            s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// Sum of the samples named `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                Value::Histogram(_) | Value::Summary(_) => 0.0,
            })
            .sum()
    }

    /// The `q` quantile (0..1) of histogram `name` over all series matching
    /// `labels`, interpolated within buckets as Prometheus'
    /// `histogram_quantile` does. `None` without observations.
    pub fn quantile(&self, name: &str, labels: &[(&str, &str)], q: f64) -> Option<f64> {
        let mut by_le: BTreeMap<OrdF64, f64> = BTreeMap::new();
        for s in self.matching(name, labels) {
            if let Value::Histogram(buckets) = &s.value {
                for b in buckets {
                    *by_le.entry(OrdF64(b.less_than)).or_default() += b.count;
                }
            }
        }
        let total = *by_le.values().last()?;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev_le = 0.0;
        let mut prev_count = 0.0;
        for (OrdF64(le), count) in by_le {
            if count >= rank {
                if le.is_infinite() {
                    return Some(prev_le);
                }
                let in_bucket = count - prev_count;
                let frac = if in_bucket > 0.0 {
                    (rank - prev_count) / in_bucket
                } else {
                    1.0
                };
                return Some(prev_le + (le - prev_le) * frac);
            }
            prev_le = le;
            prev_count = count;
        }
        None
    }
}

/// An `f64` ordered by `total_cmp`, as a map key.
#[derive(Debug, Clone, Copy)]
struct OrdF64(f64);

impl PartialEq for OrdF64 {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_and_interpolates_quantiles() {
        let text = r#"# HELP x help
# TYPE c_total counter
# TYPE h histogram
c_total{cache="m",tier="memory",result="hit"} 7
c_total{cache="m",tier="disk",result="hit"} 3
h_bucket{tier="a",le="1"} 0
h_bucket{tier="a",le="2"} 10
h_bucket{tier="a",le="+Inf"} 10
h_sum{tier="a"} 15
h_count{tier="a"} 10
plain 4.5
"#;
        let s = Scrape::parse(text);
        assert_eq!(s.sum("c_total", &[("result", "hit")]), 10.0);
        assert_eq!(s.sum("c_total", &[("tier", "disk")]), 3.0);
        assert_eq!(s.sum("plain", &[]), 4.5);
        assert_eq!(s.sum("h_sum", &[("tier", "a")]), 15.0);
        assert_eq!(s.sum("h_count", &[]), 10.0);
        assert_eq!(s.quantile("h", &[("tier", "a")], 0.5), Some(1.5));
        assert_eq!(s.quantile("h", &[("tier", "b")], 0.5), None);
    }
}
