//! The node's own counters and histograms for `GET /metrics`: API latency, leases,
//! finished attempts and runs, background passes, reconciler actions, event delivery lag.
//!
//! One registry per process ([`global`]), like the default registry of Prometheus client
//! libraries: the figures describe this process, so a caller anywhere (the bus, a
//! background loop, a handler) records without being handed a registry. Recording is a
//! read lock and an atomic add; rendering takes the same locks briefly. The store-derived
//! gauges (queue depth, attempts by state) are rendered by `service::metrics`, next to
//! these.
//!
//! This module must not do I/O or read the clock: callers pass the durations they
//! measured. Label values are bounded by their callers (routes, queues, states); a family
//! that still grows past [`MAX_SERIES`] folds new label sets into one `other` series.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

/// Most label sets of one family; beyond it new ones are counted as `other`.
pub const MAX_SERIES: usize = 500;

/// Latency buckets, in seconds: 1 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Observations counted into fixed buckets, with their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, plus the overflow bucket (`+Inf`); not cumulative.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// What a family holds per label set.
pub trait Series: Send + Sync {
    fn render(&self, out: &mut String, name: &str, labels: &str);
}

/// `{labels}`, or nothing for a series without labels.
fn braced(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

impl Series for Counter {
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let _ = writeln!(out, "{name}{} {}", braced(labels), self.get());
    }
}

impl Series for Histogram {
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let labels = braced(labels);
        let _ = writeln!(out, "{name}_sum{labels} {sum}");
        let _ = writeln!(out, "{name}_count{labels} {cumulative}");
    }
}

/// One series of a family: its label values (in the family's label order) and its figure.
type Entry<T> = (Box<[String]>, Arc<T>);

/// A metric with labels: one series per label set, created on first use.
pub struct Family<T> {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    labels: &'static [&'static str],
    make: fn() -> T,
    /// A short list: families have tens of series, and a scan of them is cheaper than
    /// hashing owned keys on every record.
    series: RwLock<Vec<Entry<T>>>,
}

impl<T: Series> Family<T> {
    fn new(
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        labels: &'static [&'static str],
        make: fn() -> T,
    ) -> Family<T> {
        // A family without labels has its one series from the start, so it is rendered
        // (at zero) before anything is recorded.
        let series = if labels.is_empty() {
            vec![(Box::default(), Arc::new(make()))]
        } else {
            Vec::new()
        };
        Family {
            name,
            help,
            kind,
            labels,
            make,
            series: RwLock::new(series),
        }
    }

    /// The series of `values` (one per label, in the family's order).
    pub fn with(&self, values: &[&str]) -> Arc<T> {
        debug_assert_eq!(
            values.len(),
            self.labels.len(),
            "BUG: label count of {}",
            self.name
        );
        let matches = |key: &[String]| key.iter().zip(values).all(|(a, b)| a == b);
        {
            let series = self.series.read().unwrap_or_else(|p| p.into_inner());
            if let Some((_, s)) = series.iter().find(|(k, _)| matches(k)) {
                return s.clone();
            }
        }
        let mut series = self.series.write().unwrap_or_else(|p| p.into_inner());
        if let Some((_, s)) = series.iter().find(|(k, _)| matches(k)) {
            return s.clone();
        }
        let key: Box<[String]> = if series.len() >= MAX_SERIES {
            self.labels.iter().map(|_| "other".to_owned()).collect()
        } else {
            values.iter().map(|v| (*v).to_owned()).collect()
        };
        if let Some((_, s)) = series.iter().find(|(k, _)| *k == key) {
            return s.clone();
        }
        let s = Arc::new((self.make)());
        series.push((key, s.clone()));
        s
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        let mut series: Vec<Entry<T>> = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        for (values, s) in series {
            let labels = self
                .labels
                .iter()
                .zip(values.iter())
                .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
                .collect::<Vec<_>>()
                .join(",");
            s.render(out, self.name, &labels);
        }
    }
}

/// Escapes a Prometheus label value.
pub fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every figure this process records.
pub struct Metrics {
    /// HTTP requests by route (the router's pattern, e.g. `/graphql`), method and status.
    pub http_requests: Family<Histogram>,
    /// GraphQL queries and mutations by operation (`query run`, `mutation triggerRun`).
    pub graphql_operations: Family<Histogram>,
    /// Attempts leased to a worker, by queue.
    pub leases: Family<Counter>,
    /// Attempts that reached a final state, by that state.
    pub attempts_finished: Family<Counter>,
    /// Runs that reached a final state, by that state.
    pub runs_finished: Family<Counter>,
    /// One pass of a background loop, by loop (`scheduler`, `cron`, `reconciler`).
    pub background_passes: Family<Histogram>,
    /// What the reconciler repaired, by kind.
    pub reconciler_actions: Family<Counter>,
    /// From an event's transaction to its delivery to this node's live subscribers.
    pub event_delivery_lag: Family<Histogram>,
    /// Subscribers dropped for falling behind the live buffer.
    pub subscribers_lagged: Family<Counter>,
    /// Events rendered for WebSocket event subscriptions (once per distinct selection).
    pub subscription_renders: Family<Counter>,
    /// Event messages sent to WebSocket event subscriptions.
    pub subscription_messages: Family<Counter>,
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            http_requests: Family::new(
                "gantry_http_request_duration_seconds",
                "HTTP requests by route, method and status, until the response head.",
                "histogram",
                &["route", "method", "status"],
                latency,
            ),
            graphql_operations: Family::new(
                "gantry_graphql_operation_duration_seconds",
                "GraphQL queries and mutations by operation (type and first root field).",
                "histogram",
                &["operation"],
                latency,
            ),
            leases: Family::new(
                "gantry_leases_total",
                "Attempts leased to a worker, by queue.",
                "counter",
                &["queue"],
                Counter::default,
            ),
            attempts_finished: Family::new(
                "gantry_attempts_finished_total",
                "Attempts that ended, by outcome (their final state), committed by this node.",
                "counter",
                &["outcome"],
                Counter::default,
            ),
            runs_finished: Family::new(
                "gantry_runs_finished_total",
                "Runs that ended, by final state, committed by this node.",
                "counter",
                &["state"],
                Counter::default,
            ),
            background_passes: Family::new(
                "gantry_background_pass_duration_seconds",
                "One pass of a background loop (scheduler, cron, reconciler).",
                "histogram",
                &["loop"],
                latency,
            ),
            reconciler_actions: Family::new(
                "gantry_reconciler_actions_total",
                "Repairs made by the reconciler, by kind.",
                "counter",
                &["kind"],
                Counter::default,
            ),
            event_delivery_lag: Family::new(
                "gantry_event_delivery_lag_seconds",
                "From an event's transaction time to its delivery to this node's live subscribers.",
                "histogram",
                &[],
                latency,
            ),
            subscribers_lagged: Family::new(
                "gantry_subscribers_lagged_total",
                "Subscribers (GraphQL or SSE) that fell behind the live buffer and were told LAGGED.",
                "counter",
                &[],
                Counter::default,
            ),
            subscription_renders: Family::new(
                "gantry_subscription_renders_total",
                "Events rendered for WebSocket event subscriptions: once per event and distinct selection, shared by its subscribers.",
                "counter",
                &[],
                Counter::default,
            ),
            subscription_messages: Family::new(
                "gantry_subscription_messages_total",
                "Event messages sent to WebSocket event subscriptions.",
                "counter",
                &[],
                Counter::default,
            ),
        }
    }

    /// The figures in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        self.http_requests.render(out);
        self.graphql_operations.render(out);
        self.leases.render(out);
        self.attempts_finished.render(out);
        self.runs_finished.render(out);
        self.background_passes.render(out);
        self.reconciler_actions.render(out);
        self.event_delivery_lag.render(out);
        self.subscribers_lagged.render(out);
        self.subscription_renders.render(out);
        self.subscription_messages.render(out);
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The registry of this process.
pub fn global() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets_sum_and_count() {
        let f = Family::new("h", "help", "histogram", &["op"], latency);
        f.with(&["a"]).observe(Duration::from_millis(2));
        f.with(&["a"]).observe(Duration::from_millis(30));
        f.with(&["a"]).observe(Duration::from_secs(60));
        let mut out = String::new();
        f.render(&mut out);
        assert!(out.contains("# TYPE h histogram\n"), "{out}");
        assert!(out.contains("h_bucket{op=\"a\",le=\"0.001\"} 0\n"), "{out}");
        assert!(
            out.contains("h_bucket{op=\"a\",le=\"0.0025\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("h_bucket{op=\"a\",le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("h_bucket{op=\"a\",le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("h_bucket{op=\"a\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("h_sum{op=\"a\"} 60.032\n"), "{out}");
        assert!(out.contains("h_count{op=\"a\"} 3\n"), "{out}");
    }

    #[test]
    fn unlabelled_histogram_has_no_empty_label_separator() {
        let f = Family::new("h", "help", "histogram", &[], latency);
        f.with(&[]).observe(Duration::from_millis(1));
        let mut out = String::new();
        f.render(&mut out);
        assert!(out.contains("h_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("h_count 1\n"), "{out}");
    }

    #[test]
    fn counters_are_per_label_set_and_escaped() {
        let f = Family::new("c_total", "help", "counter", &["q"], Counter::default);
        f.with(&["x\"y"]).inc();
        f.with(&["x\"y"]).add(2);
        f.with(&["b"]).inc();
        let mut out = String::new();
        f.render(&mut out);
        assert!(
            out.contains("c_total{q=\"b\"} 1\nc_total{q=\"x\\\"y\"} 3\n"),
            "{out}"
        );
    }

    #[test]
    fn a_family_stops_growing_at_its_series_limit() {
        let f = Family::new("c_total", "help", "counter", &["q"], Counter::default);
        for i in 0..MAX_SERIES + 10 {
            f.with(&[&i.to_string()]).inc();
        }
        assert_eq!(f.series.read().unwrap().len(), MAX_SERIES + 1);
        assert_eq!(f.with(&["other"]).get(), 10);
    }
}
