//! Prometheus metrics of one instance, served at `/metrics` in the OpenMetrics text format.
//!
//! Hot paths touch only atomics; labelled families are used only for rare events (errors).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub connections_total: Counter,
    pub connections_refused: Counter,
    pub frames_received: Counter,
    pub frames_sent: Counter,
    pub messages_published: Counter,
    pub direct_messages: Counter,
    pub deliveries: Counter,
    pub slow_consumers: Counter,
    pub heartbeat_timeouts: Counter,
    pub replayed: Counter,
    pub gaps_filled: Counter,
    pub not_recovered: Counter,
    /// ERROR frames by reason; counted through [`Metrics::error`].
    errors: Family<ReasonLabel, Counter>,
    /// SockJS sessions opened, by the transport that opened them; counted through
    /// [`Metrics::sockjs_session`].
    sockjs_sessions: Family<TransportLabel, Counter>,
    pub publish_seconds: Histogram,
    /// Room events this instance stored in the archive (new rows).
    pub archived: Counter,
    /// Records in the archive Stream not yet archived, over all instances.
    pub archive_lag_entries: Gauge,
    /// How long the oldest of them has waited.
    pub archive_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Records ever dropped unarchived at `CHAT_ARCHIVE_BACKLOG`, over all instances.
    pub archive_lost_entries: Gauge,
    /// Failed archive steps, by reason; counted through [`Metrics::archive_error`].
    archive_errors: Family<ReasonLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("chat"),
            connections: Gauge::default(),
            connections_total: Counter::default(),
            connections_refused: Counter::default(),
            frames_received: Counter::default(),
            frames_sent: Counter::default(),
            messages_published: Counter::default(),
            direct_messages: Counter::default(),
            deliveries: Counter::default(),
            slow_consumers: Counter::default(),
            heartbeat_timeouts: Counter::default(),
            replayed: Counter::default(),
            gaps_filled: Counter::default(),
            not_recovered: Counter::default(),
            errors: Family::default(),
            sockjs_sessions: Family::default(),
            publish_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            archived: Counter::default(),
            archive_lag_entries: Gauge::default(),
            archive_lag_seconds: Gauge::default(),
            archive_lost_entries: Gauge::default(),
            archive_errors: Family::default(),
        };
        m.registry.register(
            "connections",
            "Open WebSocket connections",
            m.connections.clone(),
        );
        // Every counter, in the order they are listed on /metrics.
        let counters = [
            (
                "connections_opened",
                "WebSocket connections accepted",
                &m.connections_total,
            ),
            (
                "connections_refused",
                "Connections refused (limit, draining, origin)",
                &m.connections_refused,
            ),
            (
                "frames_received",
                "STOMP frames received",
                &m.frames_received,
            ),
            ("frames_sent", "STOMP frames sent", &m.frames_sent),
            (
                "messages_published",
                "Room messages accepted by the broker",
                &m.messages_published,
            ),
            (
                "direct_messages",
                "Direct messages accepted by the broker",
                &m.direct_messages,
            ),
            (
                "deliveries",
                "MESSAGE frames written to subscribers",
                &m.deliveries,
            ),
            (
                "slow_consumers",
                "Connections dropped because their queue was full",
                &m.slow_consumers,
            ),
            (
                "heartbeat_timeouts",
                "Connections dropped for silence past their heart-beat",
                &m.heartbeat_timeouts,
            ),
            (
                "replayed",
                "Events replayed from history on recovery",
                &m.replayed,
            ),
            (
                "gaps_filled",
                "Live gaps filled from history",
                &m.gaps_filled,
            ),
            (
                "not_recovered",
                "Recoveries refused (epoch changed or history too short)",
                &m.not_recovered,
            ),
            (
                "archived",
                "Room events this instance stored in the PostgreSQL archive",
                &m.archived,
            ),
        ];
        for (name, help, counter) in counters {
            m.registry.register(name, help, counter.clone());
        }
        m.registry
            .register("errors", "ERROR frames sent, by reason", m.errors.clone());
        m.registry.register(
            "sockjs_sessions",
            "SockJS sessions opened, by the transport that opened them",
            m.sockjs_sessions.clone(),
        );
        m.registry.register(
            "publish_seconds",
            "Time for the broker to accept a message",
            m.publish_seconds.clone(),
        );
        m.register_archive();
        m
    }

    /// The archive's metrics (see the archive module); their help is short enough for one line each.
    fn register_archive(&mut self) {
        let r = &mut self.registry;
        let lag = "Records waiting for the archive (all instances)";
        r.register("archive_lag_entries", lag, self.archive_lag_entries.clone());
        let age = "Age of the oldest record waiting for the archive";
        r.register("archive_lag_seconds", age, self.archive_lag_seconds.clone());
        let lost = "Records dropped unarchived at CHAT_ARCHIVE_BACKLOG (all instances)";
        r.register(
            "archive_lost_entries",
            lost,
            self.archive_lost_entries.clone(),
        );
        let errors = "Failed archive steps, by reason";
        r.register("archive_errors", errors, self.archive_errors.clone());
    }

    pub fn archive_error(&self, reason: &'static str) {
        self.archive_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn error(&self, reason: &'static str) {
        self.errors.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn sockjs_session(&self, transport: &'static str) {
        self.sockjs_sessions
            .get_or_create(&TransportLabel { transport })
            .inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_the_chat_prefix() {
        let m = Metrics::new();
        m.deliveries.inc_by(3);
        m.error("bad-frame");
        m.sockjs_session("xhr");
        m.archive_error("postgres");
        m.archive_lag_seconds.set(1.5);
        let text = m.encode();
        assert!(
            text.contains("chat_archive_errors_total{reason=\"postgres\"} 1"),
            "{text}"
        );
        assert!(text.contains("chat_archive_lag_seconds 1.5"), "{text}");
        assert!(text.contains("chat_deliveries_total 3"), "{text}");
        assert!(
            text.contains("chat_errors_total{reason=\"bad-frame\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("chat_sockjs_sessions_total{transport=\"xhr\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
