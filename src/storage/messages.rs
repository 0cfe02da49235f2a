//! Messages: append, latest seq, history in both directions.

use super::{
    keys::{be_u64, msg_key, prefix},
    Result, Storage, StorageError,
};
use crate::wire::{Cursor, Msg};

impl Storage {
    /// The latest seq of a room (0 if it has no message).
    pub fn last_seq(&self, room: &str) -> Result<u64> {
        let r = self.trees()?.messages.scan_prefix(prefix(room)).next_back().transpose();
        Ok(self.check(r)?.and_then(|(k, _)| be_u64(&k[k.len().saturating_sub(8)..])).unwrap_or(0))
    }

    /// Stores one message (durable after the next flush).
    pub fn append(&self, room: &str, seq: u64, ts: u64, from: &str, text: &str) -> Result<()> {
        self.writable()?;
        let value =
            rmp_serde::to_vec(&(ts, from, text)).map_err(|e| StorageError(e.to_string()))?;
        let r = self.trees()?.messages.insert(msg_key(room, seq), value);
        self.check(r).map(drop)
    }

    /// Drops a stored message that could not be made durable.
    pub fn remove_message(&self, room: &str, seq: u64) -> Result<()> {
        let r = self.trees()?.messages.remove(msg_key(room, seq));
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
                    for kv in self.trees()?.messages.range(start..=end) {
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
                    self.trees()?.messages.range(lo..=end)
                } else {
                    self.trees()?.messages.range(lo..end)
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
}
