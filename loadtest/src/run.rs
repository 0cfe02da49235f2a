//! A run as the main thread sees it.
//!
//! Owns: starting the client threads, waiting for setup, then for each step
//! (one for most scenarios, several for `sweep`) publishing its timeline,
//! sampling server and harness CPU and server memory at the edges of its
//! measured window, printing a progress line every second, and collecting
//! every thread's numbers when the step's drain ends. What the next step is,
//! and whether there is one, is the scenario's call.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::driver::{self, Plan, Shared, StepSpec, Timeline};
use crate::stats::Stats;
use crate::sys;

/// Settings of the run itself rather than of the load.
pub struct Opts {
    /// Server processes to sample CPU and RSS from (summed: a cluster's nodes).
    pub server_pids: Vec<u32>,
    /// Give up if not every client has joined by then.
    pub setup_timeout: Duration,
}

/// CPU seconds of the servers (if watched) and of the harness at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    /// Sum over the watched servers; `None` if one could not be read.
    pub server_cpu: Option<f64>,
    /// Run-queue wait of the servers' threads, summed; `None` as above.
    pub server_wait: Option<f64>,
    /// The whole harness process.
    pub harness_cpu: f64,
}

/// CPU seconds of the servers and the harness now.
pub fn snapshot(pids: &[u32]) -> Snapshot {
    Snapshot {
        server_cpu: sum_over(pids, sys::proc_cpu_s),
        server_wait: sum_over(pids, sys::proc_runqueue_wait_s),
        harness_cpu: sys::self_cpu_s(),
    }
}

/// `read` summed over `pids`; `None` without pids or if one failed.
fn sum_over(pids: &[u32], read: fn(u32) -> Result<f64, String>) -> Option<f64> {
    (!pids.is_empty()).then(|| pids.iter().map(|&p| read(p).ok()).sum::<Option<f64>>()).flatten()
}

/// Summed RSS of the servers, KiB.
pub fn server_rss(pids: &[u32]) -> Option<u64> {
    (!pids.is_empty()).then(|| pids.iter().map(|&p| sys::proc_rss_kib(p).ok()).sum()).flatten()
}

/// What one step measured.
pub struct StepResult {
    /// What was asked for.
    pub spec: StepSpec,
    /// Every thread's numbers, merged.
    pub stats: Stats,
    /// At the start and the end of the measured window.
    pub window: (Snapshot, Snapshot),
    /// When the step started (before its warm-up): for costs that run on
    /// past the window (search indexing), measured from the first send.
    pub start: Snapshot,
    /// Server RSS (KiB) at the start and the end of the window.
    pub rss: (Option<u64>, Option<u64>),
}

impl StepResult {
    /// Length of the measured window, seconds.
    pub fn window_s(&self) -> f64 {
        self.spec.duration.as_secs_f64()
    }

    /// Server CPU seconds over the window.
    pub fn server_cpu_s(&self) -> Option<f64> {
        Some(self.window.1.server_cpu? - self.window.0.server_cpu?)
    }

    /// Seconds the server's threads waited for a core over the window (a
    /// thread that exited inside it takes its wait along: never below 0).
    pub fn server_wait_s(&self) -> Option<f64> {
        Some((self.window.1.server_wait? - self.window.0.server_wait?).max(0.0))
    }

    /// Harness CPU seconds over the window (all threads).
    pub fn harness_cpu_s(&self) -> f64 {
        self.window.1.harness_cpu - self.window.0.harness_cpu
    }
}

/// What the main thread saw of a run.
pub struct Run {
    /// Harness start to every client joined.
    pub setup: Duration,
    /// The steps, in order.
    pub steps: Vec<StepResult>,
}

/// Runs `plan`: setup, then the steps `next` asks for (it sees the results
/// so far; `None` ends the run). `Err` on setup failure, timeout or abort.
pub fn execute(
    plan: &Plan,
    opts: &Opts,
    next: &mut dyn FnMut(&[StepResult]) -> Option<StepSpec>,
) -> Result<Run, String> {
    let shared = Shared::new();
    let outcome = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for tid in 0..plan.threads {
            let shared = &shared;
            let spawned = std::thread::Builder::new()
                .name(format!("load-{tid}"))
                .spawn_scoped(scope, move || driver::run(tid, plan, shared));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => shared.fail(format!("cannot start a thread: {e}")),
            }
        }
        let outcome = conduct(plan, opts, &shared, next);
        shared.done.store(true, Relaxed);
        for h in handles {
            if h.join().is_err() {
                shared.fail("a client thread panicked".into());
            }
        }
        outcome
    });
    if let Ok(Some(why)) = shared.fatal.lock().map(|f| f.clone()) {
        return Err(why);
    }
    outcome
}

/// The main thread's part of a run, between starting and joining the threads.
fn conduct(
    plan: &Plan,
    opts: &Opts,
    shared: &Shared,
    next: &mut dyn FnMut(&[StepResult]) -> Option<StepSpec>,
) -> Result<Run, String> {
    let setup = wait_setup(plan, opts, shared)?;
    let mut steps = Vec::new();
    while let Some(spec) = next(&steps) {
        let tl = Timeline::new(&spec, shared.now_ns());
        if let Ok(mut s) = shared.step.lock() {
            *s = Some(tl);
        }
        shared.step_gen.fetch_add(1, Relaxed);
        let start = snapshot(&opts.server_pids);
        let (window, rss) = watch_step(plan, opts, shared, tl)?;
        let stats = collect(plan, shared)?;
        steps.push(StepResult { spec, stats, window, start, rss });
    }
    Ok(Run { setup, steps })
}

/// The first abort reason, as an error.
fn aborted(shared: &Shared) -> String {
    shared.fatal.lock().ok().and_then(|f| f.clone()).unwrap_or_else(|| "run aborted".into())
}

/// Waits for every client to join, with a progress line every second.
fn wait_setup(plan: &Plan, opts: &Opts, shared: &Shared) -> Result<Duration, String> {
    let conns = plan.conns as u64;
    let mut progress = Progress::default();
    loop {
        if shared.abort.load(Relaxed) {
            return Err(aborted(shared));
        }
        let now = shared.now_ns();
        if shared.ready.load(Relaxed) >= conns {
            return Ok(Duration::from_nanos(now));
        }
        if now > opts.setup_timeout.as_nanos() as u64 {
            let why = format!(
                "setup timed out: {} of {conns} clients joined after {:?}",
                shared.ready.load(Relaxed),
                opts.setup_timeout
            );
            shared.fail(why.clone());
            return Err(why);
        }
        progress.maybe_print(plan, shared, now, "setup");
        std::thread::sleep(Duration::from_millis(5));
    }
}

type Watched = ((Snapshot, Snapshot), (Option<u64>, Option<u64>));

/// Follows one step to its drain end: snapshots at the window's edges, a
/// progress line every second.
fn watch_step(plan: &Plan, opts: &Opts, shared: &Shared, tl: Timeline) -> Result<Watched, String> {
    let pids = &opts.server_pids;
    let (mut first, mut last) = (None, None);
    let (mut rss_first, mut rss_last) = (None, None);
    let mut progress = Progress::default();
    loop {
        if shared.abort.load(Relaxed) {
            return Err(aborted(shared));
        }
        let now = shared.now_ns();
        if first.is_none() && now >= tl.warm_end {
            first = Some(snapshot(pids));
            rss_first = server_rss(pids);
        }
        if last.is_none() && now >= tl.end {
            last = Some(snapshot(pids));
            rss_last = server_rss(pids);
        }
        if now >= tl.drain_end {
            break;
        }
        let phase = if now < tl.warm_end {
            "warmup"
        } else if now < tl.end && plan.publishers + plan.readers == 0 {
            "hold"
        } else if now < tl.end {
            "measure"
        } else {
            "drain"
        };
        progress.maybe_print(plan, shared, now, phase);
        // Wake for whichever comes first: the next edge or progress line.
        let mut wake = progress.next.min(now + 20_000_000);
        for edge in [tl.warm_end, tl.end, tl.drain_end] {
            if edge > now {
                wake = wake.min(edge);
            }
        }
        std::thread::sleep(Duration::from_nanos(wake.saturating_sub(now)));
    }
    let first = first.unwrap_or_default();
    Ok(((first, last.unwrap_or(first)), (rss_first, rss_last)))
}

/// Waits for every thread's numbers for the step and merges them.
fn collect(plan: &Plan, shared: &Shared) -> Result<Stats, String> {
    let deadline = shared.now_ns() + 10_000_000_000;
    loop {
        if shared.abort.load(Relaxed) {
            return Err(aborted(shared));
        }
        let parts = match shared.finished.lock() {
            Ok(mut f) if f.len() >= plan.threads => std::mem::take(&mut *f),
            Ok(_) => Vec::new(),
            Err(_) => return Err("a client thread panicked".into()),
        };
        if !parts.is_empty() {
            let mut total = Stats::default();
            for part in parts {
                total.merge(part)?;
            }
            return Ok(total);
        }
        if shared.now_ns() > deadline {
            return Err("client threads did not finish the step within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The once-a-second progress line on stderr.
#[derive(Default)]
struct Progress {
    /// When the next line is due (ns since the epoch).
    next: u64,
    /// (sent, delivered) at the last line.
    prev: (u64, u64),
}

impl Progress {
    fn maybe_print(&mut self, plan: &Plan, shared: &Shared, now: u64, phase: &str) {
        if self.next == 0 {
            self.next = now - now % 1_000_000_000 + 1_000_000_000;
            return;
        }
        if now < self.next {
            return;
        }
        self.next += 1_000_000_000;
        let live = &shared.live;
        let cur = (live.sent.load(Relaxed), live.delivered.load(Relaxed));
        let mut line = format!(
            "[{:6.1}s] {phase:<7} joined {}/{}  sent {} (+{})  acked {}  delivered {} (+{}/s)  \
             errors {}  disconnects {}",
            now as f64 / 1e9,
            shared.ready.load(Relaxed),
            plan.conns,
            cur.0,
            cur.0 - self.prev.0,
            live.acked.load(Relaxed),
            cur.1,
            cur.1 - self.prev.1,
            live.errors.load(Relaxed),
            live.disconnects.load(Relaxed),
        );
        if plan.churn.is_some() {
            line += &format!("  reconnects {}", live.reconnects.load(Relaxed));
        }
        if plan.readers > 0 {
            line += &format!("  history {}", live.history.load(Relaxed));
        }
        eprintln!("{line}");
        self.prev = cur;
    }
}
