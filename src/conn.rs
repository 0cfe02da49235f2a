//! One client connection's state: its socket, its output queue, its phase
//! (HTTP head → open WebSocket → closing) and its rate bucket.
//!
//! Owns socket reads and writes for one connection. Never sees another
//! connection, a lock or a mailbox; the reactor decides what to do with what
//! comes out of here.

use crate::proto::Encoding;
use bytes::Bytes;
use mio::net::TcpStream;
use std::{
    collections::VecDeque,
    io::{self, IoSlice, Read, Write},
    sync::Arc,
    time::{Duration, Instant},
};
use tungstenite::protocol::WebSocketContext;

/// Most slices handed to one `writev`.
const MAX_IOV: usize = 64;

/// `WouldBlock` is a value, not an error.
pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Frames waiting for the socket, shared with every other receiver.
#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    head_off: usize,
    /// Unsent bytes in all.
    bytes: usize,
}

impl OutQueue {
    /// Queues a frame (an O(1) clone of shared bytes).
    pub fn push(&mut self, b: Bytes) {
        self.bytes += b.len();
        self.frames.push_back(b);
    }

    /// Unsent bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Nothing left to send.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Drops every queued frame except the rest of one already partly
    /// written (cutting that would corrupt the stream before a close frame).
    pub fn clear(&mut self) {
        let keep = if self.head_off > 0 { self.frames.pop_front() } else { None };
        self.frames.clear();
        self.bytes = 0;
        if let Some(front) = keep {
            self.bytes = front.len() - self.head_off;
            self.frames.push_back(front);
        } else {
            self.head_off = 0;
        }
    }

    /// Writes as much as the socket takes, many frames per `writev`.
    /// `Ok(true)`: all written; `Ok(false)`: the socket is full.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<bool> {
        while !self.frames.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, f) in self.frames.iter().take(MAX_IOV).enumerate() {
                iov[i] = IoSlice::new(if i == 0 { &f[self.head_off..] } else { f });
                n += 1;
            }
            match w.write_vectored(&iov[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.consume(written),
                Err(e) if would_block(&e) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.frames.front() else { break };
            let left = front.len() - self.head_off;
            if n < left {
                self.head_off += n;
                return;
            }
            n -= left;
            self.head_off = 0;
            self.frames.pop_front();
        }
    }
}

/// A connection's byte stream: plain TCP, or TLS (rustls) over it, driven
/// inside the same loop. Reads give plaintext; writes take plaintext.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(TcpStream, Box<rustls::ServerConnection>),
}

/// TLS bytes rustls may hold for one connection before writes report
/// `WouldBlock` (so unsent output stays in our queue, where the
/// slow-consumer limit sees it).
const TLS_BUFFER: usize = 64 << 10;

impl Transport {
    /// A transport for an accepted socket: TLS when `tls` is configured.
    pub fn new(
        sock: TcpStream,
        tls: Option<&std::sync::Arc<rustls::ServerConfig>>,
    ) -> io::Result<Transport> {
        Ok(match tls {
            None => Transport::Plain(sock),
            Some(cfg) => {
                let mut conn =
                    rustls::ServerConnection::new(cfg.clone()).map_err(io::Error::other)?;
                conn.set_buffer_limit(Some(TLS_BUFFER));
                Transport::Tls(sock, Box::new(conn))
            }
        })
    }

    /// The TCP socket (for registration and shutdown).
    pub fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(s) | Transport::Tls(s, _) => s,
        }
    }

    /// Whether TLS records are waiting for the socket.
    pub fn wants_write(&self) -> bool {
        matches!(self, Transport::Tls(_, tls) if tls.wants_write())
    }

    /// Ends our side: TLS close_notify (best effort), then TCP write shutdown.
    pub fn shutdown_write(&mut self) {
        if let Transport::Tls(s, tls) = self {
            tls.send_close_notify();
            let _ = tls.write_tls(s);
        }
        let _ = self.tcp().shutdown(std::net::Shutdown::Write);
    }
}

/// `sendmsg(2)` straight to the socket: unlike `writev(2)` it skips the VFS
/// layer (file position lock, iterator setup), which shows in profiles when
/// every delivery is one small send. `MSG_NOSIGNAL`: a peer that went away
/// is an `EPIPE` error, not a signal.
fn send_vectored(s: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero msghdr is valid; the iovec array is `bufs`, which
    // `IoSlice` guarantees is ABI-compatible with `struct iovec`, alive for
    // the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    let n = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Writes pending TLS records until done or the socket is full.
fn flush_tls(s: &mut TcpStream, tls: &mut rustls::ServerConnection) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(s)?;
    }
    Ok(())
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (s, tls) = match self {
            Transport::Plain(s) => return s.read(buf),
            Transport::Tls(s, tls) => (s, tls),
        };
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
            if tls.read_tls(s)? == 0 {
                return Ok(0);
            }
            if let Err(e) = tls.process_new_packets() {
                // Send the alert, then fail the connection.
                let _ = tls.write_tls(s);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake messages (or key updates) to answer right away.
            match flush_tls(s, tls) {
                Err(e) if !would_block(&e) => return Err(e),
                _ => {}
            }
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let (s, tls) = match self {
            Transport::Plain(s) => return send_vectored(s, bufs),
            Transport::Tls(s, tls) => (s, tls),
        };
        flush_tls(s, tls)?;
        let n = tls.writer().write_vectored(bufs)?;
        match flush_tls(s, tls) {
            Err(e) if !would_block(&e) => return Err(e),
            _ => {}
        }
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(s, tls) => flush_tls(s, tls),
        }
    }
}

/// The stream tungstenite sees: reads come from the socket, writes (pongs
/// and close replies) join our queue so that they never interleave with a
/// half-written frame of ours.
#[derive(Debug)]
pub struct Io<'a> {
    /// The socket.
    pub sock: &'a mut Transport,
    /// The connection's queue.
    pub out: &'a mut OutQueue,
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.read(buf)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.push(Bytes::copy_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A token bucket over client frames, plus the count of refusals that
/// decides the 1008 close.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
    /// Refusals in the current 10 s window and when it started.
    refused: u32,
    window: Instant,
}

/// Why a frame was not allowed by the bucket.
#[derive(Debug, PartialEq, Eq)]
pub enum Limited {
    /// Refuse this frame; retry after this many ms.
    Refuse(u64),
    /// Too many refusals: close with 1008.
    Abuse,
}

impl Bucket {
    /// A full bucket.
    pub fn new(burst: u32, now: Instant) -> Bucket {
        Bucket { tokens: burst as f64, last: now, refused: 0, window: now }
    }

    /// Whether the bucket is not full again yet (its state still matters).
    pub fn busy(&self, now: Instant, rate: u32, burst: u32) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + dt * rate as f64 <= burst as f64 - 1.0
    }

    /// Takes one token for a frame.
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> Result<(), Limited> {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * rate as f64).min(burst as f64);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if now.saturating_duration_since(self.window) > Duration::from_secs(10) {
            self.window = now;
            self.refused = 0;
        }
        self.refused += 1;
        if self.refused >= burst {
            return Err(Limited::Abuse);
        }
        let wait = (1.0 - self.tokens) / rate as f64;
        Err(Limited::Refuse((wait * 1000.0).ceil() as u64))
    }
}

/// An authenticated WebSocket session.
pub struct Session {
    /// tungstenite's protocol state (framing, UTF-8, control frames).
    pub ws: WebSocketContext,
    /// The user id.
    pub user: Arc<str>,
    /// Token expiry, seconds since the epoch (`u64::MAX`: none).
    pub exp: u64,
    /// Token id, for revocation.
    pub jti: Option<String>,
    /// The encoding it speaks.
    pub enc: Encoding,
    /// Rooms it is subscribed to (the user's memberships).
    pub rooms: Vec<Arc<str>>,
    /// Frame rate limit.
    pub bucket: Bucket,
    /// When we last sent a ping.
    pub pinged: Instant,
    /// Last revocation generation checked.
    pub revocation_gen: u64,
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
pub enum Phase {
    /// Reading the HTTP request head.
    Http {
        /// What has arrived so far.
        buf: Vec<u8>,
    },
    /// An API call waiting for the flush that makes it durable.
    HttpWait,
    /// A live WebSocket.
    Open(Box<Session>),
    /// Sending what is queued, then closing. `session` is kept for cleanup.
    Closing {
        /// Give up waiting (flush or peer's EOF) at this time.
        until: Instant,
        /// Whether our side has been shut down for writing.
        shut: bool,
        /// The session, if the connection had one.
        session: Option<Box<Session>>,
    },
}

/// One client connection.
#[derive(Debug)]
pub struct Conn {
    /// Generation of this slab slot.
    pub gen: u32,
    /// The socket (plain or TLS).
    pub sock: Transport,
    /// Frames waiting for the socket.
    pub out: OutQueue,
    /// Its phase.
    pub phase: Phase,
    /// When it was accepted.
    pub born: Instant,
    /// Last frame (or byte, before the upgrade) from the peer.
    pub seen: Instant,
    /// Queued in the reactor's dirty list this turn.
    pub dirty: bool,
}

impl Conn {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call and then blocks.
    struct Stepper {
        got: Vec<u8>,
        cap: usize,
        calls: usize,
        block_after: usize,
    }

    impl Write for Stepper {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls > self.block_after {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.cap - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.cap {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut q = OutQueue::default();
        for s in ["hello", " ", "world", "!"] {
            q.push(Bytes::from(s));
        }
        let mut w = Stepper { got: vec![], cap: 3, calls: 0, block_after: 2 };
        assert!(!q.write_to(&mut w).unwrap());
        assert_eq!(q.len(), 12 - 6);
        w.block_after = usize::MAX;
        assert!(q.write_to(&mut w).unwrap());
        assert_eq!(w.got, b"hello world!");
        assert!(q.is_empty());
    }

    #[test]
    fn clearing_keeps_a_partly_written_frame() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abcdef"));
        q.push(Bytes::from_static(b"ghi"));
        let mut w = Stepper { got: vec![], cap: 2, calls: 0, block_after: 1 };
        assert!(!q.write_to(&mut w).unwrap());
        q.clear();
        assert_eq!(q.len(), 4);
        w.block_after = usize::MAX;
        assert!(q.write_to(&mut w).unwrap());
        assert_eq!(w.got, b"abcdef");
    }

    #[test]
    fn bucket_refuses_then_abuses() {
        let t0 = Instant::now();
        let mut b = Bucket::new(3, t0);
        for _ in 0..3 {
            assert_eq!(b.take(1, 3, t0), Ok(()));
        }
        assert!(matches!(b.take(1, 3, t0), Err(Limited::Refuse(ms)) if ms > 0 && ms <= 1000));
        assert!(matches!(b.take(1, 3, t0), Err(Limited::Refuse(_))));
        assert_eq!(b.take(1, 3, t0), Err(Limited::Abuse));
        assert_eq!(b.take(1, 3, t0 + Duration::from_secs(2)), Ok(()));
    }
}
