//! The per-connection (and per-token) rate limit: a token bucket over
//! frames, plus the count of refusals that decides the 1008 close.

use std::time::{Duration, Instant};

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
    /// Too many refusals: refuse this frame (retry after this many ms),
    /// then close with 1008.
    Abuse(u64),
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
        let ms = ((1.0 - self.tokens) / rate as f64 * 1000.0).ceil() as u64;
        if self.refused >= burst {
            return Err(Limited::Abuse(ms));
        }
        Err(Limited::Refuse(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
