//! The operator's side of PROTOCOL.md sections 1 and 5 beyond the basics in `cli` and `api`:
//! `chinwag backup` written by the command itself (relative DEST, private modes, a server that
//! may not write there, one-line failures), SIGHUP reloading the TLS certificate, `/metrics`
//! as classic Prometheus text with process, build, HTTP, WebSocket and refusal series, the
//! Grafana dashboard's queries, and the log lines operators read.

use crate::support::{self, *};
use serde_json::json;
use std::{
    collections::{BTreeMap, HashSet},
    fs,
    io::{Read, Write},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Runs `chinwag backup ARGS` in `cwd`.
fn backup_cmd(cwd: &Path, args: &[&str]) -> Finished {
    let mut cmd = command();
    cmd.current_dir(cwd).arg("backup").args(args);
    run_bounded(cmd, Duration::from_secs(60))
}

/// Every file of `dir` is 0600 and every directory 0700 (`dir` included).
fn assert_private(dir: &Path) {
    let mode = fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", dir.display());
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            assert_private(&p);
        } else {
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }
}

/// The texts of room `room` on a node started on `dir`.
fn texts_in(dir: &Path, room: &str) -> Vec<String> {
    let mut o = Opts::new(&["--open"]);
    o.dir = Some(dir.to_path_buf());
    let s = Server::start_with(o);
    let mut c = s.client("a");
    let r = c.call(json!({"type": "history", "room": room, "limit": 100}));
    r["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap().into()).collect()
}

#[test]
fn backup_dest_is_the_commands_own_and_private() {
    let s = Server::open(&[]);
    let mut a = s.client("a");
    a.join("r");
    for i in 0..5 {
        a.send_msg("r", &format!("m{i}"));
    }
    let cwd = tempfile::tempdir().unwrap();
    let data = s.dir.to_str().unwrap();
    let f = backup_cmd(cwd.path(), &["nested/copy", "--data-dir", data]);
    assert_eq!(f.code(), 0, "{f:?}");
    let copy = cwd.path().join("nested/copy");
    assert!(copy.join("db").is_dir(), "DEST is relative to the command's directory");
    assert!(!Path::new("nested").exists(), "nothing written relative to the server's");
    assert_private(&copy);
    assert_eq!(fs::read(copy.join("secret")).ok(), fs::read(s.dir.join("secret")).ok());
    assert_eq!(texts_in(&copy, "r"), ["m0", "m1", "m2", "m3", "m4"]);

    // Cannot write: non-zero, one line, nothing on stdout.
    let file = cwd.path().join("plain-file");
    fs::write(&file, "x").unwrap();
    let f = backup_cmd(cwd.path(), &["plain-file/copy", "--data-dir", data]);
    assert_ne!(f.code(), 0, "{f:?}");
    assert_eq!(f.stderr.lines().filter(|l| !l.trim().is_empty()).count(), 1, "{f:?}");
    assert!(f.stdout.trim().is_empty(), "{f:?}");
    // Into a copy already there: refused, the copy untouched.
    let f = backup_cmd(cwd.path(), &["nested/copy", "--data-dir", data]);
    assert_ne!(f.code(), 0, "{f:?}");
    assert_eq!(f.stderr.lines().count(), 1, "{f:?}");
}

#[test]
fn backup_of_a_stopped_server_reads_its_database() {
    let mut s = Server::open(&[]);
    let mut a = s.client("a");
    a.join("r");
    a.send_msg("r", "kept");
    drop(a);
    assert!(s.sigterm().success());
    let cwd = tempfile::tempdir().unwrap();
    let f = backup_cmd(cwd.path(), &["c", "--data-dir", s.dir.to_str().unwrap()]);
    assert_eq!(f.code(), 0, "{f:?}");
    assert_eq!(texts_in(&cwd.path().join("c"), "r"), ["kept"]);
}

/// As under the systemd unit: the server runs as another user that may not write where the
/// copy goes (here `nobody`, and a directory only root may enter), and the copy is made anyway.
#[test]
fn backup_lands_where_only_the_command_may_write() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 || Command::new("setpriv").arg("--help").output().is_err() {
        eprintln!("skipped: needs root and setpriv to run the server as another user");
        return;
    }
    let _w = watchdog(Duration::from_secs(120));
    let data = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(data.path(), Some(65534), Some(65534)).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"]).arg(support::bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(data.path());
    cmd.env("CHINWAG_SECRET", SECRET).stdout(Stdio::null()).stderr(Stdio::null());
    let mut server = ChildGuard(cmd.spawn().unwrap());
    let sock = data.path().join("control.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(sock.exists(), "the server (as nobody) did not start");
    let root_only = tempfile::tempdir().unwrap();
    fs::set_permissions(root_only.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let dest = root_only.path().join("copy");
    let f = backup_cmd(root_only.path(), &["copy", "--data-dir", data.path().to_str().unwrap()]);
    assert_eq!(f.code(), 0, "{f:?}");
    assert!(dest.join("db").is_dir());
    assert_eq!(fs::metadata(&dest).unwrap().uid(), 0, "written by the command, not the server");
    assert!(server.0.try_wait().unwrap().is_none(), "the server keeps running");
    server.0.kill().unwrap();
}

/// Kills its child on drop (a failed assertion leaves no server behind).
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET /health` over TLS trusting exactly `cert_der`: the status line, or why it failed.
fn tls_health(addr: std::net::SocketAddr, cert_der: &[u8]) -> Result<String, String> {
    let conn = support::tls_client(cert_der);
    let tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut t = rustls::StreamOwned::new(conn, tcp);
    t.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    t.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    Ok(resp.lines().next().unwrap_or_default().to_string())
}

/// Writes a fresh self-signed certificate for localhost to `cert` and `key`; returns its DER.
fn new_cert(cert: &Path, key: &Path) -> Vec<u8> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    fs::write(cert, ck.cert.pem()).unwrap();
    fs::write(key, ck.key_pair.serialize_pem()).unwrap();
    ck.cert.der().to_vec()
}

/// Polls `f` until it is true (at most 10 s).
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn sighup_reloads_the_certificate_and_never_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let old = new_cert(&cert, &key);
    let mut s =
        Server::open(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    assert_eq!(tls_health(s.addr, &old).as_deref(), Ok("HTTP/1.1 200 OK"));

    let new = new_cert(&cert, &key);
    s.signal(libc::SIGHUP);
    assert!(eventually(|| tls_health(s.addr, &new).is_ok()), "new cert after SIGHUP");
    assert!(tls_health(s.addr, &old).is_err(), "the old certificate is no longer served");

    // Files that do not load: the server says so and keeps the certificate it has.
    fs::write(&key, "not a key").unwrap();
    s.signal(libc::SIGHUP);
    assert!(
        eventually(|| s.log_text().lines().any(|l| l.contains("SIGHUP") && l.contains("stays"))),
        "a failed reload is logged:\n{}",
        s.log_text()
    );
    assert!(s.has_exited().is_none(), "SIGHUP never stops the server");
    assert_eq!(tls_health(s.addr, &new).as_deref(), Ok("HTTP/1.1 200 OK"));
}

#[test]
fn sighup_without_tls_keeps_serving() {
    let mut s = Server::open(&[]);
    // One at a time: signals that arrive together count once.
    for n in 1..=3 {
        s.signal(libc::SIGHUP);
        assert!(eventually(|| s.log_text().matches("SIGHUP").count() >= n), "{}", s.log_text());
    }
    assert!(s.has_exited().is_none(), "SIGHUP never stops the server");
    s.assert_healthy(true);
}

/// A scrape: the content type and every sample as `name{labels}` → value, after checking that
/// it is classic Prometheus text: every sample's family announced by `# TYPE` (under the very
/// name its samples use) and `# HELP`, no OpenMetrics-only lines.
pub(crate) fn scrape(addr: std::net::SocketAddr) -> (String, BTreeMap<String, f64>) {
    let r = http_request(addr, "GET", "/metrics", &[], "");
    assert_eq!(r.status, 200);
    let (mut types, mut helps, mut samples) = (BTreeMap::new(), HashSet::new(), BTreeMap::new());
    for line in r.body.lines() {
        assert!(!line.starts_with("# EOF") && !line.starts_with("# UNIT"), "{line}");
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "twice: {line}");
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            helps.insert(rest.split(' ').next().unwrap().to_string());
        } else if !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| name.strip_suffix(s))
                .find(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                .unwrap_or(name);
            let kind = types.get(family).unwrap_or_else(|| panic!("no # TYPE for {line}"));
            assert!(helps.contains(family), "no # HELP for {line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}: {kind}");
            samples.insert(series.to_string(), value.parse().unwrap());
        }
    }
    (r.header("content-type").unwrap_or_default().to_string(), samples)
}

/// Scrapes until every series reaches its value (each loop folds its counts in once a second).
fn scrape_until(addr: std::net::SocketAddr, want: &[(&str, f64)]) -> BTreeMap<String, f64> {
    let mut last = BTreeMap::new();
    let reached = |m: &BTreeMap<String, f64>, (series, at_least): &(&str, f64)| {
        m.get(*series).is_some_and(|v| v >= at_least)
    };
    eventually(|| {
        last = scrape(addr).1;
        want.iter().all(|w| reached(&last, w))
    });
    for w in want {
        assert!(reached(&last, w), "{} < {}: {last:#?}", w.0, w.1);
    }
    last
}

#[test]
fn metrics_are_classic_text_with_process_http_websocket_and_refusal_series() {
    let s = Server::open(&["--max-frame", "128", "--max-conns-per-user", "1"]);
    let (content_type, m) = scrape(s.addr);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let version = format!("chinwag_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(m.get(&version), Some(&1.0), "{m:#?}");
    let now = now_s() as f64;
    let start = m["process_start_time_seconds"];
    assert!(start > now - 3600.0 && start <= now + 1.0, "start time {start} vs now {now}");
    assert!(m["process_resident_memory_bytes"] > 1e6, "{m:#?}");
    assert!(m["process_open_fds"] >= 3.0 && m["process_max_fds"] >= m["process_open_fds"]);
    assert!(m.contains_key("process_cpu_seconds_total"));
    assert_eq!(m.get("chinwag_storage_up"), Some(&1.0));

    // HTTP by route and status; a 401 is a refusal.
    http_get(s.addr, "/health", &[]);
    http_get(s.addr, "/no/such/page", &[]);
    http_request(s.addr, "POST", "/api/rooms/r/join", &[], "");
    // WebSockets: one the client closes, one the server closes (1009), one refused (quota).
    let a = s.client("a");
    let mut b = s.client("b");
    assert!(matches!(
        Client::try_connect(s.addr, Auth::Open("b"), &[]),
        Err(ConnectError::Http(429, _))
    ));
    b.send_text(&"x".repeat(300));
    assert_eq!(b.expect_close(), 1009);
    a.close();
    // One whose TCP connection just ends (no close frame): 1006, by nobody.
    drop(s.client("c"));
    scrape_until(
        s.addr,
        &[
            ("chinwag_http_requests_total{route=\"/health\",status=\"200\"}", 1.0),
            ("chinwag_http_requests_total{route=\"other\",status=\"404\"}", 1.0),
            ("chinwag_http_requests_total{route=\"/api/rooms/{room}/join\",status=\"401\"}", 1.0),
            ("chinwag_http_requests_total{route=\"/ws\",status=\"101\"}", 3.0),
            ("chinwag_http_requests_total{route=\"/ws\",status=\"429\"}", 1.0),
            ("chinwag_ws_opens_total", 3.0),
            ("chinwag_ws_closes_total{code=\"1006\",by=\"none\"}", 1.0),
            ("chinwag_ws_closes_total{code=\"1009\",by=\"server\"}", 1.0),
            ("chinwag_refusals_total{reason=\"unauthorized\"}", 1.0),
            ("chinwag_refusals_total{reason=\"too_many_connections\"}", 1.0),
            ("chinwag_ws_closes_total{code=\"1005\",by=\"client\"}", 1.0),
        ],
    );
}

#[test]
fn refused_logins_are_logged_with_the_reason_never_the_token_and_rate_limited() {
    let s = Server::start(&[]);
    let foreign = sign(&json!({"sub": "mallory", "exp": now_s() + 600}), &"x".repeat(40));
    match Client::try_connect(s.addr, Auth::Bearer(&foreign), &[]) {
        Err(ConnectError::Http(401, _)) => {}
        other => panic!("a foreign token: {other:?}"),
    }
    let line =
        |s: &Server| s.log_text().lines().find(|l| l.contains("refused login")).map(str::to_string);
    assert!(eventually(|| line(&s).is_some()), "no refused login line:\n{}", s.log_text());
    let l = line(&s).unwrap();
    assert!(l.contains("INFO") && l.contains("401") && l.contains("127.0.0.1"), "{l}");
    assert!(!l.contains(&foreign) && !l.contains(foreign.split('.').nth(1).unwrap()), "{l}");
    // A client that keeps trying cannot fill the log.
    for _ in 0..100 {
        let _ = Client::try_connect(s.addr, Auth::Bearer("not-a-token"), &[]);
    }
    s.assert_healthy(false);
    let n = s.log_text().matches("refused login").count();
    assert!(n < 101, "101 refused logins, {n} lines: the log is not rate-limited");
}

#[test]
fn server_closes_are_logged_with_their_code() {
    let s = Server::open(&["--max-frame", "128"]);
    let mut c = s.client("bigmouth");
    c.send_text(&"x".repeat(300));
    assert_eq!(c.expect_close(), 1009);
    let found = || s.log_text().lines().any(|l| l.contains("bigmouth") && l.contains("1009"));
    assert!(eventually(found), "{}", s.log_text());
}

/// Runs `chinwag ARGS` with stderr into a file that `JOURNAL_STREAM` names, as systemd does.
fn under_journald(args: &[&str]) -> (std::process::Child, std::path::PathBuf, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let err = tmp.path().join("stderr");
    let file = fs::File::create(&err).unwrap();
    let meta = file.metadata().unwrap();
    let mut cmd = command();
    cmd.args(args).env("CHINWAG_SECRET", SECRET);
    cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    cmd.stdout(Stdio::null()).stderr(file);
    (cmd.spawn().unwrap(), err, tmp)
}

#[test]
fn under_journald_lines_carry_a_priority_and_no_timestamp() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let (child, err, _tmp) =
        under_journald(&["serve", "--listen", "127.0.0.1:0", "--data-dir", dir]);
    let mut child = ChildGuard(child);
    let text = || fs::read_to_string(&err).unwrap_or_default();
    assert!(eventually(|| text().contains("listening on")), "{}", text());
    let listening = text().lines().find(|l| l.contains("listening on")).unwrap().to_string();
    assert!(listening.starts_with("<6>chinwag "), "info is <6>, no timestamp: {listening}");
    let addr = listening.split("http://").nth(1).unwrap().split_whitespace().next().unwrap();
    // An error is <3>: a second server on the same address.
    let other = tempfile::tempdir().unwrap();
    let other = other.path().to_str().unwrap();
    let (second, err2, _tmp2) = under_journald(&["serve", "--listen", addr, "--data-dir", other]);
    let mut second = ChildGuard(second);
    assert_eq!(
        wait_timeout(&mut second.0, Duration::from_secs(15)).and_then(|s| s.code()),
        Some(1)
    );
    let line = fs::read_to_string(&err2).unwrap();
    assert!(line.starts_with("<3>") && line.contains(addr), "{line}");
    // A clean stop logs its steps at info and nothing at error.
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = wait_timeout(&mut child.0, Duration::from_secs(15));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", text());
    let log = text();
    assert!(log.lines().any(|l| l == "<6>stopped"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("<3>") || l.starts_with("<4>")), "{log}");
}

/// The metric names an expression reads (`chinwag_*` and `process_*` identifiers).
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("chinwag_") || w.starts_with("process_"))
        .map(String::from)
        .collect()
}

#[test]
fn every_metric_the_grafana_dashboard_queries_is_served() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana/chinwag.json");
    let dash: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(path).unwrap()).expect("the dashboard is JSON");
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(vars.contains(&"instance"), "an `instance` variable picks nodes: {vars:?}");
    let mut exprs: Vec<String> = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().expect("every target has an expr");
            assert!(e.contains("$instance"), "panel `{}` ignores the node picker: {e}", p["title"]);
            exprs.push(e.to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["definition"].as_str() {
            exprs.push(q.to_string());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");

    let s = Server::open(&[]);
    // Histograms and labelled families show their series once something happened.
    let mut c = s.client("a");
    c.join("r");
    c.send_msg("r", "x");
    c.close();
    let _ = Client::try_connect(s.addr, Auth::Bearer("bad"), &[]);
    let served: HashSet<String> = scrape_until(
        s.addr,
        &[
            ("chinwag_ack_latency_seconds_count", 1.0),
            ("chinwag_refusals_total{reason=\"unauthorized\"}", 1.0),
            ("chinwag_ws_closes_total{code=\"1005\",by=\"client\"}", 1.0),
        ],
    )
    .keys()
    .map(|k| k.split('{').next().unwrap().to_string())
    .collect();
    let names: std::collections::BTreeSet<String> =
        exprs.iter().flat_map(|e| metric_names(e)).collect();
    for name in &names {
        assert!(served.contains(name), "the dashboard queries {name}, which /metrics lacks");
    }
    for must in ["chinwag_connections", "chinwag_messages_total", "chinwag_deliveries_total"] {
        assert!(names.contains(must), "the dashboard shows {must}");
    }
}

/// The status of a WebSocket upgrade on `/ws?user=a` with these extra headers.
fn upgrade_status(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> u16 {
    let mut t = tcp(addr);
    let mut req = String::from(
        "GET /ws?user=a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    t.write_all(req.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    t.read_exact(&mut head).unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

#[test]
fn behind_a_tls_proxy_the_page_origin_is_https() {
    // What a browser sends through a TLS proxy on 443: no port in Host, an https Origin.
    let page = [("Host", "chat.example.org"), ("Origin", "https://chat.example.org")];
    let proto = ("X-Forwarded-Proto", "https");
    let proxied = Server::open(&["--trusted-proxies", "127.0.0.1"]);
    assert_eq!(upgrade_status(proxied.addr, &[page[0], page[1], proto]), 101);
    assert_eq!(upgrade_status(proxied.addr, &page), 403, "without X-Forwarded-Proto");
    let direct = Server::open(&[]);
    assert_eq!(upgrade_status(direct.addr, &[page[0], page[1], proto]), 403, "no proxy trusted");
}

#[test]
fn export_writes_every_rooms_events_as_json_lines_while_the_server_runs() {
    let s = Server::open(&[]);
    let mut a = s.client("alice");
    a.join("r");
    let m0 = a.send_msg("r", "m0")["seq"].as_u64().unwrap();
    let m1 = a.send_msg("r", "m1")["seq"].as_u64().unwrap();
    let m2 = a.send_msg("r", "m2")["seq"].as_u64().unwrap();
    for f in [
        json!({"type": "edit", "room": "r", "seq": m0, "text": "m0 fixed"}),
        json!({"type": "delete", "room": "r", "seq": m1}),
        json!({"type": "react", "room": "r", "seq": m2, "emoji": "+1", "on": true}),
        json!({"type": "dm", "to": "bob", "text": "psst"}),
    ] {
        let r = a.call(f);
        assert_eq!(ty(&r), "ack", "{r}");
    }
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = command();
    cmd.current_dir(cwd.path()).args(["export", "out", "--data-dir", s.dir.to_str().unwrap()]);
    let f = run_bounded(cmd, Duration::from_secs(60));
    assert_eq!(f.code(), 0, "{f:?}");
    let out = cwd.path().join("out");
    assert_private(&out);
    let mut files: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["dm:alice:bob.jsonl", "r.jsonl"], "one file per room, no copy left");
    let lines: Vec<serde_json::Value> = fs::read_to_string(out.join("r.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>(), "every event, in seq order");
    let at = |seq: u64| &lines[seq as usize - 1];
    assert_eq!(at(m0)["text"], "m0 fixed", "{}", at(m0));
    assert!(at(m0)["edited_ts"].is_u64(), "{}", at(m0));
    assert_eq!(at(m1)["deleted"], true, "{}", at(m1));
    assert!(at(m1).get("text").is_none_or(|t| t.is_null()), "deleted text stays out: {}", at(m1));
    assert_eq!(at(m2)["reactions"][0]["emoji"], "+1", "{}", at(m2));
    assert_eq!(at(4)["type"], "edit");
    let dm = fs::read_to_string(out.join("dm:alice:bob.jsonl")).unwrap();
    assert!(dm.contains("\"psst\""), "{dm}");
}

#[test]
fn a_real_prometheus_parser_reads_metrics_with_their_types() {
    use prometheus_parse::{Scrape, Value};
    let s = Server::open(&[]);
    let mut a = s.client("a");
    a.join("r");
    a.send_msg("r", "counted");
    let (_, body) = http_get(s.addr, "/metrics", &[]);
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    let kind = |name: &str| {
        let v = scrape.samples.iter().find(|x| x.metric == name).map(|x| &x.value);
        match v {
            Some(Value::Counter(_)) => "counter",
            Some(Value::Gauge(_)) => "gauge",
            Some(Value::Histogram(_)) => "histogram",
            Some(Value::Summary(_)) => "summary",
            Some(Value::Untyped(_)) => "untyped",
            None => "missing",
        }
    };
    for (name, want) in [
        ("chinwag_ws_opens_total", "counter"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("chinwag_storage_up", "gauge"),
        ("chinwag_ack_latency_seconds", "histogram"),
        ("chinwag_storage_flush_seconds", "histogram"),
    ] {
        assert_eq!(kind(name), want, "{name} in {body}");
    }
    assert!(scrape.docs.contains_key("chinwag_ack_latency_seconds"), "HELP kept");
    let untyped: Vec<&str> = scrape
        .samples
        .iter()
        .filter(|x| matches!(x.value, Value::Untyped(_)))
        .map(|x| x.metric.as_str())
        // This parser keeps a histogram's _sum and _count as plain samples.
        .filter(|m| {
            let base = m.strip_suffix("_sum").or_else(|| m.strip_suffix("_count"));
            base.is_none_or(|b| kind(b) != "histogram")
        })
        .collect();
    assert!(untyped.is_empty(), "untyped series: {untyped:?}");
}
