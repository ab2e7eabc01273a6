//! Decisions, alerts, actions and dead letters to their Kafka topics.
//!
//! One idempotent producer (on worker 0) writes every output: librdkafka retries each message
//! until the broker acknowledges it, without duplicating or reordering it within a partition,
//! through a broker restart. Decisions, alerts and actions are keyed by user, so one user's
//! records stay in order in one partition; dead letters are keyed by their source partition.
//! Every record carries its `decision_id` (dead letters their position) for readers to deduplicate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use super::{KafkaConfig, LogContext, Role};
use crate::decision::Decision;
use crate::event::DeadLetter;
use crate::output::{ActionCommand, Alert, Output};

/// Counts deliveries and keeps the first failure.
#[derive(Default)]
pub struct DeliveryContext {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        LogContext.log(level, facility, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        LogContext.error(error, reason)
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_failure.lock() {
                    first.get_or_insert_with(|| error.to_string());
                }
            }
        }
    }
}

/// An idempotent producer that waits for room when its queue is full.
pub struct KafkaProducer {
    producer: ThreadedProducer<DeliveryContext>,
    sent: u64,
    brokers: String,
}

impl KafkaProducer {
    /// Creates the producer (no connection is made until the first message).
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        let producer = config
            .client_config(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", "1"),
                ("queue.buffering.max.messages", "1000000"),
                // Retry for up to 10 minutes (a broker restart, a network blip) before failing the job.
                ("message.timeout.ms", "600000"),
            ])
            .create_with_context(DeliveryContext::default())
            .with_context(|| format!("creating a Kafka producer for {}", config.brokers))?;
        Ok(KafkaProducer { producer, sent: 0, brokers: config.brokers.clone() })
    }

    /// Queues one record; waits while the producer's queue is full.
    pub fn send(&mut self, topic: &str, partition: Option<i32>, key: Option<&[u8]>, payload: &[u8]) -> Result<()> {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => return Err(error).with_context(|| format!("producing to Kafka topic {topic}")),
            }
        }
    }

    /// Records queued so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Records the broker has acknowledged so far.
    pub fn delivered(&self) -> u64 {
        self.producer.context().delivered.load(Ordering::Relaxed)
    }

    /// Fails with the first delivery failure, if any.
    pub fn check(&self) -> Result<()> {
        let context = self.producer.context();
        let failed = context.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first = context.first_failure.lock().ok().and_then(|f| f.clone()).unwrap_or_default();
            bail!("{failed} records could not be delivered to Kafka on {}: {first}", self.brokers);
        }
        Ok(())
    }

    /// Waits until every queued record is acknowledged (or has failed).
    pub fn flush(&mut self) -> Result<()> {
        loop {
            match self.producer.flush(Duration::from_secs(10)) {
                Ok(()) => break,
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => {
                    tracing::warn!(
                        brokers = %self.brokers,
                        waiting = self.sent - self.delivered(),
                        "waiting for the Kafka broker to acknowledge output records"
                    );
                }
                Err(error) => return Err(error).context("flushing the Kafka producer"),
            }
        }
        self.check()
    }
}

/// The job's outputs on Kafka.
pub struct KafkaOutput {
    producer: KafkaProducer,
    decisions: String,
    alerts: String,
    actions: String,
    dead_letters: String,
    buffer: Vec<u8>,
}

impl KafkaOutput {
    /// Checks (or creates) the output topics and creates the producer.
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        let roles = [Role::Decisions, Role::Alerts, Role::Actions, Role::DeadLetters];
        let topics: Vec<&str> = roles.iter().map(|r| config.topic(*r)).collect();
        config.partition_counts(&topics)?;
        Ok(KafkaOutput {
            producer: KafkaProducer::new(config)?,
            decisions: config.topic(Role::Decisions).to_string(),
            alerts: config.topic(Role::Alerts).to_string(),
            actions: config.topic(Role::Actions).to_string(),
            dead_letters: config.topic(Role::DeadLetters).to_string(),
            buffer: Vec::new(),
        })
    }
}

/// Queues one JSON record, serialised into a reused buffer.
fn send_json<T: serde::Serialize>(
    producer: &mut KafkaProducer,
    buffer: &mut Vec<u8>,
    topic: &str,
    key: &[u8],
    value: &T,
) -> Result<()> {
    buffer.clear();
    serde_json::to_writer(&mut *buffer, value)?;
    producer.send(topic, None, Some(key), buffer)
}

impl Output for KafkaOutput {
    fn decision(&mut self, decision: &Decision) -> Result<()> {
        let key = decision.user.as_bytes();
        send_json(&mut self.producer, &mut self.buffer, &self.decisions, key, decision)?;
        if let Some(alert) = Alert::of(decision) {
            send_json(&mut self.producer, &mut self.buffer, &self.alerts, key, &alert)?;
        }
        for command in ActionCommand::of(decision) {
            send_json(&mut self.producer, &mut self.buffer, &self.actions, key, &command)?;
        }
        Ok(())
    }

    fn dead_letter(&mut self, dead: &DeadLetter) -> Result<()> {
        send_json(&mut self.producer, &mut self.buffer, &self.dead_letters, dead.position.source.as_bytes(), dead)
    }

    fn flush(&mut self) -> Result<()> {
        // Delivery is asynchronous; a failure so far ends the job.
        self.producer.check()
    }

    fn finish(&mut self) -> Result<()> {
        self.producer.flush()?;
        tracing::info!(records = self.producer.sent(), "Kafka outputs delivered");
        Ok(())
    }
}
