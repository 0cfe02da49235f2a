//! Which seqs of its room a client has seen.
//!
//! Owns: [`Window`], the cheap per-connection check (duplicate, late, new)
//! used for every delivery, and [`SeqSet`], the complete record a `storm`
//! client keeps across its sessions so that gaps can be counted at the end.

/// A sliding window over the last 128 seqs of one connection: enough to tell
/// a duplicate from a late first delivery without keeping every seq.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    /// Highest seq received.
    last: u64,
    /// Bit i set: seq `last - i` was received.
    seen: u128,
}

/// What one delivery was, as far as a [`Window`] can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Above everything seen so far: the normal case.
    New,
    /// Not seen before, but below the highest seq: out of order.
    Late,
    /// Seen before on this connection.
    Duplicate,
}

impl Window {
    /// A window that has seen everything up to `seq` (the room's seq when
    /// the connection was subscribed).
    pub fn starting_at(seq: u64) -> Window {
        Window { last: seq, seen: 1 }
    }

    /// Records `seq`.
    pub fn see(&mut self, seq: u64) -> Seen {
        if seq > self.last {
            let shift = seq - self.last;
            self.seen = if shift >= 128 { 0 } else { self.seen << shift } | 1;
            self.last = seq;
            return Seen::New;
        }
        let back = self.last - seq;
        if back < 128 {
            if self.seen & (1u128 << back) != 0 {
                return Seen::Duplicate;
            }
            self.seen |= 1u128 << back;
        }
        // Older than the window: cannot tell, count it as late.
        Seen::Late
    }
}

/// Every seq above `base` that a client has seen, over all its sessions.
#[derive(Clone, Debug)]
pub struct SeqSet {
    /// Seqs at or below this predate the client (its first `joined`).
    base: u64,
    /// Bit `s - base - 1` set: seq `s` was seen.
    bits: Vec<u64>,
    /// Every seq in `base..=upto` was seen.
    upto: u64,
}

impl SeqSet {
    /// An empty record for a client that joined when the room was at `base`.
    pub fn new(base: u64) -> SeqSet {
        SeqSet { base, bits: Vec::new(), upto: base }
    }

    /// The seq the client joined at.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The highest seq below which nothing is missing: what a reconnecting
    /// client asks for with `since` (a page still being fetched when the
    /// session dropped must be fetched again, so not the highest seq seen).
    pub fn contiguous(&self) -> u64 {
        self.upto
    }

    /// Records `seq`; false if it was already there (or predates the client).
    pub fn insert(&mut self, seq: u64) -> bool {
        if seq <= self.base {
            return false;
        }
        let i = (seq - self.base - 1) as usize;
        if i / 64 >= self.bits.len() {
            self.bits.resize(i / 64 + 1, 0);
        }
        let (word, bit) = (&mut self.bits[i / 64], 1u64 << (i % 64));
        if *word & bit != 0 {
            return false;
        }
        *word |= bit;
        while self.has(self.upto + 1) {
            self.upto += 1;
        }
        true
    }

    fn has(&self, seq: u64) -> bool {
        let i = (seq - self.base - 1) as usize;
        self.bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Seqs in `base+1..=last` seen, and the first few missing ones.
    pub fn coverage(&self, last: u64) -> (u64, Vec<u64>) {
        let mut seen = 0;
        let mut missing = Vec::new();
        for seq in self.base + 1..=last {
            if self.has(seq) {
                seen += 1;
            } else if missing.len() < 5 {
                missing.push(seq);
            }
        }
        (seen, missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_classifies() {
        let mut w = Window::starting_at(10);
        assert_eq!(w.see(10), Seen::Duplicate);
        assert_eq!(w.see(12), Seen::New);
        assert_eq!(w.see(11), Seen::Late);
        assert_eq!(w.see(11), Seen::Duplicate);
        assert_eq!(w.see(500), Seen::New);
        assert_eq!(w.see(12), Seen::Late);
    }

    #[test]
    fn seqset_counts_and_resumes() {
        let mut s = SeqSet::new(100);
        assert!(!s.insert(100));
        assert!(s.insert(101));
        assert!(s.insert(103));
        assert!(!s.insert(103));
        assert_eq!(s.contiguous(), 101);
        assert!(s.insert(102));
        assert_eq!(s.contiguous(), 103);
        assert!(s.insert(300));
        assert_eq!(s.coverage(300), (4, vec![104, 105, 106, 107, 108]));
        assert_eq!(s.coverage(100), (0, vec![]));
        assert_eq!(s.base(), 100);
    }
}
