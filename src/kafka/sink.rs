//! Decisions, alerts, actions and dead letters to their Kafka topics.
//!
//! One idempotent producer (on worker 0) writes every output: librdkafka retries each message
//! until the broker acknowledges it, without duplicating or reordering it within a partition,
//! through a broker restart. Decisions, alerts and actions are keyed by user, so one user's
//! records stay in order in one partition; dead letters are keyed by their source partition.
//! Every record carries its `decision_id` (dead letters their position).
//!
//! Exactly once without broker transactions: the producer tracks the end offset acknowledged per
//! output partition ([`Ledger`]), and checkpoints record it when a barrier is sent (before any
//! record of a time at or after the barrier is queued), and commit once every record before the
//! barrier is acknowledged. A restored job reads each output partition from there to its end, and
//! does not write again the records it finds (by `decision_id`, action, dead-letter position).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use super::{KafkaConfig, LogContext, Role};
use crate::checkpoint::coordinator::AsyncOutputs;
use crate::detect::decision::Decision;
use crate::event::{DeadLetter, Position, Time};
use crate::output::{ActionCommand, AlertsFormat, Output};
use crate::detect::action::ThreatAction;

/// Counts deliveries, keeps the first failure, and tracks what is acknowledged.
#[derive(Default)]
pub struct DeliveryContext {
    delivered: AtomicU64,
    failed: AtomicU64,
    /// Records the broker refused for good (too large, invalid): logged and counted, not retried.
    unwritable: AtomicU64,
    first_failure: Mutex<Option<String>>,
    ledger: Ledger,
}

/// What the producer has queued and the broker acknowledged, shared with the delivery callbacks.
#[derive(Clone, Default)]
pub struct Ledger(Arc<(Mutex<LedgerState>, Condvar)>);

#[derive(Default)]
struct LedgerState {
    /// Per topic, per partition: the offset after the last record acknowledged.
    ends: BTreeMap<String, Vec<i64>>,
    /// Sequence numbers of the records queued and not yet acknowledged or failed.
    in_flight: BTreeSet<usize>,
    next_sequence: usize,
    /// Whether a record could not be delivered (the job then fails).
    failed: bool,
}

impl LedgerState {
    fn advance(&mut self, topic: &str, partition: i32, end: i64) {
        let Ok(partition) = usize::try_from(partition) else { return };
        let ends = match self.ends.get_mut(topic) {
            Some(ends) => ends,
            None => self.ends.entry(topic.to_string()).or_default(),
        };
        if ends.len() <= partition {
            ends.resize(partition + 1, 0);
        }
        ends[partition] = ends[partition].max(end);
    }
}

impl Ledger {
    fn state(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        // The state stays consistent whatever a panicking holder did: every update is one step.
        self.0 .0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn queue(&self) -> usize {
        let mut state = self.state();
        let sequence = state.next_sequence;
        state.next_sequence += 1;
        state.in_flight.insert(sequence);
        sequence
    }

    /// The record `sequence` is acknowledged at `(topic, partition, offset)`, or (`None`) failed.
    fn done(&self, sequence: usize, acknowledged: Option<(&str, i32, i64)>) {
        let mut state = self.state();
        state.in_flight.remove(&sequence);
        match acknowledged {
            Some((topic, partition, offset)) => state.advance(topic, partition, offset + 1),
            None => state.failed = true,
        }
        self.0 .1.notify_all();
    }

    /// The record `sequence` will never be written (see [`refused_for_good`]).
    fn skipped(&self, sequence: usize) {
        self.state().in_flight.remove(&sequence);
        self.0 .1.notify_all();
    }

    /// Notes that everything before `end` of a partition is acknowledged (a partition's end offset
    /// when the producer starts).
    fn start_at(&self, topic: &str, partition: i32, end: i64) {
        self.state().advance(topic, partition, end);
    }

    /// The end offsets acknowledged so far, by `(topic, partition)`.
    pub fn acknowledged(&self) -> BTreeMap<(String, i32), i64> {
        let state = self.state();
        state.ends.iter().flat_map(|(topic, ends)| ends.iter().enumerate().map(|(p, end)| ((topic.clone(), p as i32), *end))).collect()
    }

    /// A mark after every record queued so far.
    pub fn mark(&self) -> usize {
        self.state().next_sequence
    }

    /// Waits until every record queued before `mark` is acknowledged; fails if one could not be.
    pub fn wait(&self, mark: usize) -> Result<()> {
        let mut state = self.state();
        let started = std::time::Instant::now();
        while state.in_flight.first().is_some_and(|s| *s < mark) {
            let (next, timeout) = self.0 .1.wait_timeout(state, Duration::from_secs(10)).unwrap_or_else(std::sync::PoisonError::into_inner);
            state = next;
            if timeout.timed_out() {
                tracing::warn!(waited = ?started.elapsed(), "a checkpoint waits for the Kafka broker to acknowledge output records");
            }
        }
        if state.failed {
            bail!("output records could not be delivered to Kafka");
        }
        Ok(())
    }
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        LogContext.log(level, facility, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        LogContext.error(error, reason)
    }
}

/// Whether the broker (or the client) refuses a record whatever is tried again: it is too large or
/// invalid. Such a record is logged and counted instead of failing the job: it would fail the
/// same way after every restart, a crash loop.
fn refused_for_good(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize | RDKafkaErrorCode::InvalidRecord)
    )
}

impl DeliveryContext {
    fn unwritable_record(&self, error: &KafkaError, topic: &str, bytes: usize) {
        self.unwritable.fetch_add(1, Ordering::Relaxed);
        tracing::error!(topic, bytes, %error, "Kafka refused an output record for good; it is counted as unwritable and not retried");
    }
}

impl ProducerContext for DeliveryContext {
    /// The record's sequence number in the [`Ledger`].
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sequence: usize) {
        match result {
            Ok(message) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                self.ledger.done(sequence, Some((message.topic(), message.partition(), message.offset())));
            }
            Err((error, message)) if refused_for_good(error) => {
                self.unwritable_record(error, message.topic(), message.payload_len());
                self.ledger.skipped(sequence);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_failure.lock() {
                    first.get_or_insert_with(|| error.to_string());
                }
                self.ledger.done(sequence, None);
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
                // Batches of up to 5 ms (librdkafka's default): fewer, larger produce requests keep
                // the broker's queue short. Measured through nisshi at 25k-240k records/s, one hop
                // p99 8-10 ms instead of 20-300 ms with 1 ms batches.
                ("linger.ms", "5"),
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
        let sequence = self.producer.context().ledger.queue();
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, sequence).payload(payload);
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
                Err((error, _)) if refused_for_good(&error) => {
                    let context = self.producer.context();
                    context.unwritable_record(&error, topic, payload.len());
                    context.ledger.skipped(sequence);
                    return Ok(());
                }
                Err((error, _)) => {
                    self.producer.context().ledger.done(sequence, None);
                    return Err(error).with_context(|| format!("producing to Kafka topic {topic}"));
                }
            }
        }
    }

    /// Records queued so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// What is queued and acknowledged (kept up to date by the delivery callbacks).
    pub fn ledger(&self) -> Ledger {
        self.producer.context().ledger.clone()
    }

    /// Records refused for good (too large, invalid), logged and not retried.
    pub fn unwritable(&self) -> u64 {
        self.producer.context().unwritable.load(Ordering::Relaxed)
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
    /// Records a run before a restart wrote after the restored checkpoint's positions, with where
    /// they are and their time, as many as were found of each id (an input can repeat an event
    /// id): not written again, as many times.
    written_before: Rc<RefCell<HashMap<RecordId, Vec<WrittenRecord>>>>,
    suppressed: u64,
    alerts_format: AlertsFormat,
}

/// What identifies an output record across runs: its role and its id in that role.
type RecordId = (Role, String);
/// Where a record was written, and its time (`None` for dead letters, which do not carry it).
#[derive(Clone, Debug)]
struct WrittenRecord {
    topic: String,
    partition: i32,
    offset: i64,
    time: Option<Time>,
}

impl KafkaOutput {
    /// Checks (or creates) the output topics and creates the producer. A restored job passes its
    /// checkpoint's output positions: what was written from them on is read back, so as not to be
    /// written again.
    pub fn new(config: &KafkaConfig, resume: Option<&BTreeMap<(String, i32), i64>>) -> Result<Self> {
        let roles = [Role::Decisions, Role::Alerts, Role::Actions, Role::DeadLetters];
        let topics: Vec<&str> = roles.iter().map(|r| config.topic(*r)).collect();
        let counts = config.partition_counts(&topics)?;
        let producer = KafkaProducer::new(config)?;
        // Whatever this job writes goes after the current ends.
        let consumer = config.consumer()?;
        let ledger = producer.ledger();
        for (topic, count) in topics.iter().zip(&counts) {
            for (p, end) in config.end_offsets(&consumer, topic, *count)?.into_iter().enumerate() {
                ledger.start_at(topic, p as i32, end);
            }
        }
        let mut written_before = HashMap::new();
        if let Some(resume) = resume {
            let started = std::time::Instant::now();
            let never = AtomicBool::new(false);
            for ((role, topic), count) in roles.iter().zip(&topics).zip(&counts) {
                let starts: Vec<Option<i64>> = (0..*count).map(|p| resume.get(&(topic.to_string(), p as i32)).copied()).collect();
                super::read_topic(config, topic, &starts, false, &never, |message| {
                    match record_id(*role, message.payload().unwrap_or_default()) {
                        Some((id, time)) => {
                            let record = WrittenRecord { topic: topic.to_string(), partition: message.partition(), offset: message.offset(), time };
                            written_before.entry((*role, id)).or_insert_with(Vec::new).push(record);
                        }
                        None => tracing::warn!(topic, offset = message.offset(), "an output record without an id: ignored"),
                    }
                    Ok(())
                })?;
            }
            tracing::info!(
                records = written_before.len(),
                read_ms = started.elapsed().as_secs_f64() * 1e3,
                "output records written after the checkpoint before the restart: not written again"
            );
        }
        Ok(KafkaOutput {
            producer,
            decisions: config.topic(Role::Decisions).to_string(),
            alerts: config.topic(Role::Alerts).to_string(),
            actions: config.topic(Role::Actions).to_string(),
            dead_letters: config.topic(Role::DeadLetters).to_string(),
            buffer: Vec::new(),
            written_before: Rc::new(RefCell::new(written_before)),
            suppressed: 0,
            alerts_format: AlertsFormat::default(),
        })
    }

    /// Writes the alerts in `format`.
    pub fn with_alerts_format(mut self, format: AlertsFormat) -> Self {
        self.alerts_format = format;
        self
    }

    /// What checkpoints need of these outputs.
    pub fn checkpoint_view(&self) -> AsyncOutputs {
        let ledger = self.producer.ledger();
        let written_before = Rc::clone(&self.written_before);
        let positions = move |frontier: Time| {
            let mut positions = ledger.acknowledged();
            // A record a run before the restart wrote, that this run has not reached yet, must be
            // read again after another restart from this checkpoint, unless it is before the
            // checkpoint's frontier (such a restart does not decide it again; this run may still
            // have to, so it stays in the map): so the positions keep advancing across restarts.
            let written_before = written_before.borrow();
            for record in written_before.values().flatten().filter(|r| r.time.is_none_or(|time| time >= frontier)) {
                if let Some(position) = positions.get_mut(&(record.topic.clone(), record.partition)) {
                    *position = (*position).min(record.offset);
                }
            }
            positions
        };
        let ledger = self.producer.ledger();
        let mark = move || ledger.mark();
        let ledger = self.producer.ledger();
        AsyncOutputs { positions: Box::new(positions), mark: Box::new(mark), wait: Arc::new(move |mark| ledger.wait(mark)) }
    }

    /// Whether the record was written before a restart (one copy of its id is then forgotten: a
    /// record is written once, and a repeated id as many times as the input repeats it).
    fn written_before(&mut self, role: Role, id: impl FnOnce() -> String) -> bool {
        let mut written_before = self.written_before.borrow_mut();
        if written_before.is_empty() {
            return false;
        }
        let std::collections::hash_map::Entry::Occupied(mut copies) = written_before.entry((role, id())) else { return false };
        copies.get_mut().remove(0);
        if copies.get().is_empty() {
            copies.remove();
        }
        self.suppressed += 1;
        true
    }
}

/// The id of an output record of `role`, as [`KafkaOutput`] writes it, and its time.
fn record_id(role: Role, payload: &[u8]) -> Option<(String, Option<Time>)> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    // (An OCSF alert has its time in `time`.)
    let time = value.get("ts").or_else(|| value.get("time")).and_then(serde_json::Value::as_u64);
    let id = match role {
        Role::DeadLetters => {
            let position: Position = serde_json::from_value(value.get("position")?.clone()).ok()?;
            dead_letter_id(&position)
        }
        Role::Actions => action_id(&text(value.get("decision_id")?)?, &serde_json::from_value(value.get("action")?.clone()).ok()?),
        Role::Alerts => crate::output::alert_decision_id(&value)?.to_string(),
        _ => text(value.get("decision_id")?)?,
    };
    Some((id, time.filter(|_| role != Role::DeadLetters)))
}

fn action_id(decision_id: &str, action: &ThreatAction) -> String {
    format!("{decision_id}/{action:?}")
}

fn dead_letter_id(position: &Position) -> String {
    format!("{}#{}#{}", position.source, position.record, position.offset)
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
    fn decision(&mut self, decision: &Decision, alert: bool) -> Result<()> {
        let key = decision.user.as_bytes();
        if !self.written_before(Role::Decisions, || decision.decision_id.clone()) {
            send_json(&mut self.producer, &mut self.buffer, &self.decisions, key, decision)?;
        }
        if let Some(record) = alert.then(|| self.alerts_format.record(decision)).flatten() {
            if !self.written_before(Role::Alerts, || decision.decision_id.clone()) {
                send_json(&mut self.producer, &mut self.buffer, &self.alerts, key, &record)?;
            }
        }
        for command in ActionCommand::of(decision) {
            if !self.written_before(Role::Actions, || action_id(&command.decision_id, &command.action)) {
                send_json(&mut self.producer, &mut self.buffer, &self.actions, key, &command)?;
            }
        }
        Ok(())
    }

    fn dead_letter(&mut self, dead: &DeadLetter) -> Result<()> {
        if self.written_before(Role::DeadLetters, || dead_letter_id(&dead.position)) {
            return Ok(());
        }
        send_json(&mut self.producer, &mut self.buffer, &self.dead_letters, dead.position.source.as_bytes(), dead)
    }

    fn flush(&mut self) -> Result<()> {
        // Delivery is asynchronous; a failure so far ends the job.
        self.producer.check()
    }

    fn finish(&mut self) -> Result<()> {
        self.producer.flush()?;
        tracing::info!(
            records = self.producer.sent(),
            not_written_again = self.suppressed,
            unwritable = self.producer.unwritable(),
            "Kafka outputs delivered"
        );
        Ok(())
    }
}
