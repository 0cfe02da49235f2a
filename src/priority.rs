//! Which threads yield to which: the scheduling class of each of the
//! server's own threads. The reactors and the commit thread carry the
//! acks, so they take the core back at once when they wake; the work
//! behind them (search indexing, the unread tallies) runs at nice 19 and
//! waits. The systemd unit lets these calls through its seccomp filter
//! (tests/api.rs checks it).

/// The shortest scheduler slice Linux accepts (EEVDF, since 6.12): 100 µs.
const SHORT_SLICE_NS: u64 = 100_000;

/// Gives the calling thread the shortest slice. Under EEVDF a thread keeps
/// the core for its slice (1.4 ms on this 2-core VM by default) even when
/// a thread with an earlier deadline wakes, unless the waking thread's
/// slice is shorter: then it preempts at once. So a reactor with a short
/// slice no longer waits up to a whole slice behind the search indexer
/// when a socket or a flush wakes it, and the commit thread waits a third
/// less for the core. At 10,000 msg/s (BENCHMARKS.md, fifth session) ack
/// p50 and p99 fell in every round with search off; with the index on,
/// p50 fell in one set of rounds and stayed within the noise in another.
/// Older kernels ignore the slice or refuse the call; either way the
/// thread keeps its normal scheduling.
pub fn short_slice() {
    // struct sched_attr, version 1 (48 bytes), from linux/sched/types.h.
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    // SAFETY: plain system call on the calling thread (who 0).
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime: SHORT_SLICE_NS,
        deadline: 0,
        period: 0,
    };
    // SAFETY: sched_setattr(0, attr, 0) reads `attr`, which lives across
    // the call and has the size it claims; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc != 0 {
        log::debug!("short scheduler slice refused: {}", std::io::Error::last_os_error());
    }
}

/// Puts the calling thread (and the threads it starts) at nice 19: for
/// work behind the reactors that may take a lock a reactor also takes, so
/// it must never be starved outright, which rules out the idle class: a
/// thread that class starves can be holding a lock a reactor then waits
/// for (sled's, the directory's). At 10,000 msg/s on one core acks stalled
/// behind it (p99 185 and 1,014 ms in two of three runs, against 9-54 ms
/// at nice 19; again 242 ms in one of two runs after sled's global lock
/// was gone).
pub fn low_priority() {
    // SAFETY: plain system call on the calling thread (who 0); failure
    // only leaves the normal priority.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    if rc != 0 {
        // Raising one's own nice needs no privilege: only a seccomp filter
        // (a unit that denies @resources) refuses it.
        log::warn!(
            "nice 19 refused for a background thread ({}): it competes with the event loops",
            std::io::Error::last_os_error()
        );
    }
}

/// [`low_priority`], and the calling thread's disk writes (the search
/// index's fsyncs) in the idle I/O class, where the I/O scheduler honours
/// classes.
pub fn background() {
    low_priority();
    // IOPRIO_WHO_PROCESS (1) with 0 is this thread; class IDLE (3) in the
    // top bits.
    // SAFETY: plain system call with integer arguments.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, 3 << 13) };
    if rc != 0 {
        log::debug!("idle I/O priority refused: {}", std::io::Error::last_os_error());
    }
}
