//! Server frames out: every frame the server sends, tagged by `type`.

use super::Code;
use serde::Serialize;
use serde_json::Value;

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
pub enum ServerFrame<'a> {
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
    Presence { room: &'a str, user: &'a str, state: Presence },
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

/// A member's state in a `presence` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Came online, or joined.
    Online,
    /// Went offline, or left.
    Offline,
}

impl Presence {
    /// `Online` for true.
    pub fn of(online: bool) -> Presence {
        if online {
            Presence::Online
        } else {
            Presence::Offline
        }
    }
}
