//! The node: everything the threads of one process share (settings,
//! storage, the directory, the mailboxes, the commit thread, the peers),
//! behind methods, and the fan-out helpers that address rooms and users
//! from any thread. Encodes each frame once per encoding in use and shares
//! the bytes.
//!
//! Holds no connection: those belong to the reactors.

use crate::{
    auth::{Keys, Revocations},
    cluster::Peers,
    config::Config,
    conn::{Bucket, Limited},
    durable::{AfterFlush, Committer},
    fanout::{Cmd, ConnId, Mailbox, UserAction},
    metrics::Metrics,
    rooms::{bits, Directory, RoomEntry, UserEntry},
    storage::{Storage, StorageError},
    wire::{self, Encoded, Limits, Presence, ServerFrame},
};
use parking_lot::Mutex;
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Instant,
};

/// Token buckets kept for HTTP callers before idle ones are swept.
const MAX_BUCKETS: usize = 10_000;

/// State shared by every thread of the node.
#[derive(Debug)]
pub struct Node {
    cfg: Config,
    dir: Directory,
    storage: Storage,
    committer: Committer,
    /// Every reactor's inbox, by reactor index.
    mailboxes: Vec<Mailbox>,
    keys: Keys,
    revoked: Arc<Revocations>,
    limits: Limits,
    started: Instant,
    /// Live WebSocket connections.
    connections: AtomicUsize,
    metrics: Arc<Metrics>,
    /// Per reactor: ms since `started` at its last turn (for the watchdog).
    heartbeats: Vec<AtomicU64>,
    peers: Peers,
    /// Rate-limit buckets of HTTP API callers, by token.
    http_buckets: Mutex<HashMap<String, Bucket>>,
}

impl Node {
    /// A node over its parts (`mailboxes`: one per reactor).
    pub fn new(
        cfg: Config,
        storage: Storage,
        committer: Committer,
        mailboxes: Vec<Mailbox>,
        revoked: Arc<Revocations>,
        metrics: Arc<Metrics>,
        peers: Peers,
    ) -> Node {
        let limits = Limits {
            max_text: cfg.max_text,
            max_frame: cfg.max_frame,
            rate: cfg.rate,
            burst: cfg.burst,
        };
        Node {
            keys: Keys::new(&cfg.secret),
            heartbeats: mailboxes.iter().map(|_| AtomicU64::new(0)).collect(),
            limits,
            cfg,
            dir: Directory::new(),
            storage,
            committer,
            mailboxes,
            revoked,
            started: Instant::now(),
            connections: AtomicUsize::new(0),
            metrics,
            peers,
            http_buckets: Mutex::default(),
        }
    }

    /// Settings.
    pub fn cfg(&self) -> &Config {
        &self.cfg
    }

    /// The database.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Token keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Revoked token ids.
    pub fn revoked(&self) -> &Revocations {
        &self.revoked
    }

    /// `hello.limits`.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Prometheus metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The other nodes (a no-op on a single node).
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Seconds since the node started.
    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Queues a request for the commit thread.
    pub fn after_flush(&self, p: AfterFlush) {
        self.committer.after_flush(p);
    }

    /// Stops the commit thread after its last flush.
    pub fn stop_committer(&self) {
        self.committer.stop();
    }

    /// Sends a command to reactor `reactor`.
    pub fn send_to(&self, reactor: u16, cmd: Cmd) {
        if let Some(mb) = self.mailboxes.get(reactor as usize) {
            mb.send(cmd);
        }
    }

    /// Live WebSocket connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// A WebSocket opened (`true`) or closed on reactor `reactor`, which now
    /// holds `local` connections.
    pub fn count_connection(&self, reactor: u16, opened: bool, local: usize) {
        if opened {
            self.connections.fetch_add(1, Ordering::Relaxed);
        } else {
            self.connections.fetch_sub(1, Ordering::Relaxed);
        }
        self.metrics.loop_connections(reactor, local);
    }

    /// Reactor `reactor` is turning.
    pub fn beat(&self, reactor: u16, now: Instant) {
        let ms = now.saturating_duration_since(self.started).as_millis() as u64;
        if let Some(h) = self.heartbeats.get(reactor as usize) {
            h.store(ms, Ordering::Relaxed);
        }
    }

    /// Whether every reactor turned within the last `limit_ms`.
    pub fn all_turning(&self, limit_ms: u64) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        self.heartbeats.iter().all(|h| now.saturating_sub(h.load(Ordering::Relaxed)) < limit_ms)
    }

    /// `/metrics`.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(self.connections(), self.peers.is_up())
    }

    /// Takes a token from the HTTP caller's bucket (same `rate`/`burst` as
    /// a WebSocket connection).
    pub fn take_http_token(&self, token: &str) -> Result<(), Limited> {
        let now = Instant::now();
        let (rate, burst) = (self.cfg.rate, self.cfg.burst);
        let mut buckets = self.http_buckets.lock();
        if buckets.len() >= MAX_BUCKETS {
            // Full buckets carry no state worth keeping: drop the idle ones.
            buckets.retain(|_, b| b.busy(now, rate, burst));
        }
        let bucket = buckets.entry(token.to_string()).or_insert_with(|| Bucket::new(burst, now));
        bucket.take(rate, burst, now)
    }

    // ---- the directory ------------------------------------------------------

    /// Runs `f` on `room`'s directory entry under its lock; a room seen for
    /// the first time gets its seq from storage.
    pub fn with_room<R>(
        &self,
        room: &str,
        f: impl FnOnce(&mut RoomEntry) -> R,
    ) -> Result<R, StorageError> {
        self.dir.with_room(room, || self.storage.last_seq(room), f)
    }

    /// Runs `f` on `user`'s directory entry under its lock.
    pub fn with_user<R>(&self, user: &Arc<str>, f: impl FnOnce(&mut UserEntry) -> R) -> R {
        self.dir.with_user(user, f)
    }

    /// Every user with a live connection on this node.
    pub fn online_users(&self) -> Vec<String> {
        self.dir.online_users()
    }

    /// Whether `user` has a live connection anywhere (this node, or another
    /// node of the cluster).
    pub fn is_online(&self, user: &str) -> bool {
        self.dir.is_online(user) || self.peers.online_elsewhere(user)
    }

    // ---- fan-out --------------------------------------------------------------

    /// Sends a frame to every reactor with subscribers of `room`, encoded
    /// once per encoding in use there. `seq` is the message seq (0 for others).
    pub fn broadcast(
        &self,
        room: &str,
        frame: &ServerFrame<'_>,
        seq: u64,
        skip_user: Option<Arc<str>>,
    ) {
        let _ = self.with_room(room, |e| {
            if e.reactors == 0 {
                return;
            }
            let frame = Arc::new(Encoded::encode(frame, e.json != 0, e.msgpack != 0));
            for r in bits(e.reactors) {
                self.mailboxes[r].send(Cmd::ToRoom {
                    room: e.name.clone(),
                    seq,
                    frame: frame.clone(),
                    skip_user: skip_user.clone(),
                });
            }
        });
    }

    /// Broadcasts a `presence` frame to a room's members, not to `user`.
    pub fn presence(&self, room: &str, user: &Arc<str>, state: Presence) {
        let frame = ServerFrame::Presence { room, user, state };
        self.broadcast(room, &frame, 0, Some(user.clone()));
    }

    /// Sends a command to every reactor holding a connection of `user`.
    pub fn to_user(&self, user: &str, make: impl Fn() -> Cmd) {
        for r in bits(self.dir.user_reactors(user)) {
            self.mailboxes[r].send(make());
        }
    }

    /// Like [`Node::to_user`], but the commands go out after the next flush
    /// (delivery follows durability).
    pub fn to_user_after_flush(&self, user: &str, make: impl Fn() -> Cmd) {
        let reactors = self.dir.user_reactors(user);
        if reactors == 0 {
            self.committer.after_flush(AfterFlush::nothing());
        }
        for r in bits(reactors) {
            self.committer.after_flush(AfterFlush::then(r as u16, make(), None));
        }
    }

    /// A frame for every live connection of `user` on this node (but `skip`).
    pub fn frame_to_user(
        &self,
        user: &Arc<str>,
        room: &Arc<str>,
        frame: &ServerFrame<'_>,
        skip: Option<ConnId>,
    ) {
        let frame = Arc::new(Encoded::encode(frame, true, true));
        self.to_user(user, || Cmd::ToUser {
            user: user.clone(),
            action: UserAction::None,
            frame: Some((frame.clone(), 0, room.clone())),
            skip,
        });
    }

    /// Hands a stored message to this node's subscribers. Call under the
    /// room's lock (`e`), right after storing it and setting `e.seq`, so
    /// every reactor sees the room's messages in seq order. DM messages go
    /// to both users' connections (subscribing them); others to the room's
    /// reactors.
    pub fn deliver_message(&self, e: &RoomEntry, seq: u64, ts: u64, from: &str, text: &str) {
        let room = &*e.name;
        let frame = ServerFrame::Message { room, seq, ts, from, text };
        match wire::dm_users(room) {
            Some((a, b)) => {
                let frame = Arc::new(Encoded::encode(&frame, true, true));
                for u in [a, b] {
                    for r in bits(self.dir.user_reactors(u)) {
                        self.mailboxes[r].send(Cmd::ToUser {
                            user: Arc::from(u),
                            action: UserAction::Subscribe { room: e.name.clone(), floor: seq - 1 },
                            frame: Some((frame.clone(), seq, e.name.clone())),
                            skip: None,
                        });
                    }
                }
            }
            None => {
                let frame = Arc::new(Encoded::encode(&frame, e.json != 0, e.msgpack != 0));
                for r in bits(e.reactors) {
                    self.mailboxes[r].send(Cmd::ToRoom {
                        room: e.name.clone(),
                        seq,
                        frame: frame.clone(),
                        skip_user: None,
                    });
                }
            }
        }
    }
}
