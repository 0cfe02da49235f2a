//! The commit thread: the one place that makes writes durable
//! (`Storage::flush`) and the one that then releases what waited for it.
//!
//! Writers insert (fast, in memory) and hand an [`AfterFlush`] to the
//! [`Committer`]. The thread takes every request queued, calls one flush
//! (fsync) for the batch, and only then releases each request: a message
//! to its room's subscribers and its `ack` to the sender, a `joined` or an
//! HTTP 201 to its connection. So nobody sees a change before the flush
//! that made it durable (delivery follows durability, PROTOCOL.md section
//! 4), and one fsync serves everything queued meanwhile (group commit: the
//! batch is what queued up during the previous flush, never a timer).
//!
//! A flush that fails releases nothing: senders get `unavailable`, nobody
//! else sees the events, and a message's seq is given back when no later
//! one was allocated. On a cluster node, an event the cluster has already
//! sequenced is on the other nodes whatever happens here: its sender is
//! not refused but waits until the subscriber has stored it again from the
//! room's log ([`Link::strand`]).
//!
//! Once a second it also does the storage's housekeeping: the free-space
//! guard, reopening a failed database, and giving the heap back to the
//! system in the first quiet second after writes ([`crate::trim`]).

use crate::{
    alive::Alive,
    cluster::Link,
    fanout::{Cmd, Fanout, Reply, ReplyTo},
    metrics::Metrics,
    storage::Storage,
    trim::{self, Trim},
    wire::Msg,
};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::{
    io,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

/// Most requests released per flush (a bound on one batch's latency).
const BATCH_MAX: usize = 4096;
/// The thread beats at least this often while idle.
const IDLE_BEAT: Duration = Duration::from_secs(1);
/// How often the disk's free space is checked, and a failed storage retried.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Test-only fault hook: with this variable set to `commit`, the commit
/// thread panics after its first flush (the release unit never sets it).
const FAULT_ENV: &str = "CHINWAG_TEST_FAULT";

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
    /// A stored room event: to its room once durable, with the sender's
    /// `ack` (`to`, none for an event another node accepted).
    Message(Box<Message>),
}

/// A stored room event (a message, an edit, ...) waiting for its flush.
#[derive(Debug)]
pub struct Message {
    /// Its room (the directory's shared name).
    pub room: Arc<str>,
    /// The event, its seq and ts set: the live frame.
    pub ev: Msg,
    /// Who waits for the `ack` (none for an event another node accepted).
    pub to: Option<ReplyTo>,
    /// The cluster's number of this node's event, when the cluster
    /// sequenced it: if it cannot be made durable here, its sender is not
    /// refused but waits for it to be stored again from the room's log.
    pub cluster_n: Option<u64>,
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

    /// A message just stored: delivered to its room once durable, and
    /// acked to `m.to`. Queue it under the room's lock, right after taking
    /// its seq, so the room's messages are released in seq order.
    pub fn message(m: Message) -> AfterFlush {
        AfterFlush { then: Then::Message(Box::new(m)), at: Instant::now() }
    }

    /// Nothing to release: just make what was written durable soon.
    pub fn nothing() -> AfterFlush {
        AfterFlush { then: Then::Nothing, at: Instant::now() }
    }
}

/// The sending side of the commit thread.
#[derive(Clone, Debug)]
pub struct Committer {
    /// `None` asks the thread to stop (after answering what it holds).
    tx: Sender<Option<AfterFlush>>,
}

/// What the commit thread works with.
#[derive(Debug)]
pub struct Worker {
    /// The database it flushes.
    pub storage: Storage,
    /// Free bytes below which writes are refused (0: no guard).
    pub min_free: u64,
    /// Where released messages and answers go.
    pub fanout: Fanout,
    /// Flush and ack latencies.
    pub metrics: Arc<Metrics>,
    /// The watched threads; this one is in slot `slot`.
    pub alive: Arc<Alive>,
    /// Its slot in `alive`.
    pub slot: usize,
    /// The cluster link, on a cluster node.
    pub link: Option<Arc<Link>>,
}

impl Committer {
    /// Starts the commit thread. It stops on [`Committer::stop`]; its
    /// handle's `join` says whether its last flush succeeded.
    pub fn start(w: Worker) -> io::Result<(Committer, thread::JoinHandle<bool>)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let handle = thread::Builder::new().name("chinwag-commit".into()).spawn(move || {
            crate::priority::short_slice();
            w.run(rx)
        })?;
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

impl Worker {
    /// Flushes and releases until stopped; returns whether the last flush
    /// succeeded.
    fn run(self, rx: Receiver<Option<AfterFlush>>) -> bool {
        let _guard = self.alive.guard(self.slot);
        let fault = std::env::var(FAULT_ENV).is_ok_and(|v| v == "commit");
        let mut batch = Vec::new();
        let mut checked = Instant::now();
        let mut trim = Trim::new(checked);
        let mut flushed = false;
        self.storage.check_space(self.min_free);
        loop {
            self.alive.beat(self.slot);
            if checked.elapsed() >= CHECK_EVERY {
                checked = Instant::now();
                if !self.maintain(&rx) {
                    break;
                }
                if trim.due(std::mem::take(&mut flushed), checked) {
                    let freed = trim::heap();
                    log::debug!(
                        "heap trimmed in {:?} (pages returned: {freed})",
                        checked.elapsed()
                    );
                    self.metrics.heap_trimmed();
                }
            }
            let first = match rx.recv_timeout(IDLE_BEAT) {
                Ok(Some(p)) => p,
                Ok(None) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => continue,
            };
            batch.push(first);
            let mut running = true;
            // What queued up during the last flush shares this one.
            while batch.len() < BATCH_MAX {
                match rx.try_recv() {
                    Ok(Some(p)) => batch.push(p),
                    Ok(None) => running = false,
                    Err(_) => break,
                }
            }
            let t = Instant::now();
            let ok = self.storage.flush().is_ok();
            let done = Instant::now();
            flushed = true;
            self.metrics.observe_flush(done.duration_since(t).as_secs_f64(), batch.len());
            self.release(&mut batch, ok, done);
            if fault {
                panic!("test fault: the commit thread stops");
            }
            if !running {
                break;
            }
        }
        let ok = self.storage.flush().is_ok();
        if !ok {
            log::error!("the last flush failed: writes since the previous one may be lost");
        } else if let Err(e) = self.storage.mark_clean() {
            log::warn!("cannot mark the clean stop (the next start checks every room): {e}");
        }
        ok
    }

    /// Once a second: the free-space guard, and healing a failed storage
    /// (sled stays failed after an I/O error, so it is reopened; whatever
    /// was allocated but never released is dropped).
    /// Returns false if asked to stop meanwhile.
    fn maintain(&self, rx: &Receiver<Option<AfterFlush>>) -> bool {
        self.storage.check_space(self.min_free);
        if !self.storage.is_failed() || self.storage.flush().is_ok() {
            return true;
        }
        let mut running = true;
        let purge = |remove: &dyn Fn(&str, u64, u64)| {
            self.fanout.forget_unreleased(remove);
            running = self.refuse_queued(rx);
        };
        if self.storage.reopen(purge).is_ok() {
            let _ = self.storage.flush();
        }
        running
    }

    /// During a reopen's purge, while writes are refused: what is queued
    /// was written into the old database and never flushed, and the purge
    /// took back every room event not released. So each is answered
    /// `unavailable` without touching storage again. Returns false if
    /// asked to stop meanwhile.
    fn refuse_queued(&self, rx: &Receiver<Option<AfterFlush>>) -> bool {
        let mut batch = Vec::new();
        let mut running = true;
        while let Ok(p) = rx.try_recv() {
            match p {
                Some(p) => batch.push(p),
                None => {
                    running = false;
                    break;
                }
            }
        }
        self.answer(&mut batch, false, Instant::now());
        running
    }

    /// Releases a flushed batch (`ok`), or answers it `unavailable`.
    fn release(&self, batch: &mut Vec<AfterFlush>, ok: bool, done: Instant) {
        if !ok {
            // Newest first, so each room's seqs can be given back in turn.
            for p in batch.iter().rev() {
                if let Then::Message(m) = &p.then {
                    if m.to.is_some() {
                        let storage = &self.storage;
                        let forget = || drop(storage.unapply(&m.room, m.ev.seq));
                        self.fanout.withdraw_message(&m.room, m.ev.seq, forget);
                    }
                }
            }
        }
        self.answer(batch, ok, done);
    }

    /// Delivers a flushed batch and its answers (`ok`), or answers it
    /// `unavailable`; storage and seqs are the caller's business.
    fn answer(&self, batch: &mut Vec<AfterFlush>, ok: bool, done: Instant) {
        for p in batch.drain(..) {
            self.metrics.observe_ack(done.saturating_duration_since(p.at).as_secs_f64());
            match p.then {
                Then::Nothing => {}
                Then::Cmd { reactor, ok: cmd, fail } => {
                    if let Some(cmd) = if ok { Some(cmd) } else { fail } {
                        self.fanout.send_to(reactor, cmd);
                    }
                }
                Then::Answer { to, reply, down } => {
                    let reply = if ok { reply } else { Reply::Unavailable(down) };
                    self.fanout.send_to(to.reactor(), Cmd::Reply { to, reply });
                }
                Then::Message(m) => {
                    let Message { room, ev, to, cluster_n } = *m;
                    let (seq, ts) = (ev.seq, ev.ts);
                    if ok {
                        self.fanout.release_message(&room, &ev);
                    }
                    let to = match (to, cluster_n, &self.link) {
                        (Some(to), Some(n), Some(link)) if !ok => {
                            link.strand(&room, n, to);
                            None
                        }
                        (to, ..) => to,
                    };
                    if let Some(to) = to {
                        let reply = if ok {
                            Reply::Ack { room, seq, ts }
                        } else {
                            Reply::Unavailable(to.down())
                        };
                        self.fanout.send_to(to.reactor(), Cmd::Reply { to, reply });
                    }
                }
            }
        }
    }
}
