//! Everything persistent, in sled: messages, memberships, read markers and
//! revocations, plus the group-commit thread that makes writes durable before
//! anything is acknowledged. No other module names `sled`.
//!
//! # Layout (one tree each)
//! * `messages`: `room 0x00 seq(u64 BE)` → MessagePack `(ts, from, text)`.
//!   Room names never contain 0x00, so `room 0x00` is a unique prefix and
//!   keys sort by seq within a room.
//! * `members`: `room 0x00 user` → empty; `user_rooms`: `user 0x00 room` → empty.
//! * `reads`: `user 0x00 room` → seq (u64 BE).
//! * `revoked`: `jti` → exp (u64 BE, seconds).
//!
//! # Durability
//! Writers insert (fast, in memory) and then hand a [`Cmd`] to the
//! [`Committer`]. Its thread takes every request queued, calls one
//! `Db::flush` (fsync) for the batch, and only then forwards the commands to
//! the reactors. So an `ack` never precedes the flush that made its message
//! durable, and one fsync serves many messages (group commit).

use crate::{
    fanout::{Cmd, Mailbox},
    metrics::Metrics,
    proto::{Code, Cursor, Msg, Out, Refusal, Wire},
};
use crossbeam_channel::{Receiver, Sender};
use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Instant,
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

impl From<StorageError> for Refusal {
    fn from(e: StorageError) -> Self {
        Refusal::new(Code::Unavailable, e.to_string())
    }
}

type Result<T> = std::result::Result<T, StorageError>;

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

fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1 + b.len());
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn msg_key(room: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(room.len() + 9);
    k.extend_from_slice(room.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn prefix(a: &str) -> Vec<u8> {
    let mut k = a.as_bytes().to_vec();
    k.push(0);
    k
}

fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// The part of a key after `prefix`, as a string.
fn suffix(key: &[u8], prefix_len: usize) -> Result<String> {
    String::from_utf8(key.get(prefix_len..).unwrap_or_default().to_vec())
        .map_err(|_| StorageError("corrupt key".into()))
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

    fn check<T>(&self, r: std::result::Result<T, sled::Error>) -> Result<T> {
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

    /// The latest seq of a room (0 if it has no message).
    pub fn last_seq(&self, room: &str) -> Result<u64> {
        let r = self.messages.scan_prefix(prefix(room)).next_back().transpose();
        Ok(self.check(r)?.and_then(|(k, _)| be_u64(&k[k.len().saturating_sub(8)..])).unwrap_or(0))
    }

    /// Stores one message (not yet durable: see [`Committer`]).
    pub fn append(&self, room: &str, seq: u64, ts: u64, from: &str, text: &str) -> Result<()> {
        let value =
            rmp_serde::to_vec(&(ts, from, text)).map_err(|e| StorageError(e.to_string()))?;
        let r = self.messages.insert(msg_key(room, seq), value);
        self.check(r).map(drop)
    }

    fn decode_msg(room: &str, k: &[u8], v: &[u8]) -> Result<Msg> {
        let seq = be_u64(&k[k.len().saturating_sub(8)..])
            .ok_or_else(|| StorageError("corrupt message key".into()))?;
        let (ts, from, text): (u64, String, String) =
            rmp_serde::from_slice(v).map_err(|e| StorageError(format!("corrupt message: {e}")))?;
        Ok(Msg { room: room.to_string(), seq, ts, from, text })
    }

    /// Up to `limit` messages of `room` from `cursor`, ascending, and whether
    /// more exist in the direction of the query.
    pub fn history(&self, room: &str, cursor: Cursor, limit: usize) -> Result<(Vec<Msg>, bool)> {
        let lo = msg_key(room, 0);
        let mut out = Vec::with_capacity(limit.min(128));
        let mut more = false;
        match cursor {
            Cursor::After(after) => {
                let start = msg_key(room, after.saturating_add(1));
                let end = msg_key(room, u64::MAX);
                if after < u64::MAX {
                    for kv in self.messages.range(start..=end) {
                        let (k, v) = self.check(kv)?;
                        if out.len() == limit {
                            more = true;
                            break;
                        }
                        out.push(Self::decode_msg(room, &k, &v)?);
                    }
                }
            }
            Cursor::Latest | Cursor::Before(_) => {
                let end = match cursor {
                    Cursor::Before(b) => msg_key(room, b),
                    _ => msg_key(room, u64::MAX),
                };
                let inclusive_end = matches!(cursor, Cursor::Latest);
                let iter = if inclusive_end {
                    self.messages.range(lo..=end)
                } else {
                    self.messages.range(lo..end)
                };
                for kv in iter.rev() {
                    let (k, v) = self.check(kv)?;
                    if out.len() == limit {
                        more = true;
                        break;
                    }
                    out.push(Self::decode_msg(room, &k, &v)?);
                }
                out.reverse();
            }
        }
        Ok((out, more))
    }

    /// Makes `user` a member of `room`. Returns whether it is new.
    pub fn add_member(&self, room: &str, user: &str) -> Result<bool> {
        let r = self.members.insert(key2(room, user), &[]);
        let was = self.check(r)?;
        let r = self.user_rooms.insert(key2(user, room), &[]);
        self.check(r)?;
        Ok(was.is_none())
    }

    /// Removes `user` from `room`. Returns whether it was a member.
    pub fn remove_member(&self, room: &str, user: &str) -> Result<bool> {
        let r = self.members.remove(key2(room, user));
        let was = self.check(r)?;
        let r = self.user_rooms.remove(key2(user, room));
        self.check(r)?;
        Ok(was.is_some())
    }

    /// Whether `user` is a member of `room`.
    pub fn is_member(&self, room: &str, user: &str) -> Result<bool> {
        let r = self.members.contains_key(key2(room, user));
        self.check(r)
    }

    /// All member user ids of `room`, sorted.
    pub fn members(&self, room: &str) -> Result<Vec<String>> {
        let p = prefix(room);
        let mut out = Vec::new();
        for kv in self.members.scan_prefix(&p) {
            let (k, _) = self.check(kv)?;
            out.push(suffix(&k, p.len())?);
        }
        Ok(out)
    }

    /// Every room that has (or had) a member, sorted.
    pub fn rooms(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for kv in self.members.iter() {
            let (k, _) = self.check(kv)?;
            let end = k.iter().position(|&b| b == 0).unwrap_or(k.len());
            let room = String::from_utf8_lossy(&k[..end]).into_owned();
            if out.last() != Some(&room) {
                out.push(room);
            }
        }
        Ok(out)
    }

    /// All rooms `user` is a member of, sorted.
    pub fn rooms_of(&self, user: &str) -> Result<Vec<String>> {
        let p = prefix(user);
        let mut out = Vec::new();
        for kv in self.user_rooms.scan_prefix(&p) {
            let (k, _) = self.check(kv)?;
            out.push(suffix(&k, p.len())?);
        }
        Ok(out)
    }

    /// Sets `user`'s read marker in `room` (never moves it backwards).
    pub fn set_read(&self, user: &str, room: &str, seq: u64) -> Result<u64> {
        let r = self.reads.fetch_and_update(key2(user, room), |old| {
            let old = old.and_then(be_u64).unwrap_or(0);
            Some(old.max(seq).to_be_bytes().to_vec())
        });
        let old = self.check(r)?.and_then(|v| be_u64(&v)).unwrap_or(0);
        Ok(old.max(seq))
    }

    /// `user`'s read marker in `room` (0 if none).
    pub fn read_marker(&self, user: &str, room: &str) -> Result<u64> {
        let r = self.reads.get(key2(user, room));
        Ok(self.check(r)?.and_then(|v| be_u64(&v)).unwrap_or(0))
    }

    /// Records a revoked token id (durable after the next flush).
    pub fn revoke(&self, jti: &str, exp: u64) -> Result<()> {
        let r = self.revoked.insert(jti.as_bytes(), &exp.to_be_bytes());
        self.check(r).map(drop)
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

    /// Every revoked token id.
    pub fn revoked(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for kv in self.revoked.iter() {
            let (k, _) = self.check(kv)?;
            out.push(String::from_utf8_lossy(&k).into_owned());
        }
        Ok(out)
    }
}

/// How long the commit thread gathers writes before one flush...
const COMMIT_WINDOW: std::time::Duration = std::time::Duration::from_millis(10);
/// ...unless this many are already waiting.
const COMMIT_ENOUGH: usize = 16;

/// A request to the commit thread: after the next flush, send `cmd` to
/// reactor `reactor` (or, if the flush failed, `on_fail` instead, if any).
#[derive(Debug)]
pub struct Pending {
    /// The reactor to notify.
    pub reactor: u16,
    /// What to send it once durable (`None`: just make it durable).
    pub cmd: Option<Cmd>,
    /// What to send it if the flush fails (an `unavailable` error frame).
    pub on_fail: Option<Cmd>,
    /// When it was queued (ack latency).
    pub at: Instant,
}

impl Pending {
    /// A request queued now.
    pub fn new(reactor: u16, cmd: Option<Cmd>, on_fail: Option<Cmd>) -> Pending {
        Pending { reactor, cmd, on_fail, at: Instant::now() }
    }
}

/// The sending side of the group-commit thread.
#[derive(Clone, Debug)]
pub struct Committer {
    /// `None` asks the thread to stop (after answering what it holds).
    tx: Sender<Option<Pending>>,
}

impl Committer {
    /// Starts the commit thread; it exits when every `Committer` is dropped,
    /// after a last flush.
    pub fn start(
        storage: Storage,
        mailboxes: Vec<Mailbox>,
        metrics: Arc<Metrics>,
    ) -> (Committer, thread::JoinHandle<()>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let handle = thread::Builder::new()
            .name("chinwag-commit".into())
            .spawn(move || commit_loop(storage, mailboxes, rx, metrics))
            .unwrap_or_else(|e| panic!("cannot start the commit thread: {e}"));
        (Committer { tx }, handle)
    }

    /// Stops the thread after a last flush; its handle's `join` returns then.
    /// Needed because other threads (the cluster bridge) may keep clones.
    pub fn stop(&self) {
        let _ = self.tx.send(None);
    }

    /// Queues a command to be delivered once everything written so far is durable.
    pub fn after_flush(&self, p: Pending) {
        // The thread only goes away at shutdown, after the reactors.
        let _ = self.tx.send(Some(p));
    }
}

fn commit_loop(
    storage: Storage,
    mailboxes: Vec<Mailbox>,
    rx: Receiver<Option<Pending>>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::new();
    let mut stop = false;
    while !stop {
        let Ok(Some(first)) = rx.recv() else { break };
        // Group commit: let writes that arrive within the window share this
        // flush. A flush costs far more CPU than a write (sled seals its
        // buffer and syncs through its IO threads), so at chat rates, where
        // writes come one by one, this is what makes flushes shared.
        // Under load a batch fills at once and waits for nothing.
        let deadline = first.at + COMMIT_WINDOW;
        batch.push(first);
        while batch.len() < COMMIT_ENOUGH && !stop {
            match rx.recv_deadline(deadline) {
                Ok(Some(p)) => batch.push(p),
                Ok(None) => stop = true,
                Err(_) => break,
            }
        }
        for p in rx.try_iter() {
            match p {
                Some(p) => batch.push(p),
                None => stop = true,
            }
        }
        let t = Instant::now();
        let ok = storage.flush().is_ok();
        metrics.flush_seconds.observe(t.elapsed().as_secs_f64());
        metrics.flush_batch.observe(batch.len() as f64);
        let done = Instant::now();
        for p in batch.drain(..) {
            metrics.ack_seconds.observe(done.saturating_duration_since(p.at).as_secs_f64());
            let cmd = if ok { p.cmd } else { p.on_fail };
            if let (Some(cmd), Some(mb)) = (cmd, mailboxes.get(p.reactor as usize)) {
                mb.send(cmd);
            }
        }
    }
    let _ = storage.flush();
}

/// The `unavailable` error frame for a refused write.
pub fn unavailable_wire(id: Option<&serde_json::Value>, json: bool, msgpack: bool) -> Wire {
    Wire::encode(
        &Out::Error {
            id,
            code: Code::Unavailable,
            message: "storage unavailable: nothing was accepted",
            retry_after_ms: None,
        },
        json,
        msgpack,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
