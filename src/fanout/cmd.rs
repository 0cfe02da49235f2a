//! What travels to a reactor, and the names it uses: [`ConnId`] for a
//! connection anywhere on the node, [`ReplyTo`] for whoever waits for a
//! two-phase (durable) answer, WebSocket or HTTP alike.

use crate::{
    auth::Revocation,
    wire::{self, http, Encoded, Encoding, Refusal, ServerFrame},
};
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;

/// The `unavailable` message when a write could not be made durable.
pub const STORAGE_DOWN: &str = "storage unavailable: nothing was accepted";
/// The `unavailable` message when the cluster could not take a write.
pub const CLUSTER_DOWN: &str = "cluster unavailable: nothing was accepted";
/// The 503 message of an API post that could not be made durable.
const POST_DOWN: &str = "storage or cluster unavailable: nothing was accepted";

/// A connection, node-wide: its reactor and its generation-tagged slab slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// Index of the reactor that owns it.
    pub reactor: u16,
    /// Slab slot inside that reactor.
    pub idx: u32,
    /// Generation: slots are reused, so a stale id must not match.
    pub gen: u32,
}

/// Who is answered once a change is durable.
#[derive(Clone, Debug)]
pub enum ReplyTo {
    /// A WebSocket frame: the answer echoes `id`, in `enc`.
    Ws { conn: ConnId, id: Option<Value>, enc: Encoding },
    /// An API call: the answer is the HTTP response (`status` on success:
    /// 201 for a new message, 200 for an edit or delete), then the
    /// connection closes.
    Http { conn: ConnId, status: u16 },
}

/// A durable answer, before it is rendered for a [`ReplyTo`].
#[derive(Debug)]
pub enum Reply {
    /// A message is stored: `ack`, or 201 `{seq, ts}`.
    Ack { room: Arc<str>, seq: u64, ts: u64 },
    /// A token (200 `{revoked}`) or a user's tokens (200 `{revoked_user,
    /// before}`) are revoked.
    Revoked(Revocation),
    /// Nothing was accepted: `unavailable`, or 503, with this message.
    Unavailable(&'static str),
    /// A rule refused it where the cluster decides the order (another
    /// node's event got there first): the refusal's error, or its status.
    Refused(Refusal),
}

impl ReplyTo {
    /// The connection to answer.
    pub fn conn(&self) -> ConnId {
        match self {
            ReplyTo::Ws { conn, .. } | ReplyTo::Http { conn, .. } => *conn,
        }
    }

    /// The reactor that owns it.
    pub fn reactor(&self) -> u16 {
        self.conn().reactor
    }

    /// What a write that could not be taken tells this sender: `why`
    /// ([`STORAGE_DOWN`] or [`CLUSTER_DOWN`]) on a WebSocket; an API post
    /// gets one 503 message for both.
    pub fn down(&self, why: &'static str) -> &'static str {
        match self {
            ReplyTo::Ws { .. } => why,
            ReplyTo::Http { .. } => POST_DOWN,
        }
    }

    /// The frame's `id` (WebSocket only).
    pub fn id(&self) -> Option<&Value> {
        match self {
            ReplyTo::Ws { id, .. } => id.as_ref(),
            ReplyTo::Http { .. } => None,
        }
    }

    /// `reply` as the bytes this caller reads.
    pub fn render(&self, reply: &Reply) -> Bytes {
        let id = self.id();
        match (self, reply) {
            (ReplyTo::Ws { enc, .. }, Reply::Ack { room, seq, ts }) => {
                wire::encode(&ServerFrame::Ack { id, room, seq: *seq, ts: *ts }, *enc)
            }
            (ReplyTo::Ws { enc, .. }, Reply::Unavailable(message)) => wire::encode(
                &ServerFrame::Error {
                    id,
                    code: wire::Code::Unavailable,
                    message,
                    retry_after_ms: None,
                },
                *enc,
            ),
            (ReplyTo::Ws { enc, .. }, Reply::Refused(r)) => {
                let (code, message) = (r.code, r.message.as_str());
                wire::encode(&ServerFrame::Error { id, code, message, retry_after_ms: None }, *enc)
            }
            (ReplyTo::Ws { enc, .. }, Reply::Revoked(_)) => {
                // No frame revokes a token; answer like a refused write.
                let message = "not a WebSocket request";
                let code = wire::Code::Internal;
                wire::encode(&ServerFrame::Error { id, code, message, retry_after_ms: None }, *enc)
            }
            (ReplyTo::Http { status, .. }, Reply::Ack { seq, ts, .. }) => {
                http::json(*status, &json!({ "seq": seq, "ts": ts }))
            }
            (ReplyTo::Http { .. }, Reply::Revoked(Revocation::Token(jti))) => {
                http::json(200, &json!({ "revoked": jti }))
            }
            (ReplyTo::Http { .. }, Reply::Revoked(Revocation::User { user, before })) => {
                http::json(200, &json!({ "revoked_user": user, "before": before }))
            }
            (ReplyTo::Http { .. }, Reply::Refused(r)) => http::refused(r),
            (ReplyTo::Http { .. }, Reply::Unavailable(message)) => {
                http::error(503, "unavailable", message)
            }
        }
    }
}

/// What a user-addressed command does besides delivering its frame.
#[derive(Clone, Debug)]
pub enum UserAction {
    /// Deliver only.
    None,
    /// Subscribe the user's local connections to the room first (join on
    /// another connection, or the first DM), with `floor`: messages with a seq
    /// at or below it are not delivered again.
    Subscribe { room: Arc<str>, floor: u64 },
    /// Unsubscribe the user's local connections from the room (leave).
    Unsubscribe { room: Arc<str> },
}

/// A command for a reactor.
#[derive(Debug)]
pub enum Cmd {
    /// A frame for the room's local subscribers. `seq` is the message seq, or
    /// 0 for frames that are not messages. `skip_user`: not to this user's
    /// connections (typing, presence).
    ToRoom { room: Arc<str>, seq: u64, frame: Arc<Encoded>, skip_user: Option<Arc<str>> },
    /// A frame (if any) for every local connection of `user`, after `action`.
    /// `seq`/`room` as in `ToRoom` when it is a message. `skip`: not to this one.
    ToUser {
        user: Arc<str>,
        action: UserAction,
        frame: Option<(Arc<Encoded>, u64, Arc<str>)>,
        skip: Option<ConnId>,
    },
    /// A durable answer for one connection.
    Reply { to: ReplyTo, reply: Reply },
    /// A membership is durable: finish the `join` (`new`: the user was not
    /// a member before, announce them).
    Joined { to: ReplyTo, room: Arc<str>, user: Arc<str>, since: Option<u64>, new: bool },
    /// A membership's end is durable: finish the `leave`.
    Left { to: ReplyTo, room: Arc<str> },
    /// Stop: close every connection with 1001 and exit the loop.
    Shutdown,
}
