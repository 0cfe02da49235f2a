//! Unread and mention counts from memory: per room, the author of every
//! live message (by seq) and the live messages that mention someone, read
//! from the room's `OWN` and `MENTION` indexes the first time the room is
//! counted and kept in step by every index write after that
//! ([`Writes::apply`](super::writes::Writes::apply) reports each one).
//!
//! `hello` of a user in 1,000 rooms made five sled range reads per room
//! (109 ms at 10M events, mostly sled cache misses); from a tally it is a
//! walk over the seqs above the read marker. The cost is 4 bytes per event
//! (40 MB for 10M events), and one scan of every room's two indexes on a
//! background thread after the start; until it is done, rooms are counted
//! from sled as before.
//!
//! A room is read without holding a lock over the scan: writes reported
//! meanwhile are kept and applied after it. Every update is idempotent
//! (set an author, add a mention once), so one that the scan already saw
//! counts once.

use super::{
    keys::{sub, tag, tail_u64},
    Result, Storage,
};
use foldhash::HashMap;
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Shards of the room map: reactors counting different rooms rarely meet.
const SHARDS: usize = 16;

/// One room's counts.
#[derive(Debug, Default)]
struct Tally {
    /// By `seq - 1`: the live message's author (interned, plus one), or 0
    /// for an event that is not a live message.
    authors: Vec<u32>,
    /// `(seq, user)`: live messages that mention `user` (not theirs),
    /// sorted.
    mentions: Vec<(u64, u32)>,
    /// A seq far past the room's end was written (seqs are gap-free, so
    /// only a damaged key does that): counted from the indexes instead of
    /// growing `authors` to it.
    broken: bool,
}

/// The most a tally grows for one seq past its end.
const MAX_JUMP: usize = 1 << 20;

impl Tally {
    fn set_author(&mut self, seq: u64, who: u32) {
        let Some(i) = usize::try_from(seq).ok().and_then(|s| s.checked_sub(1)) else { return };
        if i >= self.authors.len() {
            if who == 0 {
                return;
            }
            if i - self.authors.len() >= MAX_JUMP {
                self.broken = true;
                return;
            }
            self.authors.resize(i + 1, 0);
        }
        self.authors[i] = who;
    }

    /// Applies one index write: `t` is `OWN` or `MENTION`.
    fn apply(&mut self, tallies: &Tallies, t: u8, user: &[u8], seq: u64, on: bool) {
        let who = tallies.intern(user);
        if t == tag::OWN {
            self.set_author(seq, if on { who } else { 0 });
        } else {
            self.set_mention(seq, who, on);
        }
    }

    fn set_mention(&mut self, seq: u64, user: u32, on: bool) {
        let e = (seq, user);
        match (self.mentions.binary_search(&e), on) {
            (Err(at), true) => self.mentions.insert(at, e),
            (Ok(at), false) => {
                self.mentions.remove(at);
            }
            _ => {}
        }
    }
}

/// A room's tally, or the writes reported while it is being read.
#[derive(Debug)]
enum Slot {
    Loading(Vec<(Vec<u8>, bool)>),
    Ready(Tally),
}

type Shard = Mutex<HashMap<Box<str>, Slot>>;

/// Every counted room's tally, and the user ids they name.
#[derive(Debug)]
pub(super) struct Tallies {
    rooms: Box<[Shard]>,
    users: RwLock<HashMap<Box<str>, u32>>,
    /// Moves on every [`clear`](Tallies::clear): a read begun before one
    /// is thrown away.
    generation: AtomicU64,
    /// Every room that had events at the start is counted: a room without
    /// a tally now is read at once (it is new, so short).
    preloaded: AtomicBool,
}

impl Default for Tallies {
    fn default() -> Self {
        Tallies {
            rooms: (0..SHARDS).map(|_| Mutex::default()).collect(),
            users: RwLock::default(),
            generation: AtomicU64::new(0),
            preloaded: AtomicBool::new(false),
        }
    }
}

impl Tallies {
    fn shard(&self, room: &str) -> &Shard {
        // FNV-1a: cheap, and stable enough for spreading rooms.
        let h = room.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        &self.rooms[(h % SHARDS as u64) as usize]
    }

    /// `user`'s number (plus one, so that 0 means nobody).
    fn intern(&self, user: &[u8]) -> u32 {
        let user = String::from_utf8_lossy(user);
        if let Some(&n) = self.users.read().get(&*user) {
            return n;
        }
        let mut users = self.users.write();
        let next = users.len() as u32 + 1;
        *users.entry(user.into()).or_insert(next)
    }

    /// `user`'s number if any index ever named them.
    fn known(&self, user: &str) -> Option<u32> {
        self.users.read().get(user).copied()
    }

    /// Forgets every room (the database was reopened).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for shard in self.rooms.iter() {
            shard.lock().clear();
        }
    }

    /// Reports a write (`on`) or removal of a `messages` key: index
    /// entries of counted rooms are applied, anything else is ignored.
    pub fn wrote(&self, key: &[u8], on: bool) {
        let Some((room, t, user, seq)) = parse(key) else { return };
        let mut shard = self.shard(room).lock();
        match shard.get_mut(room) {
            None => {}
            Some(Slot::Loading(pending)) => pending.push((key.to_vec(), on)),
            Some(Slot::Ready(tally)) => tally.apply(self, t, user, seq, on),
        }
    }
}

/// An `OWN` or `MENTION` key, `room tag user 0x00 seq`, as (room, tag,
/// user, seq). Room names are printable, so the first byte below 0x20 is
/// the tag.
fn parse(key: &[u8]) -> Option<(&str, u8, &[u8], u64)> {
    let at = key.iter().position(|&b| b < 0x20)?;
    let t = key[at];
    if t != tag::OWN && t != tag::MENTION || key.len() < at + 10 {
        return None;
    }
    let room = std::str::from_utf8(&key[..at]).ok()?;
    Some((room, t, &key[at + 1..key.len() - 9], tail_u64(key)?))
}

/// One user's unread counts, room after room: their number in the tallies
/// is looked up once (`hello` counts up to every room of the user).
#[derive(Debug)]
pub struct UnreadOf<'a> {
    storage: &'a Storage,
    user: &'a str,
    me: Option<u32>,
}

impl UnreadOf<'_> {
    /// The user's unread messages in `room` in `(read, seq]` (not deleted,
    /// not theirs) and how many of those mention them, both capped at
    /// [`COUNT_CAP`](super::COUNT_CAP).
    pub fn room(&self, room: &str, read: u64, seq: u64) -> Result<(u64, u64)> {
        if read >= seq {
            return Ok((0, 0));
        }
        let storage = self.storage;
        let tallies = &storage.inner.tallies;
        loop {
            let shard = tallies.shard(room).lock();
            match shard.get(room) {
                Some(Slot::Ready(tally)) if !tally.broken => {
                    // Not known yet: a tally read since may have named them.
                    let me = self.me.or_else(|| tallies.known(self.user));
                    return Ok(count(tally, me, read, seq));
                }
                None if tallies.preloaded.load(Ordering::Acquire) => {
                    drop(shard);
                    storage.load_tally(room)?;
                }
                // Broken, being read, or waiting for the start's preload
                // (which reads the big rooms off the `hello` path): count
                // from the indexes, as before tallies.
                _ => {
                    drop(shard);
                    return storage.unread_scan(room, self.user, read);
                }
            }
        }
    }
}

impl Storage {
    /// `user`'s unread counts, for one room or many ([`UnreadOf::room`]).
    pub fn unread_of<'a>(&'a self, user: &'a str) -> UnreadOf<'a> {
        UnreadOf { storage: self, user, me: self.inner.tallies.known(user) }
    }

    /// `user`'s unread messages in `room` in `(read, seq]` and how many of
    /// those mention them ([`UnreadOf::room`]), for the tests of one room.
    #[cfg(test)]
    pub fn unread(&self, room: &str, user: &str, read: u64, seq: u64) -> Result<(u64, u64)> {
        self.unread_of(user).room(room, read, seq)
    }

    /// Counts every room with events (on a low-priority thread after the
    /// start: reading 1,000 rooms of 200 events each took 0.6 s, too long
    /// for the first `hello` to wait). Returns how many rooms.
    /// A room that cannot be read now (storage failing) is read later, by
    /// the first `hello` that counts it.
    pub fn preload_tallies(&self) -> Result<usize> {
        self.preload_tallies_then(|_| {})
    }

    /// [`Storage::preload_tallies`], calling `then` with each room after
    /// its tally (whether or not it could be read).
    pub fn preload_tallies_then(&self, mut then: impl FnMut(&str)) -> Result<usize> {
        let rooms = self.event_rooms();
        let mut failed = None;
        for room in rooms.as_deref().unwrap_or_default() {
            if let Err(e) = self.load_tally(room) {
                failed = Some(e);
            }
            then(room);
        }
        self.inner.tallies.preloaded.store(true, Ordering::Release);
        match (rooms, failed) {
            (Ok(rooms), None) => Ok(rooms.len()),
            (Err(e), _) | (_, Some(e)) => Err(e),
        }
    }

    /// Reads `room`'s tally from its `OWN` and `MENTION` indexes, then
    /// applies the writes reported meanwhile.
    fn load_tally(&self, room: &str) -> Result<()> {
        let tallies = &self.inner.tallies;
        let generation = tallies.generation.load(Ordering::SeqCst);
        {
            let mut shard = tallies.shard(room).lock();
            if shard.contains_key(room) {
                return Ok(());
            }
            shard.insert(room.into(), Slot::Loading(Vec::new()));
        }
        let read = self.read_tally(room);
        let mut shard = tallies.shard(room).lock();
        if tallies.generation.load(Ordering::SeqCst) != generation {
            // Cleared meanwhile (a reopen) with our slot: the caller reads
            // again, from the new database.
            return Ok(());
        }
        let Some(Slot::Loading(pending)) = shard.remove(room) else { return Ok(()) };
        let mut tally = read?;
        for (key, on) in pending {
            if let Some((_, t, user, seq)) = parse(&key) {
                tally.apply(tallies, t, user, seq, on);
            }
        }
        shard.insert(room.into(), Slot::Ready(tally));
        Ok(())
    }

    /// Scans `room`'s `OWN` and `MENTION` indexes into a tally.
    fn read_tally(&self, room: &str) -> Result<Tally> {
        let tree = self.trees()?.messages.clone();
        let tallies = &self.inner.tallies;
        let mut tally = Tally::default();
        for space in [tag::OWN, tag::MENTION] {
            for kv in tree.scan_prefix(sub(room, space, &[])) {
                let (k, _) = self.check(kv)?;
                let Some((_, t, user, seq)) = parse(&k) else { continue };
                let who = tallies.intern(user);
                // Mentions come by user: sorted once below, not per insert.
                if t == tag::MENTION {
                    tally.mentions.push((seq, who));
                } else {
                    tally.set_author(seq, who);
                }
            }
        }
        tally.mentions.sort_unstable();
        tally.mentions.dedup();
        Ok(tally)
    }
}

/// The counts of [`Storage::unread`] from a tally; `me`: the user's number.
fn count(tally: &Tally, me: Option<u32>, read: u64, seq: u64) -> (u64, u64) {
    let cap = super::COUNT_CAP;
    let me = me.unwrap_or(0);
    let hi = usize::try_from(seq).unwrap_or(usize::MAX).min(tally.authors.len());
    let lo = usize::try_from(read).unwrap_or(usize::MAX).min(hi);
    // In blocks, with the cap checked between them: a branch per author
    // kept the loop from being vectorized (a user in 1,000 rooms counts
    // tens of thousands of authors per `hello`).
    let mut unread = 0;
    for block in tally.authors[lo..hi].chunks(256) {
        unread += block.iter().filter(|&&a| a != 0 && a != me).count() as u64;
        if unread >= cap {
            unread = cap;
            break;
        }
    }
    let from = tally.mentions.partition_point(|&(s, _)| s <= read);
    let mentions = if me == 0 {
        0
    } else {
        let mine = tally.mentions[from..].iter().filter(|&&(s, u)| s <= seq && u == me);
        mine.take(cap as usize).count() as u64
    };
    (unread, mentions.min(unread))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Kind, Msg};

    const USERS: [&str; 3] = ["ann", "bo", "cy"];

    /// Every user's counts at every read marker, from the tally and from
    /// the indexes.
    type Counts = Vec<(u64, u64)>;

    fn both(s: &Storage, seq: u64) -> (Counts, Counts) {
        let (mut tally, mut scan) = (Vec::new(), Vec::new());
        for u in USERS {
            for read in 0..=seq {
                tally.push(s.unread("r", u, read, seq).unwrap());
                let (n, m) = s.unread_scan("r", u, read).unwrap();
                scan.push(if read >= seq { (0, 0) } else { (n, m) });
            }
        }
        (tally, scan)
    }

    /// Sends, replies, mentions, edits that change mentions, deletes,
    /// reactions and taken-back events, with the room counted at the start,
    /// in the middle and never before the end: the tally always equals the
    /// indexes.
    #[test]
    fn the_tally_follows_every_kind_of_event() {
        for counted_from in [0, 40, 1000] {
            let dir = tempfile::tempdir().unwrap();
            let s = Storage::open(dir.path()).unwrap();
            let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ counted_from;
            let mut next = |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let mut seq = 0;
            for step in 0..120 {
                let from = USERS[next(3) as usize];
                let ev = if seq == 0 || next(2) == 0 {
                    let mut m = Msg::message("r", from, "text".into());
                    m.mentions =
                        USERS.iter().filter(|_| next(3) == 0).map(|u| u.to_string()).collect();
                    m.reply_to = (seq > 0 && next(4) == 0).then(|| 1 + next(seq));
                    m
                } else {
                    let kind = [Kind::Edit, Kind::Delete, Kind::Reaction][next(3) as usize];
                    let mut m = Msg::on_target(kind, "r", from, 1 + next(seq));
                    m.text = Some("edited".into());
                    m.mentions =
                        USERS.iter().filter(|_| next(2) == 0).map(|u| u.to_string()).collect();
                    (m.emoji, m.on) = (Some("+1".into()), Some(next(2) == 0));
                    m
                };
                if step as u64 == counted_from {
                    s.preload_tallies().unwrap();
                }
                seq += 1;
                s.apply("r", seq, &ev).unwrap();
                if step % 9 == 8 {
                    s.unapply("r", seq).unwrap();
                    seq -= 1;
                }
                let (tally, scan) = both(&s, seq);
                assert_eq!(tally, scan, "step {step}, counted from {counted_from}");
            }
            s.preload_tallies().unwrap();
            let (tally, scan) = both(&s, seq);
            assert_eq!(tally, scan, "at the end, counted from {counted_from}");
            assert!(scan.iter().any(|&(n, m)| n > 0 && m > 0), "the mix has unread mentions");
        }
    }

    /// A preloaded database whose room `r` holds ann's message 1, counted.
    fn counted() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        s.preload_tallies().unwrap();
        s.apply("r", 1, &Msg::message("r", "ann", "one".into())).unwrap();
        assert_eq!(s.unread("r", "bo", 0, 1).unwrap(), (1, 0));
        (dir, s)
    }

    #[test]
    fn a_seq_far_past_the_end_is_counted_from_the_indexes() {
        let (_dir, s) = counted();
        let far = 1 << 40;
        s.apply("r", far, &Msg::message("r", "ann", "far".into())).unwrap();
        assert_eq!(s.unread("r", "bo", 0, far).unwrap(), (2, 0), "no 4 TiB of authors");
    }

    #[test]
    fn a_reopen_forgets_what_was_counted() {
        let (_dir, s) = counted();
        s.flush().unwrap();
        s.reopen(|_| {}).unwrap();
        s.apply("r", 2, &Msg::message("r", "ann", "two".into())).unwrap();
        assert_eq!(s.unread("r", "bo", 0, 2).unwrap(), (2, 0));
        assert_eq!(s.unread("r", "ann", 0, 2).unwrap(), (0, 0));
    }
}
