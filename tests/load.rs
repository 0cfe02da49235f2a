//! Ordering and delivery under load (sections 3 and 4): three concurrent senders of 200
//! messages each, seen gap-free and in seq order by every member (JSON and MessagePack), and
//! 500 connections in 20 rooms where every delivery is accounted for.
//!
//! Only correctness is asserted; nothing here measures speed.

use std::collections::{BTreeSet, HashMap};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

const FAST: &[&str] = &["--rate", "100000", "--burst", "100000"];

/// Reads until `n` messages of `room` (and `acks` acks) have arrived; returns the messages.
fn read_messages(c: &mut Client, room: &str, n: usize, acks: usize) -> (Vec<Value>, Vec<Value>) {
    let mut msgs = Vec::with_capacity(n);
    let mut got_acks = Vec::with_capacity(acks);
    while msgs.len() < n || got_acks.len() < acks {
        let v = c.recv();
        match ty(&v) {
            "message" if v["room"] == room => msgs.push(v),
            "ack" => got_acks.push(v),
            "message" | "error" => panic!("unexpected frame {v}"),
            _ => {}
        }
    }
    (msgs, got_acks)
}

#[test]
fn three_senders_of_200_are_seen_gap_free_and_in_order_by_every_member() {
    three_senders_seen_gap_free_and_in_order(&Server::open(FAST), 200);
}

/// Three senders (one of them MessagePack) send `per` messages each to one
/// room as fast as they can, while two listeners (JSON and MessagePack)
/// read: every member sees every message once, gap-free, in seq order and
/// each sender's in send order, all the same sequence, and each sender
/// gets one ack per send with the seq it was seen under.
pub(crate) fn three_senders_seen_gap_free_and_in_order(s: &Server, per: usize) {
    const SENDERS: usize = 3;
    let total = per * SENDERS;
    let mut clients = Vec::new();
    for k in 0..SENDERS {
        let enc = if k == 1 { Enc::MsgPack } else { Enc::Json };
        clients.push((true, Client::connect(s.addr, Auth::Open(&format!("sender{k}")), enc)));
    }
    clients.push((false, s.client("listener0")));
    clients.push((false, Client::connect(s.addr, Auth::Open("listener1"), Enc::MsgPack)));
    for (_, c) in clients.iter_mut() {
        c.join("busy");
    }
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, (sender, mut c))| {
            thread::spawn(move || {
                if sender {
                    for i in 0..per {
                        c.send_json(json!({"type": "send", "room": "busy", "text": format!("s{k}-{i}"), "id": i}));
                    }
                }
                let (msgs, acks) = read_messages(&mut c, "busy", total, if sender { per } else { 0 });
                (k, sender, msgs, acks)
            })
        })
        .collect();
    let mut views: Vec<Vec<(u64, String, String)>> = Vec::new();
    for h in handles {
        let (k, sender, msgs, acks) = h.join().expect("client thread");
        let view: Vec<(u64, String, String)> = msgs
            .iter()
            .map(|m| {
                let f = (m["seq"].as_u64(), m["from"].as_str(), m["text"].as_str());
                let (Some(seq), Some(from), Some(text)) = f else { panic!("bad message {m}") };
                (seq, from.to_string(), text.to_string())
            })
            .collect();
        let got: Vec<u64> = view.iter().map(|v| v.0).collect();
        assert_eq!(got, (1..=total as u64).collect::<Vec<_>>(), "client {k}: seqs in order");
        for j in 0..SENDERS {
            let texts: Vec<&str> =
                view.iter().filter(|v| v.1 == format!("sender{j}")).map(|v| v.2.as_str()).collect();
            let expect: Vec<String> = (0..per).map(|i| format!("s{j}-{i}")).collect();
            assert_eq!(texts, expect, "client {k} sees sender{j}'s messages in send order");
        }
        if sender {
            // Each ack carries the seq under which that client saw the message.
            let seq_of: HashMap<&str, u64> = view.iter().map(|v| (v.2.as_str(), v.0)).collect();
            for a in &acks {
                let i = a["id"].as_u64().expect("ack id");
                assert_eq!(a["seq"].as_u64(), seq_of.get(format!("s{k}-{i}").as_str()).copied());
            }
            let ids: BTreeSet<u64> = acks.iter().map(|a| a["id"].as_u64().unwrap()).collect();
            assert_eq!(ids.len(), per, "one ack per send");
        }
        views.push(view);
    }
    for v in &views[1..] {
        assert_eq!(v, &views[0], "every member sees the same sequence");
    }
}

#[test]
fn five_hundred_connections_in_twenty_rooms_account_for_every_delivery() {
    const ROOMS: usize = 20;
    const MEMBERS: usize = 25;
    const SENDS: usize = 2;
    const THREADS: usize = 10; // each owns ROOMS / THREADS whole rooms
    let s = Server::open(FAST);
    let addr = s.addr;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            thread::spawn(move || {
                let rooms: Vec<usize> = (0..ROOMS).filter(|r| r % THREADS == t).collect();
                let mut clients = Vec::new();
                for &r in &rooms {
                    for m in 0..MEMBERS {
                        let user = format!("u{r}-{m}");
                        let enc = if m % 5 == 0 { Enc::MsgPack } else { Enc::Json };
                        let mut c = Client::connect(addr, Auth::Open(&user), enc);
                        let room = format!("load-{r}");
                        let j = c.join(&room);
                        assert_eq!(j["members"].as_array().map(Vec::len), Some(m + 1), "{j}");
                        clients.push((room, user, c));
                    }
                }
                for (room, user, c) in clients.iter_mut() {
                    for i in 0..SENDS {
                        c.send_json(
                            json!({"type": "send", "room": room, "text": format!("{user}#{i}")}),
                        );
                    }
                }
                let mut deliveries = 0usize;
                for (room, user, c) in clients.iter_mut() {
                    let (msgs, acks) = read_messages(c, room, MEMBERS * SENDS, SENDS);
                    let got: Vec<u64> = msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
                    let want: Vec<u64> = (1..=(MEMBERS * SENDS) as u64).collect();
                    assert_eq!(got, want, "{user} in {room}: seqs");
                    let texts: BTreeSet<String> =
                        msgs.iter().map(|m| m["text"].as_str().unwrap().to_string()).collect();
                    let r: usize = room.trim_start_matches("load-").parse().unwrap();
                    let expect: BTreeSet<String> = (0..MEMBERS)
                        .flat_map(|m| (0..SENDS).map(move |i| format!("u{r}-{m}#{i}")))
                        .collect();
                    assert_eq!(texts, expect, "{user} in {room}: every message exactly once");
                    assert_eq!(acks.len(), SENDS);
                    deliveries += msgs.len();
                }
                (clients, deliveries)
            })
        })
        .collect();
    let mut total = 0;
    let mut all = Vec::new();
    for h in handles {
        let (clients, d) = h.join().expect("load thread");
        total += d;
        all.extend(clients);
    }
    assert_eq!(total, ROOMS * MEMBERS * MEMBERS * SENDS, "deliveries accounted for");
    // All 500 are still connected and counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut h = s.health().1;
    while h["connections"] != ROOMS * MEMBERS && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        h = s.health().1;
    }
    assert_eq!(h["connections"], ROOMS * MEMBERS, "{h}");
    drop(all);
    s.assert_healthy(true);
}
