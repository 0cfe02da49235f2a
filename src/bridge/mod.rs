//! The cluster's threads (PROTOCOL.md section 6): nodes sharing one Redis
//! form one chat over one pub/sub channel, `chinwag:events`.
//!
//! * the **publisher** ([`publisher`]) takes accepted messages and events
//!   from the reactors, pipelines them to Redis (a message goes through one
//!   Lua script that allocates the room's seq, appends it to the room's
//!   capped log stream and publishes it, atomically), stores what it
//!   learnt, and has the sender answered after the local flush;
//! * the **subscriber** ([`subscriber`]) receives every event once per
//!   node, decodes it once, and applies it through the same directory and
//!   mailboxes as local work. A message whose seq is not the next one is a
//!   gap: the missing ones are read from the room's log first. On every
//!   (re)connect the node restores Redis's seq counters from its own data
//!   (Redis persistence is not assumed) and repairs every room it knows.
//!
//! Presence is per node: each node publishes a snapshot of its online users
//! every [`SNAPSHOT_EVERY`]; a node not heard from for `NODE_TTL` stops
//! counting. While Redis is unreachable, `send` and `dm` answer
//! `unavailable` and `/health` says so; state changes are logged once.
//!
//! Never touches a connection or a room index: it emits `Cmd`s. Both
//! threads stop once the link is stopped (`Peers::stop`).

mod guard;
mod publisher;
mod subscriber;

use crate::{
    auth::Revocation,
    cluster::{revocation_field, Link, Outbound, REVOKED_KEY},
    durable::AfterFlush,
    node::Node,
    storage::StorageError,
    wire,
};
use crossbeam_channel::Receiver;
use redis::{Commands, Connection};
use std::{collections::HashMap, sync::Arc, thread, time::Duration};

/// How often a node publishes its online users.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);

/// Starts the publisher (draining `rx`) and subscriber threads of `link`,
/// after applying every revocation Redis holds (a node that was away must
/// not accept a token revoked meanwhile; if Redis is unreachable, the
/// node's own stored revocations apply).
pub fn start(link: Arc<Link>, rx: Receiver<Outbound>, node: Arc<Node>) -> std::io::Result<()> {
    if let Err(e) = connect(link.client()).and_then(|mut con| sync_revocations(&node, &mut con)) {
        log::warn!("cannot read the cluster's revocations yet ({e}); using this node's own");
    }
    let (l, n) = (link.clone(), node.clone());
    thread::Builder::new()
        .name("chinwag-redis-pub".into())
        .spawn(move || publisher::run(&l, &rx, &n))?;
    thread::Builder::new()
        .name("chinwag-redis-sub".into())
        .spawn(move || subscriber::run(&link, &node))?;
    Ok(())
}

/// Backoff between reconnect attempts: 100 ms doubling to 5 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(6)).min(5000))
}

fn connect(client: &redis::Client) -> redis::RedisResult<Connection> {
    let con = client.get_connection_with_timeout(Duration::from_secs(2))?;
    con.set_read_timeout(Some(Duration::from_secs(5)))?;
    con.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(con)
}

/// Applies every revocation in Redis here, and puts back in Redis those it
/// lacks (a Redis that came back empty).
fn sync_revocations(node: &Node, con: &mut Connection) -> redis::RedisResult<()> {
    let theirs: HashMap<String, String> = con.hgetall(REVOKED_KEY)?;
    for (field, value) in &theirs {
        match parse_revocation(field, value) {
            Some(r) => apply_revocation(node, &r),
            None => log::warn!("ignoring a malformed revocation in Redis: {field:?}"),
        }
    }
    let now_s = wire::now_ms() / 1000;
    for r in node.storage().revocations().unwrap_or_default() {
        let (field, value) = revocation_field(&r, now_s);
        let have = theirs.get(&field).and_then(|v| v.parse::<u64>().ok());
        let missing = match r {
            Revocation::Token(_) => have.is_none(),
            Revocation::User { .. } => have.is_none_or(|h| h < value),
        };
        if missing {
            let _: () = con.hset(REVOKED_KEY, field, value)?;
        }
    }
    Ok(())
}

/// A revocation as Redis holds it, checked like client input.
fn parse_revocation(field: &str, value: &str) -> Option<Revocation> {
    let value: u64 = value.parse().ok()?;
    match field.split_once(':')? {
        ("t", jti) if !jti.is_empty() && jti.len() <= 256 => Some(Revocation::Token(jti.into())),
        ("u", user) if wire::valid_user(user) => {
            Some(Revocation::User { user: user.into(), before: value })
        }
        _ => None,
    }
}

/// Applies a revocation made elsewhere: stored here, then refused.
fn apply_revocation(node: &Node, r: &Revocation) {
    if node.revoked().add(r) {
        let _ = node.storage().revoke(r, wire::now_ms() / 1000);
        node.after_flush(AfterFlush::nothing());
    }
}

/// Stores the two members of a DM room (its first message).
fn store_dm_members(node: &Node, room: &str) -> Result<(), StorageError> {
    if let Some((a, b)) = wire::dm_users(room) {
        node.storage().add_member(room, a)?;
        node.storage().add_member(room, b)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Event;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(30), Duration::from_millis(5000));
    }

    #[test]
    fn revocations_from_redis_are_checked() {
        assert_eq!(parse_revocation("t:abc", "5"), Some(Revocation::Token("abc".into())));
        let user = Revocation::User { user: "bob".into(), before: 9 };
        assert_eq!(parse_revocation("u:bob", "9"), Some(user));
        assert_eq!(parse_revocation("u:bad user", "9"), None);
        assert_eq!(parse_revocation("u:bob", "-1"), None);
        assert_eq!(parse_revocation("x:bob", "1"), None);
        assert_eq!(parse_revocation("t:", "1"), None);
    }

    #[test]
    fn events_roundtrip() {
        let e = Event::Read { node: "n".into(), room: "r".into(), user: "u".into(), seq: 3 };
        let b = rmp_serde::to_vec_named(&e).unwrap();
        assert!(matches!(rmp_serde::from_slice::<Event>(&b).unwrap(), Event::Read { seq: 3, .. }));
    }
}
