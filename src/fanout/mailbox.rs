//! A reactor's inbox: a channel plus that reactor's one `mio::Waker`, with
//! wake-ups coalesced by an `asleep` flag.

use super::Cmd;
use crossbeam_channel::{Receiver, Sender};
use mio::Waker;
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

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
