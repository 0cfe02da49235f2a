//! The subscriber thread: every event once per node, decoded once, applied
//! through the same directory and mailboxes as local work; gaps repaired
//! from the room's log; on every (re)connect, Redis's seq counters
//! restored from our data and every known room repaired; and our own
//! events that storage failed to keep stored again from the log once it
//! heals, so their senders get the `ack`.

use super::{apply_revocation, backoff, connect, store_dm_members, sync_revocations};
use crate::{
    auth::Revocation,
    cluster::{log_key, seq_key, Body, Envelope, Event, Link, Replays, CHANNEL},
    durable::{AfterFlush, Message},
    fanout::{Cmd, UserAction},
    node::Node,
    wire::{self, Encoded, Presence, ServerFrame},
};
use redis::{Commands, Connection};
use std::{
    collections::HashSet,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

/// A message that took at least this long to arrive found the thread
/// idle (one already buffered comes in a few µs; a wake-up takes longer).
const QUIET: Duration = Duration::from_micros(50);

/// Raises a room's seq counter to at least ARGV[1] (restore after an empty
/// Redis; a counter that is not a number counts as lost).
const RESTORE_SCRIPT: &str = r#"
local cur = tonumber(redis.pcall('GET', KEYS[1])) or 0
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return cur
"#;

/// Runs until the link stops, reconnecting with backoff.
pub(super) fn run(link: &Link, node: &Node) {
    let slot = node.alive().slot("redis-sub").unwrap_or(usize::MAX);
    let _guard = node.alive().guard(slot);
    let mut attempt = 0;
    let mut replays = Replays::default();
    while !link.is_stopped() {
        node.alive().beat(slot);
        if let Err(e) = subscribe_once(link, node, slot, &mut replays) {
            link.set_subscriber_up(false, &e.to_string());
            thread::sleep(backoff(attempt));
            attempt += 1;
        }
    }
}

/// One connected session: subscribe, resync, then apply events until the
/// link fails (`Err`) or the node stops (`Ok`).
fn subscribe_once(
    link: &Link,
    node: &Node,
    slot: usize,
    replays: &mut Replays,
) -> redis::RedisResult<()> {
    let mut sub = connect(link.client())?;
    let mut con = connect(link.client())?;
    let mut pubsub = sub.as_pubsub();
    pubsub.subscribe(CHANNEL)?;
    pubsub.set_read_timeout(Some(Duration::from_secs(1)))?;
    resync(link, node, &mut con)?;
    sync_revocations(node, &mut con)?;
    link.next_epoch();
    link.set_subscriber_up(true, "");
    let mut warned = false;
    loop {
        node.alive().beat(slot);
        let asked = Instant::now();
        let msg = match pubsub.get_message() {
            Ok(m) => m,
            Err(e) if e.is_timeout() => {
                if link.is_stopped() {
                    return Ok(());
                }
                expire_nodes(link, node);
                retry_stranded(link, node, &mut con)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        retry_stranded(link, node, &mut con)?;
        // Borrowed, not copied; a payload that is not a string reads empty
        // and is dropped below like any nonsense.
        let payload = msg.get_payload_bytes();
        let applied = match payload.first() {
            Some(b'M') => {
                // A message that found this thread idle is flushed here, saving
                // the commit thread's wake-up; one that was already waiting
                // goes to the commit thread, which batches a stream.
                let quiet = asked.elapsed() >= QUIET;
                node.hold_flushes(quiet, || {
                    ingest_message(link, node, replays, &payload[1..], &mut con)
                })?
            }
            Some(b'E') => match open_event(link, replays, &payload[1..]) {
                Some(e) => {
                    apply_event(link, node, e);
                    true
                }
                None => false,
            },
            _ => false,
        };
        if !applied {
            // Forged, replayed, or nonsense: it changes nothing here.
            if !warned {
                warned = true;
                log::warn!(
                    "dropping cluster payloads that fail verification or make no sense \
                     (do all nodes share one secret?)"
                );
            }
            node.metrics().reject_cluster_payload();
        }
    }
}

/// Restores Redis's seq counters from our data (a Redis that came back
/// empty), then fetches every message we missed, room by room.
fn resync(link: &Link, node: &Node, con: &mut Connection) -> redis::RedisResult<()> {
    let script = redis::Script::new(RESTORE_SCRIPT);
    let rooms = node.storage().rooms().unwrap_or_default();
    for room in rooms {
        let mine = node.storage().last_seq(&room).unwrap_or(0);
        let theirs: u64 = script.key(seq_key(&room)).arg(mine).invoke(con)?;
        if theirs > mine {
            repair(link, node, &room, mine, theirs, con)?;
        }
    }
    Ok(())
}

/// Stores again, from their rooms' logs, this node's events that the
/// cluster sequenced but this node could not make durable (a full disk, a
/// failed flush): once storage takes writes, each is applied like any
/// missed event, and its waiting sender gets the `ack` after the flush.
fn retry_stranded(link: &Link, node: &Node, con: &mut Connection) -> redis::RedisResult<()> {
    if !node.storage().is_healthy() {
        return Ok(());
    }
    let mut rooms = link.take_stranded().into_iter();
    while let Some(room) = rooms.next() {
        let known = node.with_room(&room, |e| e.seq).unwrap_or(0);
        let theirs: redis::RedisResult<Option<u64>> = con.get(seq_key(&room));
        let done = match theirs {
            Ok(Some(theirs)) if theirs > known => {
                repair(link, node, &room, known, theirs, con).map(drop)
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            link.restrand(std::iter::once(room).chain(rooms));
            return Err(e);
        }
    }
    Ok(())
}

/// Fetches messages `(after, upto]` of `room` from its log and ingests them.
/// Returns the last seq applied.
fn repair(
    link: &Link,
    node: &Node,
    room: &str,
    after: u64,
    upto: u64,
    con: &mut Connection,
) -> redis::RedisResult<u64> {
    let range = con.xrange(log_key(room), format!("{}-1", after + 1), format!("{upto}-1"));
    let reply: redis::streams::StreamRangeReply = match range {
        Ok(reply) => reply,
        Err(e) if e.is_io_error() => return Err(e),
        // Redis answered, but not with a stream (the key was overwritten):
        // nothing to repair from now. The link stays up (a failed resync
        // would keep the whole node off the cluster), the room's next send
        // replaces the log, and a later gap tries again.
        Err(e) => {
            log::error!("room {room}: its log in Redis cannot be read ({e}); not repaired");
            return Ok(after);
        }
    };
    let mut got = after;
    for entry in reply.ids {
        let Some(seq) = entry.id.split('-').next().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        let Some(redis::Value::BulkString(body)) = entry.map.get("m") else { continue };
        match open_body(link, node, body).filter(|b| b.room == room) {
            Some(body) => {
                apply_message(link, node, seq, &body);
                got = seq;
            }
            None => node.metrics().reject_cluster_payload(),
        }
    }
    if got < upto {
        log::error!(
            "room {room}: messages {}..={upto} are gone from the cluster log; history has a hole",
            got + 1
        );
    }
    Ok(got)
}

/// A payload older or newer than this (ms, against our clock) is not
/// trusted fresh: a replay after our replay window was lost to a restart.
const FRESH_MS: u64 = 120_000;

/// A sealed message body that verifies and makes sense.
fn open_body(link: &Link, node: &Node, sealed: &[u8]) -> Option<Body> {
    let body: Body = rmp_serde::from_slice(link.seal().open(sealed)?).ok()?;
    body.valid(node.cfg().max_text).then_some(body)
}

/// A published event that verifies, is fresh, was not seen, and makes sense.
fn open_event(link: &Link, replays: &mut Replays, sealed: &[u8]) -> Option<Event> {
    let e: Envelope = rmp_serde::from_slice(link.seal().open(sealed)?).ok()?;
    let fresh = wire::now_ms().abs_diff(e.ts) <= FRESH_MS;
    (fresh && e.event.valid() && replays.fresh(e.event.node(), e.boot, e.n)).then_some(e.event)
}

/// Applies a published message (`M<seq> <sealed body>`); false if it was
/// dropped. A seq past the next one is a gap, repaired from the room's log
/// first; a seq the log cannot explain is not trusted.
fn ingest_message(
    link: &Link,
    node: &Node,
    replays: &mut Replays,
    payload: &[u8],
    con: &mut Connection,
) -> redis::RedisResult<bool> {
    let Some(space) = payload.iter().position(|&b| b == b' ') else { return Ok(false) };
    let seq = std::str::from_utf8(&payload[..space]).ok().and_then(|s| s.parse::<u64>().ok());
    let Some(seq) = seq.filter(|&s| s > 0 && s < u64::MAX / 2) else { return Ok(false) };
    let Some(body) = open_body(link, node, &payload[space + 1..]) else { return Ok(false) };
    let fresh = wire::now_ms().abs_diff(body.ts) <= FRESH_MS;
    if !fresh || !replays.fresh(&body.origin, body.boot, body.n) {
        return Ok(false);
    }
    let known = node.with_room(&body.room, |e| e.seq).unwrap_or(0);
    if seq > known + 1
        && repair(link, node, &body.room, known, seq - 1, con)? < seq - 1
        && !logged_as(&body.room, seq, &payload[space + 1..], con)?
    {
        return Ok(false);
    }
    apply_message(link, node, seq, &body);
    Ok(true)
}

/// Whether the room's log holds exactly `sealed` at `seq`: then that seq is
/// the one Redis gave, even though the log no longer explains the seqs
/// before it (they are gone from it: a Redis that lost its data while this
/// node was behind, or a log overwritten), and the room goes on here with
/// a hole, which `repair` has logged, instead of refusing it for ever.
fn logged_as(
    room: &str,
    seq: u64,
    sealed: &[u8],
    con: &mut Connection,
) -> redis::RedisResult<bool> {
    let id = format!("{seq}-1");
    let reply: redis::RedisResult<redis::streams::StreamRangeReply> =
        con.xrange(log_key(room), &id, &id);
    match reply {
        Ok(r) => Ok(r.ids.first().is_some_and(|e| {
            matches!(e.map.get("m"), Some(redis::Value::BulkString(b)) if b.as_slice() == sealed)
        })),
        Err(e) if e.is_io_error() => Err(e),
        Err(_) => Ok(false),
    }
}

/// Stores one room event if it is new here, under its room's lock, and
/// has it delivered after the flush; our own event's sender gets its ack
/// then.
fn apply_message(link: &Link, node: &Node, seq: u64, body: &Body) {
    let room = &body.room;
    let _ = node.with_room(room, |e| {
        if seq <= e.seq {
            return;
        }
        let to = if link.is_own(body) { link.take_pending(body.n) } else { None };
        let ev = body.event(seq);
        let stored = (!body.dm_new || store_dm_members(node, room).is_ok())
            && node.storage().apply(room, seq, &ev).is_ok();
        if !stored {
            // The cluster has it: its sender waits for a retry, not a refusal.
            if let Some(to) = to {
                link.strand(room, body.n, to);
            }
            return;
        }
        e.seq = seq;
        // Delivered here after our own flush, like a local event.
        let cluster_n = to.is_some().then_some(body.n);
        let m = Message { room: e.name.clone(), ev, to, cluster_n };
        node.after_flush(AfterFlush::message(m));
    });
}

/// Applies another node's event here (our own were applied when made).
fn apply_event(link: &Link, node: &Node, e: Event) {
    match e {
        Event::Snapshot { node: from, users } if from != link.node() => {
            // A snapshot can overtake nothing (a node publishes in order),
            // but it can carry a change whose event we applied differently:
            // announce whatever it flips.
            let new: HashSet<String> = users.into_iter().collect();
            let old = link.remote_users(&from);
            let touched: Vec<String> = old.symmetric_difference(&new).cloned().collect();
            let before: Vec<bool> = touched.iter().map(|u| node.is_online(u)).collect();
            link.set_remote(from, new);
            for (user, was) in touched.iter().zip(before) {
                let now = node.is_online(user);
                if was != now {
                    announce(node, user, now);
                }
            }
        }
        Event::Presence { node: from, user, online } if from != link.node() => {
            let was = node.is_online(&user);
            link.remote_presence(from, &user, online);
            if was != node.is_online(&user) {
                announce(node, &user, online);
            }
        }
        Event::Member { node: from, room, user, joined, seq } if from != link.node() => {
            apply_member(node, &room, &user, joined, seq);
        }
        Event::Typing { node: from, room, user, active } if from != link.node() => {
            let frame = ServerFrame::Typing { room: &room, user: &user, active };
            node.broadcast(&room, &frame, Some(Arc::from(user.as_str())));
        }
        Event::Read { node: from, room, user, seq } if from != link.node() => {
            let _ = node.storage().set_read(&user, &room, seq);
            node.after_flush(AfterFlush::nothing());
            let (user, name): (Arc<str>, Arc<str>) = (Arc::from(user), Arc::from(room.as_str()));
            node.fanout().frame_to_user(
                &user,
                &name,
                &ServerFrame::Read { room: &room, seq },
                None,
            );
        }
        Event::Notify { node: from, user, kind, text, data, ts } if from != link.node() => {
            let data: Option<serde_json::Value> = data.and_then(|d| serde_json::from_str(&d).ok());
            let user: Arc<str> = Arc::from(user.as_str());
            let frame =
                ServerFrame::Notification { kind: &kind, text: &text, data: data.as_ref(), ts };
            node.fanout().frame_to_user(&user, &user.clone(), &frame, None);
        }
        Event::Revoke { node: from, jti }
            if from != link.node() && !jti.is_empty() && jti.len() <= 256 =>
        {
            apply_revocation(node, &Revocation::Token(jti));
        }
        Event::RevokeUser { node: from, user, before }
            if from != link.node() && wire::valid_user(&user) =>
        {
            apply_revocation(node, &Revocation::User { user, before });
        }
        Event::Name { node: from, user, name }
            if from != link.node() && node.storage().saw_user(&user, name.as_deref()).is_ok() =>
        {
            node.after_flush(AfterFlush::nothing());
        }
        _ => {} // Our own events: already applied here.
    }
}

/// Another node's member joined or left `room`: store it, then (after the
/// flush) subscribe or unsubscribe the user's connections here.
/// `joined_at`: the room's seq when the join happened (absent from nodes
/// of an older version).
fn apply_member(node: &Node, room: &str, user: &str, joined: bool, joined_at: Option<u64>) {
    let user: Arc<str> = Arc::from(user);
    let name: Arc<str> = Arc::from(room);
    let changed = if joined {
        node.storage().add_member(room, &user).unwrap_or(false)
    } else {
        node.storage().remove_member(room, &user).unwrap_or(false)
    };
    let action = if joined {
        // Everything after the seq the join saw on its node: a message sent
        // meanwhile may have been released here before this event came.
        let visible = node.visible_seq(room).unwrap_or(0);
        let floor = joined_at.map_or(visible, |s| s.min(visible));
        UserAction::Subscribe { room: name.clone(), floor }
    } else {
        UserAction::Unsubscribe { room: name.clone() }
    };
    let frame = (!joined).then(|| {
        let left = Encoded::encode(&ServerFrame::Left { id: None, room }, true, true);
        (Arc::new(left), 0, name.clone())
    });
    // Delivery follows durability: the commands go out after the flush.
    node.to_user_after_flush(&user, || Cmd::ToUser {
        user: user.clone(),
        action: action.clone(),
        frame: frame.clone(),
        skip: None,
    });
    if changed {
        node.presence(room, &user, Presence::of(joined));
    }
}

/// Presence frames for `user`'s rooms on this node.
fn announce(node: &Node, user: &str, online: bool) {
    let user_arc: Arc<str> = Arc::from(user);
    for room in node.storage().rooms_of(user).unwrap_or_default() {
        node.presence(&room, &user_arc, Presence::of(online));
    }
}

/// Drops nodes not heard from within `NODE_TTL`, announcing their users
/// offline where nobody else has them online.
fn expire_nodes(link: &Link, node: &Node) {
    for user in link.expire() {
        if !node.is_online(&user) {
            announce(node, &user, false);
        }
    }
}
