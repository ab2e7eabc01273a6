//! Kafka in and out: connection settings, topic names, and the clients every Kafka part shares.
//!
//! threatflow talks to Kafka through the `rdkafka` crate (librdkafka, built from source). Inputs
//! are assigned statically: partition `p` of a topic is read by worker `p % peers` of the whole
//! cluster, never through a consumer group, and no offset is ever committed to the broker (read
//! positions belong to the engine). Outputs are written by one idempotent producer on worker 0.
//!
//! - [`source`]: a topic partition as a [`crate::ingest::partition::Partition`] of the event source;
//! - [`control`]: model and rule updates from their topics, applied at their `effective_from`;
//! - [`sink`]: decisions, alerts, actions and dead letters to their topics;
//! - [`tools`]: the `produce` and `consume` commands.

pub mod control;
pub mod sink;
pub mod source;
pub mod tools;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// What a topic is for; each role has a default name that `--topic ROLE=NAME` overrides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Activity events (input).
    Activity,
    /// Model updates `{version, uri, sha256, effective_from}` (input).
    Models,
    /// Rule updates (input).
    Rules,
    /// Marked threats (input).
    Marks,
    /// Threat-intel indicators (input; read only with [`KafkaConfig::intel_topic`]).
    Intel,
    /// Decisions, keyed by user (output).
    Decisions,
    /// Alerts (output).
    Alerts,
    /// Revert and block commands (output).
    Actions,
    /// Rejected records (output).
    DeadLetters,
}

impl Role {
    /// Every role, inputs first.
    pub const ALL: [Role; 9] =
        [Role::Activity, Role::Models, Role::Rules, Role::Marks, Role::Intel, Role::Decisions, Role::Alerts, Role::Actions, Role::DeadLetters];

    /// The role's name, which is also its topic's default name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Activity => "activity",
            Role::Models => "models",
            Role::Rules => "rules",
            Role::Marks => "marks",
            Role::Intel => "intel",
            Role::Decisions => "decisions",
            Role::Alerts => "alerts",
            Role::Actions => "actions",
            Role::DeadLetters => "dead-letters",
        }
    }

    fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// How threatflow reaches Kafka. Its `Debug` form hides secret settings.
#[derive(Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Further librdkafka settings (`security.protocol`, `sasl.*`, `ssl.*`, ...), applied last.
    pub options: Vec<(String, String)>,
    /// Topic names by role.
    pub topics: BTreeMap<Role, String>,
    /// Create missing topics instead of failing.
    pub create_topics: bool,
    /// Partitions of the topics threatflow creates (control topics get one: they are tiny, and one
    /// partition keeps their updates in order).
    pub partitions: usize,
    /// How long to keep retrying while the broker cannot be reached at start.
    pub connect_timeout: Duration,
    /// The key control updates on the control topics are signed with: a job then applies only
    /// updates that verify, and `mark`, `unblock` and `model publish` sign what they send.
    pub control_key: Option<crate::control::signing::ControlKey>,
    /// Read threat-intel indicators from the intel topic (JSON lines, STIX 2.1 bundles or CSV, one
    /// update per message; see [`crate::control::intel`]).
    pub intel_topic: bool,
}

impl KafkaConfig {
    /// Default topic names, no extra settings, missing topics an error.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            options: Vec::new(),
            topics: Role::ALL.into_iter().map(|r| (r, r.name().to_string())).collect(),
            create_topics: false,
            partitions: 4,
            connect_timeout: Duration::from_secs(300),
            control_key: None,
            intel_topic: false,
        }
    }

    /// Overrides topic names from `ROLE=NAME` pairs.
    pub fn with_topics(mut self, pairs: &[String]) -> Result<Self> {
        for pair in pairs {
            let Some((role, name)) = pair.split_once('=') else {
                bail!("--topic {pair:?}: expected ROLE=NAME");
            };
            let Some(role) = Role::parse(role) else {
                let roles: Vec<_> = Role::ALL.iter().map(|r| r.name()).collect();
                bail!("--topic {pair:?}: unknown role {role:?} (roles: {})", roles.join(", "));
            };
            self.topics.insert(role, name.to_string());
        }
        Ok(self)
    }

    /// The topic name of a role.
    pub fn topic(&self, role: Role) -> &str {
        self.topics.get(&role).map_or(role.name(), String::as_str)
    }

    /// A client configuration: the brokers, threatflow's defaults for `purpose`, then the user's options.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config.set_log_level(RDKafkaLogLevel::Warning);
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
    }

    /// A consumer for statically assigned partitions: no commits, end-of-partition events. (librdkafka
    /// wants a group id even for assigned partitions; it is never joined or committed to.)
    pub fn consumer(&self) -> Result<BaseConsumer<LogContext>> {
        self.client_config(&[
            ("group.id", "threatflow"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "true"),
            ("auto.offset.reset", "earliest"),
            // A fetch that finds nothing new returns after 1 ms: a broker that does not answer a
            // waiting fetch as soon as records arrive (nisshi) would otherwise add up to this wait
            // to every record's latency (measured: experiments/kafka_end_to_end.sh).
            ("fetch.wait.max.ms", "1"),
            // Per-partition lag for the live metrics (see `LogContext::stats`).
            ("statistics.interval.ms", "1000"),
        ])
        .create_with_context(LogContext)
        .with_context(|| format!("creating a Kafka consumer for {}", self.brokers))
    }

    /// The partition counts of `topics`, waiting with backoff while the broker is unreachable and
    /// creating missing topics when configured to.
    pub fn partition_counts(&self, topics: &[&str]) -> Result<Vec<usize>> {
        let consumer = self.consumer()?;
        let mut counts = Vec::with_capacity(topics.len());
        for topic in topics {
            let count = match retry(self, &format!("reading the metadata of topic {topic}"), || topic_partitions(&consumer, topic))? {
                Some(n) => n,
                None if self.create_topics => {
                    self.create_topic(topic)?;
                    retry(self, &format!("reading the metadata of topic {topic}"), || topic_partitions(&consumer, topic))?
                        .with_context(|| format!("topic {topic} was created but has no partitions"))?
                }
                None => bail!(
                    "Kafka topic {topic:?} does not exist on {} (create it, or pass --create-topics)",
                    self.brokers
                ),
            };
            counts.push(count);
        }
        Ok(counts)
    }

    /// Creates a topic (an existing topic is fine).
    pub fn create_topic(&self, topic: &str) -> Result<()> {
        let admin: AdminClient<LogContext> =
            self.client_config(&[]).create_with_context(LogContext).context("creating a Kafka admin client")?;
        let control = [Role::Models, Role::Rules, Role::Marks, Role::Intel].iter().any(|r| self.topic(*r) == topic);
        let partitions = if control { 1 } else { i32::try_from(self.partitions).context("too many partitions")? };
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let results = futures_executor::block_on(admin.create_topics([&new], &AdminOptions::new()))
            .with_context(|| format!("creating Kafka topic {topic}"))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => bail!("creating Kafka topic {name}: {code}"),
            }
        }
        tracing::info!(topic, partitions, "created Kafka topic");
        Ok(())
    }

    /// The end (high watermark) offset of each partition of a topic.
    pub fn end_offsets(&self, consumer: &BaseConsumer<LogContext>, topic: &str, partitions: usize) -> Result<Vec<i64>> {
        (0..partitions)
            .map(|p| {
                let p = i32::try_from(p).context("partition number")?;
                retry(self, &format!("reading the end offset of {topic}/{p}"), || {
                    consumer.fetch_watermarks(topic, p, Duration::from_secs(5)).map(|(_, high)| high)
                })
            })
            .collect()
    }
}

/// Assigns `(topic, partition, start)`s to a consumer.
pub fn assign(consumer: &BaseConsumer<LogContext>, partitions: &[(&str, i32, rdkafka::Offset)]) -> Result<()> {
    let mut assignment = rdkafka::TopicPartitionList::new();
    for (topic, p, start) in partitions {
        assignment.add_partition_offset(topic, *p, *start).context("assigning a partition")?;
    }
    let names: Vec<(&str, i32)> = partitions.iter().map(|(t, p, _)| (*t, *p)).collect();
    consumer.assign(&assignment).with_context(|| format!("assigning partitions {names:?}"))
}

/// Calls `each` with every record of `topic` from `starts[p]` (the partition's first record when
/// `None` or deleted) up to the end offsets the partitions have when the call starts, or, with
/// `follow`, until `stop` is set. Returns the number of records.
pub fn read_topic(
    config: &KafkaConfig,
    topic: &str,
    starts: &[Option<i64>],
    follow: bool,
    stop: &std::sync::atomic::AtomicBool,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> Result<()>,
) -> Result<u64> {
    use rdkafka::message::Message;
    let consumer = config.consumer()?;
    let mut next = Vec::with_capacity(starts.len());
    let mut ends = Vec::with_capacity(starts.len());
    for (p, start) in starts.iter().enumerate() {
        let p = i32::try_from(p).context("partition number")?;
        let (low, high) = retry(config, &format!("reading the offsets of {topic}/{p}"), || {
            consumer.fetch_watermarks(topic, p, Duration::from_secs(5))
        })?;
        next.push(start.unwrap_or(low).max(low));
        ends.push(high);
    }
    let assignment: Vec<(&str, i32, rdkafka::Offset)> =
        next.iter().enumerate().map(|(p, n)| (topic, p as i32, rdkafka::Offset::Offset(*n))).collect();
    assign(&consumer, &assignment)?;
    let mut count = 0u64;
    let done = |next: &[i64]| !follow && next.iter().zip(&ends).all(|(n, e)| n >= e);
    while !done(&next) && !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(error)) => tracing::warn!(topic, "Kafka consumer: {error} (librdkafka retries)"),
            Some(Ok(message)) => {
                if let Some(n) = next.get_mut(message.partition() as usize) {
                    *n = message.offset() + 1;
                }
                each(&message)?;
                count += 1;
            }
        }
    }
    Ok(count)
}

/// `Some(partitions)` of a topic, `None` when the broker says it does not exist.
fn topic_partitions(consumer: &BaseConsumer<LogContext>, topic: &str) -> Result<Option<usize>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(2))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else { return Ok(None) };
    match found.error() {
        None if !found.partitions().is_empty() => Ok(Some(found.partitions().len())),
        None => Ok(None),
        Some(e) => match RDKafkaErrorCode::from(e) {
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => Ok(None),
            code => Err(KafkaError::MetadataFetch(code)),
        },
    }
}

/// Runs `attempt` until it succeeds, backing off from 100 ms to 5 s between tries and logging
/// each failure, for at most the configured connect timeout.
pub fn retry<T>(config: &KafkaConfig, what: &str, mut attempt: impl FnMut() -> Result<T, KafkaError>) -> Result<T> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(error) if started.elapsed() < config.connect_timeout => {
                tracing::warn!(brokers = %config.brokers, "{what}: {error}; retrying in {pause:?}");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                return Err(error).with_context(|| format!("{what} (gave up after {:?} on {})", config.connect_timeout, config.brokers))
            }
        }
    }
}

/// Sends librdkafka's log lines and client errors to `tracing`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogContext;

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        // librdkafka retries what it reports as errors (a refused connection, a lost broker).
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    /// Consumers' statistics: each partition's lag (its end offset minus the next offset the
    /// job reads) goes to the live metrics. (librdkafka's own `consumer_lag` counts from committed
    /// offsets, and the job commits none: its offsets are in its checkpoints.)
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, p) in stats.partitions.iter().filter(|(id, _)| **id >= 0) {
                // The last stable offset (read_committed) when known, else the high watermark.
                let end = if p.ls_offset >= 0 { p.ls_offset } else { p.hi_offset };
                let read = if p.app_offset >= 0 { p.app_offset } else { p.lo_offset.max(0) };
                if end >= 0 {
                    let name = format!("kafka:{topic}/{partition}");
                    crate::metrics::METRICS.lag.with_label_values(&[name.as_str()]).set((end - read).max(0));
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition is news, not an error.
        if matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            return;
        }
        crate::metrics::METRICS.kafka_errors.inc();
        // Connection failures are retried by librdkafka itself. Every client of the job reports
        // the same outage: say it at most once a second.
        static LAST: Mutex<Option<Instant>> = Mutex::new(None);
        static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
        let Ok(mut last) = LAST.lock() else { return };
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
        tracing::warn!(target: "librdkafka", suppressed, "Kafka client: {reason} (retrying)");
    }
}

impl ConsumerContext for LogContext {}

/// Settings exactly-once and the sources rest on: `--kafka-option` may not change them.
const PROTECTED_OPTIONS: [(&str, &str); 9] = [
    ("bootstrap.servers", "set the brokers with --kafka"),
    ("enable.idempotence", "the outputs are written exactly once only by an idempotent producer"),
    ("acks", "a record counts as written only once every in-sync replica has it"),
    ("request.required.acks", "a record counts as written only once every in-sync replica has it"),
    ("transactional.id", "threatflow writes exactly once by idempotence and read-back, not transactions"),
    ("enable.auto.commit", "input positions are kept in threatflow's checkpoints, never committed"),
    ("enable.auto.offset.store", "input positions are kept in threatflow's checkpoints, never committed"),
    ("enable.partition.eof", "the sources need to know when a partition is read to its end"),
    ("isolation.level", "the read-back of outputs after a restore must see every record written"),
];

/// Whether a setting holds a secret (its value is never logged, shown or stored in artifacts).
pub fn is_secret_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "sasl.jaas.config", "private.key", "key.pem", "token"].iter().any(|s| key.contains(s))
}

/// Parses `key=value` settings (from `--kafka-option`, an options file or the environment),
/// refusing the [protected ones](PROTECTED_OPTIONS).
pub fn parse_options(pairs: &[String]) -> Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                let key = k.trim();
                if let Some((_, why)) = PROTECTED_OPTIONS.iter().find(|(protected, _)| *protected == key) {
                    bail!("Kafka setting {key:?} cannot be changed: {why}");
                }
                Ok((key.to_string(), v.to_string()))
            }
            _ => {
                let shown = pair.split_once('=').map_or("", |(k, _)| k);
                bail!("Kafka setting {shown:?}: expected key=value")
            }
        })
        .collect()
}

/// `key=value` lines of a client properties file or of an environment variable (blank lines and
/// `#` comments skipped), so that secrets need not be on the command line.
pub fn option_lines(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect()
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options: Vec<(&str, &str)> =
            self.options.iter().map(|(k, v)| (k.as_str(), if is_secret_option(k) { "***" } else { v.as_str() })).collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("options", &options)
            .field("topics", &self.topics)
            .field("create_topics", &self.create_topics)
            .field("partitions", &self.partitions)
            .field("connect_timeout", &self.connect_timeout)
            .field("control_key", &self.control_key)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_and_secret_options() {
        let err = parse_options(&["acks=0".into()]).unwrap_err().to_string();
        assert!(err.contains("\"acks\" cannot be changed"), "{err}");
        assert!(parse_options(&["enable.idempotence=false".into()]).is_err());
        let err = parse_options(&["sasl.password".into()]).unwrap_err().to_string();
        assert!(err.contains("expected key=value"), "{err}");
        let lines = option_lines("# client.properties\n\nsecurity.protocol=SASL_SSL\n sasl.password=hunter2 \n");
        let mut config = KafkaConfig::new("b:9092");
        config.options = parse_options(&lines).unwrap();
        assert_eq!(config.options[1], ("sasl.password".to_string(), "hunter2".to_string()));
        let shown = format!("{config:?}");
        assert!(shown.contains("SASL_SSL") && !shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn topics_and_options() {
        let config = KafkaConfig::new("b:9092").with_topics(&["decisions=out".into()]).unwrap();
        assert_eq!(config.topic(Role::Decisions), "out");
        assert_eq!(config.topic(Role::DeadLetters), "dead-letters");
        assert!(KafkaConfig::new("b").with_topics(&["nope=x".into()]).is_err());
        assert!(KafkaConfig::new("b").with_topics(&["decisions".into()]).is_err());
        let options = parse_options(&["security.protocol=SASL_SSL".into(), "sasl.password=a=b".into()]).unwrap();
        assert_eq!(options[1], ("sasl.password".to_string(), "a=b".to_string()));
        assert!(parse_options(&["=x".into()]).is_err());
    }
}
