//! The writes of one room event, applied one by one in the order queued.
//!
//! sled's `apply_batch` would make them atomic, but every call seals and
//! writes sled's IO buffer (a `pwrite` and a `sync_file_range`, then the
//! thread pool's wake-ups): measured, that was most of the CPU a stored
//! message cost. Plain inserts only append to the buffer, and the commit
//! thread's flush writes it once for the whole group. sled recovers a
//! prefix of its log after a crash, and each room's events are applied
//! one after the other with the event's record queued first, so at most a
//! room's last event can lack some of what it derives; `Storage::open`
//! derives it again (`repair_tails`).

use super::tally::Tallies;

/// Queued inserts and removes of the `messages` tree.
#[derive(Default)]
pub(super) struct Writes(Vec<(Vec<u8>, Option<Vec<u8>>)>);

impl Writes {
    /// Queues `key` → `value`.
    pub fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.0.push((key, Some(value)));
    }

    /// Queues the removal of `key`.
    pub fn remove(&mut self, key: Vec<u8>) {
        self.0.push((key, None));
    }

    /// How many are queued.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Keeps the first `n` (a crash in the middle, for tests).
    #[cfg(test)]
    pub fn truncate(&mut self, n: usize) {
        self.0.truncate(n);
    }

    /// Applies them in order (a later write of a key wins, as in a batch),
    /// reporting each to the unread tallies once it is made.
    pub fn apply(self, tree: &sled::Tree, tallies: &Tallies) -> sled::Result<()> {
        for (k, v) in self.0 {
            let on = v.is_some();
            match v {
                Some(v) => tree.insert(&k, v)?,
                None => tree.remove(&k)?,
            };
            tallies.wrote(&k, on);
        }
        Ok(())
    }
}
