//! The scenarios: what each one asks of a run and what it reports.
//!
//! Owns: turning a scenario's flags into a [`Plan`] and its steps, the
//! sweep's stop rule, storm's final accounting (every seq once per client),
//! the cluster's preflight, and the reports. Every report that carries
//! traffic is built from the same rows (`traffic_rows`, `delivery_rows`,
//! `cpu_rows`), so fanout, sweep steps, history, dm, storm and cluster share
//! field names and a script reads them all the same way.

use std::time::Duration;

use serde_json::Value;

use crate::driver::{Churn, Plan, StepSpec};
use crate::run::{self, Opts, Run, StepResult};
use crate::stats::{q, Report};
use crate::wire::Proto;
use crate::{net, plot};
use crate::{Common, DmArgs, FanoutArgs, HistoryArgs, IdleArgs, StormArgs, SweepArgs, Traffic};

/// A plan with `c`'s clients and nothing to send; scenarios fill in the rest.
pub(crate) fn base_plan(c: &Common) -> Plan {
    Plan {
        targets: c.target.clone(),
        sources: c.sources(),
        conns: c.conns,
        rooms: c.rooms,
        proto: c.proto(),
        threads: c.threads.min(c.conns),
        user_prefix: c.user_prefix.clone(),
        connect_concurrency: c.connect_concurrency,
        publishers: 0,
        readers: 0,
        page: 50,
        size: 1,
        dm: false,
        churn: None,
        conn_rate: 0.0,
        mix: None,
        words: None,
    }
}

pub(crate) fn opts(c: &Common) -> Opts {
    Opts { server_pids: c.server_pid.clone(), setup_timeout: c.setup_timeout }
}

/// Runs `plan` for exactly one step.
pub(crate) fn run_once(
    plan: &Plan,
    c: &Common,
    spec: StepSpec,
) -> Result<(Run, StepResult), String> {
    let mut run = run::execute(plan, &opts(c), &mut |done| done.is_empty().then_some(spec))?;
    let step = run.steps.pop().ok_or("the run ended before its step")?;
    Ok((run, step))
}

pub(crate) fn chinwag_only(c: &Common, scenario: &str) -> Result<(), String> {
    match c.proto() {
        Proto::Chinwag(_) => Ok(()),
        Proto::SocketIo => Err(format!(
            "{scenario} needs chinwag's protocol (--proto socketio supports fanout, sweep, idle \
             and cluster)"
        )),
    }
}

pub(crate) fn positive(name: &str, x: f64) -> Result<(), String> {
    if x.is_finite() && x > 0.0 {
        Ok(())
    } else {
        Err(format!("{name} must be a positive number"))
    }
}

pub(crate) fn check_traffic(c: &Common, t: &Traffic, duration: Duration) -> Result<(), String> {
    if t.publishers == 0 || t.publishers > c.conns {
        return Err("--publishers must be between 1 and --conns".into());
    }
    if duration.is_zero() {
        return Err("the measured window must be positive".into());
    }
    Ok(())
}

pub(crate) fn traffic_plan(c: &Common, t: &Traffic, rate: f64) -> Plan {
    Plan {
        publishers: t.publishers,
        size: t.size.max(1),
        conn_rate: rate / t.publishers as f64,
        ..base_plan(c)
    }
}

/// The rows every traffic report starts with: what ran, and its setup.
pub(crate) fn traffic_rows(
    r: &mut Report,
    scenario: &'static str,
    step: Option<usize>,
    plan: &Plan,
    res: &StepResult,
    setup: Duration,
) {
    r.add("scenario", scenario);
    if let Some(k) = step {
        r.add("step", k);
    }
    r.add("target", plan.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(","));
    r.add("encoding", plan.proto.name());
    r.add("conns", plan.conns);
    r.add("rooms", plan.room_count());
    r.add("publishers", plan.publishers);
    r.add_f("rate", res.spec.rate);
    r.add("size", plan.size);
    r.add("threads", plan.threads);
    r.add("sources", plan.sources.len().max(1));
    r.add_f("warmup_s", res.spec.warmup.as_secs_f64());
    r.add_f("duration_s", res.window_s());
    r.add_f("drain_s", res.spec.drain.as_secs_f64());
    r.add_f("setup_s", setup.as_secs_f64());
    let s = &res.stats;
    r.add("connect_p50_us", q(&s.connect, 0.5));
    r.add("connect_p99_us", q(&s.connect, 0.99));
    r.add("join_p50_us", q(&s.join, 0.5));
    r.add("join_p99_us", q(&s.join, 0.99));
}

/// Lost messages of a step (negative would be a harness bug).
pub(crate) fn lost(res: &StepResult) -> i64 {
    let s = &res.stats;
    (s.expected - s.refused_expected) as i64 - s.delivered as i64
}

/// Sends, deliveries, their accounting and latency.
pub(crate) fn delivery_rows(r: &mut Report, res: &StepResult) {
    let s = &res.stats;
    let window = res.window_s();
    r.add("sent", s.sent);
    r.add("acked", s.acked);
    r.add("refused", s.refused);
    r.add("unacked", s.sent as i64 - s.acked as i64 - s.refused as i64);
    r.add("expected", s.expected - s.refused_expected);
    r.add("delivered", s.delivered);
    r.add("lost", lost(res));
    r.add("duplicated", s.duplicated);
    r.add("out_of_order", s.out_of_order);
    r.add("foreign", s.foreign);
    r.add("unstamped", s.unstamped);
    r.add("malformed", s.malformed);
    r.add("disconnects", s.disconnects);
    r.add("errors", serde_json::json!(s.errors));
    r.add_f("sent_per_s", s.sent as f64 / window);
    r.add_f("deliveries_per_s", s.delivered as f64 / window);
    r.add_latency(
        ["lat_p50_us", "lat_p90_us", "lat_p99_us", "lat_p999_us", "lat_max_us"],
        &s.latency,
    );
    r.add("ack_p50_us", q(&s.ack_latency, 0.5));
    r.add("ack_p99_us", q(&s.ack_latency, 0.99));
    r.add("ack_max_us", s.ack_latency.max());
    r.add("send_lag_p99_us", q(&s.send_lag, 0.99));
    r.add("send_lag_max_us", s.send_lag.max());
}

/// Server and harness CPU over the window: which side was the limit.
pub(crate) fn cpu_rows(r: &mut Report, res: &StepResult) {
    let window = res.window_s();
    let delivered = res.stats.delivered;
    match res.server_cpu_s() {
        Some(cpu) => {
            r.add_f("server_cpu_s", cpu);
            r.add_f("server_cpu_pct", 100.0 * cpu / window);
            let per = if delivered > 0 { cpu * 1e6 / delivered as f64 } else { 0.0 };
            r.add_f("server_cpu_us_per_delivery", per);
        }
        None => {
            r.add("server_cpu_s", Value::Null);
            r.add("server_cpu_pct", Value::Null);
            r.add("server_cpu_us_per_delivery", Value::Null);
        }
    }
    r.add("server_rss_start_kib", res.rss.0);
    r.add("server_rss_end_kib", res.rss.1);
    wait_rows(r, res, "server_runqueue_wait_us_per_delivery", delivered);
    let harness = res.harness_cpu_s();
    r.add_f("harness_cpu_s", harness);
    r.add_f("harness_cpu_pct", 100.0 * harness / window);
    r.add_f("harness_busiest_thread_pct", 100.0 * res.stats.busiest_thread_cpu_s / window);
}

/// The servers' run-queue wait over the window (the time their threads
/// were runnable but not running, summed), and per unit of `work` under
/// the name `per`.
pub(crate) fn wait_rows(r: &mut Report, res: &StepResult, per: &'static str, work: u64) {
    match res.server_wait_s() {
        Some(wait) => {
            r.add_f("server_runqueue_wait_s", wait);
            r.add_f(per, if work > 0 { wait * 1e6 / work as f64 } else { 0.0 });
        }
        None => {
            r.add("server_runqueue_wait_s", Value::Null);
            r.add(per, Value::Null);
        }
    }
}

pub(crate) fn print_report(r: &Report, json: bool) {
    if json {
        println!("{}", r.json());
    } else {
        print!("{}", r.table());
    }
}

/// The plot's point for one step.
fn point(res: &StepResult) -> plot::Point {
    let h = &res.stats.latency;
    let ms = [0.5, 0.9, 0.99, 0.999].map(|x| q(h, x) as f64 / 1000.0);
    plot::Point { rate: res.stats.delivered as f64 / res.window_s(), ms }
}

/// `fanout`, and `cluster` (the same load over several nodes).
pub fn fanout(a: &FanoutArgs, cluster: bool) -> Result<(), String> {
    let c = &a.common;
    c.check()?;
    check_traffic(c, &a.traffic, a.duration)?;
    positive("--rate", a.rate)?;
    if cluster {
        check_cluster(c)?;
    }
    let plan = traffic_plan(c, &a.traffic, a.rate);
    let t = &a.traffic;
    let spec = StepSpec {
        rate: a.rate,
        read_rate: 0.0,
        warmup: t.warmup,
        duration: a.duration,
        drain: t.drain,
    };
    let (run, res) = run_once(&plan, c, spec)?;
    let mut r = Report::default();
    traffic_rows(&mut r, if cluster { "cluster" } else { "fanout" }, None, &plan, &res, run.setup);
    delivery_rows(&mut r, &res);
    if cluster {
        r.add("conns_per_node", plan.conns_by_target());
        let mut by_node = res.stats.by_target.clone();
        by_node.resize(plan.targets.len(), 0);
        r.add("deliveries_per_node", by_node);
    }
    cpu_rows(&mut r, &res);
    print_report(&r, c.json);
    if let Some(path) = &a.plot {
        let title = format!("{} fanout: {} conns, {} rooms", c.server_label(), c.conns, c.rooms);
        plot::latency_vs_rate(path, &title, &[point(&res)], None)?;
    }
    Ok(())
}

/// Refuses a cluster run against nodes that are not one cluster.
fn check_cluster(c: &Common) -> Result<(), String> {
    if c.target.len() < 2 {
        return Err("cluster needs at least two --target nodes".into());
    }
    if c.proto() == Proto::SocketIo {
        return Ok(()); // The Socket.IO peer has no /health.
    }
    let mut nodes = Vec::new();
    for &t in &c.target {
        let body = net::health(t)?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{t}/health: {e}"))?;
        if v["redis"] != "ok" {
            return Err(format!(
                "{t} is not a healthy cluster node (start it with --redis): {body}"
            ));
        }
        if nodes.contains(&v["node"]) {
            return Err(format!(
                "{t} is node {} again: give every node its own address",
                v["node"]
            ));
        }
        nodes.push(v["node"].clone());
    }
    Ok(())
}

/// Why a sweep step fails, if it does.
fn verdict(res: &StepResult, plan: &Plan, limit: Duration) -> Option<String> {
    let s = &res.stats;
    let lost = lost(res);
    if lost > 0 {
        return Some(format!("lost {lost}"));
    }
    if s.duplicated + s.out_of_order > 0 {
        return Some(format!("{} duplicated, {} out of order", s.duplicated, s.out_of_order));
    }
    if s.disconnects + s.refused > 0 {
        return Some(format!("{} disconnects, {} refused", s.disconnects, s.refused));
    }
    let p99 = q(&s.latency, 0.99);
    if p99 as u128 > limit.as_micros() {
        return Some(format!("p99 {:.1} ms over {} ms", p99 as f64 / 1e3, limit.as_millis()));
    }
    let offered = res.spec.rate * res.window_s() * plan.deliveries_per_message();
    if (s.delivered as f64) < 0.95 * offered {
        return Some(format!(
            "delivered {:.0}% of the offered load",
            100.0 * s.delivered as f64 / offered
        ));
    }
    None
}

/// `sweep`: fanout steps at doubling rates until one fails.
pub fn sweep(a: &SweepArgs) -> Result<(), String> {
    let c = &a.common;
    c.check()?;
    let t = &a.traffic;
    check_traffic(c, t, a.step_duration)?;
    positive("--start-rate", a.start_rate)?;
    if a.max_steps == 0 || a.max_steps > 30 {
        return Err("--max-steps must be between 1 and 30".into());
    }
    let top = a.start_rate * 2f64.powi(a.max_steps as i32 - 1);
    let plan = traffic_plan(c, t, top);
    let mut next = |done: &[StepResult]| -> Option<StepSpec> {
        if let Some(res) = done.last() {
            let why = verdict(res, &plan, a.p99_limit);
            eprintln!("{}", step_line(done.len() - 1, res, why.as_deref()));
            if why.is_some() {
                return None;
            }
        }
        (done.len() < a.max_steps).then(|| StepSpec {
            rate: a.start_rate * 2f64.powi(done.len() as i32),
            read_rate: 0.0,
            warmup: t.warmup,
            duration: a.step_duration,
            drain: t.drain,
        })
    };
    let run = run::execute(&plan, &opts(c), &mut next)?;
    let verdicts: Vec<Option<String>> =
        run.steps.iter().map(|res| verdict(res, &plan, a.p99_limit)).collect();
    let good = verdicts.iter().take_while(|v| v.is_none()).count();
    if c.json {
        for (k, res) in run.steps.iter().enumerate() {
            let mut r = Report::default();
            traffic_rows(&mut r, "sweep", Some(k), &plan, res, run.setup);
            delivery_rows(&mut r, res);
            cpu_rows(&mut r, res);
            r.add("verdict", verdicts[k].clone().unwrap_or_else(|| "ok".into()));
            println!("{}", r.json());
        }
    } else {
        println!("{}", sweep_table(&run.steps, &verdicts));
    }
    let mut r = Report::default();
    r.add("scenario", "sweep_result");
    r.add("steps", run.steps.len());
    r.add("p99_limit_us", a.p99_limit.as_micros() as u64);
    let stopped = verdicts.iter().flatten().next().cloned();
    r.add("stopped_by", stopped.unwrap_or_else(|| "max steps".into()));
    match good.checked_sub(1).map(|k| (k, &run.steps[k])) {
        Some((k, res)) => {
            r.add("last_good_step", k);
            r.add_f("last_good_rate", res.spec.rate);
            r.add_f("last_good_deliveries_per_s", res.stats.delivered as f64 / res.window_s());
            r.add("last_good_p99_us", q(&res.stats.latency, 0.99));
            r.add("last_good_server_cpu_pct", res.server_cpu_s().map(|x| pct(x, res.window_s())));
            r.add_f("last_good_harness_cpu_pct", pct(res.harness_cpu_s(), res.window_s()));
        }
        None => r.add("last_good_step", Value::Null),
    }
    print_report(&r, c.json);
    if let Some(path) = &a.plot {
        let points: Vec<plot::Point> = run.steps.iter().map(point).collect();
        let title = format!("{} sweep: {} conns, {} rooms", c.server_label(), c.conns, c.rooms);
        let limit = a.p99_limit.as_secs_f64() * 1e3;
        plot::latency_vs_rate(path, &title, &points, Some(limit))?;
    }
    Ok(())
}

fn pct(cpu_s: f64, window_s: f64) -> f64 {
    (1000.0 * cpu_s / window_s).round() / 10.0
}

/// One sweep step for the stderr progress.
fn step_line(k: usize, res: &StepResult, why: Option<&str>) -> String {
    let s = &res.stats;
    let w = res.window_s();
    let server = res.server_cpu_s().map_or("-".into(), |x| format!("{}%", pct(x, w)));
    format!(
        "step {k}: rate {}/s  delivered {:.0}/s  p50 {:.2} ms  p99 {:.2} ms  lost {}  server CPU {server}  \
         harness CPU {}% (busiest thread {}%)  {}",
        res.spec.rate,
        s.delivered as f64 / w,
        q(&s.latency, 0.5) as f64 / 1e3,
        q(&s.latency, 0.99) as f64 / 1e3,
        lost(res),
        pct(res.harness_cpu_s(), w),
        pct(s.busiest_thread_cpu_s, w),
        why.unwrap_or("ok"),
    )
}

/// The human table of all sweep steps.
fn sweep_table(steps: &[StepResult], verdicts: &[Option<String>]) -> String {
    let mut out = format!(
        "{:>4} {:>9} {:>9} {:>11} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8} {:>8}  {}\n",
        "step",
        "rate/s",
        "sent/s",
        "deliv/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "lost",
        "srv CPU",
        "load CPU",
        "busiest",
        "verdict"
    );
    for (k, (res, why)) in steps.iter().zip(verdicts).enumerate() {
        let s = &res.stats;
        let w = res.window_s();
        let ms = |x: f64| q(&s.latency, x) as f64 / 1e3;
        let server = res.server_cpu_s().map_or("-".into(), |x| format!("{}%", pct(x, w)));
        out += &format!(
            "{k:>4} {:>9} {:>9.0} {:>11.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>6} {server:>8} {:>8} \
             {:>8}  {}\n",
            res.spec.rate,
            s.sent as f64 / w,
            s.delivered as f64 / w,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            lost(res),
            format!("{}%", pct(res.harness_cpu_s(), w)),
            format!("{}%", pct(s.busiest_thread_cpu_s, w)),
            why.as_deref().unwrap_or("ok"),
        );
    }
    out
}

/// `idle`: connect, join, hold.
pub fn idle(a: &IdleArgs) -> Result<(), String> {
    let c = &a.common;
    c.check()?;
    let rss_before = run::server_rss(&c.server_pid);
    if !c.server_pid.is_empty() && rss_before.is_none() {
        return Err(format!("cannot read /proc/PID/status of {:?}", c.server_pid));
    }
    // Idle is a run with no senders and no warm-up or drain: the window is
    // the hold, so the snapshots frame it.
    let plan = base_plan(c);
    let spec = StepSpec {
        rate: 0.0,
        read_rate: 0.0,
        warmup: Duration::ZERO,
        duration: a.hold,
        drain: Duration::ZERO,
    };
    let (run, res) = run_once(&plan, c, spec)?;
    let s = &res.stats;
    let setup = run.setup.as_secs_f64();
    let mut r = Report::default();
    r.add("scenario", "idle");
    r.add("target", c.target.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(","));
    r.add("encoding", plan.proto.name());
    r.add("conns", c.conns);
    r.add("rooms", c.rooms);
    r.add("threads", plan.threads);
    r.add("sources", plan.sources.len().max(1));
    r.add_f("hold_s", a.hold.as_secs_f64());
    r.add_f("setup_s", setup);
    r.add_f("connects_per_s", if setup > 0.0 { c.conns as f64 / setup } else { 0.0 });
    r.add("connect_p50_us", q(&s.connect, 0.5));
    r.add("connect_p99_us", q(&s.connect, 0.99));
    r.add("connect_max_us", s.connect.max());
    r.add("join_p50_us", q(&s.join, 0.5));
    r.add("join_p99_us", q(&s.join, 0.99));
    r.add("disconnects", s.disconnects);
    r.add("errors", serde_json::json!(s.errors));
    r.add("server_rss_before_kib", rss_before);
    r.add("server_rss_joined_kib", res.rss.0);
    r.add("server_rss_end_kib", res.rss.1);
    let per_conn = match (rss_before, res.rss.1) {
        (Some(b), Some(e)) => Some(((e as f64 - b as f64) * 1024.0 / c.conns as f64).round()),
        _ => None,
    };
    r.add("server_rss_per_conn_bytes", per_conn);
    match res.server_cpu_s() {
        Some(cpu) => r.add_f("server_cpu_hold_s", cpu),
        None => r.add("server_cpu_hold_s", Value::Null),
    }
    r.add_f("harness_cpu_hold_s", res.harness_cpu_s());
    print_report(&r, c.json);
    Ok(())
}

/// `storm`: churn with resume, then every client's seqs are counted.
pub fn storm(a: &StormArgs) -> Result<(), String> {
    let c = &a.common;
    c.check()?;
    chinwag_only(c, "storm")?;
    let publishers = a.publishers.unwrap_or(c.rooms);
    if publishers == 0 || publishers >= c.conns {
        return Err("--publishers must be at least 1 and below --conns (the rest churn)".into());
    }
    positive("--rate", a.rate)?;
    if a.duration.is_zero() || a.session_min.is_zero() || a.session_min > a.session_max {
        return Err("need --duration > 0 and 0 < --session-min <= --session-max".into());
    }
    let churn = Churn {
        session_min: a.session_min,
        session_max: a.session_max,
        offline_max: a.offline_max,
    };
    let plan = Plan {
        publishers,
        size: a.size.max(1),
        churn: Some(churn),
        conn_rate: a.rate / publishers as f64,
        ..base_plan(c)
    };
    // No warm-up: every message of the run is accounted for, per client.
    let spec = StepSpec {
        rate: a.rate,
        read_rate: 0.0,
        warmup: Duration::ZERO,
        duration: a.duration,
        drain: a.drain,
    };
    let (run, mut res) = run_once(&plan, c, spec)?;
    let s = &mut res.stats;
    let live = s.delivered;
    // Each client must hold every seq from its first join to the room's
    // last acked one, whichever session (or history page) brought it.
    let (mut expected, mut seen, mut gap_clients, mut examples) = (0, 0, 0u64, Vec::new());
    for (client, room, set) in &s.seqsets {
        let last = s.room_last.get(*room).copied().unwrap_or(0);
        let want = last.saturating_sub(set.base());
        let (got, missing) = set.coverage(last);
        expected += want;
        seen += got;
        if got < want {
            gap_clients += 1;
            if examples.len() < 5 {
                examples.push(format!("{}: {missing:?}", plan.user(*client)));
            }
        }
    }
    s.expected = expected;
    s.refused_expected = 0;
    s.delivered = seen;
    let mut r = Report::default();
    traffic_rows(&mut r, "storm", None, &plan, &res, run.setup);
    r.add_f("session_min_s", a.session_min.as_secs_f64());
    r.add_f("session_max_s", a.session_max.as_secs_f64());
    r.add_f("offline_max_s", a.offline_max.as_secs_f64());
    let s = &res.stats;
    r.add("reconnects", s.reconnects);
    r.add_f("connects_per_s", s.reconnects as f64 / res.window_s());
    r.add("closes", s.closes);
    r.add("connect_errors", s.connect_errors);
    r.add("clients_checked", s.seqsets.len());
    r.add("gaps", lost(&res));
    r.add("gap_clients", gap_clients);
    r.add("gap_examples", examples);
    r.add("live", live);
    r.add("recovered", s.recovered);
    r.add("deduped", s.deduped);
    r.add("pages", s.pages);
    delivery_rows(&mut r, &res);
    cpu_rows(&mut r, &res);
    print_report(&r, c.json);
    Ok(())
}

/// `history`: sends and `history` paging side by side.
pub fn history(a: &HistoryArgs) -> Result<(), String> {
    let c = &a.common;
    c.check()?;
    chinwag_only(c, "history")?;
    let t = &a.traffic;
    check_traffic(c, t, a.duration)?;
    positive("--rate", a.rate)?;
    positive("--read-rate", a.read_rate)?;
    if a.readers == 0 || t.publishers + a.readers > c.conns {
        return Err("--readers must be at least 1, and publishers + readers at most --conns".into());
    }
    if !(1..=100).contains(&a.page) {
        return Err("--page must be between 1 and 100 (the server's cap)".into());
    }
    let plan = Plan {
        readers: a.readers,
        page: a.page,
        conn_rate: (a.rate / t.publishers as f64).max(a.read_rate / a.readers as f64),
        ..traffic_plan(c, t, a.rate)
    };
    let spec = StepSpec {
        rate: a.rate,
        read_rate: a.read_rate,
        warmup: t.warmup,
        duration: a.duration,
        drain: t.drain,
    };
    let (run, res) = run_once(&plan, c, spec)?;
    let s = &res.stats;
    let mut r = Report::default();
    traffic_rows(&mut r, "history", None, &plan, &res, run.setup);
    r.add("readers", a.readers);
    r.add_f("read_rate", a.read_rate);
    r.add("page", a.page);
    r.add("history_sent", s.hist_sent);
    r.add("history_ok", s.hist_ok);
    r.add("history_unanswered", s.hist_sent as i64 - s.hist_ok as i64);
    r.add("history_bad", s.hist_bad);
    r.add("history_msgs", s.hist_msgs);
    r.add_f("history_per_s", s.hist_ok as f64 / res.window_s());
    r.add("history_p50_us", q(&s.hist_latency, 0.5));
    r.add("history_p99_us", q(&s.hist_latency, 0.99));
    r.add("history_max_us", s.hist_latency.max());
    delivery_rows(&mut r, &res);
    cpu_rows(&mut r, &res);
    print_report(&r, c.json);
    Ok(())
}

/// `dm`: pairs exchanging direct messages.
pub fn dm(a: &DmArgs) -> Result<(), String> {
    let c = &a.common;
    c.check()?;
    chinwag_only(c, "dm")?;
    positive("--rate", a.rate)?;
    if c.conns < 2 || !c.conns.is_multiple_of(2) || a.duration.is_zero() {
        return Err("dm needs an even --conns of at least 2 and a positive --duration".into());
    }
    let plan = Plan {
        publishers: c.conns,
        dm: true,
        size: a.size.max(1),
        conn_rate: a.rate / c.conns as f64,
        ..base_plan(c)
    };
    let spec = StepSpec {
        rate: a.rate,
        read_rate: 0.0,
        warmup: a.warmup,
        duration: a.duration,
        drain: a.drain,
    };
    let (run, res) = run_once(&plan, c, spec)?;
    let mut r = Report::default();
    traffic_rows(&mut r, "dm", None, &plan, &res, run.setup);
    delivery_rows(&mut r, &res);
    cpu_rows(&mut r, &res);
    print_report(&r, c.json);
    Ok(())
}
