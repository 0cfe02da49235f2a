//! Compact timestamps for state kept per connection: an `Instant` is 16
//! bytes, and a connection kept five of them (a fifth of its slab slot).
//! These count milliseconds from one process-wide epoch instead.

use std::{
    sync::LazyLock,
    time::{Duration, Instant},
};

/// The process's clock epoch: the first time any tick is taken (the
/// server takes one at its start).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds from the epoch to `t` (0 for an earlier `t`).
pub fn ms(t: Instant) -> u64 {
    t.saturating_duration_since(*EPOCH).as_millis() as u64
}

/// A millisecond tick that wraps after 49 days: for a timer whose start is
/// always less than that ago (a connection's last read, its last ping,
/// its HTTP request's start), since the sweep acts on them within a
/// minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick(u32);

impl Tick {
    /// The tick of `t`.
    pub fn at(t: Instant) -> Tick {
        Tick(ms(t) as u32)
    }

    /// Time from this tick to `now` (wrapping, so exact while under 49 days).
    pub fn elapsed(self, now: Instant) -> Duration {
        Tick::at(now).since(self)
    }

    /// Time from `then` to this tick, across the wrap.
    fn since(self, then: Tick) -> Duration {
        Duration::from_millis(u64::from(self.0.wrapping_sub(then.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_measures_elapsed_time_to_the_millisecond() {
        let t0 = Instant::now();
        let tick = Tick::at(t0);
        assert_eq!(tick.elapsed(t0), Duration::ZERO);
        assert_eq!(tick.elapsed(t0 + Duration::from_millis(59_999)), Duration::from_millis(59_999));
        assert!(ms(t0 + Duration::from_secs(3)) >= 3_000);
    }

    #[test]
    fn a_tick_is_exact_across_the_wrap() {
        let (then, now) = (Tick(u32::MAX - 5), Tick(10));
        assert_eq!(now.since(then), Duration::from_millis(16));
    }
}
