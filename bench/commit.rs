//! The commit path: messages stored, flushed (a real sled flush, synced)
//! and their acks released into a loop's inbox, the loop sleeping until
//! they arrive. Flushed on the loop's own thread at the end of its turn
//! (what `src/durable.rs` does while flushes are quick) against handed to
//! the commit thread (what every loop did before, and does behind a slow
//! disk): the difference is the two wake-ups the hand-off costs, plus the
//! disk's noise. Turns of 1 message (a quiet server) and of 16 (a busy one).

use chinwag::CommitRig;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = CommitRig::new(dir.path()).unwrap();
    let mut g = c.benchmark_group("commit");
    g.sample_size(30);
    for n in [1usize, 16] {
        g.throughput(Throughput::Elements(n as u64));
        for (name, here) in [("loop_flushes", true), ("commit_thread_flushes", false)] {
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
                b.iter(|| rig.turn(n, here).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
