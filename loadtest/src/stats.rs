//! What a run measured, and how it is printed.
//!
//! Owns: the per-thread counters and histograms (merged once per step, so
//! the hot path never shares a cache line), and the report: one ordered list
//! of named values printed as a table for people or one JSON line for scripts.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{Map, Value};

use crate::track::SeqSet;

/// Counters and histograms of one event-loop thread over one step. Counts
/// named "window" in the docs only cover messages whose send stamp falls in
/// the step's measured window (after warm-up, before the end of the step).
pub struct Stats {
    /// `send` (or `dm`) frames written in the window.
    pub sent: u64,
    /// Sends of every kind over the whole step (warm-up included).
    pub sent_step: u64,
    /// `ack`s for window messages.
    pub acked: u64,
    /// `ack`s of our sends over the whole step, whenever sent.
    pub acked_step: u64,
    /// `error` replies to window sends (nothing to deliver for those).
    pub refused: u64,
    /// Sum over window sends of the number of connections that should get it.
    pub expected: u64,
    /// Part of `expected` that belongs to refused sends.
    pub refused_expected: u64,
    /// First deliveries of window messages.
    pub delivered: u64,
    /// Deliveries of a seq the connection already had (whole step).
    pub duplicated: u64,
    /// Deliveries below the connection's highest seq, not seen before (whole step).
    pub out_of_order: u64,
    /// Messages for a room the connection did not join.
    pub foreign: u64,
    /// Messages whose text carries no stamp of ours (someone else's).
    pub unstamped: u64,
    /// Frames the harness could not parse after setup.
    pub malformed: u64,
    /// Connections lost after setup, not by the harness's own choice.
    pub disconnects: u64,
    /// `error` frames by code (whole step).
    pub errors: BTreeMap<String, u64>,
    /// Send to delivery, µs (window messages, live deliveries).
    pub latency: Histogram<u64>,
    /// Send to ack, µs (window messages).
    pub ack_latency: Histogram<u64>,
    /// TCP connect start to `hello`, µs.
    pub connect: Histogram<u64>,
    /// `join` written to `joined` read, µs.
    pub join: Histogram<u64>,
    /// How late each send left against its evenly paced slot, µs.
    pub send_lag: Histogram<u64>,
    /// Window deliveries per target (node) index, for cluster runs.
    pub by_target: Vec<u64>,
    /// Highest acked seq per room index (what every member must end with).
    pub room_last: Vec<u64>,
    /// Upgrades completed after a client's first (storm reconnects).
    pub reconnects: u64,
    /// Sessions the harness dropped on purpose (storm churn).
    pub closes: u64,
    /// Reconnect attempts that failed before the upgrade (retried).
    pub connect_errors: u64,
    /// Seqs received again in a later session or both live and from
    /// history, dropped by the seq dedupe (storm; not an error).
    pub deduped: u64,
    /// Seqs a reconnecting client first got from `joined`/`history`.
    pub recovered: u64,
    /// `history` pages fetched to catch up after a reconnect.
    pub pages: u64,
    /// `history` requests written in the window (history scenario).
    pub hist_sent: u64,
    /// Their answers.
    pub hist_ok: u64,
    /// Messages in those answers.
    pub hist_msgs: u64,
    /// Answers that broke the paging rules (order, gaps, cursor, limit).
    pub hist_bad: u64,
    /// `history` request to its answer, µs.
    pub hist_latency: Histogram<u64>,
    /// CPU seconds of the busiest event-loop thread over the window.
    pub busiest_thread_cpu_s: f64,
    /// Each storm client's index, room index and complete record of seqs seen.
    pub seqsets: Vec<(usize, usize, SeqSet)>,
    /// Window sends by send kind (`driver::KIND_NAMES`; mixed runs).
    pub sent_kind: [u64; 4],
    /// Send to ack, µs, by send kind (window sends).
    pub ack_kind: [Histogram<u64>; 4],
    /// Send to delivery of `edit` events, µs (also in `latency`).
    pub edit_latency: Histogram<u64>,
    /// Reactions sent over the whole step (warm-up and window).
    pub react_sent: u64,
    /// Sum over those of the connections that should get each.
    pub react_expected: u64,
    /// Part of `react_expected` that belongs to refused reactions.
    pub react_refused_expected: u64,
    /// `reaction` events first delivered over the whole step.
    pub react_delivered: u64,
    /// Room events of any kind first delivered while the window was open
    /// (by arrival, not by send instant): the deliveries the server CPU of
    /// the window paid for.
    pub rx_window: u64,
    /// `rx_window` by event kind (message, edit, delete, reaction).
    pub rx_kind: [u64; 4],
    /// Mixed sends that became plain messages: nothing acked yet to target.
    pub mix_fallback: u64,
}

/// A histogram of microseconds from 1 µs to one hour, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            sent: 0,
            sent_step: 0,
            acked: 0,
            acked_step: 0,
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
            by_target: Vec::new(),
            room_last: Vec::new(),
            reconnects: 0,
            closes: 0,
            connect_errors: 0,
            deduped: 0,
            recovered: 0,
            pages: 0,
            hist_sent: 0,
            hist_ok: 0,
            hist_msgs: 0,
            hist_bad: 0,
            hist_latency: histogram(),
            busiest_thread_cpu_s: 0.0,
            seqsets: Vec::new(),
            sent_kind: [0; 4],
            ack_kind: [histogram(), histogram(), histogram(), histogram()],
            edit_latency: histogram(),
            react_sent: 0,
            react_expected: 0,
            react_refused_expected: 0,
            react_delivered: 0,
            rx_window: 0,
            rx_kind: [0; 4],
            mix_fallback: 0,
        }
    }
}

/// Adds `b` into `a` element-wise, growing `a` as needed (or takes the max).
fn merge_vec(a: &mut Vec<u64>, b: &[u64], max: bool) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, &y) in a.iter_mut().zip(b) {
        *x = if max { (*x).max(y) } else { *x + y };
    }
}

/// `v[i] += n` (or max), growing `v` as needed.
pub fn bump(v: &mut Vec<u64>, i: usize, n: u64, max: bool) {
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    v[i] = if max { v[i].max(n) } else { v[i] + n };
}

impl Stats {
    /// Adds another thread's numbers into these.
    pub fn merge(&mut self, o: Stats) -> Result<(), String> {
        for (mine, theirs) in [
            (&mut self.sent, o.sent),
            (&mut self.sent_step, o.sent_step),
            (&mut self.acked, o.acked),
            (&mut self.acked_step, o.acked_step),
            (&mut self.refused, o.refused),
            (&mut self.expected, o.expected),
            (&mut self.refused_expected, o.refused_expected),
            (&mut self.delivered, o.delivered),
            (&mut self.duplicated, o.duplicated),
            (&mut self.out_of_order, o.out_of_order),
            (&mut self.foreign, o.foreign),
            (&mut self.unstamped, o.unstamped),
            (&mut self.malformed, o.malformed),
            (&mut self.disconnects, o.disconnects),
            (&mut self.reconnects, o.reconnects),
            (&mut self.closes, o.closes),
            (&mut self.connect_errors, o.connect_errors),
            (&mut self.deduped, o.deduped),
            (&mut self.recovered, o.recovered),
            (&mut self.pages, o.pages),
            (&mut self.hist_sent, o.hist_sent),
            (&mut self.hist_ok, o.hist_ok),
            (&mut self.hist_msgs, o.hist_msgs),
            (&mut self.hist_bad, o.hist_bad),
            (&mut self.react_sent, o.react_sent),
            (&mut self.react_expected, o.react_expected),
            (&mut self.react_refused_expected, o.react_refused_expected),
            (&mut self.react_delivered, o.react_delivered),
            (&mut self.rx_window, o.rx_window),
            (&mut self.mix_fallback, o.mix_fallback),
        ] {
            *mine += theirs;
        }
        for (code, n) in &o.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
        for (mine, theirs) in [
            (&mut self.latency, &o.latency),
            (&mut self.ack_latency, &o.ack_latency),
            (&mut self.connect, &o.connect),
            (&mut self.join, &o.join),
            (&mut self.send_lag, &o.send_lag),
            (&mut self.hist_latency, &o.hist_latency),
            (&mut self.edit_latency, &o.edit_latency),
        ] {
            mine.add(theirs).map_err(|e| format!("merging histograms: {e:?}"))?;
        }
        for k in 0..4 {
            self.sent_kind[k] += o.sent_kind[k];
            self.rx_kind[k] += o.rx_kind[k];
            self.ack_kind[k]
                .add(&o.ack_kind[k])
                .map_err(|e| format!("merging histograms: {e:?}"))?;
        }
        merge_vec(&mut self.by_target, &o.by_target, false);
        merge_vec(&mut self.room_last, &o.room_last, true);
        self.busiest_thread_cpu_s = self.busiest_thread_cpu_s.max(o.busiest_thread_cpu_s);
        self.seqsets.extend(o.seqsets);
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
        bump(&mut a.room_last, 1, 7, true);
        bump(&mut b.room_last, 2, 9, true);
        bump(&mut b.room_last, 1, 3, true);
        b.busiest_thread_cpu_s = 0.5;
        a.merge(b).unwrap();
        assert_eq!(a.room_last, [0, 7, 9]);
        assert_eq!(a.busiest_thread_cpu_s, 0.5);
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
