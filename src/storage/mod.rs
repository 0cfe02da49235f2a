//! Everything persistent, in sled: messages, memberships, read markers and
//! revocations. No other module names `sled`; this one knows nothing of
//! connections, reactors or frames. Writes are fast and in memory; they
//! become durable at the next [`Storage::flush`], which only the commit
//! thread (`durable`) calls.
//!
//! # Layout (one tree each)
//! * `messages`: `room 0x00 seq(u64 BE)` → MessagePack `(ts, from, text)`.
//!   Room names never contain 0x00, so `room 0x00` is a unique prefix and
//!   keys sort by seq within a room.
//! * `members`: `room 0x00 user` → empty; `user_rooms`: `user 0x00 room` → empty.
//! * `reads`: `user 0x00 room` → seq (u64 BE).
//! * `revoked`: `jti` → when it was revoked (u64 BE, seconds since the epoch).

mod keys;
mod members;
mod messages;

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

/// sled's page cache cap. sled's own memory runs well above it, so keep it
/// modest; the OS page cache does the rest.
const CACHE_BYTES: u64 = 64 << 20;

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

/// Handle to the database; cheap to clone (sled trees are `Arc`s inside).
#[derive(Clone, Debug)]
pub struct Storage {
    db: sled::Db,
    messages: sled::Tree,
    members: sled::Tree,
    user_rooms: sled::Tree,
    reads: sled::Tree,
    revoked: sled::Tree,
    /// False after a failed write or flush, until a flush succeeds again.
    healthy: Arc<AtomicBool>,
}
impl Storage {
    /// Opens (or creates) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Storage> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(CACHE_BYTES)
            // We flush explicitly before every ack; sled's timer flush only
            // adds background fsyncs.
            .flush_every_ms(None)
            .open()?;
        Ok(Storage {
            messages: db.open_tree("messages")?,
            members: db.open_tree("members")?,
            user_rooms: db.open_tree("user_rooms")?,
            reads: db.open_tree("reads")?,
            revoked: db.open_tree("revoked")?,
            db,
            healthy: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Whether the last write and flush succeeded.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(super) fn check<T>(&self, r: std::result::Result<T, sled::Error>) -> Result<T> {
        r.map_err(|e| {
            if self.healthy.swap(false, Ordering::Relaxed) {
                log::error!("storage fault: {e}");
            }
            StorageError::from(e)
        })
    }

    /// Makes every write so far durable (fsync). Returns bytes flushed.
    pub fn flush(&self) -> Result<usize> {
        let r = self.db.flush();
        let n = self.check(r)?;
        if !self.healthy.swap(true, Ordering::Relaxed) {
            log::info!("storage recovered");
        }
        Ok(n)
    }

    /// Copies every tree into a new database under `dest` (which must not
    /// hold one yet) and flushes it. Messages are immutable and appended, so
    /// the copy holds at least everything durable when the backup began.
    pub fn backup_to(&self, dest: &Path) -> Result<u64> {
        let path = dest.join("db");
        if path.exists() {
            return Err(StorageError(format!("{} already exists", path.display())));
        }
        let copy = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(None)
            .open()?;
        let mut n = 0;
        for name in self.db.tree_names() {
            let (src, dst) = (self.db.open_tree(&name)?, copy.open_tree(&name)?);
            for kv in src.iter() {
                let (k, v) = kv?;
                dst.insert(k, v)?;
                n += 1;
            }
        }
        copy.flush()?;
        Ok(n)
    }
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
}
