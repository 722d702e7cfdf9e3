//! Figures and the one table a run prints.

use std::fmt::Write;
use std::time::Duration;

/// One measured figure: a rate over `ops` operations, and latency percentiles when each
/// operation was timed.
#[derive(Debug, Clone)]
pub struct Figure {
    pub group: String,
    pub name: String,
    pub ops: usize,
    pub rate: f64,
    pub median_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub note: String,
}

impl Figure {
    pub fn from_latencies(group: &str, name: &str, mut latencies: Vec<Duration>, wall: Duration) -> Self {
        latencies.sort();
        let pct = |p: f64| {
            if latencies.is_empty() {
                return None;
            }
            let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            Some(latencies[rank - 1].as_secs_f64() * 1e6)
        };
        Self {
            group: group.to_owned(),
            name: name.to_owned(),
            ops: latencies.len(),
            rate: latencies.len() as f64 / wall.as_secs_f64().max(1e-9),
            median_us: pct(0.5),
            p99_us: pct(0.99),
            note: String::new(),
        }
    }

    pub fn rate_only(group: &str, name: &str, ops: usize, wall: Duration) -> Self {
        Self {
            group: group.to_owned(),
            name: name.to_owned(),
            ops,
            rate: ops as f64 / wall.as_secs_f64().max(1e-9),
            median_us: None,
            p99_us: None,
            note: String::new(),
        }
    }

    pub fn value(group: &str, name: &str, value: f64, unit: &str) -> Self {
        Self {
            group: group.to_owned(),
            name: name.to_owned(),
            ops: 0,
            rate: value,
            median_us: None,
            p99_us: None,
            note: unit.to_owned(),
        }
    }

    /// A figure that could not be measured because the sidecar lacks an API it needs
    /// (`why`: what it answered). Its rate is NaN, printed as `-`; ratios from it are
    /// printed as pending.
    pub fn pending(group: &str, name: &str, why: &str) -> Self {
        Self {
            group: group.to_owned(),
            name: name.to_owned(),
            ops: 0,
            rate: f64::NAN,
            median_us: None,
            p99_us: None,
            note: format!("PENDING the feature merge: {why}"),
        }
    }

    pub fn is_pending(&self) -> bool {
        self.rate.is_nan()
    }

    /// Sets the note unless it has one (a pending figure keeps its reason).
    pub fn note_if_empty(self, note: impl Into<String>) -> Self {
        if self.note.is_empty() { self.note(note) } else { self }
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub figures: Vec<Figure>,
    pub ratios: Vec<(String, f64, String)>,
}

impl Report {
    pub fn push(&mut self, figure: Figure) {
        eprintln!("  {:<14} {:<48} {}", figure.group, figure.name, fmt_rate(&figure));
        self.figures.push(figure);
    }

    pub fn get(&self, group: &str, name: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.group == group && f.name == name)
    }

    /// Records `a / b` of two figures' rates (or medians with `by_median`), with the goal.
    pub fn ratio(&mut self, label: &str, a: (&str, &str), b: (&str, &str), by_median: bool, goal: &str) {
        let (Some(fa), Some(fb)) = (self.get(a.0, a.1), self.get(b.0, b.1)) else { return };
        let value = if fa.is_pending() || fb.is_pending() {
            f64::NAN
        } else if by_median {
            match (fa.median_us, fb.median_us) {
                (Some(x), Some(y)) if y > 0.0 => x / y,
                _ => return,
            }
        } else if fb.rate > 0.0 {
            fa.rate / fb.rate
        } else {
            return;
        };
        self.ratios.push((label.to_owned(), value, goal.to_owned()));
    }

    /// Records a figure's own rate against an absolute goal, in the ratio table.
    pub fn goal(&mut self, label: &str, figure: (&str, &str), goal: &str) {
        let Some(f) = self.get(figure.0, figure.1) else { return };
        let value = f.rate;
        self.ratios.push((label.to_owned(), value, goal.to_owned()));
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<14} {:<48} {:>9} {:>13} {:>11} {:>11}  note",
            "group", "figure", "ops", "rate/s|value", "median µs", "p99 µs"
        );
        let _ = writeln!(out, "{}", "-".repeat(120));
        for f in &self.figures {
            let us = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
            let _ = writeln!(
                out,
                "{:<14} {:<48} {:>9} {:>13} {:>11} {:>11}  {}",
                f.group,
                f.name,
                if f.ops > 0 { f.ops.to_string() } else { "-".to_owned() },
                if f.is_pending() { "-".to_owned() } else { format!("{:.1}", f.rate) },
                us(f.median_us),
                us(f.p99_us),
                f.note
            );
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(out, "\n{:<70} {:>8}  goal", "ratio (computed in this run)", "value");
            let _ = writeln!(out, "{}", "-".repeat(100));
            for (label, value, goal) in &self.ratios {
                if value.is_nan() {
                    let _ = writeln!(out, "{label:<70} {:>8}  {goal}", "pending");
                } else {
                    let _ = writeln!(out, "{label:<70} {value:>8.2}  {goal}");
                }
            }
        }
        out
    }
}

fn fmt_rate(f: &Figure) -> String {
    match (f.median_us, f.p99_us) {
        (Some(m), Some(p)) => format!("{:.1}/s  median {m:.0} µs  p99 {p:.0} µs  ({} ops) {}", f.rate, f.ops, f.note),
        _ if f.is_pending() => f.note.clone(),
        _ => format!("{:.1} {}", f.rate, if f.note.is_empty() { "/s".to_owned() } else { f.note.clone() }),
    }
}
