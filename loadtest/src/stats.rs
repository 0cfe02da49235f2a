//! What a run measured, and how it is printed.
//!
//! Owns: the per-thread counters and histograms (merged once at the end, so
//! the hot path never shares a cache line), and the report: one ordered list
//! of named values printed as a table for people or one JSON line for scripts.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{Map, Value};

/// Counters and histograms of one event-loop thread. Counts named "window"
/// in the docs only cover messages whose send stamp falls in the measured
/// window (after warm-up, before the end of `--duration`).
pub struct Stats {
    /// `send` frames written in the window.
    pub sent: u64,
    /// `ack`s for window messages.
    pub acked: u64,
    /// `error` replies to window sends (nothing to deliver for those).
    pub refused: u64,
    /// Sum over window sends of the room's member count.
    pub expected: u64,
    /// Part of `expected` that belongs to refused sends.
    pub refused_expected: u64,
    /// First deliveries of window messages.
    pub delivered: u64,
    /// Deliveries of a seq the connection already had (whole run).
    pub duplicated: u64,
    /// Deliveries below the connection's highest seq, not seen before (whole run).
    pub out_of_order: u64,
    /// Messages for a room the connection did not join.
    pub foreign: u64,
    /// Messages whose text carries no stamp of ours (someone else's).
    pub unstamped: u64,
    /// Frames the harness could not parse after setup.
    pub malformed: u64,
    /// Connections lost after setup.
    pub disconnects: u64,
    /// `error` frames by code (whole run).
    pub errors: BTreeMap<String, u64>,
    /// Send to delivery, µs (window messages).
    pub latency: Histogram<u64>,
    /// Send to ack, µs (window messages).
    pub ack_latency: Histogram<u64>,
    /// TCP connect start to `hello`, µs.
    pub connect: Histogram<u64>,
    /// `join` written to `joined` read, µs.
    pub join: Histogram<u64>,
    /// How late each send left against its evenly paced slot, µs.
    pub send_lag: Histogram<u64>,
}

/// A histogram of microseconds from 1 µs to one hour, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            sent: 0,
            acked: 0,
            refused: 0,
            expected: 0,
            refused_expected: 0,
            delivered: 0,
            duplicated: 0,
            out_of_order: 0,
            foreign: 0,
            unstamped: 0,
            malformed: 0,
            disconnects: 0,
            errors: BTreeMap::new(),
            latency: histogram(),
            ack_latency: histogram(),
            connect: histogram(),
            join: histogram(),
            send_lag: histogram(),
        }
    }
}

impl Stats {
    /// Adds another thread's numbers into these.
    pub fn merge(&mut self, o: &Stats) -> Result<(), String> {
        self.sent += o.sent;
        self.acked += o.acked;
        self.refused += o.refused;
        self.expected += o.expected;
        self.refused_expected += o.refused_expected;
        self.delivered += o.delivered;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.foreign += o.foreign;
        self.unstamped += o.unstamped;
        self.malformed += o.malformed;
        self.disconnects += o.disconnects;
        for (code, n) in &o.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
        for (mine, theirs) in [
            (&mut self.latency, &o.latency),
            (&mut self.ack_latency, &o.ack_latency),
            (&mut self.connect, &o.connect),
            (&mut self.join, &o.join),
            (&mut self.send_lag, &o.send_lag),
        ] {
            mine.add(theirs).map_err(|e| format!("merging histograms: {e:?}"))?;
        }
        Ok(())
    }
}

/// Quantile of a µs histogram (0 when empty).
pub fn q(h: &Histogram<u64>, quantile: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(quantile)
    }
}

/// An ordered list of named values: the table and the JSON line show the
/// same names, so scripts and people read the same thing.
#[derive(Default)]
pub struct Report {
    rows: Vec<(&'static str, Value)>,
}

impl Report {
    /// Appends one value.
    pub fn add(&mut self, name: &'static str, value: impl Into<Value>) {
        self.rows.push((name, value.into()));
    }

    /// Appends a number rounded to 3 decimals (CPU seconds, rates).
    pub fn add_f(&mut self, name: &'static str, value: f64) {
        let rounded = (value * 1000.0).round() / 1000.0;
        self.rows
            .push((name, serde_json::Number::from_f64(rounded).map_or(Value::Null, Value::Number)));
    }

    /// Appends p50/p90/p99/p99.9/max of a µs histogram under `prefix_*`.
    pub fn add_latency(&mut self, names: [&'static str; 5], h: &Histogram<u64>) {
        let values = [q(h, 0.5), q(h, 0.9), q(h, 0.99), q(h, 0.999), h.max()];
        for (name, v) in names.into_iter().zip(values) {
            self.add(name, v);
        }
    }

    /// One JSON object on one line.
    pub fn json(&self) -> String {
        let map: Map<String, Value> =
            self.rows.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect();
        Value::Object(map).to_string()
    }

    /// A two-column table.
    pub fn table(&self) -> String {
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in &self.rows {
            let shown = match v {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                other => other.to_string(),
            };
            out.push_str(&format!("{k:<width$}  {shown}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_report() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        a.sent = 2;
        b.sent = 3;
        b.errors.insert("rate_limited".into(), 4);
        a.latency.saturating_record(100);
        b.latency.saturating_record(300);
        a.merge(&b).unwrap();
        assert_eq!(a.sent, 5);
        assert_eq!(a.errors["rate_limited"], 4);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(q(&Stats::default().latency, 0.5), 0);

        let mut r = Report::default();
        r.add("sent", a.sent);
        r.add_f("cpu_s", 1.23456);
        r.add("errors", serde_json::json!({"x": 1}));
        let v: Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(v["sent"], 5);
        assert_eq!(v["cpu_s"], 1.235);
        assert!(r.table().contains("sent    5\n"));
    }
}
