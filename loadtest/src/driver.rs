//! The client event loops: one mio `Poll` per thread driving its share of the
//! WebSocket clients through connect, upgrade, hello, join, then publishing
//! and receiving until the run's end.
//!
//! Owns: the per-connection state machine, the open-loop publishing schedule,
//! reading in batches (one shared scratch buffer per thread, so a connection
//! keeps memory only for a partial frame), and the per-message bookkeeping
//! (latency, duplicates, out-of-order). Threads share nothing on the hot path
//! but a few relaxed counters for the progress line, flushed once per loop.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::Value;

use crate::stats::Stats;
use crate::wire::{self, Encoding, Frame};
use crate::ws;

/// Largest server frame accepted (the server's own default `max_frame` is
/// 64 KiB for client frames; a `joined` with 50 big messages can be larger).
const MAX_FRAME: usize = 16 << 20;
/// A connection whose unsent output passes this is not being read by the
/// server; it is dropped rather than buffered without end.
const MAX_OUTPUT: usize = 64 << 20;
/// Per-thread read buffer: one `read` takes up to this much.
const SCRATCH: usize = 256 << 10;
/// Longest sleep of a loop, so it notices the start signal and aborts soon.
const TICK: Duration = Duration::from_millis(10);
/// How many lost connections are described on stderr (the rest are counted).
const LOG_LOSSES: u64 = 5;

/// What to run; the same for every thread.
pub struct Plan {
    /// Servers; client i connects to `targets[i % len]`.
    pub targets: Vec<SocketAddr>,
    /// Number of clients.
    pub conns: usize,
    /// Number of rooms; client i joins `r<i % rooms>`.
    pub rooms: usize,
    /// Clients 0..publishers send.
    pub publishers: usize,
    /// Aggregate messages per second over all publishers.
    pub rate: f64,
    /// Message text size in bytes.
    pub size: usize,
    /// Encoding asked for.
    pub enc: Encoding,
    /// Number of event-loop threads.
    pub threads: usize,
    /// User ids are `<prefix><i>`.
    pub user_prefix: String,
    /// Upgrades in progress at once, over all threads.
    pub connect_concurrency: usize,
    /// Publishing before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Receiving after the last send, before counting losses.
    pub drain: Duration,
}

impl Plan {
    /// Clients in `room`.
    pub fn members(&self, room: usize) -> u64 {
        (self.conns / self.rooms + usize::from(room < self.conns % self.rooms)) as u64
    }
}

/// The run's instants, in nanoseconds since [`Shared::epoch`].
#[derive(Clone, Copy, Debug)]
pub struct Timeline {
    /// Publishing starts.
    pub start: u64,
    /// Warm-up over: the measured window opens.
    pub warm_end: u64,
    /// The window closes and publishing stops.
    pub end: u64,
    /// Receiving stops.
    pub drain_end: u64,
}

impl Timeline {
    /// The timeline of `plan` starting at `start`.
    pub fn new(plan: &Plan, start: u64) -> Timeline {
        let warm_end = start + plan.warmup.as_nanos() as u64;
        let end = warm_end + plan.duration.as_nanos() as u64;
        Timeline { start, warm_end, end, drain_end: end + plan.drain.as_nanos() as u64 }
    }

    fn in_window(&self, t: u64) -> bool {
        (self.warm_end..self.end).contains(&t)
    }
}

/// State shared by the main thread and the loops.
pub struct Shared {
    /// Time zero of every stamp.
    pub epoch: Instant,
    /// When publishing starts (ns since epoch); `u64::MAX` until every client
    /// has joined and the main thread says go.
    pub start_ns: AtomicU64,
    /// Clients that have joined their room.
    pub ready: AtomicU64,
    /// Stop now (setup failure or timeout).
    pub abort: AtomicBool,
    /// Why the run was aborted.
    pub fatal: Mutex<Option<String>>,
    /// Live totals for the progress line (whole run, not just the window).
    pub live: Live,
}

/// Live totals for the progress line.
#[derive(Default)]
pub struct Live {
    /// `send` frames written.
    pub sent: AtomicU64,
    /// `ack`s read.
    pub acked: AtomicU64,
    /// New `message`s read.
    pub delivered: AtomicU64,
    /// `error` frames read.
    pub errors: AtomicU64,
    /// Connections lost after setup.
    pub disconnects: AtomicU64,
}

impl Shared {
    /// A fresh state with its epoch now.
    pub fn new() -> Shared {
        Shared {
            epoch: Instant::now(),
            start_ns: AtomicU64::new(u64::MAX),
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
    /// Not opened yet.
    Idle,
    /// TCP connect in progress.
    Connecting,
    /// Upgrade request written, waiting for the 101.
    Upgrading,
    /// Waiting for `hello`.
    Hello,
    /// `join` written, waiting for `joined`.
    Joining,
    /// Joined: publishing and receiving.
    Ready,
    /// Gone.
    Closed,
}

struct Client {
    /// Global client number (user id suffix).
    index: usize,
    room: usize,
    room_name: String,
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
    /// Highest seq received in our room.
    last_seq: u64,
    /// Bit i set: seq `last_seq - i` was received.
    seen: u128,
}

/// One event-loop thread's clients and numbers.
struct Worker<'a> {
    plan: &'a Plan,
    shared: &'a Shared,
    poll: Poll,
    clients: Vec<Client>,
    /// (client slot, next schedule slot k) of the publishers this thread owns.
    publishers: Vec<(usize, u64)>,
    next_open: usize,
    in_flight: usize,
    concurrency: usize,
    timeline: Option<Timeline>,
    stats: Stats,
    /// Live deltas not yet added to `shared.live`.
    delta: [u64; 5],
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

/// Runs thread `tid` of `plan` to the end of the run (or an abort) and
/// returns its numbers.
pub fn run(tid: usize, plan: &Plan, shared: &Shared) -> Stats {
    let poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            shared.fail(format!("cannot create a poll: {e}"));
            return Stats::default();
        }
    };
    let clients: Vec<Client> = (tid..plan.conns)
        .step_by(plan.threads)
        .map(|index| Client {
            index,
            room: index % plan.rooms,
            room_name: format!("r{}", index % plan.rooms),
            state: State::Idle,
            stream: None,
            key: String::new(),
            out: Vec::new(),
            inbuf: Vec::new(),
            frag: Vec::new(),
            opened_ns: 0,
            hello_ns: 0,
            last_seq: 0,
            seen: 0,
        })
        .collect();
    let publishers = clients
        .iter()
        .enumerate()
        .filter(|(_, c)| c.index < plan.publishers)
        .map(|(slot, c)| (slot, c.index as u64))
        .collect();
    let mut w = Worker {
        plan,
        shared,
        poll,
        clients,
        publishers,
        next_open: 0,
        in_flight: 0,
        concurrency: (plan.connect_concurrency / plan.threads).max(1),
        timeline: None,
        stats: Stats::default(),
        delta: [0; 5],
        seed: 0x9e37_79b9_7f4a_7c15 ^ (tid as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
        text: Vec::with_capacity(plan.size + 32),
        payload: Vec::with_capacity(plan.size + 128),
        limits_checked: false,
    };
    w.event_loop();
    w.close_all();
    w.flush_live();
    w.stats
}

impl Worker<'_> {
    fn event_loop(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut scratch = vec![0u8; SCRATCH];
        loop {
            if self.shared.abort.load(Relaxed) {
                return;
            }
            let now = self.shared.now_ns();
            if self.timeline.is_none() {
                let start = self.shared.start_ns.load(Relaxed);
                if start != u64::MAX {
                    self.timeline = Some(Timeline::new(self.plan, start));
                }
            }
            if let Some(tl) = self.timeline {
                if now >= tl.drain_end {
                    return;
                }
                self.publish(now, tl);
            }
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

    /// How long the loop may sleep: until the next due send, a phase change,
    /// or a tick. mio rounds up to whole milliseconds, so sends leave up to
    /// about 1 ms after their slot; `send_lag` reports it.
    fn next_wake(&self, now: u64) -> Duration {
        let mut until = now + TICK.as_nanos() as u64;
        if let Some(tl) = self.timeline {
            until = until.min(tl.drain_end);
            for &(_, k) in &self.publishers {
                let due = self.due(tl, k);
                if due < tl.end {
                    until = until.min(due);
                }
            }
        }
        Duration::from_nanos(until.saturating_sub(now))
    }

    /// When schedule slot `k` is due: slots are evenly spaced at 1/rate and
    /// dealt round-robin to the publishers, so the aggregate is open-loop.
    fn due(&self, tl: Timeline, k: u64) -> u64 {
        tl.start + (k as f64 * 1e9 / self.plan.rate) as u64
    }

    fn publish(&mut self, now: u64, tl: Timeline) {
        for p in 0..self.publishers.len() {
            loop {
                let (slot, k) = self.publishers[p];
                let due = self.due(tl, k);
                if due > now || due >= tl.end {
                    break;
                }
                self.publishers[p].1 = k + self.plan.publishers as u64;
                if self.clients[slot].state == State::Ready {
                    self.send(slot, due, tl);
                }
            }
        }
    }

    /// Writes one `send` whose text and id carry the send instant.
    fn send(&mut self, slot: usize, due: u64, tl: Timeline) {
        let t = self.shared.now_ns();
        self.stats.send_lag.saturating_record(t.saturating_sub(due) / 1000);
        let room = self.clients[slot].room;
        wire::text(t, self.plan.size, &mut self.text);
        self.payload.clear();
        wire::send(self.plan.enc, t, &self.clients[slot].room_name, &self.text, &mut self.payload);
        let mask = ws::xorshift(&mut self.seed).to_le_bytes();
        let c = &mut self.clients[slot];
        ws::write_frame(
            &mut c.out,
            self.plan.enc.opcode(),
            &self.payload,
            [mask[0], mask[1], mask[2], mask[3]],
        );
        self.delta[D_SENT] += 1;
        if tl.in_window(t) {
            self.stats.sent += 1;
            self.stats.expected += self.plan.members(room);
        }
        self.flush(slot);
    }

    fn open_more(&mut self, now: u64) {
        while self.in_flight < self.concurrency && self.next_open < self.clients.len() {
            let slot = self.next_open;
            self.next_open += 1;
            self.in_flight += 1;
            self.open(slot, now);
            if self.shared.abort.load(Relaxed) {
                return;
            }
        }
    }

    fn open(&mut self, slot: usize, now: u64) {
        let plan = self.plan;
        let c = &mut self.clients[slot];
        let addr = plan.targets[c.index % plan.targets.len()];
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => return self.shared.fail(format!("connect to {addr}: {e}")),
        };
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.shared.fail(format!("register a socket: {e}"));
        }
        c.key = ws::key(&mut self.seed);
        let path = format!("/ws?user={}{}", plan.user_prefix, c.index);
        c.out = ws::request(&addr.to_string(), &path, &c.key, plan.enc.subprotocol());
        c.stream = Some(stream);
        c.state = State::Connecting;
        c.opened_ns = now;
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
            self.clients[slot].inbuf.extend_from_slice(&data[used..]);
            return Ok(());
        }
        let mut buf = std::mem::take(&mut c.inbuf);
        buf.extend_from_slice(data);
        let mut used = 0;
        if c.state == State::Upgrading {
            match ws::check_response(&buf, &c.key, self.plan.enc.subprotocol())? {
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
        self.clients[slot].inbuf = buf;
        Ok(())
    }

    /// Handles every complete frame at the start of `data`; returns the bytes used.
    fn frames(&mut self, slot: usize, data: &[u8], now: u64) -> Result<usize, String> {
        let mut pos = 0;
        while let Some(h) = ws::parse(&data[pos..], MAX_FRAME)? {
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
                let mask = ws::xorshift(&mut self.seed).to_le_bytes();
                let c = &mut self.clients[slot];
                ws::write_frame(
                    &mut c.out,
                    ws::OP_PONG,
                    payload,
                    [mask[0], mask[1], mask[2], mask[3]],
                );
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
        let enc = self.plan.enc;
        match self.clients[slot].state {
            State::Ready => match wire::peek(enc, payload) {
                Ok(Frame::Message { room, seq, stamp }) => {
                    self.message(slot, room, seq, stamp, now)
                }
                Ok(Frame::Other(b"ack")) => match wire::decode(enc, payload) {
                    Ok(v) => self.ack(&v, now),
                    Err(_) => self.stats.malformed += 1,
                },
                Ok(Frame::Other(b"error")) => match wire::decode(enc, payload) {
                    Ok(v) => self.error(slot, &v),
                    Err(_) => self.stats.malformed += 1,
                },
                // presence, typing, left, read, notification: not measured.
                Ok(Frame::Other(_)) => {}
                Err(_) => self.stats.malformed += 1,
            },
            State::Hello => self.hello(slot, payload, now)?,
            State::Joining => self.joining(slot, payload, now)?,
            _ => {}
        }
        Ok(())
    }

    fn hello(&mut self, slot: usize, payload: &[u8], now: u64) -> Result<(), String> {
        let v = wire::decode(self.plan.enc, payload)?;
        if v["type"] != "hello" {
            return Err(format!("expected hello, got {v}"));
        }
        if !self.limits_checked {
            self.limits_checked = true;
            self.check_limits(&v["limits"])?;
        }
        let enc = self.plan.enc;
        let c = &mut self.clients[slot];
        self.stats.connect.saturating_record(now.saturating_sub(c.opened_ns) / 1000);
        c.hello_ns = now;
        let mut frames = Vec::new();
        // Membership is persistent: a data dir reused from an earlier run with
        // other --rooms has this user in other rooms too. Leave them, so the
        // connection receives only its own room.
        for room in v["rooms"].as_array().into_iter().flatten() {
            if let Some(name) = room["room"].as_str() {
                if name != c.room_name && !name.starts_with("dm:") {
                    let mut leave = Vec::new();
                    wire::leave(enc, name, &mut leave);
                    frames.push(leave);
                }
            }
        }
        let mut join = Vec::new();
        wire::join(enc, &c.room_name, &mut join);
        frames.push(join);
        for f in &frames {
            let mask = ws::xorshift(&mut self.seed).to_le_bytes();
            ws::write_frame(&mut c.out, enc.opcode(), f, [mask[0], mask[1], mask[2], mask[3]]);
        }
        c.state = State::Joining;
        self.flush(slot);
        Ok(())
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
        if plan.publishers == 0 {
            return Ok(());
        }
        let per_conn = plan.rate / plan.publishers as f64;
        if let Some(rate) = limits["rate"].as_f64() {
            if rate < per_conn * 1.1 {
                return Err(format!(
                    "the server allows {rate} frames/s per connection but each publisher sends \
                     {per_conn:.1}/s: start it with a higher --rate and --burst"
                ));
            }
        }
        Ok(())
    }

    fn joining(&mut self, slot: usize, payload: &[u8], now: u64) -> Result<(), String> {
        match wire::peek(self.plan.enc, payload)? {
            Frame::Other(b"joined") => {
                let v = wire::decode(self.plan.enc, payload)?;
                let c = &mut self.clients[slot];
                if v["room"] != c.room_name.as_str() {
                    return Ok(()); // Not ours (cannot happen: we join one room).
                }
                c.last_seq = v["seq"].as_u64().ok_or("joined without a seq")?;
                c.seen = 1;
                c.state = State::Ready;
                self.stats.join.saturating_record(now.saturating_sub(c.hello_ns) / 1000);
                self.in_flight -= 1;
                self.shared.ready.fetch_add(1, Relaxed);
                Ok(())
            }
            Frame::Other(b"error") => {
                Err(format!("join refused: {}", String::from_utf8_lossy(payload)))
            }
            // presence from other joiners, `left` for stale rooms.
            Frame::Other(_) => Ok(()),
            Frame::Message { .. } => {
                self.stats.foreign += 1;
                Ok(())
            }
        }
    }

    fn message(&mut self, slot: usize, room: &[u8], seq: u64, stamp: Option<u64>, now: u64) {
        let c = &mut self.clients[slot];
        if room != c.room_name.as_bytes() {
            self.stats.foreign += 1;
            return;
        }
        // A sliding window of the last 128 seqs tells a duplicate from a
        // late first delivery; older than that counts as out of order.
        if seq > c.last_seq {
            let shift = seq - c.last_seq;
            c.seen = if shift >= 128 { 0 } else { c.seen << shift } | 1;
            c.last_seq = seq;
        } else {
            let back = c.last_seq - seq;
            if back < 128 && c.seen & (1u128 << back) != 0 {
                self.stats.duplicated += 1;
                return;
            }
            if back < 128 {
                c.seen |= 1u128 << back;
            }
            self.stats.out_of_order += 1;
        }
        self.delta[D_DELIVERED] += 1;
        let Some(t) = stamp else {
            self.stats.unstamped += 1;
            return;
        };
        if self.timeline.is_some_and(|tl| tl.in_window(t)) {
            self.stats.delivered += 1;
            self.stats.latency.saturating_record(now.saturating_sub(t) / 1000);
        }
    }

    fn ack(&mut self, v: &Value, now: u64) {
        self.delta[D_ACKED] += 1;
        if let (Some(t), Some(tl)) = (v["id"].as_u64(), self.timeline) {
            if tl.in_window(t) {
                self.stats.acked += 1;
                self.stats.ack_latency.saturating_record(now.saturating_sub(t) / 1000);
            }
        }
    }

    fn error(&mut self, slot: usize, v: &Value) {
        self.delta[D_ERRORS] += 1;
        let code = v["code"].as_str().unwrap_or("?");
        *self.stats.errors.entry(code.to_string()).or_default() += 1;
        if let (Some(t), Some(tl)) = (v["id"].as_u64(), self.timeline) {
            if tl.in_window(t) {
                self.stats.refused += 1;
                self.stats.refused_expected += self.plan.members(self.clients[slot].room);
            }
        }
    }

    /// The connection is gone: a disconnect after setup, a failure before.
    fn lose(&mut self, slot: usize, why: String) {
        let c = &mut self.clients[slot];
        let was = c.state;
        if was == State::Closed {
            return;
        }
        c.state = State::Closed;
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.out = Vec::new();
        c.inbuf = Vec::new();
        let user = format!("{}{}", self.plan.user_prefix, c.index);
        if was == State::Ready {
            self.stats.disconnects += 1;
            self.delta[D_DISCONNECTS] += 1;
            if self.stats.disconnects <= LOG_LOSSES {
                eprintln!("chinwag-load: {user} lost: {why}");
            }
        } else {
            self.shared.fail(format!("{user}: {why}"));
        }
    }

    /// Best-effort close frames at the end; the sockets close on drop.
    fn close_all(&mut self) {
        for slot in 0..self.clients.len() {
            if self.clients[slot].state == State::Ready {
                let mask = ws::xorshift(&mut self.seed).to_le_bytes();
                let c = &mut self.clients[slot];
                ws::write_frame(
                    &mut c.out,
                    ws::OP_CLOSE,
                    &1000u16.to_be_bytes(),
                    [mask[0], mask[1], mask[2], mask[3]],
                );
                self.flush(slot);
            }
            self.clients[slot].stream = None;
        }
    }

    fn flush_live(&mut self) {
        let live = &self.shared.live;
        let targets = [&live.sent, &live.acked, &live.delivered, &live.errors, &live.disconnects];
        for (d, target) in self.delta.iter_mut().zip(targets) {
            if *d != 0 {
                target.fetch_add(*d, Relaxed);
                *d = 0;
            }
        }
    }
}
