//! `threatflow produce` and `threatflow consume`: put a stream on a topic, read a topic back.
//!
//! `produce` is open loop: record `k` is sent at `start + k / rate`, whatever the broker or the
//! engine is doing, so a slow consumer cannot slow the offered load down (and hide its latency).
//! Generated events keep their generator partition's order (partition `g` goes to topic partition
//! `g % P`); lines of input file `i` go, in order, to topic partition `i % P`, so a topic holds
//! exactly what `threatflow replay` of the same files reads, partition for partition.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::message::Message;

use super::sink::KafkaProducer;
use super::KafkaConfig;
use crate::ingest::generator::{GeneratorConfig, GeneratorPartition};
use crate::ingest::partition::{Item, Partition};

/// What `produce` sends.
#[derive(Clone, Debug)]
pub enum ProduceInput {
    /// The embedded generator's events (keyed by user); with `retime`, each is stamped with the
    /// wall-clock time it is sent (ms), so that event time follows the clock (latency runs).
    Generator {
        /// The generated stream.
        config: GeneratorConfig,
        /// Stamp events with their send time.
        retime: bool,
    },
    /// The lines of files, as they are (malformed lines included; blank lines skipped).
    Files(Vec<PathBuf>),
}

/// Sends records to `topic`, at `rate` records per second when given (as fast as possible
/// otherwise), showing a progress bar when `progress`; returns the number of records sent once
/// the broker has acknowledged all of them.
pub fn produce(config: &KafkaConfig, topic: &str, input: ProduceInput, rate: Option<f64>, progress: bool) -> Result<u64> {
    let partitions = config.partition_counts(&[topic])?[0];
    let mut producer = KafkaProducer::new(config)?;
    let mut retime = false;
    let mut records: Box<dyn Iterator<Item = Result<Record>>> = match input {
        ProduceInput::Generator { config, retime: stamp } => {
            retime = stamp;
            let total = config.events;
            Box::new(generated(config, partitions).map(Ok).take(total as usize))
        }
        ProduceInput::Files(paths) => {
            if paths.len() > partitions {
                tracing::warn!(files = paths.len(), partitions, "more files than partitions: some partitions interleave several files");
            }
            Box::new(file_lines(paths, partitions)?)
        }
    };
    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::no_length();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {human_pos} records ({per_sec})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar
    });
    let started = Instant::now();
    let mut sent = 0u64;
    for record in records.by_ref() {
        let record = record?;
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            let now = Instant::now();
            if due > now + Duration::from_micros(500) {
                std::thread::sleep(due - now);
            }
        }
        let payload = match record.payload {
            Payload::Bytes(bytes) => bytes,
            Payload::Event(mut event) => {
                if retime {
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                    event.ts = now.as_millis() as u64;
                }
                event.to_json().into_bytes()
            }
        };
        producer.send(topic, Some(record.partition), record.key.as_deref(), &payload)?;
        sent += 1;
        if let Some(bar) = bar.as_ref().filter(|_| sent.is_multiple_of(1024)) {
            bar.set_position(sent);
        }
    }
    producer.flush()?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(records = sent, topic, seconds, per_second = sent as f64 / seconds.max(1e-9), "produced");
    Ok(sent)
}

/// Sends one record to `topic` (partition chosen by the producer) and waits for its
/// acknowledgement.
pub fn send_one(config: &KafkaConfig, topic: &str, payload: &[u8]) -> Result<()> {
    config.partition_counts(&[topic])?;
    let mut producer = KafkaProducer::new(config)?;
    producer.send(topic, None, None, payload)?;
    producer.flush()
}

/// One record to send.
struct Record {
    partition: i32,
    key: Option<Vec<u8>>,
    payload: Payload,
}

/// A record's value: bytes as they are, or an event serialized when it is sent.
enum Payload {
    Bytes(Vec<u8>),
    Event(Box<crate::event::Event>),
}

/// The generator's events, its partitions merged by time, each keeping its own order.
fn generated(config: GeneratorConfig, topic_partitions: usize) -> impl Iterator<Item = Record> {
    let mut parts: Vec<(GeneratorPartition, VecDeque<crate::event::Event>, bool)> = (0..config.partitions)
        .map(|p| (GeneratorPartition::new(config.clone(), p), VecDeque::new(), true))
        .collect();
    let mut items = Vec::new();
    std::iter::from_fn(move || {
        // Refill empty buffers, then take the earliest head.
        for (partition, buffer, open) in parts.iter_mut() {
            while buffer.is_empty() && *open {
                items.clear();
                // The generator cannot fail; an error would only end its partition.
                *open = partition.poll(1024, &mut items).unwrap_or(false);
                buffer.extend(items.drain(..).filter_map(|item| match item {
                    Item::Event(event) => Some(event),
                    Item::Rejected(_) | Item::Lost(_) | Item::Label(_) | Item::Record(_) => None,
                }));
            }
        }
        let (index, _) = parts.iter().enumerate().filter_map(|(i, (_, b, _))| b.front().map(|e| (i, e.ts))).min_by_key(|(_, ts)| *ts)?;
        let event = parts[index].1.pop_front()?;
        Some(Record {
            partition: (index % topic_partitions) as i32,
            key: Some(event.user.as_bytes().to_vec()),
            payload: Payload::Event(Box::new(event)),
        })
    })
}

/// The lines of the files, one line of each file in turn.
fn file_lines(paths: Vec<PathBuf>, topic_partitions: usize) -> Result<impl Iterator<Item = Result<Record>>> {
    let mut readers = paths
        .iter()
        .map(|path| {
            let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            Ok((path.clone(), BufReader::with_capacity(1 << 20, file)))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut open: Vec<usize> = (0..readers.len()).collect();
    let mut turn = 0;
    Ok(std::iter::from_fn(move || loop {
        if open.is_empty() {
            return None;
        }
        turn %= open.len();
        let index = open[turn];
        let (path, reader) = &mut readers[index];
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Err(e) => return Some(Err(anyhow::Error::from(e).context(format!("reading {}", path.display())))),
            Ok(0) => {
                open.remove(turn);
                continue;
            }
            Ok(_) => {
                turn += 1;
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                // Blank lines are not records (as for `replay`).
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(Ok(Record { partition: (index % topic_partitions) as i32, key: None, payload: Payload::Bytes(line) }));
            }
        }
    }))
}

/// Writes every record of `topic` to `out`, one per line (in offset order within a partition): up
/// to the end offsets the topic has when the call starts, or, with `follow`, until `stop` is set.
/// With `timestamps`, each line starts with the record's timestamp and the time it was received
/// (ms since the epoch), tab-separated (for latency measurements). Returns the number of records.
pub fn consume(
    config: &KafkaConfig,
    topic: &str,
    follow: bool,
    timestamps: bool,
    stop: &AtomicBool,
    out: &mut dyn Write,
) -> Result<u64> {
    let partitions = config.partition_counts(&[topic])?[0];
    let count = super::read_topic(config, topic, &vec![None; partitions], follow, stop, |message| {
        if timestamps {
            let received = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let created = message.timestamp().to_millis().unwrap_or(-1);
            write!(out, "{created}\t{}\t", received.as_millis()).context("writing records")?;
        }
        out.write_all(message.payload().unwrap_or_default()).context("writing records")?;
        out.write_all(b"\n").context("writing records")
    })?;
    out.flush().context("writing records")?;
    Ok(count)
}
