//! `chinwag-load`: the load harness for chinwag (loopback only, bounded runs).
//!
//! Owns: the command line (one subcommand per scenario, their flags and
//! defaults) and turning it into a checked run: loopback targets and
//! sources, open-files limit. The scenarios' runs and reports live in
//! `scenario` (`mixed` in `mixed`, `search` and `ingest` in `search`,
//! `scale` in `scale`), the
//! main thread's timeline in `run`, the client loops in `driver`.

mod conn;
mod driver;
mod mixed;
mod net;
mod plot;
mod run;
mod scale;
mod scenario;
mod search;
mod sio;
mod stats;
mod sys;
mod track;
mod vocab;
mod wire;
mod ws;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use wire::{Encoding, Proto};

/// Load harness for the chinwag chat server.
///
/// Start the server in open mode with a high per-connection rate limit, or
/// publishers get `rate_limited` (the harness refuses to start if the
/// server's advertised limit is below what one connection sends):
///
///   chinwag serve --listen 127.0.0.1:8080 --data-dir $(mktemp -d) --open
///   --rate 100000 --burst 100000 --max-conns-per-ip 1000000
///
/// (every connection comes from 127.0.0.1 unless `--source-count` spreads
/// them, and a node takes 1,000 per address by default).
///
/// Use a fresh data dir per run: membership is persistent (the harness
/// leaves stale rooms, but old history still sits in the rooms).
/// Every run is bounded: it stops by itself after setup, its steps and their
/// drains. Targets and sources must be loopback addresses.
#[derive(Parser)]
#[command(name = "chinwag-load", version, verbatim_doc_comment, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Publishers send at a fixed aggregate rate into rooms; every member
    /// receives every message. Measures delivery, loss, ordering, latency.
    Fanout(FanoutArgs),
    /// Fan-out at a rate doubled each step until p99 passes the limit, a
    /// message is lost, or delivery falls under 95% of the offered load;
    /// reports every step and the last good one, with server and harness CPU.
    Sweep(SweepArgs),
    /// Connect and join, then hold idle: connect rate and server memory per
    /// connection.
    Idle(IdleArgs),
    /// Connect/disconnect churn with resume: members drop and reconnect,
    /// then `join` with `since`; at the end every client must have seen
    /// every seq exactly once across its sessions.
    Storm(StormArgs),
    /// Publishers send while readers page through `history` (before/after):
    /// history requests/s and latency next to delivery.
    History(HistoryArgs),
    /// Pairs of users exchange `dm`s; each must reach both users'
    /// connections exactly once.
    Dm(DmArgs),
    /// Fan-out over several nodes of one cluster (--target A,B,..; nodes
    /// started with --redis): clients spread round-robin within each room,
    /// every message must reach every member on every node once, in order.
    Cluster(FanoutArgs),
    /// Fan-out where --mix of the sends are reactions (toggles on recent
    /// messages of the room), edits (of the publisher's own messages) and
    /// thread replies; every event must reach every member once. Reports
    /// CPU per delivery of any event (compare with --mix 0).
    Mixed(MixedArgs),
    /// Loads --messages messages of made-up words into --rooms rooms, waits
    /// for the search index to catch up, then times one- and two-word
    /// `search` queries of a user in (--member-of) those rooms; with
    /// --data-dir, the index's size per message.
    Search(SearchArgs),
    /// Messages of made-up words at a fixed rate: ack latency and server
    /// CPU per message, with the search index or without (a server started
    /// with CHINWAG_SEARCH=off), and how long until all of it is searchable.
    Ingest(IngestArgs),
    /// Storage at scale: writes a data dir of --events messages in --rooms
    /// rooms with --users users and their read markers (offline, through
    /// the server's own storage code), starts the server on it and measures
    /// disk bytes per event, time to the first accepted connection, RSS,
    /// `history` and `hello` latency, and disk growth over a churn of edits
    /// and deletes, with what gives the space back (a backup, a restart).
    Scale(ScaleArgs),
}

/// The dialect spoken to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ProtoArg {
    /// chinwag's protocol (PROTOCOL.md), in --encoding.
    Chinwag,
    /// Socket.IO v4 over WebSocket, as `peers/socketio` speaks it
    /// (fanout, sweep, idle and cluster only).
    Socketio,
}

#[derive(Args)]
struct Common {
    /// Server address(es), loopback only; see `cluster` for how clients
    /// are spread over several.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8080")]
    target: Vec<SocketAddr>,
    /// Number of WebSocket clients (one socket each).
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Number of rooms; client i joins room r<i % rooms>.
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Dialect.
    #[arg(long, value_enum, default_value_t = ProtoArg::Chinwag)]
    proto: ProtoArg,
    /// Wire encoding for chinwag (subprotocol chinwag.v1.json or chinwag.v1.msgpack).
    #[arg(long, value_enum, default_value_t = Encoding::Json)]
    encoding: Encoding,
    /// The server's name in plot titles (default: the dialect's, e.g.
    /// "chinwag (json)"; a peer speaking chinwag's dialect names itself).
    #[arg(long)]
    server_name: Option<String>,
    /// Harness event-loop threads (add some when one loop saturates a core).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Server process(es) to sample CPU time and RSS from (/proc/PID),
    /// summed; comma-separated for a cluster's nodes.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Print JSON lines (instead of a table) on stdout.
    #[arg(long)]
    json: bool,
    /// User ids are <prefix><i> (open mode: /ws?user=<prefix><i>).
    #[arg(long, default_value = "u")]
    user_prefix: String,
    /// Upgrades in flight at once (keeps the server's accept backlog sane).
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Give up if not every client has joined by then.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    setup_timeout: Duration,
    /// Loopback source addresses to bind client sockets to, round-robin
    /// (each gives ~28k ports towards one server port).
    #[arg(long, value_delimiter = ',', conflicts_with = "source_count")]
    sources: Vec<IpAddr>,
    /// Bind client sockets to 127.0.0.1 .. 127.0.0.N, round-robin.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..))]
    source_count: Option<u8>,
}

/// Flags of every scenario that publishes into rooms.
#[derive(Args)]
struct Traffic {
    /// Clients 0..publishers send (so they are spread over the rooms).
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    /// Message text size in bytes (starts with the send stamp `t=<ns>;`).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Publishing before the measured window (each step's, for sweep).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Receiving after the last send before counting what is lost.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    drain: Duration,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    traffic: Traffic,
    /// Aggregate messages per second over all publishers, evenly paced.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Measured window, after the warm-up (e.g. 10s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Draw latency percentiles against delivered rate into this SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Args)]
struct SweepArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    traffic: Traffic,
    /// Aggregate messages per second of the first step; doubled each step.
    #[arg(long, default_value_t = 200.0)]
    start_rate: f64,
    /// Most steps to run.
    #[arg(long, default_value_t = 8)]
    max_steps: usize,
    /// Measured window of each step.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    step_duration: Duration,
    /// A step whose delivery p99 is over this fails.
    #[arg(long, value_parser = parse_duration, default_value = "50ms")]
    p99_limit: Duration,
    /// Draw latency percentiles against delivered rate into this SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// How long to hold the joined connections idle.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    hold: Duration,
}

#[derive(Args)]
struct StormArgs {
    #[command(flatten)]
    common: Common,
    /// Clients 0..publishers send and stay connected; the others churn
    /// (default: one per room, so every room has traffic).
    #[arg(long)]
    publishers: Option<usize>,
    /// Aggregate messages per second over all publishers.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// How long the churn lasts (publishing runs as long).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// After the churn: everyone reconnects and catches up, then the count.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    drain: Duration,
    /// Shortest time a member stays connected before dropping.
    #[arg(long, value_parser = parse_duration, default_value = "200ms")]
    session_min: Duration,
    /// Longest time a member stays connected before dropping.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    session_max: Duration,
    /// Longest time a member stays away before reconnecting.
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    offline_max: Duration,
}

#[derive(Args)]
struct HistoryArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    traffic: Traffic,
    /// Aggregate messages per second over all publishers.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Measured window, after the warm-up.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Clients publishers..publishers+readers send `history` requests.
    #[arg(long, default_value_t = 10)]
    readers: usize,
    /// Aggregate `history` requests per second over all readers.
    #[arg(long, default_value_t = 200.0)]
    read_rate: f64,
    /// `limit` of each request (the server caps it at 100).
    #[arg(long, default_value_t = 50)]
    page: u64,
}

#[derive(Args)]
struct DmArgs {
    #[command(flatten)]
    common: Common,
    /// Aggregate `dm`s per second over all users (everyone sends).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Measured window, after the warm-up.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Sending before the measured window.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Receiving after the last send before counting what is lost.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    drain: Duration,
}

#[derive(Args)]
struct MixedArgs {
    #[command(flatten)]
    fanout: FanoutArgs,
    /// Fraction of the sends that are reactions, edits or replies.
    #[arg(long, default_value_t = 0.1)]
    mix: f64,
    /// Relative weight of reactions among those.
    #[arg(long, default_value_t = 2.0)]
    react_weight: f64,
    /// Relative weight of edits.
    #[arg(long, default_value_t = 1.0)]
    edit_weight: f64,
    /// Relative weight of replies.
    #[arg(long, default_value_t = 1.0)]
    reply_weight: f64,
}

/// The made-up text of the search benchmarks.
#[derive(Args)]
struct TextArgs {
    /// Words in the vocabulary.
    #[arg(long, default_value_t = 20_000)]
    vocab: usize,
    /// Zipf exponent: word of rank r drawn with weight 1/r^zipf.
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Fewest words in a message.
    #[arg(long, default_value_t = 4)]
    min_words: usize,
    /// Most words in a message.
    #[arg(long, default_value_t = 16)]
    max_words: usize,
}

#[derive(Args)]
struct SearchArgs {
    /// Server address, loopback only.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// Server process to sample CPU time (and RSS) from.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// The server's --data-dir: the size of DATA_DIR/search is reported.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Messages to load first (0: query what is there).
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Rooms r0..r<rooms>, one loader connection each.
    #[arg(long, default_value_t = 1000)]
    rooms: usize,
    /// Messages per second while loading (open loop, evenly paced).
    #[arg(long, default_value_t = 10_000.0)]
    load_rate: f64,
    /// Waiting for the last acks after the load.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    drain: Duration,
    /// The searcher is a member of rooms r0..r<member-of> (default: all).
    #[arg(long)]
    member_of: Option<usize>,
    /// Queries to time, one at a time, alternately one- and two-word.
    #[arg(long, default_value_t = 2000)]
    queries: usize,
    /// `limit` of each query (results per page).
    #[arg(long, default_value_t = 20)]
    limit: u64,
    /// Give up if the index has not caught up by then.
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    catchup_timeout: Duration,
    /// Seed of the query words.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    text: TextArgs,
    /// Wire encoding.
    #[arg(long, value_enum, default_value_t = Encoding::Json)]
    encoding: Encoding,
    /// Harness event-loop threads of the load.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Loaders are <prefix><i>, the searcher <prefix>searcher.
    #[arg(long, default_value = "s")]
    user_prefix: String,
    /// Give up if not every loader has joined by then.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    setup_timeout: Duration,
    /// Print one JSON line (instead of a table) on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct IngestArgs {
    /// Server address, loopback only.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// Server process to sample CPU time from.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Rooms, one publishing connection each.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Aggregate messages per second.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Sending before the measured window.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Measured window.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Waiting for the last acks after the window.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    drain: Duration,
    /// After the run, wait until every room's last message is searchable
    /// and count the server's CPU up to then (false: skip).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    index_wait: bool,
    /// Give up if the index has not caught up by then.
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    catchup_timeout: Duration,
    #[command(flatten)]
    text: TextArgs,
    /// Wire encoding.
    #[arg(long, value_enum, default_value_t = Encoding::Json)]
    encoding: Encoding,
    /// Harness event-loop threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Publishers are <prefix><i>, the checker <prefix>check.
    #[arg(long, default_value = "i")]
    user_prefix: String,
    /// Give up if not every publisher has joined by then.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    setup_timeout: Duration,
    /// Print one JSON line (instead of a table) on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ScaleArgs {
    /// The data directory: generated if it does not exist (or is empty),
    /// reused if this scenario generated it with the same shape. Never
    /// removed; the server's log goes to DIR.server.log, a backup copy to
    /// DIR.backup (removed once measured).
    #[arg(long)]
    data_dir: PathBuf,
    /// Messages to generate.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Rooms r0..r<rooms>.
    #[arg(long, default_value_t = 10_000)]
    rooms: usize,
    /// Users u0..u<users>, every one with a read marker in each of its rooms.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Users u0..u<heavy-users> are each in --heavy-rooms rooms (every
    /// heavy-users-th room); the harness reads, connects and edits as them.
    #[arg(long, default_value_t = 10)]
    heavy_users: usize,
    /// Rooms of each heavy user (the server's max_rooms_per_user is 1000).
    #[arg(long, default_value_t = 1000)]
    heavy_rooms: usize,
    /// Rooms of every other user.
    #[arg(long, default_value_t = 20)]
    rooms_per_user: usize,
    /// Seed of the whole shape: the same seed and counts, the same data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    text: TextArgs,
    /// Only write (or check) the data dir and report its size.
    #[arg(long)]
    generate_only: bool,
    /// The server binary (default: `chinwag` next to this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Pin the server to this core (taskset -c).
    #[arg(long)]
    server_core: Option<usize>,
    /// The server's --threads.
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// Run the server with its search index (false: CHINWAG_SEARCH=off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    search: bool,
    /// Give up if the server accepts no connection by then.
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    start_timeout: Duration,
    /// `history` requests to time, one at a time.
    #[arg(long, default_value_t = 2000)]
    history_requests: usize,
    /// `limit` of each `history` request.
    #[arg(long, default_value_t = 50)]
    history_limit: u64,
    /// Connects of heavy users to time (connect to `hello`).
    #[arg(long, default_value_t = 200)]
    hello_connects: usize,
    /// Edits and deletes of existing messages (0: no churn).
    #[arg(long, default_value_t = 100_000)]
    churn: u64,
    /// Churn operations per second at most.
    #[arg(long, default_value_t = 2000.0)]
    churn_rate: f64,
    /// Churn operations in flight on one connection.
    #[arg(long, default_value_t = 32)]
    churn_window: usize,
    /// Share of the churn that deletes (the rest edits).
    #[arg(long, default_value_t = 0.25)]
    delete_share: f64,
    /// Measure a `chinwag backup` copy of the data after the churn.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    backup: bool,
    /// After the churn and a restart, idle this long before the last size.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    reclaim_wait: Duration,
    /// Wire encoding.
    #[arg(long, value_enum, default_value_t = Encoding::Json)]
    encoding: Encoding,
    /// Print one JSON line (instead of a table) on stdout.
    #[arg(long)]
    json: bool,
}

/// `10s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration like 10s or 500ms"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" => n / 1e6,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit `{unit}` in `{s}` (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Fanout(a) => scenario::fanout(&a, false),
        Scenario::Cluster(a) => scenario::fanout(&a, true),
        Scenario::Sweep(a) => scenario::sweep(&a),
        Scenario::Idle(a) => scenario::idle(&a),
        Scenario::Storm(a) => scenario::storm(&a),
        Scenario::History(a) => scenario::history(&a),
        Scenario::Dm(a) => scenario::dm(&a),
        Scenario::Mixed(a) => mixed::mixed(&a),
        Scenario::Search(a) => search::search(&a),
        Scenario::Ingest(a) => search::ingest(&a),
        Scenario::Scale(a) => scale::scale(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chinwag-load: {e}");
            ExitCode::FAILURE
        }
    }
}

impl Common {
    /// The dialect asked for.
    fn proto(&self) -> Proto {
        match self.proto {
            ProtoArg::Chinwag => Proto::Chinwag(self.encoding),
            ProtoArg::Socketio => Proto::SocketIo,
        }
    }

    /// The server's name for plot titles.
    fn server_label(&self) -> String {
        self.server_name.clone().unwrap_or_else(|| self.proto().label())
    }

    /// The source addresses asked for (empty: the kernel's choice).
    fn sources(&self) -> Vec<IpAddr> {
        match self.source_count {
            Some(n) => net::loopback_sources(n),
            None => self.sources.clone(),
        }
    }

    /// Checks shared by every scenario; raises the open-files limit.
    fn check(&self) -> Result<(), String> {
        if let Some(bad) = self.target.iter().find(|a| !a.ip().is_loopback()) {
            return Err(format!("target {bad} is not a loopback address (loopback only)"));
        }
        if let Some(bad) = self.sources().iter().find(|a| !a.is_loopback()) {
            return Err(format!("source {bad} is not a loopback address (loopback only)"));
        }
        if self.target.is_empty() || self.conns == 0 || self.rooms == 0 || self.threads == 0 {
            return Err("--target, --conns, --rooms and --threads must be at least 1".into());
        }
        if self.connect_concurrency == 0 {
            return Err("--connect-concurrency must be at least 1".into());
        }
        let want = self.conns as u64 + 64;
        let limit = sys::raise_nofile(want)?;
        if want > limit {
            return Err(format!(
                "{} connections need more open files than the limit {limit} (raise the hard limit)",
                self.conns
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "chinwag-load",
            "fanout",
            "--target",
            "127.0.0.1:1,127.0.0.1:2",
            "--encoding",
            "msgpack",
            "--duration",
            "3s",
            "--source-count",
            "3",
        ])
        .unwrap();
        let Scenario::Fanout(a) = cli.scenario else { panic!("not fanout") };
        assert_eq!(a.common.target.len(), 2);
        assert_eq!(a.common.proto(), Proto::Chinwag(Encoding::Msgpack));
        assert_eq!(a.duration, Duration::from_secs(3));
        assert_eq!(a.common.sources().len(), 3);
        let cli = Cli::try_parse_from(["x", "sweep", "--p99-limit", "20ms", "--proto", "socketio"]);
        let Scenario::Sweep(a) = cli.unwrap().scenario else { panic!("not sweep") };
        assert_eq!(a.p99_limit, Duration::from_millis(20));
        assert_eq!(a.common.proto(), Proto::SocketIo);
        assert!(Cli::try_parse_from([
            "x",
            "idle",
            "--sources",
            "127.0.0.2",
            "--source-count",
            "2"
        ])
        .is_err());
        let cli = Cli::try_parse_from(["x", "idle", "--sources", "10.0.0.1"]).unwrap();
        let Scenario::Idle(a) = cli.scenario else { panic!("not idle") };
        assert!(a.common.check().unwrap_err().contains("loopback"));
    }
}
