//! The handle reactors call: it queues messages and events for the Redis
//! publisher, remembers who is online on other nodes, and says whether the
//! link is up. It holds no pointer back to the node: the bridge threads
//! are handed the node when they start.

use super::{
    events::{revocation_field, Body, Envelope, Event, Guard, Outbound},
    seal::Seal,
};
use crate::{
    auth::Revocation,
    fanout::ReplyTo,
    wire::{self, Code, Msg, Refusal},
};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// A node not heard from this long no longer counts as online.
pub const NODE_TTL: Duration = Duration::from_secs(20);

/// Online users of other nodes, with when each node was last heard from.
type Remote = HashMap<String, (Instant, HashSet<String>)>;

/// The cluster link shared by the reactors and the bridge threads.
#[derive(Debug)]
pub struct Link {
    node: String,
    client: redis::Client,
    /// The subscriber's connection is up (and resynced).
    sub_up: AtomicBool,
    /// The publisher's connection is up (script loaded).
    pub_up: AtomicBool,
    /// Both, as last logged.
    up: AtomicBool,
    /// Bumped on every (re)connect of the subscriber: the publisher's
    /// connection from an older epoch may be dead without knowing it.
    epoch: AtomicU64,
    stopped: AtomicBool,
    tx: Sender<Outbound>,
    remote: Mutex<Remote>,
    seal: Seal,
    /// Random at start: with `counter`, names each payload once.
    boot: u64,
    counter: AtomicU64,
    /// Senders waiting for their event to come back applied, by counter.
    pending: Mutex<HashMap<u64, ReplyTo>>,
    /// Rooms with an event of ours that the cluster sequenced but this node
    /// could not make durable: stored again from the room's log once
    /// storage takes writes (its sender still waits in `pending`).
    stranded: Mutex<HashSet<String>>,
    /// Whether `stranded` may hold a room: the subscriber looks after
    /// every message, without taking the lock.
    any_stranded: AtomicBool,
}

impl Link {
    /// A link over `client`, sealing with a key derived from `secret`, and
    /// the publisher's end of its queue.
    pub fn new(
        client: redis::Client,
        node: &str,
        secret: &[u8],
    ) -> Result<(Arc<Link>, Receiver<Outbound>), String> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let link = Arc::new(Link {
            node: node.to_string(),
            client,
            sub_up: AtomicBool::new(false),
            pub_up: AtomicBool::new(false),
            up: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            tx,
            remote: Mutex::new(HashMap::new()),
            seal: Seal::new(secret),
            boot: rand::random(),
            counter: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            stranded: Mutex::new(HashSet::new()),
            any_stranded: AtomicBool::new(false),
        });
        Ok((link, rx))
    }

    /// The cluster key.
    pub fn seal(&self) -> &Seal {
        &self.seal
    }

    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The Redis client.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Whether the link to Redis is up: both connections answer.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Records the subscriber's state.
    pub fn set_subscriber_up(&self, up: bool, why: &str) {
        self.sub_up.store(up, Ordering::SeqCst);
        self.update(why);
    }

    /// Records the publisher's state.
    pub fn set_publisher_up(&self, up: bool, why: &str) {
        self.pub_up.store(up, Ordering::SeqCst);
        self.update(why);
    }

    /// Recomputes the link's state, logging each change once.
    fn update(&self, why: &str) {
        let up = self.sub_up.load(Ordering::SeqCst) && self.pub_up.load(Ordering::SeqCst);
        if self.up.swap(up, Ordering::SeqCst) != up {
            if up {
                log::info!("redis link up");
            } else {
                log::warn!("redis link down: {why}");
            }
        }
    }

    /// The subscriber's connection epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// A new subscriber connection: older publisher connections are suspect.
    pub fn next_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Asks the bridge threads to stop.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Whether the node is stopping.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Whether `user` is online on another live node.
    pub fn remote_online(&self, user: &str) -> bool {
        let now = Instant::now();
        self.remote
            .lock()
            .values()
            .any(|(seen, users)| now.duration_since(*seen) < NODE_TTL && users.contains(user))
    }

    /// The online users `node` last told us of.
    pub fn remote_users(&self, node: &str) -> HashSet<String> {
        self.remote.lock().get(node).map(|(_, u)| u.clone()).unwrap_or_default()
    }

    /// Replaces `node`'s online users (heard from now).
    pub fn set_remote(&self, node: String, users: HashSet<String>) {
        self.remote.lock().insert(node, (Instant::now(), users));
    }

    /// `node` says `user` came online (or went offline) there.
    pub fn remote_presence(&self, node: String, user: &str, online: bool) {
        let mut remote = self.remote.lock();
        let entry = remote.entry(node).or_insert_with(|| (Instant::now(), HashSet::new()));
        entry.0 = Instant::now();
        if online {
            entry.1.insert(user.to_string());
        } else {
            entry.1.remove(user);
        }
    }

    /// Forgets nodes not heard from within [`NODE_TTL`]; returns their users.
    pub fn expire(&self) -> Vec<String> {
        let mut remote = self.remote.lock();
        let now = Instant::now();
        let dead: Vec<String> = remote
            .iter()
            .filter(|(_, (seen, _))| now.duration_since(*seen) >= NODE_TTL)
            .map(|(n, _)| n.clone())
            .collect();
        dead.iter().filter_map(|n| remote.remove(n)).flat_map(|(_, users)| users).collect()
    }

    /// Hands an accepted room event to Redis for its seq (`floor`: this
    /// node's last seq of the room). Refused at once while the link is
    /// down: nothing is half-accepted. `reply` waits until the subscriber
    /// applies the event (its ack follows the local flush), or until the
    /// publisher fails it.
    pub fn send(
        &self,
        room: &str,
        ev: &Msg,
        known: bool,
        floor: impl FnOnce() -> u64,
        reply: ReplyTo,
    ) -> Result<(), Refusal> {
        if !self.is_up() {
            return Err(Refusal::new(Code::Unavailable, crate::fanout::CLUSTER_DOWN));
        }
        let dm_new = !known && wire::dm_users(room).is_some();
        let (origin, boot, n) = (self.node.clone(), self.boot, self.next());
        let body = Body {
            room: room.into(),
            ts: ev.ts,
            from: ev.from.clone(),
            text: ev.text.clone().unwrap_or_default(),
            dm_new,
            origin,
            boot,
            n,
            kind: ev.kind,
            reply_to: ev.reply_to,
            mentions: ev.mentions.clone(),
            target: ev.target,
            emoji: ev.emoji.clone(),
            on: ev.on,
        };
        let body = rmp_serde::to_vec_named(&body)
            .map_err(|e| Refusal::new(Code::Internal, e.to_string()))?;
        let body = self.seal.seal(&body);
        self.pending.lock().insert(n, reply);
        let guard = Guard::of(ev);
        let out = Outbound::Send { room: room.into(), body, floor: floor(), n, guard };
        self.tx.send(out).map_err(|_| {
            self.pending.lock().remove(&n);
            Refusal::new(Code::Unavailable, "cluster link stopped")
        })
    }

    /// Takes the sender waiting for this node's event number `n` (each is
    /// answered once: by the subscriber that applied it, or by the
    /// publisher that failed it, whichever comes first).
    pub fn take_pending(&self, n: u64) -> Option<ReplyTo> {
        self.pending.lock().remove(&n)
    }

    /// Our event number `n` in `room` was sequenced by the cluster (the
    /// other nodes have it) but could not be made durable here. Refusing it
    /// would be false (its sender would send it twice), so its sender waits
    /// again, until the subscriber has stored it from the room's log.
    pub fn strand(&self, room: &str, n: u64, to: ReplyTo) {
        self.pending.lock().insert(n, to);
        self.restrand([room.to_string()]);
    }

    /// The rooms to store again from their logs (emptied).
    pub fn take_stranded(&self) -> Vec<String> {
        if !self.any_stranded.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        self.stranded.lock().drain().collect()
    }

    /// Gives rooms back to be retried later.
    pub fn restrand(&self, rooms: impl IntoIterator<Item = String>) {
        self.stranded.lock().extend(rooms);
        self.any_stranded.store(true, Ordering::Release);
    }

    /// Whether `body` was sent by this process.
    pub fn is_own(&self, body: &Body) -> bool {
        body.origin == self.node && body.boot == self.boot
    }

    /// Tells the other nodes `user`'s display name (`None`: seen without one).
    pub fn name(&self, user: &str, name: Option<&str>) {
        let (node, user, name) = (self.node.clone(), user.into(), name.map(str::to_string));
        self.publish(Event::Name { node, user, name });
    }

    /// An event as published: `E` + the sealed MessagePack envelope.
    pub fn event_payload(&self, event: Event) -> Option<Vec<u8>> {
        let ts = crate::wire::now_ms();
        let envelope = Envelope { boot: self.boot, n: self.next(), ts, event };
        let bytes = rmp_serde::to_vec_named(&envelope).ok()?;
        let mut payload = b"E".to_vec();
        payload.extend_from_slice(&self.seal.seal(&bytes));
        Some(payload)
    }

    fn publish(&self, e: Event) {
        if let Some(payload) = self.event_payload(e) {
            let _ = self.tx.send(Outbound::Event(payload));
        }
    }

    /// Tells the other nodes: `user` joined `room` at seq `Some(seq)`, or
    /// left it (`None`).
    pub fn member(&self, room: &str, user: &str, joined: Option<u64>) {
        let (node, room, user) = (self.node.clone(), room.into(), user.into());
        let (seq, joined) = (joined, joined.is_some());
        self.publish(Event::Member { node, room, user, joined, seq });
    }

    /// Tells the other nodes: `user`'s first connection here opened (or last closed).
    pub fn presence(&self, user: &str, online: bool) {
        self.publish(Event::Presence { node: self.node.clone(), user: user.into(), online });
    }

    /// Tells the other nodes: `user` is typing in `room`.
    pub fn typing(&self, room: &str, user: &str, active: bool) {
        let (node, room, user) = (self.node.clone(), room.into(), user.into());
        self.publish(Event::Typing { node, room, user, active });
    }

    /// Tells the other nodes: `user`'s read marker in `room` is `seq`.
    pub fn read(&self, room: &str, user: &str, seq: u64) {
        let (node, room, user) = (self.node.clone(), room.into(), user.into());
        self.publish(Event::Read { node, room, user, seq });
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
        let (node, user, kind, text) = (self.node.clone(), user.into(), kind.into(), text.into());
        self.publish(Event::Notify { node, user, kind, text, data, ts });
    }

    /// Tells the other nodes, now and later (the hash in Redis): refuse
    /// what `r` revokes.
    pub fn revoke(&self, r: &Revocation) {
        let node = self.node.clone();
        let e = match r {
            Revocation::Token(jti) => Event::Revoke { node, jti: jti.clone() },
            Revocation::User { user, before } => {
                Event::RevokeUser { node, user: user.clone(), before: *before }
            }
        };
        let (field, value) = revocation_field(r, crate::wire::now_ms() / 1000);
        if let Some(payload) = self.event_payload(e) {
            let _ = self.tx.send(Outbound::Revoke { field, value, payload });
        }
    }
}
