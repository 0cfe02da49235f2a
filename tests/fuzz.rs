//! Mutated client frames against one server: every frame type of section 3,
//! each with fields dropped, retyped, oversized or added, its `type` or `id`
//! replaced, or the whole frame cut short or bit-flipped, in both encodings.
//! Whatever comes back must be a frame the protocol knows, every error one of
//! its codes with a sentence, and the connection must stay open; the server
//! must not panic, and afterwards the room's history must be gap-free and hold
//! every event that was acked, in the order a member saw them live.
//!
//! Broken WebSocket frames (reserved bits and opcodes, no mask, oversized
//! or fragmented control frames, random bytes) close only their own
//! connection.
//!
//! The same for the HTTP endpoints: requests of every route with the
//! method, path, query, headers or body mutated get a status of section 5
//! (never a 5xx) with a JSON error body, and every message a 201 took is
//! in the room's history.
//!
//! The generator is seeded, so a failure names its seed and repeats;
//! `CHINWAG_FUZZ_SEED` and `CHINWAG_FUZZ_FRAMES` run other seeds and lengths.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{json, Value};

use crate::events::all_history;
use crate::support::{token, ty, Auth, Client, Enc, Server};

/// The room the frames aim at; a second user watches it.
const ROOM: &str = "fz";
/// The codes bad input may earn (section 4); `internal`, `unavailable` and
/// `rate_limited` would each mean something went wrong here.
const CODES: [&str; 8] = [
    "bad_request",
    "invalid_room",
    "invalid_user",
    "too_long",
    "not_member",
    "forbidden",
    "not_found",
    "limit_reached",
];
const TYPES: [&str; 17] = [
    "join", "leave", "send", "dm", "edit", "delete", "react", "typing", "history", "thread",
    "search", "rooms", "read", "presence", "refresh", "ping", "hello",
];
const ROOM_EVENTS: [&str; 4] = ["message", "edit", "delete", "reaction"];
/// Every frame type the server sends after `hello` (sections 3 and 3.1).
const SERVER_TYPES: [&str; 19] = [
    "joined",
    "left",
    "ack",
    "message",
    "edit",
    "delete",
    "reaction",
    "typing",
    "history",
    "thread",
    "search_results",
    "room_list",
    "read",
    "presence",
    "presence_list",
    "token",
    "pong",
    "notification",
    "error",
];

/// xorshift64*: small, and enough to pick mutations (and garbage that
/// repeats, in `cluster`).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len())]
    }

    /// `len` random bytes.
    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next() >> 56) as u8).collect()
    }
}

/// A valid frame of a random type, aimed at `ROOM` and a seq at most `top`
/// (drawn from the seed alone, so that a seed sends the same frames
/// whatever the server answered).
fn valid(rng: &mut Rng, top: u64) -> Value {
    let s = 1 + rng.next() % top.max(1);
    match rng.below(16) {
        0 => json!({"type": "join", "room": ROOM, "since": s}),
        1 => json!({"type": "leave", "room": "fz-other"}),
        2 => json!({"type": "send", "room": ROOM, "text": "hi @watcher"}),
        3 => json!({"type": "send", "room": ROOM, "text": "re", "reply_to": s}),
        4 => json!({"type": "dm", "to": "watcher", "text": "psst"}),
        5 => json!({"type": "edit", "room": ROOM, "seq": s, "text": "edited"}),
        6 => json!({"type": "delete", "room": ROOM, "seq": s}),
        7 => json!({"type": "react", "room": ROOM, "seq": s, "emoji": "👍", "on": true}),
        8 => json!({"type": "typing", "room": ROOM, "active": true}),
        9 => json!({"type": "history", "room": ROOM, "before": s, "limit": 5}),
        10 => json!({"type": "thread", "room": ROOM, "root": s, "after": 0, "limit": 5}),
        11 => json!({"type": "search", "query": "hi", "room": ROOM, "limit": 3}),
        12 => json!({"type": "rooms", "prefix": "f", "limit": 3}),
        13 => json!({"type": "read", "room": ROOM, "seq": s}),
        14 => json!({"type": "presence", "room": ROOM}),
        _ => json!({"type": "ping"}),
    }
}

/// A value of some other shape or size than a field expects.
fn odd_value(rng: &mut Rng) -> Value {
    match rng.below(24) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(0),
        3 => json!(-1),
        4 => json!(u64::MAX),
        5 => json!(i64::MIN),
        6 => json!(1.5),
        7 => json!(1e300),
        8 => json!(""),
        9 => json!("   \t\n"),
        10 => json!("x".repeat(4001)),
        11 => json!("é".repeat(20_000)),
        12 => json!("💥"),
        13 => json!("nul\u{0}in"),
        14 => json!("a\u{202e}b"),
        15 => json!([]),
        16 => json!([1, "two", null]),
        17 => json!({}),
        18 => json!({"nested": {"deeper": [1]}}),
        19 => json!("dm:alice:watcher"),
        20 => json!("../../etc/passwd"),
        21 => json!("UPPER"),
        22 => json!("fz-other"),
        _ => json!(format!("w{}", rng.next() % 1000)),
    }
}

/// One to three mutations of `frame`.
fn mutate(rng: &mut Rng, mut frame: Value) -> Value {
    for _ in 0..=rng.below(3) {
        let Value::Object(map) = &mut frame else { return frame };
        let keys: Vec<String> = map.keys().cloned().collect();
        if keys.is_empty() {
            map.insert("type".into(), json!(rng.pick(&TYPES)));
            continue;
        }
        match rng.below(6) {
            0 => {
                let k = rng.pick(&keys).clone();
                map.remove(&k);
            }
            1 | 2 => {
                let k = rng.pick(&keys).clone();
                map.insert(k, odd_value(rng));
            }
            3 => {
                map.insert(format!("extra{}", rng.below(4)), odd_value(rng));
            }
            4 => {
                map.insert("type".into(), json!(rng.pick(&TYPES)));
            }
            _ => {
                let id = match rng.below(4) {
                    0 => json!("i".repeat(65)),
                    1 => json!(-7),
                    2 => json!({"id": 1}),
                    _ => odd_value(rng),
                };
                map.insert("id".into(), id);
            }
        }
    }
    frame
}

/// What the server made of everything sent since the last barrier: each
/// frame checked, acks of `ROOM` noted.
fn check_replies(frames: &[Value], acked: &mut Vec<u64>, what: &str) {
    for v in frames {
        let t = v.get("type").and_then(Value::as_str).unwrap_or("");
        assert!(SERVER_TYPES.contains(&t), "{what}: a frame of no known type: {v}");
        match ty(v) {
            "error" => {
                let code = v["code"].as_str().unwrap_or("");
                assert!(CODES.contains(&code), "{what}: error code {code:?}: {v}");
                let msg = v["message"].as_str().unwrap_or("");
                assert!(!msg.is_empty(), "{what}: an error without a sentence: {v}");
            }
            "ack" if v["room"] == ROOM => {
                acked.push(v["seq"].as_u64().unwrap_or_else(|| panic!("{what}: ack {v}")));
            }
            _ => {}
        }
    }
}

/// Sends `n` frames from `seed` in `enc` and checks the server's answers,
/// its log, and the room's history.
fn fuzz(enc: Enc, seed: u64, n: usize) {
    let mut s = Server::open(&["--rate", "1000000", "--burst", "1000000"]);
    let mut watch = Client::connect(s.addr, Auth::Open("watcher"), Enc::Json);
    watch.join(ROOM);
    let mut c = Client::connect(s.addr, Auth::Open("alice"), enc);
    c.join(ROOM);
    let mut rng = Rng(seed | 1);
    let mut acked: Vec<u64> = Vec::new();
    let mut live: Vec<Value> = Vec::new();
    for i in 0..n {
        let what = format!("seed {seed}, frame {i}");
        let base = valid(&mut rng, 1 + i as u64 / 8);
        // One frame in four goes as it is: valid work between the garbage.
        let mut frame =
            if rng.below(4) == 0 { base.clone() } else { mutate(&mut rng, base.clone()) };
        if frame.to_string().len() > 60_000 {
            // Over `max_frame` the server closes with 1009, by design.
            frame = base;
        }
        match rng.below(20) {
            // Cut short, or bit-flipped: garbage of the connection's encoding.
            0 => {
                let mut bytes = match enc {
                    Enc::Json => frame.to_string().into_bytes(),
                    Enc::MsgPack => rmp_serde::to_vec_named(&frame).unwrap(),
                };
                if rng.below(2) == 0 || bytes.is_empty() {
                    bytes.truncate(rng.below(bytes.len().max(1)));
                } else {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
                match enc {
                    // A text frame must stay UTF-8 (else 1007 closes it, by design).
                    Enc::Json => c.send_text(&String::from_utf8_lossy(&bytes)),
                    Enc::MsgPack => c.send_binary(bytes),
                }
            }
            // A value that is not an object.
            1 => c.send_json(odd_value(&mut rng)),
            _ => c.send_json(frame),
        }
        let got = c.ping_barrier();
        check_replies(&got, &mut acked, &what);
        if i % 50 == 49 {
            // Back in the room if a mutation left it; the watcher keeps up.
            c.join(ROOM);
            live.extend(watch.ping_barrier());
        }
        if let Some(st) = s.has_exited() {
            panic!("{what}: the server exited ({st}); log:\n{}", s.log_text());
        }
    }
    // A last message: its ack follows every earlier write's (one queue, in
    // order), so the acks that came after a barrier are all in by then, and
    // the watcher has everything once it has this one.
    c.join(ROOM);
    let end = c.send_msg(ROOM, "the end");
    let late = c.clear_stash();
    check_replies(&late, &mut acked, &format!("seed {seed}, late replies"));
    let end = end["seq"].as_u64().unwrap();
    acked.push(end);
    live.extend(watch.collect_until(|v| v["room"] == ROOM && v["seq"] == end));
    let log = s.log_text();
    assert!(!log.contains("panicked"), "seed {seed}: the server panicked:\n{log}");
    s.assert_healthy(true);

    // Nothing acked is lost, nothing is out of order, nothing is doubled.
    let history: Vec<u64> =
        all_history(&mut watch, ROOM).iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let last = history.last().copied().unwrap_or(0);
    assert_eq!(history, (1..=last).collect::<Vec<_>>(), "seed {seed}: history is gap-free");
    for a in &acked {
        assert!(history.contains(a), "seed {seed}: acked seq {a} is not in history");
    }
    let seen: Vec<u64> = live
        .iter()
        .filter(|v| ROOM_EVENTS.contains(&ty(v)) && v["room"] == ROOM)
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seen, history, "seed {seed}: the watcher saw every event once, in order");
    // The valid quarter got through (a seed that left the room early acks fewer).
    assert!(acked.len() >= 20, "seed {seed}: only {} of {n} frames were acked", acked.len());
}

fn seed_or(default: u64) -> u64 {
    std::env::var("CHINWAG_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn frames() -> usize {
    std::env::var("CHINWAG_FUZZ_FRAMES").ok().and_then(|s| s.parse().ok()).unwrap_or(1500)
}

#[test]
fn mutated_json_frames_get_protocol_answers_and_lose_nothing() {
    fuzz(Enc::Json, seed_or(0x6a73_6f6e), frames());
}

#[test]
fn mutated_msgpack_frames_get_protocol_answers_and_lose_nothing() {
    fuzz(Enc::MsgPack, seed_or(0x6d73_6770), frames());
}

/// One request of a route, valid, as (method, path, body).
fn valid_request(rng: &mut Rng, top: u64) -> (&'static str, String, String) {
    let s = 1 + rng.next() % top.max(1);
    match rng.below(11) {
        0 => ("GET", "/health".into(), String::new()),
        1 => ("GET", "/metrics".into(), String::new()),
        2 => ("GET", "/api/rooms?prefix=f&limit=5".into(), String::new()),
        3 => ("GET", format!("/api/rooms/{ROOM}/messages?before={s}&limit=5"), String::new()),
        4 => ("POST", format!("/api/rooms/{ROOM}/join"), String::new()),
        5 | 6 => ("POST", format!("/api/rooms/{ROOM}/messages"), r#"{"text":"via http"}"#.into()),
        7 => ("PATCH", format!("/api/rooms/{ROOM}/messages/{s}"), r#"{"text":"edited"}"#.into()),
        8 => ("DELETE", format!("/api/rooms/{ROOM}/messages/{s}"), String::new()),
        9 => ("GET", "/api/search?q=via&limit=3".into(), String::new()),
        _ => ("POST", "/api/notify".into(), r#"{"user":"bob","kind":"k","text":"t"}"#.into()),
    }
}

/// A path, query or header value of another shape than the route expects.
fn odd_text(rng: &mut Rng) -> String {
    match rng.below(14) {
        0 => String::new(),
        1 => "%ZZ".into(),
        2 => "%00".into(),
        3 => "a".repeat(300),
        4 => "-1".into(),
        5 => "99999999999999999999999".into(),
        6 => "..".into(),
        7 => "é".into(),
        8 => "dm:alice:bob".into(),
        9 => "x y".into(),
        10 => "?limit=0".into(),
        11 => "&limit=abc&after=1&before=2".into(),
        12 => "Bearer".into(),
        _ => format!("{}", rng.next()),
    }
}

/// The request, mutated, as bytes; `Connection: close`, so that the
/// server's answer ends with the connection.
fn http_mutated(rng: &mut Rng, top: u64, bearer: &str) -> Vec<u8> {
    let (mut method, mut path, mut body) = valid_request(rng, top);
    let mut auth = format!("Bearer {bearer}");
    let mut extra = String::new();
    let mut length = None;
    let valid = rng.below(4) == 0;
    for _ in 0..=rng.below(3) {
        if valid {
            break;
        }
        match rng.below(8) {
            0 => method = *rng.pick(&["PUT", "HEAD", "OPTIONS", "get", "BREW", "POST", "GET"]),
            1 => {
                // One segment of the path replaced.
                let mut segs: Vec<String> = path.split('/').map(String::from).collect();
                let at = 1 + rng.below(segs.len().max(2) - 1);
                if at < segs.len() {
                    segs[at] = odd_text(rng);
                }
                path = segs.join("/");
            }
            2 => path.push_str(&odd_text(rng)),
            3 => auth = odd_text(rng),
            4 => body = odd_value(rng).to_string(),
            5 => body = body.chars().take(rng.below(body.len().max(1))).collect(),
            6 => {
                extra = match rng.below(4) {
                    0 => "Content-Length: 3\r\nContent-Length: 4\r\n".into(),
                    1 => "Content-Length: 70000\r\n".into(),
                    2 => format!("X-Big: {}\r\n", "h".repeat(20_000)),
                    _ => "no colon here\r\n".into(),
                };
                length = Some(());
            }
            _ => body = format!(r#"{{"text":{}}}"#, odd_value(rng)),
        }
    }
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n");
    if !auth.is_empty() {
        req.push_str(&format!("Authorization: {auth}\r\n"));
    }
    req.push_str(&extra);
    if length.is_none() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if !extra.starts_with("Content-Length: 70000") {
        bytes.extend_from_slice(body.as_bytes());
    }
    bytes
}

/// Status and body of the server's answer to `req`.
fn http_raw(s: &Server, req: &[u8], what: &str) -> (u16, String) {
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(req).unwrap_or_else(|e| panic!("{what}: write: {e}"));
    let mut out = Vec::new();
    if let Err(e) = c.read_to_end(&mut out) {
        // A reset after the answer (a body the server would not read) is fine.
        assert!(!out.is_empty(), "{what}: no answer ({e})");
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{what}: not an HTTP answer: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn fuzz_http(seed: u64, n: usize) {
    let mut s = Server::start(&["--rate", "1000000", "--burst", "1000000"]);
    let bearer = token("alice");
    let mut rng = Rng(seed | 1);
    let mut taken: Vec<u64> = Vec::new();
    for i in 0..n {
        let what = format!("seed {seed}, request {i}");
        let req = http_mutated(&mut rng, 1 + i as u64 / 8, &bearer);
        let (status, body) = http_raw(&s, &req, &what);
        let shown = String::from_utf8_lossy(&req[..req.len().min(300)]).into_owned();
        assert!(
            [200, 201, 202, 400, 401, 403, 404, 405, 413, 429, 431].contains(&status),
            "{what}: status {status} for {shown:?}: {body}"
        );
        if status >= 400 {
            let v: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{what}: {status} body is not JSON ({e}): {body:?}"));
            assert!(v["error"].is_string() && v["message"].is_string(), "{what}: {status} {v}");
        } else if status == 201 {
            let v: Value = serde_json::from_str(&body).unwrap();
            taken.push(v["seq"].as_u64().unwrap_or_else(|| panic!("{what}: 201 {v}")));
        }
        if let Some(st) = s.has_exited() {
            panic!("{what}: the server exited ({st}); log:\n{}", s.log_text());
        }
    }
    let log = s.log_text();
    assert!(!log.contains("panicked"), "seed {seed}: the server panicked:\n{log}");
    s.assert_healthy(false);
    let mut alice = Client::connect(s.addr, Auth::Bearer(&bearer), Enc::Json);
    let history: Vec<u64> =
        all_history(&mut alice, ROOM).iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    for t in &taken {
        assert!(history.contains(t), "seed {seed}: seq {t} took a 201 and is not in history");
    }
    assert!(taken.len() >= 10, "seed {seed}: only {} of {n} posts were taken", taken.len());
}

#[test]
fn mutated_http_requests_get_protocol_answers_and_lose_nothing() {
    fuzz_http(seed_or(0x6874_7470), frames() / 3);
}

/// One masked client frame: `first` is FIN, RSV and opcode; `masked`
/// false leaves the mask bit out (which a client must not).
fn ws_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut f = vec![first, if masked { 0x80 } else { 0 } | payload.len() as u8];
    if masked {
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

#[test]
fn broken_websocket_frames_close_only_their_own_connection() {
    let s = Server::open(&["--rate", "1000000", "--burst", "1000000"]);
    let mut watch = Client::connect(s.addr, Auth::Open("watcher"), Enc::Json);
    watch.join(ROOM);
    let ping = br#"{"type":"ping"}"#;
    // Complete frames that break RFC 6455: each must close its connection.
    let broken: Vec<(&str, Vec<u8>)> = vec![
        ("a reserved bit", ws_frame(0x80 | 0x40 | 0x1, ping, true)),
        ("not masked", ws_frame(0x81, ping, false)),
        ("a reserved opcode", ws_frame(0x83, ping, true)),
        ("a continuation with nothing to continue", ws_frame(0x80, ping, true)),
        ("a ping over 125 bytes", {
            let mut f = vec![0x89, 0x80 | 126, 0, 200];
            f.extend_from_slice(&[0x37, 0xfa, 0x21, 0x3d]);
            f.extend(std::iter::repeat_n(0u8, 200));
            f
        }),
        ("a fragmented ping", ws_frame(0x09, b"x", true)),
    ];
    for (what, bytes) in &broken {
        let mut t = crate::support::tcp(s.addr);
        crate::support::raw_upgrade(&mut t, s.addr, "/ws?user=broken");
        t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        t.write_all(bytes).unwrap();
        let mut rest = Vec::new();
        match t.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{what}: the connection was not closed ({e})"),
        }
    }
    // Random bytes after the upgrade, then gone: the server must shrug.
    let mut rng = Rng(seed_or(0x7773));
    for i in 0..200 {
        let mut t = crate::support::tcp(s.addr);
        crate::support::raw_upgrade(&mut t, s.addr, &format!("/ws?user=g{i}"));
        let n = 1 + rng.below(300);
        let _ = t.write_all(&rng.bytes(n));
    }
    let log = s.log_text();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    let p = watch.call(json!({"type": "ping"}));
    assert_eq!(ty(&p), "pong", "the watcher's connection was hurt: {p}");
    s.assert_healthy(true);
}
