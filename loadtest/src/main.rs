//! `chinwag-load`: the load harness for chinwag (loopback only, bounded runs).
//!
//! Owns: the command line, the run's timeline (setup, warm-up, measured
//! window, drain) as seen from the main thread, the progress line, the
//! server/harness CPU and memory snapshots, and the final report. The client
//! loops themselves live in `driver`.

mod driver;
mod stats;
mod sys;
mod wire;
mod ws;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use driver::{Plan, Shared, Timeline};
use stats::{Report, Stats};
use wire::Encoding;

/// Load harness for the chinwag chat server.
///
/// Start the server in open mode with a high per-connection rate limit, or
/// publishers get `rate_limited` (the harness refuses to start if the
/// server's advertised limit is below the per-publisher rate):
///
///   chinwag serve --listen 127.0.0.1:8080 --data-dir $(mktemp -d) --open
///   --rate 100000 --burst 100000
///
/// Use a fresh data dir per run: membership is persistent (the harness
/// leaves stale rooms, but old history still sits in the rooms).
#[derive(Parser)]
#[command(name = "chinwag-load", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Publishers send at a fixed aggregate rate into rooms; every member
    /// receives every message. Measures delivery, loss, ordering, latency.
    ///
    /// The server must run with --open and a per-connection --rate/--burst
    /// above rate/publishers (e.g. --rate 100000 --burst 100000), or the
    /// harness refuses to start.
    Fanout(FanoutArgs),
    /// Connect and join, then hold idle: connect rate and server memory per
    /// connection.
    Idle(IdleArgs),
}

#[derive(Args)]
struct Common {
    /// Server address(es), loopback only; client i uses target i % count.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8080")]
    target: Vec<SocketAddr>,
    /// Number of WebSocket clients (one socket each).
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Number of rooms; client i joins room r<i % rooms>.
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Wire encoding (subprotocol chinwag.v1.json or chinwag.v1.msgpack).
    #[arg(long, value_enum, default_value_t = Encoding::Json)]
    encoding: Encoding,
    /// Harness event-loop threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Server process to sample CPU time and RSS from (/proc/PID).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print one JSON line (instead of the table) on stdout.
    #[arg(long)]
    json: bool,
    /// User ids are <prefix><i> (open mode: /ws?user=<prefix><i>).
    #[arg(long, default_value = "u")]
    user_prefix: String,
    /// Upgrades in flight at once (keeps the server's accept backlog sane).
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Give up if not every client has joined by then.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    setup_timeout: Duration,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Clients 0..publishers send (so they are spread over the rooms).
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    /// Aggregate messages per second over all publishers, evenly paced.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Message text size in bytes (starts with the send stamp `t=<ns>;`).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Measured window, after the warm-up (e.g. 10s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Publishing before the measured window.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Receiving after the last send before counting what is lost.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    drain: Duration,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// How long to hold the joined connections idle.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    hold: Duration,
}

/// `10s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration like 10s or 500ms"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" => n / 1e6,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit `{unit}` in `{s}` (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Fanout(a) => fanout(a),
        Scenario::Idle(a) => idle(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chinwag-load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Checks shared by both scenarios; raises the open-files limit.
fn check_common(c: &Common) -> Result<(), String> {
    if let Some(bad) = c.target.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!("target {bad} is not a loopback address (loopback only)"));
    }
    if c.target.is_empty() || c.conns == 0 || c.rooms == 0 || c.threads == 0 {
        return Err("--target, --conns, --rooms and --threads must be at least 1".into());
    }
    if c.connect_concurrency == 0 {
        return Err("--connect-concurrency must be at least 1".into());
    }
    let limit = sys::raise_nofile()?;
    if (c.conns as u64) + 64 > limit {
        return Err(format!(
            "{} connections need more open files than the limit {limit} (raise the hard limit)",
            c.conns
        ));
    }
    Ok(())
}

fn plan(
    c: &Common,
    publishers: usize,
    rate: f64,
    size: usize,
    w: Duration,
    d: Duration,
    dr: Duration,
) -> Plan {
    Plan {
        targets: c.target.clone(),
        conns: c.conns,
        rooms: c.rooms,
        publishers,
        rate,
        size,
        enc: c.encoding,
        threads: c.threads.min(c.conns),
        user_prefix: c.user_prefix.clone(),
        connect_concurrency: c.connect_concurrency,
        warmup: w,
        duration: d,
        drain: dr,
    }
}

/// CPU seconds of the server (if watched) and of the harness at one instant.
#[derive(Clone, Copy, Default)]
struct Snapshot {
    server_cpu: Option<f64>,
    harness_cpu: f64,
}

fn snapshot(pid: Option<u32>) -> Snapshot {
    Snapshot {
        server_cpu: pid.and_then(|p| sys::proc_cpu_s(p).ok()),
        harness_cpu: sys::self_cpu_s(),
    }
}

/// What the main thread saw of a run.
struct Observed {
    stats: Stats,
    /// Harness start to every client joined.
    setup: Duration,
    /// At the start and the end of the measured window.
    window: (Snapshot, Snapshot),
    /// Server RSS (KiB) at the start of the window and at its end.
    rss: (Option<u64>, Option<u64>),
}

/// Runs the client threads through one timeline, printing progress, taking
/// snapshots at the window's edges. `Err` on setup failure or timeout.
fn execute(plan: &Plan, c: &Common) -> Result<Observed, String> {
    let shared = Shared::new();
    let pid = c.server_pid;
    let rss = |p: Option<u32>| p.and_then(|p| sys::proc_rss_kib(p).ok());
    let outcome = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..plan.threads)
            .map(|tid| {
                let shared = &shared;
                std::thread::Builder::new()
                    .name(format!("load-{tid}"))
                    .spawn_scoped(scope, move || driver::run(tid, plan, shared))
            })
            .collect();
        let mut observed = None;
        let mut spawn_error = None;
        for h in &handles {
            if let Err(e) = h {
                spawn_error = Some(format!("cannot start a thread: {e}"));
            }
        }
        if let Some(e) = spawn_error {
            shared.fail(e);
        } else {
            observed = Some(watch(plan, c, &shared, pid, rss));
        }
        let mut total = Stats::default();
        for h in handles.into_iter().flatten() {
            match h.join() {
                Ok(s) => {
                    if let Err(e) = total.merge(&s) {
                        shared.fail(e);
                    }
                }
                Err(_) => shared.fail("a client thread panicked".into()),
            }
        }
        observed.map(|o| (o, total))
    });
    if let Ok(Some(why)) = shared.fatal.lock().map(|f| f.clone()) {
        return Err(why);
    }
    let ((setup, window, rss), stats) = outcome.ok_or("run aborted")?;
    Ok(Observed { stats, setup, window, rss })
}

type Watched = (Duration, (Snapshot, Snapshot), (Option<u64>, Option<u64>));

/// The main thread's part of a run: wait for setup, say go, sample at the
/// window's edges, print a progress line every second.
fn watch(
    plan: &Plan,
    c: &Common,
    shared: &Shared,
    pid: Option<u32>,
    rss: impl Fn(Option<u32>) -> Option<u64>,
) -> Watched {
    let conns = plan.conns as u64;
    let mut timeline: Option<Timeline> = None;
    let mut setup = Duration::ZERO;
    let (mut first, mut last) = (None, None);
    let (mut rss_first, mut rss_last) = (None, None);
    let mut next_progress = 1_000_000_000u64;
    let mut prev = (0u64, 0u64, 0u64);
    loop {
        if shared.abort.load(Relaxed) {
            break;
        }
        let now = shared.now_ns();
        match timeline {
            None => {
                if shared.ready.load(Relaxed) >= conns {
                    setup = Duration::from_nanos(now);
                    let tl = Timeline::new(plan, now);
                    shared.start_ns.store(tl.start, Relaxed);
                    timeline = Some(tl);
                    continue; // Take the window's first snapshot at once if no warm-up.
                } else if now > c.setup_timeout.as_nanos() as u64 {
                    shared.fail(format!(
                        "setup timed out: {} of {conns} clients joined after {:?}",
                        shared.ready.load(Relaxed),
                        c.setup_timeout
                    ));
                    break;
                }
            }
            Some(tl) => {
                if first.is_none() && now >= tl.warm_end {
                    first = Some(snapshot(pid));
                    rss_first = rss(pid);
                }
                if last.is_none() && now >= tl.end {
                    last = Some(snapshot(pid));
                    rss_last = rss(pid);
                }
                if now >= tl.drain_end {
                    break;
                }
            }
        }
        if now >= next_progress {
            next_progress += 1_000_000_000;
            let live = &shared.live;
            let cur =
                (live.sent.load(Relaxed), live.acked.load(Relaxed), live.delivered.load(Relaxed));
            let phase = match timeline {
                None => "setup",
                Some(tl) if now < tl.warm_end => "warmup",
                Some(tl) if now < tl.end && plan.publishers == 0 => "hold",
                Some(tl) if now < tl.end => "measure",
                Some(_) => "drain",
            };
            eprintln!(
                "[{:6.1}s] {phase:<7} joined {}/{conns}  sent {} (+{})  acked {}  delivered {} \
                 (+{}/s)  errors {}  disconnects {}",
                now as f64 / 1e9,
                shared.ready.load(Relaxed),
                cur.0,
                cur.0 - prev.0,
                cur.1,
                cur.2,
                cur.2 - prev.2,
                live.errors.load(Relaxed),
                live.disconnects.load(Relaxed),
            );
            prev = cur;
        }
        // Wake for whichever comes first: the next edge or progress line.
        let mut wake = next_progress.min(now + 20_000_000);
        if let Some(tl) = timeline {
            for edge in [tl.warm_end, tl.end, tl.drain_end] {
                if edge > now {
                    wake = wake.min(edge);
                }
            }
        }
        std::thread::sleep(Duration::from_nanos(wake.saturating_sub(now)));
    }
    let first = first.unwrap_or_default();
    (setup, (first, last.unwrap_or(first)), (rss_first, rss_last))
}

fn fanout(a: FanoutArgs) -> Result<(), String> {
    let c = &a.common;
    check_common(c)?;
    if a.publishers == 0 || a.publishers > c.conns {
        return Err("--publishers must be between 1 and --conns".into());
    }
    if !(a.rate.is_finite() && a.rate > 0.0) {
        return Err("--rate must be a positive number".into());
    }
    if a.duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    let size = a.size.max(1);
    let plan = plan(c, a.publishers, a.rate, size, a.warmup, a.duration, a.drain);
    let o = execute(&plan, c)?;
    let s = &o.stats;
    let window = a.duration.as_secs_f64();
    let expected = s.expected - s.refused_expected;
    let server_cpu = match o.window {
        (Snapshot { server_cpu: Some(x), .. }, Snapshot { server_cpu: Some(y), .. }) => Some(y - x),
        _ => None,
    };
    let harness_cpu = o.window.1.harness_cpu - o.window.0.harness_cpu;

    let mut r = Report::default();
    r.add("scenario", "fanout");
    r.add("target", c.target.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(","));
    r.add("encoding", c.encoding.name());
    r.add("conns", c.conns);
    r.add("rooms", c.rooms);
    r.add("publishers", a.publishers);
    r.add_f("rate", a.rate);
    r.add("size", size);
    r.add("threads", plan.threads);
    r.add_f("warmup_s", a.warmup.as_secs_f64());
    r.add_f("duration_s", window);
    r.add_f("drain_s", a.drain.as_secs_f64());
    r.add_f("setup_s", o.setup.as_secs_f64());
    r.add("connect_p50_us", stats::q(&s.connect, 0.5));
    r.add("connect_p99_us", stats::q(&s.connect, 0.99));
    r.add("join_p50_us", stats::q(&s.join, 0.5));
    r.add("join_p99_us", stats::q(&s.join, 0.99));
    r.add("sent", s.sent);
    r.add("acked", s.acked);
    r.add("refused", s.refused);
    r.add("unacked", s.sent as i64 - s.acked as i64 - s.refused as i64);
    r.add("expected", expected);
    r.add("delivered", s.delivered);
    r.add("lost", expected as i64 - s.delivered as i64);
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
    r.add("ack_p50_us", stats::q(&s.ack_latency, 0.5));
    r.add("ack_p99_us", stats::q(&s.ack_latency, 0.99));
    r.add("ack_max_us", s.ack_latency.max());
    r.add("send_lag_p99_us", stats::q(&s.send_lag, 0.99));
    r.add("send_lag_max_us", s.send_lag.max());
    match server_cpu {
        Some(cpu) => {
            r.add_f("server_cpu_s", cpu);
            r.add_f("server_cpu_pct", 100.0 * cpu / window);
            let per = if s.delivered > 0 { cpu * 1e6 / s.delivered as f64 } else { 0.0 };
            r.add_f("server_cpu_us_per_delivery", per);
        }
        None => {
            r.add("server_cpu_s", serde_json::Value::Null);
            r.add("server_cpu_pct", serde_json::Value::Null);
            r.add("server_cpu_us_per_delivery", serde_json::Value::Null);
        }
    }
    r.add("server_rss_start_kib", o.rss.0);
    r.add("server_rss_end_kib", o.rss.1);
    r.add_f("harness_cpu_s", harness_cpu);
    r.add_f("harness_cpu_pct", 100.0 * harness_cpu / window);
    print_report(&r, c.json);
    Ok(())
}

fn idle(a: IdleArgs) -> Result<(), String> {
    let c = &a.common;
    check_common(c)?;
    let rss_before = c.server_pid.and_then(|p| sys::proc_rss_kib(p).ok());
    if c.server_pid.is_some() && rss_before.is_none() {
        return Err(format!("cannot read /proc/{}/status", c.server_pid.unwrap_or(0)));
    }
    // Idle is a fan-out with no publishers, no warm-up and no drain: the
    // window is the hold, so the snapshots frame it.
    let plan = plan(c, 0, 1.0, 1, Duration::ZERO, a.hold, Duration::ZERO);
    let o = execute(&plan, c)?;
    let s = &o.stats;
    let setup = o.setup.as_secs_f64();
    let mut r = Report::default();
    r.add("scenario", "idle");
    r.add("target", c.target.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(","));
    r.add("encoding", c.encoding.name());
    r.add("conns", c.conns);
    r.add("rooms", c.rooms);
    r.add("threads", plan.threads);
    r.add_f("hold_s", a.hold.as_secs_f64());
    r.add_f("setup_s", setup);
    r.add_f("connects_per_s", if setup > 0.0 { c.conns as f64 / setup } else { 0.0 });
    r.add("connect_p50_us", stats::q(&s.connect, 0.5));
    r.add("connect_p99_us", stats::q(&s.connect, 0.99));
    r.add("connect_max_us", s.connect.max());
    r.add("join_p50_us", stats::q(&s.join, 0.5));
    r.add("join_p99_us", stats::q(&s.join, 0.99));
    r.add("disconnects", s.disconnects);
    r.add("errors", serde_json::json!(s.errors));
    r.add("server_rss_before_kib", rss_before);
    r.add("server_rss_joined_kib", o.rss.0);
    r.add("server_rss_end_kib", o.rss.1);
    let per_conn = match (rss_before, o.rss.1) {
        (Some(b), Some(e)) => Some(((e as f64 - b as f64) * 1024.0 / c.conns as f64).round()),
        _ => None,
    };
    r.add("server_rss_per_conn_bytes", per_conn);
    match o.window {
        (
            crate::Snapshot { server_cpu: Some(x), .. },
            crate::Snapshot { server_cpu: Some(y), .. },
        ) => r.add_f("server_cpu_hold_s", y - x),
        _ => r.add("server_cpu_hold_s", serde_json::Value::Null),
    }
    r.add_f("harness_cpu_hold_s", o.window.1.harness_cpu - o.window.0.harness_cpu);
    print_report(&r, c.json);
    Ok(())
}

fn print_report(r: &Report, json: bool) {
    if json {
        println!("{}", r.json());
    } else {
        print!("{}", r.table());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "chinwag-load",
            "fanout",
            "--target",
            "127.0.0.1:1,127.0.0.1:2",
            "--encoding",
            "msgpack",
            "--duration",
            "3s",
        ])
        .unwrap();
        let Scenario::Fanout(a) = cli.scenario else { panic!("not fanout") };
        assert_eq!(a.common.target.len(), 2);
        assert_eq!(a.common.encoding, Encoding::Msgpack);
        assert_eq!(a.duration, Duration::from_secs(3));
    }

    #[test]
    fn members_add_up() {
        let c = Cli::try_parse_from(["x", "idle", "--conns", "1003", "--rooms", "10"]).unwrap();
        let Scenario::Idle(a) = c.scenario else { panic!("not idle") };
        let p = plan(&a.common, 0, 1.0, 1, Duration::ZERO, Duration::ZERO, Duration::ZERO);
        assert_eq!((0..10).map(|r| p.members(r)).sum::<u64>(), 1003);
        assert_eq!(p.members(2), 101);
        assert_eq!(p.members(3), 100);
    }
}
