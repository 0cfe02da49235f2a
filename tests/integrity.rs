//! Integrity under faults (PROTOCOL.md section 4, "Delivery follows
//! durability"): what anyone saw live is what history holds after `kill -9`,
//! no seq ever carries two texts, a dead commit thread is reported, and
//! behind a slow disk the commit thread takes the flushes over.

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
/// fails (the server was killed) or a message with text `last` arrives.
fn observe_until(mut c: Client, last: Option<&str>) -> Vec<(u64, String)> {
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
            let done = last == Some(text.as_str());
            seen.push((v["seq"].as_u64().expect("seq"), text));
            if done {
                return seen;
            }
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
        let watcher = thread::spawn(move || observe_until(observer, None));
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

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
/// `None` (the test skips) when we may not mount.
pub(crate) struct Tmpfs {
    pub(crate) dir: tempfile::TempDir,
}

impl Tmpfs {
    pub(crate) fn mount(size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("chinwag-tmpfs-").tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: cannot mount a tmpfs here");
            return None;
        }
        Some(Tmpfs { dir })
    }

    pub(crate) fn resize(&self, size: &str) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .expect("mount");
        assert!(st.success(), "remount failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Waits (bounded) until `/health` answers `want`.
fn health_becomes(s: &Server, want: u16, limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let (status, body) = s.health();
        if status == want {
            return body;
        }
        assert!(start.elapsed() < limit, "/health still {status} after {limit:?}: {body}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn server_on(dir: std::path::PathBuf, min_free: &str) -> Server {
    let mut o = Opts::new(&["--open", "--min-free", min_free]);
    o.args.extend(FAST.iter().map(|s| s.to_string()));
    o.dir = Some(dir);
    Server::start_with(o)
}

#[test]
fn a_full_disk_refuses_writes_delivers_nothing_and_heals_without_restart() {
    let Some(fs) = Tmpfs::mount("24m") else { return };
    let s = server_on(fs.dir.path().join("data"), "0");
    let mut alice = s.client("alice");
    alice.join("full");
    let mut bob = s.client("bob");
    bob.join("full");
    let watcher = thread::spawn(move || observe_until(bob, Some("healed")));
    let big = "x".repeat(3900);
    let mut acked: HashMap<u64, String> = HashMap::new();
    let mut refused = 0;
    for i in 0..20_000 {
        let text = format!("{i} {big}");
        let r = alice.call(json!({"type": "send", "room": "full", "text": text}));
        if ty(&r) == "ack" {
            assert_eq!(refused, 0, "an ack after a refusal while the disk is still full: {r}");
            acked.insert(r["seq"].as_u64().unwrap(), text);
            continue;
        }
        assert_eq!(r["code"], "unavailable", "{r}");
        refused += 1;
        if refused == 5 {
            break;
        }
    }
    assert_eq!(refused, 5, "the disk never filled");
    let h = health_becomes(&s, 503, Duration::from_secs(10));
    assert_eq!(h["storage"], "down", "{h}");
    // More room: the node takes writes again by itself.
    fs.resize("256m");
    let ack = send_until_acked(&mut alice, "full", "healed", Duration::from_secs(15));
    let top = acked.keys().max().copied().unwrap_or(0);
    assert_eq!(ack["seq"].as_u64(), Some(top + 1), "seqs continue without a gap: {ack}");
    health_becomes(&s, 200, Duration::from_secs(10));
    // What bob got is exactly what was acked: nothing refused reached him.
    let got = watcher.join().expect("bob");
    assert_eq!(got.len(), acked.len() + 1, "bob got a refused message, or missed one");
    for (seq, text) in &got[..acked.len()] {
        assert_eq!(acked.get(seq), Some(text), "seq {seq}");
    }
    let history = full_history(&mut alice, "full");
    for (seq, text) in &acked {
        assert_eq!(history.get(seq), Some(text), "acked seq {seq} lost");
    }
    assert_eq!(history.len(), acked.len() + 1, "refused messages must not be in history");
}

#[test]
fn the_min_free_guard_refuses_writes_and_lifts_when_space_returns() {
    let Some(fs) = Tmpfs::mount("64m") else { return };
    let s = server_on(fs.dir.path().join("data"), &(24u64 << 20).to_string());
    let mut alice = s.client("alice");
    alice.join("guard");
    alice.send_msg("guard", "before");
    let filler = fs.dir.path().join("filler");
    std::fs::write(&filler, vec![7u8; 48 << 20]).expect("filler");
    // Noticed within 5 s (bounded here with margin): writes refused.
    let start = Instant::now();
    loop {
        let r = alice.call(json!({"type": "send", "room": "guard", "text": "during"}));
        if ty(&r) == "error" {
            assert_eq!(r["code"], "unavailable", "{r}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the guard never tripped");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(health_becomes(&s, 503, Duration::from_secs(10))["storage"], "down");
    // Reads keep working.
    let r = alice.call(json!({"type": "history", "room": "guard"}));
    assert_eq!(ty(&r), "history", "{r}");
    std::fs::remove_file(&filler).unwrap();
    send_until_acked(&mut alice, "guard", "after", Duration::from_secs(15));
    health_becomes(&s, 200, Duration::from_secs(10));
}

/// `chinwag_storage_flushes_total{by="<by>"}` now (0 before the first).
fn flushes_by(s: &Server, by: &str) -> f64 {
    let series = format!("chinwag_storage_flushes_total{{by=\"{by}\"}}");
    crate::ops::scrape(s.addr).1.get(&series).copied().unwrap_or(0.0)
}

/// The event loops flush their own writes while flushes are quick. Behind
/// a slow disk (every flush made 5 ms slower by a test hook) they hand
/// every flush to the commit thread instead, so a stall does not hold a
/// loop's other connections, and nothing is lost or reordered either way.
#[test]
fn behind_a_slow_disk_the_commit_thread_takes_the_flushes_and_order_holds() {
    let s = Server::open(FAST);
    crate::load::three_senders_seen_gap_free_and_in_order(&s, 100);
    assert!(flushes_by(&s, "writer") > 0.0, "the loops never flushed their own writes");
    drop(s);

    let mut o = Opts::new(FAST);
    o.args.push("--open".into());
    o.env.push(("CHINWAG_TEST_SLOW_FLUSH_MS".into(), "5".into()));
    let s = Server::start_with(o);
    crate::load::three_senders_seen_gap_free_and_in_order(&s, 100);
    let (writer, commit) = (flushes_by(&s, "writer"), flushes_by(&s, "commit"));
    // Only a loop's first flush, before any flush was known to be slow;
    // the commit thread's flushes serve whatever queued during the last
    // (group commit), so they are few.
    assert!(writer <= 1.0, "loops flushed {writer} times behind a slow disk");
    assert!(commit >= 2.0, "the commit thread flushed {commit} times");
}
