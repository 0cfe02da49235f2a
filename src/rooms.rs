//! The shared directory: which reactors hold subscribers of a room (and in
//! which encodings), each room's latest seq allocated and released, and
//! which reactors hold live
//! connections of a user (presence).
//!
//! Sharded `parking_lot` mutexes keyed by name hash; a lock is held only for
//! a few field updates (and, for a room's first touch, one storage read).
//! Holds no connection ids: each reactor keeps its own members
//! (`local::LocalIndex`), and only it sets or clears its bits.

use foldhash::HashMap;
use parking_lot::Mutex;
use std::sync::Arc;

/// Number of lock shards per map; a power of two.
const SHARDS: usize = 64;

/// One room, cluster-node-wide.
#[derive(Debug)]
pub struct RoomEntry {
    /// The canonical name, shared by every frame and local index of the room.
    pub name: Arc<str>,
    /// Latest seq allocated (0: empty room); the next message takes `seq + 1`.
    pub seq: u64,
    /// Latest seq released: durable, and handed to subscribers. History,
    /// `joined` and subscriptions see the room up to here, never beyond.
    pub durable: u64,
    /// Bit r: reactor r has at least one subscriber.
    pub reactors: u64,
    /// Bit r: reactor r has a JSON subscriber.
    pub json: u64,
    /// Bit r: reactor r has a MessagePack subscriber.
    pub msgpack: u64,
}

/// One user's live connections on this node.
#[derive(Debug, Default)]
pub struct UserEntry {
    /// Bit r: reactor r holds at least one of the user's connections.
    pub reactors: u64,
    /// Live connections in all.
    pub live: u32,
}

/// A map split into independently locked shards.
#[derive(Debug)]
struct Sharded<V> {
    shards: Vec<Mutex<HashMap<Arc<str>, V>>>,
}

impl<V> Sharded<V> {
    fn new() -> Self {
        Sharded { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect() }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<Arc<str>, V>> {
        // FNV-1a: cheap and good enough to spread room and user names.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in key.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        &self.shards[(h as usize) & (SHARDS - 1)]
    }
}

/// Rooms and users, shared by all reactors of the node.
#[derive(Debug)]
pub struct Directory {
    rooms: Sharded<RoomEntry>,
    users: Sharded<UserEntry>,
}

impl Default for Directory {
    fn default() -> Self {
        Self::new()
    }
}

impl Directory {
    /// An empty directory.
    pub fn new() -> Directory {
        Directory { rooms: Sharded::new(), users: Sharded::new() }
    }

    /// Runs `f` on the room's entry under its shard lock. A room seen for the
    /// first time is created with its seq from `load_seq` (storage); if that
    /// fails, nothing is created and the error is returned.
    pub fn with_room<R, E>(
        &self,
        room: &str,
        load_seq: impl FnOnce() -> Result<u64, E>,
        f: impl FnOnce(&mut RoomEntry) -> R,
    ) -> Result<R, E> {
        let mut shard = self.rooms.shard(room).lock();
        if let Some(entry) = shard.get_mut(room) {
            return Ok(f(entry));
        }
        let seq = load_seq()?;
        let name: Arc<str> = Arc::from(room);
        let entry = shard.entry(name.clone()).or_insert(RoomEntry {
            name,
            seq,
            durable: seq,
            reactors: 0,
            json: 0,
            msgpack: 0,
        });
        Ok(f(entry))
    }

    /// Whether `room` has an entry.
    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.shard(room).lock().contains_key(room)
    }

    /// Runs `f` on the user's entry (created empty if absent) under its shard
    /// lock; the entry is dropped again once it has no live connection.
    pub fn with_user<R>(&self, user: &Arc<str>, f: impl FnOnce(&mut UserEntry) -> R) -> R {
        let mut shard = self.users.shard(user).lock();
        let r = match shard.get_mut(&**user) {
            Some(entry) => f(entry),
            None => {
                // The caller's name is shared, not copied.
                let entry = shard.entry(user.clone()).or_default();
                f(entry)
            }
        };
        if shard.get(&**user).is_some_and(|e| e.live == 0 && e.reactors == 0) {
            shard.remove(&**user);
        }
        r
    }

    /// Runs `f` on every room's entry, one shard lock at a time.
    pub fn for_each_room(&self, mut f: impl FnMut(&mut RoomEntry)) {
        for shard in &self.rooms.shards {
            shard.lock().values_mut().for_each(&mut f);
        }
    }

    /// Which reactors hold the user's connections (bit set).
    pub fn user_reactors(&self, user: &str) -> u64 {
        self.users.shard(user).lock().get(user).map_or(0, |e| e.reactors)
    }

    /// Every user with a live connection on this node.
    pub fn online_users(&self) -> Vec<String> {
        let mut out = Vec::new();
        for shard in &self.users.shards {
            out.extend(shard.lock().iter().filter(|(_, e)| e.live > 0).map(|(u, _)| u.to_string()));
        }
        out
    }

    /// Whether the user has a live connection on this node.
    pub fn is_online(&self, user: &str) -> bool {
        self.users.shard(user).lock().get(user).is_some_and(|e| e.live > 0)
    }
}

/// The reactor indices whose bits are set in `mask`.
pub fn bits(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let r = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some(r)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_iterates_set_bits() {
        assert_eq!(bits(0b1010_0001).collect::<Vec<_>>(), vec![0, 5, 7]);
        assert_eq!(bits(0).count(), 0);
        assert_eq!(bits(1 << 63).collect::<Vec<_>>(), vec![63]);
    }

    #[test]
    fn room_loads_seq_once() {
        let d = Directory::new();
        let seq = d.with_room(
            "r",
            || Ok::<_, ()>(41),
            |e| {
                e.seq += 1;
                e.seq
            },
        );
        assert_eq!(seq, Ok(42));
        let seq = d.with_room("r", || Err(()), |e| e.seq);
        assert_eq!(seq, Ok(42));
        assert_eq!(d.with_room("s", || Err("down"), |e| e.seq), Err("down"));
    }

    #[test]
    fn user_entries_vanish_when_offline() {
        let d = Directory::new();
        let u: Arc<str> = Arc::from("u");
        d.with_user(&u, |e| {
            e.live += 1;
            e.reactors |= 2;
        });
        assert!(d.is_online("u"));
        assert_eq!(d.user_reactors("u"), 2);
        d.with_user(&u, |e| {
            e.live -= 1;
            e.reactors = 0;
        });
        assert!(!d.is_online("u"));
    }
}
