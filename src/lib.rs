//! chinwag: a real-time chat server. N reactors (one mio event loop per
//! core) share nothing but mailboxes, a sharded directory and the database.
//!
//! # Layout
//! Dependencies point one way, down: a module imports only from its own
//! layer's lower neighbours or below, never from above.
//! ```text
//! L0  wire/      client frames, server frames, names, HTTP responses, encode-once
//!     alive      liveness of the watched threads (beats, exit guards)
//!     rooms      the sharded directory: room → reactors, user → reactors
//!     config     flags, environment and TOML → a validated Config
//!     auth       HS256 tokens and revocations
//!     metrics    Prometheus counters; takes numbers, not the node
//!     logs       the log line format (plain or journald) and a limiter for
//!                lines that clients cause
//!     priority   each thread's scheduling: short slices for the ack path,
//!                nice 19 for the work behind it
//!     trim       giving freed heap back to the system in quiet seconds
//! L1  conn/      one connection (socket, output queue, phase, rate bucket,
//!                close codes) and ConnTable, a reactor's slab and outbox
//!     storage/   sled, and nothing else: messages, members, reads, revocations
//!     fanout/    Mailbox (channel + Waker), Cmd, ConnId, ReplyTo, and Fanout:
//!                frames to rooms and users through the directory
//! L2  durable    the commit path: one flusher at a time flushes, then releases
//!     snapshot   the thread that keeps sled's replay at start short
//!     cluster/   Link (the handle reactors call) and Peers (no-op when single)
//!     control    the control socket and `chinwag backup`
//!     search     the tantivy index, and the thread that follows storage
//! L3  node       Node: what threads share, behind methods; fan-out helpers
//! L4  local      LocalIndex: a reactor's rooms and users, every in-memory
//!                membership copy kept in step
//! L5  chat/      one file per rule (join, leave, send, events, read,
//!                typing, presence, history, thread, search, directory,
//!                refresh, session), run on a small context
//!     bridge/    the Redis publisher and subscriber threads, and the seq
//!                script that re-checks room rules where the order is decided
//! L6  http/      request heads, the upgrade, the API (calls chat's rules)
//! L7  reactor/   the loop with named phases: accept, read, inbox, timers, reap
//! L8  server     wiring: startup and teardown
//! ```
//!
//! # Threads
//! * `chinwag-loop-N` (one per core): owns its connections, its
//!   `LocalIndex` and its bits in the directory; reads `Node`; sends `Cmd`s
//!   to other reactors' mailboxes. At the end of each turn it flushes what
//!   the turn wrote and releases it (`durable`), unless another flush is
//!   running or flushes are slow. Runs with the shortest scheduler slice,
//!   as does `chinwag-commit`.
//! * `chinwag-commit`: flushes what the loops leave to it (and what other
//!   threads queue) and does storage's housekeeping. Whoever flushes (one
//!   at a time) releases what waited for that flush: messages to their
//!   rooms (raising the rooms' durable seqs in the directory), acks and
//!   answers to reactors.
//! * `chinwag-redis-pub` and `chinwag-redis-sub` (cluster only): talk to
//!   Redis; write storage, the directory (room seqs) and mailboxes through
//!   `Node`; never touch a connection.
//! * `chinwag-search`: follows each room's released seq and indexes what
//!   changed; reads storage and the directory, writes only its index. At
//!   nice 19, as are tantivy's threads and `chinwag-tally`.
//! * `chinwag-snapshot`: writes a snapshot of sled's page table after
//!   every few hundred MB of log, at nice 19; reads storage only.
//! * `chinwag-control`: answers `chinwag backup` on the control socket;
//!   reads storage only.
//! * `chinwag-watchdog` (under a systemd watchdog): pings systemd while
//!   every watched thread (reactors, commit, bridge) beats in `Alive`.
//! * the main thread: waits for SIGTERM/SIGINT, then runs the teardown.
#![deny(rust_2018_idioms, missing_debug_implementations)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub(crate) mod alive;
pub mod auth;
pub(crate) mod bridge;
pub(crate) mod chat;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod conn;
pub mod control;
pub(crate) mod durable;
pub mod export;
pub(crate) mod fanout;
pub(crate) mod http;
pub(crate) mod local;
pub mod logs;
pub(crate) mod metrics;
pub(crate) mod node;
pub(crate) mod priority;
pub(crate) mod reactor;
pub(crate) mod rooms;
pub mod search;
pub mod server;
pub(crate) mod snapshot;
pub mod storage;
pub(crate) mod trim;
pub mod wire;

/// The output queue, for the fan-out benchmark.
pub use conn::{Bucket, OutQueue};
/// The commit path, for the commit benchmark.
#[doc(hidden)]
pub use durable::CommitRig;
