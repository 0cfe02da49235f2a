//! The wire protocol of PROTOCOL.md sections 3 and 4: client frames in, server
//! frames out, and the naming and text rules.
//!
//! Owns: decoding a client frame (JSON or MessagePack) into a validated
//! [`Request`], encoding every server frame into ready-to-write WebSocket
//! frame bytes ([`Bytes`], shared by every receiver), and the validation
//! rules for room names, user ids, text and ids. No I/O and no state.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tungstenite::protocol::frame::{
    coding::{Data, OpCode},
    FrameHeader,
};

/// The longest WebSocket frame header a server writes (no mask).
const HEADER_ROOM: usize = 10;
/// Longest accepted `id`, in characters.
const MAX_ID_CHARS: usize = 64;
/// Deepest MessagePack nesting accepted; the JSON parser stops at 128 itself.
const MAX_MSGPACK_DEPTH: u16 = 64;
/// `history` returns at most this many messages per call.
pub const MAX_HISTORY: usize = 100;
/// `history` without `limit` returns this many.
pub const DEFAULT_HISTORY: usize = 50;

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
pub struct Wire {
    /// JSON text frame.
    pub json: Option<Bytes>,
    /// MessagePack binary frame.
    pub msgpack: Option<Bytes>,
}

impl Wire {
    /// Encodes `frame` once per requested encoding.
    pub fn encode<T: Serialize>(frame: &T, json: bool, msgpack: bool) -> Wire {
        Wire {
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
    // Serialise after a gap big enough for the longest header, then write the
    // header right before the payload: one allocation per encoded frame.
    let mut buf = vec![0u8; HEADER_ROOM];
    let (ok, opcode) = match enc {
        Encoding::Json => (serde_json::to_writer(&mut buf, frame).is_ok(), Data::Text),
        Encoding::MsgPack => (
            frame.serialize(&mut rmp_serde::Serializer::new(&mut buf).with_struct_map()).is_ok(),
            Data::Binary,
        ),
    };
    // Our own frame types always serialise; this guards against a future one
    // that does not, without a panic on the serving path.
    debug_assert!(ok, "server frame failed to serialise");
    let len = buf.len() - HEADER_ROOM;
    let start = HEADER_ROOM - header_len(len);
    let header = FrameHeader { opcode: OpCode::Data(opcode), ..FrameHeader::default() };
    let mut slot = &mut buf[start..HEADER_ROOM];
    if header.format(len as u64, &mut slot).is_err() {
        debug_assert!(false, "header slot sized wrong");
    }
    Bytes::from(buf).slice(start..)
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

/// Error codes of PROTOCOL.md section 4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// Not an object, unknown type, missing or mistyped field.
    BadRequest,
    /// Room name does not match the rules.
    InvalidRoom,
    /// User id does not match the rules.
    InvalidUser,
    /// Text over `max_text`.
    TooLong,
    /// The action needs membership.
    NotMember,
    /// A DM room of other users.
    Forbidden,
    /// Over the per-connection token bucket.
    RateLimited,
    /// Storage (or cluster) down: nothing was accepted.
    Unavailable,
    /// A bug of ours.
    Internal,
}

/// A refusal of one client frame: becomes an `error` frame.
#[derive(Debug)]
pub struct Refusal {
    /// The error code.
    pub code: Code,
    /// Human-readable detail.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Refusal {
        Refusal { code, message: message.into() }
    }
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal::new(Code::BadRequest, message)
}

/// A decoded, validated client frame.
#[derive(Debug)]
pub enum Request {
    /// `join`.
    Join { room: String, since: Option<u64> },
    /// `leave`.
    Leave { room: String },
    /// `send`.
    Send { room: String, text: String },
    /// `dm`.
    Dm { to: String, text: String },
    /// `typing`.
    Typing { room: String, active: bool },
    /// `history`.
    History { room: String, cursor: Cursor, limit: usize },
    /// `read`.
    Read { room: String, seq: u64 },
    /// `presence`.
    Presence { room: String },
    /// `ping`.
    Ping,
}

/// Where a history query starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// The latest messages.
    Latest,
    /// Messages below this seq.
    Before(u64),
    /// Messages above this seq.
    After(u64),
}

/// The result of decoding one client frame: its `id` (if readable) and the
/// request or the reason it was refused.
#[derive(Debug)]
pub struct Decoded {
    /// The frame's `id`, echoed in the reply. `None` when absent or invalid.
    pub id: Option<Value>,
    /// The request, or why it was refused.
    pub request: Result<Request, Refusal>,
}

/// Decodes one client frame's payload.
pub fn decode(payload: &[u8], enc: Encoding, max_text: usize) -> Decoded {
    let value: Value = match enc {
        Encoding::Json => match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => return Decoded { id: None, request: Err(bad(format!("not JSON: {e}"))) },
        },
        Encoding::MsgPack => {
            let mut de = rmp_serde::Deserializer::from_read_ref(payload);
            de.set_max_depth(MAX_MSGPACK_DEPTH as usize);
            match serde::Deserialize::deserialize(&mut de) {
                Ok(v) => v,
                Err(e) => {
                    return Decoded { id: None, request: Err(bad(format!("not MessagePack: {e}"))) }
                }
            }
        }
    };
    let Value::Object(map) = value else {
        return Decoded { id: None, request: Err(bad("a frame must be an object")) };
    };
    let id = match map.get("id") {
        None | Some(Value::Null) => None,
        Some(v @ Value::String(s)) if s.chars().count() <= MAX_ID_CHARS => Some(v.clone()),
        Some(v @ Value::Number(n)) if n.is_i64() || n.is_u64() => {
            if n.to_string().len() <= MAX_ID_CHARS {
                Some(v.clone())
            } else {
                None
            }
        }
        Some(_) => {
            return Decoded {
                id: None,
                request: Err(bad("`id` must be a string or integer of at most 64 characters")),
            }
        }
    };
    let request = parse(&map, max_text);
    Decoded { id, request }
}

type Map = serde_json::Map<String, Value>;

fn parse(map: &Map, max_text: usize) -> Result<Request, Refusal> {
    let ty = match map.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(bad("`type` must be a string")),
        None => return Err(bad("missing `type`")),
    };
    Ok(match ty {
        "join" => Request::Join { room: room(map)?, since: opt_u64(map, "since")? },
        "leave" => Request::Leave { room: room(map)? },
        "send" => Request::Send { room: room(map)?, text: text(map, max_text)? },
        "dm" => {
            let to = string(map, "to")?;
            let text = text(map, max_text)?;
            if !valid_user(&to) {
                return Err(Refusal::new(Code::InvalidUser, "`to` is not a valid user id"));
            }
            Request::Dm { to, text }
        }
        "typing" => Request::Typing {
            room: room(map)?,
            active: match map.get("active") {
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(bad("`active` must be a boolean")),
                None => return Err(bad("missing `active`")),
            },
        },
        "history" => {
            let room = room(map)?;
            let before = opt_u64(map, "before")?;
            let after = opt_u64(map, "after")?;
            let cursor = match (before, after) {
                (None, None) => Cursor::Latest,
                (Some(b), None) => Cursor::Before(b),
                (None, Some(a)) => Cursor::After(a),
                (Some(_), Some(_)) => return Err(bad("give `before` or `after`, not both")),
            };
            let limit = match map.get("limit") {
                None | Some(Value::Null) => DEFAULT_HISTORY,
                Some(Value::Number(n)) => match n.as_i64() {
                    Some(l) if l >= 1 => (l as u64).min(MAX_HISTORY as u64) as usize,
                    Some(_) => return Err(bad("`limit` must be at least 1")),
                    None if n.is_u64() => MAX_HISTORY,
                    None => return Err(bad("`limit` must be an integer")),
                },
                Some(_) => return Err(bad("`limit` must be an integer")),
            };
            Request::History { room, cursor, limit }
        }
        "read" => Request::Read {
            room: room(map)?,
            seq: opt_u64(map, "seq")?.ok_or_else(|| bad("missing `seq`"))?,
        },
        "presence" => Request::Presence { room: room(map)? },
        "ping" => Request::Ping,
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(bad(format!("unknown type `{shown}`")));
        }
    })
}

fn string(map: &Map, key: &str) -> Result<String, Refusal> {
    match map.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(format!("`{key}` must be a string"))),
        None => Err(bad(format!("missing `{key}`"))),
    }
}

/// A room field: a string, not yet checked against the naming rules (the
/// caller tells `invalid_room` from `forbidden` for `dm:` names).
fn room(map: &Map) -> Result<String, Refusal> {
    string(map, "room")
}

fn opt_u64(map: &Map, key: &str) -> Result<Option<u64>, Refusal> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(format!("`{key}` must be a non-negative integer"))),
        Some(_) => Err(bad(format!("`{key}` must be a non-negative integer"))),
    }
}

fn text(map: &Map, max_text: usize) -> Result<String, Refusal> {
    let text = string(map, "text")?;
    check_text(&text, max_text)?;
    Ok(text)
}

/// Text rules: 1 to `max_text` Unicode scalar values, not only white space.
pub fn check_text(text: &str, max_text: usize) -> Result<(), Refusal> {
    if text.chars().all(char::is_whitespace) {
        return Err(bad("`text` is empty or only white space"));
    }
    if text.chars().count() > max_text {
        return Err(Refusal::new(Code::TooLong, format!("`text` is over {max_text} characters")));
    }
    Ok(())
}

/// `^[a-z0-9][a-z0-9_.-]{0,63}$`
pub fn valid_room(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(&c))
}

/// `^[A-Za-z0-9_.-]{1,64}$`
pub fn valid_user(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

/// The DM room of two distinct users: `dm:<a>:<b>` with a < b by bytes.
pub fn dm_room(x: &str, y: &str) -> String {
    let (a, b) = if x < y { (x, y) } else { (y, x) };
    format!("dm:{a}:{b}")
}

/// The two users of a well-formed DM room name, if it is one.
pub fn dm_users(room: &str) -> Option<(&str, &str)> {
    let rest = room.strip_prefix("dm:")?;
    let (a, b) = rest.split_once(':')?;
    (valid_user(a) && valid_user(b) && a < b).then_some((a, b))
}

// ---- Server frames -------------------------------------------------------

/// A stored or delivered chat message, without the `type` tag (history form).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Msg {
    /// Room name.
    pub room: String,
    /// Per-room sequence number.
    pub seq: u64,
    /// Server time in ms since the epoch when accepted.
    pub ts: u64,
    /// Sender user id.
    pub from: String,
    /// The text, verbatim.
    pub text: String,
}

/// One room in `hello`.
#[derive(Debug, Serialize)]
pub struct RoomState {
    /// Room name.
    pub room: String,
    /// Latest seq (0 if empty).
    pub seq: u64,
    /// The user's read marker (0 if none).
    pub read: u64,
}

/// `hello.limits`.
#[derive(Debug, Serialize)]
pub struct Limits {
    /// Longest text.
    pub max_text: usize,
    /// Largest frame.
    pub max_frame: usize,
    /// Frames per second.
    pub rate: u32,
    /// Bucket size.
    pub burst: u32,
}

/// Every frame the server sends, tagged by `type`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Out<'a> {
    /// First frame of a connection.
    Hello {
        user: &'a str,
        node: &'a str,
        server_time: u64,
        rooms: Vec<RoomState>,
        limits: &'a Limits,
    },
    /// Reply to `join`.
    Joined {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        room: &'a str,
        seq: u64,
        members: Vec<String>,
        online: Vec<String>,
        history: Vec<Msg>,
        more: bool,
    },
    /// Reply to `leave`, to all of the user's connections.
    Left {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        room: &'a str,
    },
    /// A message is durable.
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        room: &'a str,
        seq: u64,
        ts: u64,
    },
    /// A chat message.
    Message { room: &'a str, seq: u64, ts: u64, from: &'a str, text: &'a str },
    /// A member came online or went offline (or joined / left).
    Presence { room: &'a str, user: &'a str, state: &'static str },
    /// Someone is typing.
    Typing { room: &'a str, user: &'a str, active: bool },
    /// Reply to `history`.
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        room: &'a str,
        messages: Vec<Msg>,
        more: bool,
    },
    /// Read marker of the same user, from another connection.
    Read { room: &'a str, seq: u64 },
    /// Reply to `presence`.
    PresenceList {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        room: &'a str,
        online: Vec<String>,
    },
    /// Reply to `ping`.
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        ts: u64,
    },
    /// A server-originated notification (`POST /api/notify`).
    Notification {
        kind: &'a str,
        text: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a Value>,
        ts: u64,
    },
    /// A refused frame.
    Error {
        id: Option<&'a Value>,
        code: Code,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
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

    #[test]
    fn frames_have_headers_sized_to_payload() {
        for n in [0usize, 100, 125, 126, 200, 65535, 65536, 70000] {
            let text = "x".repeat(n);
            let b = encode(&Out::Pong { id: Some(&Value::String(text)), ts: 1 }, Encoding::Json);
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
        let b = encode(&Out::Read { room: "r", seq: 7 }, Encoding::MsgPack);
        let v: Value = rmp_serde::from_slice(&b[2..]).unwrap();
        assert_eq!(v["type"], "read");
        assert_eq!(v["seq"], 7);
    }

    #[test]
    fn names() {
        assert!(valid_room("general"));
        assert!(valid_room("0a_.-"));
        assert!(!valid_room("General"));
        assert!(!valid_room("_x"));
        assert!(!valid_room(&"a".repeat(65)));
        assert!(valid_room(&"a".repeat(64)));
        assert!(!valid_room("dm:a:b"));
        assert!(valid_user("Alice.B-1_"));
        assert!(!valid_user("a b"));
        assert_eq!(dm_room("bob", "alice"), "dm:alice:bob");
        assert_eq!(dm_users("dm:alice:bob"), Some(("alice", "bob")));
        assert_eq!(dm_users("dm:bob:alice"), None);
    }

    #[test]
    fn decode_rules() {
        let d = decode(br#"{"type":"send","room":"r","text":"  ","id":5}"#, Encoding::Json, 10);
        assert_eq!(d.id, Some(Value::from(5)));
        assert_eq!(d.request.unwrap_err().code, Code::BadRequest);
        let d = decode(br#"{"type":"send","room":"r","text":"12345678901"}"#, Encoding::Json, 10);
        assert_eq!(d.request.unwrap_err().code, Code::TooLong);
        let d =
            decode(br#"{"type":"ping","id":123456789012345678901234567890}"#, Encoding::Json, 10);
        assert_eq!(d.request.unwrap_err().code, Code::BadRequest);
        let deep = "[".repeat(10_000);
        let d = decode(deep.as_bytes(), Encoding::Json, 10);
        assert_eq!(d.request.unwrap_err().code, Code::BadRequest);
        let deep = vec![0x91u8; 10_000];
        let d = decode(&deep, Encoding::MsgPack, 10);
        assert_eq!(d.request.unwrap_err().code, Code::BadRequest);
        let d = decode(br#"{"type":"history","room":"r","limit":1000}"#, Encoding::Json, 10);
        assert!(matches!(d.request, Ok(Request::History { limit: 100, .. })));
        let d = decode(br#"{"type":"history","room":"r","limit":0}"#, Encoding::Json, 10);
        assert_eq!(d.request.unwrap_err().code, Code::BadRequest);
    }
}
