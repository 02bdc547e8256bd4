//! Prometheus metrics. The original's names are kept (`api_request_latency_seconds`,
//! `tasks_created_total`, `tasks_claimed_total`, `tasks_finalized_total`, `tasks_failed_total`,
//! `worker_heartbeats_total`, `queue_depth`, `workers_active`), plus the NATS side, tasks
//! cancelled and inconclusive rounds (`tasks_cancelled_total`, `tasks_inconclusive_total`),
//! (`nats_request_latency_seconds`), lease and submission counts, starved tasks by type
//! (`tasks_starved`), and the group-commit writer
//! (`store_queue_seconds` by lane, `store_batch_operations`, `store_commit_seconds`). Counters
//! move in [`Core`] after each commit; the gauges are read from the store at scrape time.
//!
//! [`Core`]: crate::Core

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Labels of an HTTP request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// GET, POST...
    pub method: String,
    /// The route template (`/tasks/{id}`), never the raw path: bounded cardinality.
    pub route: String,
    /// The response status.
    pub status: u16,
}

/// Labels of a NATS request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NatsLabels {
    /// `lease`, `release`, `heartbeat`, `submit` or `api.<op>`.
    pub subject: String,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// Labels of a group-commit lane.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabels {
    /// `normal` or `urgent`.
    pub lane: &'static str,
}

/// Labels of a per-type gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// The task type.
    pub r#type: String,
}

/// A reply's outcome.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// `{"ok":true}`.
    Ok,
    /// An error reply.
    Error,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
        }
    }
}

type Latency<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~3.3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every metric the coordinator exports.
pub struct Metrics {
    registry: Registry,
    /// HTTP request latency by method, route and status.
    pub http_latency: Latency<HttpLabels>,
    /// NATS request latency by subject and outcome.
    pub nats_latency: Latency<NatsLabels>,
    /// Tasks created.
    pub tasks_created: Counter,
    /// Leases granted.
    pub tasks_claimed: Counter,
    /// Tasks finalized.
    pub tasks_finalized: Counter,
    /// Tasks failed.
    pub tasks_failed: Counter,
    /// Tasks cancelled.
    pub tasks_cancelled: Counter,
    /// Rounds of answers without a quorum (each leases one more replica).
    pub tasks_inconclusive: Counter,
    /// Submissions stored (duplicates excluded).
    pub submissions: Counter,
    /// Leases freed by the sweeper or released.
    pub leases_requeued: Counter,
    /// Heartbeats received.
    pub worker_heartbeats: Counter,
    /// Tasks queued (no live lease).
    pub queue_depth: Gauge,
    /// Tasks with live leases.
    pub tasks_assigned: Gauge,
    /// Workers heartbeating within the TTL.
    pub workers_active: Gauge,
    /// Leases live now.
    pub leases_active: Gauge,
    /// Starved tasks (too few live workers can do them to finish them), by type.
    pub tasks_starved: Family<TypeLabels, Gauge>,
    /// Time a write waited for the writer, by lane.
    pub store_queue: Latency<LaneLabels>,
    /// Operations per group-commit transaction.
    pub store_batch: Histogram,
    /// Time to commit a group-commit transaction (WAL write and fsync).
    pub store_commit: Histogram,
    /// HTTP requests per minute over the last hour, for the dashboard's charts.
    pub api_minutes: crate::minutes::PerMinute,
    /// Answers a label task had when it was finalized.
    pub answers_per_finalized: Histogram,
    /// The winning label's posterior at finalization (the posterior policy).
    pub posterior_at_finalization: Histogram,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            http_latency: Family::new_with_constructor(latency_histogram),
            nats_latency: Family::new_with_constructor(latency_histogram),
            tasks_created: Counter::default(),
            tasks_claimed: Counter::default(),
            tasks_finalized: Counter::default(),
            tasks_failed: Counter::default(),
            tasks_cancelled: Counter::default(),
            tasks_inconclusive: Counter::default(),
            submissions: Counter::default(),
            leases_requeued: Counter::default(),
            worker_heartbeats: Counter::default(),
            queue_depth: Gauge::default(),
            tasks_assigned: Gauge::default(),
            workers_active: Gauge::default(),
            leases_active: Gauge::default(),
            tasks_starved: Family::default(),
            store_queue: Family::new_with_constructor(latency_histogram),
            // 1 .. 512 operations.
            store_batch: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            store_commit: latency_histogram(),
            api_minutes: crate::minutes::PerMinute::default(),
            // 1 .. 12 answers.
            answers_per_finalized: Histogram::new(linear_buckets(1.0, 1.0, 12)),
            // 0.5 .. 1.0 by 0.05.
            posterior_at_finalization: Histogram::new(linear_buckets(0.5, 0.05, 11)),
        };
        m.register_all();
        m
    }

    /// Registers every metric in the registry, once.
    fn register_all(&mut self) {
        let counters = [
            ("tasks_created", "Tasks created", &self.tasks_created),
            ("tasks_claimed", "Leases granted", &self.tasks_claimed),
            (
                "tasks_finalized",
                "Tasks finalized by consensus",
                &self.tasks_finalized,
            ),
            (
                "tasks_failed",
                "Tasks that ran out of attempts or reached no consensus",
                &self.tasks_failed,
            ),
            (
                "tasks_cancelled",
                "Tasks cancelled by a client",
                &self.tasks_cancelled,
            ),
            (
                "tasks_inconclusive",
                "Rounds of answers without a quorum, each followed by one more replica",
                &self.tasks_inconclusive,
            ),
            ("submissions", "Submissions stored", &self.submissions),
            (
                "leases_requeued",
                "Leases that ended without a result (expired, stale worker, released)",
                &self.leases_requeued,
            ),
            (
                "worker_heartbeats",
                "Heartbeats received",
                &self.worker_heartbeats,
            ),
        ];
        let gauges = [
            (
                "queue_depth",
                "Tasks queued with no live lease",
                &self.queue_depth,
            ),
            (
                "tasks_assigned",
                "Tasks with live leases",
                &self.tasks_assigned,
            ),
            (
                "workers_active",
                "Workers heartbeating within the TTL",
                &self.workers_active,
            ),
            ("leases_active", "Live leases", &self.leases_active),
        ];
        let r = &mut self.registry;
        r.register(
            "api_request_latency_seconds",
            "HTTP API request latency",
            self.http_latency.clone(),
        );
        r.register(
            "nats_request_latency_seconds",
            "NATS API request latency",
            self.nats_latency.clone(),
        );
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
        for (name, help, gauge) in gauges {
            r.register(name, help, gauge.clone());
        }
        r.register(
            "tasks_starved",
            "Open tasks that too few live workers can do to finish them, by type",
            self.tasks_starved.clone(),
        );
        self.register_histograms();
    }

    /// Registers the store's and the decisions' histograms.
    fn register_histograms(&mut self) {
        let r = &mut self.registry;
        r.register(
            "store_queue_seconds",
            "Time a write waited for the group-commit writer, by lane",
            self.store_queue.clone(),
        );
        r.register(
            "store_batch_operations",
            "Operations per group-commit transaction",
            self.store_batch.clone(),
        );
        r.register(
            "store_commit_seconds",
            "Time to commit a group-commit transaction (WAL write and fsync)",
            self.store_commit.clone(),
        );
        r.register(
            "answers_per_finalized_task",
            "Answers a label task had when it was finalized",
            self.answers_per_finalized.clone(),
        );
        r.register(
            "posterior_at_finalization",
            "The winning label's posterior when a task was finalized under the posterior policy",
            self.posterior_at_finalization.clone(),
        );
    }

    /// Records one HTTP request.
    pub fn observe_http(&self, labels: HttpLabels, took: Duration) {
        if crate::minutes::counted(&labels.route) {
            let now = chrono::Utc::now().timestamp_millis();
            self.api_minutes.record(now, &labels.route, took);
        }
        self.http_latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Records one NATS request.
    pub fn observe_nats(&self, subject: &str, outcome: Outcome, took: Duration) {
        self.nats_latency
            .get_or_create(&NatsLabels {
                subject: subject.to_owned(),
                outcome: outcome.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
