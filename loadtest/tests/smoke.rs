//! Smoke tests of chinwag-load against a real chinwag server: each scenario
//! runs for a couple of seconds with small numbers, and its `--json` report
//! must account for every message (nothing lost, duplicated or out of order,
//! every send acked, every client's seqs complete); `mixed` for every
//! reaction, edit and reply too, `search` and `ingest` must find what they
//! loaded and report sane numbers. Nothing here measures speed: limits are
//! set so that no timing can fail a run.
//!
//! Builds nothing. The server is `CHINWAG_BIN`, or `<workspace>/target/debug/chinwag`
//! (`cargo build -p chinwag`); without one each test says so on stderr and
//! passes. The harness is this crate's binary. `cluster` runs only where
//! `redis-server` is on PATH. Every process has a deadline and is killed
//! with its temp dir when the test ends.

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The harness run's deadline: far above its few seconds, so only a hang trips it.
const RUN_LIMIT: Duration = Duration::from_secs(30);

fn server_bin() -> Option<PathBuf> {
    let path = std::env::var_os("CHINWAG_BIN").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/chinwag")
    });
    if path.is_file() {
        Some(path)
    } else {
        // A smoke test that skips itself cannot fail: a missing server is a failure.
        panic!("no server at {} (cargo build -p chinwag, or set CHINWAG_BIN)", path.display())
    }
}

/// A fresh directory under the system temp dir, removed by its owner.
fn temp_dir(what: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("chinwag-smoke-{}-{what}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A child process killed (and its directory removed) on drop.
struct Proc {
    child: Child,
    dir: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A chinwag server on a free loopback port.
struct Server {
    proc: Proc,
    addr: String,
}

impl Server {
    fn start(bin: &PathBuf, extra: &[&str]) -> Server {
        Server::start_env(bin, extra, &[])
    }

    /// A server with extra environment (`CHINWAG_SEARCH=off`).
    fn start_env(bin: &PathBuf, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = temp_dir("server");
        let child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--open", "--threads", "1"])
            .args(["--rate", "100000", "--burst", "100000", "--data-dir"])
            .arg(dir.join("data"))
            .args(extra)
            .env("RUST_LOG", "info")
            // Cluster nodes must share one secret (payloads are sealed with it).
            .env("CHINWAG_SECRET", "chinwag-load-smoke-test-shared-secret-0001")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the server");
        let mut proc = Proc { child, dir };
        let stderr = proc.child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        // Keep draining stderr after the address is known, or the server
        // blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on http://") {
                    let addr = line[at + 20..].split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr =
            rx.recv_timeout(Duration::from_secs(10)).expect("server did not start listening");
        Server { proc, addr }
    }

    fn pid(&self) -> String {
        self.proc.child.id().to_string()
    }

    fn data_dir(&self) -> String {
        self.proc.dir.join("data").display().to_string()
    }
}

/// Runs the harness with `args` and `--json`; returns its JSON lines.
fn load(args: &[&str]) -> Vec<Value> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chinwag-load"))
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chinwag-load");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chinwag-load") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    match status {
        None => panic!("chinwag-load {args:?} still running after {RUN_LIMIT:?}:\n{err}"),
        Some(s) if !s.success() => panic!("chinwag-load {args:?} failed ({s}):\n{err}"),
        Some(_) => {}
    }
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn n(v: &Value, key: &str) -> i64 {
    v[key].as_i64().unwrap_or_else(|| panic!("no number {key} in {v}"))
}

/// Every message accounted for: sent = acked, delivered = expected, and
/// nothing lost, refused, duplicated, reordered or misrouted.
fn assert_accounted(v: &Value) {
    assert!(n(v, "sent") > 0, "nothing sent: {v}");
    assert_eq!(n(v, "acked"), n(v, "sent"), "acked != sent: {v}");
    assert!(n(v, "expected") > 0, "nothing expected: {v}");
    assert_eq!(n(v, "delivered"), n(v, "expected"), "delivered != expected: {v}");
    for zero in
        ["lost", "refused", "duplicated", "out_of_order", "foreign", "malformed", "disconnects"]
    {
        assert_eq!(n(v, zero), 0, "{zero} in {v}");
    }
    assert_eq!(v["errors"], serde_json::json!({}), "errors in {v}");
}

/// The flags every traffic run shares: a short window, a generous drain.
const SHORT: [&str; 6] = ["--warmup", "300ms", "--duration", "1s", "--drain", "1s"];

#[test]
fn fanout_accounts_for_every_message() {
    let Some(bin) = server_bin() else { return };
    let s = Server::start(&bin, &[]);
    let pid = s.pid();
    let mut args = vec!["fanout", "--target", &s.addr, "--server-pid", &pid];
    args.extend(["--conns", "60", "--rooms", "3", "--publishers", "3", "--rate", "100"]);
    args.extend(SHORT);
    let lines = load(&args);
    assert_eq!(lines.len(), 1);
    let v = &lines[0];
    assert_eq!(v["scenario"], "fanout");
    assert_accounted(v);
    assert_eq!(n(v, "expected"), n(v, "sent") * 20, "each message to its room's 20 members");
}

#[test]
fn sweep_reports_each_step_and_the_last_good_one() {
    let Some(bin) = server_bin() else { return };
    let s = Server::start(&bin, &[]);
    let mut args = vec!["sweep", "--target", &s.addr, "--conns", "40", "--rooms", "4"];
    args.extend(["--publishers", "4", "--start-rate", "40", "--max-steps", "2"]);
    // A limit no step can miss: this checks accounting, not speed.
    args.extend(["--p99-limit", "1h", "--warmup", "200ms", "--step-duration", "700ms"]);
    args.extend(["--drain", "1s"]);
    let lines = load(&args);
    assert_eq!(lines.len(), 3, "two steps and the result: {lines:?}");
    for (k, v) in lines[..2].iter().enumerate() {
        assert_eq!((v["scenario"].as_str(), n(v, "step")), (Some("sweep"), k as i64));
        assert_eq!(v["rate"].as_f64(), Some(40.0 * (1 << k) as f64));
        assert_eq!(v["verdict"], "ok");
        assert_accounted(v);
    }
    let result = &lines[2];
    assert_eq!(result["scenario"], "sweep_result");
    assert_eq!(n(result, "last_good_step"), 1);
    assert_eq!(result["stopped_by"], "max steps");
}

#[test]
fn idle_holds_every_connection() {
    let Some(bin) = server_bin() else { return };
    let s = Server::start(&bin, &[]);
    let pid = s.pid();
    let args = ["idle", "--target", &s.addr, "--server-pid", &pid, "--conns", "50", "--rooms", "5"];
    let lines = load(&[&args[..], &["--hold", "500ms"]].concat());
    let v = &lines[0];
    assert_eq!((v["scenario"].as_str(), n(v, "conns"), n(v, "disconnects")), (Some("idle"), 50, 0));
    assert_eq!(v["errors"], serde_json::json!({}));
    assert!(v["server_rss_end_kib"].as_u64().is_some_and(|k| k > 0));
}

#[test]
fn storm_clients_see_every_seq_once_across_sessions() {
    let Some(bin) = server_bin() else { return };
    let s = Server::start(&bin, &[]);
    let mut args = vec!["storm", "--target", &s.addr, "--conns", "40", "--rooms", "4"];
    args.extend(["--rate", "80", "--duration", "2s", "--drain", "2s"]);
    args.extend(["--session-min", "100ms", "--session-max", "300ms", "--offline-max", "50ms"]);
    let lines = load(&args);
    let v = &lines[0];
    assert_eq!(v["scenario"], "storm");
    assert_accounted(v);
    assert_eq!((n(v, "gaps"), n(v, "gap_clients")), (0, 0), "{v}");
    assert_eq!(n(v, "clients_checked"), 40);
    assert!(n(v, "reconnects") > 0 && n(v, "closes") > 0, "no churn happened: {v}");
    assert!(n(v, "recovered") > 0, "no reconnect caught up from history: {v}");
}

#[test]
fn history_pages_are_answered_and_well_formed() {
    let Some(bin) = server_bin() else { return };
    let s = Server::start(&bin, &[]);
    let mut args = vec!["history", "--target", &s.addr, "--conns", "30", "--rooms", "3"];
    args.extend(["--publishers", "3", "--readers", "6", "--rate", "60", "--read-rate", "60"]);
    args.extend(["--page", "10"]);
    args.extend(SHORT);
    let lines = load(&args);
    let v = &lines[0];
    assert_accounted(v);
    assert!(n(v, "history_sent") > 0);
    assert_eq!(n(v, "history_ok"), n(v, "history_sent"), "{v}");
    assert_eq!(n(v, "history_bad"), 0, "{v}");
    assert!(n(v, "history_msgs") > 0);
}

#[test]
fn dm_reaches_both_users_once() {
    let Some(bin) = server_bin() else { return };
    let s = Server::start(&bin, &[]);
    let mut args = vec!["dm", "--target", &s.addr, "--conns", "20", "--rate", "100"];
    args.extend(SHORT);
    let lines = load(&args);
    let v = &lines[0];
    assert_accounted(v);
    assert_eq!(n(v, "rooms"), 10);
    assert_eq!(n(v, "expected"), 2 * n(v, "sent"), "each dm to both users: {v}");
}

/// A throwaway redis-server on a free port, if one is installed.
fn redis() -> Option<(Proc, String)> {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("redis-server").is_file()));
    if !found {
        panic!("no redis-server on PATH (tests/run.sh installs it)");
    }
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let dir = temp_dir("redis");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly"])
        .args(["no", "--dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let proc = Proc { child, dir };
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not listen on {port}");
        thread::sleep(Duration::from_millis(20));
    }
    Some((proc, format!("redis://127.0.0.1:{port}")))
}

#[test]
fn cluster_delivers_across_nodes() {
    let Some(bin) = server_bin() else { return };
    let Some((_redis, url)) = redis() else { return };
    let (a, b) = (Server::start(&bin, &["--redis", &url]), Server::start(&bin, &["--redis", &url]));
    // Until the nodes see Redis, the harness's health check refuses to run.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthy(&a.addr) || !healthy(&b.addr) {
        assert!(Instant::now() < deadline, "nodes not healthy");
        thread::sleep(Duration::from_millis(50));
    }
    let targets = format!("{},{}", a.addr, b.addr);
    let mut args = vec!["cluster", "--target", &targets, "--conns", "40", "--rooms", "4"];
    args.extend(["--publishers", "8", "--rate", "80"]);
    args.extend(SHORT);
    let lines = load(&args);
    let v = &lines[0];
    assert_accounted(v);
    assert_eq!(v["conns_per_node"], serde_json::json!([20, 20]));
    let per_node: Vec<i64> = v["deliveries_per_node"]
        .as_array()
        .expect("deliveries_per_node")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    assert!(per_node.len() == 2 && per_node.iter().all(|&d| d > 0), "{v}");
    assert_eq!(per_node.iter().sum::<i64>(), n(v, "delivered"));
}

/// `/health` says Redis is reachable.
fn healthy(addr: &str) -> bool {
    use std::io::Write;
    let Ok(mut s) = TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    s.write_all(req.as_bytes()).is_ok()
        && s.read_to_string(&mut body).is_ok()
        && body.contains("\"redis\":\"ok\"")
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no number {key} in {v}"))
}

#[test]
fn mixed_accounts_for_every_reaction_edit_and_reply() {
    let Some(bin) = server_bin() else { return };
    let s = Server::start(&bin, &[]);
    let pid = s.pid();
    let mut args = vec!["mixed", "--target", &s.addr, "--server-pid", &pid];
    args.extend(["--conns", "60", "--rooms", "3", "--publishers", "3", "--rate", "100"]);
    // A large mix so that a 2 s window holds every kind many times.
    args.extend(["--mix", "0.4", "--warmup", "300ms", "--duration", "2s", "--drain", "1s"]);
    let lines = load(&args);
    let v = &lines[0];
    assert_eq!(v["scenario"], "mixed");
    assert_accounted(v);
    for kind in ["sent_message", "sent_reply", "sent_edit", "sent_react"] {
        assert!(n(v, kind) > 0, "no {kind}: {v}");
    }
    let kinds: i64 =
        ["sent_message", "sent_reply", "sent_edit", "sent_react"].iter().map(|k| n(v, k)).sum();
    assert_eq!(kinds, n(v, "sent"), "{v}");
    // Each reaction reaches its room's 20 members, over the whole step.
    assert!(n(v, "react_sent_step") > 0);
    assert_eq!(n(v, "react_expected"), 20 * n(v, "react_sent_step"), "{v}");
    assert_eq!(n(v, "react_delivered"), n(v, "react_expected"), "{v}");
    assert!(n(v, "rx_edit") > 0 && n(v, "rx_reaction") > 0, "{v}");
    assert_eq!(n(v, "rx_delete"), 0);
    let rx: i64 =
        ["rx_message", "rx_edit", "rx_delete", "rx_reaction"].iter().map(|k| n(v, k)).sum();
    assert_eq!(rx, n(v, "events_in_window"));
    assert!(f(v, "deliveries_per_s") > 0.0);
    assert!(n(v, "lat_p99_us") > 0 && n(v, "lat_edit_p50_us") > 0, "{v}");
    assert!(n(v, "ack_react_p50_us") > 0 && n(v, "ack_edit_p50_us") > 0, "{v}");
    assert!(f(v, "server_cpu_us_per_delivery") > 0.0, "{v}");
    assert!(f(v, "harness_cpu_s") > 0.0, "{v}");
}

#[test]
fn mixed_without_mix_is_plain_fanout() {
    let Some(bin) = server_bin() else { return };
    let s = Server::start(&bin, &[]);
    let mut args = vec!["mixed", "--target", &s.addr, "--conns", "20", "--rooms", "2"];
    args.extend(["--publishers", "2", "--rate", "50", "--mix", "0"]);
    args.extend(SHORT);
    let lines = load(&args);
    let v = &lines[0];
    assert_accounted(v);
    assert_eq!(n(v, "sent_message"), n(v, "sent"));
    assert_eq!(n(v, "react_sent_step") + n(v, "rx_edit") + n(v, "rx_reaction"), 0, "{v}");
    assert_eq!(n(v, "events_in_window"), n(v, "rx_message"));
    assert_eq!(v["server_cpu_us_per_delivery"], Value::Null, "no --server-pid given");
}

#[test]
fn search_loads_catches_up_and_answers() {
    let Some(bin) = server_bin() else { return };
    let s = Server::start(&bin, &[]);
    let (pid, data) = (s.pid(), s.data_dir());
    let mut args = vec!["search", "--target", &s.addr, "--server-pid", &pid, "--data-dir", &data];
    args.extend(["--messages", "2000", "--rooms", "20", "--load-rate", "500", "--drain", "5s"]);
    args.extend(["--queries", "20", "--catchup-timeout", "20s"]);
    let lines = load(&args);
    let v = &lines[0];
    assert_eq!(v["scenario"], "search");
    assert_eq!(v["load_errors"], serde_json::json!({}), "{v}");
    assert_eq!(n(v, "load_sent"), 2000, "{v}");
    // Every message and the marker in each room.
    assert_eq!(n(v, "messages_in_rooms"), 2000 + 20, "{v}");
    // The marker was found in every room: the index caught up.
    assert!(f(v, "catchup_s") >= 0.0, "{v}");
    assert_eq!(n(v, "one_word_queries") + n(v, "two_word_queries"), 20, "{v}");
    assert_eq!(n(v, "one_word_errors") + n(v, "two_word_errors"), 0, "{v}");
    // Half the queries are one word, some of them frequent ones.
    assert!(f(v, "one_word_mean_results") > 0.0, "{v}");
    assert!(n(v, "one_word_p50_us") > 0 && n(v, "two_word_p99_us") > 0, "{v}");
    assert!(n(v, "index_bytes") > 0, "{v}");
    assert!(f(v, "index_bytes_per_message") > 0.0, "{v}");
}

#[test]
fn ingest_with_and_without_the_index() {
    let Some(bin) = server_bin() else { return };
    for (env, search) in [(vec![], "on"), (vec![("CHINWAG_SEARCH", "off")], "off")] {
        let s = Server::start_env(&bin, &[], &env);
        let pid = s.pid();
        let mut args = vec!["ingest", "--target", &s.addr, "--server-pid", &pid];
        args.extend(["--rooms", "10", "--rate", "200", "--catchup-timeout", "20s"]);
        args.extend(SHORT);
        let lines = load(&args);
        let v = &lines[0];
        assert_eq!((v["scenario"].as_str(), v["search"].as_str()), (Some("ingest"), Some(search)));
        assert!(n(v, "sent") > 0, "{v}");
        assert_eq!(n(v, "acked"), n(v, "sent"), "{v}");
        assert_eq!(v["errors"], serde_json::json!({}), "{v}");
        assert!(n(v, "ack_p99_us") > 0, "{v}");
        assert!(f(v, "server_cpu_us_per_msg") > 0.0, "{v}");
        assert!(f(v, "server_cpu_us_per_stored_to_indexed") > 0.0, "{v}");
        // Every send of the step is stored (the checker's joins count them).
        assert_eq!(n(v, "stored"), n(v, "sent_step"), "{v}");
        assert_eq!(v["index_catchup_s"].is_null(), search == "off", "{v}");
    }
}

/// A directory removed (with everything in it) on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn scale_generates_measures_and_churns() {
    let Some(bin) = server_bin() else { return };
    let tmp = TempDir(temp_dir("scale"));
    let data = tmp.0.join("data").display().to_string();
    let bin = bin.display().to_string();
    // 10,000 events in 50 rooms: the whole scenario at a tiny scale (a
    // debug build writes ~2,500 events/s).
    let mut args = vec!["scale", "--data-dir", &data, "--server-bin", &bin, "--search", "false"];
    args.extend(["--events", "10000", "--rooms", "50", "--users", "100", "--heavy-users", "2"]);
    args.extend(["--heavy-rooms", "25", "--rooms-per-user", "5", "--history-requests", "100"]);
    args.extend(["--hello-connects", "10", "--churn", "400", "--reclaim-wait", "0s"]);
    let lines = load(&args);
    let v = &lines[0];
    assert_eq!(v["scenario"], "scale");
    assert_eq!(v["generated"], true, "{v}");
    assert!(f(v, "disk_bytes_per_event") > 0.0, "{v}");
    assert!(f(v, "start_to_first_accept_s") > 0.0, "{v}");
    assert!(n(v, "rss_after_start_kib") > 0, "{v}");
    // Every heavy user is in its 25 rooms, each with unread messages.
    assert_eq!(n(v, "hello_rooms"), 25, "{v}");
    assert!(n(v, "hello_unread_sum") >= 25, "{v}");
    assert_eq!(n(v, "history_wrong"), 0, "every page is full: {v}");
    assert!(n(v, "history_p99_us") > 0 && n(v, "hello_p99_us") > 0, "{v}");
    assert_eq!(n(v, "churn_edits") + n(v, "churn_deletes"), 400, "{v}");
    assert_eq!(n(v, "churn_errors"), 0, "{v}");
    assert!(n(v, "churn_deletes") > 0, "{v}");
    assert!(n(v, "disk_backup_copy") > 0 && n(v, "disk_at_end") > 0, "{v}");
    assert!(f(v, "restart_after_kill_s") > 0.0, "{v}");
}
