//! A connection's byte stream: plain TCP, or TLS (rustls) over it, driven
//! inside the event loop; `send(2)` or `sendmsg(2)` for plain writes.

use super::outq::would_block;
use mio::net::TcpStream;
use std::io::{self, IoSlice, Read, Write};

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

    /// The peer's address.
    pub fn peer(&self) -> io::Result<std::net::SocketAddr> {
        match self {
            Transport::Plain(s) | Transport::Tls(s, _) => s.peer_addr(),
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
    // SAFETY: an all-zero msghdr is a valid value (null pointers, zero
    // lengths). The iovec array set below is `bufs`, which `IoSlice`
    // guarantees is ABI-compatible with `struct iovec`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    // SAFETY: `msg` points at `bufs`, alive and unmodified for the call;
    // the fd is this open socket's.
    sent(unsafe { libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) })
}

/// `send(2)` of one buffer: what `sendmsg` does for one iovec, without
/// the kernel copying in and checking a message header and an iovec array.
fn send(s: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
    // SAFETY: `buf` is alive and unmodified for the call; the fd is this
    // open socket's.
    sent(unsafe { libc::send(s.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) })
}

/// A send call's return value as a result.
fn sent(n: isize) -> io::Result<usize> {
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
        match self {
            Transport::Plain(s) => send(s, buf),
            Transport::Tls(..) => self.write_vectored(&[IoSlice::new(buf)]),
        }
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
