//! Kafka topic partitions as partitions of the event source.
//!
//! Each worker owns the partitions `p` with `p % peers == index` and reads them through one
//! consumer, with one queue per partition, so the source's per-partition watermarks work exactly as
//! for files. Nothing is committed: the next offset of each partition is kept here (checkpoints
//! record it). A partition that has reached its end and stayed quiet for the idle timeout stops
//! holding the frontier back; with `until_end`, a partition is exhausted at the end offset it had
//! when the job started.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::Offset;

use super::{assign, KafkaConfig, LogContext, Role};
use crate::checkpoint::{Checkpoint, PartitionPosition};
use crate::event::{DeadLetter, Position, RejectReason, Time};
use crate::ingest::partition::{Decoding, Item, Partition};

/// The activity topic as a source.
#[derive(Clone, Debug)]
pub struct KafkaSource {
    /// Connection and topic names.
    pub config: KafkaConfig,
    /// Stop each partition at the end offset it had when the job started (a bounded run).
    pub until_end: bool,
    /// A partition at its end for this long no longer holds the frontier back (unbounded runs).
    pub idle_timeout: Duration,
    /// What [`KafkaSource::prepare`] found: the partition count and, with `until_end`, the end offsets.
    pub resolved: Option<(usize, Option<Vec<i64>>)>,
}

impl KafkaSource {
    /// Reads the activity topic of `config`.
    pub fn new(config: KafkaConfig, until_end: bool) -> Self {
        KafkaSource { config, until_end, idle_timeout: Duration::from_secs(1), resolved: None }
    }

    /// Waits for the broker, checks (or creates) the topic, and reads its end offsets when bounded.
    pub fn prepare(&mut self) -> Result<()> {
        let topic = self.config.topic(Role::Activity).to_string();
        let partitions = self.config.partition_counts(&[&topic])?[0];
        let ends = if self.until_end {
            let consumer = self.config.consumer()?;
            Some(self.config.end_offsets(&consumer, &topic, partitions)?)
        } else {
            None
        };
        tracing::info!(topic, partitions, ends = ?ends, "Kafka source ready");
        self.resolved = Some((partitions, ends));
        Ok(())
    }

    /// The partitions worker `index` of `peers` reads, through one consumer, each from its
    /// beginning or from the offset `restored` recorded for it.
    pub fn partitions(
        &self,
        index: usize,
        peers: usize,
        decoding: &Decoding,
        restored: Option<&Checkpoint>,
    ) -> Result<Vec<Box<dyn Partition>>> {
        let (count, ends) = self.resolved.clone().context("the Kafka source was not prepared")?;
        let topic = self.config.topic(Role::Activity).to_string();
        let mine: Vec<usize> = (0..count).filter(|p| p % peers == index).collect();
        if mine.is_empty() {
            return Ok(Vec::new());
        }
        let name = |p: usize| format!("kafka:{topic}/{p}");
        let start = |p: usize| match restored.and_then(|c| c.partitions.get(&name(p))).map(|part| &part.position) {
            Some(PartitionPosition::Offset(offset)) => Ok(*offset),
            Some(other) => anyhow::bail!("the checkpoint holds {other:?} for Kafka partition {}", name(p)),
            None => Ok(0),
        };
        let starts = mine.iter().map(|p| start(*p)).collect::<Result<Vec<i64>>>()?;
        let consumer = Arc::new(self.config.consumer()?);
        // Records a restored checkpoint still had to read may have been deleted by retention
        // meanwhile: never skipped silently.
        let mut lost = Vec::with_capacity(mine.len());
        for (p, start) in mine.iter().zip(&starts) {
            let gone = match restored {
                Some(_) => {
                    let (low, _) = consumer
                        .fetch_watermarks(&topic, *p as i32, Duration::from_secs(30))
                        .with_context(|| format!("reading the first offset of {}", name(*p)))?;
                    (low > *start).then_some((*start, low))
                }
                None => None,
            };
            if let Some((from, to)) = gone {
                tracing::error!(partition = %name(*p), from, to, lost = to - from, "records the checkpoint had still to read were deleted by the broker (retention): lost");
            }
            lost.push(gone);
        }
        let assignment: Vec<(&str, i32, Offset)> =
            mine.iter().zip(&starts).map(|(p, s)| (topic.as_str(), *p as i32, Offset::Offset(*s))).collect();
        assign(&consumer, &assignment)?;
        let early: EarlyMessages = Rc::default();
        let mut parts: Vec<Box<dyn Partition>> = Vec::new();
        for ((p, next_offset), lost) in mine.into_iter().zip(starts).zip(lost) {
            let queue = consumer
                .split_partition_queue(&topic, p as i32)
                .with_context(|| format!("no queue for partition {topic}/{p}"))?;
            parts.push(Box::new(KafkaPartition {
                name: name(p).into(),
                partition: p as i32,
                consumer: Arc::clone(&consumer),
                queue,
                early: Rc::clone(&early),
                end: ends.as_ref().map(|e| e[p]),
                next_offset,
                at_end: false,
                last_record: Instant::now(),
                last_warning: None,
                idle_timeout: self.idle_timeout,
                decoding: decoding.clone(),
                lost,
            }));
        }
        Ok(parts)
    }
}

/// Messages the consumer fetched for a partition before its queue was split off (they arrive
/// through the consumer's main queue), by partition: `(offset, payload)`.
type EarlyMessages = Rc<RefCell<HashMap<i32, VecDeque<EarlyMessage>>>>;

/// A message read before its partition's queue was split off: offset, timestamp, payload.
type EarlyMessage = (i64, Option<Time>, Option<Vec<u8>>);

/// One topic partition.
pub struct KafkaPartition {
    name: std::sync::Arc<str>,
    consumer: Arc<BaseConsumer<LogContext>>,
    queue: rdkafka::consumer::base_consumer::PartitionQueue<LogContext>,
    partition: i32,
    /// Shared by the partitions of one consumer.
    early: EarlyMessages,
    end: Option<i64>,
    next_offset: i64,
    at_end: bool,
    last_record: Instant,
    last_warning: Option<Instant>,
    idle_timeout: Duration,
    decoding: Decoding,
    /// Offsets deleted before they could be read (`from`, `to`), reported by the first poll.
    lost: Option<(i64, i64)>,
}

impl KafkaPartition {
    fn exhausted(&self) -> bool {
        self.end.is_some_and(|end| self.next_offset >= end)
    }

    /// Logs a consumer error, at most once every 5 seconds per partition (librdkafka retries).
    fn warn(&mut self, error: &KafkaError) {
        if self.last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
            tracing::warn!(partition = %self.name, "Kafka consumer: {error} (librdkafka retries)");
            self.last_warning = Some(Instant::now());
        }
    }

    /// Gives the record at `offset`; returns whether the partition is now exhausted.
    fn accept(&mut self, offset: i64, items: Vec<Item>, out: &mut Vec<Item>) -> bool {
        out.extend(items);
        self.next_offset = offset + 1;
        self.at_end = false;
        self.last_record = Instant::now();
        self.exhausted()
    }

    /// The items of the record at `offset` (several when it holds a list of provider records),
    /// written at `written`.
    fn items(&self, offset: i64, written: Option<Time>, payload: Option<&[u8]>) -> Vec<Item> {
        let bytes = payload.unwrap_or_default();
        let position = || Position { source: std::sync::Arc::clone(&self.name), record: offset as u64, offset: offset as u64 };
        let mut items = Vec::with_capacity(1);
        self.decoding.read(bytes, bytes.len(), written, position, None, &mut items);
        items
    }
}

impl Partition for KafkaPartition {
    fn name(&self) -> String {
        self.name.to_string()
    }

    fn poll(&mut self, max: usize, out: &mut Vec<Item>) -> Result<bool> {
        if let Some((from, to)) = self.lost.take() {
            let position = Position { source: std::sync::Arc::clone(&self.name), record: from as u64, offset: from as u64 };
            let reason = RejectReason::Lost { from, to };
            crate::metrics::METRICS.rejected.with_label_values(&[reason.class()]).inc();
            out.push(Item::Lost(DeadLetter::new(&reason, position, &[], 0)));
            self.next_offset = self.next_offset.max(to);
        }
        if self.exhausted() {
            return Ok(false);
        }
        // Serves the consumer's events (errors, logs). Every partition has its own queue, but
        // messages fetched before it was split off come through the main queue: kept for their
        // partition, never dropped.
        while let Some(result) = self.consumer.poll(Duration::ZERO) {
            match result {
                Ok(message) => {
                    let mut early = self.early.borrow_mut();
                    let queue = early.entry(message.partition()).or_default();
                    queue.push_back((message.offset(), written(&message), message.payload().map(<[u8]>::to_vec)));
                }
                Err(error) => {
                    self.warn(&error);
                    break;
                }
            }
        }
        let partition = self.partition;
        let early: Vec<EarlyMessage> = self.early.borrow_mut().get_mut(&partition).map(|q| q.drain(..).collect()).unwrap_or_default();
        if !early.is_empty() {
            tracing::debug!(partition = %self.name, messages = early.len(), "messages fetched before the partition's queue was split off");
        }
        for (offset, written, payload) in early {
            if offset >= self.next_offset {
                let items = self.items(offset, written, payload.as_deref());
                if self.accept(offset, items, out) {
                    return Ok(false);
                }
            }
        }
        for _ in 0..max {
            let next = match self.queue.poll(Duration::ZERO) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    self.at_end = true;
                    break;
                }
                Some(Err(error)) => {
                    self.warn(&error);
                    break;
                }
                Some(Ok(message)) => (message.offset(), self.items(message.offset(), written(&message), message.payload())),
            };
            let (offset, items) = next;
            if self.accept(offset, items, out) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn position(&self) -> Option<PartitionPosition> {
        Some(PartitionPosition::Offset(self.next_offset))
    }

    /// The consumer was assigned at the recorded offset when the partition was made.
    fn seek(&mut self, position: &PartitionPosition) -> Result<()> {
        match position {
            PartitionPosition::Offset(offset) if *offset == self.next_offset => Ok(()),
            other => anyhow::bail!("{} was assigned at offset {}, not at {other:?}", self.name, self.next_offset),
        }
    }

    fn wake_on_arrival(&mut self, wake: std::sync::Arc<dyn Fn() + Send + Sync>) -> bool {
        self.queue.set_nonempty_callback(move || wake());
        true
    }

    fn idle(&self) -> bool {
        self.end.is_none() && self.at_end && self.last_record.elapsed() >= self.idle_timeout
    }
}

/// When a message was written: its timestamp (the producer's clock, or the broker's with
/// `LogAppendTime`), the reference for its events' plausible times.
fn written(message: &impl Message) -> Option<Time> {
    message.timestamp().to_millis().and_then(|ms| Time::try_from(ms).ok())
}
