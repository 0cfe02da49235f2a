//! Storage guarantees (sections 3 and 4): `history` cursors, limits and `more`; `join` with
//! `since` (exactly the missed messages, capped at 1000); persistent membership and read
//! markers across restarts (hello lists the rooms, DM rooms included, and the new connection
//! receives without re-joining); acked messages surviving `kill -9` with the same seq, also
//! after sled snapshots taken while writing; graceful shutdown on SIGTERM (close 1001, exit 0,
//! data kept), with a snapshot when much was written.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

const FAST: &[&str] = &["--rate", "100000", "--burst", "100000"];

/// Sends `n` messages to `room` without waiting, then collects their acks (in send order).
fn fill(c: &mut Client, room: &str, n: u64, tag: &str) -> Vec<Value> {
    for i in 0..n {
        c.send_json(json!({"type": "send", "room": room, "text": format!("{tag}{i}"), "id": format!("{tag}{i}")}));
    }
    let mut acks = Vec::new();
    for i in 0..n {
        let id = json!(format!("{tag}{i}"));
        let a = c.recv_where(|v| v["id"] == id);
        assert_eq!(ty(&a), "ack", "{a}");
        acks.push(a);
    }
    c.clear_stash();
    acks
}

/// `history` reply checked for shape; returns (seqs, more).
fn hist(c: &mut Client, q: Value) -> (Vec<u64>, bool) {
    let mut f = q.clone();
    f["type"] = json!("history");
    let h = c.call(f);
    assert_eq!(ty(&h), "history", "{q}: {h}");
    let msgs = h["messages"].as_array().unwrap_or_else(|| panic!("messages: {h}"));
    for m in msgs {
        assert_eq!(m["type"], "message", "history items carry their kind: {m}");
        assert!(m["ts"].is_u64() && m["from"].is_string() && m["text"].is_string(), "{m}");
    }
    let seqs: Vec<u64> = msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    (seqs, h["more"].as_bool().unwrap_or_else(|| panic!("more: {h}")))
}

fn range(a: u64, b: u64) -> Vec<u64> {
    (a..=b).collect()
}

#[test]
fn history_cursors_limits_and_more() {
    let s = Server::open(FAST);
    let mut c = s.client("alice");
    c.join("h");
    let acks = fill(&mut c, "h", 130, "m");
    let got: Vec<u64> = acks.iter().map(|a| a["seq"].as_u64().unwrap()).collect();
    assert_eq!(got, range(1, 130), "seq starts at 1 and is gap-free");
    let r = "h";
    assert_eq!(hist(&mut c, json!({"room": r})), (range(81, 130), true), "default limit 50");
    assert_eq!(hist(&mut c, json!({"room": r, "limit": 10})), (range(121, 130), true));
    assert_eq!(hist(&mut c, json!({"room": r, "limit": 1})), (vec![130], true));
    assert_eq!(hist(&mut c, json!({"room": r, "limit": 130})), (range(31, 130), true), "cap 100");
    assert_eq!(
        hist(&mut c, json!({"room": r, "before": 121, "limit": 10})),
        (range(111, 120), true)
    );
    assert_eq!(hist(&mut c, json!({"room": r, "before": 11, "limit": 10})), (range(1, 10), false));
    assert_eq!(hist(&mut c, json!({"room": r, "before": 5, "limit": 10})), (range(1, 4), false));
    assert_eq!(hist(&mut c, json!({"room": r, "before": 1})), (vec![], false));
    assert_eq!(
        hist(&mut c, json!({"room": r, "before": 1000, "limit": 3})),
        (range(128, 130), true)
    );
    assert_eq!(hist(&mut c, json!({"room": r, "after": 0, "limit": 10})), (range(1, 10), true));
    assert_eq!(
        hist(&mut c, json!({"room": r, "after": 125, "limit": 10})),
        (range(126, 130), false)
    );
    assert_eq!(
        hist(&mut c, json!({"room": r, "after": 120, "limit": 10})),
        (range(121, 130), false)
    );
    assert_eq!(hist(&mut c, json!({"room": r, "after": 130})), (vec![], false));
    assert_eq!(hist(&mut c, json!({"room": r, "after": 0, "limit": 101})), (range(1, 100), true));
    assert_eq!(hist(&mut c, json!({"room": r, "after": 30})), (range(31, 80), true));
    // The texts match the acks.
    let h = c.call(json!({"type": "history", "room": r, "after": 60, "limit": 3}));
    let texts: Vec<&str> =
        h["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["m60", "m61", "m62"]);
    assert_eq!(h["messages"][0]["ts"], acks[60]["ts"]);
    assert_eq!(h["messages"][0]["from"], "alice");
    assert_eq!(h["messages"][0]["room"], "h");

    // joined: the last 50, and with `since` exactly what came after.
    let j = c.join(r);
    assert_eq!((j["seq"].as_u64(), j["more"].as_bool()), (Some(130), Some(true)));
    assert_eq!(seqs_of(&j["history"]), range(81, 130));
    let j = c.call(json!({"type": "join", "room": r, "since": 120}));
    assert_eq!(seqs_of(&j["history"]), range(121, 130), "{j}");
    assert_eq!(j["more"], false);
    let j = c.call(json!({"type": "join", "room": r, "since": 130}));
    assert_eq!((seqs_of(&j["history"]), j["more"].as_bool()), (vec![], Some(false)));
    let j = c.call(json!({"type": "join", "room": r, "since": 0}));
    assert_eq!(seqs_of(&j["history"]), range(1, 130), "since 0 means everything (≤ 1000)");
}

fn seqs_of(h: &Value) -> Vec<u64> {
    h.as_array()
        .unwrap_or_else(|| panic!("history array: {h}"))
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn join_since_returns_exactly_the_missed_messages() {
    let s = Server::open(FAST);
    let mut alice = s.client("alice");
    let mut bob = s.client("bob");
    alice.join("r");
    bob.join("r");
    fill(&mut alice, "r", 10, "before");
    let seen = bob.collect_until(|v| ty(v) == "message" && v["seq"] == 10);
    assert_eq!(seqs(&seen), range(1, 10));
    bob.close();
    // bob is away: 37 messages from two senders.
    let mut carol = s.client("carol");
    carol.join("r");
    fill(&mut alice, "r", 20, "a");
    fill(&mut carol, "r", 17, "c");
    let mut bob = s.client("bob");
    assert_eq!(hello_room(&bob.hello, "r").map(|r| r["seq"].clone()), Some(json!(47)));
    let j = bob.call(json!({"type": "join", "room": "r", "since": 10}));
    assert_eq!(seqs_of(&j["history"]), range(11, 47), "{j}");
    assert_eq!(j["more"], false);
    let texts: Vec<&str> =
        j["history"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    let expect: Vec<String> =
        (0..20).map(|i| format!("a{i}")).chain((0..17).map(|i| format!("c{i}"))).collect();
    assert_eq!(texts, expect);
    // history `after` says the same.
    let h = bob.call(json!({"type": "history", "room": "r", "after": 10, "limit": 100}));
    assert_eq!(seqs_of(&h["messages"]), range(11, 47));
    // And live delivery continues at 48 without a gap.
    carol.send_msg("r", "live");
    let m = bob.recv_type("message");
    assert_eq!(m["seq"], 48);
}

#[test]
fn join_since_is_capped_at_1000_and_continues_with_history_after() {
    let s = Server::open(FAST);
    let mut c = s.client("alice");
    c.join("many");
    fill(&mut c, "many", 1100, "n");
    let j = c.call(json!({"type": "join", "room": "many", "since": 50}));
    assert_eq!(seqs_of(&j["history"]), range(51, 1050));
    assert_eq!(j["more"], true, "more messages after the first 1000");
    let h = c.call(json!({"type": "history", "room": "many", "after": 1050, "limit": 100}));
    assert_eq!(seqs_of(&h["messages"]), range(1051, 1100));
    assert_eq!(h["more"], false);
}

#[test]
fn membership_and_read_markers_survive_restart() {
    let mut s = Server::open(&[]);
    let mut alice = s.client("alice");
    let mut bob = s.client("bob");
    alice.join("general");
    alice.join("side");
    bob.join("general");
    for i in 0..3 {
        bob.send_msg("general", &format!("g{i}"));
    }
    alice.call(json!({"type": "dm", "to": "bob", "text": "psst"}));
    alice.send_json(json!({"type": "read", "room": "general", "seq": 2}));
    alice.ping_barrier();
    let node = alice.hello["node"].clone();
    drop(alice);
    drop(bob);

    s.restart();
    let mut alice = s.client("alice");
    assert_eq!(alice.hello["node"], node, "the node id is kept in the data dir");
    let mut rooms: Vec<Value> = alice.hello["rooms"].as_array().expect("rooms").clone();
    rooms.sort_by_key(|r| r["room"].as_str().unwrap_or_default().to_string());
    assert_eq!(
        Value::Array(rooms),
        json!([
            {"room": "dm:alice:bob", "seq": 1, "read": 0, "unread": 0, "mentions": 0},
            {"room": "general", "seq": 3, "read": 2, "unread": 1, "mentions": 0},
            {"room": "side", "seq": 0, "read": 0, "unread": 0, "mentions": 0},
        ])
    );
    // Subscribed without re-joining, DM room included.
    let mut bob = s.client("bob");
    assert!(hello_room(&bob.hello, "dm:alice:bob").is_some(), "{}", bob.hello);
    bob.send_msg("general", "after restart");
    let m = alice.recv_type("message");
    assert_eq!((m["room"].as_str(), m["seq"].as_u64()), (Some("general"), Some(4)));
    bob.call(json!({"type": "dm", "to": "alice", "text": "back"}));
    let m = alice.recv_where(|v| ty(v) == "message" && v["room"] == "dm:alice:bob");
    assert_eq!((m["seq"].as_u64(), m["text"].as_str()), (Some(2), Some("back")));
    let ack = alice.send_msg("side", "first in side");
    assert_eq!(ack["seq"], 1);
    let j = bob.join("general");
    assert_eq!(sorted_strs(&j["members"]), ["alice", "bob"]);
}

#[test]
fn acked_messages_survive_kill_9_with_the_same_seq() {
    let mut s = Server::open(FAST);
    let mut alice = s.client("alice");
    alice.join("durable");
    let acks = fill(&mut alice, "durable", 300, "k");
    let mut dm_acks = Vec::new();
    for i in 0..5 {
        let a = alice.call(json!({"type": "dm", "to": "bob", "text": format!("dm{i}")}));
        assert_eq!(ty(&a), "ack", "{a}");
        dm_acks.push(a);
    }
    // Membership is durable once `joined` is sent.
    alice.join("joined-last");
    s.kill9();
    drop(alice);

    s.restart();
    let mut alice = s.client("alice");
    let h = &alice.hello;
    assert_eq!(hello_room(h, "durable").map(|r| r["seq"].clone()), Some(json!(300)), "{h}");
    assert_eq!(hello_room(h, "dm:alice:bob").map(|r| r["seq"].clone()), Some(json!(5)), "{h}");
    assert!(hello_room(h, "joined-last").is_some(), "membership lost by kill -9: {h}");
    let mut stored = Vec::new();
    for after in [0, 100, 200] {
        let r =
            alice.call(json!({"type": "history", "room": "durable", "after": after, "limit": 100}));
        stored.extend(r["messages"].as_array().expect("messages").iter().cloned());
    }
    assert_eq!(stored.len(), 300);
    for (i, (m, a)) in stored.iter().zip(&acks).enumerate() {
        assert_eq!(m["seq"], a["seq"], "message {i}");
        assert_eq!(m["text"], format!("k{i}"), "message {i}");
        assert_eq!(m["ts"], a["ts"], "message {i}");
    }
    let r = alice.call(json!({"type": "history", "room": "dm:alice:bob"}));
    let texts: Vec<&str> =
        r["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["dm0", "dm1", "dm2", "dm3", "dm4"]);
    // The counter continues: no seq is reused.
    let ack = alice.send_msg("durable", "after crash");
    assert_eq!(ack["seq"], 301);
}

#[test]
fn sigterm_closes_clients_with_1001_exits_0_and_keeps_data() {
    let mut s = Server::open(FAST);
    let mut a = s.client("alice");
    let mut b = Client::connect(s.addr, Auth::Open("bob"), Enc::MsgPack);
    a.join("r");
    b.join("r");
    let acks = fill(&mut a, "r", 50, "t");
    b.collect_until(|v| ty(v) == "message" && v["seq"] == 50);
    s.sigterm_nowait();
    assert_eq!(a.expect_close(), 1001, "JSON client close code on shutdown");
    assert_eq!(b.expect_close(), 1001, "msgpack client close code on shutdown");
    let st = s.wait_exit(Duration::from_secs(15));
    assert_eq!(st.code(), Some(0), "exit status after SIGTERM: {st:?}");

    s.restart();
    let mut a = s.client("alice");
    let h = a.call(json!({"type": "history", "room": "r", "limit": 100}));
    let got = seqs_of(&h["messages"]);
    assert_eq!(got, acks.iter().map(|x| x["seq"].as_u64().unwrap()).collect::<Vec<_>>());
    // SIGINT is handled the same way.
    s.signal(libc::SIGINT);
    assert_eq!(a.expect_close(), 1001, "close code on SIGINT");
    let st = s.wait_exit(Duration::from_secs(15));
    assert_eq!(st.code(), Some(0), "exit status after SIGINT: {st:?}");
    // An idle server also shuts down cleanly.
    s.restart();
    let st = s.sigterm();
    assert_eq!(st.code(), Some(0), "{st:?}");
}

/// The newest complete sled snapshot in the data dir (`snap.<lsn>`, hex; a
/// `.generating` one is not complete).
fn snapshot_file(s: &Server) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(s.dir.join("db"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("snap.") && !n.ends_with(".generating"))
        .collect();
    names.sort();
    names.pop()
}

/// What was acked in one room: each event's kind by seq, and each message's
/// current text (its latest acked edit); and the text of edits sent but not
/// acked when the server died, which may or may not have been stored.
#[derive(Default)]
struct Acked {
    kinds: std::collections::BTreeMap<u64, &'static str>,
    texts: std::collections::BTreeMap<u64, String>,
    unacked_edits: std::collections::BTreeMap<u64, Vec<String>>,
}

/// Sends `n` events to each room (messages, and an edit of an earlier
/// message every fifth) without waiting, then reads acks: all of them, or
/// (`cut`) only the first `cut` before returning with the rest in flight.
fn write_batch(c: &mut Client, rooms: &mut [Acked], round: usize, n: usize, cut: Option<usize>) {
    let mut sent = Vec::new();
    for i in 0..n {
        for (r, acked) in rooms.iter().enumerate() {
            let id = format!("{round}.{r}.{i}.{}", acked.kinds.len());
            let target = acked.texts.keys().rev().nth(i % 7).copied().filter(|_| i % 5 == 4);
            let f = match target {
                Some(t) => {
                    json!({"type": "edit", "room": format!("s{r}"), "seq": t, "text": format!("edit {id}"), "id": id})
                }
                None => {
                    json!({"type": "send", "room": format!("s{r}"), "text": format!("text {id}"), "id": id})
                }
            };
            c.send_json(f.clone());
            sent.push((r, target, f));
        }
    }
    for (k, (r, target, f)) in sent.into_iter().enumerate() {
        if cut.is_some_and(|cut| k >= cut) {
            if let Some(t) = target {
                rooms[r]
                    .unacked_edits
                    .entry(t)
                    .or_default()
                    .push(f["text"].as_str().unwrap().into());
            }
            continue;
        }
        let id = f["id"].clone();
        let a = c.recv_where(|v| v["id"] == id);
        assert_eq!(ty(&a), "ack", "{f}: {a}");
        let seq = a["seq"].as_u64().unwrap();
        let text = f["text"].as_str().unwrap().to_string();
        match target {
            Some(t) => {
                rooms[r].kinds.insert(seq, "edit");
                rooms[r].texts.insert(t, text);
            }
            None => {
                rooms[r].kinds.insert(seq, "message");
                rooms[r].texts.insert(seq, text);
            }
        }
    }
    c.clear_stash();
}

/// sled writes a snapshot of its page table while writes go on (so that a
/// start replays only the log after it); a crash at any point after one
/// loses nothing acked. Each round writes until a snapshot taken during the
/// writes is on disk, then is killed with a batch in flight; every acked
/// message and edit is there after the restart, each room's seqs without a
/// gap.
#[test]
fn acked_events_survive_kill_9_after_snapshots_taken_while_writing() {
    let mut o = Opts::new(FAST);
    o.args.push("--open".into());
    // A snapshot at every look (once a second) that follows any write.
    o.env.push(("CHINWAG_TEST_SNAPSHOT_BYTES".into(), "1".into()));
    let mut s = Server::start_with(o);
    let mut rooms: Vec<Acked> = (0..4).map(|_| Acked::default()).collect();
    for round in 0..3 {
        let opened = snapshot_file(&s);
        let mut c = s.client("alice");
        for r in 0..rooms.len() {
            c.join(&format!("s{r}"));
        }
        // The snapshot thread looks once a second, and a batch of 50 acks
        // can take a few milliseconds: the bound is a time, not a count,
        // and the writes are paced to keep the history small.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut batches = 0;
        while snapshot_file(&s) == opened {
            batches += 1;
            assert!(Instant::now() < deadline, "no snapshot written during {batches} batches");
            write_batch(&mut c, &mut rooms, round, 50, None);
            std::thread::sleep(Duration::from_millis(10));
        }
        write_batch(&mut c, &mut rooms, round, 50, Some(100));
        s.kill9();
        drop(c);
        s.restart();
        let mut c = s.client("alice");
        for (r, acked) in rooms.iter().enumerate() {
            let events = crate::events::all_history(&mut c, &format!("s{r}"));
            let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
            assert_eq!(seqs, range(1, seqs.len() as u64), "room s{r}, round {round}: a gap");
            for (&seq, &kind) in &acked.kinds {
                let e = events.get(seq as usize - 1).unwrap_or_else(|| {
                    panic!("room s{r}, round {round}: acked seq {seq} lost ({} stored)", seqs.len())
                });
                assert_eq!(e["type"], kind, "room s{r} seq {seq}: {e}");
                if kind == "message" {
                    let text = e["text"].as_str().unwrap_or_default();
                    let later =
                        acked.unacked_edits.get(&seq).is_some_and(|v| v.iter().any(|t| t == text));
                    assert!(text == acked.texts[&seq] || later, "room s{r} seq {seq}: {e}");
                }
            }
        }
    }
    // The restart itself still works from a clean stop.
    s.restart();
    s.client("alice");
}

/// A clean stop writes a snapshot when more than 16 MiB of log would be
/// replayed at the next start (here ~20 MB of messages, under the 256 MiB
/// a running node waits for), and the start after it finds everything.
#[test]
fn a_clean_stop_after_many_writes_leaves_a_snapshot() {
    let mut s = Server::open(FAST);
    let mut c = s.client("alice");
    c.join("big");
    let text = "x".repeat(4000);
    for b in 0..10 {
        for i in 0..500 {
            c.send_json(
                json!({"type": "send", "room": "big", "text": text, "id": format!("{b}.{i}")}),
            );
        }
        for i in 0..500 {
            let id = json!(format!("{b}.{i}"));
            let a = c.recv_where(|v| v["id"] == id);
            assert_eq!(ty(&a), "ack", "{a}");
        }
        c.clear_stash();
    }
    drop(c);
    let before = snapshot_file(&s);
    assert_eq!(s.sigterm().code(), Some(0));
    let after = snapshot_file(&s);
    assert!(after.is_some() && after != before, "no snapshot at the stop:\n{}", s.log_text());
    s.restart();
    let mut c = s.client("alice");
    let h = c.call(json!({"type": "history", "room": "big", "limit": 1}));
    assert_eq!(h["messages"][0]["seq"], 5000, "{h}");
}

#[test]
fn a_damaged_database_stops_the_start_and_says_how_to_restore_a_backup() {
    let mut s = Server::open(&[]);
    let mut a = s.client("a");
    a.join("d");
    for i in 0..20 {
        a.send_msg("d", &format!("m{i}"));
    }
    let (_dest, copy) = crate::api::backed_up(&s);
    // A start after writes leaves sled a snapshot, by which it knows how
    // far its log reached. (Without one, a log cut short reads as a shorter
    // history: sled keeps the valid prefix. Left as is; see the README.)
    s.restart();
    assert!(s.sigterm().success());
    let snap = std::fs::read_dir(s.dir.join("db")).unwrap().flatten();
    assert!(snap.into_iter().any(|f| f.file_name().to_string_lossy().starts_with("snap.")));
    // The log cut short, as a disk that lost its tail would leave it.
    let db = std::fs::OpenOptions::new().write(true).open(s.dir.join("db/db")).unwrap();
    db.set_len(500).unwrap();
    let mut o = Opts::new(&["--open"]);
    o.dir = Some(s.dir.clone());
    let why = Server::try_start_with(o).expect_err("a damaged database must stop the start");
    assert!(why.contains("is damaged") && why.contains("chinwag backup"), "{why}");
    assert!(!why.contains("panicked"), "{why}");
    // What it says to do works: a node on the backup has every message.
    let texts = crate::api::texts_on_copy(&copy, "d");
    assert_eq!(texts, (0..20).map(|i| format!("m{i}")).collect::<Vec<_>>());
}
