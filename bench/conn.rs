//! The rate check every client frame passes (`Bucket::take`), against the
//! bucket it replaced (`Instant`s and an `f64`, 48 bytes where the new one
//! is 24), so that a smaller connection slot is shown not to cost the hot
//! path time.

use chinwag::Bucket;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::time::{Duration, Instant};

/// The bucket as it was before the ninth session (a copy, for comparison).
struct OldBucket {
    tokens: f64,
    last: Instant,
    refused: u32,
    window: Instant,
}

impl OldBucket {
    fn take(&mut self, rate: u32, burst: u32, now: Instant) -> Result<(), u64> {
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
        Err(((1.0 - self.tokens) / rate as f64 * 1000.0).ceil() as u64)
    }
}

fn bucket(c: &mut Criterion) {
    let mut g = c.benchmark_group("bucket");
    // A frame every 50 µs against the server's default-like limits: always
    // allowed, as for a well-behaved client.
    let step = Duration::from_micros(50);
    g.bench_function("take", |b| {
        let mut now = Instant::now();
        let mut bucket = Bucket::new(200, now);
        b.iter(|| {
            now += step;
            black_box(bucket.take(black_box(100_000), 200, now)).ok();
        })
    });
    g.bench_function("take_before", |b| {
        let mut now = Instant::now();
        let mut bucket = OldBucket { tokens: 200.0, last: now, refused: 0, window: now };
        b.iter(|| {
            now += step;
            black_box(bucket.take(black_box(100_000), 200, now)).ok();
        })
    });
    g.finish();
}

criterion_group!(benches, bucket);
criterion_main!(benches);
