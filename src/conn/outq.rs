//! A connection's output queue: frames shared with every other receiver,
//! written with as few `sendmsg` calls as the socket allows.

use bytes::Bytes;
use std::io::{self, IoSlice, Write};

/// Most slices handed to one `sendmsg`.
const MAX_IOV: usize = 64;

/// `WouldBlock` is a value, not an error.
pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Frames waiting for the socket, shared with every other receiver.
#[derive(Debug)]
pub struct OutQueue {
    frames: Frames,
    /// Frames at the front of a `Many` already written (dropped from the
    /// vector once they are half of it).
    start: u32,
    /// Bytes of the front frame already written.
    head_off: u32,
    /// Unsent bytes in all.
    bytes: usize,
}

/// The queued frames. Most queues hold one frame between writes (a
/// delivery to a quiet connection, 100 of them per message in a room of
/// 100): that one is held inline, so it costs no allocation and no free.
/// A ring per delivery was a 32-byte malloc and free on every one, and
/// glibc's general path once its per-thread cache of seven ran out
/// (BENCHMARKS.md, fifteenth session). A second frame moves
/// both into a vector. The enum is as small as `Bytes` (`Vec`'s capacity
/// gives it a spare value), so a connection's slot does not grow.
#[derive(Debug)]
enum Frames {
    One(Bytes),
    /// Empty, unallocated, when nothing is queued.
    Many(Vec<Bytes>),
}

impl Default for OutQueue {
    fn default() -> OutQueue {
        OutQueue { frames: Frames::Many(Vec::new()), start: 0, head_off: 0, bytes: 0 }
    }
}

impl OutQueue {
    /// Queues a frame (an O(1) clone of shared bytes).
    pub fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        if self.bytes == 0 {
            // Nothing queued: the frame goes inline.
            self.bytes = b.len();
            self.frames = Frames::One(b);
            self.start = 0;
            self.head_off = 0;
            return;
        }
        self.bytes += b.len();
        match &mut self.frames {
            Frames::Many(v) => v.push(b),
            Frames::One(first) => {
                let mut v = Vec::with_capacity(4);
                v.push(std::mem::take(first));
                v.push(b);
                self.frames = Frames::Many(v);
            }
        }
    }

    /// Unsent bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Nothing left to send.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The unsent frames, front first.
    fn live(&self) -> &[Bytes] {
        match &self.frames {
            Frames::One(b) if self.bytes > 0 => std::slice::from_ref(b),
            Frames::One(_) => &[],
            Frames::Many(v) => v.get(self.start as usize..).unwrap_or_default(),
        }
    }

    /// Drops every queued frame except the rest of one already partly
    /// written (cutting that would corrupt the stream before a close frame).
    pub fn clear(&mut self) {
        let keep = if self.head_off > 0 { self.live().first().cloned() } else { None };
        let off = self.head_off;
        *self = OutQueue::default();
        if let Some(front) = keep {
            self.bytes = front.len() - off as usize;
            self.head_off = off;
            self.frames = Frames::One(front);
        }
    }

    /// Writes as much as the socket takes, many frames per `sendmsg`.
    /// `Ok(true)`: all written; `Ok(false)`: the socket is full.
    ///
    /// An emptied queue gives its vector back: an idle connection then
    /// holds no output memory (a burst of presence frames at connect grew
    /// each ring to ~460 B, kept for the connection's life), and the
    /// allocator hands the same chunk to the next connection written to.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<bool> {
        loop {
            let live = self.live();
            let off = self.head_off as usize;
            // One frame (a delivery to a quiet connection, the usual case):
            // a plain `send`, without building an iovec array for it.
            let wrote = match live {
                [] => break,
                [one] => w.write(&one[off..]),
                many => {
                    let mut iov = [IoSlice::new(&[]); MAX_IOV];
                    let mut n = 0;
                    for (i, f) in many.iter().take(MAX_IOV).enumerate() {
                        iov[i] = IoSlice::new(if i == 0 { &f[off..] } else { f });
                        n += 1;
                    }
                    w.write_vectored(&iov[..n])
                }
            };
            match wrote {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.consume(written),
                Err(e) if would_block(&e) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        *self = OutQueue::default();
        Ok(true)
    }

    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        let Frames::Many(v) = &mut self.frames else {
            // The one inline frame: whatever is left of it is unsent.
            self.head_off = if self.bytes == 0 { 0 } else { self.head_off + n as u32 };
            return;
        };
        let mut start = self.start as usize;
        while n > 0 {
            let Some(front) = v.get(start) else { break };
            let left = front.len() - self.head_off as usize;
            if n < left {
                self.head_off += n as u32;
                break;
            }
            n -= left;
            self.head_off = 0;
            start += 1;
        }
        // Written frames leave the vector once they are half of it: each
        // frame is moved at most once on average, however slow the reader.
        if start * 2 >= v.len() {
            v.drain(..start);
            start = 0;
        }
        self.start = start as u32;
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
        assert!(
            matches!(&q.frames, Frames::Many(v) if v.capacity() == 0),
            "an emptied queue holds no vector"
        );
    }

    #[test]
    fn a_first_frame_is_held_inline_and_a_second_moves_both_to_a_vector() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"a"));
        assert!(matches!(q.frames, Frames::One(_)));
        q.push(Bytes::from_static(b"b"));
        assert!(matches!(&q.frames, Frames::Many(v) if v.len() == 2));
        let mut w = Stepper { got: vec![], cap: 8, calls: 0, block_after: usize::MAX };
        assert!(q.write_to(&mut w).unwrap());
        assert_eq!(w.got, b"ab");
    }

    #[test]
    fn an_inline_frame_written_in_pieces_is_sent_whole_then_freed() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abcdefg"));
        let mut w = Stepper { got: vec![], cap: 3, calls: 0, block_after: 1 };
        assert!(!q.write_to(&mut w).unwrap());
        assert_eq!(q.len(), 4);
        // A frame queued behind a partly written one keeps the order.
        q.push(Bytes::from_static(b"hi"));
        w.block_after = usize::MAX;
        assert!(q.write_to(&mut w).unwrap());
        assert_eq!(w.got, b"abcdefghi");
        assert!(q.is_empty());
        assert!(matches!(&q.frames, Frames::Many(v) if v.capacity() == 0));
    }

    #[test]
    fn a_slow_reader_gets_every_byte_in_order_and_the_vector_stays_bounded() {
        // Frames of 1 to 7 bytes, pushed while the socket takes 5 bytes a
        // call and blocks every other call.
        let mut q = OutQueue::default();
        let mut want = Vec::new();
        let mut w = Stepper { got: vec![], cap: 5, calls: 0, block_after: 0 };
        let mut most = 0;
        for i in 0..2_000u32 {
            let f: Vec<u8> = (0..(i % 7 + 1)).map(|k| (i + k) as u8).collect();
            want.extend_from_slice(&f);
            q.push(Bytes::from(f));
            w.calls = 0;
            w.block_after = usize::from(i % 2 == 0);
            let _ = q.write_to(&mut w).unwrap();
            if let Frames::Many(v) = &q.frames {
                most = most.max(v.len());
                // Written frames are at most half the vector (and one more
                // written since the last drain).
                assert!(q.start as usize * 2 <= v.len() + 1);
            }
        }
        w.block_after = usize::MAX;
        assert!(q.write_to(&mut w).unwrap());
        assert_eq!(w.got, want);
        assert!(most > 100, "the reader fell behind: {most} frames queued at most");
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
    fn clearing_an_unwritten_queue_empties_it() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abc"));
        q.push(Bytes::from_static(b"def"));
        q.clear();
        assert!(q.is_empty());
        q.push(Bytes::from_static(b"x"));
        let mut w = Stepper { got: vec![], cap: 8, calls: 0, block_after: usize::MAX };
        assert!(q.write_to(&mut w).unwrap());
        assert_eq!(w.got, b"x");
    }

    #[test]
    fn the_queue_is_no_bigger_than_before_the_inline_frame() {
        // A connection's slab slot holds one; idle memory counts it.
        assert_eq!(std::mem::size_of::<OutQueue>(), 48);
    }
}
