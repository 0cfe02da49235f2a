//! A connection's output queue: frames shared with every other receiver,
//! written with as few `sendmsg` calls as the socket allows.

use bytes::Bytes;
use std::{
    collections::VecDeque,
    io::{self, IoSlice, Write},
};

/// Most slices handed to one `sendmsg`.
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
        // Most queues hold one frame between writes (a delivery to a quiet
        // connection). A ring of one is a 32-byte block, which glibc keeps
        // in its fast per-size lists; the default first ring of four (128
        // bytes) went through its general path, with coalescing, for every
        // delivery. A second frame grows it to four as before.
        if self.frames.capacity() == 0 {
            self.frames.reserve_exact(1);
        }
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
            self.frames = VecDeque::new();
        }
    }

    /// Writes as much as the socket takes, many frames per `sendmsg`.
    /// `Ok(true)`: all written; `Ok(false)`: the socket is full.
    ///
    /// An emptied queue gives its ring back: an idle connection then holds
    /// no output memory (a burst of presence frames at connect grew each
    /// ring to ~460 B, kept for the connection's life), and the allocator
    /// hands the same chunk to the next connection written to.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<bool> {
        while let Some(front) = self.frames.front() {
            // One frame (a delivery to a quiet connection, the usual case):
            // a plain `send`, without building an iovec array for it.
            let wrote = if self.frames.len() == 1 {
                w.write(&front[self.head_off..])
            } else {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let mut n = 0;
                for (i, f) in self.frames.iter().take(MAX_IOV).enumerate() {
                    iov[i] = IoSlice::new(if i == 0 { &f[self.head_off..] } else { f });
                    n += 1;
                }
                w.write_vectored(&iov[..n])
            };
            match wrote {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.consume(written),
                Err(e) if would_block(&e) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.frames = VecDeque::new();
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
        assert_eq!(q.frames.capacity(), 0, "an emptied queue holds no ring");
    }

    #[test]
    fn a_first_frame_gets_a_ring_of_one_and_a_second_grows_it() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"a"));
        assert_eq!(q.frames.capacity(), 1);
        q.push(Bytes::from_static(b"b"));
        assert!(q.frames.capacity() >= 2);
        let mut w = Stepper { got: vec![], cap: 8, calls: 0, block_after: usize::MAX };
        assert!(q.write_to(&mut w).unwrap());
        assert_eq!(w.got, b"ab");
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
}
