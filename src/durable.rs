//! The commit path: the one place that makes writes durable
//! (`Storage::flush`) and then releases what waited for it.
//!
//! Writers insert (fast, in memory) and queue an [`AfterFlush`] with the
//! [`Committer`]. A flusher takes everything queued, calls one flush
//! (fsync) for the batch, and only then releases each request: a message
//! to its room's subscribers and its `ack` to the sender, a `joined` or an
//! HTTP 201 to its connection. So nobody sees a change before the flush
//! that made it durable (delivery follows durability, PROTOCOL.md section
//! 4), and one fsync serves everything queued meanwhile (group commit: the
//! batch is what queued up during the previous flush, never a timer).
//!
//! # Who flushes
//! One flusher at a time, taking the queue in order, so a room's messages
//! are released in seq order. An event loop queues what its turn wrote
//! and, at the end of the turn, flushes the batch itself when nobody else
//! is flushing ([`Committer::commit_queued`]). Handing every batch to the
//! commit thread cost two wake-ups from idle per message at low load (the
//! thread's, then the loop's for the release), about as much CPU as the
//! synced write itself. The cluster subscriber does the same for a
//! message that found it idle ([`Committer::hold`]). The commit thread
//! flushes the rest: what other threads queue, a stream of cluster
//! messages (it batches them while the subscriber goes on reading), what a
//! loop queued while another flush ran, and everything while flushes are
//! slow ([`INLINE_MAX`]: a loop blocked in a slow fsync would keep its
//! other connections waiting).
//!
//! A flush that fails releases nothing: senders get `unavailable`, nobody
//! else sees the events, and a message's seq is given back when no later
//! one was allocated. On a cluster node, an event the cluster has already
//! sequenced is on the other nodes whatever happens here: its sender is
//! not refused but waits until the subscriber has stored it again from the
//! room's log ([`Link::strand`]).
//!
//! Once a second the commit thread also does the storage's housekeeping:
//! the free-space guard, reopening a failed database, and giving the heap
//! back to the system in the first quiet second after writes
//! ([`crate::trim`]). While it is dead (`/health` says so) nobody flushes
//! and writes wait for their deadlines: a supervisor restarts the node.

use crate::{
    alive::Alive,
    cluster::Link,
    fanout::{Cmd, Fanout, Reply, ReplyTo},
    metrics::{Flusher, Metrics},
    storage::Storage,
    trim::{self, Trim},
    wire::Msg,
};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::{
    cell::Cell,
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

/// A loop flushes its own batch only while the last flush took less than
/// this (µs). A slower disk would block the loop's other connections for
/// longer than the two wake-ups saved are worth, so the commit thread
/// flushes then, while the loops go on reading and writing.
pub const INLINE_MAX: u64 = 500;
/// Requests' room a flush buffer keeps after a burst.
const KEEP_BATCH: usize = 1024;
/// The thread beats at least this often while idle.
const IDLE_BEAT: Duration = Duration::from_secs(1);
/// How often the disk's free space is checked, and a failed storage retried.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Test-only fault hook: with this variable set to `commit`, the commit
/// thread panics once anything has been flushed (the release unit never
/// sets it).
const FAULT_ENV: &str = "CHINWAG_TEST_FAULT";
/// Test-only slow disk: every flush takes this many ms longer.
const SLOW_ENV: &str = "CHINWAG_TEST_SLOW_FLUSH_MS";

thread_local! {
    /// Set on event-loop threads: what they queue waits for the end of
    /// their turn ([`Committer::commit_queued`]) instead of waking the
    /// commit thread.
    static DEFERS: Cell<bool> = const { Cell::new(false) };
}

/// A request to the committer: what to release after the next flush.
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

/// Where every thread queues its requests; clones share one queue.
#[derive(Clone, Debug)]
pub struct Committer {
    shared: Arc<Shared>,
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

#[derive(Debug)]
struct Shared {
    w: Worker,
    queue: Mutex<Queue>,
    /// The commit thread waits on it (with `queue`'s lock).
    wake: Condvar,
    /// Held by whoever flushes and releases; the batch being released
    /// (empty between flushes, its memory kept).
    flusher: Mutex<Vec<AfterFlush>>,
    /// How long the last flush took, in µs.
    last_flush_us: AtomicU64,
    /// Flushes so far (the heap trim and the fault hook read it).
    flushes: AtomicU64,
    /// Test-only: added to every flush ([`SLOW_ENV`]).
    slow: Option<Duration>,
}

#[derive(Debug, Default)]
struct Queue {
    items: Vec<AfterFlush>,
    /// The commit thread should take the queue.
    wanted: bool,
    /// The commit thread should stop.
    stop: bool,
}

impl Worker {
    /// A single node's worker with one loop (`mailbox`), watching nothing
    /// but itself: for the commit bench and the tests.
    fn lone(storage: Storage, mailbox: crate::fanout::Mailbox) -> Worker {
        Worker {
            storage,
            min_free: 0,
            fanout: Fanout::new(Arc::new(crate::rooms::Directory::new()), vec![mailbox]),
            metrics: Arc::new(Metrics::new()),
            alive: Alive::new(["loop-0".to_string(), "commit".to_string()]),
            slot: 1,
            link: None,
        }
    }
}

impl Committer {
    /// Starts the commit thread. It stops on [`Committer::stop`]; its
    /// handle's `join` says whether its last flush succeeded.
    pub fn start(w: Worker) -> io::Result<(Committer, thread::JoinHandle<bool>)> {
        let c = Committer::without_thread(w);
        let s = c.shared.clone();
        let handle = thread::Builder::new().name("chinwag-commit".into()).spawn(move || {
            crate::priority::short_slice();
            s.run()
        })?;
        Ok((c, handle))
    }

    /// The queue alone; only loops flush until a thread runs [`Shared::run`].
    fn without_thread(w: Worker) -> Committer {
        let shared = Arc::new(Shared {
            w,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            flusher: Mutex::new(Vec::new()),
            last_flush_us: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            slow: std::env::var(SLOW_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis),
        });
        Committer { shared }
    }

    /// Marks this thread as an event loop: what it queues is flushed at
    /// the end of its turn, by [`Committer::commit_queued`].
    pub fn defer_on_this_thread() {
        DEFERS.with(|d| d.set(true));
    }

    /// Stops the thread after a last flush; its handle's `join` returns then.
    /// Needed because other threads (the cluster bridge) keep clones.
    pub fn stop(&self) {
        let mut q = self.shared.queue.lock();
        q.stop = true;
        self.shared.wake.notify_one();
    }

    /// Queues a request released once everything written so far is
    /// durable. Queue a room's message under the room's lock, right after
    /// taking its seq, so the room's messages are released in seq order.
    pub fn after_flush(&self, p: AfterFlush) {
        let mut q = self.shared.queue.lock();
        q.items.push(p);
        if !DEFERS.with(Cell::get) {
            self.shared.want(&mut q);
        }
    }

    /// Runs `f` with this thread's requests held back, like a loop's turn,
    /// then flushes them here (`here`, see [`Committer::commit_queued`])
    /// or hands them to the commit thread. For a thread that is not a loop
    /// and knows when flushing itself is cheap (the cluster subscriber,
    /// when a message found it idle).
    pub fn hold<T>(&self, here: bool, f: impl FnOnce() -> T) -> T {
        let was = DEFERS.with(|d| d.replace(true));
        let r = f();
        DEFERS.with(|d| d.set(was));
        if here {
            self.commit_queued();
        } else {
            self.shared.after_batch();
        }
        r
    }

    /// For an event loop at the end of its turn: flushes and releases what
    /// is queued, on this thread when nobody else is flushing and flushes
    /// are quick, else leaves it to the commit thread. The released frames
    /// land in the loops' inboxes; this loop's own are taken next turn,
    /// without sleeping.
    pub fn commit_queued(&self) {
        let s = &*self.shared;
        {
            let q = s.queue.lock();
            // Nobody flushes while the commit thread is dead: see the
            // module doc.
            if q.items.is_empty() || q.wanted || s.w.alive.is_failed(s.w.slot) {
                return;
            }
        }
        // Whoever holds it looks at the queue again once done.
        let Some(batch) = s.flusher.try_lock() else { return };
        // Read under the flusher's lock: the last flush may have just ended.
        if s.last_flush_us.load(Ordering::Relaxed) >= INLINE_MAX {
            drop(batch);
            s.after_batch();
            return;
        }
        s.flush_and_pass_on(batch, Flusher::Writer);
    }
}

impl Shared {
    /// Wakes the commit thread to take the queue.
    fn want(&self, q: &mut Queue) {
        if !q.wanted {
            q.wanted = true;
            self.wake.notify_one();
        }
    }

    /// After a flusher let go: what queued meanwhile, while others could
    /// not flush, goes to the commit thread.
    fn after_batch(&self) {
        let mut q = self.queue.lock();
        if !q.items.is_empty() {
            self.want(&mut q);
        }
    }

    /// Flushes and releases what is queued, lets the flusher's lock go,
    /// then hands to the commit thread whatever queued meanwhile.
    fn flush_and_pass_on(&self, mut batch: MutexGuard<'_, Vec<AfterFlush>>, by: Flusher) {
        self.flush_batch(&mut batch, by);
        drop(batch);
        self.after_batch();
    }

    /// Takes the queue into `batch` (the flusher's), flushes once and
    /// releases it. Call with the flusher's lock held; `by` says who.
    fn flush_batch(&self, batch: &mut Vec<AfterFlush>, by: Flusher) {
        std::mem::swap(batch, &mut self.queue.lock().items);
        if batch.is_empty() {
            return;
        }
        let t = Instant::now();
        let ok = self.w.storage.flush().is_ok();
        if let Some(slow) = self.slow {
            thread::sleep(slow);
        }
        let done = Instant::now();
        let took = done.duration_since(t);
        self.last_flush_us.store(took.as_micros() as u64, Ordering::Relaxed);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.w.metrics.observe_flush(took.as_secs_f64(), batch.len(), by);
        self.release(batch, ok, done);
        // The queue and this buffer trade places each flush: neither keeps
        // a burst's memory for long.
        batch.shrink_to(KEEP_BATCH);
    }

    /// The commit thread: flushes what it is asked to and does the
    /// housekeeping until stopped; returns whether the last flush succeeded.
    fn run(&self) -> bool {
        let w = &self.w;
        let _guard = w.alive.guard(w.slot);
        let fault = std::env::var(FAULT_ENV).is_ok_and(|v| v == "commit");
        let mut checked = Instant::now();
        let mut trim = Trim::new(checked);
        let mut seen = 0;
        w.storage.check_space(w.min_free);
        loop {
            w.alive.beat(w.slot);
            let flushes = self.flushes.load(Ordering::Relaxed);
            if fault && flushes > 0 {
                panic!("test fault: the commit thread stops");
            }
            if checked.elapsed() >= CHECK_EVERY {
                checked = Instant::now();
                self.maintain();
                if trim.due(std::mem::replace(&mut seen, flushes) != flushes, checked) {
                    let freed = trim::heap();
                    log::debug!(
                        "heap trimmed in {:?} (pages returned: {freed})",
                        checked.elapsed()
                    );
                    w.metrics.heap_trimmed();
                }
            }
            {
                let mut q = self.queue.lock();
                // Never asleep on a queue: what loops queued while this
                // thread held the flusher (a reopen) is taken now.
                if !q.wanted && !q.stop && q.items.is_empty() {
                    self.wake.wait_for(&mut q, IDLE_BEAT);
                }
                if q.stop {
                    break;
                }
                let due = q.wanted || !q.items.is_empty();
                q.wanted = false;
                if !due {
                    continue;
                }
            }
            self.flush_and_pass_on(self.flusher.lock(), Flusher::Commit);
        }
        self.flush_batch(&mut self.flusher.lock(), Flusher::Commit);
        let ok = w.storage.flush().is_ok();
        if !ok {
            log::error!("the last flush failed: writes since the previous one may be lost");
        } else if let Err(e) = w.storage.mark_clean() {
            log::warn!("cannot mark the clean stop (the next start checks every room): {e}");
        }
        ok
    }

    /// Once a second: the free-space guard, and healing a failed storage
    /// (sled stays failed after an I/O error, so it is reopened; whatever
    /// was allocated but never released is dropped).
    fn maintain(&self) {
        let w = &self.w;
        w.storage.check_space(w.min_free);
        if !w.storage.is_failed() || w.storage.flush().is_ok() {
            return;
        }
        // No loop flushes while the database is swapped.
        let _flusher = self.flusher.lock();
        let purge = |remove: &dyn Fn(&str, u64, u64)| {
            w.fanout.forget_unreleased(remove);
            self.refuse_queued();
        };
        if w.storage.reopen(purge).is_ok() {
            let _ = w.storage.flush();
        }
    }

    /// During a reopen's purge, while writes are refused: what is queued
    /// was written into the old database and never flushed, and the purge
    /// took back every room event not released. So each is answered
    /// `unavailable` without touching storage again.
    fn refuse_queued(&self) {
        let mut batch = std::mem::take(&mut self.queue.lock().items);
        self.answer(&mut batch, false, Instant::now());
    }

    /// Releases a flushed batch (`ok`), or answers it `unavailable`.
    fn release(&self, batch: &mut Vec<AfterFlush>, ok: bool, done: Instant) {
        if !ok {
            // Newest first, so each room's seqs can be given back in turn.
            for p in batch.iter().rev() {
                if let Then::Message(m) = &p.then {
                    if m.to.is_some() {
                        let storage = &self.w.storage;
                        let forget = || drop(storage.unapply(&m.room, m.ev.seq));
                        self.w.fanout.withdraw_message(&m.room, m.ev.seq, forget);
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
            self.w.metrics.observe_ack(done.saturating_duration_since(p.at).as_secs_f64());
            match p.then {
                Then::Nothing => {}
                Then::Cmd { reactor, ok: cmd, fail } => {
                    if let Some(cmd) = if ok { Some(cmd) } else { fail } {
                        self.w.fanout.send_to(reactor, cmd);
                    }
                }
                Then::Answer { to, reply, down } => {
                    let reply = if ok { reply } else { Reply::Unavailable(down) };
                    self.w.fanout.send_to(to.reactor(), Cmd::Reply { to, reply });
                }
                Then::Message(m) => {
                    let Message { room, ev, to, cluster_n } = *m;
                    let (seq, ts) = (ev.seq, ev.ts);
                    if ok {
                        self.w.fanout.release_message(&room, &ev);
                    }
                    let to = match (to, cluster_n, &self.w.link) {
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
                            Reply::Unavailable(to.down(crate::fanout::STORAGE_DOWN))
                        };
                        self.w.fanout.send_to(to.reactor(), Cmd::Reply { to, reply });
                    }
                }
            }
        }
    }
}

/// For `bench/commit.rs`: a committer over a fresh database with its
/// commit thread, releasing into one loop's inbox, driven as a loop
/// drives it.
#[doc(hidden)]
#[derive(Debug)]
pub struct CommitRig {
    c: Committer,
    storage: Storage,
    inbox: crate::fanout::Inbox,
    poll: mio::Poll,
    events: mio::Events,
    seq: u64,
    thread: Option<thread::JoinHandle<bool>>,
}

impl CommitRig {
    /// A database in `dir` (empty) and a running commit thread.
    pub fn new(dir: &std::path::Path) -> io::Result<CommitRig> {
        let storage = Storage::open(dir).map_err(|e| io::Error::other(e.0))?;
        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), mio::Token(0))?;
        let (mailbox, inbox) = crate::fanout::mailbox(waker);
        let (c, thread) = Committer::start(Worker::lone(storage.clone(), mailbox))?;
        let events = mio::Events::with_capacity(8);
        Ok(CommitRig { c, storage, inbox, poll, events, seq: 0, thread: Some(thread) })
    }

    /// Stores `n` messages and queues their acks as one turn of a loop
    /// would, then has them flushed on this thread (`here`, as a loop
    /// does now) or by the commit thread (as every loop did before),
    /// sleeping until the last is released, as a loop with nothing else
    /// to do sleeps.
    pub fn turn(&mut self, n: usize, here: bool) -> io::Result<()> {
        let conn = crate::fanout::ConnId { reactor: 0, idx: 0, gen: 0 };
        let c = self.c.clone();
        let text = "x".repeat(64);
        c.hold(here, || -> io::Result<()> {
            for _ in 0..n {
                self.seq += 1;
                let (seq, ts) = (self.seq, 1_732_250_000_000);
                let stored = self.storage.append("general", seq, ts, "alice", &text);
                stored.map_err(|e| io::Error::other(e.0))?;
                let to = ReplyTo::Ws { conn, id: None, enc: crate::wire::Encoding::Json };
                let ack = Reply::Ack { room: "general".into(), seq, ts };
                c.after_flush(AfterFlush::answer(to, ack, "down"));
            }
            Ok(())
        })?;
        let mut got = 0;
        while got < n {
            self.inbox.going_to_sleep();
            if self.inbox.is_empty() {
                self.poll.poll(&mut self.events, Some(Duration::from_secs(10)))?;
            }
            self.inbox.awake();
            while self.inbox.try_recv().is_some() {
                got += 1;
            }
        }
        Ok(())
    }
}

impl Drop for CommitRig {
    fn drop(&mut self) {
        self.c.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fanout::{mailbox, ConnId, Inbox},
        wire::Encoding,
    };
    use mio::{Poll, Token, Waker};

    /// A committer over a fresh database, releasing into one loop's inbox.
    struct Rig {
        c: Committer,
        inbox: Inbox,
        _poll: Poll,
        _dir: tempfile::TempDir,
    }

    fn rig(thread: bool) -> (Rig, Option<thread::JoinHandle<bool>>) {
        let dir = tempfile::tempdir().unwrap();
        let poll = Poll::new().unwrap();
        let (mailbox, inbox) = mailbox(Waker::new(poll.registry(), Token(0)).unwrap());
        let w = Worker::lone(Storage::open(dir.path()).unwrap(), mailbox);
        let (c, handle) = match thread {
            true => {
                let (c, h) = Committer::start(w).unwrap();
                (c, Some(h))
            }
            false => (Committer::without_thread(w), None),
        };
        (Rig { c, inbox, _poll: poll, _dir: dir }, handle)
    }

    /// An answer carrying `n`, for loop 0.
    fn numbered(n: u64) -> AfterFlush {
        let conn = ConnId { reactor: 0, idx: 0, gen: 0 };
        let to = ReplyTo::Ws { conn, id: None, enc: Encoding::Json };
        AfterFlush::answer(to, Reply::Ack { room: "r".into(), seq: n, ts: 0 }, "down")
    }

    /// The number an answer from [`numbered`] carries.
    fn number(cmd: Cmd) -> u64 {
        match cmd {
            Cmd::Reply { reply: Reply::Ack { seq, .. }, .. } => seq,
            other => panic!("not a numbered answer: {other:?}"),
        }
    }

    /// Runs `f` on a thread marked as an event loop (the mark is per
    /// thread, and the test harness reuses its threads).
    fn on_a_loop<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        thread::spawn(move || {
            Committer::defer_on_this_thread();
            f()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn a_loop_flushes_and_releases_its_batch_itself() {
        let (r, _) = rig(false);
        let c = r.c.clone();
        let before = on_a_loop(move || {
            c.after_flush(numbered(1));
            c.after_flush(numbered(2));
            let before = c.shared.flushes.load(Ordering::Relaxed);
            c.commit_queued();
            before
        });
        // Nothing was released before the flush, both right after it.
        assert_eq!(before, 0);
        assert_eq!(r.c.shared.flushes.load(Ordering::Relaxed), 1);
        assert_eq!(r.inbox.try_recv().map(number), Some(1));
        assert_eq!(r.inbox.try_recv().map(number), Some(2));
        assert!(r.inbox.try_recv().is_none());
        assert!(!r.c.shared.queue.lock().wanted, "the commit thread was not needed");
    }

    #[test]
    fn after_a_slow_flush_the_loop_hands_its_batch_to_the_commit_thread() {
        let (r, _) = rig(false);
        r.c.shared.last_flush_us.store(INLINE_MAX, Ordering::Relaxed);
        let c = r.c.clone();
        on_a_loop(move || {
            c.after_flush(numbered(1));
            c.commit_queued();
        });
        assert_eq!(r.c.shared.flushes.load(Ordering::Relaxed), 0, "the loop flushed");
        assert!(r.inbox.try_recv().is_none(), "released without a flush");
        let q = r.c.shared.queue.lock();
        assert!(q.wanted && q.items.len() == 1, "the commit thread was not asked");
    }

    #[test]
    fn other_threads_wake_the_commit_thread() {
        let (r, handle) = rig(true);
        r.c.after_flush(numbered(7));
        let deadline = Instant::now() + Duration::from_secs(10);
        let got = loop {
            if let Some(cmd) = r.inbox.try_recv() {
                break number(cmd);
            }
            assert!(Instant::now() < deadline, "never released");
            thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(got, 7);
        r.c.stop();
        assert!(handle.unwrap().join().unwrap(), "the last flush failed");
    }

    #[test]
    fn a_held_batch_is_flushed_here_or_handed_to_the_commit_thread() {
        let (r, _) = rig(false);
        r.c.hold(true, || r.c.after_flush(numbered(1)));
        assert_eq!(r.c.shared.flushes.load(Ordering::Relaxed), 1);
        assert_eq!(r.inbox.try_recv().map(number), Some(1));
        r.c.hold(false, || r.c.after_flush(numbered(2)));
        assert_eq!(r.c.shared.flushes.load(Ordering::Relaxed), 1, "flushed here");
        assert!(r.inbox.try_recv().is_none(), "released without a flush");
        assert!(r.c.shared.queue.lock().wanted, "the commit thread was not asked");
        // Outside `hold` this thread asks the commit thread again at once.
        let (r, _) = rig(false);
        r.c.after_flush(numbered(3));
        assert!(r.c.shared.queue.lock().wanted);
    }

    #[test]
    fn a_burst_does_not_keep_its_memory() {
        let (r, _) = rig(false);
        let c = r.c.clone();
        on_a_loop(move || {
            for round in 0..2 {
                for n in 0..10_000 {
                    c.after_flush(numbered(n));
                }
                c.commit_queued();
                let kept = c.shared.flusher.lock().capacity();
                assert!(kept <= KEEP_BATCH, "round {round}: room for {kept} kept");
            }
        });
        assert!(r.c.shared.queue.lock().items.capacity() <= KEEP_BATCH);
        assert_eq!(std::iter::from_fn(|| r.inbox.try_recv()).count(), 20_000);
    }

    /// Two loops queue numbered answers under one lock (as a room's
    /// messages are queued under the room's) and flush at the end of each
    /// "turn", racing each other and the commit thread: every answer comes
    /// out once, in the order queued.
    #[test]
    fn racing_flushers_release_in_queue_order() {
        const EACH: u64 = 500;
        let (r, handle) = rig(true);
        let room = Arc::new(Mutex::new(0u64));
        let loops: Vec<_> = (0..2)
            .map(|_| {
                let (c, room) = (r.c.clone(), room.clone());
                thread::spawn(move || {
                    Committer::defer_on_this_thread();
                    for i in 0..EACH {
                        let mut n = room.lock();
                        *n += 1;
                        c.after_flush(numbered(*n));
                        drop(n);
                        if i % 3 != 0 {
                            c.commit_queued();
                        }
                    }
                    c.commit_queued();
                })
            })
            .collect();
        for l in loops {
            l.join().unwrap();
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < 2 * EACH as usize {
            match r.inbox.try_recv() {
                Some(cmd) => got.push(number(cmd)),
                None => {
                    assert!(Instant::now() < deadline, "{} of {} released", got.len(), 2 * EACH);
                    thread::sleep(Duration::from_millis(1));
                }
            }
        }
        assert_eq!(got, (1..=2 * EACH).collect::<Vec<_>>());
        r.c.stop();
        assert!(handle.unwrap().join().unwrap());
    }
}
