//! Memberships (with each room's member count, for the directory),
//! users and their display names, read markers and revoked tokens.

use super::keys::be_u64;
use super::{
    keys::{key2, prefix, suffix},
    Result, Storage,
};
use crate::auth::Revocation;
use std::sync::atomic::Ordering;

impl Storage {
    /// Makes `user` a member of `room`. Returns whether it is new.
    pub fn add_member(&self, room: &str, user: &str) -> Result<bool> {
        self.writable()?;
        let t = self.trees()?;
        // Written second, so present only when both are: a join of a
        // member (every reconnecting client's) then writes nothing, where
        // sled kept a new version of both keys in memory and in its log.
        let r = t.user_rooms.contains_key(key2(user, room));
        if self.check(r)? {
            return Ok(false);
        }
        let r = t.members.insert(key2(room, user), &[]);
        let was = self.check(r)?;
        let r = t.user_rooms.insert(key2(user, room), &[]);
        self.moved_membership();
        self.check(r)?;
        if was.is_none() {
            self.count_member(room, 1)?;
        }
        Ok(was.is_none())
    }

    /// Moves [`Storage::membership_gen`] (after the write it follows).
    pub(super) fn moved_membership(&self) {
        self.inner.memberships.fetch_add(1, Ordering::SeqCst);
    }

    /// A number that moves after every membership written or removed (and
    /// on a reopen): equal before and after a [`Storage::rooms_of`] plus
    /// whatever follows it, the list is still current.
    pub fn membership_gen(&self) -> u64 {
        self.inner.memberships.load(Ordering::SeqCst)
    }

    /// Moves `room`'s member count by `delta`.
    fn count_member(&self, room: &str, delta: i64) -> Result<()> {
        let r = self.trees()?.room_members.update_and_fetch(room.as_bytes(), |old| {
            let n = old.and_then(be_u64).unwrap_or(0).saturating_add_signed(delta);
            (n > 0).then(|| n.to_be_bytes().to_vec())
        });
        self.check(r).map(drop)
    }

    /// Rooms with members whose name starts with `prefix` and sorts after
    /// `after`, by name: up to `limit` of them with their member counts,
    /// and whether more exist.
    pub fn directory(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, u64)>, bool)> {
        let t = self.trees()?;
        let mut out = Vec::new();
        let start = match after {
            Some(a) if a >= prefix => {
                let mut k = a.as_bytes().to_vec();
                k.push(0);
                k
            }
            _ => prefix.as_bytes().to_vec(),
        };
        for kv in t.room_members.range(start..) {
            let (k, v) = self.check(kv)?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            let room = String::from_utf8_lossy(&k).into_owned();
            if !crate::wire::valid_room(&room) {
                continue; // DM rooms are not listed.
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push((room, be_u64(&v).unwrap_or(0)));
        }
        Ok((out, false))
    }

    /// Records that `user` connected, with the display name of their token
    /// (if any). Returns (first time ever, the name changed).
    pub fn saw_user(&self, user: &str, name: Option<&str>) -> Result<(bool, bool)> {
        self.writable()?;
        let t = self.trees()?;
        let r = t.users.get(user.as_bytes());
        let old = self.check(r)?;
        let changed = name.is_some_and(|n| old.as_deref() != Some(n.as_bytes()));
        if old.is_none() || changed {
            let value = name.map(str::as_bytes).or(old.as_deref()).unwrap_or_default().to_vec();
            let r = t.users.insert(user.as_bytes(), value);
            self.check(r)?;
        }
        Ok((old.is_none(), changed))
    }

    /// The display names of those of `users` that have one.
    pub fn names<'a>(
        &self,
        users: impl IntoIterator<Item = &'a String>,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let t = self.trees()?;
        let mut out = std::collections::BTreeMap::new();
        for u in users {
            let r = t.users.get(u.as_bytes());
            if let Some(v) = self.check(r)?.filter(|v| !v.is_empty()) {
                out.insert(u.clone(), String::from_utf8_lossy(&v).into_owned());
            }
        }
        Ok(out)
    }

    /// Removes `user` from `room`. Returns whether it was a member.
    pub fn remove_member(&self, room: &str, user: &str) -> Result<bool> {
        self.writable()?;
        let t = self.trees()?;
        let r = t.members.remove(key2(room, user));
        let was = self.check(r)?;
        let r = t.user_rooms.remove(key2(user, room));
        self.moved_membership();
        self.check(r)?;
        if was.is_some() {
            self.count_member(room, -1)?;
        }
        Ok(was.is_some())
    }

    /// Whether `user` is a member of `room`.
    pub fn is_member(&self, room: &str, user: &str) -> Result<bool> {
        let r = self.trees()?.members.contains_key(key2(room, user));
        self.check(r)
    }

    /// All member user ids of `room`, sorted.
    pub fn members(&self, room: &str) -> Result<Vec<String>> {
        let p = prefix(room);
        let mut out = Vec::new();
        for kv in self.trees()?.members.scan_prefix(&p) {
            let (k, _) = self.check(kv)?;
            out.push(suffix(&k, p.len())?);
        }
        Ok(out)
    }

    /// Every room that has (or had) a member, sorted.
    pub fn rooms(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for kv in self.trees()?.members.iter() {
            let (k, _) = self.check(kv)?;
            let end = k.iter().position(|&b| b == 0).unwrap_or(k.len());
            let room = String::from_utf8_lossy(&k[..end]).into_owned();
            if out.last() != Some(&room) {
                out.push(room);
            }
        }
        Ok(out)
    }

    /// How many rooms `user` is a member of.
    pub fn count_rooms_of(&self, user: &str) -> Result<usize> {
        let mut n = 0;
        for kv in self.trees()?.user_rooms.scan_prefix(prefix(user)) {
            self.check(kv)?;
            n += 1;
        }
        Ok(n)
    }

    /// All rooms `user` is a member of, sorted.
    pub fn rooms_of(&self, user: &str) -> Result<Vec<String>> {
        let p = prefix(user);
        let mut out = Vec::new();
        for kv in self.trees()?.user_rooms.scan_prefix(&p) {
            let (k, _) = self.check(kv)?;
            out.push(suffix(&k, p.len())?);
        }
        Ok(out)
    }

    /// Sets `user`'s read marker in `room` (never moves it backwards).
    pub fn set_read(&self, user: &str, room: &str, seq: u64) -> Result<u64> {
        self.writable()?;
        let r = self.trees()?.reads.fetch_and_update(key2(user, room), |old| {
            let old = old.and_then(be_u64).unwrap_or(0);
            Some(old.max(seq).to_be_bytes().to_vec())
        });
        let old = self.check(r)?.and_then(|v| be_u64(&v)).unwrap_or(0);
        Ok(old.max(seq))
    }

    /// `user`'s read marker in `room` (0 if none).
    pub fn read_marker(&self, user: &str, room: &str) -> Result<u64> {
        let r = self.trees()?.reads.get(key2(user, room));
        Ok(self.check(r)?.and_then(|v| be_u64(&v)).unwrap_or(0))
    }

    /// Every read marker of `user`, by room, in the order of room names
    /// (bytes): one range read (a `hello` of 1,000 rooms made 1,000
    /// lookups), in the order [`Storage::rooms_of`] lists rooms.
    pub fn read_markers(&self, user: &str) -> Result<Vec<(String, u64)>> {
        let p = prefix(user);
        let mut out = Vec::new();
        for kv in self.trees()?.reads.scan_prefix(&p) {
            let (k, v) = self.check(kv)?;
            out.push((suffix(&k, p.len())?, be_u64(&v).unwrap_or(0)));
        }
        Ok(out)
    }

    /// Records a revocation (durable after the next flush); `now_s` is
    /// when, for a token's.
    pub fn revoke(&self, r: &Revocation, now_s: u64) -> Result<()> {
        self.writable()?;
        let t = self.trees()?;
        let r = match r {
            Revocation::Token(jti) => t.revoked.insert(jti.as_bytes(), &now_s.to_be_bytes()),
            Revocation::User { user, before } => {
                t.revoked_users.fetch_and_update(user.as_bytes(), |old| {
                    let old = old.and_then(be_u64).unwrap_or(0);
                    Some(old.max(*before).to_be_bytes().to_vec())
                })
            }
        };
        self.check(r).map(drop)
    }

    /// Every revocation.
    pub fn revocations(&self) -> Result<Vec<Revocation>> {
        let t = self.trees()?;
        let mut out = Vec::new();
        for kv in t.revoked.iter() {
            let (k, _) = self.check(kv)?;
            out.push(Revocation::Token(String::from_utf8_lossy(&k).into_owned()));
        }
        for kv in t.revoked_users.iter() {
            let (k, v) = self.check(kv)?;
            let user = String::from_utf8_lossy(&k).into_owned();
            out.push(Revocation::User { user, before: be_u64(&v).unwrap_or(u64::MAX) });
        }
        Ok(out)
    }
}
