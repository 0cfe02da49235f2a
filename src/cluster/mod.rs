//! The cluster as the rest of the node sees it: the [`Link`] handle that
//! reactors call (it queues work for the Redis publisher and knows who is
//! online on other nodes) and [`Peers`], a facade over it that does nothing
//! on a single node. The threads that talk to Redis are `bridge`'s.

mod events;
mod link;
mod seal;

pub use events::{
    gone_key, log_key, reactions_key, revocation_field, seq_key, Body, Envelope, Event, Guard,
    Outbound, CHANNEL, REVOKED_KEY,
};
pub use link::Link;
pub use seal::Replays;

use crate::auth::Revocation;
use serde_json::Value;
use std::sync::Arc;

/// The other nodes, if any: every call is a no-op on a single node.
#[derive(Debug, Default)]
pub struct Peers(Option<Arc<Link>>);

impl Peers {
    /// Peers over `link` (`None`: a single node).
    pub fn new(link: Option<Arc<Link>>) -> Peers {
        Peers(link)
    }

    /// The link, on a cluster node.
    pub fn link(&self) -> Option<&Arc<Link>> {
        self.0.as_ref()
    }

    /// `/health`'s `redis`: `off`, `ok` or `down`.
    pub fn state(&self) -> &'static str {
        match &self.0 {
            None => "off",
            Some(l) if l.is_up() => "ok",
            Some(_) => "down",
        }
    }

    /// Whether the Redis link is up (false on a single node).
    pub fn is_up(&self) -> bool {
        self.0.as_ref().is_some_and(|l| l.is_up())
    }

    /// Whether `user` is online on another live node.
    pub fn online_elsewhere(&self, user: &str) -> bool {
        self.0.as_ref().is_some_and(|l| l.remote_online(user))
    }

    /// Tells the other nodes that `user`'s first connection here opened (or
    /// last closed); returns whether they are online elsewhere.
    pub fn presence(&self, user: &str, online: bool) -> bool {
        self.0.as_ref().is_some_and(|l| {
            l.presence(user, online);
            l.remote_online(user)
        })
    }

    /// `user` joined `room` when its seq was `Some(seq)`, or left it (`None`).
    pub fn member(&self, room: &str, user: &str, joined: Option<u64>) {
        if let Some(l) = &self.0 {
            l.member(room, user, joined);
        }
    }

    /// `user`'s display name is `name` (`None`: first seen without one).
    pub fn name(&self, user: &str, name: Option<&str>) {
        if let Some(l) = &self.0 {
            l.name(user, name);
        }
    }

    /// `user` is typing in `room`.
    pub fn typing(&self, room: &str, user: &str, active: bool) {
        if let Some(l) = &self.0 {
            l.typing(room, user, active);
        }
    }

    /// `user`'s read marker in `room` moved to `seq`.
    pub fn read(&self, room: &str, user: &str, seq: u64) {
        if let Some(l) = &self.0 {
            l.read(room, user, seq);
        }
    }

    /// `POST /api/notify` for `user`.
    pub fn notify(&self, user: &str, kind: &str, text: &str, data: Option<&Value>, ts: u64) {
        if let Some(l) = &self.0 {
            l.notify(user, kind, text, data, ts);
        }
    }

    /// A revocation, for every node now and later (kept in Redis).
    pub fn revoke(&self, r: &Revocation) {
        if let Some(l) = &self.0 {
            l.revoke(r);
        }
    }

    /// Asks the bridge threads to stop.
    pub fn stop(&self) {
        if let Some(l) = &self.0 {
            l.stop();
        }
    }
}
