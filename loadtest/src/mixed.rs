//! `mixed`: the fan-out load with part of the sends turned into the other
//! room events of PROTOCOL.md revision 2 — reactions (on/off toggles on
//! recent messages of the room), edits (of the publisher's own recent
//! messages) and thread replies (`send` with `reply_to` a recent root) —
//! so that their cost per delivery can be set beside plain messages.
//!
//! Owns: the mix's checks and its report. How each kind is accounted for:
//!
//! * messages, replies and edits carry the send stamp in their text (an
//!   edit's new text), so they are counted and timed per delivery exactly
//!   as `fanout` does (`delivered`, `lost`, `lat_*`; edits alone in
//!   `lat_edit_*`);
//! * reactions have no text: each delivery is counted (over the whole
//!   step, sends and deliveries alike: `react_*`), none is timed; their
//!   send-to-ack time is in `ack_react_*`;
//! * CPU per delivery divides the server's CPU over the window by every
//!   room event delivered while the window was open (by arrival), so the
//!   pure run (`--mix 0`) and the mixed one are measured the same way.

use serde_json::Value;

use crate::driver::{Mix, Plan, StepSpec};
use crate::scenario::{
    check_traffic, positive, print_report, run_once, traffic_plan, traffic_rows,
};
use crate::stats::{q, Report};
use crate::wire::Proto;
use crate::MixedArgs;

/// `mixed`: fanout with reactions, edits and replies.
pub fn mixed(a: &MixedArgs) -> Result<(), String> {
    let f = &a.fanout;
    let c = &f.common;
    c.check()?;
    if !matches!(c.proto(), Proto::Chinwag(_)) {
        return Err("mixed needs chinwag's protocol".into());
    }
    check_traffic(c, &f.traffic, f.duration)?;
    positive("--rate", f.rate)?;
    if !(0.0..=1.0).contains(&a.mix) {
        return Err("--mix must be between 0 and 1".into());
    }
    let weights = [a.react_weight, a.edit_weight, a.reply_weight];
    if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) || weights.iter().sum::<f64>() <= 0.0 {
        return Err("the weights must be >= 0 and not all 0".into());
    }
    let t = &f.traffic;
    let plan = Plan {
        mix: Some(Mix {
            fraction: a.mix,
            react: a.react_weight,
            edit: a.edit_weight,
            reply: a.reply_weight,
        }),
        ..traffic_plan(c, t, f.rate)
    };
    let spec = StepSpec {
        rate: f.rate,
        read_rate: 0.0,
        warmup: t.warmup,
        duration: f.duration,
        drain: t.drain,
    };
    let (run, res) = run_once(&plan, c, spec)?;
    let s = &res.stats;
    let w = res.window_s();
    let mut r = Report::default();
    traffic_rows(&mut r, "mixed", None, &plan, &res, run.setup);
    r.add_f("mix", a.mix);
    r.add("weights", format!("react {} edit {} reply {}", weights[0], weights[1], weights[2]));
    r.add(
        "latency_of",
        "messages, replies, edits (stamp in the text); reactions counted, not timed",
    );
    r.add("sent", s.sent);
    // Indexed by the driver's send kinds (K_MESSAGE, K_REPLY, K_EDIT, K_REACT).
    for (k, name) in
        ["sent_message", "sent_reply", "sent_edit", "sent_react"].into_iter().enumerate()
    {
        r.add(name, s.sent_kind[k]);
    }
    r.add("mix_fallback", s.mix_fallback);
    r.add("acked", s.acked);
    r.add("refused", s.refused);
    r.add("unacked", s.sent as i64 - s.acked as i64 - s.refused as i64);
    // Stamped kinds, by send instant in the window.
    let stamped_lost = (s.expected - s.refused_expected) as i64 - s.delivered as i64;
    r.add("expected", s.expected - s.refused_expected);
    r.add("delivered", s.delivered);
    // Reactions, over the whole step.
    let react_expected = s.react_expected - s.react_refused_expected;
    let react_lost = react_expected as i64 - s.react_delivered as i64;
    r.add("react_sent_step", s.react_sent);
    r.add("react_expected", react_expected);
    r.add("react_delivered", s.react_delivered);
    r.add("lost", stamped_lost + react_lost);
    r.add("duplicated", s.duplicated);
    r.add("out_of_order", s.out_of_order);
    r.add("foreign", s.foreign);
    r.add("unstamped", s.unstamped);
    r.add("malformed", s.malformed);
    r.add("disconnects", s.disconnects);
    r.add("errors", serde_json::json!(s.errors));
    r.add("events_in_window", s.rx_window);
    for (k, name) in ["rx_message", "rx_edit", "rx_delete", "rx_reaction"].into_iter().enumerate() {
        r.add(name, s.rx_kind[k]);
    }
    r.add_f("sent_per_s", s.sent as f64 / w);
    r.add_f("deliveries_per_s", s.rx_window as f64 / w);
    r.add_latency(
        ["lat_p50_us", "lat_p90_us", "lat_p99_us", "lat_p999_us", "lat_max_us"],
        &s.latency,
    );
    r.add("lat_edit_p50_us", q(&s.edit_latency, 0.5));
    r.add("lat_edit_p99_us", q(&s.edit_latency, 0.99));
    r.add("ack_p50_us", q(&s.ack_latency, 0.5));
    r.add("ack_p99_us", q(&s.ack_latency, 0.99));
    let ack_names = [
        ["ack_message_p50_us", "ack_message_p99_us"],
        ["ack_reply_p50_us", "ack_reply_p99_us"],
        ["ack_edit_p50_us", "ack_edit_p99_us"],
        ["ack_react_p50_us", "ack_react_p99_us"],
    ];
    for (k, [p50, p99]) in ack_names.into_iter().enumerate() {
        r.add(p50, q(&s.ack_kind[k], 0.5));
        r.add(p99, q(&s.ack_kind[k], 0.99));
    }
    r.add("send_lag_p99_us", q(&s.send_lag, 0.99));
    let per = |cpu: f64| if s.rx_window > 0 { cpu * 1e6 / s.rx_window as f64 } else { 0.0 };
    match res.server_cpu_s() {
        Some(cpu) => {
            r.add_f("server_cpu_s", cpu);
            r.add_f("server_cpu_pct", 100.0 * cpu / w);
            r.add_f("server_cpu_us_per_delivery", per(cpu));
        }
        None => {
            r.add("server_cpu_s", Value::Null);
            r.add("server_cpu_pct", Value::Null);
            r.add("server_cpu_us_per_delivery", Value::Null);
        }
    }
    r.add("server_rss_end_kib", res.rss.1);
    let harness = res.harness_cpu_s();
    r.add_f("harness_cpu_s", harness);
    r.add_f("harness_cpu_pct", 100.0 * harness / w);
    r.add_f("harness_cpu_us_per_delivery", per(harness));
    r.add_f("harness_busiest_thread_pct", 100.0 * s.busiest_thread_cpu_s / w);
    print_report(&r, c.json);
    Ok(())
}
