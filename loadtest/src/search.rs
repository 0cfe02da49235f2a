//! The search benchmarks: `search` (query latency over a loaded server and
//! the index's size) and `ingest` (what the index costs the write path).
//!
//! Owns: loading rooms with messages of made-up Zipf words through the
//! ordinary driver (one loader connection per room, open-loop at a bounded
//! rate), the searcher (a user made a member of the rooms before the load,
//! offline while it runs, so the load is not also fanned out to it),
//! waiting until the index has caught up (a marker word sent to every room
//! last, searched for until every room's copy is found), timing one- and
//! two-word queries one at a time, and the index's size on disk.

use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::Value;

use crate::conn::Conn;
use crate::driver::{Plan, StepSpec, Words};
use crate::run::{self, Opts, StepResult};
use crate::scenario::print_report;
use crate::stats::{q, Report};
use crate::vocab::Vocab;
use crate::wire::{self, Encoding, Proto};
use crate::{sys, IngestArgs, SearchArgs, TextArgs};

/// Deadline of one request of the searcher (a join, a send, a query).
const REQUEST: Duration = Duration::from_secs(30);
/// Results per page while counting the marker's copies.
const MARKER_PAGE: u64 = 50;
/// Pause between two catch-up checks.
const POLL: Duration = Duration::from_millis(200);
/// Report names of the one-word and the two-word query rows: count,
/// latency p50/p90/p99/max, mean results per query, queries with more than
/// a page, queries with none, queries refused.
const ROWS: [[&str; 9]; 2] = [
    [
        "one_word_queries",
        "one_word_p50_us",
        "one_word_p90_us",
        "one_word_p99_us",
        "one_word_max_us",
        "one_word_mean_results",
        "one_word_more_pages",
        "one_word_empty",
        "one_word_errors",
    ],
    [
        "two_word_queries",
        "two_word_p50_us",
        "two_word_p90_us",
        "two_word_p99_us",
        "two_word_max_us",
        "two_word_mean_results",
        "two_word_more_pages",
        "two_word_empty",
        "two_word_errors",
    ],
];

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

fn room(k: usize) -> String {
    format!("r{k}")
}

/// The loaders: one connection per room, all publishing words.
fn load_plan(
    target: std::net::SocketAddr,
    enc: Encoding,
    rooms: usize,
    threads: usize,
    prefix: &str,
    rate: f64,
    text: &TextArgs,
) -> Plan {
    Plan {
        targets: vec![target],
        sources: Vec::new(),
        conns: rooms,
        rooms,
        proto: Proto::Chinwag(enc),
        threads: threads.clamp(1, rooms),
        user_prefix: prefix.to_string(),
        connect_concurrency: 256,
        publishers: rooms,
        readers: 0,
        page: 50,
        size: 1,
        dm: false,
        churn: None,
        conn_rate: rate / rooms as f64,
        mix: None,
        words: Some(std::sync::Arc::new(Words {
            vocab: text.vocab(),
            min: text.min_words,
            max: text.max_words,
        })),
    }
}

impl TextArgs {
    fn vocab(&self) -> Vocab {
        Vocab::new(self.vocab, self.zipf)
    }

    fn check(&self) -> Result<(), String> {
        if self.vocab == 0 || self.min_words == 0 || self.min_words > self.max_words {
            return Err("need --vocab >= 1 and 1 <= --min-words <= --max-words".into());
        }
        if !(self.zipf.is_finite() && self.zipf >= 0.0) {
            return Err("--zipf must be a number >= 0".into());
        }
        Ok(())
    }
}

/// Makes `conn`'s user a member of `rooms` (joins pipelined, then every
/// `joined` awaited); returns the sum of the rooms' seqs: the events stored
/// in them.
fn join_all(conn: &mut Conn, rooms: &[String]) -> Result<u64, String> {
    let enc = conn.enc();
    for r in rooms {
        let mut f = Vec::new();
        wire::join(enc, r, None, &mut f);
        conn.send(&f)?;
    }
    let deadline = Instant::now() + REQUEST + Duration::from_millis(10 * rooms.len() as u64);
    let (mut left, mut events) = (rooms.len(), 0);
    while left > 0 {
        let v = conn.next(deadline)?;
        match v["type"].as_str() {
            Some("joined") => {
                left -= 1;
                events += v["seq"].as_u64().unwrap_or(0);
            }
            Some("error") => return Err(format!("join refused: {v}")),
            _ => {}
        }
    }
    Ok(events)
}

/// Sends `text` into every room and waits for every ack.
fn send_all(conn: &mut Conn, rooms: &[String], text: &str) -> Result<(), String> {
    let enc = conn.enc();
    for (k, r) in rooms.iter().enumerate() {
        let mut f = Vec::new();
        wire::send(enc, k as u64 + 1, r, text.as_bytes(), &mut f);
        conn.send(&f)?;
    }
    let deadline = Instant::now() + REQUEST + Duration::from_millis(10 * rooms.len() as u64);
    let mut left = rooms.len();
    while left > 0 {
        let v = conn.next(deadline)?;
        match v["type"].as_str() {
            Some("ack") => left -= 1,
            Some("error") => return Err(format!("marker send refused: {v}")),
            _ => {}
        }
    }
    Ok(())
}

/// One `search` (in one room, or all the user's) and its answer, with the
/// time to it in µs.
fn query(
    conn: &mut Conn,
    id: u64,
    text: &str,
    scope: (Option<&str>, Option<&str>),
    limit: u64,
) -> Result<(Value, u64), String> {
    let mut f = Vec::new();
    wire::search(conn.enc(), id, text, scope, limit, &mut f);
    let t = Instant::now();
    conn.send(&f)?;
    let v = conn.answer(id, Instant::now() + REQUEST)?;
    Ok((v, t.elapsed().as_micros() as u64))
}

/// How the index caught up with the load.
struct CatchUp {
    /// Seconds from the markers' acks to every marker found; `None`: the
    /// server has no index (`unavailable`).
    seconds: Option<f64>,
    /// Searches made while waiting.
    polls: u64,
    /// Something odd on the way (the paging shortfall below), for the report.
    note: Option<String>,
}

/// A search over all the user's rooms that finds no more markers for this
/// long is checked room by room.
const STALL: Duration = Duration::from_secs(15);

/// Sends a marker word to every room of `rooms` (last, after the load) and
/// searches for it until all of its copies show: each room's index is then
/// complete up to the end of the load. If paging through the results over
/// all rooms stops short while a search in each room finds its marker, the
/// index has caught up and the shortfall is the paging's: noted, not waited on.
fn catch_up(conn: &mut Conn, rooms: &[String], timeout: Duration) -> Result<CatchUp, String> {
    // Letters and digits only (one word); c and y never occur in the
    // vocabulary, so no loaded word can match it.
    let marker = format!("cy{}", std::process::id() as u64 * 1_000_003 + now_ns() % 1_000_003);
    send_all(conn, rooms, &format!("marker {marker}"))?;
    let start = Instant::now();
    let mut polls = 0;
    let mut id = 1u64 << 40;
    let mut next_note = Duration::from_secs(5);
    let (mut best, mut best_at) = (0usize, Instant::now());
    loop {
        let mut found = 0usize;
        let mut pages = 0u64;
        let mut cursor: Option<String> = None;
        loop {
            id += 1;
            polls += 1;
            pages += 1;
            let (v, _) = query(conn, id, &marker, (None, cursor.as_deref()), MARKER_PAGE)?;
            if v["type"] == "error" {
                if v["code"] == "unavailable" {
                    return Ok(CatchUp { seconds: None, polls, note: None });
                }
                return Err(format!("search refused: {v}"));
            }
            found += v["messages"].as_array().map_or(0, Vec::len);
            match v["cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let elapsed = start.elapsed();
        if found >= rooms.len() {
            return Ok(CatchUp { seconds: Some(elapsed.as_secs_f64()), polls, note: None });
        }
        if found > best {
            (best, best_at) = (found, Instant::now());
        }
        if elapsed >= next_note {
            // A stall shows while it lasts, not only at the timeout.
            eprintln!(
                "chinwag-load: catch-up: {found} of {} markers found over all rooms \
                 ({pages} pages) after {:.0} s",
                rooms.len(),
                elapsed.as_secs_f64()
            );
            next_note += Duration::from_secs(5);
        }
        if best_at.elapsed() >= STALL || elapsed > timeout {
            let missing = missing_rooms(conn, rooms, &marker, &mut id)?;
            polls += rooms.len() as u64;
            if missing.is_empty() {
                let note = format!(
                    "paging over all rooms ({pages} pages of {MARKER_PAGE}) returned {found} of \
                     {} markers, a search in each room found its marker",
                    rooms.len()
                );
                eprintln!("chinwag-load: catch-up: {note}");
                let seconds = Some(start.elapsed().as_secs_f64());
                return Ok(CatchUp { seconds, polls, note: Some(note) });
            }
            eprintln!(
                "chinwag-load: catch-up: rooms still without their marker: {} (e.g. {:?})",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
            best_at = Instant::now();
        }
        if elapsed > timeout {
            return Err(format!(
                "the index did not catch up within {timeout:?}: {found} of {} markers found",
                rooms.len()
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// The rooms where a search in that room alone does not find `marker`.
fn missing_rooms(
    conn: &mut Conn,
    rooms: &[String],
    marker: &str,
    id: &mut u64,
) -> Result<Vec<String>, String> {
    let mut missing = Vec::new();
    for r in rooms {
        *id += 1;
        let (v, _) = query(conn, *id, marker, (Some(r), None), 1)?;
        if v["messages"].as_array().is_none_or(Vec::is_empty) {
            missing.push(r.clone());
        }
    }
    Ok(missing)
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Bytes allocated on disk under `path` (what `du` counts), and files.
pub fn disk_usage(path: &Path) -> Result<u64, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
            // A file tantivy removes while we walk is simply not counted.
            total += disk_usage(&entry.path()).unwrap_or(0);
        }
    }
    Ok(total)
}

/// Server CPU seconds now (summed over the pids), if they can be read.
fn server_cpu(pids: &[u32]) -> Option<f64> {
    run::snapshot(pids).server_cpu
}

/// Runs the load step; returns it.
fn load(plan: &Plan, opts: &Opts, spec: StepSpec) -> Result<StepResult, String> {
    sys::raise_nofile(plan.conns as u64 + 64)?;
    let mut run = run::execute(plan, opts, &mut |done| done.is_empty().then_some(spec))?;
    run.steps.pop().ok_or_else(|| "the load ended before its step".into())
}

/// `search`: load, catch up, query.
pub fn search(a: &SearchArgs) -> Result<(), String> {
    if !a.target.ip().is_loopback() {
        return Err(format!("target {} is not a loopback address (loopback only)", a.target));
    }
    a.text.check()?;
    if a.rooms == 0 || a.queries == 0 || !(1..=50).contains(&a.limit) {
        return Err("need --rooms >= 1, --queries >= 1 and --limit in 1..=50".into());
    }
    let member_of = a.member_of.unwrap_or(a.rooms);
    if member_of == 0 || member_of > a.rooms {
        return Err("--member-of must be between 1 and --rooms".into());
    }
    if a.messages > 0 && !(a.load_rate.is_finite() && a.load_rate > 0.0) {
        return Err("--load-rate must be a positive number".into());
    }
    let enc = a.encoding;
    let searcher = format!("{}searcher", a.user_prefix);
    let rooms: Vec<String> = (0..member_of).map(room).collect();
    // Member first, offline during the load: the load is not fanned out to it.
    let (mut conn, _) = Conn::open(a.target, &searcher, enc, REQUEST)?;
    join_all(&mut conn, &rooms)?;
    drop(conn);

    let mut r = Report::default();
    r.add("scenario", "search");
    r.add("target", a.target.to_string());
    r.add("encoding", enc.name());
    r.add("rooms", a.rooms);
    r.add("member_of", member_of);
    r.add("vocab", a.text.vocab);
    r.add_f("zipf", a.text.zipf);
    r.add("words_per_message", format!("{}..{}", a.text.min_words, a.text.max_words));
    let opts = Opts { server_pids: a.server_pid.clone(), setup_timeout: a.setup_timeout };
    let loaded = if a.messages > 0 {
        let plan =
            load_plan(a.target, enc, a.rooms, a.threads, &a.user_prefix, a.load_rate, &a.text);
        let secs = a.messages as f64 / a.load_rate;
        let spec = StepSpec {
            rate: a.load_rate,
            read_rate: 0.0,
            warmup: Duration::ZERO,
            duration: Duration::from_secs_f64(secs),
            drain: a.drain,
        };
        let res = load(&plan, &opts, spec)?;
        let s = &res.stats;
        r.add_f("load_rate", a.load_rate);
        r.add_f("load_s", secs);
        // The whole step: the window is the load, but a send due just
        // before its end may leave just after.
        r.add("load_sent", s.sent_step);
        r.add("load_acked", s.acked_step);
        r.add("load_errors", serde_json::json!(s.errors));
        r.add("load_ack_p50_us", q(&s.ack_latency, 0.5));
        r.add("load_ack_p99_us", q(&s.ack_latency, 0.99));
        r.add("load_send_lag_p99_us", q(&s.send_lag, 0.99));
        match res.server_cpu_s() {
            Some(cpu) if s.acked_step > 0 => {
                r.add_f("load_server_cpu_us_per_msg", cpu * 1e6 / s.acked_step as f64)
            }
            _ => r.add("load_server_cpu_us_per_msg", Value::Null),
        }
        r.add_f("load_harness_cpu_s", res.harness_cpu_s());
        s.acked_step
    } else {
        0
    };
    r.add("loaded", loaded);

    let (mut conn, _) = Conn::open(a.target, &searcher, enc, REQUEST)?;
    let caught = catch_up(&mut conn, &rooms, a.catchup_timeout)?;
    let Some(catchup_s) = caught.seconds else {
        return Err("the server has no search index (search answers `unavailable`)".into());
    };
    r.add_f("catchup_s", catchup_s);
    r.add("catchup_polls", caught.polls);
    r.add("catchup_note", caught.note);
    // What the searcher's rooms hold now: every event's seq, markers included.
    let (c2, hello) = Conn::open(a.target, &searcher, enc, REQUEST)?;
    drop(c2);
    let in_rooms: u64 =
        hello["rooms"].as_array().into_iter().flatten().filter_map(|x| x["seq"].as_u64()).sum();
    r.add("messages_in_rooms", in_rooms);

    let vocab = a.text.vocab();
    let mut seed = a.seed | 1;
    let (mut lat, mut results, mut full, mut empty, mut errors) =
        ([histogram(), histogram()], [0u64; 2], [0u64; 2], [0u64; 2], [0u64; 2]);
    let cpu0 = server_cpu(&a.server_pid);
    let started = Instant::now();
    for k in 0..a.queries {
        let two = k % 2 == 1;
        let mut text = vocab.word(vocab.query_rank(&mut seed)).to_string();
        if two {
            text.push(' ');
            text.push_str(vocab.word(vocab.query_rank(&mut seed)));
        }
        let (v, us) = query(&mut conn, k as u64 + 1, &text, (None, None), a.limit)?;
        let i = usize::from(two);
        if v["type"] != "search_results" {
            errors[i] += 1;
            if errors[0] + errors[1] <= 3 {
                eprintln!("chinwag-load: search {text:?} answered {v}");
            }
            continue;
        }
        lat[i].saturating_record(us);
        let n = v["messages"].as_array().map_or(0, Vec::len) as u64;
        results[i] += n;
        if n == 0 {
            empty[i] += 1;
        }
        if v["cursor"].is_string() {
            full[i] += 1;
        }
    }
    let query_s = started.elapsed().as_secs_f64();
    let cpu1 = server_cpu(&a.server_pid);
    r.add("queries", a.queries);
    r.add("limit", a.limit);
    r.add_f("queries_per_s", a.queries as f64 / query_s);
    for (i, names) in ROWS.iter().enumerate() {
        let n = lat[i].len().max(1) as f64;
        r.add(names[0], lat[i].len());
        r.add(names[1], q(&lat[i], 0.5));
        r.add(names[2], q(&lat[i], 0.9));
        r.add(names[3], q(&lat[i], 0.99));
        r.add(names[4], lat[i].max());
        r.add_f(names[5], results[i] as f64 / n);
        r.add(names[6], full[i]);
        r.add(names[7], empty[i]);
        r.add(names[8], errors[i]);
    }
    match (cpu0, cpu1) {
        (Some(x), Some(y)) => r.add_f("server_cpu_us_per_query", (y - x) * 1e6 / a.queries as f64),
        _ => r.add("server_cpu_us_per_query", Value::Null),
    }
    if let Some(&pid) = a.server_pid.first() {
        r.add("server_rss_kib", sys::proc_rss_kib(pid).ok());
    }
    match &a.data_dir {
        Some(dir) => {
            let index = disk_usage(&dir.join("search"))?;
            let all = disk_usage(dir)?;
            r.add("index_bytes", index);
            r.add("data_dir_bytes", all);
            let per = if in_rooms > 0 { index as f64 / in_rooms as f64 } else { 0.0 };
            r.add_f("index_bytes_per_message", per);
            let rest = all.saturating_sub(index) as f64;
            r.add_f(
                "storage_bytes_per_message",
                if in_rooms > 0 { rest / in_rooms as f64 } else { 0.0 },
            );
        }
        None => r.add("index_bytes", Value::Null),
    }
    print_report(&r, a.json);
    Ok(())
}

/// `ingest`: words at a fixed rate; ack latency and server CPU per message,
/// and (with an index) how long until it is all searchable.
pub fn ingest(a: &IngestArgs) -> Result<(), String> {
    if !a.target.ip().is_loopback() {
        return Err(format!("target {} is not a loopback address (loopback only)", a.target));
    }
    a.text.check()?;
    if a.rooms == 0 || !(a.rate.is_finite() && a.rate > 0.0) || a.duration.is_zero() {
        return Err("need --rooms >= 1, a positive --rate and --duration".into());
    }
    let plan = load_plan(a.target, a.encoding, a.rooms, a.threads, &a.user_prefix, a.rate, &a.text);
    let opts = Opts { server_pids: a.server_pid.clone(), setup_timeout: a.setup_timeout };
    let spec = StepSpec {
        rate: a.rate,
        read_rate: 0.0,
        warmup: a.warmup,
        duration: a.duration,
        drain: a.drain,
    };
    let res = load(&plan, &opts, spec)?;
    let s = &res.stats;
    let w = res.window_s();
    let mut r = Report::default();
    r.add("scenario", "ingest");
    r.add("target", a.target.to_string());
    r.add("encoding", a.encoding.name());
    r.add("conns", a.rooms);
    r.add("rooms", a.rooms);
    r.add_f("rate", a.rate);
    r.add("vocab", a.text.vocab);
    r.add("words_per_message", format!("{}..{}", a.text.min_words, a.text.max_words));
    r.add_f("warmup_s", a.warmup.as_secs_f64());
    r.add_f("duration_s", w);
    r.add("sent", s.sent);
    r.add("acked", s.acked);
    r.add("unacked", s.sent as i64 - s.acked as i64 - s.refused as i64);
    r.add("errors", serde_json::json!(s.errors));
    r.add_f("acked_per_s", s.acked as f64 / w);
    // No ack of a window send at all (an overloaded server): no latency,
    // rather than a 0 that reads as fast.
    let ack = |x: f64| (s.acked > 0).then(|| q(&s.ack_latency, x));
    r.add("ack_p50_us", ack(0.5));
    r.add("ack_p90_us", ack(0.9));
    r.add("ack_p99_us", ack(0.99));
    r.add("ack_max_us", (s.acked > 0).then(|| s.ack_latency.max()));
    r.add("send_lag_p99_us", q(&s.send_lag, 0.99));
    let cpu = res.server_cpu_s();
    match cpu {
        Some(cpu) => {
            r.add_f("server_cpu_pct", 100.0 * cpu / w);
            let per = if s.sent > 0 { cpu * 1e6 / s.sent as f64 } else { 0.0 };
            r.add_f("server_cpu_us_per_msg", per);
        }
        None => {
            r.add("server_cpu_pct", Value::Null);
            r.add("server_cpu_us_per_msg", Value::Null);
        }
    }
    crate::scenario::wait_rows(&mut r, &res, "server_runqueue_wait_us_per_msg", s.sent);
    let harness = res.harness_cpu_s();
    r.add_f("harness_cpu_pct", 100.0 * harness / w);
    r.add_f("harness_cpu_us_per_msg", if s.sent > 0 { harness * 1e6 / s.sent as f64 } else { 0.0 });
    // Indexing runs behind the acks: its cost is counted until the index
    // has caught up (or, without one, until the same checks are done).
    if a.index_wait {
        let rooms: Vec<String> = (0..a.rooms).map(room).collect();
        let (mut conn, _) =
            Conn::open(a.target, &format!("{}check", a.user_prefix), a.encoding, REQUEST)?;
        // Sends still queued when the run closed its connections are
        // dropped by the server: count what was stored.
        let stored = join_all(&mut conn, &rooms)?;
        r.add("stored", stored);
        let caught = catch_up(&mut conn, &rooms, a.catchup_timeout)?;
        r.add("search", if caught.seconds.is_some() { "on" } else { "off" });
        match caught.seconds {
            Some(x) => r.add_f("index_catchup_s", x),
            None => r.add("index_catchup_s", Value::Null),
        }
        r.add("catchup_note", caught.note);
        let total = match (server_cpu(&a.server_pid), res.start.server_cpu) {
            (Some(now), Some(start)) if stored > 0 => Some((now - start) * 1e6 / stored as f64),
            _ => None,
        };
        r.add("sent_step", s.sent_step);
        match total {
            Some(x) => r.add_f("server_cpu_us_per_stored_to_indexed", x),
            None => r.add("server_cpu_us_per_stored_to_indexed", Value::Null),
        }
    }
    print_report(&r, a.json);
    Ok(())
}
