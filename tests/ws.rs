//! WebSocket protocol, sections 2 and 3 of PROTOCOL.md: the upgrade and its auth failures,
//! subprotocol choice (JSON and MessagePack), the `hello` frame, and every client frame type
//! with its reply and broadcasts (join, leave, send, dm, typing, history, read, presence, ping),
//! including presence across two connections of one user.
//!
//! "Nothing else arrives" checks never wait on a clock: the frame that would be wrong is
//! followed by a later frame from the same origin (a barrier), and the test asserts that the
//! wrong frame is not among those before the barrier.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

fn no_frame_of_type(frames: &[Value], t: &str) {
    let bad: Vec<&Value> = frames.iter().filter(|v| ty(v) == t).collect();
    assert!(bad.is_empty(), "unexpected {t} frame(s): {bad:?}");
}

#[test]
fn hello_has_user_node_time_rooms_and_limits() {
    let s = Server::start(&[
        "--rate",
        "33",
        "--burst",
        "44",
        "--max-text",
        "555",
        "--max-frame",
        "60000",
    ]);
    let before = now_ms();
    let mut a = s.client_token("alice");
    let after = now_ms();
    let h = a.hello.clone();
    assert_eq!(h["type"], "hello");
    assert_eq!(h["user"], "alice");
    let node = h["node"].as_str().expect("hello.node is a string");
    assert!(!node.is_empty(), "empty node id");
    let t = h["server_time"].as_u64().expect("hello.server_time is an integer (ms)");
    assert!(t + 120_000 >= before && t <= after + 120_000, "server_time {t} is not now ({before})");
    assert_eq!(h["rooms"], json!([]), "a new user is in no room");
    let l = &h["limits"];
    assert_eq!(l["max_text"], 555, "{l}");
    assert_eq!(l["max_frame"], 60000, "{l}");
    assert_eq!(l["rate"], 33, "{l}");
    assert_eq!(l["burst"], 44, "{l}");
    let (_, health) = s.health();
    assert_eq!(health["node"], node, "hello.node must be the node id /health reports");

    a.join("general");
    for i in 1..=3 {
        a.send_msg("general", &format!("m{i}"));
    }
    a.send_json(json!({"type": "read", "room": "general", "seq": 2}));
    a.ping_barrier();
    let b = s.client_token("alice");
    assert_eq!(
        b.hello["rooms"],
        json!([{"room": "general", "seq": 3, "read": 2, "unread": 0, "mentions": 0}])
    );
    // An empty room reports seq 0 and no read marker as 0.
    a.join("empty");
    let c = s.client_token("alice");
    assert_eq!(
        hello_room(&c.hello, "empty"),
        Some(&json!({"room": "empty", "seq": 0, "read": 0, "unread": 0, "mentions": 0})),
        "{}",
        c.hello
    );
}

#[test]
fn auth_failures_answer_401_without_upgrade() {
    let s = Server::start(&[]);
    let wrong_secret = sign(&json!({"sub": "alice", "exp": now_s() + 3600}), "not-the-secret");
    let expired = sign(&json!({"sub": "alice", "exp": now_s() - 3600}), SECRET);
    let no_exp = sign(&json!({"sub": "alice"}), SECRET);
    let cases: Vec<(&str, Auth<'_>)> = vec![
        ("no token", Auth::None),
        ("garbage bearer", Auth::Bearer("not-a-jwt")),
        ("garbage query", Auth::Query("a.b.c")),
        ("wrong secret", Auth::Bearer(&wrong_secret)),
        ("expired", Auth::Bearer(&expired)),
        ("expired in query", Auth::Query(&expired)),
        ("exp missing", Auth::Bearer(&no_exp)),
        ("?user= without --open", Auth::Open("alice")),
    ];
    for (what, auth) in cases {
        match Client::try_connect(s.addr, auth, &[PROTO_JSON]) {
            Err(ConnectError::Http(401, _)) => {}
            Err(e) => panic!("{what}: expected HTTP 401, got {e:?}"),
            Ok(c) => panic!("{what}: upgraded without valid auth, hello {}", c.hello),
        }
    }
    let r = http_request(s.addr, "GET", "/ws", UPGRADE_HEADERS, "");
    assert_eq!(r.status, 401, "raw upgrade without token: {r:?}");
    let body: Value = serde_json::from_str(&r.body).expect("401 body is JSON");
    assert_eq!(body["error"], "unauthorized", "{body}");
    let bearer = format!("Bearer {expired}");
    let mut h = UPGRADE_HEADERS.to_vec();
    h.push(("Authorization", &bearer));
    assert_eq!(http_request(s.addr, "GET", "/ws", &h, "").status, 401, "expired token");

    // The same server accepts good tokens, in the header and in the query.
    let c = Client::connect(s.addr, Auth::Bearer(&token("alice")), Enc::Json);
    assert_eq!(c.hello["user"], "alice");
    let q = Client::connect(s.addr, Auth::Query(&token("bob")), Enc::Json);
    assert_eq!(q.hello["user"], "bob");
    let full = sign(
        &json!({"sub": "Carol.9", "exp": now_s() + 600, "name": "Carol", "admin": true, "jti": "x1"}),
        SECRET,
    );
    let c = Client::connect(s.addr, Auth::Bearer(&full), Enc::Json);
    assert_eq!(c.hello["user"], "Carol.9");
}

#[test]
fn json_and_msgpack_subprotocols_interoperate() {
    let s = Server::open(&[]);
    let mut j = Client::connect(s.addr, Auth::Open("jay"), Enc::Json);
    assert_eq!(j.protocol.as_deref(), Some(PROTO_JSON), "server must echo the JSON subprotocol");
    assert!(!j.last_binary, "JSON hello must be a text frame");
    let mut m = Client::connect(s.addr, Auth::Open("em"), Enc::MsgPack);
    assert_eq!(m.protocol.as_deref(), Some(PROTO_MSGPACK), "server must echo msgpack");
    assert!(m.last_binary, "MessagePack hello must be a binary frame");
    assert_eq!(m.hello["user"], "em");
    assert!(m.hello["limits"]["max_text"].is_u64(), "msgpack hello fields: {}", m.hello);

    // No offer: JSON in text frames.
    let n = Client::try_connect(s.addr, Auth::Open("nobody"), &[]).expect("connect without offer");
    assert!(!n.last_binary, "no offer means JSON text frames");
    assert!(n.protocol.is_none() || n.protocol.as_deref() == Some(PROTO_JSON), "{:?}", n.protocol);
    // Both offered: one is chosen, echoed, and used.
    let b = Client::try_connect(s.addr, Auth::Open("both"), &[PROTO_MSGPACK, PROTO_JSON])
        .expect("connect offering both");
    match b.protocol.as_deref() {
        Some(PROTO_MSGPACK) => assert!(b.last_binary),
        Some(PROTO_JSON) => assert!(!b.last_binary),
        other => panic!("server must echo one of the offered protocols, echoed {other:?}"),
    }

    j.join("mix");
    m.join("mix");
    assert!(m.last_binary);
    let text = "msgpack → json: ünïcødé 😀 \"quoted\" <b>bold</b>";
    let ack = m.call(json!({"type": "send", "room": "mix", "text": text, "id": 7}));
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["id"], 7);
    assert!(m.last_binary, "ack must be binary on a msgpack connection");
    let got = j.recv_type("message");
    assert!(!j.last_binary);
    assert_eq!(got["text"], text);
    assert_eq!(got["from"], "em");
    assert_eq!(got["seq"], ack["seq"]);

    let ack2 = j.send_msg("mix", "json → msgpack");
    let got = m.recv_where(|v| ty(v) == "message" && v["seq"] == ack2["seq"]);
    assert!(m.last_binary);
    assert_eq!(got["text"], "json → msgpack");
    assert_eq!(got["from"], "jay");
    assert_eq!(got["room"], "mix");
}

#[test]
fn join_answers_joined_and_announces_a_new_member() {
    let s = Server::open(&[]);
    let mut bob = s.client("bob");
    bob.join("lobby");
    let first = bob.send_msg("lobby", "first");
    let mut a1 = s.client("alice");
    let mut a2 = s.client("alice");

    let j = a1.call(json!({"type": "join", "room": "lobby", "id": "j1"}));
    assert_eq!(j["type"], "joined", "{j}");
    assert_eq!(j["id"], "j1");
    assert_eq!(j["room"], "lobby");
    assert_eq!(j["seq"], 1);
    assert_eq!(sorted_strs(&j["members"]), ["alice", "bob"]);
    assert_eq!(sorted_strs(&j["online"]), ["alice", "bob"]);
    assert_eq!(j["more"], false);
    let h = j["history"].as_array().expect("history array");
    assert_eq!(h.len(), 1, "{j}");
    assert_eq!(h[0]["seq"], 1);
    assert_eq!(h[0]["from"], "bob");
    assert_eq!(h[0]["text"], "first");
    assert_eq!(h[0]["ts"], first["ts"]);
    assert_eq!(h[0]["type"], "message", "history items carry their kind: {}", h[0]);

    let p = bob.recv_type("presence");
    assert_eq!(p, json!({"type": "presence", "room": "lobby", "user": "alice", "state": "online"}));

    // The user's other connection is subscribed too.
    bob.send_msg("lobby", "second");
    let m = a2.recv_type("message");
    assert_eq!((m["seq"].as_u64(), m["text"].as_str()), (Some(2), Some("second")));
    let m = a1.recv_type("message");
    assert_eq!((m["seq"].as_u64(), m["text"].as_str()), (Some(2), Some("second")));

    // Joining again: no second presence for bob (the message after it is the barrier).
    bob.clear_stash();
    let again = a1.join("lobby");
    assert_eq!(again["seq"], 2);
    assert_eq!(again["history"].as_array().map(Vec::len), Some(2));
    a1.send_msg("lobby", "third");
    let frames = bob.collect_until(|v| ty(v) == "message" && v["text"] == "third");
    no_frame_of_type(&frames, "presence");
}

#[test]
fn leave_tells_all_own_connections_and_other_members() {
    let s = Server::open(&[]);
    let mut a1 = s.client("alice");
    let mut a2 = s.client("alice");
    let mut bob = s.client("bob");
    a1.join("r");
    bob.join("r");
    let l = a1.call(json!({"type": "leave", "room": "r", "id": "l1"}));
    assert_eq!(l, json!({"type": "left", "room": "r", "id": "l1"}));
    let l2 = a2.recv_type("left");
    assert_eq!(l2["room"], "r");
    let p = bob.recv_where(|v| ty(v) == "presence" && v["state"] == "offline");
    assert_eq!(p, json!({"type": "presence", "room": "r", "user": "alice", "state": "offline"}));

    // Both connections are unsubscribed: bob's next message in r is not delivered to them, the
    // DM after it is.
    bob.send_msg("r", "after leave");
    let dm = bob.call(json!({"type": "dm", "to": "alice", "text": "barrier"}));
    assert_eq!(dm["type"], "ack", "{dm}");
    for c in [&mut a1, &mut a2] {
        let frames = c.collect_until(|v| ty(v) == "message" && v["room"] == "dm:alice:bob");
        let leaked: Vec<&Value> =
            frames.iter().filter(|v| ty(v) == "message" && v["room"] == "r").collect();
        assert!(leaked.is_empty(), "message delivered after leave: {leaked:?}");
    }
    a1.call_err(json!({"type": "send", "room": "r", "text": "x"}), "not_member");
    let fresh = s.client("alice");
    assert!(hello_room(&fresh.hello, "r").is_none(), "left room still listed: {}", fresh.hello);
    let j = bob.join("r");
    assert_eq!(sorted_strs(&j["members"]), ["bob"]);
}

#[test]
fn send_acks_and_delivers_once_to_every_connection() {
    let s = Server::open(&[]);
    let mut a1 = s.client("alice");
    let mut a2 = s.client("alice");
    let mut bob = s.client("bob");
    a1.join("chat");
    bob.join("chat");
    let text = "<b>hi</b> & \"q\" 'x' \\n\nline 😀 <script>alert(1)</script>";
    let ack = a1.call(json!({"type": "send", "room": "chat", "text": text, "id": "s1"}));
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["id"], "s1");
    assert_eq!(ack["room"], "chat");
    assert_eq!(ack["seq"], 1);
    assert!(ack["ts"].as_u64().is_some(), "ack.ts: {ack}");
    for c in [&mut a1, &mut a2, &mut bob] {
        let m = c.recv_type("message");
        assert_eq!(m["room"], "chat", "{m}");
        assert_eq!(m["seq"], 1, "{m}");
        assert_eq!(m["from"], "alice", "{m}");
        assert_eq!(m["text"], text, "text must be relayed verbatim");
        assert!(m["ts"].as_u64().is_some(), "{m}");
    }
    let ack = a2.call(json!({"type": "send", "room": "chat", "text": "two", "id": 42}));
    assert_eq!(
        (ack["type"].as_str(), ack["id"].as_i64(), ack["seq"].as_u64()),
        (Some("ack"), Some(42), Some(2))
    );
    let ack = bob.send_msg("chat", "three");
    assert_eq!(ack["seq"], 3);
    // Exactly once each, in order, on every connection.
    for c in [&mut a1, &mut a2, &mut bob] {
        let frames = c.collect_until(|v| ty(v) == "message" && v["seq"] == 3);
        assert_eq!(seqs(&frames), [2, 3], "{frames:?}");
    }
    for c in [&mut a1, &mut a2, &mut bob] {
        let rest: Vec<Value> =
            c.ping_barrier().into_iter().filter(|v| ty(v) == "message").collect();
        assert!(rest.is_empty(), "duplicate deliveries: {rest:?}");
    }
}

#[test]
fn dm_uses_a_sorted_room_for_both_users_only() {
    let s = Server::open(&[]);
    let mut a1 = s.client("alice");
    let mut a2 = s.client("alice");
    // bob has never connected: `to` need not be online or known.
    let ack = a1.call(json!({"type": "dm", "to": "bob", "text": "hi bob", "id": "d1"}));
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["id"], "d1");
    assert_eq!(ack["room"], "dm:alice:bob");
    assert_eq!(ack["seq"], 1);
    for c in [&mut a1, &mut a2] {
        let m = c.recv_type("message");
        assert_eq!((m["room"].as_str(), m["from"].as_str()), (Some("dm:alice:bob"), Some("alice")));
        assert_eq!(m["text"], "hi bob");
    }
    let mut bob = s.client("bob");
    assert_eq!(
        hello_room(&bob.hello, "dm:alice:bob"),
        Some(&json!({"room": "dm:alice:bob", "seq": 1, "read": 0, "unread": 1, "mentions": 0})),
        "{}",
        bob.hello
    );
    let h = bob.call(json!({"type": "history", "room": "dm:alice:bob"}));
    assert_eq!(h["type"], "history", "{h}");
    assert_eq!(h["messages"][0]["text"], "hi bob");
    let ack = bob.call(json!({"type": "dm", "to": "alice", "text": "hi alice"}));
    assert_eq!((ack["room"].as_str(), ack["seq"].as_u64()), (Some("dm:alice:bob"), Some(2)));
    for c in [&mut a1, &mut a2, &mut bob] {
        let m = c.recv_where(|v| ty(v) == "message" && v["seq"] == 2);
        assert_eq!((m["from"].as_str(), m["text"].as_str()), (Some("bob"), Some("hi alice")));
    }
    // A member may also `send` into the DM room.
    let ack = bob.send_msg("dm:alice:bob", "via send");
    assert_eq!(ack["seq"], 3);
    let m = a2.recv_where(|v| ty(v) == "message" && v["seq"] == 3);
    assert_eq!(m["text"], "via send");

    // Ordering is by bytes and case sensitive: "Zed" < "alice".
    let mut zed = s.client("Zed");
    let ack = zed.call(json!({"type": "dm", "to": "alice", "text": "z"}));
    assert_eq!(ack["room"], "dm:Zed:alice", "{ack}");
    let ack = a1.call(json!({"type": "dm", "to": "Zed", "text": "z2"}));
    assert_eq!((ack["room"].as_str(), ack["seq"].as_u64()), (Some("dm:Zed:alice"), Some(2)));

    // Anyone else gets forbidden; joining a dm name is invalid_room.
    let mut carol = s.client("carol");
    let room = "dm:alice:bob";
    carol.call_err(json!({"type": "send", "room": room, "text": "intrude"}), "forbidden");
    carol.call_err(json!({"type": "history", "room": room}), "forbidden");
    carol.call_err(json!({"type": "presence", "room": room}), "forbidden");
    carol.call_err(json!({"type": "typing", "room": room, "active": true}), "forbidden");
    carol.call_err(json!({"type": "read", "room": room, "seq": 1}), "forbidden");
    carol.call_err(json!({"type": "join", "room": room}), "invalid_room");
    // Bad recipients.
    a1.call_err(json!({"type": "dm", "to": "alice", "text": "me"}), "bad_request");
    a1.call_err(json!({"type": "dm", "to": "not valid!", "text": "x"}), "invalid_user");
    a1.call_err(json!({"type": "dm", "to": "", "text": "x"}), "invalid_user");
    a1.call_err(json!({"type": "dm", "to": "u".repeat(65), "text": "x"}), "invalid_user");
    let ok = a1.call(json!({"type": "dm", "to": "u".repeat(64), "text": "x"}));
    assert_eq!(ok["type"], "ack", "a 64-character user id is valid: {ok}");
    // Nothing leaked to carol.
    let leaked: Vec<Value> =
        carol.ping_barrier().into_iter().filter(|v| ty(v) == "message").collect();
    assert!(leaked.is_empty(), "carol received DM traffic: {leaked:?}");
}

#[test]
fn typing_reaches_others_but_not_own_connections() {
    let s = Server::open(&[]);
    let mut a1 = s.client("alice");
    let mut a2 = s.client("alice");
    let mut bob = s.client("bob");
    a1.join("t");
    bob.join("t");
    a1.send_json(json!({"type": "typing", "room": "t", "active": true}));
    let t = bob.recv_type("typing");
    assert_eq!(t, json!({"type": "typing", "room": "t", "user": "alice", "active": true}));
    a1.send_json(json!({"type": "typing", "room": "t", "active": false}));
    let t = bob.recv_type("typing");
    assert_eq!(t["active"], false);
    // Barrier: a message sent after the typing frames.
    a1.send_msg("t", "done");
    for c in [&mut a1, &mut a2] {
        let frames = c.collect_until(|v| ty(v) == "message" && v["text"] == "done");
        no_frame_of_type(&frames, "typing");
    }
    let frames = a1.ping_barrier();
    no_frame_of_type(&frames, "typing");
}

#[test]
fn read_marker_syncs_to_the_same_users_other_connections() {
    let s = Server::open(&[]);
    let mut a1 = s.client("alice");
    let mut a2 = s.client("alice");
    let mut bob = s.client("bob");
    a1.join("rd");
    bob.join("rd");
    for i in 0..5 {
        a1.send_msg("rd", &format!("m{i}"));
    }
    a1.send_json(json!({"type": "read", "room": "rd", "seq": 4}));
    let r = a2.recv_type("read");
    assert_eq!(r, json!({"type": "read", "room": "rd", "seq": 4}));
    let own = a1.ping_barrier();
    no_frame_of_type(&own, "read");
    // Other users do not see alice's read marker (barrier: a message alice sends afterwards).
    a1.send_msg("rd", "after read");
    let frames = bob.collect_until(|v| ty(v) == "message" && v["text"] == "after read");
    no_frame_of_type(&frames, "read");
    let a3 = s.client("alice");
    assert_eq!(
        hello_room(&a3.hello, "rd"),
        Some(&json!({"room": "rd", "seq": 6, "read": 4, "unread": 0, "mentions": 0}))
    );
    let b2 = s.client("bob");
    let bob_rd = hello_room(&b2.hello, "rd").cloned();
    assert_eq!(bob_rd.as_ref().map(|r| r["read"].clone()), Some(json!(0)));
    assert_eq!(bob_rd.map(|r| r["unread"].clone()), Some(json!(6)), "alice's six messages");
}

#[test]
fn presence_list_and_ping_echo_ids() {
    let s = Server::open(&[]);
    let mut alice = s.client("alice");
    let mut bob = s.client("bob");
    alice.join("p");
    bob.join("p");
    let l = alice.call(json!({"type": "presence", "room": "p", "id": "pl"}));
    assert_eq!(l["type"], "presence_list", "{l}");
    assert_eq!(l["id"], "pl");
    assert_eq!(l["room"], "p");
    assert_eq!(sorted_strs(&l["online"]), ["alice", "bob"]);
    bob.close();
    let off = alice.recv_where(|v| ty(v) == "presence" && v["state"] == "offline");
    assert_eq!(off, json!({"type": "presence", "room": "p", "user": "bob", "state": "offline"}));
    let l = alice.call(json!({"type": "presence", "room": "p"}));
    assert_eq!(sorted_strs(&l["online"]), ["alice"]);
    // A member who is offline still counts as a member.
    let j = alice.join("p");
    assert_eq!(sorted_strs(&j["members"]), ["alice", "bob"]);
    assert_eq!(sorted_strs(&j["online"]), ["alice"]);

    let before = now_ms();
    for id in [json!("p-1"), json!(17), json!(-3), json!(0), json!("x".repeat(64))] {
        let p = alice.call(json!({"type": "ping", "id": id}));
        assert_eq!(p["type"], "pong", "{p}");
        assert_eq!(p["id"], id);
        let ts = p["ts"].as_u64().expect("pong.ts");
        assert!(ts + 120_000 >= before, "pong.ts {ts} is not a current time");
    }
    alice.clear_stash();
    alice.send_json(json!({"type": "ping"}));
    let p = alice.recv_type("pong");
    assert_eq!(p["type"], "pong", "{p}");
    assert!(p.get("id").is_none() || p["id"].is_null(), "no id sent, none echoed: {p}");
}

#[test]
fn presence_follows_first_and_last_connection_of_a_user() {
    let s = Server::open(&[]);
    let mut bob = s.client("bob");
    let mut a1 = s.client("alice");
    a1.join("room");
    bob.join("room");
    bob.clear_stash();
    a1.close();
    let off = bob.recv_type("presence");
    assert_eq!(
        off,
        json!({"type": "presence", "room": "room", "user": "alice", "state": "offline"})
    );

    // First live connection: online, with the room already subscribed.
    let mut a1 = s.client("alice");
    assert!(hello_room(&a1.hello, "room").is_some());
    let on = bob.recv_type("presence");
    assert_eq!(on, json!({"type": "presence", "room": "room", "user": "alice", "state": "online"}));

    // Second connection: no presence (barrier: a message from that connection).
    let mut a2 = s.client("alice");
    a2.send_msg("room", "from a2");
    let frames = bob.collect_until(|v| ty(v) == "message" && v["text"] == "from a2");
    no_frame_of_type(&frames, "presence");
    a1.recv_where(|v| ty(v) == "message" && v["text"] == "from a2");

    // Closing one of two: no offline.
    a1.close();
    a2.send_msg("room", "a1 gone");
    let frames = bob.collect_until(|v| ty(v) == "message" && v["text"] == "a1 gone");
    no_frame_of_type(&frames, "presence");
    let l = bob.call(json!({"type": "presence", "room": "room"}));
    assert_eq!(sorted_strs(&l["online"]), ["alice", "bob"]);

    // Closing the last: offline.
    a2.close();
    let off = bob.recv_type("presence");
    assert_eq!(off["state"], "offline", "{off}");
    assert_eq!(off["user"], "alice");
    let l = bob.call(json!({"type": "presence", "room": "room"}));
    assert_eq!(sorted_strs(&l["online"]), ["bob"]);
}

/// A user's last connection closing on a loop where nobody else is in the
/// room: that loop clears its own directory bits first, and the members on
/// the other loop are still told the user went offline. The kernel spreads
/// connections over the two loops' listeners by a hash of the address
/// pair, so users are added until the per-loop gauge shows both loops
/// holding someone. Then at least one user is not on bob's loop, and the
/// last of those to close leaves its loop without a member of the room (4
/// more users each time; 64 all on bob's loop would be a 1 in 2^64 chance).
#[test]
fn offline_reaches_members_on_another_loop() {
    let s = Server::open(&["--threads", "2"]);
    let mut bob = s.client("bob");
    bob.join("room");
    let mut users = Vec::new();
    loop {
        for _ in 0..4 {
            let user = format!("user{}", users.len());
            let mut c = s.client(&user);
            c.join("room");
            bob.recv_where(|v| ty(v) == "presence" && v["user"] == user.as_str());
            users.push((user, c));
        }
        // The gauge is refreshed once a second.
        let want = (users.len() + 1) as f64;
        let mut per_loop = Vec::new();
        wait_for(Duration::from_secs(10), &format!("the gauge to count {want}"), || {
            let m = crate::api::parse_prometheus(&http_get(s.addr, "/metrics", &[]).1);
            per_loop = m.get("chinwag_loop_connections").cloned().unwrap_or_default();
            per_loop.iter().sum::<f64>() == want
        });
        if per_loop.iter().filter(|&&n| n > 0.0).count() == 2 {
            break;
        }
        assert!(users.len() < 64, "64 users all on bob's loop: {per_loop:?}");
    }
    for (user, c) in users {
        c.close();
        let off = bob.recv_type("presence");
        assert_eq!(
            off,
            json!({"type": "presence", "room": "room", "user": user, "state": "offline"})
        );
    }
    // The room's state agrees: only bob is online in it.
    let l = bob.call(json!({"type": "presence", "room": "room"}));
    assert_eq!(sorted_strs(&l["online"]), ["bob"]);
}

/// The status of an upgrade request carrying `origin` (and `Host: host`).
fn upgrade_status(addr: std::net::SocketAddr, host: &str, origin: Option<&str>) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let mut s = tcp(addr);
    let mut req = format!(
        "GET /ws?user=o HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    if let Some(o) = origin {
        req.push_str(&format!("Origin: {o}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn cross_site_upgrades_are_refused_unless_same_origin_or_allowed() {
    let s = Server::open(&["--allowed-origins", "https://chat.example,https://ops.example"]);
    let host = s.addr.to_string();
    let same = format!("http://{host}");
    assert_eq!(upgrade_status(s.addr, &host, None), 101, "no Origin: not a browser");
    assert_eq!(upgrade_status(s.addr, &host, Some(&same)), 101, "same origin");
    assert_eq!(upgrade_status(s.addr, &host, Some("https://chat.example")), 101, "allowed");
    assert_eq!(upgrade_status(s.addr, &host, Some("https://evil.example")), 403);
    let other_port = format!("http://127.0.0.1:{}", s.addr.port() + 1);
    assert_eq!(upgrade_status(s.addr, &host, Some(&other_port)), 403, "another port");
    let r = http_request(
        s.addr,
        "GET",
        "/ws?user=o",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Origin", "https://evil.example"),
        ],
        "",
    );
    assert!(r.body.contains("\"forbidden\""), "{}", r.body);
}
