//! Encode and decode costs of the wire protocol: every server frame type
//! encoded (JSON and MessagePack, framed, ready to write) and every client
//! frame type decoded and validated.

use chinwag::wire::{
    decode, encode, Code, Encoding, Limits, Msg, Presence, RoomState, ServerFrame,
};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use serde_json::json;

fn server_frames(c: &mut Criterion) {
    let limits = Limits { max_text: 4000, max_frame: 65536, rate: 20, burst: 40 };
    let id = json!("c1");
    let history: Vec<Msg> = (1..=50)
        .map(|s| {
            let mut m = Msg::message("general", "alice", "x".repeat(100));
            (m.seq, m.ts) = (s, 1_732_250_000_000 + s);
            m
        })
        .collect();
    let mut message = Msg::message("general", "alice", "x".repeat(100));
    (message.seq, message.ts) = (121, 1_732_250_000_123);
    let members: Vec<String> = (0..20).map(|i| format!("user{i}")).collect();
    let data = json!({"version": 2, "by": "ci"});
    let frames: Vec<(&str, ServerFrame<'_>)> = vec![
        (
            "ack",
            ServerFrame::Ack { id: Some(&id), room: "general", seq: 121, ts: 1_732_250_000_123 },
        ),
        (
            "presence",
            ServerFrame::Presence { room: "general", user: "bob", state: Presence::Online },
        ),
        ("typing", ServerFrame::Typing { room: "general", user: "bob", active: true }),
        ("read", ServerFrame::Read { room: "general", seq: 120 }),
        ("pong", ServerFrame::Pong { id: Some(&id), ts: 1_732_250_000_123 }),
        (
            "hello",
            ServerFrame::Hello {
                user: "alice",
                name: Some("Alice"),
                node: "n1",
                server_time: 1_732_250_000_000,
                rooms: vec![RoomState {
                    room: "general",
                    seq: 120,
                    read: 117,
                    unread: 2,
                    mentions: 1,
                }],
                limits: &limits,
            },
        ),
        (
            "history50",
            ServerFrame::History {
                id: Some(&id),
                room: "general",
                messages: history.clone(),
                more: true,
            },
        ),
        (
            "joined",
            ServerFrame::Joined {
                id: Some(&id),
                room: "general",
                seq: 120,
                members: members.clone(),
                online: members[..5].to_vec(),
                names: Default::default(),
                history: history.clone(),
                more: true,
            },
        ),
        ("left", ServerFrame::Left { id: Some(&id), room: "general" }),
        (
            "presence_list",
            ServerFrame::PresenceList { id: Some(&id), room: "general", online: members.clone() },
        ),
        (
            "notification",
            ServerFrame::Notification {
                kind: "deploy",
                text: "v2 is out",
                data: Some(&data),
                ts: 1_732_250_000_123,
            },
        ),
        (
            "error",
            ServerFrame::Error {
                id: Some(&id),
                code: Code::RateLimited,
                message: "rate limit exceeded",
                retry_after_ms: Some(50),
            },
        ),
    ];
    let mut g = c.benchmark_group("encode");
    for enc in [Encoding::Json, Encoding::MsgPack] {
        g.bench_function(format!("message/{enc:?}"), |b| {
            b.iter(|| encode(black_box(&message), enc))
        });
    }
    for (name, frame) in &frames {
        for enc in [Encoding::Json, Encoding::MsgPack] {
            g.bench_function(format!("{name}/{enc:?}"), |b| {
                b.iter(|| encode(black_box(frame), enc))
            });
        }
    }
    g.finish();
}

fn client_frames(c: &mut Criterion) {
    let frames = [
        ("send", json!({"type": "send", "room": "general", "text": "x".repeat(100), "id": 7})),
        ("join", json!({"type": "join", "room": "general", "since": 120})),
        ("typing", json!({"type": "typing", "room": "general", "active": true})),
        ("dm", json!({"type": "dm", "to": "bob", "text": "x".repeat(100)})),
        ("read", json!({"type": "read", "room": "general", "seq": 120})),
        ("leave", json!({"type": "leave", "room": "general"})),
        ("presence", json!({"type": "presence", "room": "general"})),
        ("ping", json!({"type": "ping", "id": 7})),
        ("history", json!({"type": "history", "room": "general", "before": 100, "limit": 50})),
        ("edit", json!({"type": "edit", "room": "general", "seq": 120, "text": "x".repeat(100)})),
        (
            "react",
            json!({"type": "react", "room": "general", "seq": 120, "emoji": "👍", "on": true}),
        ),
    ];
    let mut g = c.benchmark_group("decode");
    for (name, v) in &frames {
        let as_json = serde_json::to_vec(v).unwrap();
        let as_mp = rmp_serde::to_vec_named(v).unwrap();
        g.bench_function(format!("{name}/Json"), |b| {
            b.iter(|| decode(black_box(&as_json), Encoding::Json, 4000))
        });
        g.bench_function(format!("{name}/MsgPack"), |b| {
            b.iter(|| decode(black_box(&as_mp), Encoding::MsgPack, 4000))
        });
    }
    g.finish();
}

criterion_group!(benches, server_frames, client_frames);
criterion_main!(benches);
