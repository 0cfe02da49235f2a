//! The cluster link: nodes sharing one Redis form one chat (PROTOCOL.md
//! section 6). Two threads and one pub/sub channel, `chinwag:events`:
//!
//! * the **publisher** takes accepted messages and events from the reactors,
//!   pipelines them to Redis (a message goes through one Lua script that
//!   allocates the room's seq, appends it to the room's capped log stream and
//!   publishes it, atomically), stores what it learnt, and answers `ack`s
//!   after the local flush;
//! * the **subscriber** receives every event once per node, decodes it once,
//!   and applies it through the same directory and mailboxes as local work.
//!   A message whose seq is not the next one is a gap: the missing ones are
//!   read from the room's log first. On every (re)connect the node restores
//!   Redis's seq counters from its own data (Redis persistence is not
//!   assumed) and repairs every room it knows.
//!
//! Presence is per node: each node publishes a snapshot of its online users
//! every [`SNAPSHOT_EVERY`]; a node not heard from for [`NODE_TTL`] stops
//! counting. While Redis is unreachable, `send` and `dm` answer
//! `unavailable` and `/health` says so; state changes are logged once.
//!
//! Never touches a connection or a room index: it emits `Cmd`s.

use crate::{
    deliver::ReplyTo,
    proto::{self, Code, Out, Refusal},
    reactor::Shared,
    storage::Pending,
};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use redis::{Commands, Connection};
use serde::{Deserialize, Serialize};
use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, OnceLock, Weak,
    },
    thread,
    time::{Duration, Instant},
};

/// The one pub/sub channel of a cluster.
const CHANNEL: &str = "chinwag:events";
/// How often a node publishes its online users.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);
/// A node not heard from this long no longer counts as online.
const NODE_TTL: Duration = Duration::from_secs(20);
/// Entries kept in each room's log stream (approximately).
const LOG_LEN: usize = 10_000;
/// Most requests pipelined in one round trip.
const BATCH: usize = 512;

/// Allocates a room's next seq, logs and publishes the message, atomically.
/// KEYS[1] seq counter, KEYS[2] log stream; ARGV[1] the message body
/// (MessagePack without seq), ARGV[2] this node's last seq of the room (a
/// Redis that came back empty must not reuse seqs), ARGV[3] log length.
const SEQ_SCRIPT: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[2])
if cur < floor then cur = floor end
local seq = cur + 1
redis.call('SET', KEYS[1], seq)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-1', 'm', ARGV[1])
redis.call('PUBLISH', 'chinwag:events', 'M' .. seq .. ' ' .. ARGV[1])
return seq
"#;

/// Raises a room's seq counter to at least ARGV[1] (restore after an empty Redis).
const RESTORE_SCRIPT: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return cur
"#;

fn seq_key(room: &str) -> String {
    format!("chinwag:seq:{room}")
}

fn log_key(room: &str) -> String {
    format!("chinwag:log:{room}")
}

/// A message as published (its seq travels in front of it).
#[derive(Debug, Serialize, Deserialize)]
struct Body {
    room: String,
    ts: u64,
    from: String,
    text: String,
    /// The two users of a DM room on its first message (membership to write).
    #[serde(default)]
    dm_new: bool,
}

/// Everything else nodes tell each other.
#[derive(Debug, Serialize, Deserialize)]
enum Event {
    /// A user joined or left a room.
    Member { node: String, room: String, user: String, joined: bool },
    /// A user's first connection on `node` opened or its last closed.
    Presence { node: String, user: String, online: bool },
    /// `node`'s online users, periodically.
    Snapshot { node: String, users: Vec<String> },
    /// Someone typing.
    Typing { node: String, room: String, user: String, active: bool },
    /// A read marker moved.
    Read { node: String, room: String, user: String, seq: u64 },
    /// `POST /api/notify`.
    Notify { node: String, user: String, kind: String, text: String, data: Option<String>, ts: u64 },
    /// `POST /api/revoke`.
    Revoke { node: String, jti: String },
}

/// Work for the publisher thread.
#[derive(Debug)]
enum Outbound {
    Send {
        room: String,
        body: Vec<u8>,
        floor: u64,
        ts: u64,
        from: String,
        text: String,
        dm_new: bool,
        reply: ReplyTo,
    },
    Event(Vec<u8>),
}

/// The cluster handle shared by the reactors.
#[derive(Debug)]
pub struct Cluster {
    node: String,
    client: redis::Client,
    up: AtomicBool,
    /// Bumped on every (re)connect of the subscriber: the publisher's
    /// connection from an older epoch may be dead without knowing it.
    epoch: AtomicU64,
    tx: Sender<Outbound>,
    /// Online users of other nodes, with when each node was last heard from.
    remote: Mutex<HashMap<String, (Instant, HashSet<String>)>>,
    shared: OnceLock<Weak<Shared>>,
}

impl Cluster {
    /// A cluster handle for `url`; threads start with [`Cluster::start`].
    pub fn new(url: &str, node: &str) -> Result<(Arc<Cluster>, ClusterThreads), String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let c = Arc::new(Cluster {
            node: node.to_string(),
            client,
            up: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            tx,
            remote: Mutex::new(HashMap::new()),
            shared: OnceLock::new(),
        });
        Ok((c, ClusterThreads { rx }))
    }

    /// Whether the link to Redis is up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    fn set_up(&self, up: bool, why: &str) {
        if self.up.swap(up, Ordering::SeqCst) != up {
            if up {
                log::info!("redis link up");
            } else {
                log::warn!("redis link down: {why}");
            }
        }
    }

    fn shared(&self) -> Option<Arc<Shared>> {
        self.shared.get().and_then(Weak::upgrade)
    }

    /// Whether `user` is online on another live node.
    pub fn remote_online(&self, user: &str) -> bool {
        let now = Instant::now();
        self.remote
            .lock()
            .values()
            .any(|(seen, users)| now.duration_since(*seen) < NODE_TTL && users.contains(user))
    }

    /// Hands an accepted message to Redis for its seq. Refused at once while
    /// the link is down: nothing is half-accepted.
    pub fn send(
        &self,
        room: &str,
        from: &str,
        text: &str,
        ts: u64,
        known: bool,
        reply: ReplyTo,
    ) -> Result<(), Refusal> {
        if !self.is_up() {
            return Err(Refusal::new(
                Code::Unavailable,
                "cluster unavailable: nothing was accepted",
            ));
        }
        let dm_new = !known && proto::dm_users(room).is_some();
        let body = Body { room: room.into(), ts, from: from.into(), text: text.into(), dm_new };
        let body = rmp_serde::to_vec_named(&body)
            .map_err(|e| Refusal::new(Code::Internal, e.to_string()))?;
        let floor = self.shared().and_then(|s| s.with_room(room, |e| e.seq).ok()).unwrap_or(0);
        let out = Outbound::Send {
            room: room.into(),
            body,
            floor,
            ts,
            from: from.into(),
            text: text.into(),
            dm_new,
            reply,
        };
        self.tx.send(out).map_err(|_| Refusal::new(Code::Unavailable, "cluster link stopped"))
    }

    fn publish(&self, e: &Event) {
        if let Ok(bytes) = rmp_serde::to_vec_named(e) {
            let mut payload = b"E".to_vec();
            payload.extend_from_slice(&bytes);
            let _ = self.tx.send(Outbound::Event(payload));
        }
    }

    /// Tells the other nodes: `user` joined (or left) `room`.
    pub fn member(&self, room: &str, user: &str, joined: bool) {
        self.publish(&Event::Member {
            node: self.node.clone(),
            room: room.into(),
            user: user.into(),
            joined,
        });
    }

    /// Tells the other nodes: `user`'s first connection here opened (or last closed).
    pub fn presence(&self, user: &str, online: bool) {
        self.publish(&Event::Presence { node: self.node.clone(), user: user.into(), online });
    }

    /// Tells the other nodes: `user` is typing in `room`.
    pub fn typing(&self, room: &str, user: &str, active: bool) {
        self.publish(&Event::Typing {
            node: self.node.clone(),
            room: room.into(),
            user: user.into(),
            active,
        });
    }

    /// Tells the other nodes: `user`'s read marker in `room` is `seq`.
    pub fn read(&self, room: &str, user: &str, seq: u64) {
        self.publish(&Event::Read {
            node: self.node.clone(),
            room: room.into(),
            user: user.into(),
            seq,
        });
    }

    /// Tells the other nodes: notify `user`.
    pub fn notify(
        &self,
        user: &str,
        kind: &str,
        text: &str,
        data: Option<&serde_json::Value>,
        ts: u64,
    ) {
        let data = data.map(|d| d.to_string());
        self.publish(&Event::Notify {
            node: self.node.clone(),
            user: user.into(),
            kind: kind.into(),
            text: text.into(),
            data,
            ts,
        });
    }

    /// Tells the other nodes: refuse token `jti`.
    pub fn revoke(&self, jti: &str) {
        self.publish(&Event::Revoke { node: self.node.clone(), jti: jti.into() });
    }
}

/// The receiving end of the publisher queue, until the threads start.
#[derive(Debug)]
pub struct ClusterThreads {
    rx: Receiver<Outbound>,
}

impl ClusterThreads {
    /// Starts the publisher and subscriber threads for `shared`.
    pub fn start(self, cluster: Arc<Cluster>, shared: &Arc<Shared>) -> std::io::Result<()> {
        let _ = cluster.shared.set(Arc::downgrade(shared));
        let c = cluster.clone();
        let rx = self.rx;
        thread::Builder::new().name("chinwag-redis-pub".into()).spawn(move || publisher(c, rx))?;
        thread::Builder::new()
            .name("chinwag-redis-sub".into())
            .spawn(move || subscriber(cluster))?;
        Ok(())
    }
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

fn publisher(cluster: Arc<Cluster>, rx: Receiver<Outbound>) {
    let mut sha = String::new();
    let mut con: Option<Connection> = None;
    let mut con_epoch = 0;
    let mut attempt = 0;
    let mut last_snapshot = Instant::now() - SNAPSHOT_EVERY;
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(o) => Some(o),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        let Some(shared) = cluster.shared() else { return };
        let mut batch: Vec<Outbound> = first.into_iter().collect();
        batch.extend(rx.try_iter().take(BATCH));
        if last_snapshot.elapsed() >= SNAPSHOT_EVERY {
            last_snapshot = Instant::now();
            let users = shared.dir.online_users();
            if let Ok(bytes) =
                rmp_serde::to_vec_named(&Event::Snapshot { node: cluster.node.clone(), users })
            {
                let mut payload = b"E".to_vec();
                payload.extend_from_slice(&bytes);
                batch.push(Outbound::Event(payload));
            }
        }
        if batch.is_empty() {
            continue;
        }
        let epoch = cluster.epoch.load(Ordering::SeqCst);
        if con_epoch != epoch {
            con = None;
        }
        if con.is_none() {
            // Loaded on every connect: a restarted Redis has forgotten it.
            let loaded = connect(&cluster.client).and_then(|mut c| {
                let s: String = redis::cmd("SCRIPT").arg("LOAD").arg(SEQ_SCRIPT).query(&mut c)?;
                Ok((c, s))
            });
            match loaded {
                Ok((c, s)) => {
                    con = Some(c);
                    con_epoch = epoch;
                    sha = s;
                    attempt = 0;
                }
                Err(e) => {
                    cluster.set_up(false, &e.to_string());
                    fail_batch(&shared, batch);
                    thread::sleep(backoff(attempt));
                    attempt += 1;
                    continue;
                }
            }
        }
        let Some(c) = con.as_mut() else { continue };
        let mut pipe = redis::pipe();
        for o in &batch {
            match o {
                Outbound::Send { room, body, floor, .. } => {
                    pipe.cmd("EVALSHA")
                        .arg(&sha)
                        .arg(2)
                        .arg(seq_key(room))
                        .arg(log_key(room))
                        .arg(body.as_slice())
                        .arg(*floor)
                        .arg(LOG_LEN);
                }
                Outbound::Event(payload) => {
                    pipe.cmd("PUBLISH").arg(CHANNEL).arg(payload.as_slice()).ignore();
                }
            }
        }
        match pipe.query::<Vec<u64>>(c) {
            Ok(seqs) => {
                let mut seqs = seqs.into_iter();
                for o in batch {
                    if let Outbound::Send { room, ts, from, text, dm_new, reply, .. } = o {
                        let Some(seq) = seqs.next() else {
                            shared.committer.after_flush(Pending::new(
                                reply.reactor(),
                                Some(reply.fail()),
                                None,
                            ));
                            continue;
                        };
                        // The subscriber stores it too (same key, same bytes);
                        // storing here lets the ack wait only for our flush.
                        // The room's directory entry must exist first: one
                        // created after this append would take this seq as
                        // already delivered.
                        let _ = shared.with_room(&room, |_| ());
                        let stored = (!dm_new || store_dm_members(&shared, &room).is_ok())
                            && shared.storage.append(&room, seq, ts, &from, &text).is_ok();
                        let ok = stored.then(|| reply.ok(&room, seq, ts));
                        shared.committer.after_flush(Pending::new(
                            reply.reactor(),
                            ok,
                            Some(reply.fail()),
                        ));
                    }
                }
            }
            Err(e) => {
                log::debug!("redis pipeline failed: {e}");
                cluster.set_up(false, &e.to_string());
                con = None;
                fail_batch(&shared, batch);
            }
        }
    }
}

fn store_dm_members(shared: &Shared, room: &str) -> Result<(), crate::storage::StorageError> {
    if let Some((a, b)) = proto::dm_users(room) {
        shared.storage.add_member(room, a)?;
        shared.storage.add_member(room, b)?;
    }
    Ok(())
}

/// Answers every message of a failed batch `unavailable` (events are lost:
/// they are best effort, like typing).
fn fail_batch(shared: &Shared, batch: Vec<Outbound>) {
    for o in batch {
        if let Outbound::Send { reply, .. } = o {
            if let Some(m) = shared.mailboxes.get(reply.reactor() as usize) {
                m.send(reply.fail());
            }
        }
    }
}

fn subscriber(cluster: Arc<Cluster>) {
    let mut attempt = 0;
    loop {
        let Some(shared) = cluster.shared() else { return };
        match subscribe_once(&cluster, &shared) {
            Ok(()) => return,
            Err(e) => {
                cluster.set_up(false, &e.to_string());
                drop(shared);
                thread::sleep(backoff(attempt));
                attempt += 1;
            }
        }
    }
}

/// One connected session: subscribe, resync, then apply events until the
/// link fails (`Err`) or the node stops (`Ok`).
fn subscribe_once(cluster: &Arc<Cluster>, shared: &Arc<Shared>) -> redis::RedisResult<()> {
    let mut sub = connect(&cluster.client)?;
    let mut con = connect(&cluster.client)?;
    let mut pubsub = sub.as_pubsub();
    pubsub.subscribe(CHANNEL)?;
    pubsub.set_read_timeout(Some(Duration::from_secs(1)))?;
    resync(shared, &mut con)?;
    cluster.epoch.fetch_add(1, Ordering::SeqCst);
    cluster.set_up(true, "");
    loop {
        let msg = match pubsub.get_message() {
            Ok(m) => m,
            Err(e) if e.is_timeout() => {
                if cluster.shared().is_none() {
                    return Ok(());
                }
                expire_nodes(cluster, shared);
                continue;
            }
            Err(e) => return Err(e),
        };
        let payload: Vec<u8> = msg.get_payload()?;
        match payload.first() {
            Some(b'M') => ingest_message(shared, &payload[1..], &mut con)?,
            Some(b'E') => {
                if let Ok(e) = rmp_serde::from_slice::<Event>(&payload[1..]) {
                    apply_event(cluster, shared, e);
                }
            }
            _ => log::debug!("ignoring an unknown cluster payload"),
        }
    }
}

/// Restores Redis's seq counters from our data (a Redis that came back
/// empty), then fetches every message we missed, room by room.
fn resync(shared: &Shared, con: &mut Connection) -> redis::RedisResult<()> {
    let script = redis::Script::new(RESTORE_SCRIPT);
    let rooms = shared.storage.rooms().unwrap_or_default();
    for room in rooms {
        let mine = shared.storage.last_seq(&room).unwrap_or(0);
        let theirs: u64 = script.key(seq_key(&room)).arg(mine).invoke(con)?;
        if theirs > mine {
            repair(shared, &room, mine, theirs, con)?;
        }
    }
    Ok(())
}

/// Fetches messages `(after, upto]` of `room` from its log and ingests them.
fn repair(
    shared: &Shared,
    room: &str,
    after: u64,
    upto: u64,
    con: &mut Connection,
) -> redis::RedisResult<()> {
    let reply: redis::streams::StreamRangeReply =
        con.xrange(log_key(room), format!("{}-1", after + 1), format!("{upto}-1"))?;
    let mut got = after;
    for entry in reply.ids {
        let Some(seq) = entry.id.split('-').next().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        let Some(redis::Value::BulkString(body)) = entry.map.get("m") else { continue };
        if let Ok(body) = rmp_serde::from_slice::<Body>(body) {
            apply_message(shared, seq, &body);
            got = seq;
        }
    }
    if got < upto {
        log::error!(
            "room {room}: messages {}..={upto} are gone from the cluster log; history has a hole",
            got + 1
        );
    }
    Ok(())
}

fn ingest_message(shared: &Shared, payload: &[u8], con: &mut Connection) -> redis::RedisResult<()> {
    let Some(space) = payload.iter().position(|&b| b == b' ') else { return Ok(()) };
    let Some(seq) = std::str::from_utf8(&payload[..space]).ok().and_then(|s| s.parse::<u64>().ok())
    else {
        return Ok(());
    };
    let Ok(body) = rmp_serde::from_slice::<Body>(&payload[space + 1..]) else { return Ok(()) };
    let known = shared.with_room(&body.room, |e| e.seq).unwrap_or(0);
    if seq > known + 1 {
        repair(shared, &body.room, known, seq - 1, con)?;
    }
    apply_message(shared, seq, &body);
    Ok(())
}

/// Stores and delivers one message if it is new here, under its room's lock.
fn apply_message(shared: &Shared, seq: u64, body: &Body) {
    let room = &body.room;
    let _ = shared.with_room(room, |e| {
        if seq <= e.seq {
            return;
        }
        if body.dm_new && store_dm_members(shared, room).is_err() {
            return;
        }
        if shared.storage.append(room, seq, body.ts, &body.from, &body.text).is_err() {
            return;
        }
        e.seq = seq;
        shared.deliver_message(e, seq, body.ts, &body.from, &body.text);
    });
}

fn apply_event(cluster: &Cluster, shared: &Shared, e: Event) {
    use crate::fanout::{Cmd, UserAction};
    match e {
        Event::Snapshot { node, users } if node != cluster.node => {
            // A snapshot can overtake nothing (a node publishes in order),
            // but it can carry a change whose event we applied differently:
            // announce whatever it flips.
            let new: HashSet<String> = users.into_iter().collect();
            let old = cluster.remote.lock().get(&node).map(|(_, u)| u.clone()).unwrap_or_default();
            let touched: Vec<String> = old.symmetric_difference(&new).cloned().collect();
            let before: Vec<bool> = touched.iter().map(|u| shared.is_online(u)).collect();
            cluster.remote.lock().insert(node, (Instant::now(), new));
            for (user, was) in touched.iter().zip(before) {
                let now = shared.is_online(user);
                if was != now {
                    announce(shared, user, now);
                }
            }
        }
        Event::Presence { node, user, online } if node != cluster.node => {
            let was = shared.is_online(&user);
            {
                let mut remote = cluster.remote.lock();
                let entry = remote.entry(node).or_insert_with(|| (Instant::now(), HashSet::new()));
                entry.0 = Instant::now();
                if online {
                    entry.1.insert(user.clone());
                } else {
                    entry.1.remove(&user);
                }
            }
            if was != shared.is_online(&user) {
                announce(shared, &user, online);
            }
        }
        Event::Member { node, room, user, joined } if node != cluster.node => {
            let user: Arc<str> = Arc::from(user.as_str());
            let name: Arc<str> = Arc::from(room.as_str());
            let changed = if joined {
                shared.storage.add_member(&room, &user).unwrap_or(false)
            } else {
                shared.storage.remove_member(&room, &user).unwrap_or(false)
            };
            let _ = shared.storage.flush();
            if joined {
                let floor = shared.storage.last_seq(&room).unwrap_or(0);
                shared.to_user(&user, || Cmd::User {
                    user: user.clone(),
                    action: UserAction::Subscribe { room: name.clone(), floor },
                    wire: None,
                    skip: None,
                });
            } else {
                let wire =
                    Arc::new(proto::Wire::encode(&Out::Left { id: None, room: &room }, true, true));
                shared.to_user(&user, || Cmd::User {
                    user: user.clone(),
                    action: UserAction::Unsubscribe { room: name.clone() },
                    wire: Some((wire.clone(), 0, name.clone())),
                    skip: None,
                });
            }
            if changed {
                shared.presence(&room, &user, if joined { "online" } else { "offline" });
            }
        }
        Event::Typing { node, room, user, active } if node != cluster.node => {
            let frame = Out::Typing { room: &room, user: &user, active };
            shared.broadcast(&room, &frame, 0, Some(Arc::from(user.as_str())));
        }
        Event::Read { node, room, user, seq } if node != cluster.node => {
            let _ = shared.storage.set_read(&user, &room, seq);
            let (user, name): (Arc<str>, Arc<str>) =
                (Arc::from(user.as_str()), Arc::from(room.as_str()));
            shared.frame_to_user(&user, &name, &Out::Read { room: &room, seq }, None);
        }
        Event::Notify { node, user, kind, text, data, ts } if node != cluster.node => {
            let data: Option<serde_json::Value> = data.and_then(|d| serde_json::from_str(&d).ok());
            let user: Arc<str> = Arc::from(user.as_str());
            let frame = Out::Notification { kind: &kind, text: &text, data: data.as_ref(), ts };
            shared.frame_to_user(&user, &user.clone(), &frame, None);
        }
        Event::Revoke { node, jti } if node != cluster.node => {
            let _ = shared.storage.revoke(&jti, 0);
            let _ = shared.storage.flush();
            shared.revoked.add(&jti);
        }
        _ => {} // Our own events: already applied here.
    }
}

/// Presence frames for `user`'s rooms on this node.
fn announce(shared: &Shared, user: &str, online: bool) {
    let user_arc: Arc<str> = Arc::from(user);
    for room in shared.storage.rooms_of(user).unwrap_or_default() {
        shared.presence(&room, &user_arc, if online { "online" } else { "offline" });
    }
}

/// Drops nodes not heard from within [`NODE_TTL`], announcing their users
/// offline where nobody else has them online.
fn expire_nodes(cluster: &Cluster, shared: &Shared) {
    let gone: Vec<String> = {
        let mut remote = cluster.remote.lock();
        let now = Instant::now();
        let dead: Vec<String> = remote
            .iter()
            .filter(|(_, (seen, _))| now.duration_since(*seen) >= NODE_TTL)
            .map(|(n, _)| n.clone())
            .collect();
        dead.iter().filter_map(|n| remote.remove(n)).flat_map(|(_, users)| users).collect()
    };
    for user in gone {
        if !shared.is_online(&user) {
            announce(shared, &user, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
