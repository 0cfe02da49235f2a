//! Prometheus metrics (prometheus-client) and the `/metrics` text.
//!
//! The hot path takes no lock and touches no shared cache line per message:
//! each reactor counts into its own [`LocalCounts`] and folds them into the
//! shared counters once per turn ([`Metrics::absorb`]). Takes numbers, never
//! the node: whoever renders passes the gauges it reads.
//!
//! `/metrics` is the classic Prometheus text format (version 0.0.4), the
//! content type Prometheus and most scrapers expect: prometheus-client
//! writes OpenMetrics, whose counters are announced without their `_total`
//! suffix, so a 0.0.4 parser would lose their type and help
//! (prometheus/client_rust#194). [`classic`] renames them and drops the
//! OpenMetrics-only lines. Process series (`process_*`, from `/proc/self`)
//! follow the names every Prometheus client uses.

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter, family::Family, gauge::Gauge, histogram::exponential_buckets,
        histogram::Histogram,
    },
    registry::Registry,
};

/// The Content-Type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label of refusals.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why (the error code the client got).
    pub reason: &'static str,
}

/// Label of build information.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    /// The package version.
    pub version: &'static str,
}

/// Labels of HTTP requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabel {
    /// The route, with its variable parts named (`/api/rooms/{room}/join`).
    pub route: &'static str,
    /// The response's status code.
    pub status: u16,
}

/// Label of flushes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlusherLabel {
    /// Who ran the flush: `writer` (the thread whose writes it made
    /// durable: an event loop, or the cluster subscriber) or `commit`
    /// (the commit thread).
    pub by: &'static str,
}

/// Who ran a flush (the `by` label of `chinwag_storage_flushes_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flusher {
    /// The thread whose writes it made durable.
    Writer,
    /// The commit thread.
    Commit,
}

/// Labels of WebSocket closes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabel {
    /// The close code (1005: the peer's close frame had none; 1006: no
    /// close frame at all, the connection just ended).
    pub code: u16,
    /// Who closed: `server`, `client`, or `none` (the connection dropped).
    pub by: &'static str,
}

/// The routes counted by `chinwag_http_requests_total`, a fixed list so
/// that no request can add a series. Index 0 is everything else.
pub const ROUTES: [&str; 16] = [
    "other",
    "/",
    "/app.js",
    "/app.css",
    "/health",
    "/metrics",
    "/ws",
    "/api/rooms",
    "/api/rooms/{room}/join",
    "/api/rooms/{room}/messages",
    "/api/rooms/{room}/messages/{seq}",
    "/api/notify",
    "/api/revoke",
    "/api/search",
    "/chinwag.js",
    "/msgpack.js",
];

/// The index in [`ROUTES`] of a request target (path and query).
pub fn route_index(target: &str) -> u8 {
    let path = target.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let name = match parts.as_slice() {
        ["api", "rooms", _, "join"] => "/api/rooms/{room}/join",
        ["api", "rooms", _, "messages"] => "/api/rooms/{room}/messages",
        ["api", "rooms", _, "messages", _] => "/api/rooms/{room}/messages/{seq}",
        _ => path,
    };
    ROUTES.iter().position(|r| *r == name).unwrap_or(0) as u8
}

/// Label of per-loop series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoopLabel {
    /// Reactor index.
    pub r#loop: String,
}

/// One reactor's counts since its last turn.
#[derive(Debug, Default)]
pub struct LocalCounts {
    /// Client frames read.
    pub frames_in: u64,
    /// Frames queued for clients.
    pub frames_out: u64,
    /// Messages accepted (sent or DM).
    pub messages: u64,
    /// Messages queued for a member.
    pub deliveries: u64,
    /// Connections closed with 1013.
    pub slow_closes: u64,
    /// Frames refused by the rate limit.
    pub rate_limited: u64,
    /// HTTP responses: route index ([`ROUTES`]) and status.
    pub http: Vec<(u8, u16)>,
    /// WebSockets opened.
    pub ws_opens: u64,
    /// WebSockets closed: code and who closed.
    pub ws_closes: Vec<(u16, &'static str)>,
    /// Refusals by reason, besides the rate-limited frames.
    pub refusals: Vec<&'static str>,
}

/// The node's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Gauge,
    by_loop: Family<LoopLabel, Gauge>,
    frames_in: Counter,
    frames_out: Counter,
    messages: Counter,
    deliveries: Counter,
    slow_closes: Counter,
    rate_limited: Counter,
    /// Storage flush latency, seconds.
    flush_seconds: Histogram,
    /// Requests served per flush.
    flush_batch: Histogram,
    /// Flushes by who ran them: the family, and its two series made once
    /// (a flush bumps one without the family's lock and lookup).
    flushes: Family<FlusherLabel, Counter>,
    flushes_by_writer: Counter,
    flushes_by_commit: Counter,
    /// Accept-to-ack latency (queue to the commit thread until durable), seconds.
    ack_seconds: Histogram,
    redis_up: Gauge,
    cluster_rejected: Counter,
    refusals: Family<ReasonLabel, Counter>,
    build: Family<BuildLabel, Gauge>,
    http: Family<HttpLabel, Counter>,
    ws_opens: Counter,
    ws_closes: Family<CloseLabel, Counter>,
    storage_up: Gauge,
    heap_trims: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("chinwag");
        let flushes = Family::<FlusherLabel, Counter>::default();
        let by = |by| flushes.get_or_create(&FlusherLabel { by }).clone();
        let (flushes_by_writer, flushes_by_commit) = (by("writer"), by("commit"));
        let m = Metrics {
            connections: Gauge::default(),
            by_loop: Family::default(),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            messages: Counter::default(),
            deliveries: Counter::default(),
            slow_closes: Counter::default(),
            rate_limited: Counter::default(),
            flush_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            flush_batch: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            flushes,
            flushes_by_writer,
            flushes_by_commit,
            ack_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            redis_up: Gauge::default(),
            cluster_rejected: Counter::default(),
            refusals: Family::default(),
            build: Family::default(),
            http: Family::default(),
            ws_opens: Counter::default(),
            ws_closes: Family::default(),
            storage_up: Gauge::default(),
            heap_trims: Counter::default(),
            registry: Registry::default(),
        };
        // One line per metric: name, help, the metric (registered as a clone).
        macro_rules! register {
            ($($name:literal, $help:literal, $metric:expr;)*) => {
                $(registry.register($name, $help, $metric.clone());)*
            };
        }
        register! {
            "connections", "Live WebSocket connections", m.connections;
            "loop_connections", "Live WebSocket connections by event loop", m.by_loop;
            "frames_in", "Client frames received", m.frames_in;
            "frames_out", "Frames queued for clients", m.frames_out;
            "messages", "Messages accepted", m.messages;
            "deliveries", "Messages queued for a member connection", m.deliveries;
            "slow_consumer_closes", "Connections closed with 1013", m.slow_closes;
            "rate_limited", "Frames refused by the rate limit", m.rate_limited;
            "storage_flush_seconds", "Storage flush (fsync) latency", m.flush_seconds;
            "storage_flush_batch", "Writes made durable per flush", m.flush_batch;
            "storage_flushes", "Storage flushes, by who ran them: writer (an event loop or the \
                cluster subscriber, for its own writes) or commit (the commit thread)", m.flushes;
            "ack_latency_seconds", "From accepting a write to its durable answer", m.ack_seconds;
            "redis_up", "1 when the Redis link is up, 0 when down or off", m.redis_up;
            "cluster_payloads_rejected", "Cluster payloads dropped: unverified, replayed, nonsense",
                m.cluster_rejected;
            "refusals", "Connections, requests and frames refused, by reason", m.refusals;
            "build_info", "The running version (always 1)", m.build;
            "http_requests", "HTTP responses by route and status", m.http;
            "ws_opens", "WebSockets opened", m.ws_opens;
            "ws_closes", "WebSockets closed, by close code and who closed", m.ws_closes;
            "storage_up", "1 while storage takes writes, 0 while it refuses them", m.storage_up;
            "heap_trims", "Quiet seconds that gave the free heap back to the system", m.heap_trims;
        }
        m.build.get_or_create(&BuildLabel { version: env!("CARGO_PKG_VERSION") }).set(1);
        std::sync::LazyLock::force(&process::FIRST_RUN);
        Metrics { registry, ..m }
    }

    /// Folds a reactor's counts into the shared counters and zeroes them.
    /// Called every busy turn: atomics only.
    pub fn absorb(&self, c: &mut LocalCounts) {
        self.frames_in.inc_by(c.frames_in);
        self.frames_out.inc_by(c.frames_out);
        self.messages.inc_by(c.messages);
        self.deliveries.inc_by(c.deliveries);
        self.slow_closes.inc_by(c.slow_closes);
        self.rate_limited.inc_by(c.rate_limited);
        if c.rate_limited > 0 {
            self.refusals
                .get_or_create(&ReasonLabel { reason: "rate_limited" })
                .inc_by(c.rate_limited);
        }
        self.ws_opens.inc_by(c.ws_opens);
        // The lists keep their capacity: no allocation per turn.
        for (route, status) in c.http.drain(..) {
            let route = ROUTES[route as usize % ROUTES.len()];
            self.http.get_or_create(&HttpLabel { route, status }).inc();
        }
        for (code, by) in c.ws_closes.drain(..) {
            self.ws_closes.get_or_create(&CloseLabel { code, by }).inc();
        }
        for reason in c.refusals.drain(..) {
            self.refuse(reason);
        }
        c.frames_in = 0;
        c.frames_out = 0;
        c.messages = 0;
        c.deliveries = 0;
        c.slow_closes = 0;
        c.rate_limited = 0;
        c.ws_opens = 0;
    }

    /// Sets a reactor's connection gauge (on open, close and the 1 s sweep:
    /// it builds a label, so never per message).
    pub fn loop_connections(&self, reactor: u16, conns: usize) {
        self.by_loop.get_or_create(&LoopLabel { r#loop: reactor.to_string() }).set(conns as i64);
    }

    /// A connection or request was refused by a limit (`reason`: its error code).
    pub fn refuse(&self, reason: &'static str) {
        self.refusals.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// A cluster payload was dropped.
    pub fn reject_cluster_payload(&self) {
        self.cluster_rejected.inc();
    }

    /// One flush: how long it took, how many requests it served, and who
    /// ran it.
    pub fn observe_flush(&self, seconds: f64, batch: usize, by: Flusher) {
        self.flush_seconds.observe(seconds);
        self.flush_batch.observe(batch as f64);
        match by {
            Flusher::Writer => self.flushes_by_writer.inc(),
            Flusher::Commit => self.flushes_by_commit.inc(),
        };
    }

    /// The heap was trimmed (`crate::trim`).
    pub fn heap_trimmed(&self) {
        self.heap_trims.inc();
    }

    /// One durable answer, from accepting the write.
    pub fn observe_ack(&self, seconds: f64) {
        self.ack_seconds.observe(seconds);
    }

    /// Storage's state, set by whoever renders (it reads the node).
    pub fn set_storage_up(&self, up: bool) {
        self.storage_up.set(up as i64);
    }

    /// The text exposition, with the live connection count and the Redis link state.
    pub fn render(&self, connections: usize, redis_up: bool) -> String {
        self.connections.set(connections as i64);
        self.redis_up.set(redis_up as i64);
        let mut open_metrics = String::new();
        if encode(&mut open_metrics, &self.registry).is_err() {
            open_metrics.clear();
        }
        let mut out = classic(&open_metrics);
        process::render(&mut out);
        out
    }
}

/// OpenMetrics text → classic Prometheus text: a counter's `# HELP` and
/// `# TYPE` carry the `_total` its samples have, `# UNIT` and `# EOF` go.
pub fn classic(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 512);
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The `process_*` series, read from `/proc/self` at each scrape.
mod process {
    use std::fmt::Write;

    /// Appends CPU seconds, resident memory, open and maximum file
    /// descriptors and the start time; a series whose source cannot be read
    /// is left out rather than reported as 0.
    pub fn render(out: &mut String) {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name (which may hold spaces), from field 3.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        // SAFETY: sysconf(3) has no preconditions.
        let (ticks, page) = unsafe {
            (libc::sysconf(libc::_SC_CLK_TCK) as f64, libc::sysconf(libc::_SC_PAGESIZE) as f64)
        };
        let mut put = |name: &str, kind: &str, help: &str, v: Option<f64>| {
            if let Some(v) = v {
                let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n");
            }
        };
        let cpu = field(14).zip(field(15)).map(|(u, s)| (u + s) / ticks);
        put("process_cpu_seconds_total", "counter", "User and system CPU time, seconds.", cpu);
        put(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory, bytes.",
            field(24).map(|p| p * page),
        );
        put("process_virtual_memory_bytes", "gauge", "Virtual memory, bytes.", field(23));
        let fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
        put("process_open_fds", "gauge", "Open file descriptors.", fds);
        put("process_max_fds", "gauge", "The open file descriptor limit.", max_fds());
        // /proc/stat is hidden under the unit's ProcSubset=pid: then the
        // time this module first ran stands in (within a few milliseconds).
        let start = boot_time().zip(field(22)).map(|(boot, t)| boot + t / ticks).or(*FIRST_RUN);
        put("process_start_time_seconds", "gauge", "Start time, seconds since the epoch.", start);
    }

    /// When the process first rendered or registered metrics.
    pub static FIRST_RUN: std::sync::LazyLock<Option<f64>> = std::sync::LazyLock::new(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok();
        now.map(|d| d.as_secs_f64())
    });

    fn max_fds() -> Option<f64> {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit(2) fills the struct it is given.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
        ok.then_some(lim.rlim_cur as f64)
    }

    /// Boot time, seconds since the epoch (`btime` of `/proc/stat`).
    fn boot_time() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_keep_their_type_in_classic_text() {
        let m = Metrics::new();
        let text = m.render(3, false);
        assert!(text.contains("# TYPE chinwag_messages_total counter\nchinwag_messages_total 0\n"));
        assert!(text.contains("# HELP chinwag_messages_total Messages accepted."));
        assert!(text.contains("# TYPE chinwag_connections gauge\nchinwag_connections 3\n"));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        assert!(text.contains("chinwag_build_info{version=\""));
        assert!(text.contains("process_open_fds "));
    }

    #[test]
    fn routes_are_a_fixed_list() {
        assert_eq!(
            ROUTES[route_index("/api/rooms/ops/messages?limit=2") as usize],
            "/api/rooms/{room}/messages"
        );
        assert_eq!(
            ROUTES[route_index("/api/rooms/ops/messages/7") as usize],
            "/api/rooms/{room}/messages/{seq}"
        );
        assert_eq!(ROUTES[route_index("/ws?user=a") as usize], "/ws");
        assert_eq!(ROUTES[route_index("/api/search?q=x") as usize], "/api/search");
        assert_eq!(ROUTES[route_index("/chinwag.js") as usize], "/chinwag.js");
        assert_eq!(ROUTES[route_index("/wp-login.php") as usize], "other");
    }
}
