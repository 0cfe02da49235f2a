//! The bytes on the wire (PROTOCOL.md sections 3 to 5): client frames in,
//! server frames out, the naming and text rules, and HTTP responses.
//!
//! Owns encoding a server frame once into ready-to-write WebSocket frame
//! bytes ([`Encoded`], shared by every receiver). No I/O and no state.

mod client;
pub(crate) mod http;
mod names;
mod server;

pub use client::{
    check_emoji, check_query, check_text, decode, Code, Cursor, Decoded, Refusal, Request,
    DEFAULT_HISTORY, MAX_HISTORY, MAX_SEARCH,
};
pub use names::{dm_room, dm_users, valid_room, valid_user};
pub use server::{Kind, Limits, Msg, Presence, Reaction, RoomInfo, RoomState, ServerFrame};

use bytes::Bytes;
use serde::Serialize;
use tungstenite::protocol::frame::{
    coding::{Data, OpCode},
    FrameHeader,
};

/// Which encoding a connection speaks, chosen by subprotocol at the upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `chinwag.v1.json`: JSON in text frames (the default).
    Json,
    /// `chinwag.v1.msgpack`: MessagePack maps in binary frames.
    MsgPack,
}

impl Encoding {
    /// The subprotocol name echoed in the 101 response.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => "chinwag.v1.json",
            Encoding::MsgPack => "chinwag.v1.msgpack",
        }
    }

    /// Picks the encoding from a `Sec-WebSocket-Protocol` offer, JSON first.
    /// `None` (no offer) means JSON without echoing a subprotocol.
    pub fn choose(offer: Option<&str>) -> Option<Encoding> {
        let offer = offer?;
        let names = || offer.split(',').map(str::trim);
        if names().any(|p| p == "chinwag.v1.json") {
            Some(Encoding::Json)
        } else if names().any(|p| p == "chinwag.v1.msgpack") {
            Some(Encoding::MsgPack)
        } else {
            None
        }
    }
}

/// One server frame in both encodings, each ready to write (header included).
/// An encoding nobody needs is left out.
#[derive(Clone, Debug, Default)]
pub struct Encoded {
    /// JSON text frame.
    pub json: Option<Bytes>,
    /// MessagePack binary frame.
    pub msgpack: Option<Bytes>,
}

impl Encoded {
    /// Encodes `frame` once per requested encoding.
    pub fn encode<T: Serialize>(frame: &T, json: bool, msgpack: bool) -> Encoded {
        Encoded {
            json: json.then(|| encode(frame, Encoding::Json)),
            msgpack: msgpack.then(|| encode(frame, Encoding::MsgPack)),
        }
    }

    /// The bytes for a connection speaking `enc`.
    pub fn get(&self, enc: Encoding) -> Option<&Bytes> {
        match enc {
            Encoding::Json => self.json.as_ref(),
            Encoding::MsgPack => self.msgpack.as_ref(),
        }
    }
}

/// Encodes one server frame as a complete WebSocket frame in `enc`.
pub fn encode<T: Serialize>(frame: &T, enc: Encoding) -> Bytes {
    // Serialise into the thread's scratch buffer, then copy header and
    // payload into one allocation of the exact size: growing a fresh Vec
    // took four reallocations for a 100-byte frame, and a queued frame
    // kept up to twice its size (a 2 KB `joined` held 4 KB).
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let out = frame_into(frame, enc, &mut buf);
            if buf.capacity() > SCRATCH_KEEP {
                // A huge frame (a `hello` of 1,000 rooms) leaves no
                // high-water mark behind.
                *buf = Vec::new();
            }
            out
        }
        // Not reached (serialising never encodes a frame); kept so a
        // future nesting cannot panic on the serving path.
        Err(_) => frame_into(frame, enc, &mut Vec::new()),
    })
}

/// Scratch bytes each thread keeps between frames.
const SCRATCH_KEEP: usize = 64 << 10;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Serialises `frame` into `buf` (empty) and returns it framed, exactly sized.
fn frame_into<T: Serialize>(frame: &T, enc: Encoding, buf: &mut Vec<u8>) -> Bytes {
    let (ok, opcode) = match enc {
        Encoding::Json => (serde_json::to_writer(&mut *buf, frame).is_ok(), Data::Text),
        Encoding::MsgPack => (
            frame.serialize(&mut rmp_serde::Serializer::new(&mut *buf).with_struct_map()).is_ok(),
            Data::Binary,
        ),
    };
    // Our own frame types always serialise; this guards against a future one
    // that does not, without a panic on the serving path.
    debug_assert!(ok, "server frame failed to serialise");
    let len = buf.len();
    let mut out = Vec::with_capacity(header_len(len) + len);
    let header = FrameHeader { opcode: OpCode::Data(opcode), ..FrameHeader::default() };
    if header.format(len as u64, &mut out).is_err() {
        debug_assert!(false, "a Vec refused a write");
    }
    debug_assert_eq!(out.len(), header_len(len), "header length");
    out.extend_from_slice(buf);
    Bytes::from(out)
}

/// Length of an unmasked frame header for a payload of `len` bytes (RFC 6455 5.2).
fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// A complete close frame with `code` and a short reason.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    control_frame(OpCode::Control(tungstenite::protocol::frame::coding::Control::Close), &payload)
}

/// A complete ping frame with an empty payload.
pub fn ping_frame() -> Bytes {
    control_frame(OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping), &[])
}

fn control_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(2 + payload.len());
    let header = FrameHeader { opcode, ..FrameHeader::default() };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, &mut buf);
    buf.extend_from_slice(payload);
    Bytes::from(buf)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn frames_have_headers_sized_to_payload() {
        for n in [0usize, 100, 125, 126, 200, 65535, 65536, 70000] {
            let text = "x".repeat(n);
            let b = encode(
                &ServerFrame::Pong { id: Some(&Value::String(text)), ts: 1 },
                Encoding::Json,
            );
            let mut cur = std::io::Cursor::new(b.to_vec());
            let (h, len) = FrameHeader::parse(&mut cur).unwrap().unwrap();
            assert_eq!(h.opcode, OpCode::Data(Data::Text));
            assert_eq!(cur.position() as usize + len as usize, b.len());
            let body: Value = serde_json::from_slice(&b[cur.position() as usize..]).unwrap();
            assert_eq!(body["type"], "pong");
        }
    }

    #[test]
    fn msgpack_frames_are_named_maps() {
        let b = encode(&ServerFrame::Read { room: "r", seq: 7 }, Encoding::MsgPack);
        let v: Value = rmp_serde::from_slice(&b[2..]).unwrap();
        assert_eq!(v["type"], "read");
        assert_eq!(v["seq"], 7);
    }
}
