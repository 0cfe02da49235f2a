//! chinwag's integration suite: one test binary that runs the real server as a child process
//! (see `support`) and checks it against `PROTOCOL.md`.
//!
//! * `ws`      — connecting, auth, hello, encodings and every client frame of section 3.
//! * `errors`  — every error code a single node produces and malformed input of every kind.
//! * `limits`  — rate limiting, frame and text limits, slow consumers and their close codes.
//! * `storage` — history, `since`, persistence across restart, `kill -9` and SIGTERM.
//! * `cli`     — command line, config precedence, `chinwag token`, `GET /health`.
//! * `load`    — ordering under concurrent senders and 500 connections in 20 rooms.
//! * `api`     — every `/api/` route and status, `/metrics`, the web client,
//!   `wss://`, `chinwag backup` and the systemd unit.
//! * `integrity` — delivery follows durability: `kill -9` under traffic, a
//!   dead commit thread, a slow disk.
//! * `ops`     — `chinwag backup` written by the command, SIGHUP, `/metrics` series, the
//!   Grafana dashboard, log lines.
//! * `proxy`   — nginx and Caddy from docs/ in front of the server (TLS at the proxy).
//! * `cluster` — three nodes and a real `redis-server`: one chat, presence,
//!   a node killed and restarted, Redis stopped and restarted.
//! * `events`  — revision 2's room events on one node: edit, delete, reactions, replies and
//!   threads, mentions, hello counts, search, the room directory, default rooms, display names,
//!   refresh, `limit` rules, the new HTTP rows, recovery with `since`, `kill -9`, racing writes.
//! * `cluster_events` — room events, search, threads, hello counts and names across two nodes,
//!   a node back from `kill -9`, and the rules under writes racing on both nodes.
//! * `fuzz`    — mutated frames of every type in both encodings, and mutated HTTP requests of
//!   every route: protocol answers only,
//!   no panic, nothing acked lost.
//! * `search_index` — the search index catches up after `kill -9`, a lost index, an upgrade.

mod support;

mod api;
mod cli;
mod cluster;
mod cluster_events;
mod errors;
mod events;
mod fuzz;
mod integrity;
mod limits;
mod load;
mod ops;
mod proxy;
mod search_index;
mod storage;
mod ws;
