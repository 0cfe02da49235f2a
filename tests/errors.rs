//! Section 4 errors: every error code a single node can produce (`bad_request`, `invalid_room`,
//! `invalid_user`, `too_long`, `not_member`, `forbidden`; `rate_limited` lives in `limits`) and
//! malformed input of every kind, in both encodings. After each batch of abuse the connection
//! must still answer, and the server must still be healthy (`GET /health` 200 and a new client
//! can chat).

use serde_json::{json, Value};

use crate::support::*;

/// Sends a raw text frame and returns the next error frame.
fn raw_err(c: &mut Client, raw: &str) -> Value {
    c.send_text(raw);
    let e = c.recv();
    assert_eq!(ty(&e), "error", "expected an error for {raw:.200}, got {e}");
    e
}

#[test]
fn malformed_json_frames_are_bad_request_and_the_connection_survives() {
    let s = Server::open(&["--rate", "100000", "--burst", "100000"]);
    let mut c = s.client("alice");
    c.join("r");
    let raws = [
        "hello",
        "{\"type\":\"ping\"",
        "{\"type\":\"ping\"} trailing",
        "[1,2,3]",
        "42",
        "\"ping\"",
        "null",
        "true",
        "{}",
        "{\"type\":5}",
        "{\"type\":null}",
        "{\"type\":\"\"}",
        "{\"Type\":\"ping\"}",
        "{\"type\":\"PING\"}",
        "{\"type\":\"send\",\"room\":\"r\",\"text\":\"\\ud800\"}",
    ];
    for raw in raws {
        let e = raw_err(&mut c, raw);
        assert_eq!(e["code"], "bad_request", "for {raw}: {e}");
        assert!(e["message"].is_string(), "{e}");
    }
    // An empty and a blank text frame.
    for raw in ["", "   \n\t "] {
        let e = raw_err(&mut c, raw);
        assert_eq!(e["code"], "bad_request", "for {raw:?}: {e}");
    }
    // Unknown type: the id is still echoed.
    let e = c.call_err(json!({"type": "nope", "id": "u1"}), "bad_request");
    assert_eq!(e["id"], "u1");
    // Missing or mistyped fields, per frame type.
    let bad = [
        json!({"type": "join"}),
        json!({"type": "join", "room": 5}),
        json!({"type": "join", "room": "r", "since": "x"}),
        json!({"type": "join", "room": "r", "since": -1}),
        json!({"type": "leave"}),
        json!({"type": "send", "room": "r"}),
        json!({"type": "send", "text": "x"}),
        json!({"type": "send", "room": 5, "text": "x"}),
        json!({"type": "send", "room": "r", "text": 5}),
        json!({"type": "send", "room": "r", "text": null}),
        json!({"type": "send", "room": ["r"], "text": "x"}),
        json!({"type": "dm", "text": "x"}),
        json!({"type": "dm", "to": "bob"}),
        json!({"type": "dm", "to": 7, "text": "x"}),
        json!({"type": "typing", "room": "r"}),
        json!({"type": "typing", "room": "r", "active": "yes"}),
        json!({"type": "typing", "room": "r", "active": 1}),
        json!({"type": "history"}),
        json!({"type": "history", "room": "r", "limit": "x"}),
        json!({"type": "history", "room": "r", "before": "x"}),
        json!({"type": "history", "room": "r", "after": 1.5}),
        json!({"type": "read", "room": "r"}),
        json!({"type": "read", "room": "r", "seq": "x"}),
        json!({"type": "read", "room": "r", "seq": -2}),
        json!({"type": "presence"}),
    ];
    for (i, frame) in bad.into_iter().enumerate() {
        let mut f = frame;
        f["id"] = json!(format!("b{i}"));
        let e = c.call_err(f, "bad_request");
        assert_eq!(e["id"], format!("b{i}"));
    }
    // The connection is still usable.
    let ack = c.send_msg("r", "still here");
    assert_eq!(ack["seq"], 1);
    s.assert_healthy(true);
}

#[test]
fn ids_must_be_strings_or_integers_of_at_most_64_characters() {
    let s = Server::open(&[]);
    let mut c = s.client("alice");
    for id in [json!(1.5), json!({"a": 1}), json!([1]), json!(true), json!("x".repeat(65))] {
        c.send_json(json!({"type": "ping", "id": id}));
        let e = c.recv();
        assert_eq!(ty(&e), "error", "id {id} must be refused: {e}");
        assert_eq!(e["code"], "bad_request", "id {id}: {e}");
    }
    for id in [json!("x".repeat(64)), json!(i64::MAX), json!(i64::MIN), json!("ünï😀")] {
        c.send_json(json!({"type": "ping", "id": id}));
        let p = c.recv();
        assert_eq!(ty(&p), "pong", "id {id} must be accepted: {p}");
        assert_eq!(p["id"], id);
    }
    // An integer of 30 digits: either echoed or refused, but answered.
    c.send_text("{\"type\":\"ping\",\"id\":123456789012345678901234567890}");
    let r = c.recv();
    assert!(
        ty(&r) == "pong" || (ty(&r) == "error" && r["code"] == "bad_request"),
        "huge integer id: {r}"
    );
    // An integer literal of 70 digits is over 64 characters.
    c.send_text(&format!("{{\"type\":\"ping\",\"id\":{}}}", "9".repeat(70)));
    let e = c.recv();
    assert_eq!((ty(&e), e["code"].as_str()), ("error", Some("bad_request")), "{e}");
    let p = c.call(json!({"type": "ping", "id": "ok"}));
    assert_eq!(ty(&p), "pong");
    s.assert_healthy(true);
}

#[test]
fn room_and_user_names_are_validated() {
    let s = Server::open(&["--rate", "100000", "--burst", "100000"]);
    let mut c = s.client("alice");
    let long = "a".repeat(65);
    for room in [
        "General",
        "-abc",
        "_abc",
        ".abc",
        "",
        "has space",
        "ümlaut",
        "a/b",
        "a:b",
        &long,
        "room\n",
    ] {
        c.call_err(json!({"type": "join", "room": room}), "invalid_room");
        c.call_err(json!({"type": "send", "room": room, "text": "x"}), "invalid_room");
        c.call_err(json!({"type": "history", "room": room}), "invalid_room");
    }
    // `dm:` names exist only through `dm`: joining one is invalid_room.
    for room in ["dm:alice:bob", "dm:a:b", "dm:a"] {
        c.call_err(json!({"type": "join", "room": room}), "invalid_room");
    }
    for room in ["a".repeat(64), "0.a_b-c".to_string(), "9".to_string()] {
        let j = c.join(&room);
        assert_eq!(j["room"], room);
    }
    for to in ["", "a b", "ü", "x:y", "bob/1", &"x".repeat(65)] {
        c.call_err(json!({"type": "dm", "to": to, "text": "x"}), "invalid_user");
    }
    let ack = c.call(json!({"type": "dm", "to": "A.b_c-9", "text": "x"}));
    assert_eq!(ack["room"], "dm:A.b_c-9:alice", "{ack}");
    s.assert_healthy(true);
}

#[test]
fn text_must_be_nonblank_and_within_max_text_scalars() {
    let s = Server::open(&["--max-text", "10"]);
    let mut c = s.client("alice");
    let mut bob = s.client("bob");
    c.join("t");
    bob.join("t");
    for blank in ["", " ", "\n\t\r ", "\u{3000}\u{2003}\u{a0}\u{85}\u{2028} "] {
        c.call_err(json!({"type": "send", "room": "t", "text": blank}), "bad_request");
        c.call_err(json!({"type": "dm", "to": "bob", "text": blank}), "bad_request");
    }
    for long in ["a".repeat(11), "é".repeat(11), "😀".repeat(11), format!("{}x", " ".repeat(10))]
    {
        c.call_err(json!({"type": "send", "room": "t", "text": long}), "too_long");
        c.call_err(json!({"type": "dm", "to": "bob", "text": long}), "too_long");
    }
    // Exactly max_text Unicode scalar values is fine, whatever the byte length.
    for ok in ["a".repeat(10), "é".repeat(10), "😀".repeat(10), " padded  ".to_string(), "x".into()]
    {
        let ack = c.send_msg("t", &ok);
        let m = bob.recv_where(|v| ty(v) == "message" && v["seq"] == ack["seq"]);
        assert_eq!(m["text"], ok.as_str(), "stored and relayed verbatim");
    }
    s.assert_healthy(true);
}

#[test]
fn default_max_text_is_4000_scalars() {
    let s = Server::open(&[]);
    let mut c = s.client("alice");
    assert_eq!(c.hello["limits"]["max_text"], 4000);
    c.join("t");
    c.send_msg("t", &"😀".repeat(4000));
    c.call_err(json!({"type": "send", "room": "t", "text": "😀".repeat(4001)}), "too_long");
    c.call_err(json!({"type": "send", "room": "t", "text": "a".repeat(4001)}), "too_long");
}

#[test]
fn membership_is_required_for_room_operations() {
    let s = Server::open(&[]);
    let mut alice = s.client("alice");
    alice.join("priv");
    alice.send_msg("priv", "secret");
    let mut bob = s.client("bob");
    for f in [
        json!({"type": "send", "room": "priv", "text": "x"}),
        json!({"type": "typing", "room": "priv", "active": true}),
        json!({"type": "history", "room": "priv"}),
        json!({"type": "read", "room": "priv", "seq": 1}),
        json!({"type": "presence", "room": "priv"}),
        json!({"type": "send", "room": "nowhere", "text": "x"}),
    ] {
        bob.call_err(f, "not_member");
    }
    // Nothing bob tried reached alice (barrier: bob joins and sends).
    bob.join("priv");
    bob.send_msg("priv", "hello");
    let frames = alice.collect_until(|v| ty(v) == "message" && v["from"] == "bob");
    let typing: Vec<&Value> = frames.iter().filter(|v| ty(v) == "typing").collect();
    assert!(typing.is_empty(), "typing from a non-member was relayed: {typing:?}");
    assert_eq!(seqs(&frames), [1, 2], "{frames:?}");
}

#[test]
fn history_limits_are_validated() {
    let s = Server::open(&[]);
    let mut c = s.client("alice");
    c.join("h");
    for limit in [json!(0), json!(-1), json!(-100)] {
        c.call_err(json!({"type": "history", "room": "h", "limit": limit}), "bad_request");
    }
    let h = c.call(json!({"type": "history", "room": "h", "limit": 1000}));
    assert_eq!(
        h,
        json!({"type": "history", "id": h["id"], "room": "h", "messages": [], "more": false})
    );
}

#[test]
fn deep_nesting_and_garbage_do_not_hurt_the_server() {
    let s = Server::open(&[]);
    let mut c = s.client("alice");
    c.join("r");
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let e = raw_err(&mut c, &deep);
    assert_eq!(e["code"], "bad_request", "{e}");
    let deep_obj = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let e = raw_err(&mut c, &deep_obj);
    assert_eq!(e["code"], "bad_request", "{e}");
    let inner = format!(
        "{{\"type\":\"send\",\"room\":\"r\",\"text\":\"x\",\"id\":\"n\",\"extra\":{}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    c.send_text(&inner);
    let r = c.recv();
    assert!(
        ty(&r) == "error" && r["code"] == "bad_request",
        "10,000-deep nesting in a field must be bad_request: {r}"
    );
    // A binary frame that is not MessagePack, and a deeply nested one, on a JSON connection.
    c.send_binary(vec![0xc1, 0xff, 0x00, 0x13]);
    let e = c.recv();
    assert_eq!((ty(&e), e["code"].as_str()), ("error", Some("bad_request")), "{e}");
    let p = c.call(json!({"type": "ping", "id": "alive"}));
    assert_eq!(ty(&p), "pong");
    s.assert_healthy(true);
}

#[test]
fn malformed_msgpack_frames_are_bad_request() {
    let s = Server::open(&[]);
    let mut c = Client::connect(s.addr, Auth::Open("mp"), Enc::MsgPack);
    c.join("r");
    let mut deep = vec![0x91u8; 10_000];
    deep.push(0xc0);
    let map_with_deep = {
        // {"type":"ping","x":[[[...]]]}
        let mut v = vec![0x82, 0xa4];
        v.extend_from_slice(b"type");
        v.push(0xa4);
        v.extend_from_slice(b"ping");
        v.push(0xa1);
        v.push(b'x');
        v.extend_from_slice(&deep);
        v
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", vec![0xc1, 0xc1, 0xc1]),
        ("truncated map", vec![0x82, 0xa4, b't']),
        ("array", rmp_serde::to_vec(&json!([1, 2, 3])).unwrap()),
        ("integer", vec![0x2a]),
        ("nil", vec![0xc0]),
        ("empty", vec![]),
        ("no type", rmp_serde::to_vec_named(&json!({"room": "r"})).unwrap()),
        ("unknown type", rmp_serde::to_vec_named(&json!({"type": "zzz"})).unwrap()),
        (
            "mistyped",
            rmp_serde::to_vec_named(&json!({"type": "send", "room": 1, "text": 2})).unwrap(),
        ),
        ("deep", deep),
        ("deep in map", map_with_deep),
    ];
    for (what, bytes) in cases {
        c.send_binary(bytes);
        let e = c.recv();
        assert_eq!((ty(&e), e["code"].as_str()), ("error", Some("bad_request")), "{what}: {e}");
        assert!(c.last_binary, "errors on a msgpack connection are binary ({what})");
    }
    let ack = c.send_msg("r", "msgpack still works");
    assert_eq!(ack["seq"], 1);
    s.assert_healthy(true);
}
