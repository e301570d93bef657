//! The Prometheus text exposition format (version 0.0.4), as much of it as we use.

use std::fmt::{Display, Write as _};

/// The `Content-Type` of what [`Encoder`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Appends families and their samples to one string.
#[derive(Default)]
pub struct Encoder {
    out: String,
}

impl Encoder {
    /// `# HELP` and `# TYPE` of a family; its samples follow.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample: `name{label="value",…} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// The series of one histogram: cumulative `_bucket`s up to `+Inf`, `_sum` and `_count`.
    /// `counts` holds one count per bound plus one for above every bound.
    pub fn histogram(
        &mut self,
        name: &str,
        label: (&str, &str),
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) {
        debug_assert_eq!(counts.len(), bounds.len() + 1);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (bound, count) in bounds.iter().zip(counts) {
            cumulative += count;
            self.sample(&bucket, &[label, ("le", &bound.to_string())], cumulative);
        }
        cumulative += counts.last().copied().unwrap_or(0);
        self.sample(&bucket, &[label, ("le", "+Inf")], cumulative);
        self.sample(&format!("{name}_sum"), &[label], sum);
        self.sample(&format!("{name}_count"), &[label], cumulative);
    }

    /// The text, one line per header and sample.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value with `\`, `"` and line feeds escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        let mut out = Encoder::default();
        out.sample("m", &[("a", "x\"y\\z\nw"), ("b", "c")], 1);
        assert_eq!(out.finish(), "m{a=\"x\\\"y\\\\z\\nw\",b=\"c\"} 1\n");
    }
}
