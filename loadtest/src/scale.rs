//! `scale`: storage at scale. A data directory of `--events` messages in
//! `--rooms` rooms with `--users` users and their read markers, then the
//! real server on it: disk bytes per event, time from process start to the
//! first accepted WebSocket, RSS, `history` and `hello` latency, and sled's
//! space growth over a churn of edits and deletes with what reclaims it.
//!
//! Owns: the shape of the data (`Shape`, a deterministic plan from a seed),
//! writing it offline through the server's own `Storage` (the calls the
//! server makes at a user's first sight, a `join` and a message, so the
//! directory is one the server could have written; 10M messages through
//! the WebSocket would take an hour here), starting and stopping the
//! server binary on it (so the time to the first accepted connection is
//! measured from the process's start), and the measurements, one request
//! at a time through `conn::Conn`.
//!
//! The shape: users `u0..u<heavy>` are the "heavy" users, user `h` a member
//! of every `heavy`-th room from room `h` on (`--heavy-rooms` of them, 1,000
//! by default: the server's `max_rooms_per_user`), so every room has one
//! heavy member and they read and write for the harness. Every other user
//! is in `--rooms-per-user` random rooms, and every room has at least one
//! of them. Messages go to uniformly random rooms (so consecutive writes
//! land all over the tree, as in a live server), from a random member, with
//! Zipf words from `vocab` and an `@mention` of another member in one
//! message of 20. Every membership has a read marker somewhere in the back
//! half of the room, so unread counts are not 0.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chinwag::storage::{SnapshotDue, Storage, SNAPSHOT_AFTER};
use chinwag::wire::Msg;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::conn::Conn;
use crate::scenario::print_report;
use crate::search::disk_usage;
use crate::stats::{q, Report};
use crate::vocab::Vocab;
use crate::wire::{self, Cursor, Encoding};
use crate::ws::xorshift;
use crate::{sys, ScaleArgs};

/// The file in the data directory that records the shape it was generated
/// with, so a later run reuses it only for the same shape.
const MANIFEST: &str = "chinwag-load-scale.json";
/// The file in the data directory that counts the churns run on it: a
/// reused directory is churned again with another seed (and its earlier
/// deletes answer `not_found`, counted apart from errors).
const CHURNS: &str = "chinwag-load-scale.churns";
/// Storage writes (events, memberships, markers) between two flushes while
/// generating: what a busy server's group commits add up to, and a bound on
/// what sled holds dirty in memory.
const FLUSH_EVERY: u64 = 50_000;
/// One message in this many mentions another member.
const MENTION_ONE_IN: u64 = 20;
/// Deadline of one request (a history page, an edit's ack).
const REQUEST: Duration = Duration::from_secs(30);
/// The server's shared secret (fixed: the harness connects in open mode).
const SECRET: &str = "chinwag-load-harness-shared-secret-0001";

fn room(r: usize) -> String {
    format!("r{r}")
}

fn user(u: usize) -> String {
    format!("u{u}")
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// What the data directory holds; every count a flag, so the smoke test
/// runs the same code at a few thousand events.
#[derive(Clone, Debug, PartialEq)]
struct Shape {
    events: u64,
    rooms: usize,
    users: usize,
    heavy: usize,
    heavy_rooms: usize,
    rooms_per_user: usize,
    seed: u64,
    vocab: usize,
    zipf: f64,
    min_words: usize,
    max_words: usize,
}

impl Shape {
    fn of(a: &ScaleArgs) -> Result<Shape, String> {
        let s = Shape {
            events: a.events,
            rooms: a.rooms,
            users: a.users,
            heavy: a.heavy_users,
            heavy_rooms: a.heavy_rooms.min(a.rooms.div_ceil(a.heavy_users.max(1))),
            rooms_per_user: a.rooms_per_user.min(a.rooms),
            seed: a.seed | 1,
            vocab: a.text.vocab,
            zipf: a.text.zipf,
            min_words: a.text.min_words,
            max_words: a.text.max_words,
        };
        if s.rooms == 0 || s.heavy == 0 || s.users <= s.heavy || s.rooms_per_user == 0 {
            return Err("need --rooms >= 1, --heavy-users >= 1 and --users > --heavy-users \
                        (and --rooms-per-user >= 1)"
                .into());
        }
        if s.heavy * s.heavy_rooms < s.rooms {
            return Err(format!(
                "--heavy-users x --heavy-rooms ({} x {}) must cover --rooms {}: every room \
                 needs a heavy member to read its history",
                s.heavy, s.heavy_rooms, s.rooms
            ));
        }
        if s.vocab == 0 || s.min_words == 0 || s.min_words > s.max_words {
            return Err("need --vocab >= 1 and 1 <= --min-words <= --max-words".into());
        }
        Ok(s)
    }

    fn json(&self) -> Value {
        json!({
            "events": self.events, "rooms": self.rooms, "users": self.users,
            "heavy_users": self.heavy, "heavy_rooms": self.heavy_rooms,
            "rooms_per_user": self.rooms_per_user, "seed": self.seed, "vocab": self.vocab,
            "zipf": self.zipf, "min_words": self.min_words, "max_words": self.max_words,
        })
    }

    /// The heavy user who is a member of room `r` (every room has one).
    fn heavy_of(&self, r: usize) -> usize {
        r % self.heavy
    }

    /// The members of every room, heavy user first. Deterministic in the
    /// seed (its own stream, so the messages' stream does not depend on it).
    fn members(&self) -> Vec<Vec<u32>> {
        let mut rng = self.seed ^ 0x6d65_6d62_6572_7321;
        let mut members: Vec<Vec<u32>> =
            (0..self.rooms).map(|r| vec![self.heavy_of(r) as u32]).collect();
        let ordinary = self.users - self.heavy;
        // Every room gets an ordinary member, then each ordinary user
        // fills up to `rooms_per_user` random rooms.
        let mut count = vec![0usize; ordinary];
        for (r, m) in members.iter_mut().enumerate() {
            let u = r % ordinary;
            m.push((self.heavy + u) as u32);
            count[u] += 1;
        }
        for (u, have) in count.iter().enumerate() {
            let id = (self.heavy + u) as u32;
            let mut want = self.rooms_per_user.saturating_sub(*have);
            let mut tries = 0;
            while want > 0 && tries < self.rooms_per_user * 8 {
                tries += 1;
                let r = (xorshift(&mut rng) % self.rooms as u64) as usize;
                if !members[r].contains(&id) {
                    members[r].push(id);
                    want -= 1;
                }
            }
        }
        members
    }
}

/// The messages of the plan, one by one: room, seq, author, mention. The
/// text comes from its own stream (`Text`), so replaying the plan without
/// writing (a reused directory) is cheap.
struct Events<'a> {
    shape: &'a Shape,
    members: &'a [Vec<u32>],
    rng: u64,
    last: Vec<u32>,
    left: u64,
}

/// One planned message.
struct Planned {
    room: usize,
    seq: u64,
    from: u32,
    mention: Option<u32>,
}

impl<'a> Events<'a> {
    fn new(shape: &'a Shape, members: &'a [Vec<u32>]) -> Events<'a> {
        let rng = shape.seed ^ 0x6576_656e_7473_2121;
        Events { shape, members, rng, last: vec![0; shape.rooms], left: shape.events }
    }
}

impl Iterator for Events<'_> {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let r = (xorshift(&mut self.rng) % self.shape.rooms as u64) as usize;
        let m = &self.members[r];
        let from = m[(xorshift(&mut self.rng) % m.len() as u64) as usize];
        let mention = xorshift(&mut self.rng)
            .is_multiple_of(MENTION_ONE_IN)
            .then(|| m[(xorshift(&mut self.rng) % m.len() as u64) as usize])
            .filter(|&x| x != from);
        self.last[r] += 1;
        Some(Planned { room: r, seq: u64::from(self.last[r]), from, mention })
    }
}

/// What the run needs to know of the data, generated or replayed.
struct Data {
    /// Each room's last seq.
    last: Vec<u32>,
    /// The messages of each heavy user: (room, seq), the churn's targets.
    own: Vec<Vec<(u32, u32)>>,
    /// Memberships (= read markers) written.
    memberships: u64,
}

/// Walks the plan: writes it into `storage` if given, else only replays it.
fn walk(shape: &Shape, storage: Option<&Storage>) -> Result<Data, String> {
    let members = shape.members();
    let memberships: u64 = members.iter().map(|m| m.len() as u64).sum();
    let err = |e: chinwag::storage::StorageError| e.to_string();
    let mut writes = 0u64;
    let mut flush = |s: &Storage, n: u64| -> Result<(), String> {
        writes += n;
        if writes >= FLUSH_EVERY {
            s.flush().map_err(err)?;
            // What the server's snapshot thread does between flushes.
            s.snapshot_if_due(SnapshotDue::Running(SNAPSHOT_AFTER)).map_err(err)?;
            writes = 0;
        }
        Ok(())
    };
    if let Some(s) = storage {
        // What the server stores at a user's first connection, then at
        // each `join` (member, user_rooms, the room's member count).
        for u in 0..shape.users {
            s.saw_user(&user(u), None).map_err(err)?;
            flush(s, 1)?;
        }
        for (r, m) in members.iter().enumerate() {
            for &u in m {
                s.add_member(&room(r), &user(u as usize)).map_err(err)?;
                flush(s, 1)?;
            }
        }
    }
    let vocab = Vocab::new(shape.vocab, shape.zipf);
    let mut text_rng = shape.seed ^ 0x7465_7874_7465_7874;
    let mut text = Vec::with_capacity(256);
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    // A year of history, evenly spread, ending now.
    let span_ms: u64 = 365 * 24 * 3600 * 1000;
    let step_ms = (span_ms / shape.events.max(1)).max(1);
    let t0 = now_ms.saturating_sub(step_ms * shape.events);
    let mut own: Vec<Vec<(u32, u32)>> = vec![Vec::new(); shape.heavy];
    let mut events = Events::new(shape, &members);
    let started = Instant::now();
    let mut next_note = shape.events / 20;
    for (i, p) in (0u64..).zip(events.by_ref()) {
        if (p.from as usize) < shape.heavy {
            own[p.from as usize].push((p.room as u32, p.seq as u32));
        }
        if let Some(s) = storage {
            vocab.sentence(&mut text_rng, shape.min_words, shape.max_words, &mut text);
            let mut body = String::from_utf8_lossy(&text).into_owned();
            let mut msg;
            if let Some(m) = p.mention {
                body.push_str(" @");
                body.push_str(&user(m as usize));
                msg = Msg::message(&room(p.room), &user(p.from as usize), body);
                msg.mentions = vec![user(m as usize)];
            } else {
                msg = Msg::message(&room(p.room), &user(p.from as usize), body);
            }
            msg.ts = t0 + i * step_ms;
            msg.seq = p.seq;
            s.apply(&room(p.room), p.seq, &msg).map_err(err)?;
            flush(s, 1)?;
            if i >= next_note && i > 0 {
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "chinwag-load: scale: {i} of {} events written in {secs:.0} s ({:.0}/s)",
                    shape.events,
                    i as f64 / secs
                );
                next_note += shape.events / 20;
            }
        }
    }
    let last = events.last;
    if let Some(s) = storage {
        // Read markers: somewhere in the back half of each room, so every
        // membership has unread messages (and some own ones above it).
        let mut rng = shape.seed ^ 0x7265_6164_7321_2121;
        for (r, m) in members.iter().enumerate() {
            let end = u64::from(last[r]);
            for &u in m {
                if end == 0 {
                    continue;
                }
                let back = xorshift(&mut rng) % (end / 2).max(1);
                s.set_read(&user(u as usize), &room(r), end - 1 - back.min(end - 1))
                    .map_err(err)?;
                flush(s, 1)?;
            }
        }
        s.flush().map_err(err)?;
    }
    Ok(Data { last, own, memberships })
}

/// Opens `dir` for the run: generates the data if the directory is new (or
/// empty), reuses it if its manifest has the same shape, refuses otherwise.
fn prepare(shape: &Shape, dir: &Path, r: &mut Report) -> Result<Data, String> {
    let manifest = dir.join(MANIFEST);
    if let Ok(text) = fs::read_to_string(&manifest) {
        let had: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", manifest.display()))?;
        if had != shape.json() {
            return Err(format!(
                "{} holds data of another shape ({had}); use a new --data-dir",
                dir.display()
            ));
        }
        eprintln!("chinwag-load: scale: reusing {} (same shape)", dir.display());
        r.add("generated", false);
        return walk(shape, None);
    }
    let empty = fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(true);
    if !empty {
        return Err(format!(
            "{} exists without {MANIFEST}: not a directory this scenario made; use a new --data-dir",
            dir.display()
        ));
    }
    // 0700, as the server creates it.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let cpu0 = sys::self_cpu_s();
    let t = Instant::now();
    let storage = Storage::open(dir).map_err(|e| e.to_string())?;
    let data = walk(shape, Some(&storage))?;
    // What the server does at a clean stop, after its last flush.
    storage.mark_clean().map_err(|e| e.to_string())?;
    storage.snapshot_if_due(SnapshotDue::Stopping).map_err(|e| e.to_string())?;
    drop(storage);
    let secs = t.elapsed().as_secs_f64();
    fs::write(&manifest, shape.json().to_string())
        .map_err(|e| format!("{}: {e}", manifest.display()))?;
    r.add("generated", true);
    r.add_f("generate_s", secs);
    r.add_f("generate_events_per_s", shape.events as f64 / secs);
    r.add_f("generate_cpu_s", sys::self_cpu_s() - cpu0);
    Ok(data)
}

/// Bytes on disk of the data directory without the search index, and of
/// the index.
fn sizes(dir: &Path) -> Result<(u64, u64), String> {
    let search = dir.join("search");
    let index = if search.exists() { disk_usage(&search)? } else { 0 };
    Ok((disk_usage(dir)?.saturating_sub(index), index))
}

/// The server process, killed on drop (a run that fails part-way leaves
/// nothing behind).
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit (the server flushes and exits within 5 s);
    /// killed after 30 s.
    fn stop(mut self) -> Result<(), String> {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait().map_err(|e| e.to_string())?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("the server did not stop within 30 s of SIGTERM".into())
    }
}

/// A port nobody listens on at 127.0.0.1 now (the server gets a fixed
/// port, so the harness can knock before the server has said where).
fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// The server binary: --server-bin, else `chinwag` next to this binary.
fn server_bin(a: &ScaleArgs) -> Result<PathBuf, String> {
    if let Some(b) = &a.server_bin {
        return Ok(b.clone());
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let b = me.with_file_name("chinwag");
    if b.is_file() {
        Ok(b)
    } else {
        Err(format!("no server at {} (pass --server-bin)", b.display()))
    }
}

/// How many times the server's log says it has read its unread tallies.
fn tally_lines(log: &Path) -> usize {
    fs::read_to_string(log).map_or(0, |s| s.matches("unread tallies of").count())
}

/// Starts the server on `dir` and waits for its first accepted WebSocket
/// (a user in no room): returns it, with the seconds from the spawn to the
/// `hello` of that first connection.
fn start(a: &ScaleArgs, dir: &Path, log: &Path) -> Result<(Server, f64), String> {
    let bin = server_bin(a)?;
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = match a.server_core {
        Some(core) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &core.to_string()]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    cmd.args(["serve", "--listen", &addr.to_string(), "--data-dir"])
        .arg(dir)
        .args(["--open", "--rate", "1000000", "--burst", "1000000"])
        .args(["--threads", &a.server_threads.to_string()])
        .args(["--max-connections", "1000000", "--max-conns-per-ip", "1000000"])
        .args(["--max-conns-per-user", "1000000"])
        // storage=debug: the log then says how long the start's check of
        // every room's last event took.
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info,chinwag::storage=debug".into()),
        )
        .env("CHINWAG_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(log);
    if !a.search {
        cmd.env("CHINWAG_SEARCH", "off");
    }
    let t0 = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut server = Server { child, addr };
    let deadline = t0 + a.start_timeout;
    loop {
        // Refused until the listener is bound; after that the upgrade
        // waits in the backlog until the reactors run.
        let left = deadline.saturating_duration_since(Instant::now());
        match Conn::open(addr, "scaleprobe", a.encoding, left.max(Duration::from_millis(1))) {
            Ok(_) => return Ok((server, t0.elapsed().as_secs_f64())),
            Err(e) => {
                if let Some(status) = server.child.try_wait().map_err(|e| e.to_string())? {
                    return Err(format!("the server exited ({status}) before accepting"));
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "no connection accepted within {:?}: {e}",
                        a.start_timeout
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

fn rss(pid: u32) -> Value {
    sys::proc_rss_kib(pid).map_or(Value::Null, Value::from)
}

fn cpu(pid: u32) -> f64 {
    sys::proc_cpu_s(pid).unwrap_or(0.0)
}

/// Server and harness CPU µs per operation over a phase.
fn cpu_per_op(r: &mut Report, names: [&'static str; 2], server: f64, harness: f64, ops: u64) {
    let n = ops.max(1) as f64;
    r.add_f(names[0], server * 1e6 / n);
    r.add_f(names[1], harness * 1e6 / n);
}

/// Latency p50/p99/max (µs) under `names`.
fn latency(r: &mut Report, names: [&'static str; 3], h: &Histogram<u64>) {
    r.add(names[0], q(h, 0.5));
    r.add(names[1], q(h, 0.99));
    r.add(names[2], h.max());
}

/// `hello` of heavy users (each in `heavy_rooms` rooms), connect to the
/// frame, one connection at a time.
fn hello(a: &ScaleArgs, shape: &Shape, server: &Server, r: &mut Report) -> Result<(), String> {
    let mut h = histogram();
    let (cpu0, me0) = (cpu(server.pid()), sys::self_cpu_s());
    for k in 0..a.hello_connects {
        let u = user(k % shape.heavy);
        let t = Instant::now();
        let (conn, v) = Conn::open(server.addr, &u, a.encoding, REQUEST)?;
        // Until the frame is in, not until the harness has decoded it.
        let us = conn.frame_at().duration_since(t).as_micros() as u64;
        drop(conn);
        let rooms = v["rooms"].as_array().map_or(0, Vec::len);
        if rooms != shape.heavy_rooms.min(shape.rooms) && k < shape.heavy {
            eprintln!("chinwag-load: scale: {u} has {rooms} rooms in hello");
        }
        if k == 0 {
            // The first `hello` after the start reads every room cold.
            r.add("hello_first_us", us);
            let unread: u64 = v["rooms"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x["unread"].as_u64())
                .sum();
            r.add("hello_rooms", rooms);
            r.add("hello_unread_sum", unread);
            r.add("hello_bytes", v.to_string().len());
        }
        h.saturating_record(us);
    }
    r.add("hello_connects", a.hello_connects);
    latency(r, ["hello_p50_us", "hello_p99_us", "hello_max_us"], &h);
    let (cpu1, me1) = (cpu(server.pid()), sys::self_cpu_s());
    let names = ["hello_server_cpu_us", "hello_harness_cpu_us"];
    cpu_per_op(r, names, cpu1 - cpu0, me1 - me0, a.hello_connects as u64);
    Ok(())
}

/// One connection per heavy user, opened on first use.
struct Heavy {
    conns: Vec<Option<Conn>>,
}

impl Heavy {
    fn get(&mut self, a: &ScaleArgs, addr: SocketAddr, h: usize) -> Result<&mut Conn, String> {
        if self.conns[h].is_none() {
            self.conns[h] = Some(Conn::open(addr, &user(h), a.encoding, REQUEST)?.0);
        }
        Ok(self.conns[h].as_mut().expect("opened above"))
    }
}

/// `history` pages (`before` a random seq of a random room), one at a time.
fn history(
    a: &ScaleArgs,
    shape: &Shape,
    data: &Data,
    server: &Server,
    heavy: &mut Heavy,
    r: &mut Report,
) -> Result<(), String> {
    let mut rng = shape.seed ^ 0x6869_7374_6f72_7921;
    let mut h = histogram();
    let mut wrong = 0u64;
    // Open every reader first, so no request waits for a `hello`.
    for u in 0..shape.heavy {
        heavy.get(a, server.addr, u)?;
    }
    let (cpu0, me0) = (cpu(server.pid()), sys::self_cpu_s());
    for k in 0..a.history_requests {
        let rm = (xorshift(&mut rng) % shape.rooms as u64) as usize;
        let last = u64::from(data.last[rm]);
        let before = 1 + xorshift(&mut rng) % (last + 1) + 1;
        let conn = heavy.get(a, server.addr, shape.heavy_of(rm))?;
        let mut f = Vec::new();
        let id = k as u64 + 1;
        wire::history(a.encoding, id, &room(rm), Cursor::Before(before), a.history_limit, &mut f);
        let t = Instant::now();
        conn.send(&f)?;
        let v = conn.answer(id, Instant::now() + REQUEST)?;
        h.saturating_record(t.elapsed().as_micros() as u64);
        let got = v["messages"].as_array().map_or(0, Vec::len) as u64;
        if v["type"] != "history" || got != a.history_limit.min(before - 1) {
            wrong += 1;
            if wrong <= 3 {
                eprintln!(
                    "chinwag-load: scale: history of {} before {before}: {got} messages ({})",
                    room(rm),
                    v["type"]
                );
            }
        }
    }
    let (cpu1, me1) = (cpu(server.pid()), sys::self_cpu_s());
    r.add("history_requests", a.history_requests);
    r.add("history_limit", a.history_limit);
    r.add("history_wrong", wrong);
    latency(r, ["history_p50_us", "history_p99_us", "history_max_us"], &h);
    let names = ["history_server_cpu_us", "history_harness_cpu_us"];
    cpu_per_op(r, names, cpu1 - cpu0, me1 - me0, a.history_requests as u64);
    Ok(())
}

/// A `delete` frame (the harness's wire module has no builder for it).
fn delete_frame(enc: Encoding, id: u64, rm: &str, seq: u64) -> Result<Vec<u8>, String> {
    let v = json!({"type": "delete", "id": id, "room": rm, "seq": seq});
    match enc {
        Encoding::Json => Ok(v.to_string().into_bytes()),
        Encoding::Msgpack => rmp_serde::to_vec_named(&v).map_err(|e| e.to_string()),
    }
}

/// `--churn` edits and deletes of the heavy users' own messages, in
/// windows of `--churn-window` per connection, paced to `--churn-rate`.
fn churn(
    a: &ScaleArgs,
    shape: &Shape,
    data: &Data,
    server: &Server,
    heavy: &mut Heavy,
    r: &mut Report,
) -> Result<(), String> {
    let vocab = Vocab::new(shape.vocab, shape.zipf);
    let runs: u64 = fs::read_to_string(a.data_dir.join(CHURNS))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    r.add("churns_before", runs);
    let mut rng =
        (shape.seed ^ 0x6368_7572_6e21_2121).wrapping_add(runs.wrapping_mul(0x9e37_79b9)) | 1;
    let mut gone: HashSet<(u32, u32)> = HashSet::new();
    let mut h = histogram();
    let (mut edits, mut deletes, mut errors, mut not_found) = (0u64, 0u64, 0u64, 0u64);
    let mut text = Vec::new();
    let window = a.churn_window.max(1);
    let (cpu0, me0) = (cpu(server.pid()), sys::self_cpu_s());
    let t0 = Instant::now();
    let mut done = 0u64;
    let mut id = 1u64 << 32;
    let mut batch = 0usize;
    while done < a.churn {
        let due = t0 + Duration::from_secs_f64(done as f64 / a.churn_rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let hu = batch % shape.heavy;
        batch += 1;
        let own = &data.own[hu];
        if own.is_empty() {
            continue;
        }
        let n = window.min((a.churn - done) as usize);
        let conn = heavy.get(a, server.addr, hu)?;
        let mut pending: HashMap<u64, (Instant, bool)> = HashMap::new();
        for _ in 0..n {
            // A deleted message takes no more edits or deletes.
            let mut target = None;
            for _ in 0..16 {
                let t = own[(xorshift(&mut rng) % own.len() as u64) as usize];
                if !gone.contains(&t) {
                    target = Some(t);
                    break;
                }
            }
            let Some((rm, seq)) = target else { continue };
            let del = (xorshift(&mut rng) % 1000) < (a.delete_share * 1000.0) as u64;
            id += 1;
            let f = if del {
                gone.insert((rm, seq));
                delete_frame(conn.enc(), id, &room(rm as usize), u64::from(seq))?
            } else {
                vocab.sentence(&mut rng, shape.min_words, shape.max_words, &mut text);
                let mut f = Vec::new();
                wire::edit(conn.enc(), id, &room(rm as usize), u64::from(seq), &text, &mut f);
                f
            };
            conn.send(&f)?;
            pending.insert(id, (Instant::now(), del));
        }
        done += n as u64;
        let deadline = Instant::now() + REQUEST;
        while !pending.is_empty() {
            let v = conn.next(deadline)?;
            let Some((t, del)) = v["id"].as_u64().and_then(|i| pending.remove(&i)) else {
                continue;
            };
            h.saturating_record(t.elapsed().as_micros() as u64);
            if v["type"] == "ack" {
                if del {
                    deletes += 1;
                } else {
                    edits += 1;
                }
            } else if v["code"] == "not_found" && runs > 0 {
                not_found += 1;
            } else {
                errors += 1;
                if errors <= 3 {
                    eprintln!("chinwag-load: scale: churn answered {v}");
                }
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let (cpu1, me1) = (cpu(server.pid()), sys::self_cpu_s());
    fs::write(a.data_dir.join(CHURNS), (runs + 1).to_string()).map_err(|e| e.to_string())?;
    r.add("churn_not_found", not_found);
    r.add("churn_edits", edits);
    r.add("churn_deletes", deletes);
    r.add("churn_errors", errors);
    r.add_f("churn_s", secs);
    r.add_f("churn_per_s", (edits + deletes) as f64 / secs);
    latency(r, ["churn_ack_p50_us", "churn_ack_p99_us", "churn_ack_max_us"], &h);
    let names = ["churn_server_cpu_us", "churn_harness_cpu_us"];
    cpu_per_op(r, names, cpu1 - cpu0, me1 - me0, edits + deletes);
    Ok(())
}

/// `scale`: generate (or reuse) the data directory, then measure the
/// server on it.
pub fn scale(a: &ScaleArgs) -> Result<(), String> {
    let shape = Shape::of(a)?;
    if a.history_limit == 0 || a.history_limit > 100 || a.hello_connects == 0 {
        return Err("need --history-limit in 1..=100 and --hello-connects >= 1".into());
    }
    if a.churn > 0 && !(a.churn_rate.is_finite() && a.churn_rate > 0.0) {
        return Err("--churn-rate must be a positive number".into());
    }
    if !(0.0..=1.0).contains(&a.delete_share) {
        return Err("--delete-share must be between 0 and 1".into());
    }
    let dir = &a.data_dir;
    let mut r = Report::default();
    r.add("scenario", "scale");
    r.add("events", shape.events);
    r.add("rooms", shape.rooms);
    r.add("users", shape.users);
    r.add("heavy_users", shape.heavy);
    r.add("heavy_rooms", shape.heavy_rooms);
    r.add("rooms_per_user", shape.rooms_per_user);
    r.add("words_per_message", format!("{}..{}", shape.min_words, shape.max_words));
    r.add("search", if a.search { "on" } else { "off" });
    r.add("encoding", a.encoding.name());
    let data = prepare(&shape, dir, &mut r)?;
    r.add("memberships", data.memberships);
    r.add("read_markers", data.memberships);
    let (db, index) = sizes(dir)?;
    r.add("disk_bytes", db);
    r.add_f("disk_bytes_per_event", db as f64 / shape.events.max(1) as f64);
    r.add("index_bytes_at_start", index);
    if a.generate_only {
        print_report(&r, a.json);
        return Ok(());
    }
    let log = PathBuf::from(format!("{}.server.log", dir.display()));

    let tallies_before = tally_lines(&log);
    let (server, start_s) = start(a, dir, &log)?;
    r.add_f("start_to_first_accept_s", start_s);
    r.add("rss_after_start_kib", rss(server.pid()));
    r.add_f("server_cpu_start_s", cpu(server.pid()));
    // The `hello`s are timed on a server up long enough to have read its
    // unread tallies (until then it counts from sled, as it used to).
    let t = Instant::now();
    while tally_lines(&log) == tallies_before && t.elapsed() < a.start_timeout {
        std::thread::sleep(Duration::from_millis(100));
    }
    r.add_f("tallies_ready_s", start_s + t.elapsed().as_secs_f64());
    r.add("rss_after_tallies_kib", rss(server.pid()));
    hello(a, &shape, &server, &mut r)?;
    let mut heavy = Heavy { conns: (0..shape.heavy).map(|_| None).collect() };
    history(a, &shape, &data, &server, &mut heavy, &mut r)?;
    r.add("rss_after_reads_kib", rss(server.pid()));

    let (before, _) = sizes(dir)?;
    churn(a, &shape, &data, &server, &mut heavy, &mut r)?;
    let (after, _) = sizes(dir)?;
    r.add("rss_after_churn_kib", rss(server.pid()));
    r.add("churn_disk_before", before);
    r.add("churn_disk_after", after);
    let ops = a.churn.max(1) as f64;
    r.add("churn_disk_growth", after as i64 - before as i64);
    r.add_f("churn_growth_bytes_per_op", (after as f64 - before as f64) / ops);
    drop(heavy);
    server.stop()?;
    let (stopped, _) = sizes(dir)?;
    r.add("disk_after_stop", stopped);

    // What gives the space back. A backup copies the records into a fresh
    // database (`chinwag backup`, offline here): the size sled needs for
    // what is live.
    if a.backup {
        let copy = PathBuf::from(format!("{}.backup", dir.display()));
        let _ = fs::remove_dir_all(&copy);
        let t = Instant::now();
        let out = Command::new(server_bin(a)?)
            .arg("backup")
            .arg(&copy)
            .arg("--data-dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("chinwag backup: {e}"))?;
        if !out.status.success() {
            return Err(format!("chinwag backup failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        r.add_f("backup_s", t.elapsed().as_secs_f64());
        r.add("disk_backup_copy", sizes(&copy)?.0);
        let _ = fs::remove_dir_all(&copy);
    }
    // A restart: sled reads its log again and may drop what it no longer
    // needs; then the server idles for --reclaim-wait.
    let (server, restart_s) = start(a, dir, &log)?;
    r.add_f("restart_to_first_accept_s", restart_s);
    r.add("rss_after_restart_kib", rss(server.pid()));
    r.add("disk_after_restart", sizes(dir)?.0);
    std::thread::sleep(a.reclaim_wait);
    r.add_f("reclaim_wait_s", a.reclaim_wait.as_secs_f64());
    r.add("disk_after_wait", sizes(dir)?.0);
    let (db, index) = sizes(dir)?;
    r.add("index_bytes_at_end", index);
    r.add("disk_at_end", db);
    // A crash: killed, not stopped, so the next start also checks every
    // room's last event (`repair_tails`).
    drop(server);
    let (server, crash_s) = start(a, dir, &log)?;
    r.add_f("restart_after_kill_s", crash_s);
    server.stop()?;
    print_report(&r, a.json);
    Ok(())
}
