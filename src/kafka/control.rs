//! Model, rule and mark updates from their Kafka topics: the reader behind a [`ControlFeed`] (see
//! [`crate::control::feed`] for how updates are applied exactly at their `effective_from`).
//!
//! Each round notes the wall-clock instant, asks the broker for the topics' end offsets and reads
//! up to them: everything published (and acknowledged) before that instant has then been read.
//! The next round starts as soon as worker 0 observes a new events frontier.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{KafkaConfig, LogContext, Role};
use crate::checkpoint::operator::StatePart;
use crate::control::feed::{await_new_frontier, verified_model, ControlCheckpoint, ControlFeed, ControlMessage, FeedPosition, Reader, Round, Rounds};
use crate::control::signing;
use crate::detect::control::ControlLog;
use crate::detect::model::ModelUpdate;

/// Starts following the models and rules topics; `log` holds the job's static models and rules,
/// unless a restored checkpoint's log and offsets are given.
pub fn start(config: &KafkaConfig, log: ControlLog, restored: Option<&StatePart>) -> Result<ControlFeed> {
    let mut roles = vec![Role::Models, Role::Rules, Role::Marks];
    if config.intel_topic {
        roles.push(Role::Intel);
    }
    let topics: Vec<String> = roles.iter().map(|r| config.topic(*r).to_string()).collect();
    let counts = config.partition_counts(&topics.iter().map(String::as_str).collect::<Vec<_>>())?;
    let consumer = config.consumer()?;
    let partitions: Vec<FeedPosition> =
        topics.iter().zip(counts).flat_map(|(topic, count)| (0..count as i32).map(move |p| (topic.clone(), p))).collect();
    let applied = restored.map(ControlCheckpoint::decode).transpose()?.map(|c| c.offsets).unwrap_or_default();
    let start = |key: &FeedPosition| applied.get(key).map_or(Offset::Beginning, |n| Offset::Offset(*n));
    let assignment: Vec<(&str, i32, Offset)> = partitions.iter().map(|key| (key.0.as_str(), key.1, start(key))).collect();
    super::assign(&consumer, &assignment)?;
    let config = config.clone();
    let reader: Reader = Box::new(move |next, rounds, stop| read_rounds(&config, &consumer, &partitions, next, &rounds, &stop));
    ControlFeed::start("control-reader", reader, log, restored)
}

/// The reader thread: rounds until stopped.
fn read_rounds(
    config: &KafkaConfig,
    consumer: &BaseConsumer<LogContext>,
    partitions: &[(String, i32)],
    mut next: BTreeMap<FeedPosition, i64>,
    rounds: &Rounds,
    stop: &AtomicBool,
) -> Result<()> {
    let models_topic = config.topic(Role::Models).to_string();
    let marks_topic = config.topic(Role::Marks).to_string();
    let intel_topic = config.topic(Role::Intel).to_string();
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
        let behind = |next: &BTreeMap<FeedPosition, i64>| ends.iter().any(|(key, end)| next.get(key).copied().unwrap_or(0) < *end);
        if behind(&next) {
            fetching(consumer, partitions, true);
        }
        while behind(&next) {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            match consumer.poll(Duration::from_millis(100)) {
                None | Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(error)) => tracing::warn!("control topics: {error}"),
                Some(Ok(message)) => {
                    let key = (message.topic().to_string(), message.partition());
                    if next.get(&key).is_some_and(|n| message.offset() < *n) {
                        continue; // Read before a pause; librdkafka resumes after what was polled.
                    }
                    next.insert(key, message.offset() + 1);
                    let position = format!("{}/{}@{}", message.topic(), message.partition(), message.offset());
                    let payload = message.payload().unwrap_or_default();
                    let parsed = signing::open(config.control_key.as_ref(), payload).and_then(|update| {
                        let update = update.as_bytes();
                        if message.topic() == models_topic {
                            parse_model(update)
                        } else if message.topic() == marks_topic {
                            parse_marks(update)
                        } else if message.topic() == intel_topic {
                            parse_indicators(update, &position)
                        } else {
                            parse_rules(update)
                        }
                    });
                    match parsed {
                        Ok(m) => messages.push(m),
                        Err(error) => tracing::error!(position, "control update rejected, skipped: {error:#}"),
                    }
                }
            }
        }
        fetching(consumer, partitions, false);
        tracing::trace!(elapsed = ?started.elapsed(), updates = messages.len(), "control round");
        if rounds.send(Round { started, messages, next: next.clone() }).is_err() {
            return Ok(());
        }
        // Without new events, a round every 100 ms still picks up what is published.
        await_new_frontier(Duration::from_millis(100));
    }
    Ok(())
}

/// Resumes or pauses fetching the control partitions. They are fetched only while a round has
/// records to read: an idle control topic then costs the broker only the end-offset requests, not
/// a fetch every `fetch.wait.max.ms`. (A failure only costs those fetches: logged.)
fn fetching(consumer: &BaseConsumer<LogContext>, partitions: &[(String, i32)], on: bool) {
    let mut list = TopicPartitionList::new();
    for (topic, p) in partitions {
        list.add_partition(topic, *p);
    }
    let result = if on { consumer.resume(&list) } else { consumer.pause(&list) };
    if let Err(error) = result {
        tracing::warn!(on, "pausing or resuming the control partitions: {error}");
    }
}

/// The end offsets of the control partitions. The first call also learns where each partition
/// starts (records before it may have been deleted), so that reading up to the end terminates.
/// `consumer` needs no assignment.
fn end_offsets(
    consumer: &BaseConsumer<LogContext>,
    partitions: &[(String, i32)],
    next: &mut BTreeMap<FeedPosition, i64>,
) -> Result<Vec<(FeedPosition, i64)>, KafkaError> {
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
    verified_model(&update, None)
}

/// A mark update (one JSON object per message).
fn parse_marks(payload: &[u8]) -> Result<ControlMessage> {
    let text = std::str::from_utf8(payload).context("mark is not UTF-8")?;
    Ok(ControlMessage::Marks(vec![crate::detect::marks::parse_update(text.trim())?]))
}

/// Threshold-rule updates (JSON or YAML), or Sigma rules (YAML documents with a `detection`,
/// from their `effective_from` key or 0). A Sigma removal is a threshold removal of its id.
fn parse_rules(payload: &[u8]) -> Result<ControlMessage> {
    let text = std::str::from_utf8(payload).context("rule update is not UTF-8")?;
    if crate::detect::sigma::is_sigma(text) {
        let specs = crate::detect::rules::parse_sigma_updates(text)?;
        return Ok(ControlMessage::Rules(specs));
    }
    Ok(ControlMessage::Rules(crate::detect::rules::parse_rules(text)?))
}

/// An intel topic message: indicators in any of the file formats; one that holds none is refused.
fn parse_indicators(update: &[u8], position: &str) -> Result<ControlMessage> {
    let text = std::str::from_utf8(update).context("an indicator update that is not UTF-8")?;
    let (updates, refused) = crate::control::intel::parse_indicators(text, "intel");
    for why in &refused {
        tracing::error!(position, "indicator refused, skipped: {why}");
    }
    anyhow::ensure!(!updates.is_empty(), "no indicator in the message");
    Ok(ControlMessage::Indicators(updates))
}
