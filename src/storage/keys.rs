//! Key encoding: `a 0x00 b` pairs, message keys sorted by seq, prefixes.

use super::{Result, StorageError};

pub(super) fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1 + b.len());
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

pub(super) fn msg_key(room: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(room.len() + 9);
    k.extend_from_slice(room.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn prefix(a: &str) -> Vec<u8> {
    let mut k = a.as_bytes().to_vec();
    k.push(0);
    k
}

pub(super) fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// The part of a key after `prefix`, as a string.
pub(super) fn suffix(key: &[u8], prefix_len: usize) -> Result<String> {
    String::from_utf8(key.get(prefix_len..).unwrap_or_default().to_vec())
        .map_err(|_| StorageError("corrupt key".into()))
}

/// Sub-spaces of a room in the `messages` tree, after `room`: the events
/// themselves under 0x00, derived indexes under the other tags, all in one
/// tree (one sled log order for an event and what it derives).
pub(super) mod tag {
    // 0x00: `seq` → the event (`msg_key`).
    /// `target seq` → (): the edits, deletes and reactions of a message.
    pub const TOUCH: u8 = 1;
    /// `root seq` → deleted flag and ts: the replies of a thread root.
    pub const REPLY: u8 = 2;
    /// `user 0x00 seq` → (): live messages that mention `user` (not theirs).
    pub const MENTION: u8 = 3;
    /// `user 0x00 seq` → (): `user`'s live messages.
    pub const OWN: u8 = 4;
    /// `seq` → (): deleted messages.
    pub const GONE: u8 = 5;
    /// `seq` → ordinal (u64 BE): the n-th message of the room.
    pub const ORD: u8 = 6;
}

/// `room tag` followed by `parts` (numbers big-endian, strings then 0x00).
pub(super) fn sub(room: &str, tag: u8, parts: &[Part<'_>]) -> Vec<u8> {
    let mut k = Vec::with_capacity(room.len() + 1 + parts.len() * 9);
    k.extend_from_slice(room.as_bytes());
    k.push(tag);
    for p in parts {
        match p {
            Part::N(n) => k.extend_from_slice(&n.to_be_bytes()),
            Part::S(s) => {
                k.extend_from_slice(s.as_bytes());
                k.push(0);
            }
        }
    }
    k
}

/// One part of a sub-space key.
#[derive(Clone, Copy, Debug)]
pub(super) enum Part<'a> {
    /// A number (seq), big-endian so keys sort by it.
    N(u64),
    /// A user id, ended by 0x00.
    S(&'a str),
}

/// The seq in the last 8 bytes of a key.
pub(super) fn tail_u64(k: &[u8]) -> Option<u64> {
    be_u64(&k[k.len().checked_sub(8)?..])
}
