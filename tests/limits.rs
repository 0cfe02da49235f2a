//! Per-connection limits and the close codes they lead to (section 4): the token-bucket rate
//! limit (`rate_limited` with `retry_after_ms`, then 1008 for abuse), 1007 for invalid UTF-8 in
//! a text frame, 1009 for a frame over `max_frame`, and 1013 for a slow consumer while the other
//! members of the room keep receiving everything. The server must stay healthy after each.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use socket2::{Domain, Protocol, Socket, Type};

use crate::support::*;

#[test]
fn frames_over_the_rate_get_rate_limited_with_retry_after() {
    let s = Server::open(&["--rate", "1", "--burst", "5"]);
    let mut c = s.client("alice");
    assert_eq!(c.hello["limits"]["rate"], 1);
    assert_eq!(c.hello["limits"]["burst"], 5);
    for i in 0..8 {
        c.send_json(json!({"type": "ping", "id": i}));
    }
    let replies: Vec<Value> = (0..8).map(|_| c.recv()).collect();
    let mut pongs = 0;
    let mut max_retry = 0;
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r["id"], i, "replies in order, ids echoed: {replies:?}");
        match ty(r) {
            "pong" => pongs += 1,
            "error" => {
                assert_eq!(r["code"], "rate_limited", "{r}");
                let ms = r["retry_after_ms"].as_u64().expect("retry_after_ms integer");
                assert!(ms > 0 && ms <= 10_000, "retry_after_ms {ms} for rate 1/s");
                max_retry = max_retry.max(ms);
            }
            _ => panic!("unexpected reply {r}"),
        }
    }
    // The bucket starts full at `burst`; at most one token can refill meanwhile.
    assert!(replies[..5].iter().all(|r| ty(r) == "pong"), "first 5 served: {replies:?}");
    assert!((5..=6).contains(&pongs), "{pongs} of 8 frames accepted with burst 5: {replies:?}");
    // Fewer than `burst` refusals: the connection stays open and recovers after the wait.
    thread::sleep(Duration::from_millis(max_retry + 200));
    let p = c.call(json!({"type": "ping", "id": "later"}));
    assert_eq!(ty(&p), "pong", "{p}");
    // Refused frames are not acted on: a refused send is not stored. (A new connection has its
    // own full bucket; 8 sends after a join see at most 4 refusals, fewer than `burst`.)
    let mut c2 = s.client("alice");
    c2.join("r");
    for i in 0..8 {
        c2.send_json(json!({"type": "send", "room": "r", "text": format!("t{i}"), "id": i}));
    }
    let (mut acked, mut limited, mut wait) = (0, 0, 0);
    while acked + limited < 8 {
        let v = c2.recv();
        match ty(&v) {
            "ack" => acked += 1,
            "error" => {
                assert_eq!(v["code"], "rate_limited", "{v}");
                wait = wait.max(v["retry_after_ms"].as_u64().unwrap_or(1000));
                limited += 1
            }
            _ => {}
        }
    }
    assert!(limited >= 2, "8 sends after a join with burst 5: {limited} refused");
    thread::sleep(Duration::from_millis(wait + 200));
    let h = c2.call(json!({"type": "history", "room": "r", "limit": 100}));
    let stored = h["messages"].as_array().unwrap_or_else(|| panic!("history: {h}")).len();
    assert_eq!(stored, acked, "only acked sends are stored: {h}");
}

#[test]
fn websocket_pings_do_not_count_against_the_rate() {
    let s = Server::open(&["--rate", "1", "--burst", "3"]);
    let mut c = s.client("alice");
    for i in 0..30u8 {
        c.ws.send(tungstenite::Message::Ping(vec![i].into())).expect("ws ping");
    }
    for i in 0..3 {
        let p = c.call(json!({"type": "ping", "id": i}));
        assert_eq!(ty(&p), "pong", "WebSocket pings must not use up the bucket: {p}");
    }
}

#[test]
fn expired_token_closes_a_live_connection_with_4001() {
    let s = Server::start(&[]);
    let exp = now_s() + 3;
    let t = sign(&json!({"sub": "alice", "exp": exp}), SECRET);
    let mut c = Client::connect(s.addr, Auth::Bearer(&t), Enc::Json);
    // The token expires 3 s from now; the close is due within 5 s after that.
    c.ws.get_mut().set_read_timeout(Some(Duration::from_secs(25))).unwrap();
    let (_, end) = c.read_until_close();
    assert_eq!(end, End::Close(4001));
    // Well past `exp` (not at the boundary second), the upgrade is refused.
    while now_s() <= exp + 1 {
        thread::sleep(Duration::from_millis(100));
    }
    match Client::try_connect(s.addr, Auth::Bearer(&t), &[]) {
        Err(ConnectError::Http(401, _)) => {}
        other => panic!("an expired token must be refused: {other:?}"),
    }
}

#[test]
fn a_connection_that_never_upgrades_is_dropped() {
    let s = Server::open(&[]);
    let mut idle = tcp(s.addr);
    idle.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut half = tcp(s.addr);
    half.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    half.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    for (what, sock) in [("silent", &mut idle), ("half a request", &mut half)] {
        let mut buf = [0u8; 1024];
        let r = loop {
            match sock.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(_) => {} // an error response is fine too
                Err(e) => break Err(e),
            }
        };
        assert!(
            r.is_ok() || r.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{what}: the server must drop the connection (10 s deadline), got {r:?}"
        );
    }
    s.assert_healthy(true);
}

#[test]
fn rate_limit_abuse_closes_with_1008() {
    let s = Server::open(&["--rate", "1", "--burst", "3"]);
    let mut c = s.client("alice");
    for i in 0..10 {
        // The server may close before it has read everything; later writes may fail.
        if c.try_send_json(&json!({"type": "ping", "id": i})).is_err() {
            break;
        }
    }
    let (frames, code) = c.read_until_close();
    let pongs = frames.iter().filter(|v| ty(v) == "pong").count();
    let limited: Vec<&Value> =
        frames.iter().filter(|v| ty(v) == "error" && v["code"] == "rate_limited").collect();
    assert_eq!(code, End::Close(1008), "abuse must close with 1008; frames: {frames:?}");
    assert!(pongs >= 3, "the first `burst` frames are served: {frames:?}");
    assert!((1..=3).contains(&limited.len()), "rate_limited before the close: {frames:?}");
    s.assert_healthy(true);
    // Other connections of the same user are not affected.
    let mut d = s.client("alice");
    assert_eq!(ty(&d.call(json!({"type": "ping"}))), "pong");
}

#[test]
fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let s = Server::open(&[]);
    let mut bystander = s.client("bob");
    bystander.join("r");
    let mut c = s.client("alice");
    c.join("r");
    c.send_raw_text_bytes(b"{\"type\":\"send\",\"room\":\"r\",\"text\":\"\xff\xfe\"}".to_vec());
    assert_eq!(c.expect_close(), 1007);
    let mut c = s.client("alice");
    c.send_raw_text_bytes(vec![0xc3, 0x28]);
    assert_eq!(c.expect_close(), 1007);
    // Nothing was stored or relayed, and the server is fine.
    let h = bystander.call(json!({"type": "history", "room": "r"}));
    assert_eq!(h["messages"], json!([]), "{h}");
    s.assert_healthy(true);
}

#[test]
fn frames_over_max_frame_close_with_1009() {
    let s = Server::open(&["--max-frame", "4096"]);
    let mut c = s.client("alice");
    assert_eq!(c.hello["limits"]["max_frame"], 4096);
    c.join("r");
    // Under the limit: fine.
    let ack = c.send_msg("r", &"a".repeat(3000));
    assert_eq!(ack["seq"], 1);
    let big = json!({"type": "send", "room": "r", "text": "b".repeat(5000)}).to_string();
    c.send_text(&big);
    assert_eq!(c.expect_close(), 1009);
    let mut m = Client::connect(s.addr, Auth::Open("mp"), Enc::MsgPack);
    m.send_binary(vec![0xc0; 5000]);
    assert_eq!(m.expect_close(), 1009);
    let mut bob = s.client("bob");
    bob.join("r");
    let h = bob.call(json!({"type": "history", "room": "r"}));
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(1), "oversized frame not stored: {h}");
    s.assert_healthy(true);
}

#[test]
fn slow_consumer_is_closed_with_1013_and_others_keep_up() {
    const N: u64 = 400;
    const LEN: usize = 40_000;
    let s = Server::open(&[
        "--max-output",
        "262144",
        "--max-text",
        "50000",
        "--rate",
        "100000",
        "--burst",
        "100000",
    ]);
    // A consumer with a tiny receive buffer that does not read until the end. It speaks raw
    // WebSocket so that the test sees exactly the bytes the server sent.
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let mut slow: TcpStream = sock.into();
    slow.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    slow.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    raw_upgrade(&mut slow, s.addr, "/ws?user=slow");
    raw_send_text(&mut slow, r#"{"type":"join","room":"big","id":"j"}"#);
    // The server must have processed the join before anything is sent to the room.
    let mut probe = s.client("probe");
    let j = probe.join("big");
    assert!(sorted_strs(&j["members"]).contains(&"slow".to_string()), "{j}");
    drop(probe);
    let mut sender = s.client("sender");
    sender.join("big");
    let mut watcher = Client::connect(s.addr, Auth::Open("watcher"), Enc::MsgPack);
    watcher.join("big");

    let watch = thread::spawn(move || {
        let mut next = 1u64;
        while next <= N {
            let v = watcher.recv();
            if ty(&v) != "message" {
                continue;
            }
            assert_eq!(v["seq"], next, "watcher must see every message in order");
            assert_eq!(v["text"].as_str().map(str::len), Some(LEN));
            next += 1;
        }
        next - 1
    });
    // The slow client starts reading once the server no longer counts it as a live connection
    // (or once everything is sent), so that a close frame sent on a best-effort basis can be
    // read before the server gives up on the socket.
    let done = Arc::new(AtomicBool::new(false));
    let (addr, done2) = (s.addr, done.clone());
    let slow_reader = thread::spawn(move || {
        loop {
            let (_, body) = http_get(addr, "/health", &[]);
            let h: Value = serde_json::from_str(&body).expect("health JSON");
            if h["connections"].as_u64().is_some_and(|n| n < 3) || done2.load(Ordering::SeqCst) {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let mut bytes = Vec::new();
        let r = slow.read_to_end(&mut bytes);
        (bytes, r.map(|_| ()).map_err(|e| e.to_string()))
    });
    for i in 0..N {
        let mut text = format!("{i:06}");
        text.push_str(&"x".repeat(LEN - text.len()));
        let ack = sender.call(json!({"type": "send", "room": "big", "text": text}));
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack["seq"], i + 1);
        sender.clear_stash();
    }
    done.store(true, Ordering::SeqCst);
    assert_eq!(watch.join().expect("watcher thread"), N);

    let (bytes, read) = slow_reader.join().expect("slow reader thread");
    let raw = parse_frames(&bytes);
    let texts: Vec<Value> = raw
        .frames
        .iter()
        .filter(|(op, _)| *op == 1)
        .map(|(_, p)| serde_json::from_slice(p).expect("text frame is JSON"))
        .collect();
    let got: Vec<u64> =
        texts.iter().filter(|v| ty(v) == "message").map(|v| v["seq"].as_u64().unwrap()).collect();
    assert!((got.len() as u64) < N, "the slow consumer cannot have received everything");
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>(), "what it got is in order");
    let tail = |b: &[u8]| b[b.len().saturating_sub(16)..].to_vec();
    assert!(
        raw.truncated.is_none(),
        "the stream ended inside a frame after {} messages: header {:02x?}, {} of {} payload \
         bytes present, last bytes {:02x?} (read: {read:?})",
        got.len(),
        raw.truncated.as_ref().unwrap().0,
        raw.truncated.as_ref().unwrap().1,
        raw.truncated.as_ref().unwrap().2,
        tail(&bytes),
    );
    let last = raw.frames.last().expect("some frames");
    assert_eq!(last.0, 8, "the last frame must be a close frame (read: {read:?})");
    let code = u16::from_be_bytes([last.1[0], last.1[1]]);
    assert_eq!(code, 1013, "slow consumer close code (after {} messages)", got.len());
    // The sender, whose output kept draining, is still connected.
    let p = sender.call(json!({"type": "ping"}));
    assert_eq!(ty(&p), "pong");
    s.assert_healthy(true);
}

#[test]
fn the_burst_th_refusal_gets_its_error_right_before_the_1008_close() {
    let s = Server::open(&["--rate", "1", "--burst", "3"]);
    let mut c = s.client("alice");
    for i in 0..6 {
        c.send_json(json!({"type": "ping", "id": i}));
    }
    let (frames, code) = c.read_until_close();
    assert_eq!(code, End::Close(1008), "{frames:?}");
    let limited: Vec<&Value> = frames.iter().filter(|v| v["code"] == "rate_limited").collect();
    let ids: Vec<&Value> = limited.iter().map(|v| &v["id"]).collect();
    assert_eq!(ids, [&json!(3), &json!(4), &json!(5)], "one error per refused frame: {frames:?}");
    assert!(limited.iter().all(|v| v["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0)));
    assert_eq!(frames.iter().filter(|v| ty(v) == "pong").count(), 3);
}

/// The server's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_ping_flood_from_a_client_that_never_reads_is_a_slow_consumer() {
    let s = Server::open(&["--max-output", "262144"]);
    let mut sender = s.client("sender");
    sender.join("room");
    let mut member = s.client("member");
    member.join("room");
    let before = rss_kib(s.pid());
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let mut flood: TcpStream = sock.into();
    flood.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    flood.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    raw_upgrade(&mut flood, s.addr, "/ws?user=flood");
    // 240,000 masked pings of 125 bytes (30 MB of pongs owed), never reading.
    let mut ping = vec![0x89u8, 0x80 | 125, 1, 2, 3, 4];
    ping.extend((0..125u8).map(|i| i ^ [1, 2, 3, 4][i as usize % 4]));
    let batch: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 1000).collect();
    for _ in 0..240 {
        if flood.write_all(&batch).is_err() {
            break; // Cut: the server stopped reading us.
        }
    }
    // Everyone else is unaffected.
    sender.send_msg("room", "still here");
    assert_eq!(member.recv_type("message")["text"], "still here");
    let after = rss_kib(s.pid());
    assert!(after < before + 16 * 1024, "server RSS grew from {before} to {after} KiB");
    // The flooder ends with a 1013 close or a cut connection.
    let mut bytes = Vec::new();
    let _ = flood.read_to_end(&mut bytes);
    let frames = parse_frames(&bytes);
    let closes: Vec<&Vec<u8>> = frames.frames.iter().filter(|f| f.0 == 8).map(|f| &f.1).collect();
    if let Some(close) = closes.first() {
        assert_eq!(&close[..2], &1013u16.to_be_bytes(), "close frame {close:?}");
    }
    s.assert_healthy(true);
}

#[test]
fn a_config_file_error_names_the_line_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "rate = 5\nthreads = \"lots\"\n").unwrap();
    let mut cmd = command();
    cmd.args(["serve", "--config", f.to_str().unwrap()]).env("CHINWAG_SECRET", SECRET);
    let out = run_bounded(cmd, Duration::from_secs(15));
    assert_eq!(out.code(), 2, "{}", out.stderr);
    let line = out.stderr.trim();
    assert!(line.contains("threads") && line.contains("line 2"), "{line}");
    assert!(line.contains("invalid type"), "{line}");
}

fn refused_429(s: &Server, user: &str) -> String {
    match Client::try_connect(s.addr, Auth::Open(user), &[]) {
        Err(ConnectError::Http(429, body)) => {
            assert!(body.contains("too_many_connections"), "{body}");
            body
        }
        Err(e) => panic!("{user}: expected 429, got {e:?}"),
        Ok(_) => panic!("{user}: expected 429, got a WebSocket"),
    }
}

/// Connects `user` once the server has noticed a closed connection (bounded).
fn connect_when_freed(s: &Server, user: &str) -> Client {
    let start = std::time::Instant::now();
    loop {
        if let Ok(c) = Client::try_connect(s.addr, Auth::Open(user), &[]) {
            return c;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the slot was never freed");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn connection_caps_per_user_and_per_address_answer_429_before_the_upgrade() {
    let s = Server::open(&["--max-conns-per-ip", "3", "--max-conns-per-user", "2"]);
    let ann1 = s.client("ann");
    let mut ann2 = s.client("ann");
    refused_429(&s, "ann");
    let _bob = s.client("bob"); // Another user: fine, and the address's third.
    refused_429(&s, "carl"); // The address's fourth.
                             // Those admitted are unaffected; closing one frees its slots.
    assert_eq!(ty(&ann2.call(json!({"type": "ping"}))), "pong");
    drop(ann1);
    connect_when_freed(&s, "carl");
    let (_, metrics) = http_get(s.addr, "/metrics", &[]);
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("chinwag_refusals_total{reason=\"too_many_connections\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert!(refused.is_some_and(|n| n >= 2), "{metrics}");
}

#[test]
fn max_connections_caps_the_node() {
    let s = Server::open(&["--max-connections", "2"]);
    let first = s.client("a");
    let _second = s.client("b");
    refused_429(&s, "c");
    drop(first);
    connect_when_freed(&s, "c");
}

#[test]
fn max_rooms_per_user_answers_limit_reached_for_joins_and_new_dms() {
    let s = Server::open(&["--max-rooms-per-user", "2"]);
    let mut c = s.client("ann");
    c.join("a");
    c.join("b");
    let r = c.call_err(json!({"type": "join", "room": "c"}), "limit_reached");
    assert!(r["message"].as_str().is_some_and(|m| m.contains('2')), "{r}");
    c.join("a"); // Already a member: no new room.
    c.call_err(json!({"type": "dm", "to": "bob", "text": "hi"}), "limit_reached");
    assert_eq!(ty(&c.call(json!({"type": "leave", "room": "b"}))), "left");
    c.join("c");
    // Others are unaffected.
    let mut bob = s.client("bob");
    bob.join("c");
}

#[test]
fn no_reply_is_over_max_output_joined_and_history_page_instead() {
    let s = Server::open(&["--max-output", "65536", "--rate", "100000", "--burst", "100000"]);
    let mut a = s.client("ann");
    a.join("big");
    let text = "y".repeat(3900);
    for i in 0..60 {
        a.send_msg("big", &format!("{i} {text}"));
    }
    let mut b = s.client("bob");
    let j = b.call(json!({"type": "join", "room": "big", "since": 0}));
    let got = j["history"].as_array().expect("history").len();
    assert!(got > 0 && got < 60 && j["more"] == true, "joined: {got} messages, more {}", j["more"]);
    assert!(j.to_string().len() <= 65536, "joined is {} bytes", j.to_string().len());
    // The client pages for the rest, and is not closed as a slow consumer.
    let mut seen = got;
    let mut after = j["history"][got - 1]["seq"].as_u64().unwrap();
    while seen < 60 {
        let h = b.call(json!({"type": "history", "room": "big", "after": after, "limit": 100}));
        let page = h["messages"].as_array().expect("messages");
        assert!(!page.is_empty() && h.to_string().len() <= 65536, "{}", h.to_string().len());
        after = page.last().unwrap()["seq"].as_u64().unwrap();
        seen += page.len();
    }
    assert_eq!((seen, after), (60, 60));
    let latest = b.call(json!({"type": "history", "room": "big", "limit": 100}));
    let page = latest["messages"].as_array().unwrap();
    assert_eq!(
        (page.last().unwrap()["seq"].as_u64(), latest["more"].as_bool()),
        (Some(60), Some(true))
    );
}

/// An upgrade as `user` through a proxy that names `client`: its status, and
/// the socket (kept open to hold the connection).
fn upgrade_forwarded(s: &Server, user: &str, client: &str) -> (u16, TcpStream) {
    use std::io::{BufRead, BufReader};
    let mut t = tcp(s.addr);
    let req = format!(
        "GET /ws?user={user} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         X-Forwarded-For: 192.0.2.9, {client}\r\n\r\n",
        s.addr
    );
    t.write_all(req.as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(t.try_clone().unwrap()).read_line(&mut line).unwrap();
    (line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), t)
}

#[test]
fn behind_a_trusted_proxy_the_forwarded_address_is_the_client() {
    let s = Server::open(&["--trusted-proxies", "127.0.0.1", "--max-conns-per-ip", "1"]);
    let (first, _a) = upgrade_forwarded(&s, "a", "10.0.0.1");
    let (other, _b) = upgrade_forwarded(&s, "b", "10.0.0.2");
    let (again, _c) = upgrade_forwarded(&s, "c", "10.0.0.1");
    assert_eq!((first, other, again), (101, 101, 429));
    // Without the setting, the header is not trusted: the proxy is the client.
    let plain = Server::open(&["--max-conns-per-ip", "1"]);
    let (first, _d) = upgrade_forwarded(&plain, "d", "10.0.0.1");
    let (second, _e) = upgrade_forwarded(&plain, "e", "10.0.0.2");
    assert_eq!((first, second), (101, 429));
}
