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
/// `search` returns at most this many messages per call.
pub const MAX_SEARCH: usize = 50;
/// `search` without `limit` returns this many.
const DEFAULT_SEARCH: usize = 20;
/// Longest search query, in Unicode scalar values.
const MAX_QUERY_CHARS: usize = 200;
/// Longest emoji, in Unicode scalar values.
const MAX_EMOJI_CHARS: usize = 16;

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
    /// The target message does not exist or is deleted.
    NotFound,
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
    Send { room: String, text: String, reply_to: Option<u64> },
    /// `dm`.
    Dm { to: String, text: String, reply_to: Option<u64> },
    /// `edit`.
    Edit { room: String, seq: u64, text: String },
    /// `delete`.
    Delete { room: String, seq: u64 },
    /// `react`.
    React { room: String, seq: u64, emoji: String, on: bool },
    /// `thread`.
    Thread { room: String, root: u64, after: u64, limit: usize },
    /// `search`.
    Search { query: String, room: Option<String>, cursor: Option<String>, limit: usize },
    /// `rooms`.
    Rooms { prefix: String, cursor: Option<String>, limit: usize },
    /// `refresh`.
    Refresh,
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
        "send" => Request::Send {
            room: room(map)?,
            text: text(map, max_text)?,
            reply_to: opt_u64(map, "reply_to")?,
        },
        "dm" => {
            let to = string(map, "to")?;
            let text = text(map, max_text)?;
            let reply_to = opt_u64(map, "reply_to")?;
            if !valid_user(&to) {
                return Err(Refusal::new(Code::InvalidUser, "`to` is not a valid user id"));
            }
            Request::Dm { to, text, reply_to }
        }
        "edit" | "delete" | "react" => parse_event(ty, map, max_text)?,
        "typing" => Request::Typing { room: room(map)?, active: boolean(map, "active")? },
        "history" => Request::History {
            room: room(map)?,
            cursor: cursor(map)?,
            limit: limit(map, DEFAULT_HISTORY, MAX_HISTORY)?,
        },
        "thread" => Request::Thread {
            room: room(map)?,
            root: seq(map, "root")?,
            after: opt_u64(map, "after")?.unwrap_or(0),
            limit: limit(map, DEFAULT_HISTORY, MAX_HISTORY)?,
        },
        "search" => {
            let query = string(map, "query")?;
            check_query(&query)?;
            Request::Search {
                query,
                room: opt_string(map, "room")?,
                cursor: opt_string(map, "cursor")?,
                limit: limit(map, DEFAULT_SEARCH, MAX_SEARCH)?,
            }
        }
        "rooms" => Request::Rooms {
            prefix: opt_string(map, "prefix")?.unwrap_or_default(),
            cursor: opt_string(map, "cursor")?,
            limit: limit(map, DEFAULT_HISTORY, MAX_HISTORY)?,
        },
        "refresh" => Request::Refresh,
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

/// A history query's `before` or `after` (not both).
fn cursor(map: &Map) -> Result<Cursor, Refusal> {
    Ok(match (opt_u64(map, "before")?, opt_u64(map, "after")?) {
        (None, None) => Cursor::Latest,
        (Some(b), None) => Cursor::Before(b),
        (None, Some(a)) => Cursor::After(a),
        (Some(_), Some(_)) => return Err(bad("give `before` or `after`, not both")),
    })
}

/// `edit`, `delete` and `react`.
fn parse_event(ty: &str, map: &Map, max_text: usize) -> Result<Request, Refusal> {
    let (room, seq) = (room(map)?, seq(map, "seq")?);
    Ok(match ty {
        "edit" => Request::Edit { room, seq, text: text(map, max_text)? },
        "delete" => Request::Delete { room, seq },
        _ => Request::React { room, seq, emoji: emoji(map)?, on: boolean(map, "on")? },
    })
}

/// A `limit` field: `default` when absent, capped at `max`, below 1 refused.
fn limit(map: &Map, default: usize, max: usize) -> Result<usize, Refusal> {
    match map.get("limit") {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(l) if l >= 1 => Ok((l as u64).min(max as u64) as usize),
            Some(_) => Err(bad("`limit` must be at least 1")),
            None if n.is_u64() => Ok(max),
            None => Err(bad("`limit` must be an integer")),
        },
        Some(_) => Err(bad("`limit` must be an integer")),
    }
}

fn boolean(map: &Map, key: &str) -> Result<bool, Refusal> {
    match map.get(key) {
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!("`{key}` must be a boolean"))),
        None => Err(bad(format!("missing `{key}`"))),
    }
}

/// A required message seq (a positive integer).
fn seq(map: &Map, key: &str) -> Result<u64, Refusal> {
    match opt_u64(map, key)? {
        Some(s) if s > 0 => Ok(s),
        Some(_) => Err(bad(format!("`{key}` must be a positive integer"))),
        None => Err(bad(format!("missing `{key}`"))),
    }
}

fn opt_string(map: &Map, key: &str) -> Result<Option<String>, Refusal> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("`{key}` must be a string"))),
    }
}

fn emoji(map: &Map) -> Result<String, Refusal> {
    let e = string(map, "emoji")?;
    check_emoji(&e)?;
    Ok(e)
}

/// Emoji rules: 1 to 16 Unicode scalar values, no white space or control.
pub fn check_emoji(e: &str) -> Result<(), Refusal> {
    let n = e.chars().count();
    if n == 0 || n > MAX_EMOJI_CHARS || e.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("`emoji` must be 1 to 16 characters without white space"));
    }
    Ok(())
}

/// Search query rules: 1 to 200 Unicode scalar values with at least one
/// word (a run of letters and digits).
pub fn check_query(q: &str) -> Result<(), Refusal> {
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(bad("`query` is over 200 characters"));
    }
    if !q.chars().any(char::is_alphanumeric) {
        return Err(bad("`query` has no word"));
    }
    Ok(())
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
