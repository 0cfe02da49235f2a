//! What the harness reads from (and asks of) the operating system.
//!
//! Owns: the server's CPU time, run-queue wait and RSS from /proc, the
//! harness's own CPU time from getrusage (the whole process) and
//! clock_gettime (one thread), and raising the open-files limit. Linux
//! only.

use std::fs;

/// CPU seconds (user + system) that process `pid` has used so far.
pub fn proc_cpu_s(pid: u32) -> Result<f64, String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // The command name is in parentheses and may contain spaces: split after
    // the last ')'. Then field 3 (state) is index 0, utime (14) index 11.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64, String> {
        fields.get(i).and_then(|f| f.parse().ok()).ok_or_else(|| "malformed /proc stat".into())
    };
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(total as f64 / if hz > 0 { hz as f64 } else { 100.0 })
}

/// Seconds that the threads of process `pid` (those alive now) have spent
/// runnable but waiting for a core, summed: how much the scheduler, not
/// the work, held the server back. Steadier than a latency tail on a VM
/// with steal (BENCHMARKS.md, tenth session).
pub fn proc_runqueue_wait_s(pid: u32) -> Result<f64, String> {
    let dir = format!("/proc/{pid}/task");
    let tasks = fs::read_dir(&dir).map_err(|e| format!("cannot read {dir}: {e}"))?;
    let mut ns = 0;
    for task in tasks.flatten() {
        // A thread that exits meanwhile is skipped.
        if let Ok(text) = fs::read_to_string(task.path().join("schedstat")) {
            ns += schedstat_wait_ns(&text)?;
        }
    }
    Ok(ns as f64 / 1e9)
}

/// The run-queue wait (ns) of one `schedstat` line: "run wait timeslices".
fn schedstat_wait_ns(line: &str) -> Result<u64, String> {
    line.split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| format!("malformed schedstat: {line:?}"))
}

/// Resident set size of process `pid`, in KiB (VmRSS).
pub fn proc_rss_kib(pid: u32) -> Result<u64, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// CPU seconds (user + system) this process has used so far, all threads.
pub fn self_cpu_s() -> f64 {
    // SAFETY: getrusage only writes into the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU seconds the calling thread has used so far: a saturated event loop
/// shows as 100% here even when the process total is spread over threads.
pub fn thread_cpu_s() -> f64 {
    // SAFETY: clock_gettime only writes into the struct we hand it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Raises the soft open-files limit to at least `want` where it can: to the
/// hard limit, and past it when the process may (root, up to
/// `fs.nr_open`). Returns the new soft limit. Each client is one socket, so
/// the default 1024 caps a run early.
pub fn raise_nofile(want: u64) -> Result<u64, String> {
    // SAFETY: get/setrlimit only read and write the struct we hand them.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    if lim.rlim_max < want {
        let nr_open = fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(lim.rlim_max);
        let raised = libc::rlimit { rlim_cur: want.min(nr_open), rlim_max: want.min(nr_open) };
        // Refused without CAP_SYS_RESOURCE: fall back to the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
        }
        lim.rlim_cur = lim.rlim_max;
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_gives_its_second_field() {
        assert_eq!(schedstat_wait_ns("8214955 1207000 31\n"), Ok(1_207_000));
        assert!(schedstat_wait_ns("8214955\n").is_err());
        assert!(schedstat_wait_ns("a b c").is_err());
    }

    /// Spins this thread and two others on one core for 30 ms each, so
    /// that each waits for the others; then gives the thread its cores back.
    fn wait_on_one_core() {
        // SAFETY: an all-zero cpu_set_t is an empty set; sched_get/setaffinity
        // only read and write the set handed to them, for this thread (0).
        unsafe {
            let size = std::mem::size_of::<libc::cpu_set_t>();
            let mut all: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(libc::sched_getaffinity(0, size, &mut all), 0);
            let cpu = (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &all)).unwrap();
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            assert_eq!(libc::sched_setaffinity(0, size, &one), 0);
            let spin = || {
                let t = std::time::Instant::now();
                while t.elapsed() < std::time::Duration::from_millis(30) {}
            };
            // Threads inherit the one-core mask.
            let others: Vec<_> = (0..2).map(|_| std::thread::spawn(spin)).collect();
            spin();
            others.into_iter().for_each(|t| t.join().unwrap());
            assert_eq!(libc::sched_setaffinity(0, size, &all), 0);
        }
    }

    #[test]
    fn this_process_has_a_run_queue_wait() {
        wait_on_one_core();
        // The process's sum covers every thread, this one included, and the
        // counters only grow: it is at least this thread's own wait, read
        // just before (in seconds, as the sum is), and that is not zero.
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let own = fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap();
        let own = schedstat_wait_ns(&own).unwrap() as f64 / 1e9;
        assert!(own > 0.0, "this thread never waited for its core");
        let wait = proc_runqueue_wait_s(std::process::id()).unwrap();
        assert!(wait >= own, "the process waited {wait} s, this thread alone {own} s");
        assert!(proc_runqueue_wait_s(u32::MAX).is_err());
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(proc_cpu_s(pid).unwrap() >= 0.0);
        assert!(proc_rss_kib(pid).unwrap() > 0);
        assert!(self_cpu_s() >= 0.0);
        assert!(raise_nofile(64).unwrap() >= 64);
        assert!(thread_cpu_s() >= 0.0);
        assert!(proc_cpu_s(u32::MAX).is_err());
    }
}
