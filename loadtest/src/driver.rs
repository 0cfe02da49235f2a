//! The client event loops: one mio `Poll` per thread driving its share of the
//! clients through connect, upgrade, hello, join, then sending, reading
//! history, churning and receiving, step after step, until the run's end.
//!
//! Owns: the per-connection state machine (chinwag and Socket.IO dialects),
//! the open-loop schedules (sends, history requests), what each send is in
//! the `mixed` scenario (a message, a reply, an edit or a reaction, on
//! targets the publisher saw acked) and what text it carries (the stamp, or
//! made-up words for the search load), storm's drop and
//! reconnect timers and its catch-up after a reconnect, reading in batches
//! (one shared scratch buffer per thread, so a connection keeps memory only
//! for a partial frame), and the per-message bookkeeping (latency,
//! duplicates, order, seqs seen). Threads share nothing on the hot path but a
//! few relaxed counters for the progress line, flushed once per loop; each
//! step's numbers go to the main thread once, when the step ends.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::Value;

use crate::stats::{bump, Stats};
use crate::track::{Seen, SeqSet, Window};
use crate::vocab::Vocab;
use crate::wire::{self, Cursor, Frame, Kind, Proto};
use crate::{net, sio, sys, ws};

/// Largest server frame accepted (the server's own default `max_frame` is
/// 64 KiB for client frames; a `joined` with 1000 big messages is larger).
const MAX_FRAME: usize = 16 << 20;
/// A connection whose unsent output passes this is not being read by the
/// server; it is dropped rather than buffered without end.
const MAX_OUTPUT: usize = 64 << 20;
/// Per-thread read buffer: one `read` takes up to this much, so a busy
/// connection's backlog is parsed in a few large batches.
const SCRATCH: usize = 256 << 10;
/// Longest sleep of a loop, so it notices a new step and aborts soon.
const TICK: Duration = Duration::from_millis(10);
/// How many lost connections are described on stderr (the rest are counted).
const LOG_LOSSES: u64 = 5;
/// Catch-up pages after a reconnect ask for the most the server gives.
const CATCH_UP_PAGE: u64 = 100;
/// Id of catch-up `history` requests (readers' ids are stamps, never 0).
const CATCH_UP_ID: u64 = 0;
/// Wait before retrying a storm reconnect that failed.
const RETRY: Duration = Duration::from_millis(20);
/// How many recent targets (room messages, own messages, roots) a mixed
/// publisher keeps to pick from: "recent" messages, as people react to and
/// edit what is on their screen.
const RECENT: usize = 32;
/// The emoji mixed publishers toggle (one is two scalar values, as many
/// real ones are).
const EMOJI: [&str; 4] = ["\u{1f44d}", "\u{1f389}", "\u{2764}\u{fe0f}", "\u{1f602}"];

/// What one send of a mixed publisher is; in mixed runs its code is the low
/// two bits of the frame's id (the rest is the send instant), so an `ack` or
/// `error` says which kind it answers.
pub const K_MESSAGE: usize = 0;
/// A `send` with `reply_to`.
pub const K_REPLY: usize = 1;
/// An `edit` of one of the publisher's own messages.
pub const K_EDIT: usize = 2;
/// A `react` toggle.
pub const K_REACT: usize = 3;

/// What to run; the same for every thread and every step.
pub struct Plan {
    /// Servers; client i connects to `targets[target_of(i)]`.
    pub targets: Vec<SocketAddr>,
    /// Source addresses; client i binds `sources[i % len]` (empty: any).
    pub sources: Vec<IpAddr>,
    /// Number of clients.
    pub conns: usize,
    /// Number of rooms; client i joins `r<i % rooms>` (ignored for `dm`).
    pub rooms: usize,
    /// Dialect and encoding.
    pub proto: Proto,
    /// Number of event-loop threads.
    pub threads: usize,
    /// User ids are `<prefix><i>`.
    pub user_prefix: String,
    /// Upgrades in progress at once, over all threads.
    pub connect_concurrency: usize,
    /// Clients 0..publishers send (all of them for `dm`).
    pub publishers: usize,
    /// Clients publishers..publishers+readers send `history` requests.
    pub readers: usize,
    /// `limit` of those requests.
    pub page: u64,
    /// Message text size in bytes.
    pub size: usize,
    /// Pairs (2k, 2k+1) exchange `dm`s instead of joining rooms.
    pub dm: bool,
    /// Storm: members drop and resume; every client records every seq.
    pub churn: Option<Churn>,
    /// The highest frame rate one connection will send (checked against
    /// the server's advertised limit).
    pub conn_rate: f64,
    /// `mixed`: part of the sends are replies, edits and reactions.
    pub mix: Option<Mix>,
    /// Message text of made-up words instead of the stamp (search load).
    pub words: Option<Arc<Words>>,
}

/// The share of each kind of send in a mixed run.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    /// Fraction of sends that are not plain messages.
    pub fraction: f64,
    /// Relative weights of reactions, edits and replies among those.
    pub react: f64,
    /// See `react`.
    pub edit: f64,
    /// See `react`.
    pub reply: f64,
}

/// Text of made-up words: `min..=max` Zipf words from `vocab` per message.
pub struct Words {
    /// The vocabulary.
    pub vocab: Vocab,
    /// Fewest words in a message.
    pub min: usize,
    /// Most words in a message.
    pub max: usize,
}

/// What a mixed publisher may act on: seqs it saw acked (every live
/// delivery comes after durability, so after the ack).
#[derive(Default)]
struct Targets {
    /// Recent messages of the room, and which of `EMOJI` (bits) this
    /// publisher has on each: the next reaction there toggles one.
    recent: VecDeque<(u64, u8)>,
    /// Recent messages of the room that are not replies (thread roots).
    roots: VecDeque<u64>,
    /// This publisher's own recent messages (edit targets).
    own: VecDeque<u64>,
}

fn push_capped<T>(q: &mut VecDeque<T>, x: T) {
    if q.len() == RECENT {
        q.pop_front();
    }
    q.push_back(x);
}

/// How storm clients come and go.
#[derive(Clone, Copy, Debug)]
pub struct Churn {
    /// Shortest session before the client drops it.
    pub session_min: Duration,
    /// Longest session.
    pub session_max: Duration,
    /// Longest wait before reconnecting.
    pub offline_max: Duration,
}

/// What a client does besides receiving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends `send` (or `dm`) on the send schedule; never churns.
    Publisher,
    /// Sends `history` requests on the read schedule.
    Reader,
    /// Only receives (and, in a storm, churns).
    Member,
}

impl Plan {
    /// Number of rooms, DM rooms included.
    pub fn room_count(&self) -> usize {
        if self.dm {
            self.conns / 2
        } else {
            self.rooms
        }
    }

    /// Clients in `room`.
    pub fn members(&self, room: usize) -> u64 {
        if self.dm {
            return 2;
        }
        (self.conns / self.rooms + usize::from(room < self.conns % self.rooms)) as u64
    }

    /// Room index of client `i`.
    pub fn room_of(&self, i: usize) -> usize {
        if self.dm {
            i / 2
        } else {
            i % self.rooms
        }
    }

    /// Node of client `i`: round-robin within each room (not `i % nodes`,
    /// which with an even number of rooms would put whole rooms on one node
    /// and never cross the cluster).
    pub fn target_of(&self, i: usize) -> usize {
        let rank = if self.dm { i % 2 } else { i / self.rooms };
        (self.room_of(i) + rank) % self.targets.len()
    }

    /// How many connections should receive a message sent by client `i`.
    pub fn audience(&self, i: usize) -> u64 {
        self.members(self.room_of(i))
    }

    /// What client `i` does.
    pub fn role(&self, i: usize) -> Role {
        if i < self.publishers {
            Role::Publisher
        } else if i < self.publishers + self.readers {
            Role::Reader
        } else {
            Role::Member
        }
    }

    /// User id of client `i`.
    pub fn user(&self, i: usize) -> String {
        format!("{}{i}", self.user_prefix)
    }

    /// Room name of client `i`: `r<k>`, or the pair's `dm:<a>:<b>` (a < b by bytes).
    pub fn room_name(&self, i: usize) -> String {
        if !self.dm {
            return format!("r{}", self.room_of(i));
        }
        let (a, b) = (self.user(i), self.user(i ^ 1));
        if a < b {
            format!("dm:{a}:{b}")
        } else {
            format!("dm:{b}:{a}")
        }
    }

    /// Clients per node.
    pub fn conns_by_target(&self) -> Vec<u64> {
        let mut v = vec![0; self.targets.len()];
        for i in 0..self.conns {
            v[self.target_of(i)] += 1;
        }
        v
    }

    /// Connections one send reaches, on average over the publishers (what a
    /// sweep step offers is rate × this per second).
    pub fn deliveries_per_message(&self) -> f64 {
        let total: u64 = (0..self.publishers).map(|i| self.audience(i)).sum();
        total as f64 / self.publishers.max(1) as f64
    }
}

/// One step of a run: its rates and phases.
#[derive(Clone, Copy, Debug)]
pub struct StepSpec {
    /// Aggregate sends per second over all publishers.
    pub rate: f64,
    /// Aggregate `history` requests per second over all readers.
    pub read_rate: f64,
    /// Sending before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Receiving after the last send, before counting losses.
    pub drain: Duration,
}

/// A step's instants, in nanoseconds since [`Shared::epoch`], and rates.
#[derive(Clone, Copy, Debug)]
pub struct Timeline {
    /// Sends per second.
    pub rate: f64,
    /// History requests per second.
    pub read_rate: f64,
    /// Sending starts.
    pub start: u64,
    /// Warm-up over: the measured window opens.
    pub warm_end: u64,
    /// The window closes and sending stops.
    pub end: u64,
    /// Receiving for this step stops and its numbers are handed over.
    pub drain_end: u64,
}

impl Timeline {
    /// The timeline of a step of `spec` starting at `start`.
    pub fn new(spec: &StepSpec, start: u64) -> Timeline {
        let warm_end = start + spec.warmup.as_nanos() as u64;
        let end = warm_end + spec.duration.as_nanos() as u64;
        let drain_end = end + spec.drain.as_nanos() as u64;
        Timeline { rate: spec.rate, read_rate: spec.read_rate, start, warm_end, end, drain_end }
    }

    /// Whether instant `t` is in the measured window.
    pub fn in_window(&self, t: u64) -> bool {
        (self.warm_end..self.end).contains(&t)
    }

    /// When slot `k` of a schedule at `rate` is due: slots are evenly spaced
    /// at 1/rate and dealt round-robin to the senders, so the aggregate is
    /// open-loop (a slow server does not slow the offered load).
    fn due(&self, rate: f64, k: u64) -> u64 {
        if rate > 0.0 {
            self.start + (k as f64 * 1e9 / rate) as u64
        } else {
            u64::MAX
        }
    }
}

/// State shared by the main thread and the loops.
pub struct Shared {
    /// Time zero of every stamp.
    pub epoch: Instant,
    /// The current step, once every client has joined.
    pub step: Mutex<Option<Timeline>>,
    /// Bumped after `step` changes; the loops poll this, not the lock.
    pub step_gen: AtomicU64,
    /// Each thread's numbers for the current step, pushed at its drain end.
    pub finished: Mutex<Vec<Stats>>,
    /// No more steps: close and return.
    pub done: AtomicBool,
    /// Clients that have joined their room (counted once each).
    pub ready: AtomicU64,
    /// Stop now (setup failure or timeout).
    pub abort: AtomicBool,
    /// Why the run was aborted.
    pub fatal: Mutex<Option<String>>,
    /// Live totals for the progress line (whole run).
    pub live: Live,
}

/// Live totals for the progress line.
#[derive(Default)]
pub struct Live {
    /// Sends written.
    pub sent: AtomicU64,
    /// `ack`s read.
    pub acked: AtomicU64,
    /// New `message`s read.
    pub delivered: AtomicU64,
    /// `error` frames read.
    pub errors: AtomicU64,
    /// Connections lost after setup.
    pub disconnects: AtomicU64,
    /// Storm reconnects completed.
    pub reconnects: AtomicU64,
    /// `history` answers read.
    pub history: AtomicU64,
}

impl Shared {
    /// A fresh state with its epoch now.
    pub fn new() -> Shared {
        Shared {
            epoch: Instant::now(),
            step: Mutex::new(None),
            step_gen: AtomicU64::new(0),
            finished: Mutex::new(Vec::new()),
            done: AtomicBool::new(false),
            ready: AtomicU64::new(0),
            abort: AtomicBool::new(false),
            fatal: Mutex::new(None),
            live: Live::default(),
        }
    }

    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Records the first fatal error and stops every loop.
    pub fn fail(&self, why: String) {
        if let Ok(mut f) = self.fatal.lock() {
            f.get_or_insert(why);
        }
        self.abort.store(true, Relaxed);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not connected (before the first open, or between storm sessions).
    Idle,
    /// TCP connect in progress.
    Connecting,
    /// Upgrade request written, waiting for the 101.
    Upgrading,
    /// Waiting for `hello` (chinwag) or the Engine.IO open packet.
    Hello,
    /// Socket.IO: namespace connect written, waiting for `40`.
    SioConnect,
    /// `join` written, waiting for `joined` (or the join ack).
    Joining,
    /// Joined: sending and receiving.
    Ready,
    /// Gone for good.
    Closed,
}

/// A reader's two walks through its room's history: back from the newest
/// (`before`), and forward from the oldest (`after`); requests alternate.
#[derive(Clone, Copy, Debug, Default)]
struct Paging {
    /// Next `before` cursor; `None`: start at the newest.
    back: Option<u64>,
    /// Next `after` cursor; 0: start at the oldest.
    fwd: u64,
    /// Which walk the last request belonged to.
    flip: bool,
}

impl Paging {
    /// The next request's cursor and walk (0: back, 1: forward).
    fn next(&mut self) -> (Cursor, u64) {
        self.flip = !self.flip;
        if self.flip {
            (self.back.map_or(Cursor::Latest, Cursor::Before), 0)
        } else {
            (Cursor::After(self.fwd), 1)
        }
    }

    /// Moves walk `dir` on past an answer; a walk at its end starts over.
    fn answer(&mut self, dir: u64, first: Option<u64>, last: Option<u64>, more: bool) {
        if dir == 0 {
            self.back = if more { first } else { None };
        } else {
            self.fwd = if more { last.unwrap_or(0) } else { 0 };
        }
    }
}

struct Client {
    /// Global client number (user id suffix).
    index: usize,
    role: Role,
    room: usize,
    target: usize,
    room_name: String,
    /// The other user of a `dm` pair (empty otherwise).
    peer: String,
    state: State,
    stream: Option<TcpStream>,
    key: String,
    /// Bytes not yet written.
    out: Vec<u8>,
    /// A partial frame (or upgrade answer) carried to the next read.
    inbuf: Vec<u8>,
    /// A fragmented message being reassembled (chinwag does not fragment,
    /// but RFC 6455 allows it).
    frag: Vec<u8>,
    opened_ns: u64,
    hello_ns: u64,
    /// Bumped at each open, so a timer for an older session is ignored.
    session: u32,
    /// Joined at least once (a later loss is a disconnect, not a setup failure).
    ever_ready: bool,
    /// The window has been started at the subscription's seq.
    subscribed: bool,
    /// This session's deliveries.
    window: Window,
    /// Storm: every seq seen over all sessions.
    seqs: Option<Box<SeqSet>>,
    /// Storm: catch-up pages are being fetched.
    paging: bool,
    /// Reader: where its history walks are.
    hist: Paging,
    /// Mixed publisher: what its replies, edits and reactions may target.
    targets: Option<Box<Targets>>,
}

/// What a timer does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    /// Storm: drop the session.
    Drop,
    /// Storm: connect again.
    Reopen,
}

/// (due ns, slot, session, kind), ordered by due time.
type Timer = (u64, usize, u32, TimerKind);

/// One event-loop thread's clients and numbers.
struct Worker<'a> {
    plan: &'a Plan,
    shared: &'a Shared,
    poll: Poll,
    clients: Vec<Client>,
    /// (client slot, next schedule slot k) of the publishers this thread owns.
    publishers: Vec<(usize, u64)>,
    /// The same for readers.
    readers: Vec<(usize, u64)>,
    /// Slots waiting to be opened (at most `concurrency` upgrades at once).
    to_open: VecDeque<usize>,
    timers: BinaryHeap<Reverse<Timer>>,
    in_flight: usize,
    concurrency: usize,
    timeline: Option<Timeline>,
    /// `shared.step_gen` that `timeline` came from.
    gen: u64,
    /// This step's numbers are handed over.
    reported: bool,
    /// This thread's CPU seconds at the window's start and end.
    cpu: (Option<f64>, Option<f64>),
    stats: Stats,
    /// Live deltas not yet added to `shared.live`.
    delta: [u64; 7],
    seed: u64,
    text: Vec<u8>,
    payload: Vec<u8>,
    limits_checked: bool,
}

const D_SENT: usize = 0;
const D_ACKED: usize = 1;
const D_DELIVERED: usize = 2;
const D_ERRORS: usize = 3;
const D_DISCONNECTS: usize = 4;
const D_RECONNECTS: usize = 5;
const D_HISTORY: usize = 6;

/// Runs thread `tid` of `plan` until the main thread says done (or an
/// abort); each step's numbers go to `shared.finished`.
pub fn run(tid: usize, plan: &Plan, shared: &Shared) {
    let poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => return shared.fail(format!("cannot create a poll: {e}")),
    };
    let clients: Vec<Client> = (tid..plan.conns)
        .step_by(plan.threads)
        .map(|index| Client {
            index,
            role: plan.role(index),
            room: plan.room_of(index),
            target: plan.target_of(index),
            room_name: plan.room_name(index),
            peer: if plan.dm { plan.user(index ^ 1) } else { String::new() },
            state: State::Idle,
            stream: None,
            key: String::new(),
            out: Vec::new(),
            inbuf: Vec::new(),
            frag: Vec::new(),
            opened_ns: 0,
            hello_ns: 0,
            session: 0,
            ever_ready: false,
            subscribed: false,
            window: Window::default(),
            seqs: None,
            paging: false,
            hist: Paging::default(),
            targets: (plan.mix.is_some() && plan.role(index) == Role::Publisher).then(Box::default),
        })
        .collect();
    let schedule = |role: Role, first: usize| -> Vec<(usize, u64)> {
        let mine = clients.iter().enumerate().filter(|(_, c)| c.role == role);
        mine.map(|(slot, c)| (slot, (c.index - first) as u64)).collect()
    };
    let publishers = schedule(Role::Publisher, 0);
    let readers = schedule(Role::Reader, plan.publishers);
    let mut w = Worker {
        plan,
        shared,
        poll,
        to_open: (0..clients.len()).collect(),
        clients,
        publishers,
        readers,
        timers: BinaryHeap::new(),
        in_flight: 0,
        concurrency: (plan.connect_concurrency / plan.threads).max(1),
        timeline: None,
        gen: 0,
        reported: false,
        cpu: (None, None),
        stats: Stats::default(),
        delta: [0; 7],
        seed: 0x9e37_79b9_7f4a_7c15 ^ (tid as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
        text: Vec::with_capacity(plan.size + 32),
        payload: Vec::with_capacity(plan.size + 128),
        limits_checked: false,
    };
    w.event_loop();
    w.close_all();
    w.flush_live();
}

/// Takes the next due slot of one sender, if any: (its client slot, due ns).
fn take_due(
    sender: &mut (usize, u64),
    stride: usize,
    rate: f64,
    tl: &Timeline,
    now: u64,
) -> Option<(usize, u64)> {
    let due = tl.due(rate, sender.1);
    if due > now || due >= tl.end {
        return None;
    }
    sender.1 += stride as u64;
    Some((sender.0, due))
}

/// Appends one masked client frame of `payload` to `out`.
fn frame_into(seed: &mut u64, out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let m = ws::xorshift(seed).to_le_bytes();
    ws::write_frame(out, opcode, payload, [m[0], m[1], m[2], m[3]]);
}

impl Worker<'_> {
    fn event_loop(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut scratch = vec![0u8; SCRATCH];
        loop {
            if self.shared.abort.load(Relaxed) {
                return;
            }
            self.follow_step();
            if self.shared.done.load(Relaxed) {
                return;
            }
            let now = self.shared.now_ns();
            if let Some(tl) = self.timeline {
                self.mark_cpu(now, tl);
                if now >= tl.drain_end {
                    if !self.reported {
                        self.finish_step();
                    }
                } else {
                    self.publish(now, tl);
                }
            }
            self.fire_timers(now);
            self.open_more(now);
            self.flush_live();
            let timeout = self.next_wake(self.shared.now_ns());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.shared.fail(format!("poll: {e}"));
                    return;
                }
            }
            for ev in events.iter() {
                let slot = ev.token().0;
                if slot >= self.clients.len() {
                    continue;
                }
                if self.clients[slot].state == State::Connecting {
                    self.check_connect(slot);
                }
                if ev.is_writable() {
                    self.flush(slot);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.read_all(slot, &mut scratch);
                }
            }
        }
    }

    /// Picks up a new step from the main thread: fresh numbers, schedules
    /// restarted at slot 0.
    fn follow_step(&mut self) {
        let gen = self.shared.step_gen.load(Relaxed);
        if gen == self.gen {
            return;
        }
        let Ok(step) = self.shared.step.lock().map(|s| *s) else { return };
        self.gen = gen;
        self.timeline = step;
        self.reported = false;
        self.cpu = (None, None);
        // Publishers are clients 0..publishers: slot k of the schedule
        // goes to publisher k % publishers.
        for p in self.publishers.iter_mut() {
            p.1 = self.clients[p.0].index as u64;
        }
        for r in self.readers.iter_mut() {
            r.1 = (self.clients[r.0].index - self.plan.publishers) as u64;
        }
    }

    fn mark_cpu(&mut self, now: u64, tl: Timeline) {
        if self.cpu.0.is_none() && now >= tl.warm_end {
            self.cpu.0 = Some(sys::thread_cpu_s());
        }
        if self.cpu.1.is_none() && now >= tl.end {
            self.cpu.1 = Some(sys::thread_cpu_s());
        }
    }

    /// Hands this step's numbers to the main thread.
    fn finish_step(&mut self) {
        let mut stats = std::mem::take(&mut self.stats);
        if let (Some(a), Some(b)) = self.cpu {
            stats.busiest_thread_cpu_s = b - a;
        }
        if self.plan.churn.is_some() {
            for c in &self.clients {
                if let Some(set) = &c.seqs {
                    stats.seqsets.push((c.index, c.room, (**set).clone()));
                }
            }
        }
        if let Ok(mut f) = self.shared.finished.lock() {
            f.push(stats);
        }
        self.reported = true;
    }

    /// How long the loop may sleep: until the next due send, timer, phase
    /// change, or a tick. mio rounds up to whole milliseconds, so sends
    /// leave up to about 1 ms after their slot; `send_lag` reports it.
    fn next_wake(&self, now: u64) -> Duration {
        let mut until = now + TICK.as_nanos() as u64;
        if let Some(Reverse((due, ..))) = self.timers.peek() {
            until = until.min(*due);
        }
        if let Some(tl) = self.timeline.filter(|_| !self.reported) {
            until = until.min(tl.drain_end);
            let sends = self.publishers.iter().map(|p| tl.due(tl.rate, p.1));
            let reads = self.readers.iter().map(|r| tl.due(tl.read_rate, r.1));
            for due in sends.chain(reads) {
                if due < tl.end {
                    until = until.min(due);
                }
            }
        }
        Duration::from_nanos(until.saturating_sub(now))
    }

    /// Writes every send and history request that is due.
    fn publish(&mut self, now: u64, tl: Timeline) {
        let plan = self.plan;
        for p in 0..self.publishers.len() {
            while let Some((slot, due)) =
                take_due(&mut self.publishers[p], plan.publishers, tl.rate, &tl, now)
            {
                if self.clients[slot].state == State::Ready {
                    self.send(slot, due, tl);
                }
            }
        }
        for r in 0..self.readers.len() {
            while let Some((slot, _)) =
                take_due(&mut self.readers[r], plan.readers, tl.read_rate, &tl, now)
            {
                if self.clients[slot].state == State::Ready {
                    self.request_history(slot, tl);
                }
            }
        }
    }

    /// Writes one `send` (or `dm`, reply, edit, reaction) whose id carries
    /// the send instant, as its text does unless the text is made-up words
    /// (a reaction has no text).
    fn send(&mut self, slot: usize, due: u64, tl: Timeline) {
        let t = self.shared.now_ns();
        self.stats.send_lag.saturating_record(t.saturating_sub(due) / 1000);
        let plan = self.plan;
        let (kind, target) = self.pick_kind(slot);
        match &plan.words {
            Some(w) => w.vocab.sentence(&mut self.seed, w.min, w.max, &mut self.text),
            None => wire::text(t, plan.size, &mut self.text),
        }
        let id = if plan.mix.is_some() { t << 2 | kind as u64 } else { t };
        let (emoji, on) = if kind == K_REACT { self.toggle(slot, target) } else { (0, false) };
        self.payload.clear();
        let c = &self.clients[slot];
        let (text, out) = (&self.text, &mut self.payload);
        match plan.proto {
            Proto::Chinwag(enc) if plan.dm => wire::dm(enc, id, &c.peer, text, out),
            Proto::Chinwag(enc) => match kind {
                K_REPLY => wire::reply(enc, id, &c.room_name, text, target, out),
                K_EDIT => wire::edit(enc, id, &c.room_name, target, text, out),
                K_REACT => wire::react(enc, id, &c.room_name, target, EMOJI[emoji], on, out),
                _ => wire::send(enc, id, &c.room_name, text, out),
            },
            Proto::SocketIo => sio::send(t, &c.room_name, text, out),
        }
        self.queue_payload(slot);
        self.delta[D_SENT] += 1;
        self.stats.sent_step += 1;
        let audience = plan.audience(self.clients[slot].index);
        if kind == K_REACT {
            // Receivers cannot tell when a reaction was sent (no text):
            // reactions are accounted for over the whole step.
            self.stats.react_sent += 1;
            self.stats.react_expected += audience;
        }
        if tl.in_window(t) {
            self.stats.sent += 1;
            self.stats.sent_kind[kind] += 1;
            if kind != K_REACT {
                self.stats.expected += audience;
            }
        }
        self.flush(slot);
    }

    /// What a mixed publisher sends next, and on which seq (0: none): a
    /// plain message unless the draw says otherwise and there is a target.
    fn pick_kind(&mut self, slot: usize) -> (usize, u64) {
        let Some(mix) = self.plan.mix else { return (K_MESSAGE, 0) };
        if self.clients[slot].targets.is_none() || self.unit() >= mix.fraction {
            return (K_MESSAGE, 0);
        }
        let draw = self.unit() * (mix.react + mix.edit + mix.reply);
        let kind = if draw < mix.react {
            K_REACT
        } else if draw < mix.react + mix.edit {
            K_EDIT
        } else {
            K_REPLY
        };
        let pick = ws::xorshift(&mut self.seed) as usize;
        let Some(t) = self.clients[slot].targets.as_deref() else { return (K_MESSAGE, 0) };
        let choice = match kind {
            K_REACT => t.recent.get(pick % t.recent.len().max(1)).map(|r| r.0),
            K_EDIT => t.own.get(pick % t.own.len().max(1)).copied(),
            _ => t.roots.get(pick % t.roots.len().max(1)).copied(),
        };
        match choice {
            Some(seq) => (kind, seq),
            None => {
                // Nothing acked yet to act on (the first sends of a run).
                self.stats.mix_fallback += 1;
                (K_MESSAGE, 0)
            }
        }
    }

    /// Picks an emoji for a reaction on `seq` and flips this publisher's
    /// state of it: on if it was off, off if it was on.
    fn toggle(&mut self, slot: usize, seq: u64) -> (usize, bool) {
        let e = (ws::xorshift(&mut self.seed) % EMOJI.len() as u64) as usize;
        let Some(t) = self.clients[slot].targets.as_deref_mut() else { return (e, true) };
        match t.recent.iter_mut().find(|r| r.0 == seq) {
            Some(r) => {
                r.1 ^= 1 << e;
                (e, r.1 & 1 << e != 0)
            }
            None => (e, true),
        }
    }

    /// A uniform draw in [0, 1).
    fn unit(&mut self) -> f64 {
        (ws::xorshift(&mut self.seed) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Writes a reader's next `history` request; its id is the send instant
    /// (shifted) and which walk it belongs to (low bit).
    fn request_history(&mut self, slot: usize, tl: Timeline) {
        let Proto::Chinwag(enc) = self.plan.proto else { return };
        let t = self.shared.now_ns();
        let c = &mut self.clients[slot];
        let (cursor, dir) = c.hist.next();
        self.payload.clear();
        wire::history(enc, t << 1 | dir, &c.room_name, cursor, self.plan.page, &mut self.payload);
        self.queue_payload(slot);
        if tl.in_window(t) {
            self.stats.hist_sent += 1;
        }
        self.flush(slot);
    }

    /// Frames `self.payload` as a data frame of the dialect into the client's output.
    fn queue_payload(&mut self, slot: usize) {
        let opcode = match self.plan.proto {
            Proto::Chinwag(enc) => enc.opcode(),
            Proto::SocketIo => ws::OP_TEXT,
        };
        frame_into(&mut self.seed, &mut self.clients[slot].out, opcode, &self.payload);
    }

    /// A uniform random duration in `lo..=hi`, in ns.
    fn random_ns(&mut self, lo: Duration, hi: Duration) -> u64 {
        let (lo, hi) = (lo.as_nanos() as u64, hi.as_nanos() as u64);
        lo + ws::xorshift(&mut self.seed) % (hi.saturating_sub(lo) + 1)
    }

    fn fire_timers(&mut self, now: u64) {
        while let Some(&Reverse((due, slot, session, kind))) = self.timers.peek() {
            if due > now {
                return;
            }
            self.timers.pop();
            let (state, current) = (self.clients[slot].state, self.clients[slot].session);
            if current != session {
                continue;
            }
            match kind {
                TimerKind::Drop if state == State::Ready => match self.timeline {
                    // Churn only while sending; the drain lets everyone catch up.
                    Some(tl) if now >= tl.end => {}
                    Some(tl) if now >= tl.start => self.drop_session(slot, now),
                    _ => self.arm_drop(slot, now),
                },
                TimerKind::Reopen if state == State::Idle => self.to_open.push_back(slot),
                _ => {}
            }
        }
    }

    fn arm_drop(&mut self, slot: usize, now: u64) {
        let Some(churn) = self.plan.churn else { return };
        let due = now + self.random_ns(churn.session_min, churn.session_max);
        self.timers.push(Reverse((due, slot, self.clients[slot].session, TimerKind::Drop)));
    }

    fn open_more(&mut self, now: u64) {
        while self.in_flight < self.concurrency {
            let Some(slot) = self.to_open.pop_front() else { return };
            self.open(slot, now);
            if self.shared.abort.load(Relaxed) {
                return;
            }
        }
    }

    fn open(&mut self, slot: usize, now: u64) {
        let plan = self.plan;
        let c = &mut self.clients[slot];
        let addr = plan.targets[c.target];
        let source = (!plan.sources.is_empty()).then(|| plan.sources[c.index % plan.sources.len()]);
        let mut stream = match net::connect(addr, source) {
            Ok(s) => s,
            Err(e) if c.ever_ready => {
                // A storm reconnect: ports or backlog may be short for a
                // moment; try again rather than end the run.
                self.stats.connect_errors += 1;
                let due = now + RETRY.as_nanos() as u64;
                self.timers.push(Reverse((due, slot, c.session, TimerKind::Reopen)));
                if self.stats.connect_errors <= LOG_LOSSES {
                    eprintln!("chinwag-load: reconnect to {addr} failed: {e}");
                }
                return;
            }
            Err(e) => {
                let from = source.map(|s| format!(" from {s}")).unwrap_or_default();
                return self.shared.fail(format!("connect to {addr}{from}: {e}"));
            }
        };
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.shared.fail(format!("register a socket: {e}"));
        }
        c.key = ws::key(&mut self.seed);
        let user = plan.user(c.index);
        let (path, protocol) = match plan.proto {
            Proto::Chinwag(enc) => (format!("/ws?user={user}"), Some(enc.subprotocol())),
            Proto::SocketIo => (sio::path(&user), None),
        };
        c.out = ws::request(&addr.to_string(), &path, &c.key, protocol);
        c.stream = Some(stream);
        c.state = State::Connecting;
        c.opened_ns = now;
        c.session = c.session.wrapping_add(1);
        c.subscribed = false;
        c.paging = false;
        self.in_flight += 1;
    }

    /// A connecting socket became writable (or failed): see which.
    fn check_connect(&mut self, slot: usize) {
        let Some(s) = self.clients[slot].stream.as_ref() else { return };
        match s.take_error() {
            Ok(Some(e)) | Err(e) => return self.lose(slot, format!("connect: {e}")),
            Ok(None) => {}
        }
        match s.peer_addr() {
            Ok(_) => {
                // Small frames must leave at once: latency, not throughput.
                let _ = s.set_nodelay(true);
                self.clients[slot].state = State::Upgrading;
                self.flush(slot);
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
            Err(e) => self.lose(slot, format!("connect: {e}")),
        }
    }

    fn flush(&mut self, slot: usize) {
        let c = &mut self.clients[slot];
        if c.state == State::Connecting || c.out.is_empty() {
            return;
        }
        let Some(s) = c.stream.as_mut() else { return };
        let mut written = 0;
        let mut failure = None;
        while written < c.out.len() {
            match s.write(&c.out[written..]) {
                Ok(0) => {
                    failure = Some("write returned 0".to_string());
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failure = Some(format!("write: {e}"));
                    break;
                }
            }
        }
        c.out.drain(..written);
        if failure.is_none() && c.out.len() > MAX_OUTPUT {
            failure = Some("server stopped reading (64 MiB unsent)".into());
        }
        if let Some(why) = failure {
            self.lose(slot, why);
        }
    }

    /// Reads until the socket is drained (mio is edge-triggered).
    fn read_all(&mut self, slot: usize, scratch: &mut [u8]) {
        loop {
            let Some(s) = self.clients[slot].stream.as_mut() else { return };
            match s.read(scratch) {
                Ok(0) => return self.lose(slot, "connection closed by the server (EOF)".into()),
                Ok(n) => {
                    // One clock read per batch: every frame in it arrived by now.
                    let now = self.shared.now_ns();
                    if let Err(why) = self.ingest(slot, &scratch[..n], now) {
                        return self.lose(slot, why);
                    }
                    // A short read emptied the socket's receive queue; data
                    // arriving later raises a new edge. Skipping the read
                    // that would say WouldBlock saves a syscall per wake
                    // (tokio does the same).
                    if n < scratch.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.lose(slot, format!("read: {e}")),
            }
        }
    }

    /// Handles freshly read bytes. Frames are parsed straight out of the
    /// scratch buffer; only a trailing partial frame is copied.
    fn ingest(&mut self, slot: usize, data: &[u8], now: u64) -> Result<(), String> {
        let c = &mut self.clients[slot];
        if c.inbuf.is_empty() && c.state != State::Upgrading {
            let used = self.frames(slot, data, now)?;
            // The client may have been dropped by one of those frames.
            if self.clients[slot].stream.is_some() {
                self.clients[slot].inbuf.extend_from_slice(&data[used..]);
            }
            return Ok(());
        }
        let mut buf = std::mem::take(&mut c.inbuf);
        buf.extend_from_slice(data);
        let mut used = 0;
        if c.state == State::Upgrading {
            let protocol = match self.plan.proto {
                Proto::Chinwag(enc) => Some(enc.subprotocol()),
                Proto::SocketIo => None,
            };
            match ws::check_response(&buf, &c.key, protocol)? {
                None => {
                    c.inbuf = buf;
                    return Ok(());
                }
                Some(head) => {
                    used = head;
                    c.state = State::Hello;
                }
            }
        }
        used += self.frames(slot, &buf[used..], now)?;
        buf.drain(..used);
        if buf.is_empty() && buf.capacity() > SCRATCH {
            buf = Vec::new(); // A big frame passed; do not keep its room.
        }
        if self.clients[slot].stream.is_some() {
            self.clients[slot].inbuf = buf;
        }
        Ok(())
    }

    /// Handles every complete frame at the start of `data`; returns the bytes used.
    fn frames(&mut self, slot: usize, data: &[u8], now: u64) -> Result<usize, String> {
        let mut pos = 0;
        while let Some(h) = ws::parse(&data[pos..], MAX_FRAME)? {
            // A handler may have lost the connection (a failed write).
            if self.clients[slot].stream.is_none() {
                break;
            }
            let payload = &data[pos + h.header_len..pos + h.total()];
            pos += h.total();
            self.frame(slot, h, payload, now)?;
        }
        Ok(pos)
    }

    fn frame(
        &mut self,
        slot: usize,
        h: ws::Header,
        payload: &[u8],
        now: u64,
    ) -> Result<(), String> {
        match h.opcode {
            ws::OP_PING => {
                frame_into(&mut self.seed, &mut self.clients[slot].out, ws::OP_PONG, payload);
                self.flush(slot);
                Ok(())
            }
            ws::OP_PONG => Ok(()),
            ws::OP_CLOSE => {
                let code = payload.get(..2).map_or(1005, |b| u16::from_be_bytes([b[0], b[1]]));
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[]));
                Err(format!("server closed the connection with {code} {reason}"))
            }
            ws::OP_TEXT | ws::OP_BINARY if h.fin && self.clients[slot].frag.is_empty() => {
                self.data(slot, payload, now)
            }
            ws::OP_TEXT | ws::OP_BINARY | ws::OP_CONT => {
                let c = &mut self.clients[slot];
                if (h.opcode == ws::OP_CONT) == c.frag.is_empty() {
                    return Err("fragments out of order".into());
                }
                if c.frag.len() + payload.len() > MAX_FRAME {
                    return Err("fragmented message too large".into());
                }
                c.frag.extend_from_slice(payload);
                if h.fin {
                    let whole = std::mem::take(&mut self.clients[slot].frag);
                    self.data(slot, &whole, now)?;
                }
                Ok(())
            }
            op => Err(format!("unknown opcode {op}")),
        }
    }

    /// One complete data message.
    fn data(&mut self, slot: usize, payload: &[u8], now: u64) -> Result<(), String> {
        let enc = match self.plan.proto {
            Proto::SocketIo => return self.sio_data(slot, payload, now),
            Proto::Chinwag(enc) => enc,
        };
        let state = self.clients[slot].state;
        if state == State::Hello {
            return self.hello(slot, payload, now);
        }
        if !matches!(state, State::Joining | State::Ready) {
            return Ok(());
        }
        match wire::peek(enc, payload) {
            Ok(Frame::Message { kind, room, seq, stamp }) => {
                // Only a mixed publisher needs to know (to pick thread roots).
                let reply = kind == Kind::Message
                    && self.clients[slot].targets.is_some()
                    && wire::is_reply(enc, payload);
                self.message(slot, kind, room, seq, stamp, reply, now)
            }
            Ok(Frame::Ack { id, seq }) => self.ack(slot, id, Some(seq), now),
            Ok(Frame::Other(b"joined")) if state == State::Joining => {
                self.joined(slot, &wire::decode(enc, payload)?, now)?
            }
            Ok(Frame::Other(b"error")) if state == State::Joining => {
                return Err(format!("join refused: {}", wire::decode(enc, payload)?));
            }
            Ok(Frame::Other(kind @ (b"history" | b"error"))) => match wire::decode(enc, payload) {
                Ok(v) if kind == b"history" => self.history_answer(slot, &v, now),
                Ok(v) => self.error(slot, &v),
                Err(_) => self.stats.malformed += 1,
            },
            // presence, typing, left, read, notification: not measured.
            Ok(Frame::Other(_)) => {}
            Err(_) => self.stats.malformed += 1,
        }
        Ok(())
    }

    fn hello(&mut self, slot: usize, payload: &[u8], now: u64) -> Result<(), String> {
        let Proto::Chinwag(enc) = self.plan.proto else { return Ok(()) };
        let v = wire::decode(enc, payload)?;
        if v["type"] != "hello" {
            return Err(format!("expected hello, got {v}"));
        }
        if !self.limits_checked {
            self.limits_checked = true;
            self.check_limits(&v["limits"])?;
        }
        self.greeted(slot, now);
        let c = &mut self.clients[slot];
        let mut frames = Vec::new();
        // Membership is persistent: the connection is already subscribed to
        // every room of the user, so its own room's seq here is where its
        // live deliveries start. A data dir reused from an earlier run with
        // other --rooms has this user in other rooms too: leave them, so the
        // connection receives only its own room.
        for room in v["rooms"].as_array().into_iter().flatten() {
            let Some(name) = room["room"].as_str() else { continue };
            if name == c.room_name {
                c.window = Window::starting_at(room["seq"].as_u64().unwrap_or(0));
                c.subscribed = true;
            } else if !name.starts_with("dm:") {
                let mut leave = Vec::new();
                wire::leave(enc, name, &mut leave);
                frames.push(leave);
            }
        }
        if self.plan.dm {
            // DM rooms need no join: both users' connections get every `dm`.
            if !c.subscribed {
                c.window = Window::starting_at(0);
                c.subscribed = true;
            }
        } else {
            let mut join = Vec::new();
            wire::join(enc, &c.room_name, c.seqs.as_ref().map(|s| s.contiguous()), &mut join);
            frames.push(join);
        }
        for f in &frames {
            frame_into(&mut self.seed, &mut c.out, enc.opcode(), f);
        }
        if self.plan.dm {
            self.ready(slot, now);
        } else {
            c.state = State::Joining;
        }
        self.flush(slot);
        Ok(())
    }

    /// The server greeted the connection (chinwag `hello`, Socket.IO `40`).
    fn greeted(&mut self, slot: usize, now: u64) {
        let c = &mut self.clients[slot];
        self.stats.connect.saturating_record(now.saturating_sub(c.opened_ns) / 1000);
        c.hello_ns = now;
        if c.ever_ready {
            self.stats.reconnects += 1;
            self.delta[D_RECONNECTS] += 1;
        }
    }

    /// Refuses a run the server would rate-limit or reject: its numbers
    /// would measure refusals, not delivery.
    fn check_limits(&self, limits: &Value) -> Result<(), String> {
        let plan = self.plan;
        if let Some(max_text) = limits["max_text"].as_u64() {
            if plan.publishers > 0 && plan.size as u64 > max_text {
                return Err(format!(
                    "--size {} is over the server's max_text {max_text}",
                    plan.size
                ));
            }
        }
        if let Some(rate) = limits["rate"].as_f64() {
            if plan.conn_rate > 0.0 && rate < plan.conn_rate * 1.1 {
                return Err(format!(
                    "the server allows {rate} frames/s per connection but one connection sends \
                     up to {:.1}/s: start it with a higher --rate and --burst",
                    plan.conn_rate
                ));
            }
        }
        Ok(())
    }

    fn joined(&mut self, slot: usize, v: &Value, now: u64) -> Result<(), String> {
        let c = &mut self.clients[slot];
        if v["room"] != c.room_name.as_str() {
            return Ok(()); // Not ours (cannot happen: we join one room).
        }
        let seq = v["seq"].as_u64().ok_or("joined without a seq")?;
        if !c.subscribed {
            c.window = Window::starting_at(seq);
            c.subscribed = true;
        }
        if self.plan.churn.is_some() {
            if c.seqs.is_none() {
                // The first session starts here; `history` is older messages.
                c.seqs = Some(Box::new(SeqSet::new(seq)));
            } else {
                let last = self.absorb(slot, &v["history"]);
                if v["more"] == true {
                    self.catch_up(slot, last);
                }
            }
        }
        self.stats.join.saturating_record(now.saturating_sub(self.clients[slot].hello_ns) / 1000);
        self.ready(slot, now);
        Ok(())
    }

    /// The client has joined: count it, and start its churn.
    fn ready(&mut self, slot: usize, now: u64) {
        let c = &mut self.clients[slot];
        c.state = State::Ready;
        self.in_flight -= 1;
        if !c.ever_ready {
            c.ever_ready = true;
            self.shared.ready.fetch_add(1, Relaxed);
        }
        if c.role == Role::Member {
            self.arm_drop(slot, now);
        }
    }

    /// Storm: records the seqs of a `joined.history` or `history.messages`
    /// array; returns the last one.
    fn absorb(&mut self, slot: usize, messages: &Value) -> Option<u64> {
        let set = self.clients[slot].seqs.as_mut()?;
        let mut last = None;
        for seq in messages.as_array().into_iter().flatten().filter_map(|m| m["seq"].as_u64()) {
            if set.insert(seq) {
                self.stats.recovered += 1;
            } else {
                self.stats.deduped += 1;
            }
            last = Some(seq);
        }
        last
    }

    /// Storm: asks for the next page of missed messages after `last`.
    fn catch_up(&mut self, slot: usize, last: Option<u64>) {
        let Proto::Chinwag(enc) = self.plan.proto else { return };
        let c = &mut self.clients[slot];
        let after = last.or(c.seqs.as_ref().map(|s| s.contiguous())).unwrap_or(0);
        let mut f = Vec::new();
        wire::history(enc, CATCH_UP_ID, &c.room_name, Cursor::After(after), CATCH_UP_PAGE, &mut f);
        frame_into(&mut self.seed, &mut c.out, enc.opcode(), &f);
        c.paging = true;
        self.stats.pages += 1;
        self.flush(slot);
    }

    fn history_answer(&mut self, slot: usize, v: &Value, now: u64) {
        self.delta[D_HISTORY] += 1;
        if self.clients[slot].paging && v["id"] == CATCH_UP_ID {
            let last = self.absorb(slot, &v["messages"]);
            if v["more"] == true {
                self.catch_up(slot, last);
            } else {
                self.clients[slot].paging = false;
            }
            return;
        }
        let Some(id) = v["id"].as_u64() else { return };
        let (t, dir) = (id >> 1, id & 1);
        let seqs: Vec<u64> = v["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["seq"].as_u64())
            .collect();
        let more = v["more"] == true;
        // Seqs are gap-free per room, so a page is consecutive; a page that
        // says there is more is full; a backward walk ends at seq 1.
        let consecutive = seqs.windows(2).all(|w| w[1] == w[0] + 1);
        let full = !more || seqs.len() as u64 == self.plan.page;
        let starts = dir == 1 || more || seqs.first().is_none_or(|&s| s == 1);
        if !(consecutive && full && starts && seqs.len() as u64 <= self.plan.page) {
            self.stats.hist_bad += 1;
        }
        self.clients[slot].hist.answer(dir, seqs.first().copied(), seqs.last().copied(), more);
        if self.timeline.is_some_and(|tl| tl.in_window(t)) {
            self.stats.hist_ok += 1;
            self.stats.hist_msgs += seqs.len() as u64;
            self.stats.hist_latency.saturating_record(now.saturating_sub(t) / 1000);
        }
    }

    /// One Socket.IO packet.
    fn sio_data(&mut self, slot: usize, payload: &[u8], now: u64) -> Result<(), String> {
        let state = self.clients[slot].state;
        let mut reply = Vec::new();
        match sio::peek(payload) {
            Ok(sio::Packet::Open) if state == State::Hello => {
                sio::connect(&mut reply);
                self.clients[slot].state = State::SioConnect;
            }
            Ok(sio::Packet::Connected) if state == State::SioConnect => {
                self.greeted(slot, now);
                sio::join(&self.clients[slot].room_name, &mut reply);
                self.clients[slot].state = State::Joining;
            }
            Ok(sio::Packet::Refused(why)) => {
                return Err(format!("Socket.IO refused: {}", String::from_utf8_lossy(why)))
            }
            Ok(sio::Packet::Closed) => return Err("Socket.IO session closed by the server".into()),
            Ok(sio::Packet::Ping) => sio::pong(&mut reply),
            Ok(sio::Packet::Message { room, seq, stamp }) => {
                self.message(slot, Kind::Message, room, seq, stamp, false, now)
            }
            Ok(sio::Packet::Ack { id: sio::JOIN_ID, body }) if state == State::Joining => {
                let c = &mut self.clients[slot];
                c.window = Window::starting_at(sio::ack_seq(body).unwrap_or(0));
                c.subscribed = true;
                self.stats.join.saturating_record(now.saturating_sub(c.hello_ns) / 1000);
                self.ready(slot, now);
            }
            Ok(sio::Packet::Ack { id, body }) => self.ack(slot, Some(id), sio::ack_seq(body), now),
            Ok(_) => {}
            Err(_) if state == State::Ready => self.stats.malformed += 1,
            Err(e) => return Err(e),
        }
        if !reply.is_empty() {
            frame_into(&mut self.seed, &mut self.clients[slot].out, ws::OP_TEXT, &reply);
            self.flush(slot);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn message(
        &mut self,
        slot: usize,
        kind: Kind,
        room: &[u8],
        seq: u64,
        stamp: Option<u64>,
        reply: bool,
        now: u64,
    ) {
        let c = &mut self.clients[slot];
        if room != c.room_name.as_bytes() {
            self.stats.foreign += 1;
            return;
        }
        match c.window.see(seq) {
            Seen::New => {}
            Seen::Late => self.stats.out_of_order += 1,
            Seen::Duplicate => {
                self.stats.duplicated += 1;
                return;
            }
        }
        // Storm: a seq already had from history or an earlier session.
        if let Some(set) = c.seqs.as_mut() {
            if !set.insert(seq) {
                self.stats.deduped += 1;
                return;
            }
        }
        self.delta[D_DELIVERED] += 1;
        if self.timeline.is_some_and(|tl| tl.in_window(now)) {
            // By arrival: what the server did during the window, whatever
            // the event (reactions carry no send instant).
            self.stats.rx_window += 1;
            self.stats.rx_kind[kind as usize] += 1;
        }
        if let (Some(t), Kind::Message) = (c.targets.as_deref_mut(), kind) {
            push_capped(&mut t.recent, (seq, 0));
            if !reply {
                push_capped(&mut t.roots, seq);
            }
        }
        if kind == Kind::Reaction {
            self.stats.react_delivered += 1;
            return;
        }
        let Some(t) = stamp else {
            self.stats.unstamped += 1;
            return;
        };
        if self.timeline.is_some_and(|tl| tl.in_window(t)) {
            self.stats.delivered += 1;
            bump(&mut self.stats.by_target, c.target, 1, false);
            let us = now.saturating_sub(t) / 1000;
            self.stats.latency.saturating_record(us);
            if kind == Kind::Edit {
                self.stats.edit_latency.saturating_record(us);
            }
        }
    }

    /// A frame id as (send instant, send kind): mixed runs keep the kind in
    /// the low two bits.
    fn split_id(&self, id: u64) -> (u64, usize) {
        if self.plan.mix.is_some() {
            (id >> 2, (id & 3) as usize)
        } else {
            (id, K_MESSAGE)
        }
    }

    fn ack(&mut self, slot: usize, id: Option<u64>, seq: Option<u64>, now: u64) {
        self.delta[D_ACKED] += 1;
        if let Some(seq) = seq {
            bump(&mut self.stats.room_last, self.clients[slot].room, seq, true);
        }
        let Some((t, kind)) = id.map(|id| self.split_id(id)) else { return };
        self.stats.acked_step += 1;
        if let (Some(seq), Some(targets)) = (seq, self.clients[slot].targets.as_deref_mut()) {
            if kind == K_MESSAGE || kind == K_REPLY {
                push_capped(&mut targets.own, seq);
            }
        }
        if let Some(tl) = self.timeline {
            if tl.in_window(t) {
                let us = now.saturating_sub(t) / 1000;
                self.stats.acked += 1;
                self.stats.ack_latency.saturating_record(us);
                self.stats.ack_kind[kind].saturating_record(us);
            }
        }
    }

    fn error(&mut self, slot: usize, v: &Value) {
        self.delta[D_ERRORS] += 1;
        let code = v["code"].as_str().unwrap_or("?");
        *self.stats.errors.entry(code.to_string()).or_default() += 1;
        let Some((t, kind)) = v["id"].as_u64().map(|id| self.split_id(id)) else { return };
        let audience = self.plan.audience(self.clients[slot].index);
        if kind == K_REACT {
            self.stats.react_refused_expected += audience;
        }
        if let Some(tl) = self.timeline {
            if tl.in_window(t) {
                self.stats.refused += 1;
                if kind != K_REACT {
                    self.stats.refused_expected += audience;
                }
            }
        }
    }

    /// Deregisters and drops the socket and the connection's buffers.
    fn shut(&mut self, slot: usize) {
        let c = &mut self.clients[slot];
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.out = Vec::new();
        c.inbuf = Vec::new();
        c.frag = Vec::new();
    }

    /// Storm: the client leaves on its own, half the time with a close
    /// frame, half the time by vanishing (RST), and comes back soon.
    fn drop_session(&mut self, slot: usize, now: u64) {
        let clean = ws::xorshift(&mut self.seed) & 1 == 0;
        if clean {
            let c = &mut self.clients[slot];
            frame_into(&mut self.seed, &mut c.out, ws::OP_CLOSE, &1000u16.to_be_bytes());
            self.flush(slot);
        }
        if let Some(s) = self.clients[slot].stream.as_ref() {
            net::set_abortive(s);
        }
        self.shut(slot);
        self.stats.closes += 1;
        self.clients[slot].state = State::Idle;
        let offline = self.plan.churn.map_or(Duration::ZERO, |c| c.offline_max);
        let due = now + self.random_ns(Duration::ZERO, offline);
        let session = self.clients[slot].session;
        self.timers.push(Reverse((due, slot, session, TimerKind::Reopen)));
    }

    /// The connection is gone: a disconnect after setup (a storm client
    /// comes back), a failure before.
    fn lose(&mut self, slot: usize, why: String) {
        let was = self.clients[slot].state;
        if matches!(was, State::Closed | State::Idle) {
            return;
        }
        self.shut(slot);
        if was != State::Ready {
            self.in_flight -= 1;
        }
        let c = &mut self.clients[slot];
        let user = self.plan.user(c.index);
        if !c.ever_ready {
            c.state = State::Closed;
            return self.shared.fail(format!("{user}: {why}"));
        }
        self.stats.disconnects += 1;
        self.delta[D_DISCONNECTS] += 1;
        if self.stats.disconnects <= LOG_LOSSES {
            eprintln!("chinwag-load: {user} lost: {why}");
        }
        if self.plan.churn.is_some() {
            c.state = State::Idle;
            let due = self.shared.now_ns() + RETRY.as_nanos() as u64;
            self.timers.push(Reverse((due, slot, c.session, TimerKind::Reopen)));
        } else {
            c.state = State::Closed;
        }
    }

    /// Best-effort close frames at the end; the sockets close on drop.
    fn close_all(&mut self) {
        for slot in 0..self.clients.len() {
            if self.clients[slot].state == State::Ready {
                let c = &mut self.clients[slot];
                frame_into(&mut self.seed, &mut c.out, ws::OP_CLOSE, &1000u16.to_be_bytes());
                self.flush(slot);
            }
            self.clients[slot].stream = None;
        }
    }

    fn flush_live(&mut self) {
        let live = &self.shared.live;
        let targets = [
            &live.sent,
            &live.acked,
            &live.delivered,
            &live.errors,
            &live.disconnects,
            &live.reconnects,
            &live.history,
        ];
        for (d, target) in self.delta.iter_mut().zip(targets) {
            if *d != 0 {
                target.fetch_add(*d, Relaxed);
                *d = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Encoding;

    fn plan(conns: usize, rooms: usize, targets: usize, dm: bool) -> Plan {
        Plan {
            targets: (0..targets)
                .map(|i| SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)))
                .collect(),
            sources: Vec::new(),
            conns,
            rooms,
            proto: Proto::Chinwag(Encoding::Json),
            threads: 1,
            user_prefix: "u".into(),
            connect_concurrency: 1,
            publishers: 2,
            readers: 1,
            page: 50,
            size: 10,
            dm,
            churn: None,
            conn_rate: 0.0,
            mix: None,
            words: None,
        }
    }

    #[test]
    fn members_add_up_and_rooms_cross_nodes() {
        let p = plan(1003, 10, 2, false);
        assert_eq!((0..10).map(|r| p.members(r)).sum::<u64>(), 1003);
        assert_eq!(p.members(2), 101);
        assert_eq!(p.members(3), 100);
        // Every room has members on both nodes.
        for room in 0..10 {
            let nodes: Vec<usize> = (room..1003).step_by(10).map(|i| p.target_of(i)).collect();
            assert!(nodes.contains(&0) && nodes.contains(&1), "room {room}");
        }
        assert_eq!(p.conns_by_target().iter().sum::<u64>(), 1003);
        assert_eq!(
            (p.role(1), p.role(2), p.role(3)),
            (Role::Publisher, Role::Reader, Role::Member)
        );
        assert_eq!(plan(4, 1, 2, false).conns_by_target(), [2, 2]);
    }

    #[test]
    fn dm_pairs() {
        let p = plan(12, 1, 2, true);
        assert_eq!(p.room_name(10), "dm:u10:u11");
        assert_eq!(p.room_name(3), "dm:u2:u3");
        assert_eq!(p.room_name(11), p.room_name(10));
        assert_eq!(p.audience(7), 2);
        assert_eq!(p.room_count(), 6);
        assert_ne!(p.target_of(4), p.target_of(5));
        // Byte order, not numeric: "u10" < "u9".
        let mut p = p;
        p.user_prefix = String::new();
        p.conns = 20;
        assert_eq!(p.room_name(9), "dm:8:9");
    }

    #[test]
    fn paging_walks_both_ways() {
        let mut p = Paging::default();
        assert_eq!(p.next(), (Cursor::Latest, 0));
        p.answer(0, Some(51), Some(100), true);
        assert_eq!(p.next(), (Cursor::After(0), 1));
        p.answer(1, Some(1), Some(50), true);
        assert_eq!(p.next(), (Cursor::Before(51), 0));
        p.answer(0, Some(1), Some(50), false);
        assert_eq!(p.next(), (Cursor::After(50), 1));
        p.answer(1, Some(51), Some(100), false);
        assert_eq!(p.next(), (Cursor::Latest, 0));
        assert_eq!(p.next(), (Cursor::After(0), 1));
    }

    #[test]
    fn schedule_is_open_loop() {
        let spec = StepSpec {
            rate: 1000.0,
            read_rate: 0.0,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            drain: Duration::ZERO,
        };
        let tl = Timeline::new(&spec, 1_000);
        let mut sender = (7, 1);
        // Slot 1 is due at 1 ms; two senders share the schedule.
        assert_eq!(take_due(&mut sender, 2, tl.rate, &tl, 1_000), None);
        assert_eq!(take_due(&mut sender, 2, tl.rate, &tl, 1_001_000), Some((7, 1_001_000)));
        assert_eq!(sender.1, 3);
        assert_eq!(tl.due(0.0, 5), u64::MAX);
    }
}
