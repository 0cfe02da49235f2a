//! Client frames in: decoding a frame (JSON or MessagePack) into a
//! validated [`Request`], the error codes and the text rules.

use super::{valid_user, Encoding};
use serde::Serialize;
use serde_json::Value;

/// Longest accepted `id`, in characters.
const MAX_ID_CHARS: usize = 64;
/// Deepest MessagePack nesting accepted; the JSON parser stops at 128 itself.
const MAX_MSGPACK_DEPTH: u16 = 64;
/// `history` returns at most this many messages per call.
pub const MAX_HISTORY: usize = 100;
/// `history` without `limit` returns this many.
pub const DEFAULT_HISTORY: usize = 50;

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
    /// A quota (`max_rooms_per_user`).
    LimitReached,
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

#[cfg(test)]
mod tests {
    use super::*;

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
