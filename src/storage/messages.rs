//! Reading room events: latest seq, history in both directions, one
//! event, a thread's replies, and a user's unread and mention counts.

use super::{
    events::Record,
    keys::{be_u64, msg_key, prefix, sub, tag, tail_u64, Part::*},
    Result, Storage,
};
use crate::wire::{Code, Cursor, Msg, Refusal};

/// Unread and mention counts stop at this many.
pub const COUNT_CAP: u64 = 1000;

impl Storage {
    /// The latest seq of a room (0 if it has no event).
    pub fn last_seq(&self, room: &str) -> Result<u64> {
        let r = self.trees()?.messages.scan_prefix(prefix(room)).next_back().transpose();
        Ok(self.check(r)?.and_then(|(k, _)| tail_u64(&k)).unwrap_or(0))
    }

    /// The ts of a room's latest event (0 if none).
    pub fn last_ts(&self, room: &str) -> Result<u64> {
        let r = self.trees()?.messages.scan_prefix(prefix(room)).next_back().transpose();
        Ok(match self.check(r)? {
            Some((_, v)) => Record::decode(&v)?.ts,
            None => 0,
        })
    }

    /// Stores a plain message (durable after the next flush).
    pub fn append(&self, room: &str, seq: u64, ts: u64, from: &str, text: &str) -> Result<()> {
        let mut m = Msg::message(room, from, text.to_string());
        m.ts = ts;
        self.apply(room, seq, &m)
    }

    /// Event `seq` of `room` as it is now.
    pub fn event(&self, room: &str, seq: u64) -> Result<Option<Msg>> {
        let t = self.trees()?;
        Ok(self.record(&t.messages, room, seq)?.map(|r| r.into_msg(room, seq)))
    }

    /// Event `seq` of `room` if it is a message that is not deleted.
    pub fn live_message(&self, room: &str, seq: u64) -> Result<Option<LiveMessage>> {
        let t = self.trees()?;
        Ok(self.record(&t.messages, room, seq)?.filter(Record::is_live_message).map(|r| {
            LiveMessage { reply_to: r.reply_to(), reactions: r.reactions(), from: r.from }
        }))
    }

    /// Up to `limit` events of `room` from `cursor`, ascending, and whether
    /// more exist in the direction of the query.
    pub fn history(&self, room: &str, cursor: Cursor, limit: usize) -> Result<(Vec<Msg>, bool)> {
        let tree = self.trees()?.messages.clone();
        let (lo, hi) = (msg_key(room, 0), msg_key(room, u64::MAX));
        let forward = matches!(cursor, Cursor::After(_));
        let iter: Box<dyn Iterator<Item = _>> = match cursor {
            Cursor::After(u64::MAX) => return Ok((Vec::new(), false)),
            Cursor::After(after) => Box::new(tree.range(msg_key(room, after + 1)..=hi)),
            Cursor::Before(b) => Box::new(tree.range(lo..msg_key(room, b)).rev()),
            Cursor::Latest => Box::new(tree.range(lo..=hi).rev()),
        };
        let mut out = Vec::with_capacity(limit.min(128));
        let mut more = false;
        for kv in iter {
            let (k, v) = self.check(kv)?;
            if out.len() == limit {
                more = true;
                break;
            }
            let seq = tail_u64(&k).unwrap_or(0);
            out.push(Record::decode(&v)?.into_msg(room, seq));
        }
        if !forward {
            out.reverse();
        }
        Ok((out, more))
    }

    /// Up to `limit` replies to `root` after seq `after`, ascending, in
    /// their current state, and whether more exist.
    pub fn thread(
        &self,
        room: &str,
        root: u64,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Msg>, bool)> {
        let t = self.trees()?;
        let start = sub(room, tag::REPLY, &[N(root), N(after.saturating_add(1))]);
        let end = sub(room, tag::REPLY, &[N(root), N(u64::MAX)]);
        let mut out = Vec::new();
        for kv in t.messages.range(start..=end) {
            let (k, _) = self.check(kv)?;
            if out.len() == limit {
                return Ok((out, true));
            }
            let Some(seq) = tail_u64(&k) else { continue };
            if let Some(r) = self.record(&t.messages, room, seq)? {
                out.push(r.into_msg(room, seq));
            }
        }
        Ok((out, false))
    }

    /// `user`'s unread messages in `room` above `read` (not deleted, not
    /// theirs) and how many of those mention them, both capped at
    /// [`COUNT_CAP`], from the room's indexes: five range reads, never the
    /// room's history. [`Storage::unread`] counts from memory; this is for
    /// a room whose tally is being read.
    pub fn unread_scan(&self, room: &str, user: &str, read: u64) -> Result<(u64, u64)> {
        let t = self.trees()?;
        let tree = &t.messages;
        let total = self.last_ord(tree, room)?;
        let lo = sub(room, tag::ORD, &[N(0)]);
        let r = tree.range(lo..=sub(room, tag::ORD, &[N(read)])).next_back().transpose();
        let below = self.check(r)?.and_then(|(_, v)| be_u64(&v)).unwrap_or(0);
        let above = |space: Vec<u8>, cap: u64| -> Result<u64> {
            let mut end = space.clone();
            end.extend_from_slice(&u64::MAX.to_be_bytes());
            let mut start = space;
            start.extend_from_slice(&read.saturating_add(1).to_be_bytes());
            let mut n = 0;
            for kv in tree.range(start..=end) {
                self.check(kv)?;
                n += 1;
                if n >= cap {
                    break;
                }
            }
            Ok(n)
        };
        let gone = above(sub(room, tag::GONE, &[]), u64::MAX)?;
        let own = above(sub(room, tag::OWN, &[S(user)]), u64::MAX)?;
        let unread = total.saturating_sub(below).saturating_sub(gone).saturating_sub(own);
        let mentions = above(sub(room, tag::MENTION, &[S(user)]), COUNT_CAP)?;
        Ok((unread.min(COUNT_CAP), mentions.min(unread).min(COUNT_CAP)))
    }
}

/// What the rules need to know of a live message.
#[derive(Debug)]
pub struct LiveMessage {
    /// Its author.
    pub from: String,
    /// Its thread root, if it is a reply.
    pub reply_to: Option<u64>,
    /// Its reactions now: each emoji with its users.
    pub reactions: Vec<(String, Vec<String>)>,
}

/// The refusal of an event whose target (or thread root) is missing or
/// deleted.
pub fn not_found() -> Refusal {
    Refusal::new(Code::NotFound, "no such message, or it was deleted")
}

/// The refusal of a reaction that would pass [`MAX_EMOJI`](super::MAX_EMOJI).
pub fn emoji_limit() -> Refusal {
    let why = format!("a message carries at most {} different emoji", super::MAX_EMOJI);
    Refusal::new(Code::LimitReached, why)
}

impl LiveMessage {
    /// Whether reacting with `emoji` adds one more distinct emoji than
    /// [`MAX_EMOJI`](super::MAX_EMOJI) allows.
    pub fn over_limit(&self, emoji: &str) -> bool {
        self.reactions.len() >= super::MAX_EMOJI && !self.reactions.iter().any(|(e, _)| e == emoji)
    }
}
