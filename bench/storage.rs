//! sled costs: appending messages with one flush per batch (group commit:
//! how the flush cost spreads over a batch) and reading history pages.

use chinwag::{storage::Storage, wire::Cursor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn group_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    let text = "x".repeat(100);
    let mut seq = 0;
    let mut g = c.benchmark_group("append_then_flush");
    g.sample_size(20);
    for batch in [1u64, 16, 256] {
        g.throughput(Throughput::Elements(batch));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| {
                for _ in 0..batch {
                    seq += 1;
                    s.append("general", seq, 1_732_250_000_000, "alice", &text).unwrap();
                }
                s.flush().unwrap();
            })
        });
    }
    g.finish();
}

fn history(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    let text = "x".repeat(100);
    for seq in 1..=10_000 {
        s.append("general", seq, 1_732_250_000_000, "alice", &text).unwrap();
    }
    s.flush().unwrap();
    let mut g = c.benchmark_group("history");
    g.throughput(Throughput::Elements(50));
    g.bench_function("latest_50", |b| b.iter(|| s.history("general", Cursor::Latest, 50).unwrap()));
    g.bench_function("before_5000_50", |b| {
        b.iter(|| s.history("general", Cursor::Before(5000), 50).unwrap())
    });
    g.bench_function("after_5000_50", |b| {
        b.iter(|| s.history("general", Cursor::After(5000), 50).unwrap())
    });
    g.finish();
}

criterion_group!(benches, group_commit, history);
criterion_main!(benches);
