//! Integrity under faults (PROTOCOL.md section 4, "Delivery follows
//! durability"): what anyone saw live is what history holds after `kill -9`,
//! no seq ever carries two texts, and a dead commit thread is reported.

use crate::support::*;
use serde_json::{json, Value};
use std::{
    collections::HashMap,
    thread,
    time::{Duration, Instant},
};
use tungstenite::Message;

const FAST: &[&str] = &["--rate", "100000", "--burst", "100000"];

/// Every `message` frame (seq, text) a client reads until its connection
/// fails (the server was killed).
fn observe(mut c: Client) -> Vec<(u64, String)> {
    let _ = c.ws.get_mut().set_read_timeout(Some(Duration::from_secs(10)));
    let mut seen = Vec::new();
    loop {
        let frame = match c.ws.read() {
            Ok(Message::Text(t)) => t,
            Ok(_) => continue,
            Err(_) => return seen,
        };
        let v: Value = serde_json::from_str(frame.as_str()).expect("json frame");
        if ty(&v) == "message" {
            let text = v["text"].as_str().unwrap_or_default().to_string();
            seen.push((v["seq"].as_u64().expect("seq"), text));
        }
    }
}

/// The whole history of `room`, seq → text.
fn full_history(c: &mut Client, room: &str) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    let mut after = 0;
    loop {
        let r = c.call(json!({"type": "history", "room": room, "after": after, "limit": 100}));
        let msgs = r["messages"].as_array().expect("messages").clone();
        for m in &msgs {
            after = m["seq"].as_u64().unwrap();
            out.insert(after, m["text"].as_str().unwrap().to_string());
        }
        if !r["more"].as_bool().unwrap_or(false) || msgs.is_empty() {
            return out;
        }
    }
}

#[test]
fn what_anyone_saw_survives_kill_9_and_no_seq_gets_two_texts() {
    let mut s = Server::open(FAST);
    let mut seen: HashMap<u64, String> = HashMap::new();
    for cycle in 0..8 {
        if cycle > 0 {
            s.restart();
        }
        let mut observer = s.client("observer");
        let mut sender = s.client("sender");
        if cycle == 0 {
            observer.join("soak");
            sender.join("soak");
        }
        let watcher = thread::spawn(move || observe(observer));
        // Messages keep coming, unacked, until the process dies under them.
        let feeder = thread::spawn(move || {
            for i in 0.. {
                let text = format!("cycle {cycle} message {i}");
                let frame = json!({"type": "send", "room": "soak", "text": text});
                if sender.try_send_json(&frame).is_err() {
                    return;
                }
                if i % 20 == 0 {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        });
        thread::sleep(Duration::from_millis(30 + 7 * cycle as u64));
        s.kill9();
        feeder.join().expect("feeder");
        for (seq, text) in watcher.join().expect("observer") {
            if let Some(before) = seen.insert(seq, text.clone()) {
                assert_eq!(before, text, "seq {seq} was delivered with two texts");
            }
        }
    }
    s.restart();
    let mut reader = s.client("observer");
    let history = full_history(&mut reader, "soak");
    assert!(!seen.is_empty(), "the observer saw nothing: the test proves nothing");
    for (seq, text) in &seen {
        assert_eq!(history.get(seq), Some(text), "seq {seq} was seen live but history differs");
    }
    let top = history.keys().max().copied().unwrap_or(0);
    assert_eq!(history.len() as u64, top, "history has gaps: {} of {top}", history.len());
}

#[test]
fn a_dead_commit_thread_turns_health_503_and_api_writes_get_a_deadline() {
    let mut o = Opts::new(&["--open"]);
    o.env.push(("CHINWAG_TEST_FAULT".into(), "commit".into()));
    let s = Server::start_with(o);
    assert_eq!(s.health().0, 200);
    let mut alice = s.client("alice");
    // The first flush releases this join; then the thread stops.
    alice.join("r");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = s.health();
        if status == 503 {
            assert_eq!(body["storage"], "down", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "/health still {status} {body}");
        thread::sleep(Duration::from_millis(100));
    }
    // An API write now waits for a flush that never comes: it is answered
    // 503 within its deadline instead of hanging.
    let t0 = Instant::now();
    let auth = format!("Bearer {}", token("alice"));
    let r = http_request(
        s.addr,
        "POST",
        "/api/rooms/r/messages",
        &[("Authorization", &auth)],
        r#"{"text":"into the void"}"#,
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(t0.elapsed() < Duration::from_secs(15));
}
