//! Room events and the revision-2 team-chat features of PROTOCOL.md on a single node: `edit`,
//! `delete`, `react`, replies and `thread`, mentions (the exact boundary rules), `hello`'s
//! `unread`/`mentions`, `search`, the room directory (`rooms`), `default_rooms`, display names,
//! `refresh`, the `limit` rules of section 4, the new HTTP rows of section 5, and recovery: a
//! client that was away and resumes with `join` + `since` ends in exactly the state of one that
//! stayed (both reduce the events they saw; both equal a fresh `history`). Also: events and
//! their search entries survive `kill -9`, deleted text leaves the data directory, and racing
//! writes keep the rules (nothing lands on a message after its delete; at most 20 emoji).
//!
//! Frames are exercised in JSON and in MessagePack where that is cheap. Search is eventually
//! consistent (within 2 s): its checks poll with a bounded wait and never assert on time.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

const FAST: &[&str] = &["--rate", "100000", "--burst", "100000"];
const ENCS: [Enc; 2] = [Enc::Json, Enc::MsgPack];
const KINDS: [&str; 4] = ["message", "edit", "delete", "reaction"];
/// Bound for anything the protocol lets settle asynchronously (search: 2 s).
const SETTLE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A token-mode server with the rate limit out of the way.
fn server(extra: &[&str]) -> Server {
    let mut args = FAST.to_vec();
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn tag(enc: Enc) -> &'static str {
    match enc {
        Enc::Json => "j",
        Enc::MsgPack => "m",
    }
}

/// A one-hour token for `user` with `extra` claims merged in.
pub(crate) fn tok(user: &str, extra: Value) -> String {
    let mut claims =
        json!({"sub": user, "exp": now_s() + 3600, "jti": format!("{user}-{}", now_ms())});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            claims[k] = v;
        }
    }
    sign(&claims, SECRET)
}

fn conn(s: &Server, user: &str, enc: Enc) -> Client {
    Client::connect(s.addr, Auth::Bearer(&tok(user, json!({}))), enc)
}

fn admin_conn(s: &Server, user: &str, enc: Enc) -> Client {
    Client::connect(s.addr, Auth::Bearer(&tok(user, json!({"admin": true}))), enc)
}

/// `call` that must be acked.
pub(crate) fn ok(c: &mut Client, v: Value) -> Value {
    let what = v.to_string();
    let r = c.call(v);
    assert_eq!(ty(&r), "ack", "expected an ack for {what}, got {r}");
    assert!(r["seq"].as_u64().is_some() && r["ts"].as_u64().is_some(), "ack fields: {r}");
    r
}

pub(crate) fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

pub(crate) fn ts(v: &Value) -> u64 {
    v["ts"].as_u64().unwrap_or_else(|| panic!("no ts in {v}"))
}

pub(crate) fn send(c: &mut Client, room: &str, text: &str) -> u64 {
    seq(&ok(c, json!({"type": "send", "room": room, "text": text})))
}

pub(crate) fn reply(c: &mut Client, room: &str, root: u64, text: &str) -> Value {
    ok(c, json!({"type": "send", "room": room, "text": text, "reply_to": root}))
}

pub(crate) fn edit(c: &mut Client, room: &str, target: u64, text: &str) -> Value {
    ok(c, json!({"type": "edit", "room": room, "seq": target, "text": text}))
}

pub(crate) fn del(c: &mut Client, room: &str, target: u64) -> Value {
    ok(c, json!({"type": "delete", "room": room, "seq": target}))
}

pub(crate) fn react(c: &mut Client, room: &str, target: u64, emoji: &str, on: bool) -> Value {
    ok(c, json!({"type": "react", "room": room, "seq": target, "emoji": emoji, "on": on}))
}

pub(crate) fn is_event(v: &Value) -> bool {
    KINDS.contains(&ty(v))
}

/// The live event of `room` with `seq` (other frames are kept).
pub(crate) fn event(c: &mut Client, room: &str, s: u64) -> Value {
    c.recv_where(|v| is_event(v) && v["room"] == room && v["seq"] == s)
}

/// Every room event of `room` up to and including `last`, in arrival order (checked to be
/// strictly ascending); other frames are dropped.
pub(crate) fn drain(c: &mut Client, room: &str, last: u64) -> Vec<Value> {
    let frames = c.collect_until(|v| is_event(v) && v["room"] == room && v["seq"] == last);
    let evs: Vec<Value> = frames.into_iter().filter(|v| is_event(v) && v["room"] == room).collect();
    let s: Vec<u64> = evs.iter().map(seq).collect();
    assert!(s.windows(2).all(|w| w[0] < w[1]), "events out of seq order: {s:?}");
    evs
}

/// Every event of `room` via `history` pages, ascending.
pub(crate) fn all_history(c: &mut Client, room: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut after = 0;
    loop {
        let h = c.call(json!({"type": "history", "room": room, "after": after, "limit": 100}));
        assert_eq!(ty(&h), "history", "{h}");
        let msgs = h["messages"].as_array().unwrap_or_else(|| panic!("{h}")).clone();
        for m in &msgs {
            assert_eq!(m["room"], room, "history items carry room: {m}");
            assert!(KINDS.contains(&ty(m)), "history items carry their kind as type: {m}");
        }
        out.extend(msgs);
        if h["more"] != true {
            return out;
        }
        after = seq(out.last().unwrap());
    }
}

/// The history item with `seq`.
pub(crate) fn item(c: &mut Client, room: &str, s: u64) -> Value {
    let h = c.call(json!({"type": "history", "room": room, "after": s - 1, "limit": 1}));
    assert_eq!(ty(&h), "history", "{h}");
    let m = h["messages"][0].clone();
    assert_eq!(m["seq"], s, "history after {} limit 1: {h}", s - 1);
    m
}

/// Whether `key` is absent (or null) in `v`.
pub(crate) fn absent(v: &Value, key: &str) -> bool {
    v.get(key).is_none_or(Value::is_null)
}

pub(crate) fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap_or_else(|| panic!("expected a string: {x}")).to_string())
        .collect()
}

/// A message's or edit's `mentions` ([] when absent; present means non-empty).
pub(crate) fn mentions(v: &Value) -> Vec<String> {
    if absent(v, "mentions") {
        return Vec::new();
    }
    let m = strs(&v["mentions"]);
    assert!(!m.is_empty(), "mentions must be absent when none: {v}");
    m
}

pub(crate) type Reactions = Vec<(String, Vec<String>)>;

/// A message's `reactions` ([] when absent; present means non-empty).
pub(crate) fn reactions(v: &Value) -> Reactions {
    if absent(v, "reactions") {
        return Vec::new();
    }
    let r: Reactions = v["reactions"]
        .as_array()
        .unwrap_or_else(|| panic!("reactions must be an array: {v}"))
        .iter()
        .map(|e| (e["emoji"].as_str().unwrap_or_default().to_string(), strs(&e["users"])))
        .collect();
    assert!(!r.is_empty(), "reactions must be absent when empty: {v}");
    r
}

pub(crate) fn rx(pairs: &[(&str, &[&str])]) -> Reactions {
    pairs.iter().map(|(e, u)| (e.to_string(), u.iter().map(|s| s.to_string()).collect())).collect()
}

fn sv(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Polls `search` (the frame `q` plus `type`) until `done` holds for its messages.
pub(crate) fn search_until(
    c: &mut Client,
    q: Value,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let mut f = q.clone();
        f["type"] = json!("search");
        let r = c.call(f);
        assert_eq!(ty(&r), "search_results", "{q}: {r}");
        let msgs = r["messages"].as_array().unwrap_or_else(|| panic!("{r}"));
        if done(msgs) {
            return r;
        }
        assert!(start.elapsed() < SETTLE, "search {q}: gave up waiting for {what}; last: {r}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// (room, seq) of each item.
pub(crate) fn keys(ms: &[Value]) -> Vec<(String, u64)> {
    ms.iter().map(|m| (m["room"].as_str().unwrap_or_default().to_string(), seq(m))).collect()
}

pub(crate) fn key(room: &str, s: u64) -> (String, u64) {
    (room.to_string(), s)
}

/// Percent-encodes everything but unreserved characters.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// An HTTP call with a bearer token: (status, JSON body or the body as a string).
fn api(s: &Server, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let r = http_request(s.addr, method, path, &headers, body);
    let v = serde_json::from_str(&r.body).unwrap_or(Value::String(r.body.clone()));
    (r.status, v)
}

/// Sends `frames` pipelined, numbered `b0`, `b1`, ...; returns the seqs
/// of those acked (a refusal must be `not_found`: the target was deleted).
pub(crate) fn burst(mut c: Client, frames: Vec<Value>) -> Vec<u64> {
    let n = frames.len();
    for (i, mut f) in frames.into_iter().enumerate() {
        f["id"] = json!(format!("b{i}"));
        c.send_json(f);
    }
    let mut acked = Vec::new();
    for i in 0..n {
        let r = c.recv_where(|v| v["id"] == format!("b{i}"));
        match ty(&r) {
            "ack" => acked.push(seq(&r)),
            _ => assert_eq!(r["code"], "not_found", "{r}"),
        }
    }
    acked
}

/// Sends `n` replies/messages without waiting, then collects their acks in order.
fn pipeline(c: &mut Client, frames: Vec<Value>) -> Vec<Value> {
    let n = frames.len();
    let base = format!("p{}-", now_ms());
    for (i, mut f) in frames.into_iter().enumerate() {
        f["id"] = json!(format!("{base}{i}"));
        c.send_json(f);
    }
    (0..n)
        .map(|i| {
            let id = json!(format!("{base}{i}"));
            let r = c.recv_where(|v| v["id"] == id);
            assert!(ty(&r) == "ack" || ty(&r) == "joined", "pipelined frame {i}: {r}");
            r
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// edit
// ---------------------------------------------------------------------------------------------

/// The live `edit` event of the first valid edit in `edit_is_author_only...`.
fn check_edit(ev: &Value, ack: &Value, target: u64) {
    assert_eq!(ty(ev), "edit", "{ev}");
    assert_eq!(ev["seq"], ack["seq"], "{ev}");
    assert_eq!(ev["ts"], ack["ts"], "the ack carries the event's ts: {ev}");
    assert_eq!(ev["from"], "alice", "{ev}");
    assert_eq!(ev["target"], target, "{ev}");
    assert_eq!(ev["text"], "hi @carol and @bob", "{ev}");
    assert_eq!(mentions(ev), ["bob"], "carol is not a member: {ev}");
}

#[test]
fn edit_is_author_only_and_becomes_the_current_text() {
    let s = server(&["--max-text", "40"]);
    for enc in ENCS {
        let room = format!("edit-{}", tag(enc));
        let mut alice = conn(&s, "alice", enc);
        let mut bob = conn(&s, "bob", enc);
        let mut carol = conn(&s, "carol", enc);
        alice.join(&room);
        bob.join(&room);
        let m1 = send(&mut alice, &room, "hello @bob");
        let m2 = send(&mut alice, &room, "never edited");
        let r = room.as_str();

        bob.call_err(json!({"type": "edit", "room": r, "seq": m1, "text": "mine"}), "forbidden");
        let mut root = admin_conn(&s, "root", enc);
        root.join(r);
        let f = json!({"type": "edit", "room": r, "seq": m1, "text": "admin"});
        root.call_err(f, "forbidden");
        carol.call_err(json!({"type": "edit", "room": r, "seq": m1, "text": "x"}), "not_member");
        alice.call_err(json!({"type": "edit", "room": r, "seq": 999, "text": "x"}), "not_found");
        for bad in [
            json!({"type": "edit", "room": r, "seq": m1, "text": ""}),
            json!({"type": "edit", "room": r, "seq": m1, "text": " \n\t\u{a0}"}),
            json!({"type": "edit", "room": r, "seq": m1}),
            json!({"type": "edit", "room": r, "text": "x"}),
            json!({"type": "edit", "room": r, "seq": "1", "text": "x"}),
            json!({"type": "edit", "seq": m1, "text": "x"}),
            json!({"type": "edit", "room": r, "seq": m1, "text": 5}),
        ] {
            alice.call_err(bad, "bad_request");
        }
        let long = json!({"type": "edit", "room": r, "seq": m1, "text": "é".repeat(41)});
        alice.call_err(long, "too_long");

        // A valid edit: an event with the room's next seq (refusals took none).
        let e1 = alice.call(
            json!({"type": "edit", "room": r, "seq": m1, "text": "hi @carol and @bob", "id": "e1"}),
        );
        assert_eq!(ty(&e1), "ack", "{e1}");
        assert_eq!((e1["id"].as_str(), e1["room"].as_str()), (Some("e1"), Some(r)), "{e1}");
        assert_eq!(seq(&e1), m2 + 1, "{e1}");
        let ev = event(&mut alice, r, seq(&e1));
        check_edit(&ev, &e1, m1);
        // An edit event is not a message.
        alice.call_err(
            json!({"type": "edit", "room": r, "seq": seq(&e1), "text": "x"}),
            "not_found",
        );
        let e2 = edit(&mut alice, r, m1, "final words");
        let exactly_40 = "ü".repeat(40);
        let e3 = edit(&mut alice, r, m2, &exactly_40);

        // History shows the current state, and the edits stay in the sequence.
        let h = all_history(&mut bob, r);
        let got: Vec<u64> = h.iter().map(seq).collect();
        assert_eq!(got, (1..=seq(&e3)).collect::<Vec<u64>>(), "gap-free sequence: {h:?}");
        let msg1 = &h[(m1 - 1) as usize];
        assert_eq!(ty(msg1), "message", "{msg1}");
        assert_eq!(msg1["text"], "final words", "{msg1}");
        assert_eq!(msg1["edited_ts"], e2["ts"], "edited_ts is the last edit's ts: {msg1}");
        assert!(absent(msg1, "mentions"), "mentions follow the latest text: {msg1}");
        assert_eq!(msg1["from"], "alice");
        let msg2 = &h[(m2 - 1) as usize];
        assert_eq!((msg2["text"].as_str(), &msg2["edited_ts"]), (Some(&*exactly_40), &e3["ts"]));
        let ed = &h[(seq(&e1) - 1) as usize];
        assert_eq!(
            (ty(ed), &ed["target"], &ed["text"], &ed["from"], &ed["ts"]),
            ("edit", &json!(m1), &json!("hi @carol and @bob"), &json!("alice"), &e1["ts"]),
            "{ed}"
        );
        assert_eq!(mentions(ed), ["bob"], "{ed}");
        // A message that was never edited has no edited_ts.
        let fresh = send(&mut bob, r, "untouched");
        let m = item(&mut alice, r, fresh);
        assert!(absent(&m, "edited_ts"), "{m}");
        // bob got each event once, in seq order; the joiner's view agrees.
        let evs = drain(&mut bob, r, fresh);
        assert_eq!(evs.iter().map(seq).collect::<Vec<_>>(), (1..=fresh).collect::<Vec<_>>());
        check_edit(&evs[(seq(&e1) - 1) as usize], &e1, m1);
        let ev = &evs[(seq(&e2) - 1) as usize];
        assert_eq!((ty(ev), &ev["text"]), ("edit", &json!("final words")), "{ev}");
        assert!(absent(ev, "mentions"), "no mentions left: {ev}");
        let extra: Vec<Value> = bob.ping_barrier().into_iter().filter(is_event).collect();
        assert!(extra.is_empty(), "duplicates: {extra:?}");
        let j = carol.join(r);
        let jh = j["history"].as_array().unwrap();
        assert_eq!(jh[(m1 - 1) as usize], h[(m1 - 1) as usize], "joined.history = history");
    }
}

// ---------------------------------------------------------------------------------------------
// delete
// ---------------------------------------------------------------------------------------------

#[test]
fn delete_by_author_or_admin_removes_the_text_everywhere() {
    let s = server(&[]);
    for enc in ENCS {
        let room = format!("del-{}", tag(enc));
        let r = room.as_str();
        let mut alice = conn(&s, "alice", enc);
        let mut bob = conn(&s, "bob", enc);
        let mut root = admin_conn(&s, "root", enc);
        let mut carol = conn(&s, "carol", enc);
        for c in [&mut alice, &mut bob, &mut root] {
            c.join(r);
        }
        let m1 = send(&mut alice, r, &format!("secret plan{} alpha", tag(enc)));
        let e1 = edit(&mut alice, r, m1, &format!("secret plan{} beta", tag(enc)));
        let m2 = send(&mut bob, r, "bob's words");
        let m3 = send(&mut alice, r, &format!("keeper{} stays", tag(enc)));
        let plan = format!("plan{}", tag(enc));
        search_until(&mut alice, json!({"query": plan, "room": r}), "the message indexed", |m| {
            keys(m) == [key(r, m1)]
        });

        bob.call_err(json!({"type": "delete", "room": r, "seq": m1}), "forbidden");
        alice.call_err(json!({"type": "delete", "room": r, "seq": m2}), "forbidden");
        carol.call_err(json!({"type": "delete", "room": r, "seq": m1}), "not_member");
        alice.call_err(json!({"type": "delete", "room": r, "seq": seq(&e1)}), "not_found");
        alice.call_err(json!({"type": "delete", "room": r, "seq": 999}), "not_found");
        alice.call_err(json!({"type": "delete", "room": r}), "bad_request");
        alice.call_err(json!({"type": "delete", "room": r, "seq": "x"}), "bad_request");

        let d1 = del(&mut alice, r, m1);
        assert_eq!(seq(&d1), m3 + 1, "{d1}");
        for c in [&mut alice, &mut bob, &mut root] {
            let ev = event(c, r, seq(&d1));
            assert_eq!(
                (ty(&ev), &ev["target"], &ev["from"], &ev["ts"]),
                ("delete", &json!(m1), &json!("alice"), &d1["ts"]),
                "{ev}"
            );
        }
        // A deleted message is no target any more.
        alice.call_err(json!({"type": "delete", "room": r, "seq": m1}), "not_found");
        alice.call_err(json!({"type": "edit", "room": r, "seq": m1, "text": "x"}), "not_found");
        let rc = json!({"type": "react", "room": r, "seq": m1, "emoji": "👍", "on": true});
        bob.call_err(rc, "not_found");
        let rp = json!({"type": "send", "room": r, "text": "re", "reply_to": m1});
        bob.call_err(rp, "not_found");
        // An admin deletes someone else's message and is the `from` of the delete.
        let d2 = del(&mut root, r, m2);
        let ev = event(&mut bob, r, seq(&d2));
        assert_eq!((ty(&ev), &ev["from"], &ev["target"]), ("delete", &json!("root"), &json!(m2)));

        let h = all_history(&mut bob, r);
        let gone = &h[(m1 - 1) as usize];
        assert_eq!(gone["deleted"], true, "{gone}");
        assert!(absent(gone, "text"), "deleted replaces text: {gone}");
        let ed = &h[(seq(&e1) - 1) as usize];
        assert_eq!((ty(ed), &ed["target"]), ("edit", &json!(m1)), "{ed}");
        assert!(absent(ed, "text"), "an edit of a deleted message loses its text: {ed}");
        assert_eq!(h[(m2 - 1) as usize]["deleted"], true);
        assert_eq!(h[(m3 - 1) as usize]["text"], format!("keeper{} stays", tag(enc)));
        assert!(
            absent(&h[(m3 - 1) as usize], "deleted") || h[(m3 - 1) as usize]["deleted"] == false
        );
        let all = serde_json::to_string(&h).unwrap();
        assert!(!all.contains(&plan), "deleted text still in history: {all}");
        assert!(!all.contains("bob's words"), "deleted text still in history: {all}");
        assert_eq!(h.len() as u64, seq(&d2), "the deletes are events of the sequence");
        // Search forgets it; other messages stay searchable.
        search_until(
            &mut bob,
            json!({"query": plan}),
            "the deleted message to leave search",
            |m| m.is_empty(),
        );
        let keeper = format!("keeper{}", tag(enc));
        let k = search_until(&mut bob, json!({"query": keeper}), "keeper", |m| !m.is_empty());
        assert_eq!(keys(k["messages"].as_array().unwrap()), [key(r, m3)]);
        // A newcomer's joined.history agrees.
        let j = carol.join(r);
        assert_eq!(j["history"].as_array().unwrap(), &h, "joined.history = history");
    }
}

// ---------------------------------------------------------------------------------------------
// react
// ---------------------------------------------------------------------------------------------

#[test]
fn reactions_validate_emoji_keep_their_order_and_are_always_events() {
    let s = server(&[]);
    for enc in ENCS {
        let room = format!("rx-{}", tag(enc));
        let r = room.as_str();
        let mut alice = conn(&s, "alice", enc);
        let mut bob = conn(&s, "bob", enc);
        let mut carol = conn(&s, "carol", enc);
        let mut dave = conn(&s, "dave", enc);
        let mut watch = conn(&s, "watcher", enc);
        for c in [&mut alice, &mut bob, &mut carol, &mut watch] {
            c.join(r);
        }
        let m = send(&mut alice, r, "react to me");
        let mut accepted = Vec::new();

        let bad_emoji = [
            json!(""),
            json!("😀".repeat(17)),
            json!(" "),
            json!("a b"),
            json!("👍 "),
            json!("\t"),
            json!("x\n"),
            json!("👍\u{a0}"),
            json!("\u{2003}"),
            json!("a\u{7}"),
            json!("\u{7f}"),
            json!("\u{85}"),
            json!(5),
            json!(null),
        ];
        for e in bad_emoji {
            let f = json!({"type": "react", "room": r, "seq": m, "emoji": e, "on": true});
            bob.call_err(f, "bad_request");
        }
        for f in [
            json!({"type": "react", "room": r, "seq": m, "emoji": "👍"}),
            json!({"type": "react", "room": r, "seq": m, "emoji": "👍", "on": "yes"}),
            json!({"type": "react", "room": r, "emoji": "👍", "on": true}),
        ] {
            bob.call_err(f, "bad_request");
        }
        let f = json!({"type": "react", "room": r, "seq": 999, "emoji": "👍", "on": true});
        bob.call_err(f, "not_found");
        let f = json!({"type": "react", "room": r, "seq": m, "emoji": "👍", "on": true});
        dave.call_err(f, "not_member");

        // Sixteen scalar values and a ZWJ sequence are fine.
        let family = "👨\u{200d}👩\u{200d}👧\u{200d}👦";
        let sixteen = "😀".repeat(16);
        for e in [sixteen.as_str(), family, "👍🏽", "+1"] {
            accepted.push(react(&mut bob, r, m, e, true));
            accepted.push(react(&mut bob, r, m, e, false));
        }
        let a = react(&mut bob, r, m, "👍", true);
        let ev = event(&mut carol, r, seq(&a));
        assert_eq!(
            (ty(&ev), &ev["target"], &ev["emoji"], &ev["on"], &ev["from"], &ev["ts"]),
            ("reaction", &json!(m), &json!("👍"), &json!(true), &json!("bob"), &a["ts"]),
            "{ev}"
        );
        accepted.push(a);
        accepted.push(react(&mut carol, r, m, "🎉", true));
        accepted.push(react(&mut alice, r, m, "👍", true));
        assert_eq!(
            reactions(&item(&mut alice, r, m)),
            rx(&[("👍", &["bob", "alice"]), ("🎉", &["carol"])])
        );
        // Adding again changes nothing but is an event.
        let again = react(&mut bob, r, m, "👍", true);
        let ev = event(&mut carol, r, seq(&again));
        assert_eq!((ty(&ev), &ev["on"]), ("reaction", &json!(true)));
        accepted.push(again);
        // Removing something never added changes nothing but is an event.
        let noop = react(&mut carol, r, m, "❤️", false);
        let ev = event(&mut alice, r, seq(&noop));
        assert_eq!((ty(&ev), &ev["on"], &ev["emoji"]), ("reaction", &json!(false), &json!("❤️")));
        accepted.push(noop);
        assert_eq!(
            reactions(&item(&mut alice, r, m)),
            rx(&[("👍", &["bob", "alice"]), ("🎉", &["carol"])])
        );
        // Users in the order they reacted: bob leaves 👍 and comes back last.
        accepted.push(react(&mut bob, r, m, "👍", false));
        assert_eq!(
            reactions(&item(&mut alice, r, m)),
            rx(&[("👍", &["alice"]), ("🎉", &["carol"])])
        );
        accepted.push(react(&mut bob, r, m, "👍", true));
        assert_eq!(
            reactions(&item(&mut alice, r, m)),
            rx(&[("👍", &["alice", "bob"]), ("🎉", &["carol"])])
        );
        // An emoji whose last reaction went away goes last when added again.
        accepted.push(react(&mut alice, r, m, "👍", false));
        accepted.push(react(&mut bob, r, m, "👍", false));
        assert_eq!(reactions(&item(&mut alice, r, m)), rx(&[("🎉", &["carol"])]));
        accepted.push(react(&mut alice, r, m, "👍", true));
        assert_eq!(
            reactions(&item(&mut alice, r, m)),
            rx(&[("🎉", &["carol"]), ("👍", &["alice"])])
        );
        accepted.push(react(&mut carol, r, m, "🎉", false));
        accepted.push(react(&mut alice, r, m, "👍", false));
        let bare = item(&mut alice, r, m);
        assert!(absent(&bare, "reactions"), "no reactions left: {bare}");
        assert_eq!(bare["text"], "react to me", "{bare}");

        // Every accepted react was an event, in order, each exactly once.
        let last = seq(accepted.last().unwrap());
        let evs = drain(&mut watch, r, last);
        let got: Vec<u64> = evs.iter().filter(|v| ty(v) == "reaction").map(seq).collect();
        let want: Vec<u64> = accepted.iter().map(seq).collect();
        assert_eq!(got, want, "one reaction event per accepted react");
        assert_eq!(evs.iter().map(seq).collect::<Vec<_>>(), (1..=last).collect::<Vec<_>>());
        let extra: Vec<Value> = watch.ping_barrier().into_iter().filter(is_event).collect();
        assert!(extra.is_empty(), "duplicates: {extra:?}");

        // At most 20 distinct emoji at a time.
        let m2 = send(&mut alice, r, "popular");
        let batch: Vec<Value> = (0..20)
            .map(|i| json!({"type": "react", "room": r, "seq": m2, "emoji": format!("e{i:02}"), "on": true}))
            .collect();
        pipeline(&mut alice, batch);
        let f = json!({"type": "react", "room": r, "seq": m2, "emoji": "e20", "on": true});
        let e = alice.call_err(f.clone(), "limit_reached");
        assert!(e["message"].is_string());
        react(&mut bob, r, m2, "e05", true);
        react(&mut alice, r, m2, "e00", false);
        react(&mut bob, r, m2, "e20", true);
        let f2 = json!({"type": "react", "room": r, "seq": m2, "emoji": "e21", "on": true});
        carol.call_err(f2, "limit_reached");
        let got = reactions(&item(&mut alice, r, m2));
        let mut want: Reactions = (1..20).map(|i| (format!("e{i:02}"), sv(&["alice"]))).collect();
        want[4].1.push("bob".into());
        want.push(("e20".into(), sv(&["bob"])));
        assert_eq!(got, want);
    }
}

// ---------------------------------------------------------------------------------------------
// replies and threads
// ---------------------------------------------------------------------------------------------

#[test]
fn replies_are_one_level_deep_and_threads_page() {
    let s = server(&[]);
    for enc in ENCS {
        let room = format!("th-{}", tag(enc));
        let r = room.as_str();
        let mut alice = conn(&s, "alice", enc);
        let mut bob = conn(&s, "bob", enc);
        let mut carol = conn(&s, "carol", enc);
        alice.join(r);
        bob.join(r);
        let root = send(&mut alice, r, "root question");
        let other_root = send(&mut bob, r, "another topic");
        let r1 = reply(&mut bob, r, root, "answer one");
        let ev = event(&mut alice, r, seq(&r1));
        assert_eq!(
            (ty(&ev), &ev["reply_to"], &ev["text"]),
            ("message", &json!(root), &json!("answer one"))
        );
        let mut replies = vec![r1];
        let o1 = reply(&mut alice, r, other_root, "elsewhere");
        for i in 2..=5 {
            let c = if i % 2 == 0 { &mut alice } else { &mut bob };
            replies.push(reply(c, r, root, &format!("answer {i}")));
        }
        let rs: Vec<u64> = replies.iter().map(seq).collect();
        let edit_ev = edit(&mut bob, r, rs[0], "answer one, edited");

        // Threads are one level deep; missing targets and non-messages are not_found.
        for target in [rs[1], 999, seq(&edit_ev)] {
            let f = json!({"type": "send", "room": r, "text": "x", "reply_to": target});
            alice.call_err(f, "not_found");
        }
        for f in [
            json!({"type": "send", "room": r, "text": "x", "reply_to": "1"}),
            json!({"type": "send", "room": r, "text": "x", "reply_to": -1}),
        ] {
            alice.call_err(f, "bad_request");
        }

        // The whole thread, in current state, ascending, without the other thread's reply.
        let t = alice.call(json!({"type": "thread", "room": r, "root": root, "id": "t1"}));
        assert_eq!(
            (ty(&t), t["id"].as_str(), &t["room"], &t["root"], &t["more"]),
            ("thread", Some("t1"), &json!(r), &json!(root), &json!(false)),
            "{t}"
        );
        let msgs = t["messages"].as_array().unwrap();
        assert_eq!(msgs.iter().map(seq).collect::<Vec<_>>(), rs, "{t}");
        for m in msgs {
            assert_eq!((ty(m), &m["room"], &m["reply_to"]), ("message", &json!(r), &json!(root)));
        }
        assert_eq!(msgs[0]["text"], "answer one, edited");
        assert_eq!(msgs[0]["edited_ts"], edit_ev["ts"]);
        assert_eq!(msgs[2]["text"], "answer 3");
        let other = bob.call(json!({"type": "thread", "room": r, "root": other_root}));
        assert_eq!(keys(other["messages"].as_array().unwrap()), [key(r, seq(&o1))]);

        // Paging: first `limit` after `after`.
        let page = |c: &mut Client, after: Option<u64>, limit: u64| {
            let mut f = json!({"type": "thread", "room": r, "root": root, "limit": limit});
            if let Some(a) = after {
                f["after"] = json!(a);
            }
            let t = c.call(f);
            assert_eq!(ty(&t), "thread", "{t}");
            let s: Vec<u64> = t["messages"].as_array().unwrap().iter().map(seq).collect();
            (s, t["more"].clone())
        };
        assert_eq!(page(&mut bob, None, 2), (rs[0..2].to_vec(), json!(true)));
        assert_eq!(page(&mut bob, Some(rs[1]), 2), (rs[2..4].to_vec(), json!(true)));
        assert_eq!(page(&mut bob, Some(rs[3]), 2), (rs[4..].to_vec(), json!(false)));
        assert_eq!(page(&mut bob, Some(rs[2] - 1), 1), (vec![rs[2]], json!(true)));
        assert_eq!(page(&mut bob, Some(rs[4]), 5), (vec![], json!(false)));

        // The root carries the count and the last reply's ts.
        let rootm = item(&mut bob, r, root);
        assert_eq!(rootm["replies"], 5, "{rootm}");
        assert_eq!(rootm["last_reply_ts"], replies[4]["ts"], "{rootm}");
        assert!(absent(&rootm, "reply_to"), "{rootm}");

        // A deleted reply shows as deleted and is not counted.
        del(&mut bob, r, rs[2]);
        let t = bob.call(json!({"type": "thread", "room": r, "root": root}));
        let m = &t["messages"][2];
        assert_eq!((seq(m), &m["deleted"]), (rs[2], &json!(true)), "{t}");
        assert!(absent(m, "text"), "{m}");
        let rootm = item(&mut bob, r, root);
        assert_eq!(rootm["replies"], 4, "deleted replies are not counted: {rootm}");
        assert_eq!(rootm["last_reply_ts"], replies[4]["ts"], "{rootm}");

        // `thread` errors.
        for (f, code) in [
            (json!({"type": "thread", "room": r, "root": rs[0]}), "not_found"),
            (json!({"type": "thread", "room": r, "root": 999}), "not_found"),
            (json!({"type": "thread", "room": r, "root": seq(&edit_ev)}), "not_found"),
            (json!({"type": "thread", "room": r}), "bad_request"),
            (json!({"type": "thread", "room": r, "root": root, "limit": 0}), "bad_request"),
            (json!({"type": "thread", "room": r, "root": root, "limit": -3}), "bad_request"),
            (json!({"type": "thread", "room": r, "root": root, "after": "x"}), "bad_request"),
        ] {
            alice.call_err(f, code);
        }
        carol.call_err(json!({"type": "thread", "room": r, "root": root}), "not_member");

        // A deleted root still has its thread but takes no new replies.
        del(&mut alice, r, root);
        let t = bob.call(json!({"type": "thread", "room": r, "root": root}));
        assert_eq!(ty(&t), "thread", "a deleted root still has its thread: {t}");
        assert_eq!(t["messages"].as_array().unwrap().len(), 5, "{t}");
        let f = json!({"type": "send", "room": r, "text": "late", "reply_to": root});
        bob.call_err(f, "not_found");

        // Replies work in DM rooms too, and `dm` takes reply_to.
        let q = ok(&mut alice, json!({"type": "dm", "to": "bob", "text": "dm q"}));
        let dm_room = q["room"].as_str().unwrap().to_string();
        let a =
            ok(&mut bob, json!({"type": "dm", "to": "alice", "text": "dm a", "reply_to": seq(&q)}));
        let ev = event(&mut alice, &dm_room, seq(&a));
        assert_eq!(ev["reply_to"], seq(&q), "{ev}");
        let f = json!({"type": "dm", "to": "alice", "text": "x", "reply_to": seq(&a)});
        bob.call_err(f, "not_found");
        let t = alice.call(json!({"type": "thread", "room": dm_room, "root": seq(&q)}));
        assert_eq!(keys(t["messages"].as_array().unwrap()), [key(&dm_room, seq(&a))]);
        for f in [
            json!({"type": "thread", "room": dm_room, "root": seq(&q)}),
            json!({"type": "edit", "room": dm_room, "seq": seq(&q), "text": "x"}),
            json!({"type": "delete", "room": dm_room, "seq": seq(&q)}),
            json!({"type": "react", "room": dm_room, "seq": seq(&q), "emoji": "👍", "on": true}),
            json!({"type": "send", "room": dm_room, "text": "x", "reply_to": seq(&q)}),
        ] {
            carol.call_err(f, "forbidden");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// mentions
// ---------------------------------------------------------------------------------------------

#[test]
fn mentions_follow_the_boundary_rules_and_edits() {
    let s = server(&[]);
    for enc in ENCS {
        let room = format!("mn-{}", tag(enc));
        let r = room.as_str();
        let mut alice = conn(&s, "alice", enc);
        for u in ["bob", "bo", "carol_1", "d.e"] {
            conn(&s, u, enc).join(r);
        }
        alice.join(r);
        let cases: &[(&str, &[&str])] = &[
            ("@bob hi", &["bob"]),
            ("thanks @bob.", &["bob"]),
            ("thanks @bob!", &["bob"]),
            ("(@bob)", &["bob"]),
            ("line one\n@bob", &["bob"]),
            ("x@bob", &[]),
            ("1@bob", &[]),
            ("_@bob", &[]),
            (".@bob", &[]),
            ("-@bob", &[]),
            ("é@bob", &[]),
            ("mail bob@bob.com", &[]),
            ("@@bob", &["bob"]),
            ("@bo", &["bo"]),
            ("@bob", &["bob"]),
            ("@bo!", &["bo"]),
            ("@bobby", &[]),
            ("@bob1", &[]),
            ("@bob_", &[]),
            ("@bob-", &[]),
            ("@bobé", &[]),
            ("@Bob", &[]),
            ("@carol", &[]),
            ("@carol_1, hi", &["carol_1"]),
            ("@carol_12", &[]),
            ("@dave", &[]),
            ("@bob.smith", &["bob"]),
            ("@bob @bo @bob and @bo again @alice", &["bob", "bo", "alice"]),
            ("@bo,@bob", &["bo", "bob"]),
            ("a@bo @bob", &["bob"]),
            ("@", &[]),
            ("ask @d.e.", &["d.e"]),
            ("ask @d.e", &["d.e"]),
            ("@d.", &[]),
        ];
        let mut sent = Vec::new();
        for (text, want) in cases {
            let a = ok(&mut alice, json!({"type": "send", "room": r, "text": text}));
            let ev = event(&mut alice, r, seq(&a));
            assert_eq!(mentions(&ev), sv(want), "live mentions of {text:?}: {ev}");
            sent.push((seq(&a), *text, *want));
        }
        let h = all_history(&mut alice, r);
        for (sq, text, want) in &sent {
            let m = h.iter().find(|m| seq(m) == *sq).unwrap();
            assert_eq!(mentions(m), sv(want), "history mentions of {text:?}: {m}");
        }
        // Membership at that moment: dave is mentioned once he is a member.
        let before = send(&mut alice, r, "hey @dave");
        conn(&s, "dave", enc).join(r);
        let a = ok(&mut alice, json!({"type": "send", "room": r, "text": "hey @dave"}));
        assert_eq!(mentions(&event(&mut alice, r, seq(&a))), ["dave"]);
        assert_eq!(mentions(&event(&mut alice, r, before)), Vec::<String>::new());

        // Edits recompute them.
        let m = send(&mut alice, r, "nobody here");
        for (text, want) in
            [("now @bo", &["bo"][..]), ("then @bob and @bo", &["bob", "bo"][..]), ("bye", &[][..])]
        {
            let e = edit(&mut alice, r, m, text);
            let ev = event(&mut alice, r, seq(&e));
            assert_eq!(mentions(&ev), sv(want), "edit event for {text:?}: {ev}");
            assert_eq!(mentions(&item(&mut alice, r, m)), sv(want), "current mentions of {text:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// hello counts
// ---------------------------------------------------------------------------------------------

/// The hello entry for `room` as (seq, read, unread, mentions).
fn counts(c: &Client, room: &str) -> (u64, u64, u64, u64) {
    let e = hello_room(&c.hello, room).unwrap_or_else(|| panic!("{room} not in {}", c.hello));
    let f = |k: &str| e[k].as_u64().unwrap_or_else(|| panic!("hello room without {k}: {e}"));
    (f("seq"), f("read"), f("unread"), f("mentions"))
}

#[test]
fn hello_counts_unread_and_mentions_above_the_read_marker() {
    let s = server(&[]);
    for enc in ENCS {
        let room = format!("cnt-{}", tag(enc));
        let r = room.as_str();
        let mut alice = conn(&s, "alice", enc);
        let mut bob = conn(&s, "bob", enc);
        let mut carol = conn(&s, "carol", enc);
        for c in [&mut alice, &mut bob, &mut carol] {
            c.join(r);
        }
        let fresh = conn(&s, "bob", enc);
        assert_eq!(counts(&fresh, r), (0, 0, 0, 0), "{}", fresh.hello);
        drop(fresh);
        let own = send(&mut bob, r, "@bob note to self");
        bob.close();

        // bob is offline for all of this.
        let a1 = send(&mut alice, r, "hello");
        let a2 = send(&mut alice, r, "hey @bob");
        let a3 = send(&mut alice, r, "@bob look");
        let a4 = send(&mut alice, r, "plain");
        let a5 = send(&mut alice, r, "@bob again");
        send(&mut carol, r, "@bobby nope");
        let a6 = send(&mut alice, r, "@bob and @bob");
        del(&mut alice, r, a3);
        edit(&mut alice, r, a4, "now @bob");
        edit(&mut alice, r, a2, "no longer");
        let last = seq(&react(&mut carol, r, a1, "👍", true));
        assert!(own < a1 && a6 < last);

        let mut bob = conn(&s, "bob", enc);
        // unread: a1 a2 a4 a5 c1 a6 (not own, not a3); mentions: a4 a5 a6.
        assert_eq!(counts(&bob, r), (last, 0, 6, 3), "{}", bob.hello);
        // alice: bob's and carol's messages; nobody mentioned her.
        let alice2 = conn(&s, "alice", enc);
        assert_eq!(counts(&alice2, r), (last, 0, 2, 0), "{}", alice2.hello);

        bob.send_json(json!({"type": "read", "room": r, "seq": a4}));
        bob.ping_barrier();
        let bob2 = conn(&s, "bob", enc);
        assert_eq!(counts(&bob2, r), (last, a4, 3, 2), "{}", bob2.hello);
        // An edit below the marker changes nothing; one above it recomputes.
        edit(&mut alice, r, a1, "hello @bob");
        let e = edit(&mut alice, r, a5, "again, quietly");
        let bob3 = conn(&s, "bob", enc);
        assert_eq!(counts(&bob3, r), (seq(&e), a4, 3, 1), "{}", bob3.hello);
    }
}

// ---------------------------------------------------------------------------------------------
// search
// ---------------------------------------------------------------------------------------------

#[test]
fn search_matches_word_prefixes_in_the_users_rooms_newest_first() {
    let s = server(&[]);
    for enc in ENCS {
        let t = tag(enc);
        let (s1, s2, s3) = (format!("s1{t}"), format!("s2{t}"), format!("s3{t}"));
        let (alice_id, bob_id, carol_id) =
            (format!("alice{t}"), format!("bob{t}"), format!("carol{t}"));
        let mut alice = conn(&s, &alice_id, enc);
        let mut bob = conn(&s, &bob_id, enc);
        let _carol = conn(&s, &carol_id, enc);
        alice.join(&s1);
        alice.join(&s2);
        bob.join(&s1);
        bob.join(&s3);
        // What alice must never see comes first.
        let hidden = send(&mut bob, &s3, "rocket secret");
        let bc = ok(&mut bob, json!({"type": "dm", "to": carol_id, "text": "rocket private"}));
        let a1 = ok(
            &mut alice,
            json!({"type": "send", "room": s1, "text": "Deploying the Rocket launcher today"}),
        );
        let a2 = ok(&mut bob, json!({"type": "send", "room": s1, "text": "rocket science"}));
        send(&mut alice, &s1, "unrelated chatter");
        let a3 = ok(&mut alice, json!({"type": "send", "room": s2, "text": "ROCKETS are loud"}));
        let w = ok(&mut alice, json!({"type": "send", "room": s2, "text": "launch window"}));
        let a4 = ok(&mut bob, json!({"type": "dm", "to": alice_id, "text": "rocket dm"}));
        let u = ok(&mut alice, json!({"type": "send", "room": s2, "text": "Über cool v2 release"}));
        let dm_ab = a4["room"].as_str().unwrap().to_string();
        let dm_bc = bc["room"].as_str().unwrap().to_string();

        // bob sees his hidden ones: they are indexed.
        search_until(&mut bob, json!({"query": "rocket secret"}), "s3 indexed", |m| {
            keys(m) == [key(&s3, hidden)]
        });
        search_until(&mut bob, json!({"query": "private"}), "the dm indexed", |m| {
            keys(m) == [key(&dm_bc, seq(&bc))]
        });
        // Newest first: by ts, then room, then seq, all descending.
        let mut expect: Vec<(u64, String, u64)> =
            [(&a1, &s1), (&a2, &s1), (&a3, &s2), (&a4, &dm_ab)]
                .iter()
                .map(|(a, room)| (ts(a), room.to_string(), seq(a)))
                .collect();
        expect.sort();
        expect.reverse();
        let want: Vec<(String, u64)> = expect.iter().map(|(_, r, s)| (r.clone(), *s)).collect();
        let res =
            search_until(&mut alice, json!({"query": "rock", "id": "q1"}), "4 results", |m| {
                m.len() >= 4
            });
        assert_eq!(res["id"], "q1");
        assert_eq!(res["query"], "rock", "{res}");
        assert!(absent(&res, "cursor"), "one page only: {res}");
        let msgs = res["messages"].as_array().unwrap();
        assert_eq!(keys(msgs), want, "{res}");
        for m in msgs {
            assert_eq!(ty(m), "message", "{m}");
            assert!(m["from"].is_string() && m["ts"].is_u64() && m["text"].is_string(), "{m}");
        }
        assert_eq!(
            msgs.iter().find(|m| m["room"] == s1 && seq(m) == seq(&a2)).unwrap()["from"],
            bob_id
        );

        let q = |c: &mut Client, f: Value| -> Vec<(String, u64)> {
            let mut f = f;
            f["type"] = json!("search");
            let r = c.call(f.clone());
            assert_eq!(ty(&r), "search_results", "{f}: {r}");
            keys(r["messages"].as_array().unwrap())
        };
        let k1 = key(&s1, seq(&a1));
        for query in ["ROCKET launch", "rocket, LAUNCH!", "the rocket", "deploy TODAY"] {
            assert_eq!(q(&mut alice, json!({"query": query})), vec![k1.clone()], "{query}");
        }
        let mut launch = q(&mut alice, json!({"query": "launch"}));
        launch.sort();
        let mut lw = vec![k1.clone(), key(&s2, seq(&w))];
        lw.sort();
        assert_eq!(launch, lw, "launch is a prefix of launcher");
        assert_eq!(q(&mut alice, json!({"query": "rockets loud"})), [key(&s2, seq(&a3))]);
        assert_eq!(q(&mut alice, json!({"query": "science rocket"})), [key(&s1, seq(&a2))]);
        assert_eq!(q(&mut alice, json!({"query": "über"})), [key(&s2, seq(&u))]);
        assert_eq!(q(&mut alice, json!({"query": "V2"})), [key(&s2, seq(&u))]);
        for none in ["ocket", "rocketsx", "2", "rocket zebra", "secret", "private"] {
            assert_eq!(q(&mut alice, json!({"query": none})), [], "{none}");
        }
        // The room filter.
        let mut in_s1 = want.clone();
        in_s1.retain(|(r, _)| *r == s1);
        assert_eq!(q(&mut alice, json!({"query": "rock", "room": s1})), in_s1);
        assert_eq!(q(&mut alice, json!({"query": "rock", "room": dm_ab})), [key(&dm_ab, seq(&a4))]);
        alice.call_err(json!({"type": "search", "query": "rock", "room": s3}), "not_member");
        alice.call_err(json!({"type": "search", "query": "rock", "room": dm_bc}), "forbidden");
        // Bad queries.
        for bad in [json!(""), json!("   "), json!("!!! ???"), json!(5), json!(null)] {
            alice.call_err(json!({"type": "search", "query": bad}), "bad_request");
        }
        alice.call_err(json!({"type": "search"}), "bad_request");
        alice.call_err(json!({"type": "search", "query": "rock", "limit": 0}), "bad_request");
        let long = alice.call(json!({"type": "search", "query": "a".repeat(201)}));
        assert_eq!(ty(&long), "error", "a 201-character query: {long}");
        assert!(
            long["code"] == "bad_request" || long["code"] == "too_long",
            "a 201-character query: {long}"
        );
        let max = alice.call(json!({"type": "search", "query": "é".repeat(200)}));
        assert_eq!(ty(&max), "search_results", "200 scalar values is fine: {max}");

        // Edits and deletes show in search.
        let x = send(&mut alice, &s2, &format!("alpha{t} centauri"));
        search_until(&mut alice, json!({"query": format!("alpha{t}")}), "the new message", |m| {
            keys(m) == [key(&s2, x)]
        });
        let e = edit(&mut alice, &s2, x, &format!("omega{t} nebula"));
        search_until(&mut alice, json!({"query": format!("alpha{t}")}), "the old text gone", |m| {
            m.is_empty()
        });
        let res =
            search_until(&mut alice, json!({"query": format!("omega{t}")}), "the edit", |m| {
                keys(m) == [key(&s2, x)]
            });
        let hit = &res["messages"][0];
        assert_eq!(hit["text"], format!("omega{t} nebula"), "{hit}");
        assert_eq!(hit["edited_ts"], e["ts"], "search items show the current state: {hit}");
        del(&mut alice, &s2, x);
        search_until(&mut alice, json!({"query": format!("omega{t}")}), "the delete", |m| {
            m.is_empty()
        });
        // Leaving a room leaves its messages out.
        ok_left(&mut alice, &s2);
        assert_eq!(q(&mut alice, json!({"query": "rockets"})), []);
        alice.call_err(json!({"type": "search", "query": "rock", "room": s2}), "not_member");
    }
}

fn ok_left(c: &mut Client, room: &str) {
    let l = c.call(json!({"type": "leave", "room": room}));
    assert_eq!(ty(&l), "left", "{l}");
}

/// Under steady traffic the index commits only every 30 s; a new message shows in search at
/// once anyway, from what was indexed since the last commit (PROTOCOL.md: within 2 s). Without
/// that list, the needle would wait for the commit, past `SETTLE`.
#[test]
fn search_finds_a_new_message_while_traffic_never_pauses() {
    let s = server(&[]);
    let mut alice = conn(&s, "alice", Enc::Json);
    alice.join("busy");
    let needle = send(&mut alice, "busy", "a needle in the haystack");
    let start = Instant::now();
    for n in 0.. {
        // More hay before every look: the indexer never sees a quiet poll.
        send(&mut alice, "busy", &format!("hay {n}"));
        let r = alice.call(json!({"type": "search", "query": "needle"}));
        let msgs = r["messages"].as_array().unwrap_or_else(|| panic!("{r}"));
        if keys(msgs) == [key("busy", needle)] {
            break;
        }
        assert!(msgs.is_empty(), "only the needle matches: {r}");
        assert!(start.elapsed() < SETTLE, "the needle never showed under traffic; last: {r}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn search_pages_with_an_opaque_cursor_until_it_is_absent() {
    let s = server(&[]);
    let mut alice = conn(&s, "alice", Enc::MsgPack);
    let mut json_c = conn(&s, "alice", Enc::Json);
    alice.join("pg");
    let frames: Vec<Value> = (0..55)
        .map(|i| json!({"type": "send", "room": "pg", "text": format!("paging item {i}")}))
        .collect();
    let acks = pipeline(&mut alice, frames);
    let mut all: Vec<u64> = acks.iter().map(seq).collect();
    all.sort_unstable();
    all.reverse();
    // Wait until every message is indexed (two pages of 50).
    let start = Instant::now();
    loop {
        let p = alice.call(json!({"type": "search", "query": "paging", "limit": 50}));
        let n1 = p["messages"].as_array().map_or(0, Vec::len);
        let n2 = match p.get("cursor").and_then(Value::as_str) {
            Some(c) => {
                let p2 = alice
                    .call(json!({"type": "search", "query": "paging", "limit": 50, "cursor": c}));
                p2["messages"].as_array().map_or(0, Vec::len)
            }
            None => 0,
        };
        if n1 + n2 == 55 {
            break;
        }
        assert!(start.elapsed() < SETTLE, "search never found all 55 messages: {p}");
        thread::sleep(Duration::from_millis(100));
    }
    // An edit keeps the message's place (newest first is by the message's ts).
    let oldest = *all.last().unwrap();
    edit(&mut alice, "pg", oldest, "paging item 0, edited");
    search_until(&mut alice, json!({"query": "edited"}), "the edit indexed", |m| m.len() == 1);
    // Default 20, capped at 50.
    let d = alice.call(json!({"type": "search", "query": "paging"}));
    assert_eq!(d["messages"].as_array().unwrap().len(), 20, "default limit: {d}");
    assert!(d["cursor"].is_string(), "{d}");
    let big = alice.call(json!({"type": "search", "query": "paging", "limit": 1000}));
    assert_eq!(big["messages"].as_array().unwrap().len(), 50, "limit capped at 50: {big}");
    assert!(big["cursor"].is_string(), "{big}");
    for lim in [json!(0), json!(-1)] {
        alice.call_err(json!({"type": "search", "query": "paging", "limit": lim}), "bad_request");
    }
    // Pages of 11: five pages, the cursor absent exactly on the last; the cursor works on
    // another connection (and encoding) of the same user.
    let mut got = Vec::new();
    let mut newer = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..5 {
        let mut f = json!({"type": "search", "query": "paging", "limit": 11});
        if let Some(c) = &cursor {
            f["cursor"] = json!(c);
        }
        let c = if page % 2 == 0 { &mut alice } else { &mut json_c };
        let r = c.call(f);
        assert_eq!(ty(&r), "search_results", "{r}");
        let ms = r["messages"].as_array().unwrap();
        assert_eq!(ms.len(), 11, "page {page}: {r}");
        got.extend(ms.iter().map(seq));
        cursor = r.get("cursor").and_then(Value::as_str).map(str::to_string);
        assert_eq!(cursor.is_some(), page < 4, "cursor on page {page}: {r}");
        if page == 0 {
            // Newer matches arriving meanwhile do not shift the pages that follow.
            let fresh: Vec<Value> = (0..3)
                .map(|i| json!({"type": "send", "room": "pg", "text": format!("paging fresh {i}")}))
                .collect();
            let acks = pipeline(&mut alice, fresh);
            newer = acks.iter().rev().map(seq).collect();
            search_until(&mut alice, json!({"query": "fresh"}), "fresh indexed", |m| m.len() == 3);
        }
    }
    assert_eq!(got, all, "the pages are every result once, newest first");
    let all: Vec<u64> = newer.into_iter().chain(all).collect();
    // Over HTTP, the same.
    let t = tok("alice", json!({}));
    let (st, v) = api(&s, "GET", "/api/search?q=paging&limit=40", Some(&t), "");
    assert_eq!(st, 200, "{v}");
    let mut hs: Vec<u64> = v["messages"].as_array().unwrap().iter().map(seq).collect();
    let c = v["cursor"].as_str().unwrap_or_else(|| panic!("cursor: {v}")).to_string();
    let (st, v) =
        api(&s, "GET", &format!("/api/search?q=paging&limit=40&cursor={}", pct(&c)), Some(&t), "");
    assert_eq!(st, 200, "{v}");
    hs.extend(v["messages"].as_array().unwrap().iter().map(seq));
    assert!(absent(&v, "cursor"), "{v}");
    assert_eq!(hs, all);
    for bad in ["/api/search?q=", "/api/search?q=%21%21", "/api/search", "/api/search?q=x&limit=0"]
    {
        let (st, v) = api(&s, "GET", bad, Some(&t), "");
        assert_eq!((st, v["error"].as_str()), (400, Some("bad_request")), "{bad}: {v}");
    }
    let (st, _) = api(&s, "GET", "/api/search?q=paging", None, "");
    assert_eq!(st, 401);
    let (st, v) = api(&s, "GET", "/api/search?q=paging&room=elsewhere", Some(&t), "");
    assert_eq!((st, v["error"].as_str()), (403, Some("not_member")), "{v}");
    let (st, v) = api(&s, "GET", "/api/search?q=paging&limit=1000", Some(&t), "");
    assert_eq!((st, v["messages"].as_array().map(Vec::len)), (200, Some(50)), "capped: {v}");
    assert!(v["cursor"].is_string(), "{v}");
    let mut bob = conn(&s, "bob", Enc::Json);
    ok(&mut bob, json!({"type": "dm", "to": "carol", "text": "secret stuff"}));
    let path = format!("/api/search?q=secret&room={}", pct("dm:bob:carol"));
    let (st, v) = api(&s, "GET", &path, Some(&t), "");
    assert_eq!((st, v["error"].as_str()), (403, Some("forbidden")), "another pair's DM: {v}");
}

// ---------------------------------------------------------------------------------------------
// room directory
// ---------------------------------------------------------------------------------------------

/// A directory entry: (room, members, seq, ts).
pub(crate) type Entry = (String, u64, u64, u64);

/// `rooms` entries, plus the cursor.
pub(crate) fn dir(c: &mut Client, f: Value) -> (Vec<Entry>, Option<String>) {
    let mut f = f;
    f["type"] = json!("rooms");
    let r = c.call(f.clone());
    assert_eq!(ty(&r), "room_list", "{f}: {r}");
    let rooms = r["rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|e| {
            let n = |k: &str| e[k].as_u64().unwrap_or_else(|| panic!("{k} in {e}"));
            (e["room"].as_str().unwrap().to_string(), n("members"), n("seq"), n("ts"))
        })
        .collect();
    (rooms, r.get("cursor").and_then(Value::as_str).map(str::to_string))
}

pub(crate) fn names(v: &[Entry]) -> Vec<&str> {
    v.iter().map(|e| e.0.as_str()).collect()
}

#[test]
fn the_room_directory_lists_rooms_by_name_with_counts() {
    let s = server(&[]);
    let mut alice = conn(&s, "alice", Enc::Json);
    let mut bob = conn(&s, "bob", Enc::MsgPack);
    for r in ["ab", "a_b", "a0", "a.b", "a-b", "zulu"] {
        alice.join(r);
    }
    bob.join("a0");
    bob.join("gone");
    ok(&mut alice, json!({"type": "dm", "to": "bob", "text": "dm text"}));
    let m1 = ok(&mut bob, json!({"type": "send", "room": "a0", "text": "one"}));
    let e = edit(&mut bob, "a0", seq(&m1), "one!");

    let (all, cur) = dir(&mut alice, json!({}));
    assert!(cur.is_none());
    assert_eq!(names(&all), ["a-b", "a.b", "a0", "a_b", "ab", "gone", "zulu"], "byte order, no DM");
    assert_eq!(all[2], ("a0".to_string(), 2, seq(&e), ts(&e)), "members, seq, last event's ts");
    assert_eq!(all[0], ("a-b".to_string(), 1, 0, 0));
    // Prefix and cursor paging, in both encodings.
    let (p1, c1) = dir(&mut bob, json!({"prefix": "a", "limit": 2, "id": 1}));
    assert_eq!(names(&p1), ["a-b", "a.b"]);
    let c1 = c1.expect("a cursor after the first page");
    // A room created before the cursor's position does not shift the next page.
    alice.join("a--");
    let (p2, c2) = dir(&mut alice, json!({"prefix": "a", "limit": 2, "cursor": c1}));
    assert_eq!(names(&p2), ["a0", "a_b"]);
    let (p3, c3) = dir(&mut bob, json!({"prefix": "a", "limit": 2, "cursor": c2.expect("cursor")}));
    assert_eq!(names(&p3), ["ab"]);
    assert!(c3.is_none(), "no cursor on the last page");
    ok_left(&mut alice, "a--");
    assert_eq!(dir(&mut alice, json!({"prefix": "a.", "limit": 5})).0.len(), 1);
    assert_eq!(dir(&mut alice, json!({"prefix": "nomatch"})), (vec![], None));
    assert_eq!(dir(&mut alice, json!({"prefix": "dm"})), (vec![], None), "no DM rooms");
    for lim in [json!(0), json!(-2), json!("5")] {
        alice.call_err(json!({"type": "rooms", "limit": lim}), "bad_request");
    }
    // Joins and leaves are reflected once answered; an empty room disappears.
    let mut carol = conn(&s, "carol", Enc::Json);
    carol.join("zulu");
    assert_eq!(dir(&mut alice, json!({"prefix": "zulu"})).0, [("zulu".to_string(), 2, 0, 0)]);
    ok_left(&mut bob, "gone");
    ok_left(&mut carol, "zulu");
    let (all, _) = dir(&mut carol, json!({}));
    assert_eq!(names(&all), ["a-b", "a.b", "a0", "a_b", "ab", "zulu"]);
    assert_eq!(all[5].1, 1);

    // HTTP: the same directory.
    let t = tok("carol", json!({}));
    let (st, v) = api(&s, "GET", "/api/rooms?prefix=a&limit=3", Some(&t), "");
    assert_eq!(st, 200, "{v}");
    let rs = v["rooms"].as_array().unwrap();
    assert_eq!(
        rs.iter().map(|e| e["room"].as_str().unwrap()).collect::<Vec<_>>(),
        ["a-b", "a.b", "a0"]
    );
    assert_eq!(
        (&rs[2]["members"], &rs[2]["seq"], &rs[2]["ts"]),
        (&json!(2), &json!(seq(&e)), &e["ts"])
    );
    let c = v["cursor"].as_str().unwrap_or_else(|| panic!("cursor: {v}")).to_string();
    let (st, v) =
        api(&s, "GET", &format!("/api/rooms?prefix=a&limit=3&cursor={}", pct(&c)), Some(&t), "");
    assert_eq!(st, 200, "{v}");
    let rest: Vec<&str> =
        v["rooms"].as_array().unwrap().iter().map(|e| e["room"].as_str().unwrap()).collect();
    assert_eq!(rest, ["a_b", "ab"]);
    assert!(absent(&v, "cursor"), "{v}");
    let (st, v) = api(&s, "GET", "/api/rooms", Some(&t), "");
    assert_eq!((st, v["rooms"].as_array().map(Vec::len)), (200, Some(6)), "{v}");
    let (st, v) = api(&s, "GET", "/api/rooms?limit=0", Some(&t), "");
    assert_eq!((st, v["error"].as_str()), (400, Some("bad_request")), "{v}");
    assert_eq!(api(&s, "GET", "/api/rooms", None, "").0, 401);
}

// ---------------------------------------------------------------------------------------------
// limits
// ---------------------------------------------------------------------------------------------

#[test]
fn limits_over_the_maximum_are_capped_and_below_one_refused() {
    let s = server(&[]);
    let mut c = conn(&s, "alice", Enc::Json);
    c.join("cap");
    let root = send(&mut c, "cap", "root");
    let frames: Vec<Value> = (0..104)
        .map(|i| json!({"type": "send", "room": "cap", "text": format!("capped reply {i}"), "reply_to": root}))
        .collect();
    pipeline(&mut c, frames);
    let h = c.call(json!({"type": "history", "room": "cap", "limit": 1000}));
    assert_eq!((h["messages"].as_array().map(Vec::len), &h["more"]), (Some(100), &json!(true)));
    let t = c.call(json!({"type": "thread", "room": "cap", "root": root, "limit": 1000}));
    assert_eq!(
        (t["messages"].as_array().map(Vec::len), &t["more"]),
        (Some(100), &json!(true)),
        "{t}"
    );
    let t = c.call(json!({"type": "thread", "room": "cap", "root": root}));
    assert_eq!((t["messages"].as_array().map(Vec::len), &t["more"]), (Some(50), &json!(true)));
    let t = c.call(json!({"type": "thread", "room": "cap", "root": root, "after": root + 100}));
    assert_eq!((t["messages"].as_array().map(Vec::len), &t["more"]), (Some(4), &json!(false)));
    // 101 rooms (cap is a member), listed 100 at a time at most.
    let joins: Vec<Value> =
        (0..101).map(|i| json!({"type": "join", "room": format!("cap{i:03}")})).collect();
    pipeline(&mut c, joins);
    let (r, cur) = dir(&mut c, json!({"limit": 1000}));
    assert_eq!(r.len(), 100, "rooms capped at 100");
    let (r2, cur2) = dir(&mut c, json!({"cursor": cur.expect("cursor")}));
    assert_eq!(names(&r2), ["cap099", "cap100"]);
    assert!(cur2.is_none());
    let (r, _) = dir(&mut c, json!({}));
    assert_eq!(r.len(), 50, "rooms default limit is 50");
    for f in [
        json!({"type": "history", "room": "cap", "limit": 0}),
        json!({"type": "thread", "room": "cap", "root": root, "limit": 0}),
        json!({"type": "search", "query": "capped", "limit": 0}),
        json!({"type": "rooms", "limit": 0}),
        json!({"type": "rooms", "limit": -1}),
    ] {
        c.call_err(f, "bad_request");
    }
    let tk = tok("alice", json!({}));
    let (st, v) = api(&s, "GET", "/api/rooms?limit=1000", Some(&tk), "");
    assert_eq!((st, v["rooms"].as_array().map(Vec::len)), (200, Some(100)), "{v}");
    let (st, v) = api(&s, "GET", "/api/rooms/cap/messages?limit=1000", Some(&tk), "");
    assert_eq!((st, v["messages"].as_array().map(Vec::len)), (200, Some(100)));
    let r = search_until(&mut c, json!({"query": "capped", "limit": 1000}), "50 results", |m| {
        m.len() >= 50
    });
    assert_eq!(r["messages"].as_array().unwrap().len(), 50, "search capped at 50");
}

// ---------------------------------------------------------------------------------------------
// default_rooms, display names, refresh
// ---------------------------------------------------------------------------------------------

#[test]
fn default_rooms_are_joined_on_the_first_connection_ever_only() {
    let mut s = server(&["--default-rooms", "general,random"]);
    let mut alice = conn(&s, "alice", Enc::Json);
    for r in ["general", "random"] {
        assert_eq!(counts(&alice, r), (0, 0, 0, 0), "{}", alice.hello);
    }
    assert_eq!(alice.hello["rooms"].as_array().unwrap().len(), 2, "{}", alice.hello);
    // Subscribed already: bob's message arrives without a join.
    let mut bob = conn(&s, "bob", Enc::MsgPack);
    let a = ok(&mut bob, json!({"type": "send", "room": "general", "text": "hi all"}));
    assert_eq!(event(&mut alice, "general", seq(&a))["text"], "hi all");
    ok_left(&mut alice, "general");
    let again = conn(&s, "alice", Enc::Json);
    assert!(hello_room(&again.hello, "general").is_none(), "rejoined: {}", again.hello);
    assert!(hello_room(&again.hello, "random").is_some(), "{}", again.hello);
    drop((alice, again));
    s.restart();
    let back = conn(&s, "alice", Enc::Json);
    assert!(hello_room(&back.hello, "general").is_none(), "rejoined after restart: {}", back.hello);
    let mut carol = conn(&s, "carol", Enc::Json);
    assert_eq!(counts(&carol, "general"), (1, 0, 1, 0), "{}", carol.hello);
    let j = carol.join("general");
    assert_eq!(sorted_strs(&j["members"]), ["bob", "carol"]);
}

/// `chinwag serve ARGS` must be refused: exit 2 and one stderr line naming `setting` (any of
/// `|`-separated alternatives).
fn refused(args: &[&str], setting: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path());
    cmd.args(args).env("CHINWAG_SECRET", SECRET);
    let f = run_bounded(cmd, Duration::from_secs(15));
    assert!(f.status.is_some(), "{args:?}: still running after 15 s instead of refusing");
    assert_eq!(f.code(), 2, "{args:?}: exit status; stderr: {}", f.stderr);
    let lines: Vec<&str> = f.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: exactly one stderr line, got {lines:#?}");
    assert!(
        setting.split('|').any(|name| lines[0].contains(name)),
        "{args:?}: the line must name `{setting}`: {lines:?}"
    );
}

#[test]
fn default_rooms_come_from_toml_arrays_and_bad_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("chinwag.toml");
    std::fs::write(&cfg, "default_rooms = [\"lobby\", \"help\"]\n").unwrap();
    let s = server(&["--config", cfg.to_str().unwrap()]);
    let c = conn(&s, "alice", Enc::MsgPack);
    let rooms: Vec<Value> =
        c.hello["rooms"].as_array().unwrap().iter().map(|r| r["room"].clone()).collect();
    assert_eq!(sorted_strs(&json!(rooms)), ["help", "lobby"], "{}", c.hello);
    refused(&["--default-rooms", "ok,Bad!"], "default");
    refused(&["--default-rooms", "dm:alice:bob"], "default");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "default_rooms = \"lobby\"\n").unwrap();
    refused(&["--config", bad.to_str().unwrap()], "default_rooms|config");
}

#[test]
fn display_names_come_from_the_latest_token() {
    let s = server(&[]);
    let named = |user: &str, name: &str| tok(user, json!({"name": name}));
    let mut alice =
        Client::connect(s.addr, Auth::Bearer(&named("alice", "Alice Liddell")), Enc::Json);
    assert_eq!(alice.hello["name"], "Alice Liddell", "{}", alice.hello);
    let mut bob = conn(&s, "bob", Enc::MsgPack);
    assert!(absent(&bob.hello, "name"), "{}", bob.hello);
    alice.join("n");
    let j = bob.join("n");
    assert_eq!(j["names"], json!({"alice": "Alice Liddell"}), "{j}");
    // A token without a name leaves it unchanged; a new name replaces it.
    let plain = conn(&s, "alice", Enc::Json);
    assert!(absent(&plain.hello, "name"), "{}", plain.hello);
    assert_eq!(bob.join("n")["names"], json!({"alice": "Alice Liddell"}));
    let zoe = "Zoë 🦀 Ünïcode";
    let a2 = Client::connect(s.addr, Auth::Bearer(&named("alice", zoe)), Enc::MsgPack);
    assert_eq!(a2.hello["name"], zoe);
    let j = bob.join("n");
    assert_eq!(j["names"], json!({"alice": zoe}), "{j}");
    // The HTTP API counts too.
    let (st, v) = api(&s, "GET", "/api/rooms/n/messages", Some(&named("bob", "Robert")), "");
    assert_eq!(st, 200, "{v}");
    let j = alice.join("n");
    assert_eq!(j["names"], json!({"alice": zoe, "bob": "Robert"}), "{j}");
    // 64 scalar values is fine; invalid names are 401.
    let long = "é".repeat(64);
    let c = Client::connect(s.addr, Auth::Bearer(&named("carol", &long)), Enc::Json);
    assert_eq!(c.hello["name"], long.as_str());
    let j = bob.join("n");
    assert_eq!(j["names"], json!({"alice": zoe, "bob": "Robert"}), "members only: {j}");
    let too_long = "é".repeat(65);
    for bad in ["", too_long.as_str(), "a\u{1}b", "new\nline", "tab\tx", "\u{7f}"] {
        match Client::try_connect(s.addr, Auth::Bearer(&named("dave", bad)), &[PROTO_JSON]) {
            Err(ConnectError::Http(401, _)) => {}
            Err(e) => panic!("name {bad:?}: expected 401, got {e:?}"),
            Ok(c) => panic!("name {bad:?} accepted: {}", c.hello),
        }
    }
    let bad = tok("dave", json!({"name": 5}));
    assert!(matches!(
        Client::try_connect(s.addr, Auth::Bearer(&bad), &[]),
        Err(ConnectError::Http(401, _))
    ));
}

#[test]
fn refresh_issues_a_fresh_token_and_the_connection_lives_on() {
    let s = server(&[]);
    for enc in ENCS {
        let now = now_s();
        let t = sign(
            &json!({"sub": "alice", "name": "Alice", "admin": true, "jti": format!("old-{}", tag(enc)),
                    "iat": now - 100, "exp": now + 3500}),
            SECRET,
        );
        let mut c = Client::connect(s.addr, Auth::Bearer(&t), enc);
        let r = c.call(json!({"type": "refresh", "id": "rf"}));
        assert_eq!((ty(&r), r["id"].as_str()), ("token", Some("rf")), "{r}");
        let nt = r["token"].as_str().unwrap_or_else(|| panic!("{r}")).to_string();
        let claims = verify(&nt, SECRET);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["name"], "Alice");
        assert_eq!(claims["admin"], true);
        assert!(
            claims["jti"].is_string() && claims["jti"] != format!("old-{}", tag(enc)),
            "{claims}"
        );
        let iat = claims["iat"].as_u64().expect("iat");
        let exp = claims["exp"].as_u64().expect("exp");
        assert!(iat + 300 >= now && iat <= now_s() + 300, "iat is now: {claims}");
        assert_eq!(exp - iat, 3600, "same lifetime: {claims}");
        assert_eq!(r["exp"], exp, "{r}");
        let again = c.call(json!({"type": "refresh"}));
        assert_ne!(verify(again["token"].as_str().unwrap(), SECRET)["jti"], claims["jti"]);
        let n = Client::connect(s.addr, Auth::Bearer(&nt), enc);
        assert_eq!(
            (n.hello["user"].as_str(), n.hello["name"].as_str()),
            (Some("alice"), Some("Alice"))
        );
    }
    // No iat: 30 days; no admin stays not admin.
    let t = sign(&json!({"sub": "bob", "exp": now_s() + 600}), SECRET);
    let mut c = Client::connect(s.addr, Auth::Bearer(&t), Enc::Json);
    let r = c.call(json!({"type": "refresh"}));
    let claims = verify(r["token"].as_str().unwrap_or_else(|| panic!("{r}")), SECRET);
    let (iat, exp) = (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap());
    assert_eq!(exp - iat, 30 * 86400, "{claims}");
    assert!(absent(&claims, "admin") || claims["admin"] == false, "{claims}");
    assert!(absent(&claims, "name"), "{claims}");

    // A connection that refreshed outlives its first token; one that did not is closed 4001.
    let now = now_s();
    let short = sign(&json!({"sub": "carol", "iat": now - 3598, "exp": now + 2}), SECRET);
    let mut stays = Client::connect(s.addr, Auth::Bearer(&short), Enc::Json);
    let mut goes = Client::connect(s.addr, Auth::Bearer(&short), Enc::Json);
    let r = stays.call(json!({"type": "refresh"}));
    assert!(r["exp"].as_u64().unwrap() >= now + 3000, "{r}");
    goes.ws.get_mut().set_read_timeout(Some(Duration::from_secs(25))).unwrap();
    assert_eq!(goes.read_until_close().1, End::Close(4001));
    let p = stays.call(json!({"type": "ping"}));
    assert_eq!(ty(&p), "pong", "the refreshed connection lives on: {p}");
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

#[test]
fn http_patch_delete_and_reply_to_answer_with_the_documented_codes() {
    let s = server(&["--max-text", "50"]);
    let bot = tok("bot", json!({}));
    let alice = tok("alice", json!({}));
    let root = tok("root", json!({"admin": true}));
    let carol = tok("carol", json!({}));
    for t in [&bot, &alice, &root] {
        assert_eq!(api(&s, "POST", "/api/rooms/h/join", Some(t), "").0, 200);
    }
    let mut watch = conn(&s, "watcher", Enc::MsgPack);
    watch.join("h");
    let post =
        |t: &str, body: Value| api(&s, "POST", "/api/rooms/h/messages", Some(t), &body.to_string());
    let (st, m1) = post(&bot, json!({"text": "status report"}));
    assert_eq!(st, 201, "{m1}");
    let s1 = seq(&m1);
    let (st, r1) = post(&alice, json!({"text": "thanks", "reply_to": s1}));
    assert_eq!(st, 201, "{r1}");
    let ev = event(&mut watch, "h", seq(&r1));
    assert_eq!((&ev["reply_to"], &ev["from"]), (&json!(s1), &json!("alice")), "{ev}");
    for (body, code, status) in [
        (json!({"text": "x", "reply_to": seq(&r1)}), "not_found", 404),
        (json!({"text": "x", "reply_to": 999}), "not_found", 404),
        (json!({"text": "x", "reply_to": "1"}), "bad_request", 400),
    ] {
        let (st, v) = post(&bot, body.clone());
        assert_eq!((st, v["error"].as_str()), (status, Some(code)), "{body}: {v}");
    }

    let path = |n: &str| format!("/api/rooms/h/messages/{n}");
    let body = json!({"text": "status: all green"}).to_string();
    let (st, e) = api(&s, "PATCH", &path(&s1.to_string()), Some(&bot), &body);
    assert_eq!(st, 200, "{e}");
    assert_eq!(seq(&e), seq(&r1) + 1, "{e}");
    let ev = event(&mut watch, "h", seq(&e));
    assert_eq!(
        (ty(&ev), &ev["target"], &ev["text"], &ev["from"], &ev["ts"]),
        ("edit", &json!(s1), &json!("status: all green"), &json!("bot"), &e["ts"])
    );
    for (n, who, body, status, code) in [
        (s1.to_string(), &alice, body.clone(), 403, "forbidden"),
        (s1.to_string(), &carol, body.clone(), 403, "not_member"),
        ("999".into(), &bot, body.clone(), 404, "not_found"),
        (seq(&e).to_string(), &bot, body.clone(), 404, "not_found"),
        ("abc".into(), &bot, body.clone(), 400, "bad_request"),
        ("0".into(), &bot, body.clone(), 400, "bad_request"),
        ("-1".into(), &bot, body.clone(), 400, "bad_request"),
        ("1.5".into(), &bot, body.clone(), 400, "bad_request"),
        (s1.to_string(), &bot, r#"{"text":"  "}"#.into(), 400, "bad_request"),
        (s1.to_string(), &bot, r#"{"txt":"x"}"#.into(), 400, "bad_request"),
        (s1.to_string(), &bot, "not json".into(), 400, "bad_request"),
        (s1.to_string(), &bot, json!({"text": "y".repeat(51)}).to_string(), 400, "too_long"),
    ] {
        let (st, v) = api(&s, "PATCH", &path(&n), Some(who), &body);
        assert_eq!((st, v["error"].as_str()), (status, Some(code)), "PATCH {n} {body:.30}: {v}");
    }
    let (st, v) = api(&s, "PATCH", "/api/rooms/Bad!/messages/1", Some(&bot), &body);
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_room")), "{v}");
    assert_eq!(api(&s, "PATCH", &path(&s1.to_string()), None, &body).0, 401);

    // DELETE: author or admin.
    let (st, v) = api(&s, "DELETE", &path(&s1.to_string()), Some(&alice), "");
    assert_eq!((st, v["error"].as_str()), (403, Some("forbidden")), "{v}");
    let (st, v) = api(&s, "DELETE", &path(&s1.to_string()), Some(&carol), "");
    assert_eq!((st, v["error"].as_str()), (403, Some("not_member")), "{v}");
    for n in ["abc", "0", "-4", "2x"] {
        let (st, v) = api(&s, "DELETE", &path(n), Some(&bot), "");
        assert_eq!((st, v["error"].as_str()), (400, Some("bad_request")), "DELETE {n}: {v}");
    }
    let (st, v) = api(&s, "DELETE", &path("999"), Some(&bot), "");
    assert_eq!((st, v["error"].as_str()), (404, Some("not_found")), "{v}");
    let (st, d) = api(&s, "DELETE", &path(&seq(&r1).to_string()), Some(&alice), "");
    assert_eq!(st, 200, "the author deletes: {d}");
    let (st, d2) = api(&s, "DELETE", &path(&s1.to_string()), Some(&root), "");
    assert_eq!(st, 200, "an admin deletes: {d2}");
    let ev = event(&mut watch, "h", seq(&d2));
    assert_eq!(
        (ty(&ev), &ev["target"], &ev["from"], &ev["ts"]),
        ("delete", &json!(s1), &json!("root"), &d2["ts"])
    );
    assert_eq!(seq(&d2), seq(&d) + 1);
    let (st, v) = api(&s, "DELETE", &path(&s1.to_string()), Some(&bot), "");
    assert_eq!((st, v["error"].as_str()), (404, Some("not_found")), "deleted already: {v}");
    let (st, v) = api(&s, "PATCH", &path(&s1.to_string()), Some(&bot), &body);
    assert_eq!((st, v["error"].as_str()), (404, Some("not_found")), "{v}");
    assert_eq!(api(&s, "DELETE", &path(&s1.to_string()), None, "").0, 401);
    // GET messages shows the current state.
    let (st, v) = api(&s, "GET", "/api/rooms/h/messages", Some(&bot), "");
    assert_eq!(st, 200);
    let ms = v["messages"].as_array().unwrap();
    assert_eq!((ty(&ms[0]), &ms[0]["deleted"]), ("message", &json!(true)), "{v}");
    assert!(ms.iter().all(is_event), "items carry their kind: {v}");
    let (st, v) = post(&bot, json!({"text": "late", "reply_to": s1}));
    assert_eq!((st, v["error"].as_str()), (404, Some("not_found")), "reply to a deleted root: {v}");
    assert!(!v.to_string().contains("status"), "deleted text still served: {v}");
}

// ---------------------------------------------------------------------------------------------
// recovery
// ---------------------------------------------------------------------------------------------

/// A message's state as a client derives it from events.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct MsgState {
    from: String,
    text: Option<String>,
    deleted: bool,
    edited_ts: Option<u64>,
    reply_to: Option<u64>,
    mentions: Vec<String>,
    pub(crate) reactions: Reactions,
}

pub(crate) type Room = BTreeMap<u64, MsgState>;

/// Applies one room event (idempotently).
pub(crate) fn apply(st: &mut Room, ev: &Value) {
    let target = || ev["target"].as_u64().unwrap_or_else(|| panic!("no target: {ev}"));
    match ty(ev) {
        // Live, a message is new; in joined.history it shows its current state.
        "message" => {
            st.entry(seq(ev)).or_insert_with(|| MsgState {
                from: ev["from"].as_str().unwrap().to_string(),
                text: ev["text"].as_str().map(str::to_string),
                deleted: ev["deleted"] == true,
                edited_ts: ev["edited_ts"].as_u64(),
                reply_to: ev["reply_to"].as_u64(),
                mentions: mentions(ev),
                reactions: reactions(ev),
            });
        }
        "edit" => {
            let m = st.get_mut(&target()).expect("edit of an unknown message");
            if let Some(t) = ev["text"].as_str() {
                m.text = Some(t.to_string());
                m.mentions = mentions(ev);
            }
            m.edited_ts = Some(ts(ev));
        }
        "delete" => {
            let m = st.get_mut(&target()).expect("delete of an unknown message");
            m.deleted = true;
            m.text = None;
        }
        "reaction" => {
            let m = st.get_mut(&target()).expect("reaction to an unknown message");
            let emoji = ev["emoji"].as_str().unwrap().to_string();
            let user = ev["from"].as_str().unwrap().to_string();
            let pos = m.reactions.iter().position(|(e, _)| *e == emoji);
            if ev["on"] == true {
                match pos {
                    Some(i) if !m.reactions[i].1.contains(&user) => m.reactions[i].1.push(user),
                    Some(_) => {}
                    None => m.reactions.push((emoji, vec![user])),
                }
            } else if let Some(i) = pos {
                m.reactions[i].1.retain(|u| *u != user);
                if m.reactions[i].1.is_empty() {
                    m.reactions.remove(i);
                }
            }
        }
        other => panic!("not a room event: {other} {ev}"),
    }
}

/// What is comparable: a deleted message keeps only who wrote it and where it hangs.
fn normal(st: &Room) -> BTreeMap<u64, MsgState> {
    st.iter()
        .map(|(s, m)| {
            let m = if m.deleted {
                MsgState {
                    from: m.from.clone(),
                    deleted: true,
                    reply_to: m.reply_to,
                    ..Default::default()
                }
            } else {
                m.clone()
            };
            (*s, m)
        })
        .collect()
}

/// The state `history` shows for every message.
fn from_history(items: &[Value]) -> Room {
    items
        .iter()
        .filter(|m| ty(m) == "message")
        .map(|m| {
            (
                seq(m),
                MsgState {
                    from: m["from"].as_str().unwrap().to_string(),
                    text: m["text"].as_str().map(str::to_string),
                    deleted: m["deleted"] == true,
                    edited_ts: m["edited_ts"].as_u64(),
                    reply_to: m["reply_to"].as_u64(),
                    mentions: mentions(m),
                    reactions: reactions(m),
                },
            )
        })
        .collect()
}

#[test]
fn a_client_resuming_with_since_ends_in_the_state_of_one_that_stayed() {
    let s = server(&[]);
    let r = "rec";
    let mut alice = conn(&s, "alice", Enc::Json);
    let mut bob = conn(&s, "bob", Enc::Json);
    let mut carol = conn(&s, "carol", Enc::MsgPack);
    for c in [&mut alice, &mut bob, &mut carol] {
        c.join(r);
    }
    let mut stayed = Room::new();
    let mut away = Room::new();
    let mut ms = Vec::new();
    for i in 1..=5 {
        ms.push(send(&mut alice, r, &format!("message {i}")));
    }
    let e0 = edit(&mut alice, r, ms[4], "message 5, edited while carol was here");
    react(&mut bob, r, ms[3], "👀", true);
    let seen = seq(&react(&mut carol, r, ms[3], "👍", true));
    let carol_evs = drain(&mut carol, r, seen);
    for ev in &carol_evs {
        apply(&mut away, ev);
    }
    let last_seen = seq(carol_evs.last().unwrap());
    assert!(seq(&e0) < last_seen);
    carol.close();

    // While carol is away.
    edit(&mut alice, r, ms[0], "message 1, edited");
    edit(&mut alice, r, ms[0], "message 1, edited twice @bob");
    del(&mut alice, r, ms[1]);
    react(&mut bob, r, ms[2], "👍", true);
    react(&mut alice, r, ms[2], "👍", true);
    react(&mut bob, r, ms[2], "👍", false);
    react(&mut bob, r, ms[2], "🎉", true);
    react(&mut bob, r, ms[2], "🎉", true);
    react(&mut bob, r, ms[3], "👀", false);
    let r1 = reply(&mut bob, r, ms[0], "a reply for @carol");
    let r2 = reply(&mut alice, r, ms[0], "another reply");
    edit(&mut bob, r, seq(&r1), "a reply for @carol, edited");
    react(&mut alice, r, seq(&r2), "✅", true);
    del(&mut alice, r, seq(&r2));
    react(&mut alice, r, ms[4], "❤️", true);
    del(&mut alice, r, ms[4]);
    let n = send(&mut bob, r, "new while away");
    let last = seq(&edit(&mut bob, r, n, "new while away, edited"));

    let bob_evs = drain(&mut bob, r, last);
    assert_eq!(
        bob_evs.iter().map(seq).collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>(),
        "bob saw every event once, gap-free"
    );
    for ev in &bob_evs {
        apply(&mut stayed, ev);
    }

    // carol comes back and resumes.
    let mut carol = conn(&s, "carol", Enc::MsgPack);
    let hr = hello_room(&carol.hello, r).unwrap_or_else(|| panic!("{}", carol.hello));
    assert_eq!((hr["seq"].as_u64(), hr["mentions"].as_u64()), (Some(last), Some(1)), "{hr}");
    let j = carol.call(json!({"type": "join", "room": r, "since": last_seen}));
    assert_eq!(ty(&j), "joined", "{j}");
    assert_eq!(j["more"], false, "{j}");
    let missed = j["history"].as_array().unwrap().clone();
    assert_eq!(
        missed.iter().map(seq).collect::<Vec<_>>(),
        (last_seen + 1..=last).collect::<Vec<_>>(),
        "since returns exactly the missed events"
    );
    for ev in &missed {
        assert!(is_event(ev), "joined.history items carry their kind: {ev}");
        apply(&mut away, ev);
    }
    // Applying everything again changes nothing.
    let once = away.clone();
    for ev in carol_evs.iter().chain(missed.iter()) {
        apply(&mut away, ev);
    }
    assert_eq!(away, once, "events are idempotent");
    assert_eq!(normal(&away), normal(&stayed), "the resumed client and the one that stayed agree");
    let h = all_history(&mut carol, r);
    assert_eq!(normal(&from_history(&h)), normal(&stayed), "and both equal a fresh history");
    // Sanity: the reducer saw real changes.
    let st = normal(&stayed);
    assert_eq!(st[&ms[0]].text.as_deref(), Some("message 1, edited twice @bob"));
    assert_eq!(st[&ms[0]].mentions, ["bob"]);
    assert!(st[&ms[1]].deleted && st[&ms[4]].deleted && st[&seq(&r2)].deleted);
    assert_eq!(st[&ms[2]].reactions, rx(&[("👍", &["alice"]), ("🎉", &["bob"])]));
    assert_eq!(st[&ms[3]].reactions, rx(&[("👍", &["carol"])]));
    assert_eq!(st[&seq(&r1)].mentions, ["carol"]);
    let root = h.iter().find(|m| seq(m) == ms[0]).unwrap();
    assert_eq!(root["replies"], 1, "one reply left: {root}");
    // Nothing else arrives live for carol.
    let extra: Vec<Value> = carol.ping_barrier().into_iter().filter(is_event).collect();
    assert!(extra.is_empty(), "{extra:?}");
}

#[test]
fn dm_mentions_count_from_the_first_dm() {
    let s = server(&[]);
    for enc in ENCS {
        let mut alice = conn(&s, "alice", enc);
        let to = format!("peer{}", tag(enc));
        let dm = format!("dm:alice:{to}");
        // The first `dm` makes both users members, so its mention of the recipient counts.
        let mut got = Vec::new();
        for text in [format!("hi @{to}"), format!("again @{to}"), "no mention".to_string()] {
            let a = ok(&mut alice, json!({"type": "dm", "to": to, "text": text}));
            got.push(mentions(&event(&mut alice, &dm, seq(&a))));
        }
        assert_eq!(got, [vec![to.clone()], vec![to.clone()], vec![]], "live DM mentions");
        let h = all_history(&mut alice, &dm);
        assert_eq!(mentions(&h[0]), vec![to.clone()], "history: {}", h[0]);
        let peer = conn(&s, &to, enc);
        assert_eq!(counts(&peer, &dm), (3, 0, 3, 2), "{}", peer.hello);
    }
}

#[test]
fn hello_counts_are_capped_at_1000() {
    let s = server(&[]);
    let mut alice = conn(&s, "alice", Enc::Json);
    let mut bob = conn(&s, "bob", Enc::Json);
    alice.join("busy");
    bob.join("busy");
    bob.close();
    let frames: Vec<Value> = (0..1003)
        .map(|i| json!({"type": "send", "room": "busy", "text": format!("@bob ping {i}")}))
        .collect();
    let acks = pipeline(&mut alice, frames);
    alice.clear_stash();
    let last = acks.iter().map(seq).max().unwrap();
    let bob = conn(&s, "bob", Enc::Json);
    assert_eq!(counts(&bob, "busy"), (last, 0, 1000, 1000), "{}", bob.hello);
}

#[test]
fn deleted_text_leaves_the_data_directory() {
    let mut s = server(&[]);
    let mut a = conn(&s, "alice", Enc::Json);
    a.join("wipe");
    let secret = format!("zq{}wipe", now_ms());
    let m = send(&mut a, "wipe", &format!("{secret} first"));
    edit(&mut a, "wipe", m, &format!("{secret} second"));
    search_until(&mut a, json!({"query": secret}), "the message indexed", |m| m.len() == 1);
    del(&mut a, "wipe", m);
    search_until(&mut a, json!({"query": secret}), "the delete", |m| m.is_empty());
    drop(a);
    assert!(s.sigterm().success());
    let mut holding = Vec::new();
    // sled's log keeps overwritten bytes until it reclaims their segment,
    // which no API forces: the database folder is left out (known limit).
    let mut dirs = vec![s.dir.join("search")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if std::fs::read(&p)
                .unwrap()
                .windows(secret.len())
                .any(|w| w == secret.as_bytes())
            {
                holding.push(p);
            }
        }
    }
    assert!(holding.is_empty(), "the deleted text is still stored in {holding:?}");
}

#[test]
fn acked_events_and_their_search_entries_survive_kill_9() {
    let mut s = server(&[]);
    let mut a = conn(&s, "alice", Enc::Json);
    let mut b = conn(&s, "bob", Enc::MsgPack);
    a.join("k9");
    b.join("k9");
    let m1 = send(&mut a, "k9", "before the crash");
    let m2 = send(&mut b, "k9", "bob speaks");
    reply(&mut b, "k9", m1, "a reply");
    edit(&mut a, "k9", m1, "before the crash, edited @bob");
    react(&mut b, "k9", m1, "👍", true);
    react(&mut a, "k9", m1, "🎉", true);
    react(&mut b, "k9", m1, "👍", false);
    del(&mut b, "k9", m2);
    // The last ack arrives right before the kill: it must be searchable after the restart.
    send(&mut a, "k9", "crashword lastone");
    let before = all_history(&mut a, "k9");
    drop((a, b));
    s.kill9();
    s.restart();
    let mut a = conn(&s, "alice", Enc::Json);
    assert_eq!(all_history(&mut a, "k9"), before, "every acked event survives kill -9");
    search_until(&mut a, json!({"query": "crashword"}), "the last message in search", |m| {
        m.len() == 1
    });
    let r = search_until(&mut a, json!({"query": "crash"}), "both in search", |m| m.len() == 2);
    let texts: Vec<&str> =
        r["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["crashword lastone", "before the crash, edited @bob"]);
    let gone = a.call(json!({"type": "search", "query": "speaks"}));
    assert_eq!(gone["messages"], json!([]), "a deleted message stays out of search: {gone}");
}

#[test]
fn concurrent_reactions_reduce_to_the_stored_state_and_never_pass_20_emoji() {
    let s = server(&[]);
    let mut alice = conn(&s, "alice", Enc::Json);
    let mut watch = conn(&s, "watcher", Enc::MsgPack);
    alice.join("busy");
    watch.join("busy");
    let m = send(&mut alice, "busy", "react hard");
    let workers: Vec<_> = (0..4)
        .map(|k| {
            let mut c =
                conn(&s, &format!("u{k}"), if k % 2 == 0 { Enc::Json } else { Enc::MsgPack });
            c.join("busy");
            thread::spawn(move || {
                for i in 0..40 {
                    let emoji = format!("x{}", (k * 7 + i) % 25);
                    let f = json!({"type": "react", "room": "busy", "seq": m, "emoji": emoji,
                                   "on": i % 3 != 0, "id": format!("r{i}")});
                    c.send_json(f);
                }
                let mut acked = Vec::new();
                for i in 0..40 {
                    let r = c.recv_where(|v| v["id"] == format!("r{i}"));
                    match ty(&r) {
                        "ack" => acked.push(seq(&r)),
                        _ => assert_eq!(r["code"], "limit_reached", "{r}"),
                    }
                }
                acked
            })
        })
        .collect();
    let mut acked: Vec<u64> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    acked.sort_unstable();
    let last = *acked.last().unwrap();
    assert_eq!(acked, (m + 1..=last).collect::<Vec<_>>(), "every accepted react is one event");
    let mut st = Room::new();
    for ev in drain(&mut watch, "busy", last) {
        apply(&mut st, &ev);
        let distinct = st[&m].reactions.len();
        assert!(distinct <= 20, "{distinct} distinct emoji after seq {}", seq(&ev));
    }
    assert_eq!(reactions(&item(&mut alice, "busy", m)), st[&m].reactions);
}

#[test]
fn nothing_lands_on_a_message_after_its_delete_even_when_racing() {
    let s = server(&[]);
    let mut a1 = conn(&s, "alice", Enc::Json);
    let mut a2 = conn(&s, "alice", Enc::MsgPack);
    let mut bob = conn(&s, "bob", Enc::Json);
    let mut watch = conn(&s, "watcher", Enc::Json);
    for c in [&mut a1, &mut bob, &mut watch] {
        c.join("race");
    }
    let m = send(&mut a1, "race", "contested");
    let edits: Vec<Value> = (0..30)
        .map(|i| json!({"type": "edit", "room": "race", "seq": m, "text": format!("v{i}")}))
        .collect();
    let mut bobs: Vec<Value> = Vec::new();
    for i in 0..30 {
        bobs.push(json!({"type": "react", "room": "race", "seq": m, "emoji": format!("e{}", i % 5), "on": true}));
        bobs.push(
            json!({"type": "send", "room": "race", "text": format!("re {i}"), "reply_to": m}),
        );
    }
    let t1 = thread::spawn(move || burst(a1, edits));
    let t2 = thread::spawn(move || burst(bob, bobs));
    let d = del(&mut a2, "race", m);
    let mut acked: Vec<u64> = t1.join().unwrap().into_iter().chain(t2.join().unwrap()).collect();
    acked.push(seq(&d));
    acked.sort_unstable();
    let last = *acked.last().unwrap();
    assert_eq!(acked, (m + 1..=last).collect::<Vec<_>>(), "accepted writes are gap-free");
    let evs = drain(&mut watch, "race", last);
    let late: Vec<&Value> = evs
        .iter()
        .filter(|e| seq(e) > seq(&d) && (e["target"] == m || e["reply_to"] == m))
        .collect();
    assert!(late.is_empty(), "accepted after the delete (seq {}): {late:?}", seq(&d));
}
