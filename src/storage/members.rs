//! Memberships, read markers and revoked tokens.

use super::keys::be_u64;
use super::{
    keys::{key2, prefix, suffix},
    Result, Storage,
};
use crate::auth::Revocation;

impl Storage {
    /// Makes `user` a member of `room`. Returns whether it is new.
    pub fn add_member(&self, room: &str, user: &str) -> Result<bool> {
        self.writable()?;
        let t = self.trees()?;
        let r = t.members.insert(key2(room, user), &[]);
        let was = self.check(r)?;
        let r = t.user_rooms.insert(key2(user, room), &[]);
        self.check(r)?;
        Ok(was.is_none())
    }

    /// Removes `user` from `room`. Returns whether it was a member.
    pub fn remove_member(&self, room: &str, user: &str) -> Result<bool> {
        self.writable()?;
        let t = self.trees()?;
        let r = t.members.remove(key2(room, user));
        let was = self.check(r)?;
        let r = t.user_rooms.remove(key2(user, room));
        self.check(r)?;
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
