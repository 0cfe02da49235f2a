//! Server frames out: every frame the server sends, tagged by `type`.

use super::Code;
use serde::Serialize;
use serde_json::Value;

/// What a room event is (PROTOCOL.md section 3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A chat message (a thread reply too).
    #[default]
    Message,
    /// A new text for a message.
    Edit,
    /// A message deleted.
    Delete,
    /// A reaction added or removed.
    Reaction,
}

/// One emoji on a message and who reacted with it, in the order they did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// User ids.
    pub users: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A room event: the live frame (its `type` is the kind), and the item of
/// `history`, `joined.history`, `thread` and `search_results`, where a
/// `message` also shows its current state (edited text, deleted,
/// reactions, replies). One struct for every kind: absent fields are left
/// out of the encoding.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Msg {
    /// The kind, sent as `type`.
    #[serde(rename = "type", default)]
    pub kind: Kind,
    /// Room name.
    pub room: String,
    /// Per-room sequence number.
    pub seq: u64,
    /// Server time in ms since the epoch when accepted.
    pub ts: u64,
    /// The user who caused it.
    pub from: String,
    /// `message`: the (current) text; `edit`: the new text. Absent once
    /// deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `message`: the thread root's seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// `message` and `edit`: the mentioned members, in order of appearance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
    /// `edit`, `delete`, `reaction`: the message's seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    /// `reaction`: the emoji.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// `reaction`: added (true) or removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<bool>,
    /// Current state: the last edit's ts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_ts: Option<u64>,
    /// Current state: deleted (the text is gone).
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// Current state: reactions, in order of first reaction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
    /// Current state of a thread root: replies not deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replies: Option<u64>,
    /// Current state of a thread root: the latest reply's ts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply_ts: Option<u64>,
}

impl Msg {
    /// A new `message` event.
    pub fn message(room: &str, from: &str, text: String) -> Msg {
        Msg {
            kind: Kind::Message,
            room: room.to_string(),
            from: from.to_string(),
            text: Some(text),
            ..Msg::default()
        }
    }

    /// A new event of `kind` on message `target`.
    pub fn on_target(kind: Kind, room: &str, from: &str, target: u64) -> Msg {
        Msg {
            kind,
            room: room.to_string(),
            from: from.to_string(),
            target: Some(target),
            ..Msg::default()
        }
    }
}

/// One room in the directory (`room_list`, `GET /api/rooms`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RoomInfo {
    /// Room name.
    pub room: String,
    /// Member count.
    pub members: u64,
    /// Latest seq.
    pub seq: u64,
    /// The last event's ts (0 if none).
    pub ts: u64,
}

/// One room in `hello`.
#[derive(Debug, Serialize)]
pub struct RoomState<'a> {
    /// Room name.
    pub room: &'a str,
    /// Latest seq (0 if empty).
    pub seq: u64,
    /// The user's read marker (0 if none).
    pub read: u64,
    /// Messages above the read marker, not deleted, not the user's (capped).
    pub unread: u64,
    /// How many of those mention the user (capped).
    pub mentions: u64,
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
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'a str>,
        node: &'a str,
        server_time: u64,
        rooms: Vec<RoomState<'a>>,
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
        names: std::collections::BTreeMap<String, String>,
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
    /// Reply to `thread`.
    Thread {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        room: &'a str,
        root: u64,
        messages: Vec<Msg>,
        more: bool,
    },
    /// Reply to `search`.
    SearchResults {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        query: &'a str,
        messages: Vec<Msg>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    /// Reply to `rooms`.
    RoomList {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        rooms: Vec<RoomInfo>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    /// Reply to `refresh`.
    Token {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        token: &'a str,
        exp: u64,
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
