//! What nodes say to each other on the `chinwag:events` channel, and the
//! work a reactor queues for the publisher.

use crate::{auth::Revocation, fanout::ReplyTo, wire};
use serde::{Deserialize, Serialize};

/// The one pub/sub channel of a cluster.
pub const CHANNEL: &str = "chinwag:events";

/// The Redis hash of every revocation: `t:<jti>` → when, `u:<user>` →
/// tokens issued up to this second.
pub const REVOKED_KEY: &str = "chinwag:revoked";

/// A revocation's field and value in [`REVOKED_KEY`].
pub fn revocation_field(r: &Revocation, now_s: u64) -> (String, u64) {
    match r {
        Revocation::Token(jti) => (format!("t:{jti}"), now_s),
        Revocation::User { user, before } => (format!("u:{user}"), *before),
    }
}

/// The Redis key of a room's seq counter.
pub fn seq_key(room: &str) -> String {
    format!("chinwag:seq:{room}")
}

/// The Redis key of a room's capped log stream.
pub fn log_key(room: &str) -> String {
    format!("chinwag:log:{room}")
}

/// A message as published (its seq travels in front of it).
#[derive(Debug, Serialize, Deserialize)]
pub struct Body {
    /// Room name.
    pub room: String,
    /// Accept time, ms since the epoch.
    pub ts: u64,
    /// Sender.
    pub from: String,
    /// The text.
    pub text: String,
    /// The two users of a DM room on its first message (membership to write).
    #[serde(default)]
    pub dm_new: bool,
    /// The sending node, its boot and its counter: a payload is applied once.
    #[serde(default)]
    pub origin: String,
    #[serde(default)]
    pub boot: u64,
    #[serde(default)]
    pub n: u64,
}

/// An event as published: who sent it, when, and its counter, around it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending node's boot (random at start).
    pub boot: u64,
    /// The sending node's counter, shared with its messages.
    pub n: u64,
    /// When it was sent, ms since the epoch.
    pub ts: u64,
    /// The event.
    pub event: Event,
}

/// Everything else nodes tell each other.
#[derive(Debug, Serialize, Deserialize)]
pub enum Event {
    /// A user joined or left a room; a join carries the room's seq then
    /// (the user's other connections get everything after it).
    Member {
        node: String,
        room: String,
        user: String,
        joined: bool,
        #[serde(default)]
        seq: Option<u64>,
    },
    /// A user's first connection on `node` opened or its last closed.
    Presence { node: String, user: String, online: bool },
    /// `node`'s online users, periodically.
    Snapshot { node: String, users: Vec<String> },
    /// Someone typing.
    Typing { node: String, room: String, user: String, active: bool },
    /// A read marker moved.
    Read { node: String, room: String, user: String, seq: u64 },
    /// `POST /api/notify`.
    Notify { node: String, user: String, kind: String, text: String, data: Option<String>, ts: u64 },
    /// `POST /api/revoke {"jti"}`.
    Revoke { node: String, jti: String },
    /// `POST /api/revoke {"user"}`: tokens issued up to `before` (seconds).
    RevokeUser { node: String, user: String, before: u64 },
}

/// Longest `kind` of a notification carried between nodes.
const MAX_KIND: usize = 64;
/// Most users in one presence snapshot.
const MAX_SNAPSHOT: usize = 1_000_000;
/// Most bytes of a notification's text or data between nodes.
const MAX_NOTIFY: usize = 64 << 10;

fn room_ok(room: &str) -> bool {
    wire::valid_room(room) || wire::dm_users(room).is_some()
}

impl Body {
    /// Whether every field is what a client could have sent.
    pub fn valid(&self, max_text: usize) -> bool {
        room_ok(&self.room)
            && wire::valid_user(&self.from)
            && wire::check_text(&self.text, max_text).is_ok()
            && (!self.dm_new || wire::dm_users(&self.room).is_some())
    }
}

impl Event {
    /// The node that sent it.
    pub fn node(&self) -> &str {
        match self {
            Event::Member { node, .. }
            | Event::Presence { node, .. }
            | Event::Snapshot { node, .. }
            | Event::Typing { node, .. }
            | Event::Read { node, .. }
            | Event::Notify { node, .. }
            | Event::Revoke { node, .. }
            | Event::RevokeUser { node, .. } => node,
        }
    }

    /// Whether every field makes sense (names by the naming rules, sizes bounded).
    pub fn valid(&self) -> bool {
        let user = wire::valid_user;
        wire::valid_user(self.node())
            && match self {
                Event::Member { room, user: u, .. } => wire::valid_room(room) && user(u),
                Event::Presence { user: u, .. } => user(u),
                Event::Snapshot { users, .. } => {
                    users.len() <= MAX_SNAPSHOT && users.iter().all(|u| user(u))
                }
                Event::Typing { room, user: u, .. } | Event::Read { room, user: u, .. } => {
                    room_ok(room) && user(u)
                }
                Event::Notify { user: u, kind, text, data, .. } => {
                    user(u)
                        && kind.len() <= MAX_KIND
                        && text.len() <= MAX_NOTIFY
                        && data.as_ref().is_none_or(|d| d.len() <= MAX_NOTIFY)
                }
                Event::Revoke { jti, .. } => !jti.is_empty() && jti.len() <= 256,
                Event::RevokeUser { user: u, .. } => user(u),
            }
    }
}

/// Work for the publisher thread.
#[derive(Debug)]
pub enum Outbound {
    /// A message to allocate a seq for: `body` is the published form,
    /// `floor` this node's last seq of the room.
    Send {
        room: String,
        body: Vec<u8>,
        floor: u64,
        ts: u64,
        from: String,
        text: String,
        dm_new: bool,
        reply: ReplyTo,
    },
    /// An event payload (`E` + MessagePack) to publish.
    Event(Vec<u8>),
    /// A revocation to keep in the [`REVOKED_KEY`] hash (`field` →
    /// `value`, the larger wins) and publish (`payload`, an event).
    Revoke { field: String, value: u64, payload: Vec<u8> },
}
