//! Prometheus metrics (prometheus-client) and the `/metrics` text.
//!
//! The hot path takes no lock and touches no shared cache line per message:
//! each reactor counts into its own [`LocalCounts`] and folds them into the
//! shared counters once per turn ([`Metrics::absorb`]). Takes numbers, never
//! the node: whoever renders passes the gauges it reads.

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
    /// Accept-to-ack latency (queue to the commit thread until durable), seconds.
    ack_seconds: Histogram,
    redis_up: Gauge,
    cluster_rejected: Counter,
    refusals: Family<ReasonLabel, Counter>,
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
            ack_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            redis_up: Gauge::default(),
            cluster_rejected: Counter::default(),
            refusals: Family::default(),
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
            "ack_latency_seconds", "From accepting a write to its durable answer", m.ack_seconds;
            "redis_up", "1 when the Redis link is up, 0 when down or off", m.redis_up;
            "cluster_payloads_rejected", "Cluster payloads dropped: unverified, replayed, nonsense",
                m.cluster_rejected;
            "refusals", "Connections and requests refused by a limit, by reason", m.refusals;
        }
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
        *c = LocalCounts::default();
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

    /// One flush: how long it took and how many requests it served.
    pub fn observe_flush(&self, seconds: f64, batch: usize) {
        self.flush_seconds.observe(seconds);
        self.flush_batch.observe(batch as f64);
    }

    /// One durable answer, from accepting the write.
    pub fn observe_ack(&self, seconds: f64) {
        self.ack_seconds.observe(seconds);
    }

    /// The text exposition, with the live connection count and the Redis link state.
    pub fn render(&self, connections: usize, redis_up: bool) -> String {
        self.connections.set(connections as i64);
        self.redis_up.set(redis_up as i64);
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
