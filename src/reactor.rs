//! One core's event loop: its `Poll`, its listener (SO_REUSEPORT), its
//! `Slab` of connections, its inbox, and this loop's own room and user
//! indexes. Connections never move between loops.
//!
//! # Turn order
//! ```text
//! poll → socket events (accept, read+act, mark writable) → carried reads
//!      → inbox (deliveries, acks, joins) → timers (1 s sweep) → flush dirty
//!      → reap closed
//! ```
//! # Invariants
//! * Readiness is edge-triggered: a read handler runs until `WouldBlock` or
//!   parks the connection in `carry` to be revisited next turn (fairness).
//! * Only the reactor calls `Registry::{register, deregister}`.
//! * A connection is freed only in `reap_all`, never while its handler runs;
//!   it leaves every room the moment it starts closing, so nothing more is
//!   queued for it.
//! * This reactor's bits in the shared [`Directory`] are set and cleared only
//!   here, under the room's lock, from its own local counts.
//! * Message frames carry their seq; a subscription has a floor (the room's
//!   seq when it started, everything up to which it got another way), and a
//!   message at or below it is not delivered again.

use crate::{
    auth::{Keys, Revocations},
    config::Config,
    conn::{would_block, Bucket, Conn, Io, OutQueue, Phase, Session, Transport},
    fanout::{Cmd, ConnRef, Inbox, Mailbox, UserAction},
    http::{self, Outcome},
    metrics::{LocalCounts, Metrics},
    proto::{self, Cursor, Encoding, Limits, Out, Wire},
    rooms::Directory,
    storage::{Committer, Storage, StorageError},
};
use bytes::Bytes;
use mio::{net::TcpListener, Events, Interest, Poll, Token};
use slab::Slab;
use std::{
    collections::HashMap,
    io::{self, Read, Write},
    sync::{atomic::AtomicUsize, atomic::Ordering, Arc},
    time::{Duration, Instant},
};
use tungstenite::protocol::{Message, Role, WebSocketConfig, WebSocketContext};

/// Token of the listener.
const LISTENER: Token = Token(usize::MAX);
/// Token of the waker.
pub const WAKER: Token = Token(usize::MAX - 1);
/// Messages read from one connection per turn before others get a go.
const READ_BUDGET: usize = 64;
/// A connection that has not finished its HTTP request in this time is dropped.
const HTTP_DEADLINE: Duration = Duration::from_secs(10);
/// Server ping interval.
const PING_EVERY: Duration = Duration::from_secs(20);
/// A connection silent this long is closed.
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// How long a closing connection may take to flush and see the peer's EOF.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Time between timer sweeps.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// tungstenite's read buffer, allocated eagerly for every connection: small
/// keeps idle connections cheap (client frames are small and rate-limited);
/// a big frame grows it on demand.
const READ_BUFFER: usize = 256;
/// A subscription catching up from storage fetches at most this many messages.
const CATCH_UP_MAX: usize = 1000;

/// Close codes of PROTOCOL.md section 4, mapped in this one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// 1001: server shutdown or idle.
    Away,
    /// 1002: WebSocket protocol violation.
    Protocol,
    /// 1007: invalid UTF-8.
    Invalid,
    /// 1008: rate-limit abuse.
    Policy,
    /// 1009: frame over `max_frame`.
    TooBig,
    /// 1013: slow consumer.
    SlowConsumer,
    /// 4001: token revoked or expired.
    TokenGone,
}

impl Close {
    fn code(self) -> u16 {
        match self {
            Close::Away => 1001,
            Close::Protocol => 1002,
            Close::Invalid => 1007,
            Close::Policy => 1008,
            Close::TooBig => 1009,
            Close::SlowConsumer => 1013,
            Close::TokenGone => 4001,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Close::Away => "going away",
            Close::Protocol => "protocol error",
            Close::Invalid => "invalid utf-8",
            Close::Policy => "rate limit abuse",
            Close::TooBig => "frame too big",
            Close::SlowConsumer => "slow consumer",
            Close::TokenGone => "token revoked or expired",
        }
    }
}

/// State shared by every reactor of the node.
#[derive(Debug)]
pub struct Shared {
    /// Settings.
    pub cfg: Config,
    /// Rooms and users.
    pub dir: Directory,
    /// The database.
    pub storage: Storage,
    /// The group-commit thread.
    pub committer: Committer,
    /// Every reactor's inbox, by reactor index.
    pub mailboxes: Vec<Mailbox>,
    /// Token keys.
    pub keys: Keys,
    /// Revoked token ids.
    pub revoked: Arc<Revocations>,
    /// `hello.limits`.
    pub limits: Limits,
    /// Start time, for uptime.
    pub started: Instant,
    /// Live WebSocket connections.
    pub connections: AtomicUsize,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Per reactor: ms since `started` at its last turn (for the watchdog).
    pub heartbeats: Vec<std::sync::atomic::AtomicU64>,
    /// The cluster bridge (`redis` set), or `None` for a single node.
    pub cluster: Option<Arc<crate::bridge::Cluster>>,
    /// Rate-limit buckets of HTTP API callers, by token.
    pub http_buckets: parking_lot::Mutex<HashMap<String, Bucket>>,
}

/// One subscriber of a room on this reactor.
#[derive(Clone, Copy, Debug)]
pub struct Sub {
    /// Slab index.
    pub idx: u32,
    /// Generation of the connection.
    pub gen: u32,
    /// Messages with seq at or below this are not delivered (already had).
    pub floor: u64,
}

/// A room's subscribers on this reactor, and how many speak each encoding
/// (to keep this reactor's encoding bits in the directory right).
#[derive(Debug, Default)]
pub struct LocalRoom {
    /// Subscribers.
    pub subs: Vec<Sub>,
    /// JSON subscribers.
    pub json: u32,
    /// MessagePack subscribers.
    pub msgpack: u32,
}

/// One event loop.
#[derive(Debug)]
pub struct Reactor {
    /// Index among the node's reactors.
    pub(crate) id: u16,
    poll: Poll,
    listener: Option<TcpListener>,
    inbox: Inbox,
    pub(crate) shared: Arc<Shared>,
    pub(crate) conns: Slab<Conn>,
    next_gen: u32,
    /// Room → local subscribers.
    pub(crate) rooms: HashMap<Arc<str>, LocalRoom>,
    /// User → local connections (slab indices).
    pub(crate) users: HashMap<Arc<str>, Vec<u32>>,
    /// Connections with output to write this turn.
    dirty: Vec<u32>,
    /// Connections that still had input when their read budget ran out.
    carry: Vec<u32>,
    /// Connections to free at the end of the turn.
    reap: Vec<u32>,
    /// Connections whose output passed the limit during a delivery.
    slow: Vec<u32>,
    /// The time of this turn.
    pub(crate) now: Instant,
    /// Set once shutdown began: stop turning at this time.
    shutdown: Option<Instant>,
    ws_config: WebSocketConfig,
    /// Counts folded into the shared metrics once per turn.
    pub(crate) metrics: LocalCounts,
    /// Where HTTP requests are parsed (reused across connections).
    http_scratch: Vec<u8>,
}

fn token(idx: usize, gen: u32) -> Token {
    Token(((gen as usize) << 32) | idx)
}

fn untoken(t: Token) -> (usize, u32) {
    (t.0 & 0xffff_ffff, (t.0 >> 32) as u32)
}

impl Reactor {
    /// A reactor over `poll` (whose waker is [`WAKER`]), serving `listener`.
    pub fn new(
        id: u16,
        poll: Poll,
        mut listener: TcpListener,
        inbox: Inbox,
        shared: Arc<Shared>,
    ) -> io::Result<Reactor> {
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .max_frame_size(Some(shared.cfg.max_frame))
            .max_message_size(Some(shared.cfg.max_frame));
        Ok(Reactor {
            id,
            poll,
            listener: Some(listener),
            inbox,
            shared,
            conns: Slab::new(),
            next_gen: 0,
            rooms: HashMap::new(),
            users: HashMap::new(),
            dirty: Vec::new(),
            carry: Vec::new(),
            reap: Vec::new(),
            slow: Vec::new(),
            now: Instant::now(),
            shutdown: None,
            ws_config,
            metrics: LocalCounts::default(),
            http_scratch: Vec::with_capacity(8 << 10),
        })
    }

    pub(crate) fn bit(&self) -> u64 {
        1 << self.id
    }

    /// Turns until shut down.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut last_sweep = Instant::now();
        loop {
            self.inbox.going_to_sleep();
            let busy = !self.carry.is_empty() || !self.inbox.is_empty();
            let timeout = if busy { Duration::ZERO } else { Duration::from_millis(250) };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("reactor {}: poll failed: {e}", self.id);
                    break;
                }
            }
            self.inbox.awake();
            self.now = Instant::now();
            let beat = self.now.saturating_duration_since(self.shared.started).as_millis() as u64;
            self.shared.heartbeats[self.id as usize].store(beat, Ordering::Relaxed);
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    t => {
                        let (idx, gen) = untoken(t);
                        if self.conns.get(idx).is_none_or(|c| c.gen != gen) {
                            continue; // Sporadic events for a freed slot: ignore.
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.on_readable(idx as u32);
                            // TLS handshakes write while reading.
                            if self.conns.get(idx).is_some_and(|c| c.sock.wants_write()) {
                                self.mark_dirty(idx as u32);
                            }
                        }
                        if ev.is_writable() {
                            self.mark_dirty(idx as u32);
                        }
                    }
                }
            }
            for idx in std::mem::take(&mut self.carry) {
                if self.conns.contains(idx as usize) {
                    self.on_readable(idx);
                }
            }
            self.drain_inbox();
            if self.now.duration_since(last_sweep) >= SWEEP_EVERY {
                last_sweep = self.now;
                self.sweep();
            }
            self.close_slow();
            self.flush_dirty();
            self.reap_all();
            if self.metrics.frames_out != 0 || self.metrics.frames_in != 0 {
                self.shared.metrics.absorb(&mut self.metrics);
            }
            if let Some(deadline) = self.shutdown {
                if self.conns.is_empty() || self.now >= deadline {
                    break;
                }
            }
        }
        for idx in self.conns.iter().map(|(i, _)| i as u32).collect::<Vec<_>>() {
            self.reap.push(idx);
        }
        self.reap_all();
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((mut sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    self.next_gen = self.next_gen.wrapping_add(1);
                    let gen = self.next_gen;
                    let entry = self.conns.vacant_entry();
                    let idx = entry.key();
                    if idx > u32::MAX as usize {
                        return;
                    }
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) =
                        self.poll.registry().register(&mut sock, token(idx, gen), interest)
                    {
                        log::warn!("cannot register a connection: {e}");
                        continue;
                    }
                    let sock = match Transport::new(sock, self.shared.cfg.tls.as_ref()) {
                        Ok(s) => s,
                        Err(e) => {
                            log::warn!("cannot start TLS: {e}");
                            continue;
                        }
                    };
                    entry.insert(Conn {
                        gen,
                        sock,
                        out: OutQueue::default(),
                        phase: Phase::Http { buf: Vec::new() },
                        born: self.now,
                        seen: self.now,
                        dirty: false,
                    });
                }
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors, typically: try again next event.
                    log::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    pub(crate) fn mark_dirty(&mut self, idx: u32) {
        if let Some(c) = self.conns.get_mut(idx as usize) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(idx);
            }
        }
    }

    /// The global reference of a local connection.
    pub(crate) fn conn_ref(&self, idx: u32) -> ConnRef {
        ConnRef { reactor: self.id, idx, gen: self.conns.get(idx as usize).map_or(0, |c| c.gen) }
    }

    /// The local slab index of a reference, if it is still that connection.
    fn local(&self, r: ConnRef) -> Option<u32> {
        (r.reactor == self.id && self.conns.get(r.idx as usize).is_some_and(|c| c.gen == r.gen))
            .then_some(r.idx)
    }

    fn on_readable(&mut self, idx: u32) {
        let Some(conn) = self.conns.get_mut(idx as usize) else { return };
        match &mut conn.phase {
            Phase::Http { .. } => self.read_http(idx),
            Phase::Open(_) => self.read_ws(idx),
            Phase::Closing { .. } | Phase::HttpWait => {
                // Discard whatever the peer still sends; its EOF ends the linger.
                let mut scratch = [0u8; 4096];
                loop {
                    match conn.sock.read(&mut scratch) {
                        Ok(0) => {
                            self.reap.push(idx);
                            return;
                        }
                        Ok(_) => {}
                        Err(e) if would_block(&e) => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            self.reap.push(idx);
                            return;
                        }
                    }
                }
            }
        }
    }

    fn read_http(&mut self, idx: u32) {
        // Requests usually arrive whole in one read: parse them from the
        // reactor's scratch buffer and keep a per-connection copy only of a
        // partial one (no heap churn per accepted connection).
        let mut scratch = std::mem::take(&mut self.http_scratch);
        scratch.clear();
        let Some(conn) = self.conns.get_mut(idx as usize) else { return };
        let Phase::Http { buf } = &mut conn.phase else { return };
        scratch.append(buf);
        let mut chunk = [0u8; 4096];
        loop {
            match conn.sock.read(&mut chunk) {
                Ok(0) => {
                    self.reap.push(idx);
                    self.http_scratch = scratch;
                    return;
                }
                Ok(n) => {
                    scratch.extend_from_slice(&chunk[..n]);
                    if scratch.len() > http::MAX_HEAD + http::MAX_BODY {
                        break; // handle() refuses it; the rest is never read.
                    }
                }
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.reap.push(idx);
                    self.http_scratch = scratch;
                    return;
                }
            }
        }
        conn.seen = self.now;
        let outcome = http::handle(&scratch, &self.shared);
        if let Outcome::Partial = outcome {
            *buf = scratch.clone();
        }
        self.http_scratch = scratch;
        match outcome {
            Outcome::Partial => {}
            Outcome::Respond(bytes) => self.respond_and_close(idx, bytes),
            Outcome::Api(call) => self.api_call(idx, call),
            Outcome::Upgrade { response, claims, enc, leftover } => {
                self.open_session(idx, response, claims, enc, leftover)
            }
        }
    }

    pub(crate) fn respond_and_close(&mut self, idx: u32, bytes: Bytes) {
        if let Some(conn) = self.conns.get_mut(idx as usize) {
            conn.out.push(bytes);
            conn.phase =
                Phase::Closing { until: self.now + CLOSE_LINGER, shut: false, session: None };
            self.mark_dirty(idx);
        }
    }

    /// Finishes the upgrade: subscribes the connection to all its user's
    /// rooms, sends `hello`, and announces the user if this is their first
    /// live connection.
    fn open_session(
        &mut self,
        idx: u32,
        response: Bytes,
        claims: crate::auth::Claims,
        enc: Encoding,
        leftover: Vec<u8>,
    ) {
        let rooms = match self.shared.storage.rooms_of(&claims.sub) {
            Ok(r) => r,
            Err(e) => {
                self.respond_and_close(idx, http::error(503, "unavailable", &e.to_string()));
                return;
            }
        };
        let user: Arc<str> = match self.users.get_key_value(claims.sub.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(claims.sub.as_str()),
        };
        let Some(conn) = self.conns.get_mut(idx as usize) else { return };
        conn.out.push(response);
        let ws =
            WebSocketContext::from_partially_read(leftover, Role::Server, Some(self.ws_config));
        conn.phase = Phase::Open(Box::new(Session {
            ws,
            user: user.clone(),
            exp: claims.exp,
            jti: claims.jti,
            enc,
            rooms: Vec::with_capacity(rooms.len()),
            bucket: Bucket::new(self.shared.cfg.burst, self.now),
            pinged: self.now,
            revocation_gen: self.shared.revoked.generation(),
        }));
        self.shared.connections.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.loop_connections(self.id, self.conns.len());
        let local = self.users.entry(user.clone()).or_default();
        local.push(idx);
        let first_here = local.len() == 1;
        let bit = self.bit();
        let first = self.shared.dir.with_user(&user, |e| {
            e.live += 1;
            if first_here {
                e.reactors |= bit;
            }
            e.live == 1
        });
        let mut states = Vec::with_capacity(rooms.len());
        for room in &rooms {
            let seq = match self.subscribe_local(idx, room, None) {
                Ok((_, seq)) => seq,
                Err(_) => 0,
            };
            let read = self.shared.storage.read_marker(&user, room).unwrap_or(0);
            states.push(proto::RoomState { room: room.clone(), seq, read });
        }
        let hello = Out::Hello {
            user: &user,
            node: &self.shared.cfg.node_id,
            server_time: proto::now_ms(),
            rooms: states,
            limits: &self.shared.limits,
        };
        let bytes = proto::encode(&hello, enc);
        self.queue(idx, bytes);
        if first {
            // Cluster-wide, this is only news if no other node has them.
            let elsewhere = self.shared.cluster.as_ref().is_some_and(|c| {
                c.presence(&user, true);
                c.remote_online(&user)
            });
            if !elsewhere {
                for room in &rooms {
                    self.presence(room, &user, "online");
                }
            }
        }
        // Bytes that came with the upgrade request are already buffered.
        self.carry.push(idx);
    }

    /// Broadcasts a `presence` frame to a room's members, not to `user`.
    pub(crate) fn presence(&self, room: &str, user: &Arc<str>, state: &'static str) {
        self.shared.presence(room, user, state);
    }

    /// Sends a command to every reactor holding a connection of `user`.
    pub(crate) fn to_user(&self, user: &str, make: impl Fn() -> Cmd) {
        self.shared.to_user(user, make);
    }

    fn read_ws(&mut self, idx: u32) {
        for _ in 0..READ_BUDGET {
            let Some(conn) = self.conns.get_mut(idx as usize) else { return };
            let Phase::Open(session) = &mut conn.phase else { return };
            let mut io = Io { sock: &mut conn.sock, out: &mut conn.out };
            let result = session.ws.read(&mut io);
            let queued = !conn.out.is_empty();
            if queued {
                self.mark_dirty(idx);
            }
            use tungstenite::Error as E;
            match result {
                Ok(msg) => {
                    if let Some(c) = self.conns.get_mut(idx as usize) {
                        c.seen = self.now;
                    }
                    match msg {
                        Message::Text(t) => self.on_frame(idx, t.as_bytes(), Encoding::Json),
                        Message::Binary(b) => self.on_frame(idx, &b, Encoding::MsgPack),
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                        Message::Close(_) => {
                            // tungstenite queued the reply into our queue on
                            // the next flush: push it out, then close.
                            if let Some(conn) = self.conns.get_mut(idx as usize) {
                                if let Phase::Open(s) = &mut conn.phase {
                                    let mut io = Io { sock: &mut conn.sock, out: &mut conn.out };
                                    let _ = s.ws.flush(&mut io);
                                }
                            }
                            self.start_closing(idx, None);
                            return;
                        }
                    }
                }
                Err(E::Io(e)) if would_block(&e) => return,
                Err(E::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(E::Capacity(_)) => return self.start_closing(idx, Some(Close::TooBig)),
                Err(E::Utf8(_)) => return self.start_closing(idx, Some(Close::Invalid)),
                Err(E::Protocol(_)) => return self.start_closing(idx, Some(Close::Protocol)),
                Err(_) => {
                    // Reset, EOF without close, or already closed: quiet disconnect.
                    self.cleanup(idx);
                    self.reap.push(idx);
                    return;
                }
            }
        }
        self.carry.push(idx);
    }

    /// Queues a frame for a connection that is open. Returns false (and
    /// schedules the 1013 close) if its output passed the limit.
    pub(crate) fn queue(&mut self, idx: u32, bytes: Bytes) -> bool {
        queue_frame(
            &mut self.conns,
            &mut self.dirty,
            &mut self.slow,
            &mut self.metrics,
            self.shared.cfg.max_output,
            idx,
            bytes,
        )
    }

    fn close_slow(&mut self) {
        while let Some(idx) = self.slow.pop() {
            self.metrics.slow_closes += 1;
            self.start_closing(idx, Some(Close::SlowConsumer));
        }
    }

    /// Leaves every room, queues a close frame (unless the peer closed
    /// first) and lingers until flushed and the peer's EOF.
    pub(crate) fn start_closing(&mut self, idx: u32, close: Option<Close>) {
        if !matches!(self.conns.get(idx as usize).map(|c| &c.phase), Some(Phase::Open(_))) {
            return; // Already closing (or never opened): one close frame only.
        }
        self.cleanup(idx);
        let Some(conn) = self.conns.get_mut(idx as usize) else { return };
        if let Some(close) = close {
            if close == Close::SlowConsumer {
                conn.out.clear();
            }
            conn.out.push(proto::close_frame(close.code(), close.reason()));
        }
        if !matches!(conn.phase, Phase::Closing { .. }) {
            conn.phase =
                Phase::Closing { until: self.now + CLOSE_LINGER, shut: false, session: None };
        }
        self.mark_dirty(idx);
    }

    /// Takes the session out of an open connection: unsubscribes it from
    /// every room and counts the user's connection gone (announcing them
    /// offline if it was their last). Idempotent.
    fn cleanup(&mut self, idx: u32) {
        let Some(conn) = self.conns.get_mut(idx as usize) else { return };
        let Phase::Open(_) = conn.phase else { return };
        let Phase::Open(session) = std::mem::replace(
            &mut conn.phase,
            Phase::Closing { until: self.now + CLOSE_LINGER, shut: false, session: None },
        ) else {
            return;
        };
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        self.shared.metrics.loop_connections(self.id, self.conns.len());
        for room in &session.rooms {
            self.unsubscribe_local(idx, room, session.enc);
        }
        let user = session.user.clone();
        let mut last_here = false;
        if let Some(list) = self.users.get_mut(&user) {
            list.retain(|&i| i != idx);
            if list.is_empty() {
                self.users.remove(&user);
                last_here = true;
            }
        }
        let bit = self.bit();
        let last = self.shared.dir.with_user(&user, |e| {
            e.live = e.live.saturating_sub(1);
            if last_here {
                e.reactors &= !bit;
            }
            e.live == 0
        });
        if last {
            let elsewhere = self.shared.cluster.as_ref().is_some_and(|c| {
                c.presence(&user, false);
                c.remote_online(&user)
            });
            if !elsewhere {
                for room in &session.rooms {
                    self.presence(room, &user, "offline");
                }
            }
        }
        if let Some(conn) = self.conns.get_mut(idx as usize) {
            conn.phase = Phase::Closing {
                until: self.now + CLOSE_LINGER,
                shut: false,
                session: Some(session),
            };
        }
    }

    /// Subscribes a local connection to `room`, reading the room's seq under
    /// its lock. With `known`, messages in `(known, seq]` (sent before this
    /// subscription could see them) are fetched from storage and queued.
    /// Returns the room's canonical name and seq.
    pub(crate) fn subscribe_local(
        &mut self,
        idx: u32,
        room: &str,
        known: Option<u64>,
    ) -> Result<(Arc<str>, u64), StorageError> {
        let Some(conn) = self.conns.get(idx as usize) else {
            return Err(StorageError("gone".into()));
        };
        let gen = conn.gen;
        let Some(session) = conn.session() else { return Err(StorageError("gone".into())) };
        let enc = session.enc;
        if session.has_room(room) {
            let name = session.rooms.iter().find(|r| &***r == room).cloned();
            let seq = self.shared.with_room(room, |e| e.seq)?;
            return Ok((name.unwrap_or_else(|| Arc::from(room)), seq));
        }
        let bit = self.bit();
        let (name, seq) = self.shared.with_room(room, |e| {
            e.reactors |= bit;
            match enc {
                Encoding::Json => e.json |= bit,
                Encoding::MsgPack => e.msgpack |= bit,
            }
            (e.name.clone(), e.seq)
        })?;
        let local = self.rooms.entry(name.clone()).or_default();
        local.subs.push(Sub { idx, gen, floor: seq });
        match enc {
            Encoding::Json => local.json += 1,
            Encoding::MsgPack => local.msgpack += 1,
        }
        if let Some(s) = self.conns.get_mut(idx as usize).and_then(Conn::session_mut) {
            s.rooms.push(name.clone());
        }
        if let Some(known) = known.filter(|&k| k < seq) {
            let (msgs, _) =
                self.shared.storage.history(room, Cursor::After(known), CATCH_UP_MAX)?;
            for m in msgs.iter().filter(|m| m.seq <= seq) {
                let frame = Out::Message {
                    room: &m.room,
                    seq: m.seq,
                    ts: m.ts,
                    from: &m.from,
                    text: &m.text,
                };
                self.queue(idx, proto::encode(&frame, enc));
            }
        }
        Ok((name, seq))
    }

    /// Removes a local connection from `room` and, when this reactor has no
    /// subscriber (of an encoding) left, clears its bits in the directory.
    pub(crate) fn unsubscribe_local(&mut self, idx: u32, room: &str, enc: Encoding) {
        let Some(local) = self.rooms.get_mut(room) else { return };
        let before = local.subs.len();
        local.subs.retain(|s| s.idx != idx);
        if local.subs.len() == before {
            return;
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
        if json_gone || mp_gone {
            let bit = self.bit();
            let _ = self.shared.with_room(room, |e| {
                if json_gone {
                    e.json &= !bit;
                }
                if mp_gone {
                    e.msgpack &= !bit;
                }
                if empty {
                    e.reactors &= !bit;
                }
            });
        }
    }

    fn drain_inbox(&mut self) {
        // Bounded so a flood of deliveries cannot starve socket reads.
        for _ in 0..4096 {
            let Some(cmd) = self.inbox.try_recv() else { return };
            match cmd {
                Cmd::Room { room, seq, wire, skip_user } => {
                    self.deliver_room(&room, seq, &wire, skip_user.as_deref())
                }
                Cmd::User { user, action, wire, skip } => {
                    self.deliver_user(&user, action, wire, skip)
                }
                Cmd::Reply { conn, wire } => {
                    if let Some(idx) = self.local(conn) {
                        let enc =
                            self.conns.get(idx as usize).and_then(Conn::session).map(|s| s.enc);
                        if let Some(bytes) = enc.and_then(|e| wire.get(e)) {
                            self.queue(idx, bytes.clone());
                        }
                    }
                }
                Cmd::Joined { conn, room, user, since, id, new, http } => {
                    self.finish_join(conn, &room, &user, since, id, new, http)
                }
                Cmd::Http { conn, bytes } => {
                    if let Some(idx) = self.local(conn) {
                        if matches!(
                            self.conns.get(idx as usize).map(|c| &c.phase),
                            Some(Phase::HttpWait)
                        ) {
                            self.respond_and_close(idx, bytes);
                        }
                    }
                }
                Cmd::Left { conn, room, id } => self.finish_leave(conn, &room, id),
                Cmd::Shutdown => self.begin_shutdown(),
            }
        }
    }

    fn deliver_room(&mut self, room: &str, seq: u64, wire: &Wire, skip_user: Option<&str>) {
        let max = self.shared.cfg.max_output;
        let Some(local) = self.rooms.get(room) else {
            // A stale bit: we have nobody here any more. Clear it lazily.
            let bit = self.bit();
            let _ = self.shared.with_room(room, |e| {
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
            let Some(conn) = self.conns.get(sub.idx as usize) else { continue };
            let Some(session) = conn.session().filter(|_| conn.gen == sub.gen) else { continue };
            if skip_user.is_some_and(|u| u == &*session.user) {
                continue;
            }
            let Some(bytes) = wire.get(session.enc) else { continue };
            self.metrics.deliveries += u64::from(seq != 0);
            queue_frame(
                &mut self.conns,
                &mut self.dirty,
                &mut self.slow,
                &mut self.metrics,
                max,
                sub.idx,
                bytes.clone(),
            );
        }
    }

    fn deliver_user(
        &mut self,
        user: &str,
        action: UserAction,
        wire: Option<(Arc<Wire>, u64, Arc<str>)>,
        skip: Option<ConnRef>,
    ) {
        let Some(list) = self.users.get(user) else { return };
        let skip = skip.and_then(|s| self.local(s));
        for idx in list.clone() {
            if Some(idx) == skip {
                continue;
            }
            let Some(enc) = self.conns.get(idx as usize).and_then(Conn::session).map(|s| s.enc)
            else {
                continue;
            };
            match &action {
                UserAction::None => {}
                UserAction::Subscribe { room, floor } => {
                    let _ = self.subscribe_local(idx, room, Some(*floor));
                }
                UserAction::Unsubscribe { room } => {
                    self.unsubscribe_local(idx, room, enc);
                    if let Some(s) = self.conns.get_mut(idx as usize).and_then(Conn::session_mut) {
                        s.rooms.retain(|r| **r != **room);
                    }
                }
            }
            let Some((wire, seq, room)) = &wire else { continue };
            if *seq != 0 {
                let floor = self
                    .rooms
                    .get(room)
                    .and_then(|l| l.subs.iter().find(|s| s.idx == idx))
                    .map(|s| s.floor);
                if floor.is_none_or(|f| *seq <= f) {
                    continue;
                }
            }
            if let Some(bytes) = wire.get(enc) {
                if *seq != 0 {
                    self.metrics.deliveries += 1;
                }
                self.queue(idx, bytes.clone());
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        self.shutdown = Some(self.now + Duration::from_secs(3));
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let idxs: Vec<u32> = self.conns.iter().map(|(i, _)| i as u32).collect();
        for idx in idxs {
            match self.conns.get(idx as usize).map(|c| &c.phase) {
                Some(Phase::Open(_)) => self.start_closing(idx, Some(Close::Away)),
                Some(Phase::Http { .. }) => self.reap.push(idx),
                _ => {}
            }
        }
    }

    /// Once a second: upgrade deadlines, pings, idle and token checks,
    /// closing lingers.
    fn sweep(&mut self) {
        let now = self.now;
        let now_s = proto::now_ms() / 1000;
        let rev_gen = self.shared.revoked.generation();
        let mut close = Vec::new();
        let mut ping = Vec::new();
        for (idx, conn) in self.conns.iter_mut() {
            let idx = idx as u32;
            match &mut conn.phase {
                Phase::Http { .. } if now.duration_since(conn.born) >= HTTP_DEADLINE => {
                    self.reap.push(idx)
                }
                Phase::Http { .. } | Phase::HttpWait => {}
                Phase::Closing { until, .. } => {
                    if now >= *until {
                        self.reap.push(idx);
                    }
                }
                Phase::Open(s) => {
                    let revoked = s.revocation_gen != rev_gen && {
                        s.revocation_gen = rev_gen;
                        s.jti.as_deref().is_some_and(|j| self.shared.revoked.contains(j))
                    };
                    if revoked || s.exp <= now_s {
                        close.push((idx, Close::TokenGone));
                    } else if now.duration_since(conn.seen) >= IDLE_LIMIT {
                        close.push((idx, Close::Away));
                    } else if now.duration_since(s.pinged) >= PING_EVERY {
                        s.pinged = now;
                        ping.push(idx);
                    }
                }
            }
        }
        self.shared.metrics.absorb(&mut self.metrics);
        self.shared.metrics.loop_connections(self.id, self.conns.len());
        for idx in ping {
            self.queue(idx, proto::ping_frame());
        }
        for (idx, why) in close {
            self.start_closing(idx, Some(why));
        }
    }

    fn flush_dirty(&mut self) {
        for idx in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(idx as usize) else { continue };
            conn.dirty = false;
            let written = conn.out.write_to(&mut conn.sock).and_then(|done| {
                // TLS records may still wait behind the plaintext.
                conn.sock.flush().map(|_| done).or_else(|e| {
                    if would_block(&e) {
                        Ok(false)
                    } else {
                        Err(e)
                    }
                })
            });
            match written {
                Ok(true) => {
                    if let Phase::Closing { shut, .. } = &mut conn.phase {
                        if !*shut {
                            *shut = true;
                            conn.sock.shutdown_write();
                        }
                    }
                }
                Ok(false) => {} // WRITABLE will bring it back.
                Err(_) => {
                    self.cleanup(idx);
                    self.reap.push(idx);
                }
            }
        }
    }

    fn reap_all(&mut self) {
        while let Some(idx) = self.reap.pop() {
            self.cleanup(idx);
            if let Some(mut conn) = self.conns.try_remove(idx as usize) {
                let _ = self.poll.registry().deregister(conn.sock.tcp());
            }
        }
    }
}

/// Queues `bytes` for an open connection, marking it dirty; flags it slow
/// (for a 1013 close) when its unsent output passes `max`.
fn queue_frame(
    conns: &mut Slab<Conn>,
    dirty: &mut Vec<u32>,
    slow: &mut Vec<u32>,
    counts: &mut LocalCounts,
    max: usize,
    idx: u32,
    bytes: Bytes,
) -> bool {
    let Some(conn) = conns.get_mut(idx as usize) else { return false };
    if !matches!(conn.phase, Phase::Open(_)) {
        return false;
    }
    counts.frames_out += 1;
    conn.out.push(bytes);
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(idx);
    }
    if conn.out.len() > max {
        // Before calling it slow, give the socket a chance: a healthy reader
        // can take a burst bigger than the limit within one turn.
        let _ = conn.out.write_to(&mut conn.sock);
        if conn.out.len() > max {
            slow.push(idx);
            return false;
        }
    }
    true
}
