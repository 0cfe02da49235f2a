//! The Socket.IO v4 dialect, for comparing chinwag with a Socket.IO server
//! driven the same way (`--proto socketio`; the peer is `peers/socketio/`).
//!
//! Owns: the Engine.IO v4 and Socket.IO v4 packets the harness writes and
//! reads over a raw WebSocket (`GET /socket.io/?EIO=4&transport=websocket`,
//! no long-polling): open (`0{..}`), ping/pong (`2`/`3`), namespace connect
//! (`40`), events (`42["name",payload]`, with an ack id `42<id>[..]`) and
//! acks (`43<id>[..]`). Each packet is one text frame (Engine.IO v4 sends no
//! batches over WebSocket). The event names are the peer's: `join_room`
//! (payload: the room), `send_message` ({room, text}), `message` ({room, seq,
//! ts, from, text}).

use crate::wire::{json_after, message_fields, push_u64};

/// Ack id of the `join_room` event (sends use their send stamp, which is
/// never this small).
pub const JOIN_ID: u64 = 1;

/// The upgrade path for `user` (the peer reads `user` from the query).
pub fn path(user: &str) -> String {
    format!("/socket.io/?EIO=4&transport=websocket&user={user}")
}

/// What the harness pulled out of one Engine.IO packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Engine.IO open (`0{"sid":..}`): answer with a namespace connect.
    Open,
    /// Engine.IO ping: answer with a pong.
    Ping,
    /// The namespace connect was accepted (`40{"sid":..}`).
    Connected,
    /// The namespace connect was refused (`44{..}`).
    Refused(&'a [u8]),
    /// A `message` event.
    Message { room: &'a [u8], seq: u64, stamp: Option<u64> },
    /// An ack of our event `id`, with its payload array.
    Ack { id: u64, body: &'a [u8] },
    /// Engine.IO close or Socket.IO disconnect.
    Closed,
    /// Anything else (pong, noop, other events).
    Other,
}

/// Classifies one text frame.
pub fn peek(p: &[u8]) -> Result<Packet<'_>, String> {
    match p {
        [b'0', ..] => Ok(Packet::Open),
        [b'1', ..] | [b'4', b'1', ..] => Ok(Packet::Closed),
        [b'2', ..] => Ok(Packet::Ping),
        [b'4', b'0', ..] => Ok(Packet::Connected),
        [b'4', b'4', rest @ ..] => Ok(Packet::Refused(rest)),
        [b'4', b'2', rest @ ..] => {
            let Some(body) = rest.strip_prefix(b"[\"message\",") else { return Ok(Packet::Other) };
            let (room, seq, stamp) =
                message_fields(body).ok_or("message event without room or seq")?;
            Ok(Packet::Message { room, seq, stamp })
        }
        [b'4', b'3', rest @ ..] => {
            let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let id = std::str::from_utf8(&rest[..n]).ok().and_then(|s| s.parse().ok());
            let id = id.ok_or("ack without an id")?;
            Ok(Packet::Ack { id, body: &rest[n..] })
        }
        _ => Ok(Packet::Other),
    }
}

/// The `seq` in an ack's payload (`[{"room":..,"seq":N,..}]`), if any.
pub fn ack_seq(body: &[u8]) -> Option<u64> {
    let s = json_after(body, b"\"seq\":")?;
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&s[..n]).ok()?.parse().ok()
}

/// Appends the namespace connect for `/`.
pub fn connect(out: &mut Vec<u8>) {
    out.extend_from_slice(b"40");
}

/// Appends an Engine.IO pong.
pub fn pong(out: &mut Vec<u8>) {
    out.push(b'3');
}

/// Appends `42<id>["join_room","ROOM"]` (room names are ours: no escaping).
pub fn join(room: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"42");
    push_u64(out, JOIN_ID);
    out.extend_from_slice(b"[\"join_room\",\"");
    out.extend_from_slice(room.as_bytes());
    out.extend_from_slice(b"\"]");
}

/// Appends `42<id>["send_message",{"room":ROOM,"text":TEXT}]`; `text` is
/// ours (see `wire::text`), so it needs no escaping either.
pub fn send(id: u64, room: &str, text: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"42");
    push_u64(out, id);
    out.extend_from_slice(b"[\"send_message\",{\"room\":\"");
    out.extend_from_slice(room.as_bytes());
    out.extend_from_slice(b"\",\"text\":\"");
    out.extend_from_slice(text);
    out.extend_from_slice(b"\"}]");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_classified() {
        assert_eq!(peek(br#"0{"sid":"x","upgrades":[],"pingInterval":25000}"#), Ok(Packet::Open));
        assert_eq!(peek(b"2"), Ok(Packet::Ping));
        assert_eq!(peek(br#"40{"sid":"y"}"#), Ok(Packet::Connected));
        assert_eq!(peek(b"41"), Ok(Packet::Closed));
        assert_eq!(peek(br#"44{"message":"no"}"#), Ok(Packet::Refused(br#"{"message":"no"}"#)));
        let m = br#"42["message",{"room":"r1","seq":7,"ts":1,"from":"u0","text":"t=55;xx"}]"#;
        assert_eq!(peek(m), Ok(Packet::Message { room: b"r1", seq: 7, stamp: Some(55) }));
        assert_eq!(peek(br#"42["typing",{}]"#), Ok(Packet::Other));
        let a = br#"4312345[{"room":"r1","seq":9,"ts":3}]"#;
        assert_eq!(
            peek(a),
            Ok(Packet::Ack { id: 12345, body: br#"[{"room":"r1","seq":9,"ts":3}]"# })
        );
        assert_eq!(ack_seq(br#"[{"room":"r1","seq":9,"ts":3}]"#), Some(9));
        assert!(peek(b"43[1]").is_err());
    }

    #[test]
    fn events_are_written() {
        let mut out = Vec::new();
        join("r3", &mut out);
        assert_eq!(out, br#"421["join_room","r3"]"#);
        out.clear();
        send(99, "r3", b"t=1;x", &mut out);
        assert_eq!(out, br#"4299["send_message",{"room":"r3","text":"t=1;x"}]"#);
        let v: serde_json::Value = serde_json::from_slice(&out[4..]).unwrap();
        assert_eq!(v[1]["text"], "t=1;x");
        assert_eq!(path("u1"), "/socket.io/?EIO=4&transport=websocket&user=u1");
    }
}
