//! What nodes say to each other on the `chinwag:events` channel, and the
//! work a reactor queues for the publisher.

use crate::{
    auth::Revocation,
    wire::{self, Kind, Msg},
};
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

/// The Redis key of a room's recently deleted messages (a set of seqs).
pub fn gone_key(room: &str) -> String {
    format!("chinwag:gone:{room}")
}

/// The Redis key of message `seq`'s reactions, as the seq script counts
/// them.
pub fn reactions_key(room: &str, seq: u64) -> String {
    format!("chinwag:rx:{room}:{seq}")
}

/// What the seq script checks before it gives a room event a seq. Each
/// node checks the rules against its own copy first, but that copy can
/// lag the others by the events in flight, so the rules that another
/// node's event can break are checked again where the order is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// A plain message: nothing to check.
    None,
    /// An edit, or a reply: its target (or thread root) is not deleted.
    Live(u64),
    /// A delete: its target is not deleted yet, and is from now on.
    Delete(u64),
    /// A reaction: its target is not deleted, and an added emoji fits
    /// under the limit.
    React { target: u64, emoji: String, user: String, on: bool },
}

impl Guard {
    /// The guard of room event `ev`.
    pub fn of(ev: &Msg) -> Guard {
        match (ev.kind, ev.target) {
            (Kind::Edit, Some(t)) => Guard::Live(t),
            (Kind::Delete, Some(t)) => Guard::Delete(t),
            (Kind::Reaction, Some(target)) => Guard::React {
                target,
                emoji: ev.emoji.clone().unwrap_or_default(),
                user: ev.from.clone(),
                on: ev.on.unwrap_or(true),
            },
            _ => ev.reply_to.map_or(Guard::None, Guard::Live),
        }
    }

    /// The message it checks, if any.
    pub fn target(&self) -> Option<u64> {
        match self {
            Guard::None => None,
            Guard::Live(t) | Guard::Delete(t) | Guard::React { target: t, .. } => Some(*t),
        }
    }
}

/// A room event as published (its seq travels in front of it). The
/// fields past `text` came with room events; a node of an older release
/// sends none of them (a plain message).
#[derive(Debug, Serialize, Deserialize)]
pub struct Body {
    /// Room name.
    pub room: String,
    /// Accept time, ms since the epoch.
    pub ts: u64,
    /// Who caused it.
    pub from: String,
    /// The text (a message's, an edit's).
    #[serde(default)]
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
    /// The event's kind.
    #[serde(default)]
    pub kind: Kind,
    #[serde(default)]
    pub reply_to: Option<u64>,
    #[serde(default)]
    pub mentions: Vec<String>,
    #[serde(default)]
    pub target: Option<u64>,
    #[serde(default)]
    pub emoji: Option<String>,
    #[serde(default)]
    pub on: Option<bool>,
}

impl Body {
    /// The event it carries, with seq `seq`.
    pub fn event(&self, seq: u64) -> Msg {
        let text = matches!(self.kind, Kind::Message | Kind::Edit).then(|| self.text.clone());
        Msg {
            kind: self.kind,
            room: self.room.clone(),
            seq,
            ts: self.ts,
            from: self.from.clone(),
            text,
            reply_to: self.reply_to,
            mentions: self.mentions.clone(),
            target: self.target,
            emoji: self.emoji.clone(),
            on: self.on,
            ..Msg::default()
        }
    }
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
    /// A user's display name (`None`: first seen, without one).
    Name { node: String, user: String, name: Option<String> },
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

/// A display name as a token may carry it.
fn valid_name(n: &str) -> bool {
    let len = n.chars().count();
    (1..=64).contains(&len) && !n.chars().any(char::is_control)
}

impl Body {
    /// Whether every field is what a client could have sent.
    pub fn valid(&self, max_text: usize) -> bool {
        let has_text = matches!(self.kind, Kind::Message | Kind::Edit);
        let fields = match self.kind {
            Kind::Message => self.target.is_none(),
            Kind::Edit | Kind::Delete => self.target.is_some(),
            Kind::Reaction => {
                self.target.is_some()
                    && self.on.is_some()
                    && self.emoji.as_deref().is_some_and(|e| wire::check_emoji(e).is_ok())
            }
        };
        room_ok(&self.room)
            && wire::valid_user(&self.from)
            && fields
            && (!has_text || wire::check_text(&self.text, max_text).is_ok())
            && self.mentions.iter().all(|m| wire::valid_user(m))
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
            | Event::RevokeUser { node, .. }
            | Event::Name { node, .. } => node,
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
                Event::Name { user: u, name, .. } => {
                    user(u) && name.as_deref().is_none_or(valid_name)
                }
            }
    }
}

/// Work for the publisher thread.
#[derive(Debug)]
pub enum Outbound {
    /// A room event to allocate a seq for: `body` is the published form,
    /// `floor` this node's last seq of the room, `n` the body's counter
    /// (its sender waits under it in the link's pending answers), `guard`
    /// what the seq script checks first.
    Send { room: String, body: Vec<u8>, floor: u64, n: u64, guard: Guard },
    /// An event payload (`E` + MessagePack) to publish.
    Event(Vec<u8>),
    /// A revocation to keep in the [`REVOKED_KEY`] hash (`field` →
    /// `value`, the larger wins) and publish (`payload`, an event).
    Revoke { field: String, value: u64, payload: Vec<u8> },
}
