//! Room events in storage: the record of each event, and the current state
//! of each message derived from them (PROTOCOL.md section 3.1).
//!
//! Events are applied in seq order (under the room's lock, or in order by
//! the cluster subscriber). A message's state is a fold over its own
//! record and the events that touch it (edits, a delete, reactions), so it
//! can be rebuilt when an event is taken back (a flush that failed). An
//! event's record is written first, then the message state it changes and
//! every index it moves (see `writes.rs` for why not in one batch, and
//! `repair_tails` for a crash in between).

use super::{
    keys::{msg_key, prefix, sub, tag, Part::*},
    writes::Writes,
    Result, Storage, StorageError, Trees,
};
use crate::wire::{Kind, Msg, Reaction};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The first byte of a record in this format (records of the first format
/// are MessagePack 3-arrays, 0x93).
const VERSION: u8 = 1;
/// At most this many distinct emoji on one message.
pub const MAX_EMOJI: usize = 20;

/// One stored event; for a message, with its current state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Record {
    kind: u8,
    pub ts: u64,
    pub from: String,
    /// A message's current text, an edit's text; empty once deleted.
    pub text: String,
    reply_to: Option<u64>,
    /// A message's current mentions, an edit's.
    mentions: Vec<String>,
    target: Option<u64>,
    emoji: Option<String>,
    on: bool,
    /// A message's text and mentions before its first edit (a rebuild
    /// starts from them); gone with the message.
    orig: Option<(String, Vec<String>)>,
    edited_ts: Option<u64>,
    /// A deleted message, or an edit whose text went with its message.
    deleted: bool,
    reactions: Vec<(String, Vec<String>)>,
    replies: u64,
    last_reply_ts: Option<u64>,
}

fn kind_of(k: u8) -> Kind {
    match k {
        1 => Kind::Edit,
        2 => Kind::Delete,
        3 => Kind::Reaction,
        _ => Kind::Message,
    }
}

fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::Message => 0,
        Kind::Edit => 1,
        Kind::Delete => 2,
        Kind::Reaction => 3,
    }
}

impl Record {
    fn from_event(ev: &Msg) -> Record {
        Record {
            kind: kind_code(ev.kind),
            ts: ev.ts,
            from: ev.from.clone(),
            text: ev.text.clone().unwrap_or_default(),
            reply_to: ev.reply_to,
            mentions: ev.mentions.clone(),
            target: ev.target,
            emoji: ev.emoji.clone(),
            on: ev.on.unwrap_or(false),
            ..Record::default()
        }
    }

    fn is_message(&self) -> bool {
        self.kind == 0
    }

    /// Whether it is a message that is not deleted.
    pub fn is_live_message(&self) -> bool {
        self.is_message() && !self.deleted
    }

    /// The thread root it replies to.
    pub fn reply_to(&self) -> Option<u64> {
        self.reply_to
    }

    /// Its reactions now: each emoji, in first-reaction order, with its
    /// users.
    pub fn reactions(&self) -> Vec<(String, Vec<String>)> {
        self.reactions.clone()
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut v = vec![VERSION];
        // A struct of plain fields always serialises.
        let _ = rmp_serde::encode::write(&mut v, self);
        v
    }

    pub(super) fn decode(v: &[u8]) -> Result<Record> {
        let corrupt = |e: rmp_serde::decode::Error| StorageError(format!("corrupt event: {e}"));
        match v.first() {
            Some(&VERSION) => rmp_serde::from_slice(&v[1..]).map_err(corrupt),
            _ => {
                let (ts, from, text): (u64, String, String) =
                    rmp_serde::from_slice(v).map_err(corrupt)?;
                Ok(Record { ts, from, text, ..Record::default() })
            }
        }
    }

    /// The wire form: a message shows its current state.
    pub(super) fn into_msg(self, room: &str, seq: u64) -> Msg {
        let kind = kind_of(self.kind);
        let has_text = matches!(kind, Kind::Message | Kind::Edit) && !self.deleted;
        let root = kind == Kind::Message && (self.replies > 0 || self.last_reply_ts.is_some());
        Msg {
            kind,
            room: room.to_string(),
            seq,
            ts: self.ts,
            from: self.from,
            text: has_text.then_some(self.text),
            reply_to: self.reply_to,
            mentions: if self.deleted { Vec::new() } else { self.mentions },
            target: self.target,
            emoji: self.emoji,
            on: (kind == Kind::Reaction).then_some(self.on),
            edited_ts: self.edited_ts,
            deleted: self.deleted,
            reactions: self
                .reactions
                .into_iter()
                .map(|(emoji, users)| Reaction { emoji, users })
                .collect(),
            replies: root.then_some(self.replies),
            last_reply_ts: self.last_reply_ts,
        }
    }

    /// The users its mentions index lists: live, and not the author.
    fn mentioned(&self) -> BTreeSet<&str> {
        if !self.is_live_message() {
            return BTreeSet::new();
        }
        self.mentions.iter().map(String::as_str).filter(|m| *m != self.from).collect()
    }
}

/// A reply index value: deleted flag, then ts.
fn reply_value(deleted: bool, ts: u64) -> Vec<u8> {
    let mut v = vec![deleted as u8];
    v.extend_from_slice(&ts.to_be_bytes());
    v
}

/// Adds or removes `user`'s reaction `emoji` (a new emoji goes last, and
/// only while fewer than [`MAX_EMOJI`] are there).
fn toggle(rs: &mut Vec<(String, Vec<String>)>, emoji: &str, user: &str, on: bool) {
    let i = rs.iter().position(|(e, _)| e == emoji);
    match (i, on) {
        (Some(i), true) if !rs[i].1.iter().any(|u| u == user) => rs[i].1.push(user.to_string()),
        (None, true) if rs.len() < MAX_EMOJI => rs.push((emoji.to_string(), vec![user.into()])),
        (Some(i), false) => {
            rs[i].1.retain(|u| u != user);
            if rs[i].1.is_empty() {
                rs.remove(i);
            }
        }
        _ => {}
    }
}

/// A change to one reply's entry while recounting its root.
type ReplyChange = (u64, Option<(bool, u64)>);

impl Storage {
    /// The record of `room`'s event `seq`.
    pub(super) fn record(&self, tree: &sled::Tree, room: &str, seq: u64) -> Result<Option<Record>> {
        let r = tree.get(msg_key(room, seq));
        self.check(r)?.map(|v| Record::decode(&v)).transpose()
    }

    /// Stores event `seq` of `room` (the room's next seq) with every change
    /// it makes: durable after the next flush.
    pub fn apply(&self, room: &str, seq: u64, ev: &Msg) -> Result<()> {
        self.writable()?;
        self.derive(room, seq, Record::from_event(ev), false)
    }

    /// Writes event `seq`'s record, then everything it derives. `again`: the
    /// record is stored already and some of what it derives may be too
    /// (each write is idempotent but the ordinal, kept if it exists).
    fn derive(&self, room: &str, seq: u64, rec: Record, again: bool) -> Result<()> {
        let t = self.trees()?;
        self.unmark_clean(&t)?;
        let (b, ord) = self.plan(&t, room, seq, rec, again)?;
        let r = b.apply(&t.messages, &self.inner.tallies);
        let mut ords = t.ords.lock();
        match (&r, ord) {
            (Ok(()), Some(ord)) => drop(ords.insert(room.into(), ord)),
            (Ok(()), None) => {}
            // Whether the ordinal went in is unknown: read it again.
            (Err(_), _) => drop(ords.remove(room)),
        }
        drop(ords);
        self.check(r)
    }

    /// The writes of [`derive`](Self::derive), record first.
    /// Also returns the room's new latest ordinal, if it writes one.
    fn plan(
        &self,
        t: &Trees,
        room: &str,
        seq: u64,
        rec: Record,
        again: bool,
    ) -> Result<(Writes, Option<u64>)> {
        let tree = &t.messages;
        let mut b = Writes::default();
        let mut new_ord = None;
        b.insert(msg_key(room, seq), rec.encode());
        if rec.is_message() {
            let ord_key = sub(room, tag::ORD, &[N(seq)]);
            if !(again && self.check(tree.contains_key(&ord_key))?) {
                let cached = t.ords.lock().get(room).copied();
                let ord = match cached {
                    Some(ord) => ord,
                    None => self.last_ord(tree, room)?,
                } + 1;
                b.insert(ord_key, ord.to_be_bytes().to_vec());
                new_ord = Some(ord);
            }
            if !rec.deleted {
                b.insert(sub(room, tag::OWN, &[S(&rec.from), N(seq)]), vec![]);
            }
            for m in rec.mentioned() {
                b.insert(sub(room, tag::MENTION, &[S(m), N(seq)]), vec![]);
            }
            if let Some(root) = rec.reply_to {
                let entry = (rec.deleted, rec.ts);
                b.insert(sub(room, tag::REPLY, &[N(root), N(seq)]), reply_value(entry.0, entry.1));
                self.recount_root(tree, room, root, Some((seq, Some(entry))), &mut b)?;
            }
        } else if let Some(target) = rec.target {
            b.insert(sub(room, tag::TOUCH, &[N(target), N(seq)]), vec![]);
            self.refold(tree, room, target, Some((seq, rec)), None, &mut b)?;
        }
        Ok((b, new_ord))
    }

    /// Derives each room's last event again: after a crash between an
    /// event's record and what it derives (sled recovers a prefix of its
    /// log, and a room's events are written one after the other, so only
    /// the last can be incomplete). Returns the rooms looked at.
    pub(super) fn repair_tails(&self) -> Result<usize> {
        let tree = self.trees()?.messages.clone();
        let rooms = self.event_rooms()?;
        for room in &rooms {
            let last = tree.range(prefix(room)..=msg_key(room, u64::MAX)).next_back();
            if let Some((k, v)) = self.check(last.transpose())? {
                if let (Some(seq), Ok(rec)) = (super::keys::tail_u64(&k), Record::decode(&v)) {
                    self.derive(room, seq, rec, true)?;
                }
            }
        }
        Ok(rooms.len())
    }

    /// Every room with events or indexes, in key order: one seek per room
    /// (the `messages` tree holds nothing else).
    pub fn event_rooms(&self) -> Result<Vec<String>> {
        let tree = self.trees()?.messages.clone();
        let mut rooms = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let next = tree.range(from.as_slice()..).next().transpose();
            let Some((k, _)) = self.check(next)? else { break };
            // Room names are printable; the byte after one is its tag.
            let end = k.iter().position(|&b| b < 0x20).unwrap_or(k.len());
            rooms.push(String::from_utf8_lossy(&k[..end]).into_owned());
            from = k[..end].to_vec();
            from.push(0x20);
        }
        Ok(rooms)
    }

    /// Takes back event `seq` of `room` (never made durable): removes what
    /// it added, rebuilds the message it changed, and removes it last (a
    /// crash in between leaves it whole, see [`Storage::repair_tails`]).
    pub fn unapply(&self, room: &str, seq: u64) -> Result<()> {
        let t = self.trees()?;
        let tree = &t.messages;
        let Some(rec) = self.record(tree, room, seq)? else { return Ok(()) };
        self.unmark_clean(&t)?;
        let mut b = Writes::default();
        if rec.is_message() {
            b.remove(sub(room, tag::ORD, &[N(seq)]));
            b.remove(sub(room, tag::OWN, &[S(&rec.from), N(seq)]));
            b.remove(sub(room, tag::GONE, &[N(seq)]));
            for m in rec.mentioned() {
                b.remove(sub(room, tag::MENTION, &[S(m), N(seq)]));
            }
            if let Some(root) = rec.reply_to {
                b.remove(sub(room, tag::REPLY, &[N(root), N(seq)]));
                self.recount_root(tree, room, root, Some((seq, None)), &mut b)?;
            }
        } else if let Some(target) = rec.target {
            b.remove(sub(room, tag::TOUCH, &[N(target), N(seq)]));
            self.refold(tree, room, target, None, Some(seq), &mut b)?;
        }
        b.remove(msg_key(room, seq));
        let r = b.apply(tree, &self.inner.tallies);
        t.ords.lock().remove(room);
        self.check(r)
    }

    /// The latest message ordinal of `room` (0: none).
    pub(super) fn last_ord(&self, tree: &sled::Tree, room: &str) -> Result<u64> {
        let r = tree.scan_prefix(sub(room, tag::ORD, &[])).next_back().transpose();
        Ok(self.check(r)?.and_then(|(_, v)| super::keys::be_u64(&v)).unwrap_or(0))
    }

    /// Rebuilds message `target`'s state from its record and the events
    /// touching it (those stored, `extra` being added, `skip` being taken
    /// back), and queues the writes: the state, blanked edits once it is
    /// deleted, and its index entries.
    fn refold(
        &self,
        tree: &sled::Tree,
        room: &str,
        target: u64,
        extra: Option<(u64, Record)>,
        skip: Option<u64>,
        b: &mut Writes,
    ) -> Result<()> {
        let Some(old) = self.record(tree, room, target)? else { return Ok(()) };
        if !old.is_message() {
            return Ok(());
        }
        let mut touches = Vec::new();
        for kv in tree.scan_prefix(sub(room, tag::TOUCH, &[N(target)])) {
            let (k, _) = self.check(kv)?;
            let Some(seq) = super::keys::tail_u64(&k) else { continue };
            if Some(seq) != skip && extra.as_ref().is_none_or(|(s, _)| *s != seq) {
                if let Some(r) = self.record(tree, room, seq)? {
                    touches.push((seq, r));
                }
            }
        }
        touches.extend(extra);
        touches.sort_by_key(|(s, _)| *s);
        let m = fold(&old, &touches);
        if m.deleted {
            for (seq, e) in touches.iter().filter(|(_, e)| e.kind == 1 && !e.deleted) {
                let blank = Record {
                    text: String::new(),
                    mentions: Vec::new(),
                    deleted: true,
                    ..e.clone()
                };
                b.insert(msg_key(room, *seq), blank.encode());
            }
        }
        let (was, now) = (old.mentioned(), m.mentioned());
        for u in was.difference(&now) {
            b.remove(sub(room, tag::MENTION, &[S(u), N(target)]));
        }
        for u in now.difference(&was) {
            b.insert(sub(room, tag::MENTION, &[S(u), N(target)]), vec![]);
        }
        if m.deleted != old.deleted {
            let (own, gone) =
                (sub(room, tag::OWN, &[S(&m.from), N(target)]), sub(room, tag::GONE, &[N(target)]));
            if m.deleted {
                b.remove(own);
                b.insert(gone, vec![]);
            } else {
                b.insert(own, vec![]);
                b.remove(gone);
            }
            if let Some(root) = m.reply_to {
                let entry = reply_value(m.deleted, m.ts);
                b.insert(sub(room, tag::REPLY, &[N(root), N(target)]), entry);
                self.recount_root(tree, room, root, Some((target, Some((m.deleted, m.ts)))), b)?;
            }
        }
        b.insert(msg_key(room, target), m.encode());
        Ok(())
    }

    /// Recounts thread root `root`'s replies (not deleted) and latest reply
    /// ts from its reply index, with `change` applied, and queues the root's
    /// new state.
    fn recount_root(
        &self,
        tree: &sled::Tree,
        room: &str,
        root: u64,
        change: Option<ReplyChange>,
        b: &mut Writes,
    ) -> Result<()> {
        let Some(mut r) = self.record(tree, room, root)? else { return Ok(()) };
        let mut entries = Vec::new();
        for kv in tree.scan_prefix(sub(room, tag::REPLY, &[N(root)])) {
            let (k, v) = self.check(kv)?;
            let Some(seq) = super::keys::tail_u64(&k) else { continue };
            let ts = super::keys::be_u64(v.get(1..9).unwrap_or_default()).unwrap_or(0);
            entries.push((seq, (v.first() == Some(&1), ts)));
        }
        if let Some((seq, to)) = change {
            entries.retain(|(s, _)| *s != seq);
            entries.extend(to.map(|e| (seq, e)));
        }
        let live = entries.iter().filter(|(_, (deleted, _))| !deleted);
        r.replies = live.clone().count() as u64;
        r.last_reply_ts = live.map(|(_, (_, ts))| *ts).max();
        b.insert(msg_key(room, root), r.encode());
        Ok(())
    }
}

/// A message's state after `touches` (ascending), from its original text.
fn fold(old: &Record, touches: &[(u64, Record)]) -> Record {
    let mut m = old.clone();
    if let Some((text, mentions)) = &old.orig {
        m.text = text.clone();
        m.mentions = mentions.clone();
    }
    m.edited_ts = None;
    m.deleted = false;
    m.reactions.clear();
    for (_, e) in touches {
        match e.kind {
            1 if !m.deleted && e.from == m.from => {
                if m.orig.is_none() {
                    m.orig = Some((m.text.clone(), m.mentions.clone()));
                }
                m.text = e.text.clone();
                m.mentions = e.mentions.clone();
                m.edited_ts = Some(e.ts);
            }
            2 => m.deleted = true,
            3 if !m.deleted => {
                toggle(&mut m.reactions, e.emoji.as_deref().unwrap_or(""), &e.from, e.on)
            }
            _ => {}
        }
    }
    if m.deleted {
        m.text.clear();
        m.mentions.clear();
        m.orig = None;
        m.reactions.clear();
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(from: &str, text: &str, reply_to: Option<u64>, mentions: &[&str]) -> Msg {
        let mut m = Msg::message("r", from, text.into());
        m.reply_to = reply_to;
        m.mentions = mentions.iter().map(|s| s.to_string()).collect();
        m
    }

    fn on(kind: Kind, from: &str, target: u64) -> Msg {
        Msg::on_target(kind, "r", from, target)
    }

    /// Opens `dir` again; sled lets go of its lock a little after the last
    /// handle drops (its IO threads hold one briefly).
    fn reopen(dir: &std::path::Path) -> Storage {
        for _ in 0..500 {
            match Storage::open(dir) {
                Ok(s) => return s,
                Err(e) if e.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{} stays locked", dir.display());
    }

    fn dump(s: &Storage) -> Vec<(sled::IVec, sled::IVec)> {
        s.trees().unwrap().messages.iter().map(|kv| kv.unwrap()).collect()
    }

    /// The ordinals kept in memory follow what is stored: a message taken
    /// back gives its ordinal back, and a new handle reads them from disk.
    #[test]
    fn ordinals_count_the_stored_messages() {
        let dir = tempfile::tempdir().unwrap();
        let ords = |s: &Storage, room: &str| -> Vec<u64> {
            let t = s.trees().unwrap();
            let p = sub(room, tag::ORD, &[]);
            t.messages
                .scan_prefix(p)
                .map(|kv| super::super::keys::be_u64(&kv.unwrap().1).unwrap())
                .collect()
        };
        {
            let s = Storage::open(dir.path()).unwrap();
            for seq in 1..=3 {
                s.apply("r", seq, &msg("a", "x", None, &[])).unwrap();
            }
            s.apply("q", 1, &msg("a", "x", None, &[])).unwrap();
            s.unapply("r", 3).unwrap();
            s.apply("r", 3, &msg("a", "y", None, &[])).unwrap();
            // Not a message: no ordinal.
            s.apply("r", 4, &on(Kind::Delete, "a", 1)).unwrap();
            assert_eq!(ords(&s, "r"), [1, 2, 3]);
            assert_eq!(ords(&s, "q"), [1]);
            s.flush().unwrap();
        }
        let s = reopen(dir.path());
        s.apply("r", 5, &msg("a", "z", None, &[])).unwrap();
        assert_eq!(ords(&s, "r"), [1, 2, 3, 4]);
    }

    #[test]
    fn a_clean_stop_skips_the_repair_until_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let marked =
            |s: &Storage| s.trees().unwrap().meta.contains_key(super::super::CLEAN_KEY).unwrap();
        {
            let s = Storage::open(dir.path()).unwrap();
            s.apply("r", 1, &msg("a", "one", None, &[])).unwrap();
            s.mark_clean().unwrap();
            assert!(marked(&s));
            // A write after the mark takes it away.
            s.apply("r", 2, &msg("a", "two", None, &[])).unwrap();
            assert!(!marked(&s));
            s.mark_clean().unwrap();
        }
        let s = reopen(dir.path());
        assert!(!marked(&s), "open takes the mark away");
        assert_eq!(s.last_seq("r").unwrap(), 2);
    }

    /// A crash can leave a room's last event with any prefix of its writes
    /// (record first); opening the database again completes it.
    #[test]
    fn a_cut_short_last_event_is_completed_at_open() {
        let mut edit = on(Kind::Edit, "alice", 1);
        edit.text = Some("hi again @carol".into());
        edit.mentions = vec!["carol".into()];
        let mut react = on(Kind::Reaction, "bob", 1);
        (react.emoji, react.on) = (Some("+1".into()), Some(true));
        let base = [
            msg("alice", "hi @bob", None, &["bob"]),
            msg("bob", "yo", Some(1), &[]),
            edit.clone(),
            react.clone(),
        ];
        let mut unreact = react.clone();
        unreact.on = Some(false);
        let mut edit_reply = on(Kind::Edit, "bob", 2);
        edit_reply.text = Some("yo @alice".into());
        edit_reply.mentions = vec!["alice".into()];
        let lasts = [
            msg("carol", "me too @alice", Some(1), &["alice"]),
            on(Kind::Delete, "bob", 2),
            on(Kind::Delete, "alice", 1),
            edit_reply,
            unreact,
        ];
        for (i, last) in lasts.iter().enumerate() {
            let full_dir = tempfile::tempdir().unwrap();
            let full = Storage::open(full_dir.path()).unwrap();
            for (n, ev) in base.iter().chain([last]).enumerate() {
                full.apply("r", n as u64 + 1, ev).unwrap();
            }
            let want = dump(&full);
            let seq = base.len() as u64 + 1;
            let n = {
                let t = full.trees().unwrap();
                let writes = full.plan(&t, "r", seq, Record::from_event(last), false);
                writes.unwrap().0.len()
            };
            for cut in 1..n {
                let dir = tempfile::tempdir().unwrap();
                {
                    let s = Storage::open(dir.path()).unwrap();
                    for (n, ev) in base.iter().enumerate() {
                        s.apply("r", n as u64 + 1, ev).unwrap();
                    }
                    let t = s.trees().unwrap();
                    let (mut writes, _) =
                        s.plan(&t, "r", seq, Record::from_event(last), false).unwrap();
                    writes.truncate(cut);
                    writes.apply(&t.messages, &s.inner.tallies).unwrap();
                    s.flush().unwrap();
                }
                let s = reopen(dir.path());
                assert!(dump(&s) == want, "last event {i}, cut after {cut} of {n} writes");
            }
        }
    }

    #[test]
    fn reactions_keep_first_reaction_order() {
        let mut rs = Vec::new();
        toggle(&mut rs, "a", "u1", true);
        toggle(&mut rs, "b", "u2", true);
        toggle(&mut rs, "a", "u2", true);
        toggle(&mut rs, "a", "u1", false);
        assert_eq!(rs, vec![("a".into(), vec!["u2".into()]), ("b".into(), vec!["u2".into()])]);
        toggle(&mut rs, "a", "u2", false);
        toggle(&mut rs, "a", "u3", true);
        assert_eq!(rs[1], ("a".into(), vec!["u3".into()]), "re-added emoji goes last");
        for i in 0..30 {
            toggle(&mut rs, &format!("e{i}"), "u", true);
        }
        assert_eq!(rs.len(), MAX_EMOJI);
    }
}
