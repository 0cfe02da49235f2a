//! One client connection: it owns its socket (plain or TLS), its output
//! queue, its phase (HTTP head → open WebSocket → closing) and its timers,
//! and does every read and write on it. [`ConnTable`] is a reactor's slab
//! of them and the outbox that queues frames and finds slow consumers.
//!
//! Never sees a lock, a mailbox or another connection's rooms: what to do
//! with a frame that comes out of here is `chat`'s business.

mod bucket;
mod close;
mod framing;
mod outq;
mod table;
pub mod tick;
mod transport;

pub use bucket::{Bucket, Limited};
pub use close::Close;
pub use framing::Framing;
pub use outq::{would_block, OutQueue};
pub use table::ConnTable;
pub use tick::Tick;
pub use transport::Transport;

use crate::{auth::Revocations, wire::Encoding};
use bytes::Bytes;
use std::{
    io::{self, Read, Write},
    sync::Arc,
    time::{Duration, Instant},
};
use tungstenite::{protocol::WebSocketConfig, Message};

/// A connection that has not finished its HTTP request in this time is dropped.
const HTTP_DEADLINE: Duration = Duration::from_secs(10);
/// Server ping interval.
const PING_EVERY: Duration = Duration::from_secs(20);
/// A connection silent this long is closed.
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// An API call waits this long at most for its durable answer (the 1 s
/// sweep may add a second: still within PROTOCOL.md's 10 s).
const ANSWER_DEADLINE: Duration = Duration::from_secs(8);
/// How long a closing connection may take to flush and see the peer's EOF.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// An authenticated WebSocket session.
pub struct Session {
    /// tungstenite's protocol state (framing, UTF-8, control frames),
    /// held only while a frame is in flight.
    pub ws: Framing,
    /// The user id.
    pub user: Arc<str>,
    /// The token's name and id: none for a client of `--open` mode, so
    /// they cost a pointer there.
    pub token: Option<Box<TokenClaims>>,
    /// When the token was issued, seconds since the epoch (0: not said),
    /// for revocation by user.
    pub iat: u32,
    /// The token's `admin` claim (deletes anyone's message; `refresh`).
    pub admin: bool,
    /// Token expiry, seconds since the epoch (`u64::MAX`: none).
    pub exp: u64,
    /// The client's address (per-address connection cap).
    pub ip: Option<std::net::IpAddr>,
    /// The encoding it speaks.
    pub enc: Encoding,
    /// Rooms it is subscribed to (the user's memberships). Written only by
    /// `local::LocalIndex`, which keeps it in step with the reactor's room
    /// index and the directory.
    pub rooms: Vec<Arc<str>>,
    /// Frame rate limit.
    pub bucket: Bucket,
    /// When we last sent a ping.
    pub pinged: Tick,
    /// Last revocation generation checked.
    pub revocation_gen: u32,
}

/// The claims of a session's token that only `refresh` and revocation read.
#[derive(Debug, Default)]
pub struct TokenClaims {
    /// The display name (kept for `refresh`).
    pub name: Option<Box<str>>,
    /// The token's id, for revocation.
    pub jti: Option<Box<str>>,
}

impl TokenClaims {
    /// The claims worth keeping, boxed; `None` when there are none.
    pub fn boxed(name: Option<&str>, jti: Option<&str>) -> Option<Box<TokenClaims>> {
        let c = TokenClaims { name: name.map(Box::from), jti: jti.map(Box::from) };
        (c.name.is_some() || c.jti.is_some()).then(|| Box::new(c))
    }
}

impl Session {
    /// A token's `iat` as kept: saturated in 2106 (no revocation made
    /// before then refuses a later one either).
    pub fn iat_of(iat: Option<u64>) -> u32 {
        iat.map_or(0, |t| u32::try_from(t).unwrap_or(u32::MAX))
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("rooms", &self.rooms.len())
            .finish()
    }
}

impl Session {
    /// Whether the session is subscribed to `room`.
    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.iter().any(|r| &**r == room)
    }
}

/// Where a connection is in its life.
#[derive(Debug)]
enum Phase {
    /// Reading the HTTP request: what has arrived so far of a partial one,
    /// and whether its head is already whole (only a body is missing).
    Http(Vec<u8>, bool),
    /// An API call waiting (since then) for the flush that makes it durable.
    HttpWait(Tick),
    /// A live WebSocket.
    Open(Session),
    /// Sending what is queued, then closing: give up at `until`; `shut`:
    /// our side has been shut down for writing.
    Closing { until: Instant, shut: bool },
}

/// What one WebSocket read gave.
#[derive(Debug)]
pub enum WsRead {
    /// A data message (text: JSON, binary: MessagePack).
    Message(Message),
    /// A control frame tungstenite handled (its reply is queued).
    Control,
    /// Nothing more to read now.
    Blocked,
    /// The peer sent a close frame; our reply is queued.
    PeerClosed(u16),
    /// A protocol fault: close with this code.
    Fail(Close),
    /// Reset, EOF without a close frame: drop it quietly.
    Gone,
}

/// What the once-a-second sweep found due for a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing.
    Nothing,
    /// Free it (upgrade deadline passed, or linger over).
    Reap,
    /// Close it with this code.
    Close(Close),
    /// Send it a ping.
    Ping,
    /// An API call waited too long for its answer: 503 it.
    GiveUp,
}

/// One client connection: a slot of its reactor's slab, for every
/// connection whether busy or idle, so kept small (208 bytes).
#[derive(Debug)]
pub struct Conn {
    gen: u32,
    born: Tick,
    /// Last frame (or byte, before the upgrade) from the peer.
    seen: Tick,
    sock: Transport,
    out: OutQueue,
    phase: Phase,
    /// Queued in the table's dirty list this turn.
    dirty: bool,
    /// The request's route, an index in `metrics::ROUTES` (0 until known).
    route: u8,
}

impl Conn {
    fn new(gen: u32, sock: Transport, now: Instant) -> Conn {
        Conn {
            gen,
            born: Tick::at(now),
            seen: Tick::at(now),
            sock,
            out: OutQueue::default(),
            phase: Phase::Http(Vec::new(), false),
            dirty: false,
            route: 0,
        }
    }

    /// The open session, if any.
    pub fn session(&self) -> Option<&Session> {
        match &self.phase {
            Phase::Open(s) => Some(s),
            _ => None,
        }
    }

    /// The open session, mutably.
    pub fn session_mut(&mut self) -> Option<&mut Session> {
        match &mut self.phase {
            Phase::Open(s) => Some(s),
            _ => None,
        }
    }

    /// Still reading its HTTP request.
    pub fn is_http(&self) -> bool {
        matches!(self.phase, Phase::Http(..))
    }

    /// An HTTP request not answered yet (read, or parked).
    pub fn awaits_response(&self) -> bool {
        matches!(self.phase, Phase::Http(..) | Phase::HttpWait(_))
    }

    /// The client's address (a `getpeername`: call at the upgrade, not per frame).
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.sock.peer().ok().map(|a| a.ip())
    }

    /// Whether output waits to be written.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Whether TLS records wait for the socket (a handshake writes while reading).
    pub fn wants_write(&self) -> bool {
        self.sock.wants_write()
    }

    /// Reads what has arrived of the HTTP request into `scratch`, after what
    /// an earlier read kept, until the socket is empty or `limit` is passed.
    /// Returns how many bytes an earlier read had kept (new bytes start
    /// there) and whether their head was whole; `None`: the peer is gone.
    pub fn read_request(
        &mut self,
        scratch: &mut Vec<u8>,
        limit: usize,
        now: Instant,
    ) -> Option<(usize, bool)> {
        let Phase::Http(buf, head) = &mut self.phase else { return None };
        let (kept, head) = (buf.len(), *head);
        scratch.append(buf);
        let mut chunk = [0u8; 4096];
        loop {
            match self.sock.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => {
                    scratch.extend_from_slice(&chunk[..n]);
                    if scratch.len() > limit {
                        break; // The caller refuses it; the rest is never read.
                    }
                }
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        self.seen = Tick::at(now);
        Some((kept, head))
    }

    /// Keeps a partial request for the next read (`head`: its head is whole).
    pub fn keep_partial(&mut self, partial: &[u8], head: bool) {
        if let Phase::Http(buf, whole) = &mut self.phase {
            buf.extend_from_slice(partial);
            *whole = head;
        }
    }

    /// Parks an API call until its durable answer comes back.
    pub fn park(&mut self, now: Instant) {
        if let Phase::Http(..) = self.phase {
            self.phase = Phase::HttpWait(Tick::at(now));
        }
    }

    /// Remembers the request's route (for the metrics of its response).
    pub fn set_route(&mut self, route: u8) {
        self.route = route;
    }

    /// The request's route (an index in `metrics::ROUTES`).
    pub fn route(&self) -> u8 {
        self.route
    }

    /// Queues a complete HTTP response and closes after it.
    pub fn respond(&mut self, bytes: Bytes, now: Instant) {
        self.out.push(bytes);
        self.phase = Phase::Closing { until: now + CLOSE_LINGER, shut: false };
    }

    /// Queues the 101 response and starts speaking WebSocket.
    pub fn open(&mut self, response: Bytes, session: Session) {
        self.out.push(response);
        self.phase = Phase::Open(session);
    }

    /// Reads one WebSocket message (or what stands in for one).
    pub fn read_message(&mut self, now: Instant, cfg: &WebSocketConfig) -> WsRead {
        use tungstenite::Error as E;
        let Phase::Open(session) = &mut self.phase else { return WsRead::Gone };
        loop {
            return match session.ws.read(&mut self.sock, &mut self.out, cfg) {
                Ok(msg) => {
                    self.seen = Tick::at(now);
                    match msg {
                        Message::Text(_) | Message::Binary(_) => WsRead::Message(msg),
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => WsRead::Control,
                        Message::Close(frame) => {
                            // tungstenite queues its reply on the next flush.
                            session.ws.flush(&mut self.sock, &mut self.out);
                            WsRead::PeerClosed(frame.map_or(1005, |f| f.code.into()))
                        }
                    }
                }
                Err(E::Io(e)) if would_block(&e) => WsRead::Blocked,
                Err(E::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(E::Capacity(_)) => WsRead::Fail(Close::TooBig),
                Err(E::Utf8(_)) => WsRead::Fail(Close::Invalid),
                // EOF without a close frame is how tungstenite reports a
                // dropped connection: a quiet disconnect, not the peer's
                // protocol error.
                Err(E::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => WsRead::Gone,
                Err(E::Protocol(_)) => WsRead::Fail(Close::Protocol),
                Err(_) => WsRead::Gone,
            };
        }
    }

    /// Reads and drops whatever a closing (or parked) peer still sends.
    /// True once its EOF (or an error) ends the linger.
    pub fn discard_input(&mut self) -> bool {
        let mut scratch = [0u8; 4096];
        loop {
            match self.sock.read(&mut scratch) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if would_block(&e) => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }

    /// Takes the session out of an open connection, which starts closing.
    pub fn take_session(&mut self, now: Instant) -> Option<Session> {
        if !matches!(self.phase, Phase::Open(_)) {
            return None;
        }
        let closing = Phase::Closing { until: now + CLOSE_LINGER, shut: false };
        match std::mem::replace(&mut self.phase, closing) {
            Phase::Open(s) => Some(s),
            _ => None,
        }
    }

    /// Queues a close frame (a slow consumer's queue is dropped first) and
    /// lingers until it is flushed and the peer's EOF comes. Call after
    /// [`Conn::take_session`].
    pub fn begin_close(&mut self, close: Close) {
        if close == Close::SlowConsumer {
            self.out.clear();
        }
        self.out.push(close.frame());
    }

    /// Writes what the socket takes. `Err`: the connection is dead.
    fn flush(&mut self) -> io::Result<()> {
        let done = self.out.write_to(&mut self.sock).and_then(|done| {
            // TLS records may still wait behind the plaintext.
            match self.sock.flush() {
                Ok(()) => Ok(done),
                Err(e) if would_block(&e) => Ok(false),
                Err(e) => Err(e),
            }
        })?;
        if let (true, Phase::Closing { shut, .. }) = (done, &mut self.phase) {
            if !*shut {
                *shut = true;
                self.sock.shutdown_write();
            }
        }
        Ok(()) // Not done: WRITABLE brings it back.
    }

    /// What the sweep finds due. `now_s`: seconds since the epoch (token expiry).
    pub fn due(&mut self, now: Instant, now_s: u64, revoked: &Revocations) -> Due {
        match &mut self.phase {
            Phase::Http(..) if self.born.elapsed(now) >= HTTP_DEADLINE => Due::Reap,
            Phase::HttpWait(since) if since.elapsed(now) >= ANSWER_DEADLINE => Due::GiveUp,
            Phase::Http(..) | Phase::HttpWait(_) => Due::Nothing,
            Phase::Closing { until, .. } if now >= *until => Due::Reap,
            Phase::Closing { .. } => Due::Nothing,
            Phase::Open(s) => {
                let generation = revoked.generation();
                // The generation's low bits: a check skipped wrongly would
                // need exactly 2^32 revocations between two sweeps.
                let gone = s.revocation_gen != generation as u32 && {
                    s.revocation_gen = generation as u32;
                    let jti = s.token.as_deref().and_then(|t| t.jti.as_deref());
                    revoked.refuses(jti, &s.user, (s.iat > 0).then_some(u64::from(s.iat)))
                };
                if gone || s.exp <= now_s {
                    Due::Close(Close::TokenGone)
                } else if self.seen.elapsed(now) >= IDLE_LIMIT {
                    Due::Close(Close::Away)
                } else if s.pinged.elapsed(now) >= PING_EVERY {
                    s.pinged = Tick::at(now);
                    Due::Ping
                } else {
                    Due::Nothing
                }
            }
        }
    }
}
