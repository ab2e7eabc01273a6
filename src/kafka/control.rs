//! Model and rule updates from their Kafka topics, applied at their `effective_from`.
//!
//! A reader thread (on process 0) follows the models and rules topics. In rounds, it notes the
//! wall-clock instant, asks the broker for the topics' end offsets, reads up to them, and reports
//! the updates read with that instant: everything published before it has now been read.
//!
//! Worker 0 owns the control input. It only advances it to an events frontier it observed *before*
//! the instant of a report, so an update published (and acknowledged) before the events it must
//! apply to is always in the collection before those events are decided: decisions switch exactly
//! at `effective_from`. An update whose `effective_from` is already behind the control input
//! applies from the input's time instead, and says so in the log.
//!
//! Checkpoints hold the [`ControlLog`] (every update with the time it was applied from) and the
//! offsets of the rounds applied; a restored job starts from both, so an update keeps the time it
//! was first applied from.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use differential_dataflow::input::InputSession;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{KafkaConfig, LogContext, Role};
use crate::checkpoint::ControlCheckpoint;
use crate::control::{Control, ControlLog};
use crate::event::Time;
use crate::model::{self, Model, ModelUpdate};
use crate::rules::RuleSpec;

/// An update read from a control topic (models already fetched and verified).
#[derive(Debug)]
pub enum ControlMessage {
    /// A verified model and the time it applies from.
    Model(Time, Model),
    /// Rule updates.
    Rules(Vec<RuleSpec>),
}

/// A topic and a partition number.
type TopicPartition = (String, i32);

/// What the reader reports after each round.
#[derive(Debug)]
struct Round {
    /// Every update published before this instant has been read.
    started: Instant,
    /// The updates read in this round.
    messages: Vec<ControlMessage>,
    /// The next offset of every partition after this round.
    next: BTreeMap<TopicPartition, i64>,
}

/// Feeds the control input from the control topics (worker 0).
pub struct KafkaControl {
    log: ControlLog,
    rounds: Receiver<Round>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<Result<()>>>,
    /// Events frontiers observed and when (`None`: the events are complete).
    seen: VecDeque<(Instant, Option<Time>)>,
    last_seen: Option<Option<Time>>,
    /// The next offset of every partition after the rounds applied so far.
    applied: BTreeMap<TopicPartition, i64>,
}

impl KafkaControl {
    /// Starts the reader thread; `log` holds the job's static models and rules, unless a restored
    /// checkpoint's log and offsets are given.
    pub fn start(config: &KafkaConfig, log: ControlLog, restored: Option<&ControlCheckpoint>) -> Result<Self> {
        let (log, applied) = match restored {
            Some(c) => (c.log.clone(), c.offsets.clone()),
            None => (log, BTreeMap::new()),
        };
        let topics = [config.topic(Role::Models).to_string(), config.topic(Role::Rules).to_string()];
        let counts = config.partition_counts(&[&topics[0], &topics[1]])?;
        let consumer = config.consumer()?;
        let partitions: Vec<TopicPartition> =
            topics.iter().zip(counts).flat_map(|(topic, count)| (0..count as i32).map(move |p| (topic.clone(), p))).collect();
        let start = |key: &TopicPartition| applied.get(key).map_or(Offset::Beginning, |n| Offset::Offset(*n));
        let assignment: Vec<(&str, i32, Offset)> = partitions.iter().map(|key| (key.0.as_str(), key.1, start(key))).collect();
        super::assign(&consumer, &assignment)?;
        let next = applied.clone();
        let (sender, rounds) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let reader_stop = Arc::clone(&stop);
        let config = config.clone();
        let reader = std::thread::Builder::new()
            .name("control-reader".into())
            .spawn(move || read_rounds(&config, &consumer, &partitions, next, &sender, &reader_stop))
            .context("starting the control reader")?;
        Ok(KafkaControl { log, rounds, stop, reader: Some(reader), seen: VecDeque::new(), last_seen: None, applied })
    }

    /// Every update so far.
    pub fn log(&self) -> ControlLog {
        self.log.clone()
    }

    /// What a checkpoint keeps: every update applied so far and the offsets after them.
    pub fn checkpoint(&self) -> ControlCheckpoint {
        ControlCheckpoint { log: self.log.clone(), offsets: self.applied.clone() }
    }

    /// Applies the updates read so far and advances `input` as far as is safe, given the events
    /// frontier now; closes it (returns `true`) once the events are complete and the topics read.
    pub fn step(&mut self, input: &mut InputSession<Time, ((), Control), isize>, events_frontier: Option<Time>) -> Result<bool> {
        if self.last_seen != Some(events_frontier) {
            self.seen.push_back((Instant::now(), events_frontier));
            self.last_seen = Some(events_frontier);
        }
        let mut target = None;
        loop {
            let round = match self.rounds.try_recv() {
                Ok(round) => round,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Err(self.reader_error()),
            };
            for message in round.messages {
                self.apply(input, message);
            }
            self.applied = round.next;
            while let Some((seen_at, frontier)) = self.seen.front().copied() {
                if seen_at >= round.started {
                    break;
                }
                target = Some(frontier);
                self.seen.pop_front();
            }
        }
        match target {
            Some(Some(time)) if time > *input.time() => {
                input.advance_to(time);
                input.flush();
            }
            Some(None) => return Ok(true),
            _ => {}
        }
        Ok(false)
    }

    fn apply(&mut self, input: &mut InputSession<Time, ((), Control), isize>, message: ControlMessage) {
        let now = *input.time();
        let changes = match message {
            ControlMessage::Model(from, model) => {
                if from < now {
                    tracing::warn!(version = %model.version, effective_from = from, applies_from = now,
                        "model update arrived after its effective_from: it applies from the current frontier");
                }
                tracing::info!(version = %model.version, effective_from = from.max(now), "model update received");
                self.log.add_model(from.max(now), model)
            }
            ControlMessage::Rules(mut specs) => {
                for spec in specs.iter_mut() {
                    if spec.effective_from < now {
                        tracing::warn!(rule = %spec.id, effective_from = spec.effective_from, applies_from = now,
                            "rule update arrived after its effective_from: it applies from the current frontier");
                        spec.effective_from = now;
                    }
                    tracing::info!(rule = %spec.id, effective_from = spec.effective_from, remove = spec.remove, "rule update received");
                }
                self.log.add_rules(specs)
            }
        };
        for (control, time, diff) in changes {
            input.update_at(((), control), time, diff);
        }
    }

    fn reader_error(&mut self) -> anyhow::Error {
        match self.reader.take().map(JoinHandle::join) {
            Some(Ok(Err(error))) => error.context("reading the control topics"),
            Some(Err(_)) => anyhow!("the control reader panicked"),
            _ => anyhow!("the control reader stopped"),
        }
    }
}

impl Drop for KafkaControl {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// The reader thread: rounds until stopped.
fn read_rounds(
    config: &KafkaConfig,
    consumer: &BaseConsumer<LogContext>,
    partitions: &[(String, i32)],
    mut next: BTreeMap<TopicPartition, i64>,
    rounds: &Sender<Round>,
    stop: &AtomicBool,
) -> Result<()> {
    let models_topic = config.topic(Role::Models).to_string();
    // End offsets are asked on a connection of their own: on the reading consumer's, the request
    // would queue behind its waiting fetch.
    let offsets = config.consumer()?;
    let mut last_warning: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        // The end offsets of every assigned partition, in one request per broker.
        let ends = match end_offsets(&offsets, partitions, &mut next) {
            Ok(ends) => ends,
            Err(error) => {
                if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
                    tracing::warn!("control topics unreachable: {error}; retrying");
                    last_warning = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let mut messages = Vec::new();
        while ends.iter().any(|(key, end)| next.get(key).copied().unwrap_or(0) < *end) {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            match consumer.poll(Duration::from_millis(100)) {
                None | Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(error)) => tracing::warn!("control topics: {error}"),
                Some(Ok(message)) => {
                    let key = (message.topic().to_string(), message.partition());
                    next.insert(key, message.offset() + 1);
                    let position = format!("{}/{}@{}", message.topic(), message.partition(), message.offset());
                    let payload = message.payload().unwrap_or_default();
                    let parsed = if message.topic() == models_topic { parse_model(payload) } else { parse_rules(payload) };
                    match parsed {
                        Ok(m) => messages.push(m),
                        Err(error) => tracing::error!(position, "control update rejected, skipped: {error:#}"),
                    }
                }
            }
        }
        tracing::trace!(elapsed = ?started.elapsed(), updates = messages.len(), "control round");
        if rounds.send(Round { started, messages, next: next.clone() }).is_err() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// The end offsets of the control partitions. The first call also learns where each partition
/// starts (records before it may have been deleted), so that reading up to the end terminates.
/// `consumer` needs no assignment.
fn end_offsets(
    consumer: &BaseConsumer<LogContext>,
    partitions: &[(String, i32)],
    next: &mut BTreeMap<TopicPartition, i64>,
) -> Result<Vec<(TopicPartition, i64)>, KafkaError> {
    for (topic, p) in partitions {
        if let std::collections::btree_map::Entry::Vacant(entry) = next.entry((topic.clone(), *p)) {
            entry.insert(consumer.fetch_watermarks(topic, *p, Duration::from_secs(5))?.0);
        }
    }
    // The "timestamp" -1 (`Offset::End`) asks for the latest offset.
    let mut query = TopicPartitionList::new();
    for (topic, p) in partitions {
        query.add_partition_offset(topic, *p, Offset::End)?;
    }
    let latest = consumer.offsets_for_times(query, Duration::from_secs(5))?;
    Ok(latest
        .elements()
        .iter()
        .map(|e| {
            let end = match e.offset() {
                Offset::Offset(n) => n,
                _ => 0,
            };
            ((e.topic().to_string(), e.partition()), end)
        })
        .collect())
}

/// A model update: fetched and verified here, so that only verified models reach the dataflow.
fn parse_model(payload: &[u8]) -> Result<ControlMessage> {
    let update: ModelUpdate = serde_json::from_slice(payload).context("not a model update {version, uri, sha256, effective_from}")?;
    let model = model::load_update(&update, None)
        .with_context(|| format!("model {} rejected, the previous model stays in force", update.version))?;
    tracing::info!(version = %update.version, sha256 = %update.sha256, "model artifact fetched and verified");
    Ok(ControlMessage::Model(update.effective_from, model))
}

fn parse_rules(payload: &[u8]) -> Result<ControlMessage> {
    let text = std::str::from_utf8(payload).context("rule update is not UTF-8")?;
    Ok(ControlMessage::Rules(crate::rules::parse_rules(text)?))
}
