//! chinwag: a real-time chat server. N reactors (one mio event loop per
//! core) share nothing but mailboxes, a sharded directory and the database.
//!
//! # Layout
//! * `config`  — flags, environment and TOML → a validated `Config`; the
//!   secret and node id files.
//! * `server`  — startup (storage → commit thread → reactors) and teardown.
//! * `reactor` — one core's loop: listener, connection slab, inbox, timers,
//!   subscriptions, delivery. The only caller of `Registry`.
//! * `conn`    — one connection: socket, output queue, phase, rate bucket.
//! * `chat`    — what each client frame does (join, send, dm, ...).
//! * `http`    — request heads, routing, the upgrade decision, `/health`, `/`.
//! * `api`     — the `/api/` routes: parsing, auth, rate limit, execution.
//! * `metrics` — Prometheus counters and the `/metrics` text.
//! * `proto`   — client frames in, server frames out (JSON / MessagePack,
//!   framed once and shared), naming and text rules.
//! * `rooms`   — the shared directory: room → reactors, user → reactors.
//! * `deliver` — fan-out from any thread: to a room, to a user, a message.
//! * `fanout`  — `Mailbox` (channel + `Waker`) and `Cmd`: the only
//!   cross-thread path into a reactor.
//! * `storage` — sled (the only module naming it) and the group-commit thread.
//! * `auth`    — HS256 tokens and revocations.
//! * `bridge`  — the Redis cluster link (publisher and subscriber threads).
//! * `control` — the local control socket and `chinwag backup`.
#![deny(rust_2018_idioms, missing_debug_implementations)]

pub mod api;
pub mod auth;
pub mod bridge;
pub mod chat;
pub mod config;
pub mod conn;
pub mod control;
pub mod deliver;
pub mod fanout;
pub mod http;
pub mod metrics;
pub mod proto;
pub mod reactor;
pub mod rooms;
pub mod server;
pub mod storage;
