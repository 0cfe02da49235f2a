//! The node: everything the threads of one process share (settings,
//! storage, the directory, the mailboxes, the commit thread, the peers),
//! behind methods, and the fan-out helpers that address rooms and users
//! from any thread. Encodes each frame once per encoding in use and shares
//! the bytes.
//!
//! Holds no connection: those belong to the reactors.

use crate::{
    alive::Alive,
    auth::{Keys, Revocations},
    cluster::Peers,
    config::Config,
    conn::{Bucket, Limited},
    durable::{AfterFlush, Committer},
    fanout::{Cmd, Fanout},
    metrics::Metrics,
    rooms::{bits, RoomEntry, UserEntry},
    search::Search,
    storage::{Storage, StorageError},
    wire::{Limits, Presence, ServerFrame},
};
use parking_lot::Mutex;
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Instant,
};

/// Token buckets kept for HTTP callers before idle ones are swept.
const MAX_BUCKETS: usize = 10_000;

/// What a node is made of, built by `server`.
#[derive(Debug)]
pub struct Parts {
    /// Settings.
    pub cfg: Config,
    /// The database.
    pub storage: Storage,
    /// The commit path (its queue, and the commit thread).
    pub committer: Committer,
    /// The directory and every reactor's mailbox.
    pub fanout: Fanout,
    /// Revoked token ids.
    pub revoked: Arc<Revocations>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The other nodes.
    pub peers: Peers,
    /// The watched threads.
    pub alive: Arc<Alive>,
    /// The search index (`None` if it could not be opened).
    pub search: Option<Arc<Search>>,
}

/// State shared by every thread of the node.
#[derive(Debug)]
pub struct Node {
    cfg: Config,
    storage: Storage,
    committer: Committer,
    fanout: Fanout,
    keys: Keys,
    revoked: Arc<Revocations>,
    limits: Limits,
    started: Instant,
    /// Live WebSocket connections.
    connections: AtomicUsize,
    metrics: Arc<Metrics>,
    /// Reactors in slots `0..n`, then the commit and bridge threads.
    alive: Arc<Alive>,
    peers: Peers,
    search: Option<Arc<Search>>,
    /// Rate-limit buckets of HTTP API callers, by token.
    http_buckets: Mutex<HashMap<String, Bucket>>,
    /// Live WebSockets per client address.
    ips: Mutex<HashMap<IpAddr, u32>>,
}

impl Node {
    /// A node over its parts.
    pub fn new(p: Parts) -> Node {
        let cfg = p.cfg;
        let limits = Limits {
            max_text: cfg.max_text,
            max_frame: cfg.max_frame,
            rate: cfg.rate,
            burst: cfg.burst,
        };
        Node {
            keys: Keys::new(&cfg.secret),
            limits,
            cfg,
            storage: p.storage,
            committer: p.committer,
            fanout: p.fanout,
            revoked: p.revoked,
            started: Instant::now(),
            connections: AtomicUsize::new(0),
            metrics: p.metrics,
            alive: p.alive,
            peers: p.peers,
            search: p.search,
            http_buckets: Mutex::default(),
            ips: Mutex::default(),
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

    /// The search index, if it opened.
    pub fn search(&self) -> Option<&Search> {
        self.search.as_deref()
    }

    /// Seconds since the node started.
    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Queues a request released after the next flush.
    pub fn after_flush(&self, p: AfterFlush) {
        self.committer.after_flush(p);
    }

    /// For an event loop at the end of its turn: flushes what it queued.
    pub fn commit_queued(&self) {
        self.committer.commit_queued();
    }

    /// Runs `f`, then flushes what it queued on this thread (`here`) or
    /// hands it to the commit thread ([`Committer::hold`]).
    pub fn hold_flushes<T>(&self, here: bool, f: impl FnOnce() -> T) -> T {
        self.committer.hold(here, f)
    }

    /// Stops the commit thread after its last flush.
    pub fn stop_committer(&self) {
        self.committer.stop();
    }

    /// Fan-out to rooms and users from any thread.
    pub fn fanout(&self) -> &Fanout {
        &self.fanout
    }

    /// Sends a command to reactor `reactor`.
    pub fn send_to(&self, reactor: u16, cmd: Cmd) {
        self.fanout.send_to(reactor, cmd);
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

    /// Admits a new WebSocket of `user` from `ip` under the connection caps
    /// (counting it for its address), or says which cap it hits.
    pub fn admit(&self, ip: Option<IpAddr>, user: &Arc<str>) -> Result<(), &'static str> {
        let caps = self.cfg.caps;
        let why = if self.connections() >= caps.connections as usize {
            Some("this server has as many connections as it takes")
        } else if self.with_user(user, |e| e.live) >= caps.per_user {
            Some("this user has as many connections as a user may")
        } else {
            None
        };
        if let Some(why) = why {
            self.metrics.refuse("too_many_connections");
            return Err(why);
        }
        if let Some(ip) = ip {
            let mut ips = self.ips.lock();
            let n = ips.entry(ip).or_insert(0);
            if *n >= caps.per_ip {
                self.metrics.refuse("too_many_connections");
                return Err("this address has as many connections as one may");
            }
            *n += 1;
        }
        Ok(())
    }

    /// A WebSocket from `ip` closed.
    pub fn release_ip(&self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        let mut ips = self.ips.lock();
        if let Some(n) = ips.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                ips.remove(&ip);
            }
        }
    }

    /// Reactor `reactor` (the thread in that slot) is turning.
    pub fn beat(&self, reactor: u16) {
        self.alive.beat(reactor as usize);
    }

    /// The watched threads.
    pub fn alive(&self) -> &Arc<Alive> {
        &self.alive
    }

    /// Whether writes can become durable: storage answers and the commit
    /// thread runs.
    pub fn storage_ok(&self) -> bool {
        self.storage.is_healthy()
            && self.alive.slot("commit").is_none_or(|s| !self.alive.is_failed(s))
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
        self.fanout.dir().with_room(room, || self.storage.last_seq(room), f)
    }

    /// Makes `room`'s directory entry if it has none. Its seq is read
    /// once outside the shard lock, so that the read under the lock (which
    /// keeps it exact against a concurrent first write) finds sled's pages
    /// in memory and holds no other room of the shard waiting on the disk.
    pub fn preload_room(&self, room: &str) {
        if self.fanout.dir().has_room(room) {
            return;
        }
        let _ = self.storage.last_seq(room);
        let _ = self.with_room(room, |_| ());
    }

    /// The room's latest durable seq: what history and subscriptions show.
    pub fn visible_seq(&self, room: &str) -> Result<u64, StorageError> {
        self.with_room(room, |e| e.durable)
    }

    /// Runs `f` on `user`'s directory entry under its lock.
    pub fn with_user<R>(&self, user: &Arc<str>, f: impl FnOnce(&mut UserEntry) -> R) -> R {
        self.fanout.dir().with_user(user, f)
    }

    /// Every user with a live connection on this node.
    pub fn online_users(&self) -> Vec<String> {
        self.fanout.dir().online_users()
    }

    /// Whether `user` has a live connection anywhere (this node, or another
    /// node of the cluster).
    pub fn is_online(&self, user: &str) -> bool {
        self.fanout.dir().is_online(user) || self.peers.online_elsewhere(user)
    }

    // ---- fan-out --------------------------------------------------------------

    /// Sends a frame to every reactor with subscribers of `room`, encoded
    /// once per encoding in use there.
    pub fn broadcast(&self, room: &str, frame: &ServerFrame<'_>, skip_user: Option<Arc<str>>) {
        let _ = self.with_room(room, |e| self.fanout.broadcast_in(e, frame, 0, skip_user));
    }

    /// Broadcasts a `presence` frame to a room's members, not to `user`.
    pub fn presence(&self, room: &str, user: &Arc<str>, state: Presence) {
        let frame = ServerFrame::Presence { room, user, state };
        self.broadcast(room, &frame, Some(user.clone()));
    }

    /// Like [`Fanout::to_user`], but the commands go out after the next flush
    /// (delivery follows durability).
    pub fn to_user_after_flush(&self, user: &str, make: impl Fn() -> Cmd) {
        let reactors = self.fanout.dir().user_reactors(user);
        if reactors == 0 {
            self.committer.after_flush(AfterFlush::nothing());
        }
        for r in bits(reactors) {
            self.committer.after_flush(AfterFlush::then(r as u16, make(), None));
        }
    }
}
