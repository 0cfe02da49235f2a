//! The commit thread: the one place that makes writes durable
//! (`Storage::flush`) and the one that then releases what waited for it.
//!
//! Writers insert (fast, in memory) and hand an [`AfterFlush`] to the
//! [`Committer`]. The thread takes every request queued, calls one flush
//! (fsync) for the batch, and only then forwards each request's command to
//! its reactor. So an `ack`, a `joined` or an HTTP 201 never precedes the
//! flush that made its change durable, and one fsync serves many writes
//! (group commit).

use crate::{
    fanout::{Cmd, Mailbox, Reply, ReplyTo},
    metrics::Metrics,
    storage::Storage,
};
use crossbeam_channel::{Receiver, Sender};
use std::{
    io,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

/// How long the commit thread gathers writes before one flush...
const COMMIT_WINDOW: Duration = Duration::from_millis(10);
/// ...unless this many are already waiting.
const COMMIT_ENOUGH: usize = 16;

/// A request to the commit thread: what to release after the next flush.
#[derive(Debug)]
pub struct AfterFlush {
    then: Then,
    /// When it was queued (ack latency).
    at: Instant,
}

#[derive(Debug)]
enum Then {
    /// Just make what was written durable soon.
    Nothing,
    /// `ok` for reactor `reactor` once durable, `fail` if the flush failed.
    Cmd { reactor: u16, ok: Cmd, fail: Option<Cmd> },
    /// `reply` for `to` once durable, `unavailable` (saying `down`) if not.
    Answer { to: ReplyTo, reply: Reply, down: &'static str },
}

impl AfterFlush {
    /// `cmd` for reactor `reactor` once durable; `fail` if the flush fails.
    pub fn then(reactor: u16, ok: Cmd, fail: Option<Cmd>) -> AfterFlush {
        AfterFlush { then: Then::Cmd { reactor, ok, fail }, at: Instant::now() }
    }

    /// `reply` for `to` once durable, `unavailable` (saying `down`) if not.
    pub fn answer(to: ReplyTo, reply: Reply, down: &'static str) -> AfterFlush {
        AfterFlush { then: Then::Answer { to, reply, down }, at: Instant::now() }
    }

    /// Nothing to release: just make what was written durable soon.
    pub fn nothing() -> AfterFlush {
        AfterFlush { then: Then::Nothing, at: Instant::now() }
    }

    /// The command to send after a flush that succeeded (`ok`) or not.
    fn release(self, ok: bool) -> Option<(u16, Cmd)> {
        match self.then {
            Then::Nothing => None,
            Then::Cmd { reactor, ok: cmd, .. } if ok => Some((reactor, cmd)),
            Then::Cmd { reactor, fail, .. } => fail.map(|cmd| (reactor, cmd)),
            Then::Answer { to, reply, down } => {
                let reply = if ok { reply } else { Reply::Unavailable(down) };
                Some((to.reactor(), Cmd::Reply { to, reply }))
            }
        }
    }
}

/// The sending side of the commit thread.
#[derive(Clone, Debug)]
pub struct Committer {
    /// `None` asks the thread to stop (after answering what it holds).
    tx: Sender<Option<AfterFlush>>,
}

impl Committer {
    /// Starts the commit thread. It stops on [`Committer::stop`], after a
    /// last flush.
    pub fn start(
        storage: Storage,
        mailboxes: Vec<Mailbox>,
        metrics: Arc<Metrics>,
    ) -> io::Result<(Committer, thread::JoinHandle<()>)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let handle = thread::Builder::new()
            .name("chinwag-commit".into())
            .spawn(move || commit_loop(storage, mailboxes, rx, metrics))?;
        Ok((Committer { tx }, handle))
    }

    /// Stops the thread after a last flush; its handle's `join` returns then.
    /// Needed because other threads (the cluster bridge) keep clones.
    pub fn stop(&self) {
        let _ = self.tx.send(None);
    }

    /// Queues a request released once everything written so far is durable.
    pub fn after_flush(&self, p: AfterFlush) {
        // The thread only goes away at shutdown, after the reactors.
        let _ = self.tx.send(Some(p));
    }
}

/// Gathers one batch: the first request, then whatever comes within the
/// window (or until the batch is big enough), then whatever is queued.
/// Returns false once asked to stop.
fn gather(
    rx: &Receiver<Option<AfterFlush>>,
    first: AfterFlush,
    batch: &mut Vec<AfterFlush>,
) -> bool {
    // Group commit: a flush costs far more CPU than a write (sled seals its
    // buffer and syncs through its IO threads), so at chat rates, where
    // writes come one by one, the window is what makes flushes shared.
    // Under load a batch fills at once and waits for nothing.
    let deadline = first.at + COMMIT_WINDOW;
    batch.push(first);
    let mut running = true;
    while batch.len() < COMMIT_ENOUGH && running {
        match rx.recv_deadline(deadline) {
            Ok(Some(p)) => batch.push(p),
            Ok(None) => running = false,
            Err(_) => break,
        }
    }
    for p in rx.try_iter() {
        match p {
            Some(p) => batch.push(p),
            None => running = false,
        }
    }
    running
}

fn commit_loop(
    storage: Storage,
    mailboxes: Vec<Mailbox>,
    rx: Receiver<Option<AfterFlush>>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::new();
    let mut running = true;
    while running {
        let Ok(Some(first)) = rx.recv() else { break };
        running = gather(&rx, first, &mut batch);
        let t = Instant::now();
        let ok = storage.flush().is_ok();
        let done = Instant::now();
        metrics.observe_flush(done.duration_since(t).as_secs_f64(), batch.len());
        for p in batch.drain(..) {
            metrics.observe_ack(done.saturating_duration_since(p.at).as_secs_f64());
            if let Some((reactor, cmd)) = p.release(ok) {
                if let Some(mb) = mailboxes.get(reactor as usize) {
                    mb.send(cmd);
                }
            }
        }
    }
    let _ = storage.flush();
}
