//! The cluster's threads (PROTOCOL.md section 6): nodes sharing one Redis
//! form one chat over one pub/sub channel, `chinwag:events`.
//!
//! * the **publisher** ([`publisher`]) takes accepted messages and events
//!   from the reactors, pipelines them to Redis (a message goes through one
//!   Lua script that allocates the room's seq, appends it to the room's
//!   capped log stream and publishes it, atomically), stores what it
//!   learnt, and has the commit thread answer after the local flush;
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

mod publisher;
mod subscriber;

use crate::{
    cluster::{Link, Outbound},
    node::Node,
    storage::StorageError,
    wire,
};
use crossbeam_channel::Receiver;
use redis::Connection;
use std::{sync::Arc, thread, time::Duration};

/// How often a node publishes its online users.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);

/// Starts the publisher (draining `rx`) and subscriber threads of `link`.
pub fn start(link: Arc<Link>, rx: Receiver<Outbound>, node: Arc<Node>) -> std::io::Result<()> {
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
    fn events_roundtrip() {
        let e = Event::Read { node: "n".into(), room: "r".into(), user: "u".into(), seq: 3 };
        let b = rmp_serde::to_vec_named(&e).unwrap();
        assert!(matches!(rmp_serde::from_slice::<Event>(&b).unwrap(), Event::Read { seq: 3, .. }));
    }
}
