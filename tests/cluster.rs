//! The cluster (PROTOCOL.md section 6): three real nodes linked by a real
//! `redis-server` on a free port. Delivery across nodes exactly once and in
//! order, concurrent senders on different nodes gap-free, presence, notify
//! and revoke across nodes, a node killed with `kill -9` and restarted with
//! identical history, Redis stopped (sends `unavailable`, 503) and
//! restarted empty (sends work, nothing lost or duplicated), Redis
//! command errors and killed connections healing within 10 s, and a node
//! whose disk fills never refusing a send the cluster delivered.

use crate::support::{self, ty, wait_for, Auth, Client, Enc, Opts, Server};
use serde_json::{json, Value};
use std::{
    collections::BTreeMap,
    net::TcpListener,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// A `redis-server` child on a free loopback port, without persistence.
struct Redis {
    port: u16,
    child: Option<Child>,
    /// Arguments after the defaults (TLS, ACL users).
    extra: Vec<String>,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        Redis::start_with(port, Vec::new())
    }

    fn start_with(port: u16, extra: Vec<String>) -> Redis {
        let mut r = Redis { port, child: None, extra };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (tests/run.sh installs it)");
        self.child = Some(child);
        wait_for(Duration::from_secs(10), "redis to accept connections", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A node linked to `redis`, once its link is up (a bound, not a timing assertion).
fn node(redis: &Redis, id: &str) -> Server {
    node_with(redis, id, |_| {})
}

/// [`node`], with its options changed by `f` first.
fn node_with(redis: &Redis, id: &str, f: impl FnOnce(&mut Opts)) -> Server {
    let mut o = Opts::new(&["--open", "--rate", "100000", "--burst", "100000", "--node-id", id]);
    o.args.push("--redis".into());
    o.args.push(redis.url());
    f(&mut o);
    let s = Server::start_with(o);
    wait_for(Duration::from_secs(10), "the node's redis link", || s.health().1["redis"] == "ok");
    s
}

/// `POST path` with a bearer token and a JSON body: (status, body).
fn post(server: &Server, path: &str, token: &str, body: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let r = support::http_request(
        server.addr,
        "POST",
        path,
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        body,
    );
    (r.status, r.body)
}

fn three(redis: &Redis) -> Vec<Server> {
    vec![node(redis, "n1"), node(redis, "n2"), node(redis, "n3")]
}

/// Every message of a room on a node, ascending, via `history` pages,
/// once the node has applied seq `last`: another node's events reach this
/// one through Redis, after the sender's ack and its own node's delivery,
/// so a node may answer from a moment ago. It must catch up within 10 s.
fn history(server: &Server, room: &str, last: u64) -> Vec<(u64, String)> {
    let mut c = server.client("auditor");
    c.join(room);
    let mut out = Vec::new();
    wait_for(Duration::from_secs(10), &format!("{} to apply seq {last}", server.addr), || {
        out = history_pages(&mut c, room);
        out.last().is_some_and(|m| m.0 >= last)
    });
    out
}

/// Every message of a room, ascending, via `history` pages, as `c` sees it now.
fn history_pages(c: &mut Client, room: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let r = c.call(json!({"type": "history", "room": room, "after": after, "limit": 100}));
        assert_eq!(ty(&r), "history", "{r}");
        for m in r["messages"].as_array().unwrap() {
            out.push((m["seq"].as_u64().unwrap(), m["text"].as_str().unwrap().to_string()));
        }
        if !r["more"].as_bool().unwrap() {
            return out;
        }
        after = out.last().unwrap().0;
    }
}

/// Reads `n` messages of `room` and asserts their seqs run `from..from+n` in order.
fn expect_messages(c: &mut Client, room: &str, from: u64, n: u64) -> Vec<String> {
    let mut texts = Vec::new();
    for want in from..from + n {
        let m = c.recv_where(|v| ty(v) == "message" && v["room"] == room);
        assert_eq!(m["seq"].as_u64(), Some(want), "out of order or gap at {}: {m}", c.user());
        texts.push(m["text"].as_str().unwrap().to_string());
    }
    texts
}

#[test]
fn messages_cross_nodes_once_and_in_order() {
    let redis = Redis::start();
    let nodes = three(&redis);
    let mut clients: Vec<Client> =
        nodes.iter().enumerate().map(|(i, s)| s.client(&format!("u{i}"))).collect();
    for c in &mut clients {
        c.join("hall");
    }
    for round in 0..10 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.send_msg("hall", &format!("r{round}-u{i}"));
        }
    }
    for c in &mut clients {
        let texts = expect_messages(c, "hall", 1, 30);
        for round in 0..10 {
            for i in 0..3 {
                assert_eq!(texts.iter().filter(|t| **t == format!("r{round}-u{i}")).count(), 1);
            }
        }
        // Exactly once: nothing more arrives before a barrier.
        let extra: Vec<Value> =
            c.ping_barrier().into_iter().filter(|v| ty(v) == "message").collect();
        assert!(extra.is_empty(), "duplicates: {extra:?}");
    }
    let reference = history(&nodes[0], "hall", 30);
    assert_eq!(reference.len(), 30);
    for n in &nodes[1..] {
        assert_eq!(history(n, "hall", 30), reference, "every node answers the same history");
    }
    // A cluster node stops on SIGTERM like a single one (its bridge threads do not hold it).
    let mut nodes = nodes;
    let status = nodes[0].sigterm();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn concurrent_senders_on_different_nodes_are_gap_free() {
    let redis = Redis::start();
    let nodes = three(&redis);
    let mut watcher = nodes[0].client("watcher");
    watcher.join("race");
    let handles: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut c = s.client(&format!("s{i}"));
            c.join("race");
            thread::spawn(move || {
                for k in 0..100 {
                    c.send_json(json!({"type": "send", "room": "race", "text": format!("s{i}-{k}"), "id": k}));
                }
                let mut seqs = Vec::new();
                while seqs.len() < 100 {
                    let a = c.recv_type("ack");
                    seqs.push(a["seq"].as_u64().unwrap());
                }
                seqs
            })
        })
        .collect();
    let mut all: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=300).collect::<Vec<u64>>(), "acked seqs are exactly 1..=300");
    expect_messages(&mut watcher, "race", 1, 300);
    for n in &nodes {
        assert_eq!(
            history(n, "race", 300).iter().map(|m| m.0).collect::<Vec<_>>(),
            (1..=300).collect::<Vec<_>>()
        );
    }
}

#[test]
fn presence_notify_and_revoke_cross_nodes() {
    let redis = Redis::start();
    let nodes = three(&redis);
    let mut alice = nodes[0].client("alice");
    alice.join("p");
    let mut bob = nodes[1].client("bob");
    bob.join("p");
    let p = alice.recv_where(|v| ty(v) == "presence" && v["user"] == "bob");
    assert_eq!(p["state"], "online");
    let list = alice.call(json!({"type": "presence", "room": "p"}));
    let mut online: Vec<&str> =
        list["online"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    online.sort();
    assert_eq!(online, vec!["alice", "bob"], "{list}");
    // Typing crosses nodes too.
    bob.send_json(json!({"type": "typing", "room": "p", "active": true}));
    let t = alice.recv_type("typing");
    assert_eq!((t["user"].as_str(), t["active"].as_bool()), (Some("bob"), Some(true)));
    drop(bob);
    let p = alice.recv_where(|v| ty(v) == "presence" && v["user"] == "bob");
    assert_eq!(p["state"], "offline");

    // notify: an admin call on node 3 reaches alice on node 1.
    let admin = support::sign(
        &json!({"sub": "ops", "exp": support::now_s() + 600, "admin": true}),
        support::SECRET,
    );
    let (status, body) = post(
        &nodes[2],
        "/api/notify",
        &admin,
        &json!({"user": "alice", "kind": "deploy", "text": "v2 is out", "data": {"v": 2}})
            .to_string(),
    );
    assert_eq!(status, 202, "{body}");
    let n = alice.recv_type("notification");
    assert_eq!(
        (n["kind"].as_str(), n["text"].as_str(), n["data"]["v"].as_u64()),
        (Some("deploy"), Some("v2 is out"), Some(2))
    );

    // revoke on node 3: carol's token is closed with 4001 on node 2 and refused on node 1.
    let carol = support::sign(
        &json!({"sub": "carol", "exp": support::now_s() + 600, "jti": "carol-1"}),
        support::SECRET,
    );
    let mut c = Client::connect(nodes[1].addr, Auth::Bearer(&carol), Enc::Json);
    let (status, body) =
        post(&nodes[2], "/api/revoke", &admin, &json!({"jti": "carol-1"}).to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(c.expect_close(), 4001);
    wait_for(Duration::from_secs(5), "the revocation on node 1", || {
        Client::try_connect(nodes[0].addr, Auth::Bearer(&carol), &[]).is_err()
    });
}

#[test]
fn killed_node_catches_up_with_identical_history() {
    let redis = Redis::start();
    let mut nodes = three(&redis);
    let mut a = nodes[0].client("a");
    a.join("k");
    let mut c3 = nodes[2].client("c");
    c3.join("k");
    for i in 0..20 {
        a.send_msg("k", &format!("before-{i}"));
    }
    drop(c3);
    nodes[2].kill9();
    let mut b = nodes[1].client("b");
    b.join("k");
    for i in 0..30 {
        if i % 2 == 0 {
            a.send_msg("k", &format!("during-{i}"));
        } else {
            b.send_msg("k", &format!("during-{i}"));
        }
    }
    nodes[2].restart();
    wait_for(Duration::from_secs(10), "the restarted node's redis link", || {
        nodes[2].health().1["redis"] == "ok"
    });
    let mut c3 = nodes[2].client("c");
    a.send_msg("k", "after");
    // The restarted node delivers the next message live after what it repaired.
    let m = c3.recv_where(|v| ty(v) == "message" && v["text"] == "after");
    assert_eq!(m["seq"].as_u64(), Some(51));
    let reference = history(&nodes[0], "k", 51);
    assert_eq!(reference.iter().map(|m| m.0).collect::<Vec<_>>(), (1..=51).collect::<Vec<_>>());
    assert_eq!(history(&nodes[2], "k", 51), reference, "the restarted node's history is identical");
    assert_eq!(history(&nodes[1], "k", 51), reference);
}

#[test]
fn redis_outage_refuses_sends_then_recovers_without_loss() {
    let mut redis = Redis::start();
    let nodes = vec![node(&redis, "n1"), node(&redis, "n2")];
    let mut a = nodes[0].client("a");
    a.join("o");
    let mut b = nodes[1].client("b");
    b.join("o");
    for i in 0..5 {
        a.send_msg("o", &format!("m{i}"));
    }
    redis.stop();
    for n in &nodes {
        wait_for(Duration::from_secs(10), "health to report redis down", || n.health().0 == 503);
        let (_, h) = n.health();
        assert_eq!(
            (h["redis"].as_str(), h["status"].as_str()),
            (Some("down"), Some("degraded")),
            "{h}"
        );
    }
    // Live connections stay open; sends are refused, nothing half-accepted.
    a.call_err(json!({"type": "send", "room": "o", "text": "lost?"}), "unavailable");
    b.call_err(json!({"type": "dm", "to": "a", "text": "lost?"}), "unavailable");
    redis.spawn(); // Comes back empty: no persistence.
    for n in &nodes {
        wait_for(Duration::from_secs(15), "health to recover", || n.health().0 == 200);
    }
    let ack = a.send_msg("o", "after");
    assert_eq!(ack["seq"].as_u64(), Some(6), "seq continues from the nodes' own data");
    let ack = b.send_msg("o", "after-b");
    assert_eq!(ack["seq"].as_u64(), Some(7));
    let mut seen: BTreeMap<u64, String> = BTreeMap::new();
    while seen.len() < 7 {
        let m = b.recv_type("message");
        let prev = seen.insert(m["seq"].as_u64().unwrap(), m["text"].as_str().unwrap().into());
        assert!(prev.is_none(), "delivered twice: {m}");
    }
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), (1..=7).collect::<Vec<_>>());
    assert!(seen.values().all(|t| t != "lost?"));
    for n in &nodes {
        let h = history(n, "o", 7);
        assert_eq!(h.iter().map(|m| m.0).collect::<Vec<_>>(), (1..=7).collect::<Vec<_>>());
    }
}

#[test]
fn a_dead_node_stops_counting_its_users_online() {
    let redis = Redis::start();
    let mut nodes = [node(&redis, "n1"), node(&redis, "n2")];
    let mut alice = nodes[0].client("alice");
    alice.join("d");
    let mut bob = nodes[1].client("bob");
    bob.join("d");
    let p = alice.recv_where(|v| ty(v) == "presence" && v["user"] == "bob");
    assert_eq!(p["state"], "online");
    // No goodbye: the process is gone, its connections with it.
    nodes[1].kill9();
    drop(bob);
    // PROTOCOL.md: within 30 s (the node TTL is 20 s); give up with margin.
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(35), "bob still online after 35 s");
        let list = alice.call(json!({"type": "presence", "room": "d"}));
        if !list["online"].as_array().unwrap().iter().any(|u| u == "bob") {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    let p = alice.recv_where(|v| ty(v) == "presence" && v["user"] == "bob");
    assert_eq!(p["state"], "offline", "the room is told too");
}

#[test]
fn read_markers_sync_across_nodes() {
    let redis = Redis::start();
    let nodes = [node(&redis, "n1"), node(&redis, "n2")];
    let mut here = nodes[0].client("alice");
    here.join("rm");
    let mut there = nodes[1].client("alice");
    // Membership crosses nodes: the other connection is subscribed without a join.
    here.send_msg("rm", "one");
    here.send_msg("rm", "two");
    let m = there.recv_where(|v| ty(v) == "message" && v["text"] == "two");
    assert_eq!(m["seq"].as_u64(), Some(2));
    here.send_json(json!({"type": "read", "room": "rm", "seq": 2}));
    let r = there.recv_type("read");
    assert_eq!((r["room"].as_str(), r["seq"].as_u64()), (Some("rm"), Some(2)));
    // And the marker is stored on the other node: a new connection there sees it in hello.
    let later = nodes[1].client("alice");
    let room = support::hello_room(&later.hello, "rm").unwrap_or_else(|| panic!("{}", later.hello));
    assert_eq!(
        (room["seq"].as_u64(), room["read"].as_u64()),
        (Some(2), Some(2)),
        "{}",
        later.hello
    );
}

/// `redis-cli -p PORT ARGS`: its output.
fn redis_cli(redis: &Redis, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli comes with redis-server");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn redis_command_errors_and_killed_connections_heal_within_10_s() {
    let redis = Redis::start();
    let nodes = vec![node(&redis, "n1"), node(&redis, "n2")];
    let mut a = nodes[0].client("a");
    a.join("h");
    let mut b = nodes[1].client("b");
    b.join("h");
    let mut acked = vec![a.send_msg("h", "before")["seq"].as_u64().unwrap()];
    let faults: [&[&str]; 3] = [
        &["SCRIPT", "FLUSH"],
        &["CLIENT", "KILL", "TYPE", "normal"],
        &["CLIENT", "KILL", "TYPE", "pubsub"],
    ];
    for fault in faults {
        redis_cli(&redis, fault);
        for (who, c) in [("a", &mut a), ("b", &mut b)] {
            let text = format!("{who} after {}", fault.join(" "));
            let ack = support::send_until_acked(c, "h", &text, Duration::from_secs(10));
            acked.push(ack["seq"].as_u64().unwrap());
        }
    }
    // Every acked message is in both nodes' history, once.
    acked.sort_unstable();
    for n in &nodes {
        let seqs: Vec<u64> = history(n, "h", *acked.last().unwrap()).iter().map(|m| m.0).collect();
        for seq in &acked {
            assert_eq!(seqs.iter().filter(|s| *s == seq).count(), 1, "seq {seq} on {seqs:?}");
        }
    }
}

#[test]
fn a_message_right_after_a_join_on_another_node_reaches_every_connection_50_times() {
    let redis = Redis::start();
    let nodes = [node(&redis, "n1"), node(&redis, "n2")];
    let mut u_here = nodes[0].client("u");
    let mut u_there = nodes[1].client("u");
    let mut v = nodes[1].client("v");
    for i in 0..50 {
        let room = format!("race{i}");
        v.join(&room);
        u_here.join(&room);
        let text = format!("right after join {i}");
        v.send_msg(&room, &text);
        for (which, c) in [("joining", &mut u_here), ("other", &mut u_there)] {
            let m = c.recv_where(|m| ty(m) == "message" && m["room"] == room.as_str());
            assert_eq!(m["text"].as_str(), Some(text.as_str()), "{which} connection, round {i}");
        }
    }
}

#[test]
fn a_node_that_was_away_applies_revocations_before_accepting_tokens() {
    let redis = Redis::start();
    let mut nodes = [node(&redis, "n1"), node(&redis, "n2")];
    let admin = support::sign(
        &json!({"sub": "root", "exp": support::now_s() + 600, "admin": true}),
        support::SECRET,
    );
    let token = support::sign(
        &json!({"sub": "frank", "exp": support::now_s() + 600, "jti": "frank-1"}),
        support::SECRET,
    );
    Client::connect(nodes[1].addr, Auth::Bearer(&token), Enc::Json);
    let _ = nodes[1].sigterm();
    let (status, body) = post(&nodes[0], "/api/revoke", &admin, r#"{"jti":"frank-1"}"#);
    assert_eq!(status, 200, "{body}");
    nodes[1].restart();
    // Refused by the returning node from its first connection on.
    let err = Client::try_connect(nodes[1].addr, Auth::Bearer(&token), &[]).err();
    assert!(matches!(err, Some(support::ConnectError::Http(401, _))), "{err:?}");
    // A user revocation on one node closes the user's sockets on the other.
    let mut live = nodes[1].client("grace");
    let (status, body) = post(&nodes[0], "/api/revoke", &admin, r#"{"user":"grace"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(live.expect_close(), 4001);
}

/// One RESP reply, enough of it for these tests.
#[derive(Debug)]
enum Resp {
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
    /// A status, integer or error reply.
    Other,
}

/// Sends one command to Redis over a raw connection and reads its reply
/// (binary-safe, unlike redis-cli's output).
fn redis_raw(redis: &Redis, args: &[&[u8]]) -> Resp {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n");
    }
    s.write_all(&req).unwrap();
    fn read(r: &mut BufReader<std::net::TcpStream>) -> Resp {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let (kind, rest) = line.trim_end().split_at(1);
        match kind {
            "$" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return Resp::Bulk(None);
                }
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf).unwrap();
                buf.truncate(n as usize);
                Resp::Bulk(Some(buf))
            }
            "*" => Resp::Array((0..rest.parse::<i64>().unwrap().max(0)).map(|_| read(r)).collect()),
            _ => Resp::Other,
        }
    }
    read(&mut BufReader::new(s))
}

/// The sealed body of the first entry of `room`'s log in Redis.
fn first_logged(redis: &Redis, room: &str) -> Vec<u8> {
    let key = format!("chinwag:log:{room}");
    let Resp::Array(entries) = redis_raw(redis, &[b"XRANGE", key.as_bytes(), b"-", b"+"]) else {
        panic!("no log")
    };
    let Some(Resp::Array(entry)) = entries.first() else { panic!("empty log") };
    let Some(Resp::Array(fields)) = entry.get(1) else { panic!("no fields") };
    let Some(Resp::Bulk(Some(sealed))) = fields.get(1) else { panic!("no body") };
    sealed.clone()
}

fn rejected(server: &Server) -> u64 {
    let (_, text) = support::http_get(server.addr, "/metrics", &[]);
    text.lines()
        .find_map(|l| l.strip_prefix("chinwag_cluster_payloads_rejected_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn forged_and_replayed_cluster_payloads_change_nothing() {
    let redis = Redis::start();
    let nodes = [node(&redis, "n1"), node(&redis, "n2")];
    let mut a = nodes[0].client("a");
    a.join("f");
    let mut b = nodes[1].client("b");
    b.join("f");
    assert_eq!(a.send_msg("f", "real")["seq"].as_u64(), Some(1));
    assert_eq!(b.recv_type("message")["text"], "real");
    // The real, sealed body of seq 1, from the room's log.
    let sealed = &first_logged(&redis, "f");
    let before = rejected(&nodes[1]);
    let publish = |payload: Vec<u8>| {
        redis_raw(&redis, &[b"PUBLISH", b"chinwag:events", &payload]);
    };
    // A replay of the real payload as the next seq, and at an absurd seq.
    for seq in ["2", "18446744073709551615"] {
        publish([format!("M{seq} ").as_bytes(), sealed].concat());
    }
    // A forged message and a forged event: not sealed with the cluster key.
    let forged = json!({"room": "f", "ts": support::now_ms(), "from": "a", "text": "forged"});
    publish([b"M2 ".as_slice(), &rmp_serde::to_vec_named(&forged).unwrap()].concat());
    let member = json!({"Member": {"node": "n9", "room": "f", "user": "b", "joined": false}});
    publish([b"E".as_slice(), &rmp_serde::to_vec_named(&member).unwrap()].concat());
    wait_for(Duration::from_secs(10), "the node to drop all four", || {
        rejected(&nodes[1]) >= before + 4
    });
    // Nothing reached b, and the room goes on at seq 2 with b still in it.
    assert!(b.ping_barrier().iter().all(|f| ty(f) != "message" && ty(f) != "left"));
    assert_eq!(a.send_msg("f", "after")["seq"].as_u64(), Some(2));
    let m = b.recv_type("message");
    assert_eq!((m["seq"].as_u64(), m["text"].as_str()), (Some(2), Some("after")));
}

#[test]
fn nodes_reach_a_tls_redis_as_an_acl_user() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let path = |name: &str, pem: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (ca_pem, cert_pem, key_pem) = (
        path("ca.pem", ca.pem()),
        path("redis.pem", cert.pem()),
        path("redis.key", key.serialize_pem()),
    );
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).unwrap().port();
    let tls_port = port.to_string();
    let extra = [
        "--port",
        "0",
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert_pem,
        "--tls-key-file",
        &key_pem,
        "--tls-ca-cert-file",
        &ca_pem,
        "--tls-auth-clients",
        "no",
        "--user",
        "default",
        "off",
        "--user",
        "chinwag",
        "on",
        ">s3cret",
        "~*",
        "&*",
        "+@all",
    ];
    let redis = Redis::start_with(port, extra.iter().map(|s| s.to_string()).collect());
    let url = format!("rediss://chinwag:s3cret@localhost:{}/0", redis.port);
    let start = |id: &str| {
        let args = ["--open", "--node-id", id, "--redis", &url, "--redis-ca", &ca_pem];
        let s = Server::start_with(Opts::new(&args));
        wait_for(Duration::from_secs(10), "the TLS link", || s.health().1["redis"] == "ok");
        s
    };
    let nodes = [start("t1"), start("t2")];
    let mut a = nodes[0].client("a");
    a.join("tls");
    let mut b = nodes[1].client("b");
    b.join("tls");
    a.send_msg("tls", "over tls");
    assert_eq!(b.recv_type("message")["text"], "over tls");
    // The wrong password is refused: that node's link stays down.
    let bad = format!("rediss://chinwag:wrong@localhost:{}/0", redis.port);
    let args = ["--open", "--node-id", "t3", "--redis", &bad, "--redis-ca", &ca_pem];
    let s = Server::start_with(Opts::new(&args));
    thread::sleep(Duration::from_secs(1));
    assert_eq!(s.health().1["redis"], "down");
}

/// A node's disk fills in the middle of a stream of sends. The cluster
/// sequences a send before its node stores it, so a send caught between
/// the two is on the other node already: it must not be refused (its
/// sender would send it again), and it is acked once its node has healed
/// and stored it from the room's log. What is refused (`unavailable`) is on
/// no node; what is acked is on both, in one gap-free history.
#[test]
fn a_full_disk_on_one_node_never_refuses_what_the_cluster_accepted() {
    let Some(fs) = crate::integrity::Tmpfs::mount("24m") else { return };
    let redis = Redis::start();
    let a = node_with(&redis, "n1", |o| {
        o.dir = Some(fs.dir.path().join("data"));
        o.args.extend(["--min-free".to_string(), "0".to_string()]);
    });
    let b = node(&redis, "n2");
    let mut alice = a.client("alice");
    alice.join("full");
    let big = "x".repeat(3900);
    let text = |i: u64| format!("{i} {big}");
    let mut replies: BTreeMap<u64, Value> = BTreeMap::new();
    let mut sent = 0;
    // Windows of 50, each read back before the next, until the first
    // refusal, or a window that stays unanswered: a send caught by the
    // fault is not answered before the heal.
    'fill: while sent < 20_000 {
        for _ in 0..50 {
            alice
                .send_json(json!({"type": "send", "id": sent, "room": "full", "text": text(sent)}));
            sent += 1;
        }
        while (replies.len() as u64) < sent {
            let Some(r) = alice.recv_within(Duration::from_secs(3)) else { break 'fill };
            if !r["id"].is_u64() {
                continue;
            }
            let refused = ty(&r) == "error";
            if refused {
                assert_eq!(r["code"], "unavailable", "{r}");
            }
            replies.insert(r["id"].as_u64().unwrap(), r);
            if refused {
                break 'fill;
            }
        }
    }
    assert!(
        (replies.len() as u64) < sent || replies.values().any(|r| ty(r) == "error"),
        "the disk never filled"
    );
    // More room: the node heals by itself, and every send gets its answer.
    fs.resize("512m");
    while (replies.len() as u64) < sent {
        let r = alice.recv_where(|r| r["id"].is_u64());
        replies.insert(r["id"].as_u64().unwrap(), r);
    }
    let after = support::send_until_acked(&mut alice, "full", "healed", Duration::from_secs(20));
    let last = after["seq"].as_u64().unwrap();
    let on_a = history(&a, "full", last);
    let on_b = history(&b, "full", last);
    assert_eq!(on_a, on_b, "the nodes' histories differ");
    let seqs: Vec<u64> = on_b.iter().map(|m| m.0).collect();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "a gap or a duplicate");
    let stored: BTreeMap<&str, u64> = on_b.iter().map(|(seq, t)| (t.as_str(), *seq)).collect();
    let mut acked = 0;
    for (i, r) in &replies {
        let t = text(*i);
        if ty(r) == "ack" {
            acked += 1;
            assert_eq!(
                stored.get(t.as_str()),
                r["seq"].as_u64().as_ref(),
                "acked send {i} not there"
            );
        } else {
            assert_eq!(r["code"], "unavailable", "{r}");
            assert!(!stored.contains_key(t.as_str()), "send {i} was refused, yet delivered: {r}");
        }
    }
    assert_eq!(acked + 1, on_b.len(), "history holds something nobody was acked");
}

#[test]
fn garbage_on_the_channel_and_in_our_keys_is_refused_or_healed() {
    let redis = Redis::start();
    let mut nodes = vec![node(&redis, "n1"), node(&redis, "n2")];
    let mut a = nodes[0].client("a");
    a.join("h");
    let mut b = nodes[1].client("b");
    b.join("h");
    assert_eq!(a.send_msg("h", "one")["seq"].as_u64(), Some(1));
    assert_eq!(b.recv_type("message")["seq"], 1);
    let sealed = &first_logged(&redis, "h");

    // 300 payloads of garbage on the channel: random bytes, random bodies
    // behind both prefixes, the real body bit-flipped or cut short, and
    // seqs that are no numbers.
    let before = rejected(&nodes[1]);
    let mut rng = crate::fuzz::Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..300usize {
        let n = 1 + (i * 7) % 200;
        let payload = match i % 6 {
            0 => rng.bytes(n),
            1 => [b"M".as_slice(), &rng.bytes(n)].concat(),
            2 => [b"E".as_slice(), &rng.bytes(n)].concat(),
            3 => {
                let mut body = sealed.clone();
                let at = rng.bytes(2);
                let at = (usize::from(at[0]) << 8 | usize::from(at[1])) % body.len();
                body[at] ^= 1 << (i % 8);
                [b"M2 ".as_slice(), &body].concat()
            }
            4 => [b"M2 ".as_slice(), &sealed[..n % sealed.len()]].concat(),
            _ => {
                let seq = ["0", "-1", "x", "99999999999999999999999", ""][i % 5];
                [format!("M{seq} ").as_bytes(), sealed].concat()
            }
        };
        redis_raw(&redis, &[b"PUBLISH", b"chinwag:events", &payload]);
    }
    wait_for(Duration::from_secs(20), "the node to drop all 300", || {
        rejected(&nodes[1]) >= before + 300
    });
    assert!(b.ping_barrier().iter().all(|f| ty(f) != "message"), "garbage reached b");

    // Our keys overwritten with something else: the room's next event
    // heals each of them, and no seq is given twice.
    let sent = |c: &mut Client, frame: Value, what: &str| {
        let r = c.call(frame);
        assert_eq!(ty(&r), "ack", "{what}: {r}");
        r["seq"].as_u64().unwrap()
    };
    redis_raw(&redis, &[b"SET", b"chinwag:seq:h", b"not a number"]);
    let two = json!({"type": "send", "room": "h", "text": "two"});
    assert_eq!(sent(&mut a, two, "a counter that is no number"), 2);
    redis_raw(&redis, &[b"SET", b"chinwag:log:h", b"not a stream"]);
    let three = json!({"type": "send", "room": "h", "text": "three"});
    assert_eq!(sent(&mut b, three, "a log that is no stream"), 3);
    redis_raw(&redis, &[b"SET", b"chinwag:gone:h", b"not a set"]);
    let edit = json!({"type": "edit", "room": "h", "seq": 1, "text": "one, edited"});
    assert_eq!(sent(&mut a, edit, "a deleted set that is no set"), 4);
    redis_raw(&redis, &[b"SET", b"chinwag:rx:h:1", b"not a hash"]);
    let react = json!({"type": "react", "room": "h", "seq": 1, "emoji": "👍", "on": true});
    assert_eq!(sent(&mut b, react, "reactions that are no hash"), 5);

    // A counter that is no number while the subscribers reconnect (their
    // resync restores the counters), then a new node, which knows nothing
    // of the room, sends with the counter lost again: the log is ahead,
    // and its seq goes on after the log's last entry.
    redis_raw(&redis, &[b"SET", b"chinwag:seq:h", b"not a number"]);
    redis_cli(&redis, &["CLIENT", "KILL", "TYPE", "pubsub"]);
    let six = support::send_until_acked(&mut a, "h", "six", Duration::from_secs(10));
    assert_eq!(six["seq"].as_u64(), Some(6));
    redis_raw(&redis, &[b"SET", b"chinwag:seq:h", b"not a number"]);
    nodes.push(node(&redis, "n3"));
    let mut c = nodes[2].client("c");
    c.join("h");
    let seven = json!({"type": "send", "room": "h", "text": "seven"});
    assert_eq!(sent(&mut c, seven, "a new node, the counter lost"), 7);

    // b saw each event once, in order; the nodes that were there have the
    // whole room, and nobody panicked.
    let got: Vec<u64> = b
        .collect_until(|v| v["seq"] == 7)
        .iter()
        .filter(|v| ["message", "edit", "reaction"].contains(&ty(v)))
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, (2..=7).collect::<Vec<_>>());
    a.collect_until(|v| v["room"] == "h" && v["seq"] == 7);
    for n in &nodes[..2] {
        let mut auditor = n.client("auditor");
        auditor.join("h");
        let items = crate::events::all_history(&mut auditor, "h");
        let seqs: Vec<u64> = items.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=7).collect::<Vec<_>>(), "{items:?}");
        assert_eq!(items[0]["text"], "one, edited", "{items:?}");
    }
    // Redis claims seqs the nodes never saw, and its log cannot be read,
    // while the subscribers reconnect: each node's resync cannot repair
    // the room, says so, and comes up anyway; the room goes on.
    redis_raw(&redis, &[b"SET", b"chinwag:seq:h", b"9"]);
    redis_raw(&redis, &[b"SET", b"chinwag:log:h", b"not a stream"]);
    redis_cli(&redis, &["CLIENT", "KILL", "TYPE", "pubsub"]);
    wait_for(Duration::from_secs(10), "both resyncs to find the log unreadable", || {
        nodes[..2].iter().all(|n| n.log_text().contains("cannot be read"))
    });
    let ten = support::send_until_acked(&mut a, "h", "ten", Duration::from_secs(10));
    assert_eq!(ten["seq"].as_u64(), Some(10));
    assert_eq!(b.recv_where(|v| v["seq"] == 10)["text"], "ten");
    for n in &nodes {
        let log = n.log_text();
        assert!(!log.contains("panicked"), "a node panicked:\n{log}");
    }
}
