//! The HTTP side of PROTOCOL.md section 5 and the self-hoster's kit: every
//! `/api/` route and status code, `/metrics` parsed as Prometheus text, the
//! embedded web client, a `wss://` round trip with a generated certificate,
//! `chinwag backup` while the server runs, `systemd-analyze verify` on
//! the unit, and its seccomp filter letting the server lower its own
//! background threads.

use crate::support::{self, http_get, http_request, run_bounded, ty, Auth, Client, Enc, Server};
use serde_json::{json, Value};
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    time::Duration,
};

fn bearer(user: &str, admin: bool, jti: &str) -> String {
    support::sign(
        &json!({"sub": user, "exp": support::now_s() + 600, "admin": admin, "jti": jti}),
        support::SECRET,
    )
}

fn call(s: &Server, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let r = http_request(s.addr, method, path, &headers, body);
    let v = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("{method} {path}: body not JSON ({e}): {:?}", r.body));
    (r.status, v)
}

#[test]
fn api_routes_answer_with_the_documented_status_codes() {
    let s = Server::start(&[]);
    let bot = bearer("bot", false, "bot-1");
    let admin = bearer("root", true, "root-1");

    // Auth first: no token, a bad token.
    assert_eq!(call(&s, "GET", "/api/rooms/ops/messages", None, "").0, 401);
    let (st, v) = call(&s, "GET", "/api/rooms/ops/messages", Some("nope"), "");
    assert_eq!((st, v["error"].as_str()), (401, Some("unauthorized")));
    // Unknown path and wrong method.
    assert_eq!(call(&s, "GET", "/api/nothing", Some(&bot), "").0, 404);
    assert_eq!(call(&s, "GET", "/nothing", None, "").0, 404);
    assert_eq!(call(&s, "GET", "/api/rooms/ops/join", Some(&bot), "").0, 405);
    // Membership is needed to read and post.
    let (st, v) = call(&s, "GET", "/api/rooms/ops/messages", Some(&bot), "");
    assert_eq!((st, v["error"].as_str()), (403, Some("not_member")));
    let (st, v) = call(&s, "POST", "/api/rooms/ops/messages", Some(&bot), r#"{"text":"hi"}"#);
    assert_eq!((st, v["error"].as_str()), (403, Some("not_member")));
    let (st, v) = call(&s, "POST", "/api/rooms/Bad!/join", Some(&bot), "");
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_room")));
    let (st, v) = call(&s, "POST", "/api/rooms/ops/join", Some(&bot), "");
    assert_eq!((st, v["room"].as_str(), v["seq"].as_u64()), (200, Some("ops"), Some(0)), "{v}");

    // A WebSocket member sees bot posts live.
    let mut human = s.client_token("human");
    human.join("ops");
    let (st, v) =
        call(&s, "POST", "/api/rooms/ops/messages", Some(&bot), r#"{"text":"deploy started"}"#);
    assert_eq!((st, v["seq"].as_u64()), (201, Some(1)), "{v}");
    assert!(v["ts"].as_u64().is_some());
    let m = human.recv_type("message");
    assert_eq!((m["from"].as_str(), m["text"].as_str()), (Some("bot"), Some("deploy started")));
    // Bad bodies.
    for (body, code) in [
        (r#"{"text":"   "}"#, "bad_request"),
        (r#"{"txt":"x"}"#, "bad_request"),
        ("not json", "bad_request"),
        (&*format!(r#"{{"text":"{}"}}"#, "y".repeat(4001)), "too_long"),
    ] {
        let (st, v) = call(&s, "POST", "/api/rooms/ops/messages", Some(&bot), body);
        assert_eq!((st, v["error"].as_str()), (400, Some(code)), "{body:.40}");
    }
    // Over 64 KiB: 413 on the head alone.
    let big = format!(r#"{{"text":"{}"}}"#, "z".repeat(70 * 1024));
    let (st, v) = call(&s, "POST", "/api/rooms/ops/messages", Some(&bot), &big);
    assert_eq!((st, v["error"].as_str()), (413, Some("too_large")));
    // History with cursors.
    for i in 2..=5 {
        call(
            &s,
            "POST",
            "/api/rooms/ops/messages",
            Some(&bot),
            &json!({"text": format!("m{i}")}).to_string(),
        );
    }
    let (st, v) = call(&s, "GET", "/api/rooms/ops/messages?before=5&limit=2", Some(&bot), "");
    let seqs: Vec<u64> =
        v["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!((st, seqs, v["more"].as_bool()), (200, vec![3, 4], Some(true)));
    let (_, v) = call(&s, "GET", "/api/rooms/ops/messages?after=3", Some(&bot), "");
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);
    assert_eq!(call(&s, "GET", "/api/rooms/ops/messages?limit=0", Some(&bot), "").0, 400);
    assert_eq!(call(&s, "GET", "/api/rooms/ops/messages?after=x", Some(&bot), "").0, 400);

    // notify: admin only, delivered to every live connection of the user.
    let body = json!({"user": "human", "kind": "deploy", "text": "done", "data": {"ok": true}})
        .to_string();
    let (st, v) = call(&s, "POST", "/api/notify", Some(&bot), &body);
    assert_eq!((st, v["error"].as_str()), (403, Some("forbidden")));
    assert_eq!(call(&s, "POST", "/api/notify", Some(&admin), &body).0, 202);
    let n = human.recv_type("notification");
    assert_eq!(
        (n["kind"].as_str(), n["text"].as_str(), n["data"]["ok"].as_bool()),
        (Some("deploy"), Some("done"), Some(true))
    );
    assert!(n["ts"].as_u64().is_some());

    // revoke: the bot's token is refused from now on, and a live socket with it is closed 4001.
    let mut bot_ws = Client::connect(s.addr, Auth::Bearer(&bot), Enc::Json);
    assert_eq!(call(&s, "POST", "/api/revoke", Some(&bot), r#"{"jti":"bot-1"}"#).0, 403);
    assert_eq!(call(&s, "POST", "/api/revoke", Some(&admin), r#"{"jti":"bot-1"}"#).0, 200);
    assert_eq!(call(&s, "GET", "/api/rooms/ops/messages", Some(&bot), "").0, 401);
    assert_eq!(bot_ws.expect_close(), 4001);
}

#[test]
fn api_calls_share_the_rate_limit_and_answer_429() {
    let s = Server::start(&["--rate", "1", "--burst", "3"]);
    let bot = bearer("bot", false, "b");
    let statuses: Vec<u16> =
        (0..6).map(|_| call(&s, "POST", "/api/rooms/r/join", Some(&bot), "").0).collect();
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    let r = http_request(
        s.addr,
        "POST",
        "/api/rooms/r/join",
        &[("Authorization", &format!("Bearer {bot}"))],
        "",
    );
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!((r.status, v["error"].as_str()), (429, Some("rate_limited")));
    assert!(v["retry_after_ms"].as_u64().is_some());
}

/// Parses the text exposition: `name{labels} value` lines into name → values.
pub(crate) fn parse_prometheus(text: &str) -> HashMap<String, Vec<f64>> {
    let mut out: HashMap<String, Vec<f64>> = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let kind = rest.split_whitespace().nth(1).unwrap_or("");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "unknown"].contains(&kind),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels: {line}"
            );
        }
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        out.entry(name.to_string()).or_default().push(v);
    }
    out
}

#[test]
fn metrics_are_prometheus_text_and_count_what_happens() {
    let s = Server::open(&[]);
    let r = http_request(s.addr, "GET", "/metrics", &[], "");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type").is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        r.headers
    );
    let before = parse_prometheus(&r.body);
    for name in [
        "chinwag_connections",
        "chinwag_frames_in_total",
        "chinwag_frames_out_total",
        "chinwag_messages_total",
        "chinwag_deliveries_total",
        "chinwag_slow_consumer_closes_total",
        "chinwag_rate_limited_total",
        "chinwag_storage_flush_seconds_count",
        "chinwag_storage_flush_batch_count",
        "chinwag_ack_latency_seconds_bucket",
        "chinwag_redis_up",
        "chinwag_heap_trims_total",
    ] {
        assert!(before.contains_key(name), "missing {name} in:\n{}", r.body);
    }
    let mut a = s.client("a");
    let mut b = s.client("b");
    a.join("m");
    b.join("m");
    // An HTTP request still arriving: a connection of the loop, but not a
    // WebSocket, so `chinwag_loop_connections` must not count it. It stays
    // open past the sweep that folds in the deliveries below.
    let mut pending = TcpStream::connect(s.addr).unwrap();
    pending.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    for i in 0..5 {
        a.send_msg("m", &format!("x{i}"));
    }
    for _ in 0..5 {
        b.recv_type("message");
    }
    // Counters are folded in once a second at the latest.
    let mut after = HashMap::new();
    for _ in 0..50 {
        after = parse_prometheus(&http_get(s.addr, "/metrics", &[]).1);
        if after["chinwag_deliveries_total"][0] >= 10.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(after["chinwag_messages_total"][0], 5.0);
    assert_eq!(after["chinwag_deliveries_total"][0], 10.0, "5 messages to 2 members");
    assert_eq!(after["chinwag_connections"][0], 2.0);
    assert!(after["chinwag_storage_flush_seconds_count"][0] >= 1.0);
    // WebSockets only: neither the pending request nor a scrape, through
    // the sweeps (once a second) that refresh the gauge meanwhile.
    for _ in 0..25 {
        let now = parse_prometheus(&http_get(s.addr, "/metrics", &[]).1);
        assert_eq!(now["chinwag_loop_connections"].iter().sum::<f64>(), 2.0);
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(pending);
}

#[test]
fn a_quiet_second_after_writes_gives_the_heap_back() {
    let s = Server::open(&[]);
    let trims =
        || parse_prometheus(&http_get(s.addr, "/metrics", &[]).1)["chinwag_heap_trims_total"][0];
    // The start's own writes are trimmed in its first quiet second: wait
    // until the count holds still across two checks by the commit thread.
    let mut before = trims();
    loop {
        std::thread::sleep(Duration::from_millis(2500));
        let now = trims();
        if now == before {
            break;
        }
        before = now;
    }
    let mut a = s.client("a");
    a.join("m");
    for i in 0..10 {
        a.send_msg("m", &format!("burst {i}"));
    }
    let mut after = before;
    for _ in 0..100 {
        after = trims();
        if after > before {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(after, before + 1.0, "one trim after the burst's writes, once they stopped");
    // Quiet, with nothing written since: no more (the next is a minute away).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(trims(), after);
}

#[test]
fn web_client_is_served_at_root() {
    let s = Server::start(&[]);
    let r = http_request(s.addr, "GET", "/", &[], "");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/html")));
    // The script is its own file (the page's CSP allows no inline script),
    // an ES module that speaks the protocol through the client library
    // (clients/js), served from here too: /chinwag.js imports ./msgpack.js.
    let script = http_request(s.addr, "GET", "/app.js", &[], "");
    let lib = http_request(s.addr, "GET", "/chinwag.js", &[], "");
    let msgpack = http_request(s.addr, "GET", "/msgpack.js", &[], "");
    assert!(
        r.body.contains("<html") && r.body.contains("<script type=\"module\" src=\"/app.js\">")
    );
    assert!(script.body.contains("from '/chinwag.js'"), "app.js imports the library");
    assert_eq!(lib.body, include_str!("../clients/js/index.js"));
    assert!(lib.body.contains("chinwag.v1.json") && lib.body.contains("from './msgpack.js'"));
    assert_eq!(msgpack.body, include_str!("../clients/js/msgpack.js"));
}

/// A rustls client stream that trusts exactly `cert`.
fn tls_stream(
    addr: std::net::SocketAddr,
    cert_der: Vec<u8>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let conn = support::tls_client(&cert_der);
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(support::READ_TIMEOUT)).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

#[test]
fn https_and_wss_on_the_same_port() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let s =
        Server::open(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let der = ck.cert.der().to_vec();

    // https: /health over TLS.
    let mut t = tls_stream(s.addr, der.clone());
    t.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    let _ = t.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"storage\":\"ok\""), "{resp}");

    // wss: hello, join, send, ack and the message back.
    let url = format!("wss://localhost:{}/ws?user=tls", s.addr.port());
    let (mut ws, _) =
        tungstenite::client(url.as_str(), tls_stream(s.addr, der)).expect("wss handshake");
    let next = |ws: &mut tungstenite::WebSocket<_>| loop {
        if let tungstenite::Message::Text(t) = ws.read().expect("wss read") {
            return serde_json::from_str::<Value>(&t).unwrap();
        }
    };
    assert_eq!(ty(&next(&mut ws)), "hello");
    ws.send(tungstenite::Message::text(r#"{"type":"join","room":"sec"}"#)).unwrap();
    assert_eq!(ty(&next(&mut ws)), "joined");
    let text = "over tls ".repeat(400); // 3600 characters: several TLS reads, under max_text
    ws.send(tungstenite::Message::text(
        json!({"type":"send","room":"sec","text":text}).to_string(),
    ))
    .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(next(&mut ws));
    }
    let m = got.iter().find(|v| ty(v) == "message").expect("message back");
    assert_eq!(m["text"].as_str(), Some(text.as_str()));
    assert!(got.iter().any(|v| ty(v) == "ack" && v["seq"] == 1));
    // Plain HTTP on the TLS port gets no HTTP answer.
    let r = std::panic::catch_unwind(|| http_get(s.addr, "/health", &[]));
    assert!(r.is_err() || r.unwrap().0 != 200);
}

/// `chinwag backup` of `s` (running or not) into a fresh directory's
/// `copy`: the directory (removed when dropped) and the copy's path.
pub(crate) fn backed_up(s: &Server) -> (tempfile::TempDir, std::path::PathBuf) {
    let dest = tempfile::tempdir().unwrap();
    let copy = dest.path().join("copy");
    let mut cmd = support::command();
    cmd.args(["backup", copy.to_str().unwrap(), "--data-dir", s.dir.to_str().unwrap()]);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(out.code(), 0, "{out:?}");
    (dest, copy)
}

/// The texts of `room`'s latest 100 messages on a node started on `copy`.
pub(crate) fn texts_on_copy(copy: &std::path::Path, room: &str) -> Vec<String> {
    let mut o = support::Opts::new(&["--open"]);
    o.dir = Some(copy.to_path_buf());
    let restored = Server::start_with(o);
    let mut c = restored.client("a");
    let r = c.call(json!({"type": "history", "room": room, "limit": 100}));
    let items = r["messages"].as_array().unwrap_or_else(|| panic!("{r}"));
    items.iter().map(|m| m["text"].as_str().unwrap().to_string()).collect()
}

#[test]
fn backup_while_running_restores_every_message() {
    let s = Server::open(&["--rate", "1000", "--burst", "1000"]);
    let mut a = s.client("a");
    a.join("b");
    for i in 0..40 {
        a.send_msg("b", &format!("m{i}"));
    }
    let (_dest, copy) = backed_up(&s);
    // The original keeps serving; a node started on the copy has everything.
    a.send_msg("b", "after backup");
    assert_eq!(texts_on_copy(&copy, "b"), (0..40).map(|i| format!("m{i}")).collect::<Vec<_>>());
    // A second backup into the same place is refused rather than merged.
    let mut cmd = support::command();
    cmd.args(["backup", copy.to_str().unwrap(), "--data-dir", s.dir.to_str().unwrap()]);
    assert_ne!(run_bounded(cmd, Duration::from_secs(30)).code(), 0);
}

/// The systemd unit as shipped.
fn unit_file() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/chinwag.service"))
        .unwrap()
}

#[test]
fn systemd_unit_verifies() {
    let unit = unit_file();
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = unit.replace("/usr/bin/chinwag", support::bin().to_str().unwrap());
    let path = dir.path().join("chinwag.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze must be installed (tests/run.sh installs systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let relevant: Vec<&str> = stderr.lines().filter(|l| l.contains("chinwag.service")).collect();
    assert!(out.status.success() && relevant.is_empty(), "systemd-analyze verify: {stderr}");
    let sec = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&sec.stdout);
    let overall =
        report.lines().find(|l| l.contains("Overall exposure")).unwrap_or("(no exposure line)");
    println!("systemd-analyze security: {overall}");
    assert!(overall.contains("Overall exposure"), "{report}");
}

/// The system calls a `SystemCallFilter=` group stands for, nested groups
/// expanded, as `systemd-analyze syscall-filter` lists them.
fn syscall_group(group: &str) -> std::collections::BTreeSet<String> {
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", group])
        .output()
        .expect("systemd-analyze must be installed (tests/run.sh installs systemd)");
    assert!(out.status.success(), "systemd-analyze syscall-filter {group}");
    let mut calls = std::collections::BTreeSet::new();
    for item in String::from_utf8_lossy(&out.stdout).lines().skip(1).map(str::trim) {
        match item {
            "" => {}
            _ if item.starts_with('#') => {}
            _ if item.starts_with('@') => calls.extend(syscall_group(item)),
            _ => {
                calls.insert(item.to_string());
            }
        }
    }
    calls
}

#[test]
fn systemd_unit_lets_the_server_lower_its_own_threads() {
    // src/priority.rs: nice 19 and the idle I/O class for the search
    // indexer, short slices for the event loops. Refused by the unit's
    // seccomp filter, the indexer would run at full weight beside them.
    let unit = unit_file();
    // systemd's rule: the first line is an allow list; a `~` line takes
    // calls out of it, a later plain line puts them back.
    let mut allowed = std::collections::BTreeSet::new();
    for line in unit.lines().filter_map(|l| l.trim().strip_prefix("SystemCallFilter=")) {
        let (deny, items) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        for item in items.split_whitespace() {
            let calls = if item.starts_with('@') {
                syscall_group(item)
            } else {
                std::iter::once(item.to_string()).collect()
            };
            for c in calls {
                if deny {
                    allowed.remove(&c);
                } else {
                    allowed.insert(c);
                }
            }
        }
    }
    assert!(allowed.contains("write") && !allowed.contains("reboot"), "filter read wrong");
    for call in ["setpriority", "ioprio_set", "sched_setattr"] {
        assert!(allowed.contains(call), "the unit refuses {call}");
    }
}

#[test]
fn revoking_a_user_closes_their_sockets_and_refuses_older_tokens_only() {
    let s = Server::start(&[]);
    let admin = bearer("root", true, "r");
    let old = bearer("dave", false, "dave-old"); // No `iat`: counts as issued before.
    let mut live = Client::connect(s.addr, Auth::Bearer(&old), Enc::Json);
    let (st, v) = call(&s, "POST", "/api/revoke", Some(&admin), r#"{"user":"dave"}"#);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["revoked_user"], "dave");
    let before = v["before"].as_u64().expect("before");
    assert_eq!(live.expect_close(), 4001);
    assert_eq!(call(&s, "GET", "/api/rooms/r/messages", Some(&old), "").0, 401);
    let issued = |iat: u64| {
        let claims = json!({"sub": "dave", "exp": support::now_s() + 600, "iat": iat});
        support::sign(&claims, support::SECRET)
    };
    let err = Client::try_connect(s.addr, Auth::Bearer(&issued(before)), &[]).err();
    assert!(matches!(err, Some(support::ConnectError::Http(401, _))), "{err:?}");
    // A token issued after the revocation works; other users are untouched.
    Client::connect(s.addr, Auth::Bearer(&issued(before + 1)), Enc::Json);
    Client::connect(s.addr, Auth::Bearer(&bearer("erin", false, "e")), Enc::Json);
    assert_eq!(call(&s, "POST", "/api/revoke", Some(&admin), r#"{"user":"bad user"}"#).0, 400);
}

#[test]
fn http_edges_big_heads_disagreeing_lengths_safe_headers_and_plain_401s() {
    let s = Server::open(&[]);
    // A complete head over 16 KiB is refused, not only an incomplete one.
    let big = "x".repeat(70 << 10);
    assert_eq!(http_request(s.addr, "GET", "/health", &[("X-Big", &big)], "").status, 431);
    // Two Content-Length headers that disagree.
    let mut t = support::tcp(s.addr);
    let req = "POST /api/rooms/r/join HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\
               Content-Length: 3\r\nConnection: close\r\n\r\n{}";
    t.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = t.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    // Every response says nosniff and no-referrer, errors included.
    for path in ["/health", "/", "/nowhere"] {
        let r = http_request(s.addr, "GET", path, &[], "");
        assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"), "{path}");
        assert_eq!(r.header("Referrer-Policy"), Some("no-referrer"), "{path}");
    }
    // The page allows nothing from elsewhere and nothing inline; its script
    // and style come from its own origin.
    let page = http_request(s.addr, "GET", "/", &[], "");
    let csp = page.header("Content-Security-Policy").unwrap_or_default().to_string();
    for directive in ["default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!page.body.contains("<script>") && !page.body.contains("<style>"));
    let assets = [
        ("/app.js", "text/javascript"),
        ("/chinwag.js", "text/javascript"),
        ("/msgpack.js", "text/javascript"),
        ("/app.css", "text/css"),
    ];
    for (path, kind) in assets {
        let r = http_request(s.addr, "GET", path, &[], "");
        assert_eq!(r.status, 200, "{path}");
        assert!(r.header("Content-Type").is_some_and(|t| t.starts_with(kind)), "{path}");
    }
    // A 401 says what is wrong in words, never the JWT library's internals.
    let forged = support::sign(&json!({"sub": "x", "exp": support::now_s() + 60}), "other");
    let (st, v) = call(&s, "GET", "/api/rooms/r/messages", Some(&forged), "");
    assert_eq!((st, v["message"].as_str()), (401, Some("invalid token")), "{v}");
    let later = json!({"sub": "x", "exp": support::now_s() + 600, "nbf": support::now_s() + 300});
    let (st, v) = call(&s, "GET", "/api/rooms/r/messages", Some(&sign_ok(&later)), "");
    assert_eq!((st, v["message"].as_str()), (401, Some("token not valid yet")), "{v}");
}

fn sign_ok(claims: &Value) -> String {
    support::sign(claims, support::SECRET)
}

#[test]
fn a_trickled_request_and_token_names_are_handled() {
    let s = Server::open(&[]);
    // One byte at a time: answered once whole.
    let mut t = support::tcp(s.addr);
    for b in b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" {
        t.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut answer = String::new();
    let _ = t.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    // A whole head, then its body later: answered once the body is in.
    let bot = bearer("bot", false, "trickle");
    let mut t = support::tcp(s.addr);
    let head = format!(
        "POST /api/rooms/tr/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bot}\r\n\
         Content-Length: 13\r\nConnection: close\r\n\r\n{{\"text\""
    );
    assert_eq!(call(&s, "POST", "/api/rooms/tr/join", Some(&bot), "").0, 200);
    t.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    t.write_all(b":\"hi\"}").unwrap();
    let mut answer = String::new();
    let _ = t.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 201 "), "{answer}");
    // A token whose display name is not valid is refused with 401.
    for name in ["", "tab\tinside", &"n".repeat(65)] {
        let claims = json!({"sub": "x", "exp": support::now_s() + 60, "name": name});
        let (st, _) = call(&s, "GET", "/api/rooms/r/messages", Some(&sign_ok(&claims)), "");
        assert_eq!(st, 401, "name {name:?}");
    }
    let claims = json!({"sub": "x", "exp": support::now_s() + 60, "name": "Ann Example"});
    let (st, _) = call(&s, "GET", "/api/rooms/r/messages", Some(&sign_ok(&claims)), "");
    assert_eq!(st, 403, "a valid name passes auth (then not_member)");
}
