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
