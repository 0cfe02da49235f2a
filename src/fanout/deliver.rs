//! Fan-out from any thread: frames to a room's reactors, to a user's
//! reactors, and a durable message to its room. Reads the directory, writes
//! to mailboxes; encodes each frame once per encoding in use and shares the
//! bytes.

use super::{Cmd, ConnId, Mailbox, UserAction};
use crate::{
    rooms::{bits, Directory, RoomEntry},
    wire::{self, Encoded, Msg, ServerFrame},
};
use serde::Serialize;
use std::sync::Arc;

/// The directory and every reactor's mailbox: who to send to, and how.
#[derive(Clone, Debug)]
pub struct Fanout {
    dir: Arc<Directory>,
    mailboxes: Arc<[Mailbox]>,
}

impl Fanout {
    /// Fan-out over `dir` to `mailboxes` (one per reactor, by index).
    pub fn new(dir: Arc<Directory>, mailboxes: Vec<Mailbox>) -> Fanout {
        Fanout { dir, mailboxes: mailboxes.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Directory {
        &self.dir
    }

    /// The directory, shared (for the search thread).
    pub fn dir_arc(&self) -> Arc<Directory> {
        self.dir.clone()
    }

    /// Sends a command to reactor `reactor`.
    pub fn send_to(&self, reactor: u16, cmd: Cmd) {
        if let Some(mb) = self.mailboxes.get(reactor as usize) {
            mb.send(cmd);
        }
    }

    /// Sends a frame to every reactor with subscribers of the room `e`
    /// (under its lock), encoded once per encoding in use there. `seq` is
    /// the message seq (0 for others).
    pub fn broadcast_in<T: Serialize>(
        &self,
        e: &RoomEntry,
        frame: &T,
        seq: u64,
        skip_user: Option<Arc<str>>,
    ) {
        if e.reactors == 0 {
            return;
        }
        let frame = Arc::new(Encoded::encode(frame, e.json != 0, e.msgpack != 0));
        for r in bits(e.reactors) {
            self.mailboxes[r].send(Cmd::ToRoom {
                room: e.name.clone(),
                seq,
                frame: frame.clone(),
                skip_user: skip_user.clone(),
            });
        }
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
        frame: &ServerFrame<'_>,
        skip: Option<ConnId>,
    ) {
        let frame = Arc::new(Encoded::encode(frame, true, true));
        self.to_user(user, || Cmd::ToUser {
            user: user.clone(),
            action: UserAction::None,
            frame: Some((frame.clone(), 0, room.clone())),
            skip,
        });
    }

    /// A room event is durable: raise its room's visible seq and hand it to
    /// this node's subscribers, under the room's lock so that every reactor
    /// sees the room's events in seq order. DM events go to both users'
    /// connections (subscribing them); others to the room's reactors.
    pub fn release_message(&self, room: &str, ev: &Msg) {
        let _ = self.dir.with_room(
            room,
            || Err(()),
            |e| {
                e.durable = e.durable.max(ev.seq);
                self.deliver(e, ev);
            },
        );
    }

    /// A message could not be made durable: give its seq back if nothing
    /// was allocated after it (so seqs stay gap-free), under the room's lock.
    /// `forget` runs under the lock too (to drop the stored copy).
    pub fn withdraw_message(&self, room: &str, seq: u64, forget: impl FnOnce()) {
        let _ = self.dir.with_room(
            room,
            || Err(()),
            |e| {
                forget();
                if e.seq == seq {
                    e.seq = seq - 1;
                }
            },
        );
    }

    /// After the database was reopened: every room's allocated but never
    /// released tail `(durable, seq]` is handed to `forget` (to drop what
    /// the reopened database may still hold of it) and its seqs given back.
    pub fn forget_unreleased(&self, mut forget: impl FnMut(&str, u64, u64)) {
        self.dir.for_each_room(|e| {
            if e.seq > e.durable {
                forget(&e.name, e.durable, e.seq);
                e.seq = e.durable;
            }
        });
    }

    fn deliver(&self, e: &RoomEntry, ev: &Msg) {
        let seq = ev.seq;
        let Some((a, b)) = wire::dm_users(&e.name) else {
            return self.broadcast_in(e, ev, seq, None);
        };
        let frame = Arc::new(Encoded::encode(ev, true, true));
        for u in [a, b] {
            for r in bits(self.dir.user_reactors(u)) {
                self.mailboxes[r].send(Cmd::ToUser {
                    user: Arc::from(u),
                    action: UserAction::Subscribe { room: e.name.clone(), floor: seq - 1 },
                    frame: Some((frame.clone(), seq, e.name.clone())),
                    skip: None,
                });
            }
        }
    }
}
