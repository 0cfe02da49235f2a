//! What the search index costs per message: the indexing thread's work
//! (reading the events back from sled, tantivy's indexing, its commits
//! and merges) for messages arriving as at 10,000 msg/s in 100 rooms.
//! Timed in CPU seconds of the whole process, merge threads included,
//! since on a server that shares one core the CPU is what the acks lose.

use chinwag::{search::Search, storage::Storage};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

const ROOMS: u64 = 100;
const PER_ROOM: u64 = 200;
/// Events per room the live thread sees per poll at 10,000 msg/s (a poll
/// every 250 ms, 100 rooms).
const PER_POLL: u64 = 25;

/// CPU time of this process so far (user and system, every thread).
fn cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct,
    // which getrusage then fills.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Made-up words, as the `ingest` scenario sends.
fn text(n: u64) -> String {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..4 + n % 12)
        .map(|_| {
            x ^= x >> 29;
            x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            format!("w{}", (x >> 40) % 20_000 / (1 + (x >> 33) % 64))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn indexing(c: &mut Criterion) {
    let data = tempfile::tempdir().unwrap();
    let storage = Storage::open(data.path()).unwrap();
    for seq in 1..=PER_ROOM {
        for r in 0..ROOMS {
            let n = seq * ROOMS + r;
            storage
                .append(&format!("room{r}"), seq, 1_732_250_000_000 + n, "alice", &text(n))
                .unwrap();
        }
    }
    storage.flush().unwrap();
    let rooms: Vec<String> = (0..ROOMS).map(|r| format!("room{r}")).collect();
    let mut g = c.benchmark_group("search_index");
    g.sample_size(10);
    g.throughput(Throughput::Elements(ROOMS * PER_ROOM));
    // At 10,000 msg/s: a commit every 20,000 events (what the server does
    // since it also searches the uncommitted ones from memory), every
    // 10,000 (a commit a second, before that), every 2,000 (before that).
    let variants = [
        ("commit_each_20000_cpu", 20_000),
        ("commit_each_1s_cpu", 10_000),
        ("commit_each_2000_cpu", 2_000),
    ];
    for (name, per_commit) in variants {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().unwrap();
                    let search = Search::open(dir.path()).unwrap();
                    let c0 = cpu();
                    search.replay_live(&storage, &rooms, PER_POLL, per_commit).unwrap();
                    spent += cpu() - c0;
                }
                spent
            })
        });
    }
    g.finish();
}

criterion_group!(benches, indexing);
criterion_main!(benches);
