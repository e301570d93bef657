//! The printed results: a table of median, min and max per measurement, the targets,
//! and the facts of the machine the figures belong to.

/// How a value is printed.
#[derive(Clone, Copy)]
pub enum Fmt {
    /// `1.234 s`
    Seconds,
    /// `12.3`
    Decimal,
    /// `1.23x`
    Ratio,
    /// A large rate: `312,456`
    Rate,
    /// An integer count: `1,000`
    Count,
}

impl Fmt {
    pub fn show(self, value: f64) -> String {
        if !value.is_finite() {
            return "-".to_owned();
        }
        match self {
            Fmt::Seconds => format!("{value:.3} s"),
            Fmt::Decimal => format!("{value:.1}"),
            Fmt::Ratio => format!("{value:.2}x"),
            Fmt::Rate | Fmt::Count => thousands(value.round() as i64),
        }
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Bytes in MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

enum Line {
    Section(String),
    Row {
        label: String,
        fmt: Fmt,
        values: Vec<f64>,
    },
}

/// Measurements grouped in sections; each row holds one value per run.
#[derive(Default)]
pub struct Table {
    lines: Vec<Line>,
}

const LABEL_WIDTH: usize = 44;
const VALUE_WIDTH: usize = 12;

impl Table {
    pub fn section(&mut self, title: &str) {
        self.lines.push(Line::Section(title.to_owned()));
    }

    pub fn row(&mut self, label: &str, fmt: Fmt, values: Vec<f64>) {
        self.lines.push(Line::Row {
            label: label.to_owned(),
            fmt,
            values,
        });
    }

    pub fn print(&self) {
        println!(
            "{:<LABEL_WIDTH$}{:>VALUE_WIDTH$}{:>VALUE_WIDTH$}{:>VALUE_WIDTH$}",
            "", "median", "min", "max"
        );
        for line in &self.lines {
            match line {
                Line::Section(title) => println!("{title}"),
                Line::Row { label, fmt, values } => {
                    let (min, max) = min_max(values);
                    println!(
                        "  {:<width$}{:>VALUE_WIDTH$}{:>VALUE_WIDTH$}{:>VALUE_WIDTH$}",
                        label,
                        fmt.show(median(values)),
                        fmt.show(min),
                        fmt.show(max),
                        width = LABEL_WIDTH - 2,
                    );
                }
            }
        }
    }

    pub fn print_targets(&self, targets: &[Target]) {
        println!("targets (issue 3), on the medians:");
        for target in targets {
            let verdict = if target.met() {
                "met".to_owned()
            } else {
                format!(
                    "MISSED by {:.0}%",
                    100.0 * (target.value / target.limit - 1.0)
                )
            };
            println!(
                "  {:<width$}{:>VALUE_WIDTH$}  {} {:<8} {}",
                target.label,
                target.fmt.show(target.value),
                if target.inclusive { "<=" } else { "< " },
                target.fmt.show(target.limit),
                verdict,
                width = LABEL_WIDTH - 2,
            );
        }
    }
}

/// One row per case and one column per measurement, each cell formatted already.
pub struct Grid {
    headers: Vec<String>,
    /// How many leading columns are text (aligned left); the rest are numbers.
    text_columns: usize,
    rows: Vec<Vec<String>>,
}

impl Grid {
    pub fn new(headers: &[&str], text_columns: usize) -> Self {
        Grid {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            text_columns,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                std::iter::once(&self.headers[i])
                    .chain(self.rows.iter().filter_map(|row| row.get(i)))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for cells in std::iter::once(&self.headers).chain(&self.rows) {
            let line: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, &width))| {
                    if i < self.text_columns {
                        format!("{cell:<width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                })
                .collect();
            println!("  {}", line.join("  ").trim_end());
        }
    }
}

/// One of the targets and the measured value.
pub struct Target {
    label: &'static str,
    value: f64,
    limit: f64,
    inclusive: bool,
    fmt: Fmt,
}

impl Target {
    pub fn at_most(label: &'static str, value: f64, limit: f64, fmt: Fmt) -> Self {
        Target {
            label,
            value,
            limit,
            inclusive: true,
            fmt,
        }
    }

    pub fn below(label: &'static str, value: f64, limit: f64, fmt: Fmt) -> Self {
        Target {
            label,
            value,
            limit,
            inclusive: false,
            fmt,
        }
    }

    fn met(&self) -> bool {
        if self.inclusive {
            self.value <= self.limit
        } else {
            self.value < self.limit
        }
    }
}

/// The median of the finite values (NaN marks a value that was not measured).
pub fn median(values: &[f64]) -> f64 {
    let sorted = sorted_finite(values);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The `p`-th percentile by nearest rank (`p` = 100 is the max); NaN when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let sorted = sorted_finite(values);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn min_max(values: &[f64]) -> (f64, f64) {
    let sorted = sorted_finite(values);
    match (sorted.first(), sorted.last()) {
        (Some(min), Some(max)) => (*min, *max),
        _ => (f64::NAN, f64::NAN),
    }
}

fn sorted_finite(values: &[f64]) -> Vec<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    sorted
}

/// `/proc/loadavg`'s 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Lines describing this machine: cores, CPU, memory, load (the machine may be shared), and
/// the PostgreSQL version.
pub fn machine_facts(server_version: &str, load_at_start: &str) -> Vec<String> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown CPU", |(_, name)| name.trim());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0 / 1024.0);
    vec![
        format!("machine:  {cores} cores ({cpu}), {memory_gib:.1} GiB RAM"),
        format!(
            "load:     {load_at_start} at the start, {} at the end (1, 5, 15 min averages)",
            load_average()
        ),
        format!("postgres: {server_version} (throwaway cluster, fsync off)"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles_skip_missing_values() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, f64::NAN, 2.0, 3.0]), 2.5);
        assert!(median(&[f64::NAN]).is_nan());
        let lags: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&lags, 50.0), 50.0);
        assert_eq!(percentile(&lags, 99.0), 99.0);
        assert_eq!(percentile(&lags, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn formats_values() {
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(Fmt::Ratio.show(1.456), "1.46x");
        assert_eq!(Fmt::Seconds.show(f64::NAN), "-");
    }
}
