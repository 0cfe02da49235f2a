//! Giving freed heap back to the system once the server goes quiet.
//!
//! glibc keeps what the program frees: a burst of writes (a login storm,
//! an import) leaves its garbage (sled's replaced node copies, a dropped
//! batch's buffers) spread through the heap, and the resident memory stays
//! at the burst's height for as long as the server runs. `malloc_trim(0)`
//! hands every free page back. It locks each allocator arena while it
//! walks it, so it runs only in a quiet second: after a second with writes
//! comes one without (the burst is over), or once a minute while nothing
//! is written (connections that came and went). The commit thread asks
//! once a second; the flushes (by any thread) are the writes.

use std::time::{Duration, Instant};

/// While nothing is written, the heap is trimmed at most this often.
const QUIET_EVERY: Duration = Duration::from_secs(60);

/// When to trim: asked once a second with whether that second flushed.
#[derive(Debug)]
pub struct Trim {
    /// Writes since the last trim.
    wrote: bool,
    last: Instant,
}

impl Trim {
    /// Nothing to give back yet.
    pub fn new(now: Instant) -> Trim {
        Trim { wrote: false, last: now }
    }

    /// Whether to trim now, given whether the second that ended at `now`
    /// flushed anything; true at most once per quiet spell.
    pub fn due(&mut self, flushed: bool, now: Instant) -> bool {
        if flushed {
            self.wrote = true;
            return false;
        }
        if !self.wrote && now.duration_since(self.last) < QUIET_EVERY {
            return false;
        }
        self.wrote = false;
        self.last = now;
        true
    }
}

/// Returns the heap's free pages to the system; true if any went (some
/// quiet seconds find none to give).
pub fn heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks and releases the allocator's own
        // free lists, under its locks; 0 keeps no padding.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_trimmed_once_in_its_first_quiet_second() {
        let t0 = Instant::now();
        let mut t = Trim::new(t0);
        let s = |n| t0 + Duration::from_secs(n);
        assert!(!t.due(false, s(1)), "nothing written, not a minute yet");
        assert!(!t.due(true, s(2)), "a busy second");
        assert!(!t.due(true, s(3)), "still busy");
        assert!(t.due(false, s(4)), "the first quiet second");
        assert!(!t.due(false, s(5)), "already trimmed");
        assert!(!t.due(true, s(6)));
        assert!(t.due(false, s(7)), "the next burst");
    }

    #[test]
    fn a_quiet_server_is_trimmed_once_a_minute() {
        let t0 = Instant::now();
        let mut t = Trim::new(t0);
        assert!(!t.due(false, t0 + Duration::from_secs(59)));
        assert!(t.due(false, t0 + QUIET_EVERY));
        assert!(!t.due(false, t0 + QUIET_EVERY + Duration::from_secs(1)));
        assert!(t.due(false, t0 + QUIET_EVERY * 2));
    }

    #[test]
    fn trimming_the_heap_frees_what_was_freed() {
        // Small blocks, three of every four freed: holes of whole pages
        // below blocks still in use, which only a trim returns.
        let mut blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; 4000]).collect();
        let mut i = 0;
        blocks.retain(|_| {
            i += 1;
            i % 4 == 0
        });
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(heap(), "60 MB of holes and nothing returned");
        }
        drop(blocks);
    }
}
