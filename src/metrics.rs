//! Prometheus metrics, encoded with prometheus-client.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    /// Events by kind and outcome (`received`, `applied`, `ignored`, `duplicate`, `rejected`).
    pub events: Family<Labels, Counter>,
    /// Requests by route and status.
    pub requests: Family<Labels, Counter>,
    /// Request latency by route, seconds.
    pub latency: Family<Labels, Histogram, fn() -> Histogram>,
    /// Tickets by status and channel (set at scrape time).
    pub tickets: Family<Labels, Gauge>,
    /// Age of the oldest unanswered ticket, minutes (set at scrape time).
    pub oldest_unanswered: FloatGauge,
    /// Current stats_v2 window counts (new tickets), by window.
    pub window_new: Family<Labels, Gauge>,
    /// Connected SSE subscribers.
    pub sse_subscribers: Gauge,
    /// Seconds since the last snapshot.
    pub snapshot_age: FloatGauge,
    /// Duration of the last snapshot write, seconds.
    pub snapshot_duration: FloatGauge,
    /// Size of the last snapshot, bytes.
    pub snapshot_bytes: Gauge,
    /// Records in the journal since the last snapshot.
    pub journal_records: Gauge,
    /// Open Socket Mode connections (that have said hello).
    pub socket_connections: Gauge,
    /// Socket Mode reconnections (refresh requests, drops, watchdog).
    pub socket_reconnects: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("seshat");
        let events = Family::<Labels, Counter>::default();
        let requests = Family::<Labels, Counter>::default();
        let latency =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let tickets = Family::<Labels, Gauge>::default();
        let window_new = Family::<Labels, Gauge>::default();
        let oldest_unanswered = FloatGauge::default();
        let sse_subscribers = Gauge::default();
        let snapshot_age = FloatGauge::default();
        let snapshot_duration = FloatGauge::default();
        let snapshot_bytes = Gauge::default();
        let journal_records = Gauge::default();
        let socket_connections = Gauge::default();
        let socket_reconnects = Counter::default();
        registry.register("events", "Slack events by kind and outcome", events.clone());
        registry.register(
            "requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        registry.register("tickets", "Tickets by status and channel", tickets.clone());
        registry.register(
            "oldest_unanswered_minutes",
            "Age of the oldest unanswered ticket",
            oldest_unanswered.clone(),
        );
        registry.register(
            "window_new_tickets",
            "New tickets in each stats_v2 window",
            window_new.clone(),
        );
        registry.register(
            "sse_subscribers",
            "Connected /api/stream clients",
            sse_subscribers.clone(),
        );
        registry.register(
            "snapshot_age_seconds",
            "Seconds since the last snapshot",
            snapshot_age.clone(),
        );
        registry.register(
            "snapshot_duration_seconds",
            "Duration of the last snapshot write",
            snapshot_duration.clone(),
        );
        registry.register(
            "snapshot_size_bytes",
            "Size of the last snapshot",
            snapshot_bytes.clone(),
        );
        registry.register(
            "journal_records",
            "Journal records since the last snapshot",
            journal_records.clone(),
        );
        registry.register(
            "socket_connections",
            "Open Slack Socket Mode connections",
            socket_connections.clone(),
        );
        registry.register(
            "socket_reconnects",
            "Slack Socket Mode reconnections",
            socket_reconnects.clone(),
        );
        Metrics {
            registry,
            events,
            requests,
            latency,
            tickets,
            oldest_unanswered,
            window_new,
            sse_subscribers,
            snapshot_age,
            snapshot_duration,
            snapshot_bytes,
            journal_records,
            socket_connections,
            socket_reconnects,
        }
    }
}

impl Metrics {
    /// Counts one event outcome.
    pub fn event(&self, kind: &str, outcome: &'static str) {
        self.events
            .get_or_create(&vec![
                ("kind", kind.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }

    /// Counts one request and its latency.
    pub fn request(&self, route: &'static str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&vec![
                ("route", route.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
        self.latency
            .get_or_create(&vec![("route", route.to_string())])
            .observe(seconds);
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
