//! The only cross-thread path into a reactor: a [`Mailbox`] is a channel plus
//! that reactor's one `mio::Waker`, with wake-ups coalesced by an `asleep`
//! flag, and [`Cmd`] is what travels in it.
//!
//! Owns transport only: no rules about who receives what (that is the
//! reactor's) and no encoding (that is `proto`'s).

use crate::proto::Wire;
use crossbeam_channel::{Receiver, Sender};
use mio::Waker;
use serde_json::Value;
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

/// A connection, globally: its reactor and its generation-tagged slab slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnRef {
    /// Index of the reactor that owns it.
    pub reactor: u16,
    /// Slab index inside that reactor.
    pub idx: u32,
    /// Generation: slab slots are reused, so a stale ref must not match.
    pub gen: u32,
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
    Room { room: Arc<str>, seq: u64, wire: Arc<Wire>, skip_user: Option<Arc<str>> },
    /// A frame (if any) for every local connection of `user`, after `action`.
    /// `seq`/`room` as in `Room` when it is a message. `skip`: not to this one.
    User {
        user: Arc<str>,
        action: UserAction,
        wire: Option<(Arc<Wire>, u64, Arc<str>)>,
        skip: Option<ConnRef>,
    },
    /// A reply for one connection (an `ack` after the flush made it durable).
    Reply { conn: ConnRef, wire: Arc<Wire> },
    /// A membership change is durable: finish the `join` for this connection.
    /// `new`: the user was not a member before (announce them).
    /// `http`: the join came from the HTTP API (answer 200 to `conn`).
    Joined {
        conn: ConnRef,
        room: Arc<str>,
        user: Arc<str>,
        since: Option<u64>,
        id: Option<Value>,
        new: bool,
        http: bool,
    },
    /// A complete HTTP response for a parked API connection.
    Http { conn: ConnRef, bytes: bytes::Bytes },
    /// A membership change is durable: finish the `leave` for this user.
    Left { conn: ConnRef, room: Arc<str>, id: Option<Value> },
    /// Stop: close every connection with 1001 and exit the loop.
    Shutdown,
}

/// The sending side of a reactor's inbox. Cloned freely.
#[derive(Clone, Debug)]
pub struct Mailbox {
    tx: Sender<Cmd>,
    waker: Arc<Waker>,
    asleep: Arc<AtomicBool>,
}

/// The receiving side, owned by the reactor.
#[derive(Debug)]
pub struct Inbox {
    rx: Receiver<Cmd>,
    asleep: Arc<AtomicBool>,
}

/// A connected mailbox and inbox for a reactor whose poll owns `waker`.
pub fn mailbox(waker: Waker) -> (Mailbox, Inbox) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let asleep = Arc::new(AtomicBool::new(false));
    (Mailbox { tx, waker: Arc::new(waker), asleep: asleep.clone() }, Inbox { rx, asleep })
}

impl Mailbox {
    /// Queues `cmd` and wakes the reactor if it is (about to be) asleep.
    pub fn send(&self, cmd: Cmd) {
        if self.tx.send(cmd).is_ok() && self.asleep.swap(false, Ordering::SeqCst) {
            // A failed wake means the poll is gone, i.e. the reactor exited.
            let _ = self.waker.wake();
        }
    }
}

impl Inbox {
    /// Takes the next queued command, if any.
    pub fn try_recv(&self) -> Option<Cmd> {
        self.rx.try_recv().ok()
    }

    /// Marks the reactor as going to sleep. Call before the last drain and
    /// the poll: a command sent after this wakes the poll.
    pub fn going_to_sleep(&self) {
        self.asleep.store(true, Ordering::SeqCst);
    }

    /// Marks the reactor as awake (saves senders the wake syscall).
    pub fn awake(&self) {
        self.asleep.store(false, Ordering::SeqCst);
    }

    /// Whether commands are waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}
