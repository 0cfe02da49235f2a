//! One core's event loop: its `Poll`, its listener (SO_REUSEPORT), its
//! [`ConnTable`] of connections, its inbox and its [`LocalIndex`].
//! Connections never move between loops.
//!
//! # Turn order
//! ```text
//! poll → socket events (accept, read + act, mark writable) → carried reads
//!      → inbox (deliveries, durable answers, joins) → timers (1 s sweep)
//!      → slow consumers → flush dirty → reap closed → fold metrics
//!      → commit (flush what the turn wrote; its frames come next turn)
//! ```
//! # Invariants
//! * Readiness is edge-triggered: a read handler runs until `WouldBlock` or
//!   parks the connection in `carry` to be revisited next turn (fairness).
//! * Only the reactor registers and deregisters sockets (through its table).
//! * A connection is freed only in [`Reactor::reap_closed`], never while its
//!   handler runs; it leaves every room the moment it starts closing, so
//!   nothing more is queued for it.
//! * What a frame means is `chat`'s: the reactor reads, hands over, closes.

mod inbox;
mod timers;

use crate::{
    chat::{self, Ctx},
    conn::{would_block, Close, ConnTable, WsRead},
    fanout::{ConnId, Inbox},
    http::{self, Outcome},
    local::LocalIndex,
    node::Node,
    wire::Encoding,
};
use mio::{net::TcpListener, Events, Interest, Poll, Token};
use std::{
    io,
    sync::Arc,
    time::{Duration, Instant},
};
use tungstenite::protocol::{Message, WebSocketConfig};

/// Token of the listener.
const LISTENER: Token = Token(usize::MAX);
/// Token of the waker.
pub const WAKER: Token = Token(usize::MAX - 1);
/// Messages read from one connection per turn before others get a go.
const READ_BUDGET: usize = 64;
/// tungstenite's read buffer, allocated eagerly for every connection: small
/// keeps idle connections cheap (client frames are small and rate-limited);
/// a big frame grows it on demand.
const READ_BUFFER: usize = 256;
/// How long shutdown waits for connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// One event loop.
#[derive(Debug)]
pub struct Reactor {
    /// Index among the node's reactors.
    id: u16,
    poll: Poll,
    listener: Option<TcpListener>,
    inbox: Inbox,
    node: Arc<Node>,
    conns: ConnTable,
    local: LocalIndex,
    /// Connections that still had input when their read budget ran out.
    carry: Vec<ConnId>,
    /// Connections to free at the end of the turn.
    reap: Vec<ConnId>,
    /// The time of this turn.
    now: Instant,
    last_sweep: Instant,
    /// Set once shutdown began: stop turning at this time.
    shutdown: Option<Instant>,
    ws_config: WebSocketConfig,
    /// Where HTTP requests are parsed (reused across connections).
    http_scratch: Vec<u8>,
}

impl Reactor {
    /// A reactor over `poll` (whose waker is [`WAKER`]), serving `listener`.
    pub fn new(
        id: u16,
        poll: Poll,
        mut listener: TcpListener,
        inbox: Inbox,
        node: Arc<Node>,
    ) -> io::Result<Reactor> {
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let max_frame = node.cfg().max_frame;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .max_frame_size(Some(max_frame))
            .max_message_size(Some(max_frame));
        let now = Instant::now();
        Ok(Reactor {
            id,
            poll,
            listener: Some(listener),
            inbox,
            conns: ConnTable::new(id, node.cfg().max_output),
            local: LocalIndex::new(id),
            node,
            carry: Vec::new(),
            reap: Vec::new(),
            now,
            last_sweep: now,
            shutdown: None,
            ws_config,
            http_scratch: Vec::with_capacity(8 << 10),
        })
    }

    /// Turns until shut down, then frees every connection.
    pub fn run(mut self) {
        let _guard = self.node.alive().guard(self.id as usize);
        crate::durable::Committer::defer_on_this_thread();
        let mut events = Events::with_capacity(1024);
        while self.turn(&mut events) {}
        self.reap.extend(self.conns.ids());
        self.reap_closed();
    }

    /// One turn; false once the loop should stop.
    fn turn(&mut self, events: &mut Events) -> bool {
        if !self.wait(events) {
            return false;
        }
        self.socket_events(events);
        self.carried_reads();
        self.drain_inbox();
        self.timers();
        self.close_slow();
        self.flush_dirty();
        self.reap_closed();
        self.fold_metrics();
        self.node.commit_queued();
        match self.shutdown {
            Some(deadline) => !(self.conns.is_empty() || self.now >= deadline),
            None => true,
        }
    }

    /// What a rule works on.
    fn ctx(&mut self) -> Ctx<'_> {
        Ctx { node: &self.node, local: &mut self.local, conns: &mut self.conns, now: self.now }
    }

    /// Polls (without sleeping when work is carried or queued). False if
    /// the poll itself failed.
    fn wait(&mut self, events: &mut Events) -> bool {
        self.inbox.going_to_sleep();
        let busy = !self.carry.is_empty() || !self.inbox.is_empty();
        let timeout = if busy { Duration::ZERO } else { Duration::from_millis(250) };
        if let Err(e) = self.poll.poll(events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("reactor {}: poll failed: {e}", self.id);
                return false;
            }
        }
        self.inbox.awake();
        self.now = Instant::now();
        self.node.beat(self.id);
        true
    }

    fn socket_events(&mut self, events: &Events) {
        for ev in events.iter() {
            match ev.token() {
                LISTENER => self.accept(),
                WAKER => {}
                t => {
                    // Sporadic events for a freed slot match nothing.
                    let Some(id) = self.conns.by_token(t) else { continue };
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        self.on_readable(id);
                        // TLS handshakes write while reading.
                        if self.conns.get(id).is_some_and(|c| c.wants_write()) {
                            self.conns.mark_dirty(id);
                        }
                    }
                    if ev.is_writable() {
                        self.conns.mark_dirty(id);
                    }
                }
            }
        }
    }

    fn carried_reads(&mut self) {
        for id in std::mem::take(&mut self.carry) {
            if self.conns.get(id).is_some() {
                self.on_readable(id);
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    let tls = self.node.cfg().tls.as_ref();
                    if let Err(e) = self.conns.insert(self.poll.registry(), sock, tls, self.now) {
                        log::warn!("cannot take a connection: {e}");
                    }
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

    fn on_readable(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        if conn.is_http() {
            self.read_http(id);
        } else if conn.session().is_some() {
            self.read_ws(id);
        } else if conn.discard_input() {
            // Closing or parked: the peer's EOF ends it.
            self.reap.push(id);
        }
    }

    fn read_http(&mut self, id: ConnId) {
        // Requests usually arrive whole in one read: parse them from the
        // reactor's scratch buffer and keep a per-connection copy only of a
        // partial one (no heap churn per accepted connection).
        let mut scratch = std::mem::take(&mut self.http_scratch);
        scratch.clear();
        let Some(conn) = self.conns.get_mut(id) else { return };
        let limit = http::MAX_HEAD + http::MAX_BODY;
        let Some((kept, head_was_whole)) = conn.read_request(&mut scratch, limit, self.now) else {
            self.http_scratch = scratch;
            self.reap.push(id);
            return;
        };
        // A head trickling in is parsed once it is whole, not on every read
        // (only the new bytes are searched for its end: linear, not quadratic).
        let head_whole = head_was_whole || !http::head_pending(&scratch, kept);
        let outcome =
            if head_whole { http::handle(&scratch, &self.node) } else { Outcome::Partial };
        if head_whole {
            conn.set_route(http::route_index(&scratch));
        }
        if let Outcome::Partial = outcome {
            conn.keep_partial(&scratch, head_whole);
        }
        self.http_scratch = scratch;
        match outcome {
            Outcome::Partial => {}
            Outcome::Respond(bytes) => self.conns.respond(id, bytes, self.now),
            Outcome::Api(call) => http::api::execute(&mut self.ctx(), id, call),
            Outcome::Upgrade(up) => {
                let ws_config = self.ws_config;
                chat::session::open(&mut self.ctx(), id, up, &ws_config);
                if self.conns.session(id).is_some() {
                    self.conns.counts.ws_opens += 1;
                    self.conns.counts.http.push((crate::metrics::route_index("/ws"), 101));
                    // Bytes that came with the upgrade request are already buffered.
                    self.carry.push(id);
                }
            }
        }
    }

    fn read_ws(&mut self, id: ConnId) {
        for _ in 0..READ_BUDGET {
            let Some(conn) = self.conns.get_mut(id) else { return };
            let read = conn.read_message(self.now, &self.ws_config);
            if conn.has_output() {
                self.conns.mark_dirty(id);
                self.conns.check_output(id);
            }
            let (payload, enc) = match &read {
                WsRead::Message(Message::Text(t)) => (t.as_bytes(), Encoding::Json),
                WsRead::Message(Message::Binary(b)) => (&b[..], Encoding::MsgPack),
                WsRead::Message(_) | WsRead::Control => continue,
                WsRead::Blocked => return,
                WsRead::PeerClosed(code) => {
                    self.conns.counts.ws_closes.push((*code, "client"));
                    return self.close(id, None);
                }
                WsRead::Fail(code) => return self.close(id, Some(*code)),
                WsRead::Gone => {
                    // Reset, or EOF without a close: quiet disconnect.
                    if self.end_session(id) {
                        self.conns.counts.ws_closes.push((1006, "none"));
                    }
                    self.reap.push(id);
                    return;
                }
            };
            if let Some(code) = chat::on_frame(&mut self.ctx(), id, payload, enc) {
                return self.close(id, Some(code));
            }
        }
        self.carry.push(id);
    }

    /// Ends an open connection's session (leaving every room), queues the
    /// close frame `code` if given (none when the peer closed first) and
    /// lingers until flushed and the peer's EOF. Once only.
    fn close(&mut self, id: ConnId, code: Option<Close>) {
        // Who, before the session ends. 1001 (shutdown, idle) is routine.
        let user = self.conns.session(id).map(|s| (s.user.clone(), s.ip));
        if !self.end_session(id) {
            return;
        }
        if let (Some(code), Some((user, ip))) = (code.filter(|c| *c != Close::Away), user) {
            if let Some(n) = crate::logs::allow("server close") {
                let ip = ip.map_or_else(|| "?".into(), |ip| ip.to_string());
                let more = crate::logs::left_out(n);
                log::info!(
                    "closing {user}'s WebSocket ({ip}) with {} ({}){more}",
                    code.code(),
                    code.reason()
                );
            }
        }
        if let (Some(code), Some(conn)) = (code, self.conns.get_mut(id)) {
            conn.begin_close(code);
            self.conns.counts.ws_closes.push((code.code(), "server"));
        }
        self.conns.mark_dirty(id);
    }

    /// Takes the session out of an open connection and ends it. False if
    /// it had none (never opened, or already closing).
    fn end_session(&mut self, id: ConnId) -> bool {
        let now = self.now;
        let Some(session) = self.conns.get_mut(id).and_then(|c| c.take_session(now)) else {
            return false;
        };
        chat::session::close(&mut self.ctx(), id, session);
        true
    }

    fn close_slow(&mut self) {
        for id in self.conns.take_slow() {
            self.conns.counts.slow_closes += 1;
            self.close(id, Some(Close::SlowConsumer));
        }
    }

    fn flush_dirty(&mut self) {
        for id in self.conns.flush_dirty() {
            if self.end_session(id) {
                self.conns.counts.ws_closes.push((1006, "none"));
            }
            self.reap.push(id);
        }
    }

    /// Frees the connections reaped this turn.
    fn reap_closed(&mut self) {
        while let Some(id) = self.reap.pop() {
            if self.end_session(id) {
                self.conns.counts.ws_closes.push((1006, "none"));
            }
            self.conns.remove(self.poll.registry(), id);
        }
    }

    fn fold_metrics(&mut self) {
        let c = &mut self.conns.counts;
        if c.frames_out != 0 || c.frames_in != 0 {
            self.node.metrics().absorb(c);
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        self.shutdown = Some(self.now + SHUTDOWN_GRACE);
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        for id in self.conns.ids() {
            match self.conns.get(id) {
                Some(c) if c.session().is_some() => self.close(id, Some(Close::Away)),
                Some(c) if c.is_http() => self.reap.push(id),
                _ => {}
            }
        }
    }
}
