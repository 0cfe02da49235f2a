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
//!   dead commit thread.
//! * `ops`     — `chinwag backup` written by the command, SIGHUP, `/metrics` series, the
//!   Grafana dashboard, log lines.
//! * `proxy`   — nginx and Caddy from docs/ in front of the server (TLS at the proxy).
//! * `cluster` — three nodes and a real `redis-server`: one chat, presence,
//!   a node killed and restarted, Redis stopped and restarted.

mod support;

mod api;
mod cli;
mod cluster;
mod errors;
mod integrity;
mod limits;
mod load;
mod ops;
mod proxy;
mod storage;
mod ws;
