//! What this machine bills a thread for waking up and for one durable
//! write, outside chinwag: the floor under a stored message's cost.
//!
//! A delivered message costs chinwag two wake-ups from idle (its frame
//! arrives; its flush's write completes) where a server that stores
//! nothing has one, plus the synced write itself. (Until the sixteenth
//! session it also cost two hand-offs between threads, to the commit
//! thread and back.) On a VM a wake-up from idle is far dearer than a
//! hand-off, and no code of ours is in it, so it is measured here alone:
//! plain threads, a pipe, a file.
//!
//! `cargo bench --bench wake` (needs cores 0 and 1; prints CPU µs per event).

use std::{
    fs::OpenOptions,
    io::{Read, Write},
    os::{fd::AsRawFd, unix::fs::FileExt, unix::net::UnixStream},
    thread,
    time::{Duration, Instant},
};

/// Whether this process may run on cores 0 and 1 (a `taskset` may forbid
/// one, and then a pin to it fails and both threads share a core).
fn has_cores_0_and_1() -> bool {
    // SAFETY: a zeroed cpu_set_t is the empty set; sched_getaffinity fills
    // it, and CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        libc::sched_getaffinity(0, size, &mut set) == 0
            && libc::CPU_ISSET(0, &set)
            && libc::CPU_ISSET(1, &set)
    }
}

/// Pins the calling thread to `core`.
fn pin(core: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and
    // sched_setaffinity only read and write that local value.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime fills the zeroed timespec it is given.
    let t = unsafe {
        let mut t: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t);
        t
    };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A thread on core 0 blocks on a socket; another, on core 1, writes a
/// byte every `gap`, `n` times. CPU µs the sleeper is billed per wake-up.
fn wake_from_idle(n: u32, gap: Duration) -> f64 {
    let (mut rx, mut tx) = UnixStream::pair().expect("socket pair");
    let writer = thread::spawn(move || {
        pin(1);
        for _ in 0..n {
            thread::sleep(gap);
            tx.write_all(b"x").expect("write");
        }
    });
    pin(0);
    let start = thread_cpu();
    let mut b = [0u8; 1];
    for _ in 0..n {
        rx.read_exact(&mut b).expect("read");
    }
    let used = thread_cpu() - start;
    writer.join().expect("writer");
    used.as_secs_f64() * 1e6 / f64::from(n)
}

/// Two threads on core 0 pass a byte back and forth `n` times: CPU µs per
/// hand-off (one thread wakes the other on a busy core, no idle between).
fn hand_off(n: u32) -> f64 {
    let (mut a, mut b) = UnixStream::pair().expect("socket pair");
    let other = thread::spawn(move || {
        pin(0);
        let start = thread_cpu();
        let mut x = [0u8; 1];
        for _ in 0..n {
            b.read_exact(&mut x).expect("read");
            b.write_all(&x).expect("write");
        }
        thread_cpu() - start
    });
    pin(0);
    let start = thread_cpu();
    let mut x = [0u8; 1];
    for _ in 0..n {
        a.write_all(b"x").expect("write");
        a.read_exact(&mut x).expect("read");
    }
    let used = thread_cpu() - start + other.join().expect("other");
    used.as_secs_f64() * 1e6 / f64::from(2 * n)
}

/// On core 0, `n` times: a 512-byte `pwrite` at the log's end and a
/// `sync_file_range` that waits for it, as sled's flush does. CPU µs per
/// write, with the wall time per write beside it.
fn durable_write(n: u32) -> (f64, f64) {
    pin(0);
    let dir = std::env::var("WAKE_DIR").unwrap_or_else(|_| ".".into());
    let path = format!("{dir}/wake-bench.{}", std::process::id());
    let f = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path);
    let f = f.expect("a file in WAKE_DIR (default: the current folder)");
    let buf = [7u8; 512];
    let wall = Instant::now();
    let start = thread_cpu();
    for i in 0..u64::from(n) {
        let at = i * 512;
        f.write_all_at(&buf, at).expect("pwrite");
        // SAFETY: a plain syscall on an open descriptor of ours.
        let r = unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                at as i64,
                512,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )
        };
        assert_eq!(r, 0, "sync_file_range");
    }
    let used = thread_cpu() - start;
    let wall = wall.elapsed();
    drop(std::fs::remove_file(&path));
    let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(n);
    (per(used), per(wall))
}

fn main() {
    // `cargo test --benches` runs this with no arguments besides flags:
    // only `cargo bench` (which passes --bench) measures.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !has_cores_0_and_1() {
        println!("wake: needs cores 0 and 1 (run it without taskset)");
        return;
    }
    for gap_ms in [1, 5] {
        let us = wake_from_idle(2_000, Duration::from_millis(gap_ms));
        println!("wake from idle, a byte every {gap_ms} ms:   {us:6.2} µs CPU per wake");
    }
    println!("hand-off between two threads on one core: {:6.2} µs CPU each", hand_off(50_000));
    let (cpu, wall) = durable_write(2_000);
    println!("512 B pwrite + sync_file_range:           {cpu:6.2} µs CPU ({wall:.0} µs wall) each");
}
