//! One reactor's in-memory membership: which of its connections are in
//! each room (with the floor below which a subscriber already has the
//! room's messages), and which are each user's. The one place that keeps
//! every in-memory copy in step: this index, each session's room list, and
//! this reactor's bits in the node's directory (set and cleared only here,
//! under the room's or user's lock).
//!
//! # Invariants
//! * A connection is in a room's `subs` exactly when the room is in its
//!   session's `rooms`.
//! * This reactor's room bit is set while `subs` is non-empty; its JSON and
//!   MessagePack bits while it has a subscriber of that encoding (a stale
//!   bit is cleared lazily on the next delivery).
//! * Message frames carry their seq; a message at or below a subscription's
//!   floor is not delivered again.

use crate::{
    conn::{ConnTable, Session},
    fanout::{ConnId, UserAction},
    node::Node,
    rooms::RoomEntry,
    storage::StorageError,
    wire::{self, Cursor, Encoded, Encoding, Presence, ServerFrame},
};
use foldhash::HashMap;
use smallvec::SmallVec;
use std::sync::Arc;

/// A subscription catching up from storage fetches at most this many messages.
const CATCH_UP_MAX: usize = 1000;

/// One subscriber of a room on this reactor.
#[derive(Clone, Copy, Debug)]
struct Sub {
    id: ConnId,
    /// Messages with seq at or below this are not delivered (already had).
    floor: u64,
}

/// A room's subscribers on this reactor, and how many speak each encoding.
#[derive(Debug, Default)]
struct LocalRoom {
    subs: Vec<Sub>,
    json: u32,
    msgpack: u32,
}

/// How a subscription comes about.
#[derive(Clone, Copy, Debug)]
pub enum Fresh<'a> {
    /// The session may hold the room already (a `join`, another
    /// connection's): checked first.
    No,
    /// A session's opening, which holds no room yet; with a user, the room
    /// is told they came online (in the same directory visit).
    Opening(Option<&'a Arc<str>>),
}

/// One reactor's rooms and users.
#[derive(Debug)]
pub struct LocalIndex {
    reactor: u16,
    rooms: HashMap<Arc<str>, LocalRoom>,
    /// A user's connections here: most users hold one, kept inline (a
    /// list of its own was a 32-byte block per connected user).
    users: HashMap<Arc<str>, SmallVec<[ConnId; 1]>>,
    /// Open WebSocket sessions here (what `chinwag_loop_connections` shows).
    sessions: usize,
}

impl LocalIndex {
    /// An empty index for reactor `reactor`.
    pub fn new(reactor: u16) -> LocalIndex {
        LocalIndex { reactor, rooms: HashMap::default(), users: HashMap::default(), sessions: 0 }
    }

    /// Open WebSocket sessions on this reactor.
    pub fn sessions(&self) -> usize {
        self.sessions
    }

    fn bit(&self) -> u64 {
        1 << self.reactor
    }

    /// The shared name of a user with connections here (or a new one).
    pub fn user_name(&self, user: &str) -> Arc<str> {
        match self.users.get_key_value(user) {
            Some((k, _)) => k.clone(),
            None => Arc::from(user),
        }
    }

    /// Counts a new session of `user`; true if it is the user's first on the node.
    pub fn add_session(&mut self, node: &Node, user: &Arc<str>, id: ConnId) -> bool {
        let local = self.users.entry(user.clone()).or_default();
        local.push(id);
        self.sessions += 1;
        let first_here = local.len() == 1;
        let bit = self.bit();
        node.with_user(user, |e| {
            e.live += 1;
            if first_here {
                e.reactors |= bit;
            }
            e.live == 1
        })
    }

    /// Takes a closing session out of its user's list, then out of every
    /// room; `offline(last)` is asked, with whether it was the user's last
    /// connection on the node, whether to tell its rooms the user left
    /// (told in the same directory visit as the unsubscription).
    pub fn remove_session(
        &mut self,
        node: &Node,
        session: &mut Session,
        id: ConnId,
        offline: impl FnOnce(bool) -> bool,
    ) {
        let last = self.remove_user_session(node, &session.user, id);
        let announce = offline(last).then(|| session.user.clone());
        for room in std::mem::take(&mut session.rooms) {
            self.drop_sub(node, id, &room, session.enc, announce.as_ref());
        }
    }

    /// Takes connection `id` out of `user`'s list; true if it was the
    /// user's last on the node.
    fn remove_user_session(&mut self, node: &Node, user: &Arc<str>, id: ConnId) -> bool {
        let mut last_here = false;
        if let Some(list) = self.users.get_mut(user) {
            let had = list.len();
            list.retain(|c| *c != id);
            self.sessions -= had - list.len();
            if list.is_empty() {
                self.users.remove(user);
                last_here = true;
            }
        }
        let bit = self.bit();
        node.with_user(user, |e| {
            e.live = e.live.saturating_sub(1);
            if last_here {
                e.reactors &= !bit;
            }
            e.live == 0
        })
    }

    /// Subscribes an open connection to `room`, reading the room's seq under
    /// its lock. With `known`, messages in `(known, seq]` (sent before this
    /// subscription could see them) are fetched from storage and queued.
    /// Returns the room's canonical name and seq. `fresh`: the session
    /// is known not to be subscribed yet (its opening).
    pub fn subscribe(
        &mut self,
        node: &Node,
        conns: &mut ConnTable,
        id: ConnId,
        room: &str,
        known: Option<u64>,
        fresh: Fresh<'_>,
    ) -> Result<(Arc<str>, u64), StorageError> {
        let Some(session) = conns.session_mut(id) else {
            return Err(StorageError("gone".into()));
        };
        let enc = session.enc;
        // A session's first subscriptions (its `hello`) are new by
        // construction; the check is linear, so a user in 1,000 rooms made
        // it quadratic.
        let (dup, online) = match fresh {
            Fresh::No => (session.rooms.iter().find(|r| &***r == room), None),
            Fresh::Opening(user) => (None, user),
        };
        if let Some(name) = dup.cloned() {
            let seq = node.visible_seq(room)?;
            return Ok((name, seq));
        }
        let bit = self.bit();
        let (name, seq) = node.with_room(room, |e| {
            // Before this subscription: the frame skips the user anyway,
            // and a room with nobody on this node encodes nothing.
            if let Some(user) = online {
                let frame = ServerFrame::Presence { room, user, state: Presence::Online };
                node.fanout().broadcast_in(e, &frame, 0, Some(user.clone()));
            }
            e.reactors |= bit;
            match enc {
                Encoding::Json => e.json |= bit,
                Encoding::MsgPack => e.msgpack |= bit,
            }
            // What is not durable yet comes live, when it is released.
            (e.name.clone(), e.durable)
        })?;
        // Exact: rooms come one `join` at a time after the opening (which
        // sizes the list), and the default growth doubled it each time.
        session.rooms.reserve_exact(1);
        session.rooms.push(name.clone());
        let local = self.rooms.entry(name.clone()).or_default();
        local.subs.push(Sub { id, floor: seq });
        match enc {
            Encoding::Json => local.json += 1,
            Encoding::MsgPack => local.msgpack += 1,
        }
        if let Some(known) = known.filter(|&k| k < seq) {
            let (msgs, _) = node.storage().history(room, Cursor::After(known), CATCH_UP_MAX)?;
            for m in msgs.iter().filter(|m| m.seq <= seq) {
                conns.queue(id, wire::encode(m, enc));
            }
        }
        Ok((name, seq))
    }

    /// Unsubscribes an open connection from `room`.
    pub fn unsubscribe(&mut self, node: &Node, conns: &mut ConnTable, id: ConnId, room: &str) {
        let Some(session) = conns.session_mut(id) else { return };
        let before = session.rooms.len();
        session.rooms.retain(|r| **r != *room);
        if session.rooms.len() != before {
            let enc = session.enc;
            self.drop_sub(node, id, room, enc, None);
        }
    }

    /// Removes `id` from `room`'s subscribers and, when this reactor has no
    /// subscriber (of an encoding) left, clears its bits in the directory;
    /// with `offline`, tells the room that user went offline.
    fn drop_sub(
        &mut self,
        node: &Node,
        id: ConnId,
        room: &str,
        enc: Encoding,
        offline: Option<&Arc<str>>,
    ) {
        let tell = |e: &RoomEntry| {
            if let Some(user) = offline {
                let frame = ServerFrame::Presence { room, user, state: Presence::Offline };
                node.fanout().broadcast_in(e, &frame, 0, Some(user.clone()));
            }
        };
        // Not subscribed here after all: only the news, if any.
        let only_tell = || {
            if offline.is_some() {
                let _ = node.with_room(room, |e| tell(e));
            }
        };
        let Some(local) = self.rooms.get_mut(room) else { return only_tell() };
        let before = local.subs.len();
        local.subs.retain(|s| s.id != id);
        if local.subs.len() == before {
            return only_tell();
        }
        let count = match enc {
            Encoding::Json => &mut local.json,
            Encoding::MsgPack => &mut local.msgpack,
        };
        *count = count.saturating_sub(1);
        let (json_gone, mp_gone, empty) =
            (local.json == 0, local.msgpack == 0, local.subs.is_empty());
        if empty {
            self.rooms.remove(room);
        }
        if json_gone || mp_gone || offline.is_some() {
            let bit = self.bit();
            let _ = node.with_room(room, |e| {
                if json_gone {
                    e.json &= !bit;
                }
                if mp_gone {
                    e.msgpack &= !bit;
                }
                if empty {
                    e.reactors &= !bit;
                }
                // After the bits: a room this was our last subscriber of
                // is not told here (it was encoded, queued to this reactor
                // and found nobody, for every room of a closing session).
                tell(e);
            });
        }
    }

    /// Queues a room frame for its subscribers here (a message only for
    /// those whose floor is below `seq`; `seq` 0: not a message).
    pub fn deliver_room(
        &self,
        node: &Node,
        conns: &mut ConnTable,
        room: &str,
        seq: u64,
        frame: &Encoded,
        skip_user: Option<&str>,
    ) {
        let Some(local) = self.rooms.get(room) else {
            // A stale bit: we have nobody here any more. Clear it lazily.
            let bit = self.bit();
            let _ = node.with_room(room, |e| {
                e.reactors &= !bit;
                e.json &= !bit;
                e.msgpack &= !bit;
            });
            return;
        };
        for sub in &local.subs {
            if seq != 0 && seq <= sub.floor {
                continue;
            }
            let Some(session) = conns.session(sub.id) else { continue };
            if skip_user.is_some_and(|u| u == &*session.user) {
                continue;
            }
            let Some(bytes) = frame.get(session.enc) else { continue };
            conns.counts.deliveries += u64::from(seq != 0);
            conns.queue(sub.id, bytes.clone());
        }
    }

    /// Applies `action` to every local connection of `user` (but `skip`),
    /// then queues `frame` for them: a message (`seq` > 0) only where the
    /// subscription's floor is below it.
    pub fn deliver_user(
        &mut self,
        node: &Node,
        conns: &mut ConnTable,
        user: &str,
        action: &UserAction,
        frame: Option<&(Arc<Encoded>, u64, Arc<str>)>,
        skip: Option<ConnId>,
    ) {
        let Some(list) = self.users.get(user) else { return };
        for id in list.clone() {
            if Some(id) == skip {
                continue;
            }
            match action {
                UserAction::None => {}
                UserAction::Subscribe { room, floor } => {
                    let _ = self.subscribe(node, conns, id, room, Some(*floor), Fresh::No);
                }
                UserAction::Unsubscribe { room } => self.unsubscribe(node, conns, id, room),
            }
            let Some((frame, seq, room)) = frame else { continue };
            if *seq != 0 && self.floor(room, id).is_none_or(|f| *seq <= f) {
                continue;
            }
            let Some(bytes) = conns.session(id).and_then(|s| frame.get(s.enc)) else { continue };
            conns.counts.deliveries += u64::from(*seq != 0);
            conns.queue(id, bytes.clone());
        }
    }

    fn floor(&self, room: &str, id: ConnId) -> Option<u64> {
        self.rooms.get(room)?.subs.iter().find(|s| s.id == id).map(|s| s.floor)
    }
}
