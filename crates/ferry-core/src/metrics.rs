//! Prometheus text exposition (format 0.0.4) for every role's `/metrics`.
//!
//! Names follow Prometheus' conventions, which `promtool check metrics` enforces in the tests:
//! base units (`_seconds`, `_bytes`), `_total` on counters and only there, histograms instead of
//! averages, and one `ferry_build_info` gauge per process. A family is written once with its
//! HELP and TYPE lines, then its samples; label values are escaped as the format asks.

use std::fmt::Write as _;

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Escape a label value (backslash, double quote, newline).
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A value as the format writes it (`+Inf`, `-Inf`, `NaN` spelled out).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn labels(out: &mut String, labels: &[(&str, &str)], extra: Option<(&str, &str)>) {
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(extra) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
    }
    out.push('}');
}

/// A histogram's state: cumulative-ready bucket counts for fixed upper bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one per bound.
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len()], count: 0, sum: 0.0 }
    }

    pub fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += v;
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Bounds for request and job latencies, in seconds.
pub const LATENCY_SECONDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// One `/metrics` document being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Start a family: its HELP and TYPE lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {}", kind.as_str());
        self
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, label_pairs: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        labels(&mut self.out, label_pairs, None);
        let _ = writeln!(self.out, " {}", number(value));
        self
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// The samples of one histogram of the current family (`_bucket`, `_sum`, `_count`).
    pub fn histogram(&mut self, name: &str, label_pairs: &[(&str, &str)], h: &Histogram) -> &mut Self {
        let mut cumulative = 0;
        for (bound, n) in h.bounds.iter().zip(&h.counts) {
            cumulative += n;
            let le = number(*bound);
            self.out.push_str(name);
            self.out.push_str("_bucket");
            labels(&mut self.out, label_pairs, Some(("le", &le)));
            let _ = writeln!(self.out, " {cumulative}");
        }
        let _ = write!(self.out, "{name}_bucket");
        labels(&mut self.out, label_pairs, Some(("le", "+Inf")));
        let _ = writeln!(self.out, " {}", h.count);
        let _ = write!(self.out, "{name}_sum");
        labels(&mut self.out, label_pairs, None);
        let _ = writeln!(self.out, " {}", number(h.sum));
        let _ = write!(self.out, "{name}_count");
        labels(&mut self.out, label_pairs, None);
        let _ = writeln!(self.out, " {}", h.count);
        self
    }

    /// `ferry_build_info{role,version} 1`, the version of the process that answers.
    pub fn build_info(&mut self, role: &str) -> &mut Self {
        self.family("ferry_build_info", Kind::Gauge, "Version of this Ferry process (always 1).").sample(
            "ferry_build_info",
            &[("role", role), ("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        )
    }

    /// Append text rendered elsewhere (whole families).
    pub fn raw(&mut self, text: &str) -> &mut Self {
        self.out.push_str(text);
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// The Content-Type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fab_2_histogram_buckets_are_cumulative_and_end_with_inf() {
        static B: &[f64] = &[0.1, 1.0];
        let mut h = Histogram::new(B);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(7.0);
        let mut e = Exposition::new();
        e.family("x_seconds", Kind::Histogram, "X.").histogram("x_seconds", &[("a", "q\"1")], &h);
        let text = e.finish();
        assert!(text.contains("x_seconds_bucket{a=\"q\\\"1\",le=\"0.1\"} 1\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{a=\"q\\\"1\",le=\"1\"} 2\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{a=\"q\\\"1\",le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_count{a=\"q\\\"1\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_sum{a=\"q\\\"1\"} 7.55\n"), "{text}");
    }

    #[test]
    fn fab_2_build_info_names_role_and_version() {
        let mut e = Exposition::new();
        e.build_info("vault");
        let text = e.finish();
        assert!(text.contains("# TYPE ferry_build_info gauge"));
        assert!(
            text.contains(&format!("ferry_build_info{{role=\"vault\",version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")))
        );
    }
}
