//! Live metrics of the jobs of this process, in Prometheus' text format: what an operator watches
//! while a job runs (the end-of-run report only comes at the end).
//!
//! Metrics are per process, as Prometheus expects: each process of a cluster serves its own
//! (`--metrics-addr`), and counters start from zero when a process starts, a restored one too.
//! The source counts what each of this process's workers reads; the decision sink, on worker 0
//! of process 0, counts decisions, alerts and rule hits exactly as they are written; the worker
//! loop sets the frontiers and checkpoint figures. Recording costs a few atomic additions per
//! batch, so [`METRICS`] is always on; serving it is the CLI's job.
//!
//! ```
//! use threatflow::metrics::METRICS;
//! METRICS.decisions.with_label_values(&["threat"]).inc();
//! let text = METRICS.render();
//! assert!(text.contains("threatflow_decisions_total{verdict=\"threat\"}"));
//! assert!(text.contains("# TYPE threatflow_decisions_total counter"));
//! assert!(text.contains("threatflow_alerts_total 0"));
//! ```

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// The metrics of this process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Every metric threatflow exports (names follow Prometheus' conventions: `_total` counters,
/// base units in the name).
pub struct Metrics {
    registry: Registry,
    /// Valid events read, per source partition.
    pub events: IntCounterVec,
    /// Late events (behind their partition's watermark), per source partition.
    pub late: IntCounterVec,
    /// Records rejected (dead letters), per reason (see `RejectReason::class`).
    pub rejected: IntCounterVec,
    /// Per source partition, the position read up to: a Kafka offset, a file's byte offset or the
    /// generator's items.
    pub position: IntGaugeVec,
    /// Per Kafka partition, the records behind its end (from the consumer's statistics, every
    /// second).
    pub lag: IntGaugeVec,
    /// Per source partition, its watermark (ms since the epoch, event time).
    pub watermark: IntGaugeVec,
    /// Decisions written, per verdict.
    pub decisions: IntCounterVec,
    /// Alerts written (after suppression).
    pub alerts: IntCounter,
    /// Decisions naming each rule.
    pub rule_hits: IntCounterVec,
    /// Alerts posted to each `--alerts-to` destination (by its digest), per outcome: `delivered`,
    /// `retried` (an attempt failed), `undelivered` (set aside).
    pub alerts_delivered: IntCounterVec,
    /// Per model version accepted, the event time it is in force from (ms since the epoch).
    pub model_effective_from: IntGaugeVec,
    /// The events' frontier on this process's worker 0 (ms, event time).
    pub events_frontier: IntGauge,
    /// The outputs' frontier: every decision before it is written (ms, event time).
    pub output_frontier: IntGauge,
    /// How far the outputs' frontier is behind the wall clock, in seconds.
    pub output_delay: Gauge,
    /// Checkpoints written.
    pub checkpoints: IntCounter,
    /// The last checkpoint's size in bytes.
    pub checkpoint_bytes: IntGauge,
    /// How long the last checkpoint took to encode, write and commit, in seconds.
    pub checkpoint_duration: Gauge,
    /// Seconds since the last checkpoint was committed (derived from the timestamp when scraped).
    checkpoint_age: Gauge,
    /// When the last checkpoint was committed, in seconds since the epoch.
    pub checkpoint_timestamp: Gauge,
    /// Seconds the restore of the checkpoint this process started from took.
    pub restore_duration: Gauge,
    /// Errors librdkafka reported (connections it retries included).
    pub kafka_errors: IntCounter,
    /// 1 once the process's job has ended (its last values are final).
    pub finished: IntGauge,
    /// 1 once the process's job has restored its state and reads its input (`/readyz`).
    ready: IntGauge,
    /// Per keyed state (`new-terms`, `risk-scores`), the keys it holds on this process.
    pub state_keys: IntGaugeVec,
    /// Per keyed state, the bytes of its tables (capacity, not only what is filled).
    pub state_table_bytes: IntGaugeVec,
    /// jemalloc's own figures, read when scraped (see [`allocator_bytes`]).
    allocator: IntGaugeVec,
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        // Names and labels are constants: registering cannot fail but on a programming error.
        fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: prometheus::Result<M>) -> M {
            let metric = metric.expect("a valid metric definition");
            registry.register(Box::new(metric.clone())).expect("a metric registered once");
            metric
        }
        let counters = |name: &str, help: &str, label: &str| register(&registry, IntCounterVec::new(Opts::new(name, help), &[label]));
        let gauges = |name: &str, help: &str, label: &str| register(&registry, IntGaugeVec::new(Opts::new(name, help), &[label]));
        Metrics {
            events: counters("threatflow_events_total", "Valid events read, per source partition.", "partition"),
            late: counters("threatflow_late_events_total", "Events behind their partition's watermark, per source partition.", "partition"),
            rejected: counters("threatflow_rejected_records_total", "Records rejected to the dead letters, per reason.", "reason"),
            position: gauges("threatflow_partition_position", "Position read up to per source partition (Kafka offset, byte offset, generated items).", "partition"),
            lag: gauges("threatflow_partition_lag_records", "Records behind the end of each Kafka partition (consumer statistics, every second).", "partition"),
            watermark: gauges("threatflow_partition_watermark_milliseconds", "Watermark per source partition (event time, ms since the epoch).", "partition"),
            decisions: counters("threatflow_decisions_total", "Decisions written, per verdict.", "verdict"),
            alerts: register(&registry, IntCounter::new("threatflow_alerts_total", "Alerts written (after suppression).")),
            rule_hits: counters("threatflow_rule_hits_total", "Decisions naming each rule.", "rule"),
            alerts_delivered: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("threatflow_alert_deliveries_total", "Alerts posted per --alerts-to destination (a digest) and outcome: delivered, retried, undelivered."),
                    &["destination", "outcome"],
                ),
            ),
            model_effective_from: gauges("threatflow_model_effective_from_milliseconds", "Per model version accepted, the event time it is in force from.", "version"),
            events_frontier: register(&registry, IntGauge::new("threatflow_events_frontier_milliseconds", "The events' frontier (event time, ms since the epoch).")),
            output_frontier: register(&registry, IntGauge::new("threatflow_output_frontier_milliseconds", "Every decision before this event time is written.")),
            output_delay: register(&registry, Gauge::new("threatflow_output_delay_seconds", "How far the output frontier is behind the wall clock.")),
            checkpoints: register(&registry, IntCounter::new("threatflow_checkpoints_total", "Checkpoints written.")),
            checkpoint_bytes: register(&registry, IntGauge::new("threatflow_checkpoint_bytes", "The last checkpoint's size.")),
            checkpoint_duration: register(&registry, Gauge::new("threatflow_checkpoint_duration_seconds", "Time to encode, write and commit the last checkpoint.")),
            checkpoint_age: register(&registry, Gauge::new("threatflow_checkpoint_age_seconds", "Time since the last checkpoint was committed.")),
            checkpoint_timestamp: register(&registry, Gauge::new("threatflow_checkpoint_timestamp_seconds", "When the last checkpoint was committed.")),
            restore_duration: register(&registry, Gauge::new("threatflow_restore_duration_seconds", "Time to read, verify and decode the checkpoint this process started from.")),
            kafka_errors: register(&registry, IntCounter::new("threatflow_kafka_client_errors_total", "Errors the Kafka client reported.")),
            finished: register(&registry, IntGauge::new("threatflow_job_finished", "1 once the job has ended: the values are final.")),
            ready: register(&registry, IntGauge::new("threatflow_ready", "1 once the job has restored its state and reads its input.")),
            state_keys: gauges("threatflow_state_keys", "Keys held per keyed state (new-terms combinations, risk entities).", "part"),
            state_table_bytes: gauges("threatflow_state_table_bytes", "Bytes of the tables of each keyed state, by their capacity.", "part"),
            allocator: gauges(
                "threatflow_allocator_bytes",
                "jemalloc's figures: allocated (live heap), active (its pages), resident, mapped, retained (0 when the process uses another allocator).",
                "kind",
            ),
            registry,
        }
    }

    /// Records `count` checkpoints committed, the last just now.
    pub fn checkpoints_written(&self, count: u64, bytes: u64, duration_ms: f64) {
        self.checkpoints.inc_by(count);
        self.checkpoint_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.checkpoint_duration.set(duration_ms / 1e3);
        self.checkpoint_timestamp.set(now_seconds());
    }

    /// Records the outputs' frontier (event time, ms) and its delay behind the wall clock.
    pub fn output_frontier_at(&self, frontier: u64) {
        self.output_frontier.set(i64::try_from(frontier).unwrap_or(i64::MAX));
        self.output_delay.set((now_seconds() - frontier as f64 / 1e3).max(0.0));
    }

    /// Says the job has restored its state and reads its input (`/readyz`).
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Whether the job has restored its state and reads its input.
    pub fn is_ready(&self) -> bool {
        self.ready.get() == 1
    }

    /// Every metric in Prometheus' text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut text = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.gather(), &mut text) {
            tracing::error!("encoding the metrics: {error}");
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// Every metric as JSON, for the console: `{name: [{"labels": {…}, "value": v}]}`.
    pub fn snapshot(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for family in self.gather() {
            let samples = family.get_metric().iter().map(|metric| {
                let labels: serde_json::Map<String, serde_json::Value> =
                    metric.get_label().iter().map(|l| (l.name().to_string(), l.value().into())).collect();
                let value = match family.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => metric.get_counter().get_value(),
                    _ => metric.get_gauge().get_value(),
                };
                serde_json::json!({"labels": labels, "value": value})
            });
            out.insert(family.name().to_string(), samples.collect());
        }
        out.into()
    }

    fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        let last = self.checkpoint_timestamp.get();
        if last > 0.0 {
            self.checkpoint_age.set((now_seconds() - last).max(0.0));
        }
        for (kind, bytes) in allocator_bytes() {
            self.allocator.with_label_values(&[kind]).set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        self.registry.gather()
    }
}

/// jemalloc's figures now, in bytes: `allocated` is what the program holds, `active` the pages
/// holding it (the difference is fragmentation), `resident` what the allocator keeps in memory
/// (freed pages not yet returned included), `mapped` and `retained` its address space. They tell a
/// growing heap from an allocator that keeps pages. Empty when the statistics cannot be read.
pub fn allocator_bytes() -> Vec<(&'static str, usize)> {
    use tikv_jemalloc_ctl::{epoch, stats};
    if epoch::advance().is_err() {
        return Vec::new();
    }
    let figures = [
        ("allocated", stats::allocated::read()),
        ("active", stats::active::read()),
        ("resident", stats::resident::read()),
        ("mapped", stats::mapped::read()),
        ("retained", stats::retained::read()),
    ];
    figures.into_iter().filter_map(|(kind, value)| value.ok().map(|v| (kind, v))).collect()
}

/// The wall clock, in seconds since the epoch.
fn now_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
