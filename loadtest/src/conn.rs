//! One blocking chinwag connection, for the few clients of a run that ask
//! and wait rather than stream: the search benchmark's searcher, the
//! catch-up check, joining many rooms at once.
//!
//! Owns: the upgrade, `hello`, writing frames and reading until the answer
//! to a given id (or a frame of a given type), with a deadline on every
//! read. Latency measured through it is one request at a time, so it is the
//! server's service time plus loopback, with no queueing in the harness.
//! Rare frames only: every frame read is decoded into a `serde_json::Value`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::wire::{self, Encoding};
use crate::ws;

/// Largest frame accepted (a `hello` of a user in thousands of rooms, a
/// `joined` with history).
const MAX_FRAME: usize = 64 << 20;

/// A blocking connection as user `user`.
pub struct Conn {
    stream: TcpStream,
    enc: Encoding,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
    seed: u64,
    scratch: Vec<u8>,
    /// When the last frame returned by [`Conn::next`] was complete (read
    /// whole, not yet decoded).
    frame_at: Instant,
}

impl Conn {
    /// Connects as `user` (open mode) and returns the connection and its `hello`.
    pub fn open(
        addr: SocketAddr,
        user: &str,
        enc: Encoding,
        timeout: Duration,
    ) -> Result<(Conn, Value), String> {
        let deadline = Instant::now() + timeout;
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut seed = 0x2545_f491_4f6c_dd1d ^ u64::from(std::process::id());
        for b in user.bytes() {
            seed = seed.rotate_left(5) ^ u64::from(b);
        }
        seed |= 1;
        let key = ws::key(&mut seed);
        let mut c = Conn {
            stream,
            enc,
            buf: Vec::new(),
            seed,
            scratch: vec![0; 256 << 10],
            frame_at: Instant::now(),
        };
        let req = ws::request(
            &addr.to_string(),
            &format!("/ws?user={user}"),
            &key,
            Some(enc.subprotocol()),
        );
        c.stream.write_all(&req).map_err(|e| format!("upgrade: {e}"))?;
        loop {
            if let Some(head) = ws::check_response(&c.buf, &key, Some(enc.subprotocol()))? {
                c.buf.drain(..head);
                break;
            }
            c.fill(deadline)?;
        }
        let hello = c.next(deadline)?;
        if hello["type"] != "hello" {
            return Err(format!("expected hello, got {hello}"));
        }
        Ok((c, hello))
    }

    /// When the last frame read (the `hello` after [`Conn::open`]) had
    /// arrived whole: a latency that ends here leaves out the harness's
    /// own decoding, which for a `hello` of 1,000 rooms is a millisecond.
    pub fn frame_at(&self) -> Instant {
        self.frame_at
    }

    /// The encoding spoken.
    pub fn enc(&self) -> Encoding {
        self.enc
    }

    /// Writes one data frame of `payload`.
    pub fn send(&mut self, payload: &[u8]) -> Result<(), String> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        let m = ws::xorshift(&mut self.seed).to_le_bytes();
        ws::write_frame(&mut out, self.enc.opcode(), payload, [m[0], m[1], m[2], m[3]]);
        self.stream.write_all(&out).map_err(|e| format!("write: {e}"))
    }

    /// Reads more bytes, waiting until `deadline` at most.
    fn fill(&mut self, deadline: Instant) -> Result<(), String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out waiting for the server".into());
        }
        self.stream.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match self.stream.read(&mut self.scratch) {
            Ok(0) => Err("connection closed by the server".into()),
            Ok(n) => {
                self.buf.extend_from_slice(&self.scratch[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                Err("timed out waiting for the server".into())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// The next data frame, decoded (pings are answered on the way).
    pub fn next(&mut self, deadline: Instant) -> Result<Value, String> {
        loop {
            if let Some(h) = ws::parse(&self.buf, MAX_FRAME)? {
                self.frame_at = Instant::now();
                let payload = self.buf[h.header_len..h.total()].to_vec();
                self.buf.drain(..h.total());
                match h.opcode {
                    ws::OP_TEXT | ws::OP_BINARY if h.fin => {
                        return wire::decode(self.enc, &payload)
                    }
                    ws::OP_PING => {
                        let mut out = Vec::new();
                        let m = ws::xorshift(&mut self.seed).to_le_bytes();
                        ws::write_frame(&mut out, ws::OP_PONG, &payload, [m[0], m[1], m[2], m[3]]);
                        self.stream.write_all(&out).map_err(|e| format!("write: {e}"))?;
                    }
                    ws::OP_CLOSE => return Err("the server closed the connection".into()),
                    // chinwag does not fragment; nothing else is expected.
                    _ => {}
                }
                continue;
            }
            self.fill(deadline)?;
        }
    }

    /// Reads until the frame whose `id` is `id` (the answer or an `error`);
    /// frames in between (live events) are skipped.
    pub fn answer(&mut self, id: u64, deadline: Instant) -> Result<Value, String> {
        loop {
            let v = self.next(deadline)?;
            if v["id"] == id {
                return Ok(v);
            }
        }
    }
}
