//! The per-connection (and per-token) rate limit: a token bucket over
//! frames, plus the count of refusals that decides the 1008 close.

use super::tick;
use std::time::Instant;

/// The window over which refusals are counted, in ms.
const WINDOW_MS: u64 = 10_000;

/// A token bucket over client frames, plus the count of refusals that
/// decides the 1008 close. 24 bytes: one sits in every connection's slot,
/// so times are milliseconds from [`tick`]'s epoch, not `Instant`s.
#[derive(Debug)]
pub struct Bucket {
    tokens: f32,
    /// Refusals in the current window.
    refused: u32,
    /// When tokens were last taken (ms).
    last: u64,
    /// When the current window of refusals started (ms).
    window: u64,
}

/// Why a frame was not allowed by the bucket.
#[derive(Debug, PartialEq, Eq)]
pub enum Limited {
    /// Refuse this frame; retry after this many ms.
    Refuse(u64),
    /// Too many refusals: refuse this frame (retry after this many ms),
    /// then close with 1008.
    Abuse(u64),
}

impl Bucket {
    /// A full bucket.
    pub fn new(burst: u32, now: Instant) -> Bucket {
        let now = tick::ms(now);
        Bucket { tokens: burst as f32, last: now, refused: 0, window: now }
    }

    /// Whether the bucket is not full again yet (its state still matters).
    pub fn busy(&self, now: Instant, rate: u32, burst: u32) -> bool {
        let dt = tick::ms(now).saturating_sub(self.last) as f64 / 1000.0;
        f64::from(self.tokens) + dt * rate as f64 <= burst as f64 - 1.0
    }

    /// Takes one token for a frame.
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> Result<(), Limited> {
        let now = tick::ms(now);
        let dt = now.saturating_sub(self.last) as f64 / 1000.0;
        self.last = now;
        let tokens = (f64::from(self.tokens) + dt * rate as f64).min(burst as f64);
        if tokens >= 1.0 {
            self.tokens = (tokens - 1.0) as f32;
            return Ok(());
        }
        self.tokens = tokens as f32;
        if now.saturating_sub(self.window) > WINDOW_MS {
            self.window = now;
            self.refused = 0;
        }
        self.refused += 1;
        let ms = ((1.0 - tokens) / rate as f64 * 1000.0).ceil() as u64;
        if self.refused >= burst {
            return Err(Limited::Abuse(ms));
        }
        Err(Limited::Refuse(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refuses_then_abuses() {
        let t0 = Instant::now();
        let mut b = Bucket::new(3, t0);
        for _ in 0..3 {
            assert_eq!(b.take(1, 3, t0), Ok(()));
        }
        assert!(matches!(b.take(1, 3, t0), Err(Limited::Refuse(ms)) if ms > 0 && ms <= 1000));
        assert!(matches!(b.take(1, 3, t0), Err(Limited::Refuse(_))));
        assert!(matches!(b.take(1, 3, t0), Err(Limited::Abuse(ms)) if ms > 0));
        assert_eq!(b.take(1, 3, t0 + Duration::from_secs(2)), Ok(()));
    }
}
