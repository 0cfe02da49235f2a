//! Liveness of the node's long-running threads (reactors, the commit
//! thread, the Redis publisher and subscriber): each beats while it turns,
//! and a guard marks it dead when it exits, a panic included. `/health` and
//! the systemd watchdog read it, so no thread dies or stalls silently.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

/// A thread silent this long is stalled.
pub const STALL_MS: u64 = 10_000;

#[derive(Debug)]
struct Slot {
    name: String,
    /// ms since `started` at its last beat.
    beat: AtomicU64,
    dead: AtomicBool,
}

/// Every watched thread, by slot.
#[derive(Debug)]
pub struct Alive {
    started: Instant,
    slots: Vec<Slot>,
    /// Set by the teardown: from then on a thread that exits is done, not
    /// dead (and says so at info, not as an error `journalctl -p err` shows).
    stopping: AtomicBool,
}

/// Marks its slot dead when dropped (the thread returned or unwound).
#[derive(Debug)]
pub struct Guard {
    alive: Arc<Alive>,
    slot: usize,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(s) = self.alive.slots.get(self.slot) {
            s.dead.store(true, Ordering::SeqCst);
            if self.alive.stopping.load(Ordering::SeqCst) {
                log::debug!("thread {} finished", s.name);
            } else {
                log::error!("thread {} stopped", s.name);
            }
        }
    }
}

impl Alive {
    /// One slot per name, all alive now.
    pub fn new(names: impl IntoIterator<Item = String>) -> Arc<Alive> {
        let slots = names
            .into_iter()
            .map(|name| Slot { name, beat: AtomicU64::new(0), dead: AtomicBool::new(false) })
            .collect();
        Arc::new(Alive { started: Instant::now(), slots, stopping: AtomicBool::new(false) })
    }

    /// The node is shutting down: threads that exit now are expected to.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// The slot named `name`, if any.
    pub fn slot(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name == name)
    }

    /// Slot `slot` is turning.
    pub fn beat(&self, slot: usize) {
        if let Some(s) = self.slots.get(slot) {
            let ms = self.started.elapsed().as_millis() as u64;
            s.beat.store(ms, Ordering::Relaxed);
        }
    }

    /// A guard for slot `slot`: keep it alive for as long as the thread runs.
    pub fn guard(self: &Arc<Self>, slot: usize) -> Guard {
        self.beat(slot);
        Guard { alive: self.clone(), slot }
    }

    /// The first thread that died, or has not beaten for [`STALL_MS`].
    pub fn failed(&self) -> Option<&str> {
        let now = self.started.elapsed().as_millis() as u64;
        self.slots
            .iter()
            .find(|s| {
                s.dead.load(Ordering::SeqCst)
                    || now.saturating_sub(s.beat.load(Ordering::Relaxed)) >= STALL_MS
            })
            .map(|s| s.name.as_str())
    }

    /// Whether the thread in slot `slot` died or stalled.
    pub fn is_failed(&self, slot: usize) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        self.slots.get(slot).is_some_and(|s| {
            s.dead.load(Ordering::SeqCst)
                || now.saturating_sub(s.beat.load(Ordering::Relaxed)) >= STALL_MS
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_guard_marks_its_thread_dead() {
        let alive = Alive::new(["a".to_string(), "b".to_string()]);
        let g = alive.guard(1);
        alive.beat(0);
        assert_eq!(alive.failed(), None);
        drop(g);
        assert_eq!(alive.failed(), Some("b"));
        assert!(alive.is_failed(1) && !alive.is_failed(0));
    }
}
