//! Everything persistent, in sled: messages, memberships, read markers and
//! revocations. No other module names `sled`; this one knows nothing of
//! connections, reactors or frames. Writes are fast and in memory; they
//! become durable at the next [`Storage::flush`], which only the commit
//! thread (`durable`) calls.
//!
//! # Layout (one tree each)
//! * `messages`: `room 0x00 seq(u64 BE)` → the event (`events::Record`:
//!   0x01, then MessagePack), a message with its current state. Room
//!   names never contain bytes below 0x2d, so `room 0x00` is a unique
//!   prefix and keys sort by seq within a room. The derived indexes of a
//!   room live in the same tree under `room tag` (`keys::tag`), written
//!   after the event's record (`writes.rs`: why not one batch, and how a
//!   crash in between is repaired).
//! * `room_members`: `room` → member count (u64 BE), for the directory.
//! * `users`: `user` → display name (empty: none yet); present once the
//!   user connected.
//! * `members`: `room 0x00 user` → empty; `user_rooms`: `user 0x00 room` → empty.
//! * `reads`: `user 0x00 room` → seq (u64 BE).
//! * `revoked`: `jti` → when it was revoked (u64 BE, seconds since the epoch).
//! * `revoked_users`: `user` → every token issued at or before this second
//!   is refused (u64 BE).

mod events;
mod keys;
mod members;
mod messages;
mod migrate;
mod tally;
mod writes;

pub use events::MAX_EMOJI;
pub use messages::{emoji_limit, not_found, LiveMessage, COUNT_CAP};
pub use tally::UnreadOf;

use parking_lot::RwLock;
use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

/// sled's page cache cap. sled's own memory runs well above it, so keep it
/// modest; the OS page cache does the rest.
const CACHE_BYTES: u64 = 64 << 20;

/// sled replays, at every start, the log written since its last snapshot
/// of the page table, and 0.34 writes one only when it opens a database:
/// the first start after writing 10M events (14 GB of log) took 45 s,
/// growing with what was written since the previous start. A snapshot is
/// taken once this much log has been written since the last one (or four
/// times the last snapshot's size, if more): replay reads about 350 MB/s
/// (14.5 GB in 41 s of CPU, BENCHMARKS.md), and snapshots add at most a
/// quarter to the bytes written.
pub const SNAPSHOT_AFTER: u64 = 256 << 20;

/// At a clean stop, a snapshot is taken if more log than this would be
/// replayed at the next start.
pub const SNAPSHOT_AT_STOP: u64 = 16 << 20;

/// When [`Storage::snapshot_if_due`] writes a snapshot.
#[derive(Clone, Copy, Debug)]
pub enum SnapshotDue {
    /// While running: after this many bytes of log since the last one
    /// (normally [`SNAPSHOT_AFTER`]), and four times the last snapshot's
    /// size, which bounds what snapshots add to the bytes written.
    Running(u64),
    /// At a clean stop, after the last flush: after [`SNAPSHOT_AT_STOP`]
    /// bytes, whatever the last snapshot's size, so the next start is quick.
    Stopping,
}

/// A storage failure: logged once where it happens, answered `unavailable`.
#[derive(Debug)]
pub struct StorageError(pub String);

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "storage: {}", self.0)
    }
}

impl std::error::Error for StorageError {}

impl From<sled::Error> for StorageError {
    fn from(e: sled::Error) -> Self {
        StorageError(e.to_string())
    }
}

pub(crate) type Result<T> = std::result::Result<T, StorageError>;

/// sled's error on opening `dir`; a damaged database says what to do, since
/// the operator reads it in the journal of a service that will not start
/// (or that cannot reopen its database after a fault).
fn damaged(dir: &Path, e: sled::Error) -> StorageError {
    match e {
        sled::Error::Corruption { .. } => StorageError(format!(
            "the database in {} is damaged ({e}). Restore a backup (`chinwag backup` makes \
             them) by pointing --data-dir at the copy, or move this directory aside (keep it) \
             to start empty",
            dir.join("db").display()
        )),
        e => e.into(),
    }
}

/// The open database and its trees.
#[derive(Debug)]
struct Trees {
    db: sled::Db,
    messages: sled::Tree,
    members: sled::Tree,
    user_rooms: sled::Tree,
    reads: sled::Tree,
    revoked: sled::Tree,
    revoked_users: sled::Tree,
    room_members: sled::Tree,
    users: sled::Tree,
    meta: sled::Tree,
    /// Each written room's latest message ordinal, once a write has read
    /// it: a reverse scan of the room's ordinals was a fifth of every
    /// stored message's CPU. Only writers use it (they hold the room's
    /// lock); a reopen starts a new one.
    ords: parking_lot::Mutex<foldhash::HashMap<Box<str>, u64>>,
}

impl Trees {
    fn open(dir: &Path) -> Result<Trees> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(CACHE_BYTES)
            // The commit path flushes (`durable`); sled's timer flush
            // only adds background fsyncs.
            .flush_every_ms(None)
            .open()
            .map_err(|e| damaged(dir, e))?;
        Ok(Trees {
            messages: db.open_tree("messages")?,
            members: db.open_tree("members")?,
            user_rooms: db.open_tree("user_rooms")?,
            reads: db.open_tree("reads")?,
            revoked: db.open_tree("revoked")?,
            revoked_users: db.open_tree("revoked_users")?,
            room_members: db.open_tree("room_members")?,
            users: db.open_tree("users")?,
            meta: db.open_tree("meta")?,
            db,
            ords: Default::default(),
        })
    }
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    /// `None` while the database is being reopened.
    trees: RwLock<Option<Arc<Trees>>>,
    /// False after a failed write or flush, until a flush succeeds again.
    healthy: AtomicBool,
    /// The file system has less than `min_free` bytes free: writes refused.
    low_space: AtomicBool,
    /// A reopen is under way: writes refused until its purge is done. The
    /// new database serves the repair before that, and a write taken then
    /// got a seq the purge would take back from under it.
    reopening: AtomicBool,
    /// The clean-stop mark is set: the next event write takes it away.
    marked_clean: AtomicBool,
    /// Unread and mention counts of the rooms counted so far.
    tallies: tally::Tallies,
    /// Moves after every membership written or removed, and on a reopen:
    /// a reader of `rooms_of` can tell that its list may be stale.
    memberships: AtomicU64,
    /// Size of the last snapshot this process wrote (0: none yet).
    snapshot_bytes: AtomicU64,
}

/// The `meta` key set by a clean stop: the next open skips the repair.
const CLEAN_KEY: &[u8] = b"clean_stop";

/// Handle to the database; cheap to clone. Survives a reopen: after a
/// fault (a full or failing disk leaves sled failed for good) the commit
/// thread closes and reopens the database behind it.
#[derive(Clone, Debug)]
pub struct Storage {
    inner: Arc<Inner>,
}

impl Storage {
    /// Opens (or creates) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Storage> {
        let t = std::time::Instant::now();
        let trees = Trees::open(dir)?;
        log::debug!(
            "sled opened in {:?} (its snapshot read, the log after it replayed)",
            t.elapsed()
        );
        migrate::run(&trees)?;
        let s = Storage {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                trees: RwLock::new(Some(Arc::new(trees))),
                healthy: AtomicBool::new(true),
                low_space: AtomicBool::new(false),
                reopening: AtomicBool::new(false),
                marked_clean: AtomicBool::new(false),
                tallies: tally::Tallies::default(),
                memberships: AtomicU64::new(0),
                snapshot_bytes: AtomicU64::new(0),
            }),
        };
        // Taken away at once: any event written from now on follows the
        // removal in sled's log, so a crash can keep the mark only with
        // nothing after it.
        if s.trees()?.meta.remove(CLEAN_KEY)?.is_none() {
            s.repair()?;
        }
        Ok(s)
    }

    /// Writes a snapshot of sled's page table if enough log was written
    /// since the last one (see [`SnapshotDue`]), so that the next start
    /// replays only what follows. Safe while writes go on; the writers'
    /// flushes are not delayed (the snapshot waits for them rather than
    /// flushing). Returns the snapshot's size if one was written.
    pub fn snapshot_if_due(&self, due: SnapshotDue) -> Result<Option<u64>> {
        if !self.is_healthy() {
            return Ok(None);
        }
        let t = self.trees()?;
        let last = self.inner.snapshot_bytes.load(Ordering::Relaxed);
        let after = match due {
            SnapshotDue::Running(after) => after.max(last.saturating_mul(4)),
            SnapshotDue::Stopping => SNAPSHOT_AT_STOP,
        };
        if t.db.log_since_snapshot() <= after {
            return Ok(None);
        }
        let bytes = t.db.take_snapshot()?;
        self.inner.snapshot_bytes.store(bytes, Ordering::Relaxed);
        Ok(Some(bytes))
    }

    /// Marks the database as stopped cleanly (after the last flush): the
    /// next open can skip [`repair`](Self::repair), which reads and
    /// rewrites every room's last event.
    pub fn mark_clean(&self) -> Result<()> {
        let r = self.trees()?.meta.insert(CLEAN_KEY, &[1]);
        self.check(r)?;
        self.inner.marked_clean.store(true, Ordering::SeqCst);
        self.flush().map(drop)
    }

    /// Takes the clean-stop mark away before an event write that comes
    /// after it (a late write during shutdown).
    fn unmark_clean(&self, t: &Trees) -> Result<()> {
        // A plain load first: this runs for every event.
        let marked = &self.inner.marked_clean;
        if marked.load(Ordering::Relaxed) && marked.swap(false, Ordering::SeqCst) {
            let r = t.meta.remove(CLEAN_KEY);
            self.check(r)?;
        }
        Ok(())
    }

    /// Completes each room's last event (a crash may have cut it short)
    /// and makes that durable. Not after a clean stop.
    fn repair(&self) -> Result<()> {
        let t = std::time::Instant::now();
        let rooms = self.repair_tails()?;
        self.flush()?;
        log::debug!("checked the last event of {rooms} rooms in {:?}", t.elapsed());
        Ok(())
    }

    fn trees(&self) -> Result<Arc<Trees>> {
        self.inner.trees.read().clone().ok_or_else(|| StorageError("reopening".into()))
    }

    /// Whether writes can be taken: the last write and flush succeeded and
    /// the disk has room.
    pub fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed) && !self.inner.low_space.load(Ordering::Relaxed)
    }

    /// Whether a write or flush failed since the last good flush.
    pub fn is_failed(&self) -> bool {
        !self.inner.healthy.load(Ordering::Relaxed)
    }

    /// Whether a write now would be taken: not below `min_free`, not
    /// reopening, and no failed write since the last good flush. A cluster
    /// node asks before the cluster sequences an event it will store.
    pub fn takes_writes(&self) -> Result<()> {
        self.writable()?;
        if self.is_failed() {
            return Err(StorageError("the last write failed".into()));
        }
        Ok(())
    }

    /// Refuses a write while the disk is below `min_free`.
    pub(super) fn writable(&self) -> Result<()> {
        if self.inner.low_space.load(Ordering::Relaxed) {
            return Err(StorageError("free disk space is below min_free".into()));
        }
        if self.inner.reopening.load(Ordering::SeqCst) {
            return Err(StorageError("reopening".into()));
        }
        Ok(())
    }

    pub(super) fn check<T>(&self, r: std::result::Result<T, sled::Error>) -> Result<T> {
        r.map_err(|e| {
            if self.inner.healthy.swap(false, Ordering::Relaxed) {
                log::error!("storage fault: {e}");
            }
            StorageError::from(e)
        })
    }

    /// Makes every write so far durable (fsync). Returns bytes flushed.
    pub fn flush(&self) -> Result<usize> {
        let r = self.trees()?.db.flush();
        let n = self.check(r)?;
        if !self.inner.healthy.swap(true, Ordering::Relaxed) {
            log::info!("storage recovered");
        }
        Ok(n)
    }

    /// Checks the free space on the data directory's file system against
    /// `min_free` (0: no guard); writes are refused while it is below.
    pub fn check_space(&self, min_free: u64) {
        let low = min_free > 0 && free_bytes(&self.inner.dir).is_some_and(|f| f < min_free);
        if self.inner.low_space.swap(low, Ordering::Relaxed) != low {
            if low {
                log::error!(
                    "less than {min_free} bytes free on the data directory: refusing writes"
                );
            } else {
                log::info!("free space back above min_free: accepting writes");
            }
        }
    }

    /// Closes the database and opens it again (sled stays failed after an
    /// I/O error). Operations meanwhile fail with `unavailable`. Before the
    /// new one serves, `purge` may take events back from it: it gets a
    /// remover of the events `(after, upto]` of a room.
    pub fn reopen(&self, purge: impl FnOnce(&dyn Fn(&str, u64, u64))) -> Result<()> {
        self.inner.reopening.store(true, Ordering::SeqCst);
        let r = self.reopen_gated(purge);
        self.inner.reopening.store(false, Ordering::SeqCst);
        r
    }

    /// [`Storage::reopen`], while writes are refused.
    fn reopen_gated(&self, purge: impl FnOnce(&dyn Fn(&str, u64, u64))) -> Result<()> {
        let old = self.inner.trees.write().take();
        if let Some(old) = old {
            // Wait (briefly) for operations in flight to drop their handle,
            // so the old database closes and releases its lock.
            for _ in 0..1000 {
                if Arc::strong_count(&old) == 1 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            drop(old);
        }
        let trees = Trees::open(&self.inner.dir).map_err(|e| {
            log::warn!("cannot reopen the database yet: {e}");
            e
        })?;
        *self.inner.trees.write() = Some(Arc::new(trees));
        // What was counted came from the old database.
        self.inner.tallies.clear();
        self.moved_membership();
        self.repair()?;
        // Newest first, so each message's state is rebuilt without them.
        purge(&|room, after, upto| {
            for seq in (after.saturating_add(1)..=upto).rev() {
                let _ = self.unapply(room, seq);
            }
        });
        log::info!("storage reopened");
        Ok(())
    }

    /// Copies every tree into a new database under `dest` (which must not
    /// hold one yet) and flushes it. The copy holds at least everything
    /// durable when the backup began (a message's state may be newer than
    /// the events copied before it changed).
    pub fn backup_to(&self, dest: &Path) -> Result<u64> {
        let mut copy = Copy::create(dest)?;
        let n = self.each_record(|tree, k, v| copy.insert(tree, k, v))?;
        copy.finish()?;
        Ok(n)
    }

    /// Calls `f(tree, key, value)` for every record of every tree, tree by
    /// tree, and gives the count. Generic over trees and record kinds, so a
    /// backup carries whatever the database holds.
    pub fn each_record(&self, mut f: impl FnMut(&[u8], &[u8], &[u8]) -> Result<()>) -> Result<u64> {
        let t = self.trees()?;
        let mut n = 0;
        for name in t.db.tree_names() {
            for kv in t.db.open_tree(&name)?.iter() {
                let (k, v) = kv?;
                f(&name, &k, &v)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// A new database that a backup writes, record by record: in this process
/// or in `chinwag backup`'s, which receives the records over the control
/// socket.
#[derive(Debug)]
pub struct Copy {
    db: sled::Db,
    /// The tree the last record went to (records come tree by tree).
    tree: Option<(Vec<u8>, sled::Tree)>,
}

impl Copy {
    /// Creates the database under `dest/db`; refused if one is there.
    pub fn create(dest: &Path) -> Result<Copy> {
        let path = dest.join("db");
        if path.exists() {
            return Err(StorageError(format!("{} already exists", path.display())));
        }
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(None)
            .open()?;
        Ok(Copy { db, tree: None })
    }

    /// Adds one record to `tree`.
    pub fn insert(&mut self, tree: &[u8], key: &[u8], value: &[u8]) -> Result<()> {
        let t = match &self.tree {
            Some((name, t)) if name.as_slice() == tree => t,
            _ => &self.tree.insert((tree.to_vec(), self.db.open_tree(tree)?)).1,
        };
        t.insert(key, value)?;
        Ok(())
    }

    /// Makes the copy durable.
    pub fn finish(self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

/// Bytes available to us on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statvfs is a valid value for statvfs(2) to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `st` a valid
    // out-pointer, both alive for the call.
    let r = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    (r == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Cursor, Msg};

    #[test]
    fn history_directions() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        for seq in 1..=10 {
            s.append("r", seq, seq * 10, "u", &format!("m{seq}")).unwrap();
        }
        s.append("r2", 1, 10, "u", "x").unwrap();
        assert_eq!(s.last_seq("r").unwrap(), 10);
        assert_eq!(s.last_seq("none").unwrap(), 0);
        let seqs = |v: Vec<Msg>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
        let (m, more) = s.history("r", Cursor::Latest, 3).unwrap();
        assert_eq!((seqs(m), more), (vec![8, 9, 10], true));
        let (m, more) = s.history("r", Cursor::Before(3), 5).unwrap();
        assert_eq!((seqs(m), more), (vec![1, 2], false));
        let (m, more) = s.history("r", Cursor::After(7), 3).unwrap();
        assert_eq!((seqs(m), more), (vec![8, 9, 10], false));
        let (m, more) = s.history("r", Cursor::After(6), 3).unwrap();
        assert_eq!((seqs(m), more), (vec![7, 8, 9], true));
        let (m, _) = s.history("r", Cursor::After(u64::MAX), 3).unwrap();
        assert!(m.is_empty());
    }

    #[test]
    fn history_before_is_right_across_gaps() {
        // Seqs have no gaps in a live room; a directory repaired after a
        // fault may miss some, and a page must still be exactly the
        // events below `before` (a forward read that assumed no gaps was
        // tried against this, and gave nothing measurable).
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let have: Vec<u64> = (1..=20).filter(|q| ![7, 15, 16].contains(q)).collect();
        for &seq in &have {
            s.append("r", seq, seq * 10, "u", &format!("m{seq}")).unwrap();
        }
        s.append("r0", 1, 10, "u", "x").unwrap();
        s.append("r1", 1, 10, "u", "y").unwrap();
        for before in 0..=24 {
            for limit in 0..=6 {
                let below: Vec<u64> = have.iter().copied().filter(|&q| q < before).collect();
                let want = below[below.len().saturating_sub(limit)..].to_vec();
                let more = below.len() > limit;
                let (m, got_more) = s.history("r", Cursor::Before(before), limit).unwrap();
                let got: Vec<u64> = m.iter().map(|m| m.seq).collect();
                assert_eq!((got, got_more), (want, more), "before {before} limit {limit}");
                assert!(m.iter().all(|m| m.text.as_deref() == Some(&*format!("m{}", m.seq))));
            }
        }
    }

    #[test]
    fn members_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        assert!(s.add_member("r", "bob").unwrap());
        assert!(!s.add_member("r", "bob").unwrap());
        s.add_member("r", "al").unwrap();
        s.add_member("q", "bob").unwrap();
        assert_eq!(s.members("r").unwrap(), vec!["al", "bob"]);
        assert_eq!(s.rooms_of("bob").unwrap(), vec!["q", "r"]);
        assert!(s.remove_member("r", "bob").unwrap());
        assert!(!s.is_member("r", "bob").unwrap());
        assert_eq!(s.set_read("bob", "q", 5).unwrap(), 5);
        assert_eq!(s.set_read("bob", "q", 3).unwrap(), 5);
        assert_eq!(s.read_marker("bob", "q").unwrap(), 5);
    }

    /// `hello` trusts its first `rooms_of` when the generation did not move.
    #[test]
    fn every_membership_change_moves_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let moved = |f: &dyn Fn() -> bool| {
            let g = s.membership_gen();
            let changed = f();
            (changed, s.membership_gen() != g)
        };
        assert_eq!(moved(&|| s.add_member("r", "bob").unwrap()), (true, true), "a join");
        assert_eq!(moved(&|| s.add_member("r", "bob").unwrap()), (false, false), "a member's");
        assert_eq!(moved(&|| s.remove_member("r", "bob").unwrap()), (true, true), "a leave");
        s.flush().unwrap();
        assert!(moved(&|| s.reopen(|_| {}).is_ok()).1, "a reopen");
    }

    /// A reopen's purge takes back events by seq: a write taken before it
    /// is done could be one of them, after it was accepted.
    #[test]
    fn writes_are_refused_until_a_reopen_has_purged() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        s.append("r", 1, 10, "u", "kept").unwrap();
        s.flush().unwrap();
        let mut during = Vec::new();
        s.reopen(|remove| {
            during.push(s.append("r", 2, 20, "u", "during").is_err());
            during.push(s.add_member("r", "bob").is_err());
            during.push(s.set_read("bob", "r", 1).is_err());
            remove("r", 1, 2);
        })
        .unwrap();
        assert_eq!(during, vec![true; 3], "a write was taken during the reopen");
        assert_eq!(s.last_seq("r").unwrap(), 1);
        s.append("r", 2, 20, "u", "after").unwrap();
        assert_eq!(s.last_seq("r").unwrap(), 2, "writes are taken again after it");
    }
}
