//! Fan-out from any thread (a reactor, the commit thread's callers, the
//! cluster bridge): frames to a room's reactors, to a user's reactors, and a
//! chat message under its room's lock. Encodes once per encoding in use and
//! shares the bytes.
//!
//! Owns no state: it reads the directory and writes to mailboxes.

use crate::{
    fanout::{Cmd, ConnRef, UserAction},
    proto::{self, Encoding, Out, Wire},
    reactor::Shared,
    rooms::{bits, RoomEntry},
    storage::{unavailable_wire, StorageError},
};
use serde_json::Value;
use std::sync::Arc;

/// Who is answered once an accepted message is durable.
#[derive(Debug)]
pub enum ReplyTo {
    /// A WebSocket `send`/`dm`: an `ack` (echoing `id`) in `enc`.
    Ws { conn: ConnRef, id: Option<Value>, enc: Encoding },
    /// `POST /api/rooms/{room}/messages`: 201 `{seq, ts}`.
    Http { conn: ConnRef },
}

impl ReplyTo {
    /// The reactor of the connection to answer.
    pub fn reactor(&self) -> u16 {
        match self {
            ReplyTo::Ws { conn, .. } | ReplyTo::Http { conn } => conn.reactor,
        }
    }

    /// The answer once durable.
    pub fn ok(&self, room: &str, seq: u64, ts: u64) -> Cmd {
        match self {
            ReplyTo::Ws { conn, id, enc } => {
                let (json, mp) = (*enc == Encoding::Json, *enc == Encoding::MsgPack);
                let wire = Wire::encode(&Out::Ack { id: id.as_ref(), room, seq, ts }, json, mp);
                Cmd::Reply { conn: *conn, wire: Arc::new(wire) }
            }
            ReplyTo::Http { conn } => {
                let body = serde_json::json!({ "seq": seq, "ts": ts }).to_string();
                Cmd::Http {
                    conn: *conn,
                    bytes: crate::http::response(201, "application/json", body.as_bytes()),
                }
            }
        }
    }

    /// The answer when it could not be made durable.
    pub fn fail(&self) -> Cmd {
        match self {
            ReplyTo::Ws { conn, id, enc } => {
                let wire = unavailable_wire(
                    id.as_ref(),
                    *enc == Encoding::Json,
                    *enc == Encoding::MsgPack,
                );
                Cmd::Reply { conn: *conn, wire: Arc::new(wire) }
            }
            ReplyTo::Http { conn } => Cmd::Http {
                conn: *conn,
                bytes: crate::http::error(
                    503,
                    "unavailable",
                    "storage or cluster unavailable: nothing was accepted",
                ),
            },
        }
    }
}

impl Shared {
    /// Runs `f` on `room`'s directory entry under its lock; a room seen for
    /// the first time gets its seq from storage.
    pub fn with_room<R>(
        &self,
        room: &str,
        f: impl FnOnce(&mut RoomEntry) -> R,
    ) -> Result<R, StorageError> {
        self.dir.with_room(room, || self.storage.last_seq(room), f)
    }

    /// Sends a frame to every reactor with subscribers of `room`, encoded
    /// once per encoding in use there. `seq` is the message seq (0 for others).
    pub fn broadcast(&self, room: &str, frame: &Out<'_>, seq: u64, skip_user: Option<Arc<str>>) {
        let _ = self.with_room(room, |e| {
            if e.reactors == 0 {
                return;
            }
            let wire = Arc::new(Wire::encode(frame, e.json != 0, e.msgpack != 0));
            for r in bits(e.reactors) {
                self.mailboxes[r].send(Cmd::Room {
                    room: e.name.clone(),
                    seq,
                    wire: wire.clone(),
                    skip_user: skip_user.clone(),
                });
            }
        });
    }

    /// Broadcasts a `presence` frame to a room's members, not to `user`.
    pub fn presence(&self, room: &str, user: &Arc<str>, state: &'static str) {
        self.broadcast(room, &Out::Presence { room, user, state }, 0, Some(user.clone()));
    }

    /// Sends a command to every reactor holding a connection of `user`.
    pub fn to_user(&self, user: &str, make: impl Fn() -> Cmd) {
        for r in bits(self.dir.user_reactors(user)) {
            self.mailboxes[r].send(make());
        }
    }

    /// A frame for every live connection of `user` on this node (but `skip`).
    pub fn frame_to_user(
        &self,
        user: &Arc<str>,
        room: &Arc<str>,
        frame: &Out<'_>,
        skip: Option<ConnRef>,
    ) {
        let wire = Arc::new(Wire::encode(frame, true, true));
        self.to_user(user, || Cmd::User {
            user: user.clone(),
            action: UserAction::None,
            wire: Some((wire.clone(), 0, room.clone())),
            skip,
        });
    }

    /// Hands a stored message to this node's subscribers. Call under the
    /// room's lock (`e`), right after storing it and setting `e.seq`, so
    /// every reactor sees the room's messages in seq order. DM messages go
    /// to both users' connections (subscribing them); others to the room's
    /// reactors.
    pub fn deliver_message(&self, e: &RoomEntry, seq: u64, ts: u64, from: &str, text: &str) {
        let room = &*e.name;
        let frame = Out::Message { room, seq, ts, from, text };
        match proto::dm_users(room) {
            Some((a, b)) => {
                let wire = Arc::new(Wire::encode(&frame, true, true));
                for u in [a, b] {
                    for r in bits(self.dir.user_reactors(u)) {
                        self.mailboxes[r].send(Cmd::User {
                            user: Arc::from(u),
                            action: UserAction::Subscribe { room: e.name.clone(), floor: seq - 1 },
                            wire: Some((wire.clone(), seq, e.name.clone())),
                            skip: None,
                        });
                    }
                }
            }
            None => {
                let wire = Arc::new(Wire::encode(&frame, e.json != 0, e.msgpack != 0));
                for r in bits(e.reactors) {
                    self.mailboxes[r].send(Cmd::Room {
                        room: e.name.clone(),
                        seq,
                        wire: wire.clone(),
                        skip_user: None,
                    });
                }
            }
        }
    }

    /// Whether `user` has a live connection anywhere (this node, or another
    /// node of the cluster).
    pub fn is_online(&self, user: &str) -> bool {
        self.dir.is_online(user) || self.cluster.as_ref().is_some_and(|c| c.remote_online(user))
    }
}
