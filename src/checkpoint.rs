//! Consistent checkpoints: what a job needs to resume at a frontier `F`, and its durable format.
//!
//! A checkpoint at `F` holds the feature windows' state consolidated at `F` (every event judged
//! before `F` applied, none at or after it), each source partition's position before its first
//! record whose time is not below `F` (with its watermark and counts there), and each output's
//! position once every decision before `F` was written. Restoring it and reading on from the positions gives the same decisions
//! as a run that never stopped.
//!
//! Files are `ckpt-<F>.bin`: magic, format version, payload length, xxh3-128 of the payload, then
//! the payload (bincode of [`Checkpoint`]). They are written to a temporary name, synced, and
//! renamed (the commit); the newest file that reads back whole and verifies is used, and a broken
//! one is reported and skipped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::control::ControlLog;
use crate::event::Time;
use crate::features::{FeatureVal, UserKey};
use crate::source::PartitionStats;

const MAGIC: &[u8; 8] = b"TFCKPT\0\x01";
/// The format version; a checkpoint of another version is refused.
pub const FORMAT_VERSION: u32 = 4;
const HEADER: usize = 8 + 4 + 8 + 16;

/// Where a partition resumes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionPosition {
    /// A byte offset and the number of lines before it (JSON-lines files and memory inputs).
    Bytes {
        /// Byte offset of the next record.
        offset: u64,
        /// Lines read before it.
        line: u64,
    },
    /// Items produced so far (the generator, which regenerates and skips them).
    Items(u64),
    /// The next offset of a Kafka topic partition.
    Offset(i64),
}

/// One partition's part of a checkpoint: where to read on from, and the partition's state there.
/// Records read from there whose time is before the checkpoint's frontier were given before it,
/// and are skipped.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartitionCheckpoint {
    /// Where to read on from.
    pub position: PartitionPosition,
    /// The greatest event time seen (the watermark's base).
    pub max_ts: Option<Time>,
    /// Counts so far.
    pub stats: PartitionStats,
    /// Whether the partition was exhausted.
    pub finished: bool,
}

/// The feature windows of one user value at the frontier: a counter's pending retraction, or a
/// distinct value present until a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowEntry {
    /// A counter contribution `amount`, retracted at `until`.
    Counter {
        /// The user.
        key: UserKey,
        /// Which counter (a `FeatureVal::Counter`).
        val: FeatureVal,
        /// Its amount.
        amount: isize,
        /// When it leaves the window.
        until: Time,
    },
    /// A distinct value present until `until`.
    Present {
        /// The user.
        key: UserKey,
        /// The value.
        val: FeatureVal,
        /// When it leaves the window.
        until: Time,
    },
    /// A user's block (see [`crate::verdicts`]).
    Block {
        /// The user.
        key: UserKey,
        /// The time of the decision that blocked the user.
        from: Time,
        /// The last time it applies to.
        until: Time,
        /// The event that blocked the user.
        by: String,
    },
    /// An event in a correlation rule's window for one group (see [`crate::correlation`]).
    Correlation {
        /// The group's routing key (rule and group values).
        group: UserKey,
        /// The correlation rule's id.
        rule: String,
        /// The group's values.
        values: Vec<Option<String>>,
        /// The event's time.
        time: Time,
        /// Which of the rule's referenced rules it matched.
        member: u32,
        /// Its value of the counted field (`value_count`).
        value: Option<String>,
    },
}

impl WindowEntry {
    /// The key the entry is routed by: its user, or a correlation group.
    pub fn key(&self) -> UserKey {
        match self {
            WindowEntry::Counter { key, .. } | WindowEntry::Present { key, .. } | WindowEntry::Block { key, .. } => *key,
            WindowEntry::Correlation { group, .. } => *group,
        }
    }
}

/// Output positions once every decision before the frontier was written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputPositions {
    /// Bytes of the decisions file.
    pub decisions: Option<u64>,
    /// Bytes of the alerts file (written with the decisions).
    pub alerts: Option<u64>,
    /// Bytes of the actions file (written with the decisions).
    pub actions: Option<u64>,
    /// The alert gate's `(reason, user, last alert)` still suppressing at the frontier.
    pub alert_gate: Vec<(String, String, Time)>,
    /// Bytes of the dead-letters file.
    pub dead_letters: Option<u64>,
    /// Per output topic partition `(topic, partition)`, an offset at or before the first record
    /// written for a time at or after the frontier (the end offset acknowledged when the barrier
    /// was sent): a restored job reads on from it to find what it must not write again.
    pub kafka: BTreeMap<(String, i32), i64>,
}

/// The model and rule updates read from the control topics: every update with the time it applies
/// from, and the next offset of each control topic partition after them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ControlCheckpoint {
    /// The updates, static ones included.
    pub log: ControlLog,
    /// `(topic, partition)` to the next offset to read.
    pub offsets: BTreeMap<(String, i32), i64>,
}

/// Everything needed to resume at `frontier`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every decision before this time is written; nothing at or after it is applied to the state.
    pub frontier: Time,
    /// Partitions by name.
    pub partitions: BTreeMap<String, PartitionCheckpoint>,
    /// The feature windows of every user.
    pub windows: Vec<WindowEntry>,
    /// Output lengths.
    pub outputs: OutputPositions,
    /// The updates read from the control topics (Kafka jobs).
    pub control: Option<ControlCheckpoint>,
}

/// Encodes a checkpoint with its header.
pub fn encode(checkpoint: &Checkpoint) -> Result<Vec<u8>> {
    let payload = bincode::serialize(checkpoint).context("encoding a checkpoint")?;
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&xxhash_rust::xxh3::xxh3_128(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Why a checkpoint file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a checkpoint, truncated, or corrupted: fall back to an older one.
    #[error("damaged: {0}")]
    Damaged(String),
    /// Written by an incompatible version: refuse to start.
    #[error("format version {found}, this build reads version {FORMAT_VERSION}")]
    Incompatible {
        /// The file's version.
        found: u32,
    },
}

/// Decodes and verifies a checkpoint.
pub fn decode(bytes: &[u8]) -> Result<Checkpoint, DecodeError> {
    let damaged = |why: &str| DecodeError::Damaged(why.to_string());
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(damaged("no checkpoint header"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().map_err(|_| damaged("header"))?);
    if version != FORMAT_VERSION {
        return Err(DecodeError::Incompatible { found: version });
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().map_err(|_| damaged("header"))?) as usize;
    let sum = u128::from_le_bytes(bytes[20..36].try_into().map_err(|_| damaged("header"))?);
    let payload = &bytes[HEADER..];
    if payload.len() != len {
        return Err(damaged(&format!("{} payload bytes, the header says {len} (truncated?)", payload.len())));
    }
    if xxhash_rust::xxh3::xxh3_128(payload) != sum {
        return Err(damaged("checksum mismatch"));
    }
    bincode::deserialize(payload).map_err(|e| damaged(&format!("undecodable payload: {e}")))
}

/// A directory of checkpoints.
#[derive(Clone, Debug)]
pub struct CheckpointDir {
    /// The directory.
    pub path: PathBuf,
    /// How many checkpoints to keep.
    pub keep: usize,
}

impl CheckpointDir {
    fn file(&self, frontier: Time) -> PathBuf {
        self.path.join(format!("ckpt-{frontier:020}.bin"))
    }

    /// The checkpoint files, newest first.
    fn files(&self) -> Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&self.path) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("ckpt-") && n.ends_with(".bin")))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading checkpoint directory {}", self.path.display())),
        };
        files.sort();
        files.reverse();
        Ok(files)
    }

    /// Writes a checkpoint atomically (temporary file, fsync, rename, fsync of the directory) and
    /// removes all but the newest `keep`; `before_commit` runs just before the rename. Returns the
    /// bytes written.
    pub fn write(&self, checkpoint: &Checkpoint, before_commit: impl FnOnce() -> Result<()>) -> Result<u64> {
        std::fs::create_dir_all(&self.path).with_context(|| format!("creating {}", self.path.display()))?;
        let bytes = encode(checkpoint)?;
        let path = self.file(checkpoint.frontier);
        let tmp = path.with_extension("tmp");
        let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(&bytes).with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        before_commit().context("not committing the checkpoint")?;
        std::fs::rename(&tmp, &path).with_context(|| format!("committing {}", path.display()))?;
        File::open(&self.path).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", self.path.display()))?;
        for old in self.files()?.into_iter().skip(self.keep.max(1)) {
            if let Err(e) = std::fs::remove_file(&old) {
                tracing::warn!("removing old checkpoint {}: {e}", old.display());
            }
        }
        Ok(bytes.len() as u64)
    }

    /// The newest checkpoint that verifies; damaged ones are reported and skipped, and one from an
    /// incompatible version is an error.
    pub fn newest(&self) -> Result<Option<Checkpoint>> {
        for path in self.files()? {
            let started = Instant::now();
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::error!("checkpoint {} unreadable, trying an older one: {e}", path.display());
                    continue;
                }
            };
            match decode(&bytes) {
                Ok(checkpoint) => {
                    tracing::info!(
                        frontier = checkpoint.frontier,
                        bytes = bytes.len(),
                        read_ms = started.elapsed().as_secs_f64() * 1e3,
                        "restoring checkpoint {}",
                        path.display()
                    );
                    return Ok(Some(checkpoint));
                }
                Err(DecodeError::Damaged(why)) => {
                    tracing::error!("checkpoint {} is {why}; trying an older one", path.display());
                }
                Err(e @ DecodeError::Incompatible { .. }) => {
                    bail!("checkpoint {} cannot be restored: {e}; move it away to start over", path.display())
                }
            }
        }
        Ok(None)
    }
}

/// Truncates an output file to the length a checkpoint recorded (what was written after the
/// checkpoint is written again by the resumed job).
pub fn truncate_output(path: &Path, length: u64) -> Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path).with_context(|| format!("opening {}", path.display()))?;
    let actual = file.metadata()?.len();
    ensure!(actual >= length, "{} has {actual} bytes, fewer than the {length} the checkpoint recorded", path.display());
    file.set_len(length).with_context(|| format!("truncating {}", path.display()))?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_detects_damage_and_versions() {
        let mut checkpoint = Checkpoint { frontier: 42, ..Default::default() };
        checkpoint.windows.push(WindowEntry::Present { key: 7, val: FeatureVal::Country(3), until: 99 });
        let bytes = encode(&checkpoint).unwrap();
        assert_eq!(decode(&bytes).unwrap().windows, checkpoint.windows);
        assert!(matches!(decode(&bytes[..bytes.len() - 1]), Err(DecodeError::Damaged(_))));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(decode(&flipped), Err(DecodeError::Damaged(_))));
        let mut future = bytes.clone();
        future[8] = 9;
        assert!(matches!(decode(&future), Err(DecodeError::Incompatible { found: 9 })));
        assert!(matches!(decode(b"hello"), Err(DecodeError::Damaged(_))));
    }

    #[test]
    fn control_logs_with_every_kind_of_rule_round_trip() {
        let sigma = crate::sigma::SigmaRule::parse(
            "title: t\neffective_from: 7\nlogsource: {product: aws}\ndetection:\n  s: {a|expand: '%x%'}\n  condition: s\n",
            &crate::sigma::Placeholders::from([("x".to_string(), vec!["1".to_string()])]),
        )
        .unwrap();
        let mut log = ControlLog::default();
        log.add_rules(crate::rules::parse_rules(r#"[{"id": "r", "features": {"deletes_10m": {"gte": 3}}}]"#).unwrap());
        log.add_rules([crate::rules::RuleSpec::from_sigma(sigma)]);
        let checkpoint = Checkpoint { control: Some(ControlCheckpoint { log: log.clone(), offsets: BTreeMap::new() }), ..Default::default() };
        let decoded = decode(&encode(&checkpoint).unwrap()).unwrap();
        assert_eq!(decoded.control.unwrap().log.updates(), log.updates());
    }

    #[test]
    fn directory_falls_back_past_a_damaged_newest_and_keeps_k() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = CheckpointDir { path: dir.path().to_path_buf(), keep: 2 };
        for f in [10, 20, 30] {
            checkpoints.write(&Checkpoint { frontier: f, ..Default::default() }, || Ok(())).unwrap();
        }
        assert_eq!(checkpoints.files().unwrap().len(), 2);
        assert_eq!(checkpoints.newest().unwrap().unwrap().frontier, 30);
        let newest = checkpoints.file(30);
        let bytes = std::fs::read(&newest).unwrap();
        std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
        assert_eq!(checkpoints.newest().unwrap().unwrap().frontier, 20);
        std::fs::remove_file(checkpoints.file(20)).unwrap();
        assert!(checkpoints.newest().unwrap().is_none());
    }
}

/// What worker 0 has gathered for a barrier it sent.
#[derive(Debug)]
struct Gathering {
    partitions: BTreeMap<String, PartitionCheckpoint>,
    windows: Vec<WindowEntry>,
    partitions_done: bool,
    windows_done: bool,
    /// Set by the sinks once every record before the barrier is written: the files' lengths then.
    decisions: Option<OutputPositions>,
    dead_letters: Option<OutputPositions>,
    /// The Kafka outputs' acknowledged end offsets when the barrier was sent.
    kafka_outputs: BTreeMap<(String, i32), i64>,
    requested: Instant,
}

/// The parts of the checkpoints in progress, filled by worker 0's sinks.
#[derive(Debug, Default)]
pub struct Gathered {
    pending: BTreeMap<Time, Gathering>,
}

/// Which output a sink writes.
#[derive(Clone, Copy, Debug)]
pub enum OutputKind {
    /// The decisions sink.
    Decisions,
    /// The dead-letter sink.
    DeadLetters,
}

impl Gathered {
    /// Records the outputs' lengths (those of `kind`'s files are used) for every pending barrier
    /// `F` with `complete(F)`: everything before `F` and nothing at or after it has been written.
    pub fn record_output(&mut self, kind: OutputKind, complete: impl Fn(Time) -> bool, written: &OutputPositions) {
        for (frontier, gathering) in self.pending.iter_mut() {
            let slot = match kind {
                OutputKind::Decisions => &mut gathering.decisions,
                OutputKind::DeadLetters => &mut gathering.dead_letters,
            };
            if slot.is_none() && complete(*frontier) {
                *slot = Some(written.clone());
            }
        }
    }

    /// Adds a partition's part.
    pub fn add_partition(&mut self, frontier: Time, name: String, part: PartitionCheckpoint) {
        if let Some(g) = self.pending.get_mut(&frontier) {
            g.partitions.insert(name, part);
        }
    }

    /// Adds a worker's windows.
    pub fn add_windows(&mut self, frontier: Time, mut entries: Vec<WindowEntry>) {
        if let Some(g) = self.pending.get_mut(&frontier) {
            g.windows.append(&mut entries);
        }
    }

    /// Marks the parts (`windows: false`) or windows of every barrier before `frontier` complete.
    pub fn complete_before(&mut self, frontier: Option<Time>, windows: bool) {
        for (at, g) in self.pending.iter_mut() {
            if frontier.is_none_or(|f| *at < f) {
                if windows {
                    g.windows_done = true;
                } else {
                    g.partitions_done = true;
                }
            }
        }
    }
}

/// What checkpointing did in a job: printed in the job's report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CheckpointStats {
    /// The frontier the job resumed from, if it was restored.
    pub restored_from: Option<Time>,
    /// Milliseconds to read, verify and decode the restored checkpoint.
    pub restore_ms: Option<f64>,
    /// Milliseconds from the job's start until its output passed the restored frontier: the
    /// state is restored and events are decided again.
    pub resumed_ms: Option<f64>,
    /// Checkpoints written.
    pub written: u64,
    /// The frontier of the last one.
    pub last_frontier: Option<Time>,
    /// Its size in bytes.
    pub last_bytes: u64,
    /// Milliseconds to encode, write and commit it.
    pub last_write_ms: f64,
    /// The longest write.
    pub max_write_ms: f64,
}

/// Outputs acknowledged asynchronously (Kafka topics), as checkpoints see them.
pub struct AsyncOutputs {
    /// Per output partition, an offset at or before every record not yet queued (and every record
    /// a run before a restart wrote that this run has not reached yet): asked when a barrier is sent.
    pub positions: Box<dyn Fn() -> BTreeMap<(String, i32), i64>>,
    /// A mark after every record queued so far.
    pub mark: Box<dyn Fn() -> usize>,
    /// Waits until every record queued before a mark is acknowledged; fails if one could not be.
    pub wait: Arc<dyn Fn(usize) -> Result<()> + Send + Sync>,
}

/// Worker 0's side of checkpointing: sends barriers on an interval, and writes each checkpoint
/// once its parts are in and the outputs have been written up to it.
pub struct Coordinator {
    dir: CheckpointDir,
    interval: std::time::Duration,
    barriers: Option<timely::dataflow::InputHandle<Time, timely::container::CapacityContainerBuilder<Vec<Time>>>>,
    last_request: Instant,
    last_frontier: Option<Time>,
    /// Filled by the sinks.
    pub gathered: std::rc::Rc<std::cell::RefCell<Gathered>>,
    async_outputs: Option<AsyncOutputs>,
    /// The checkpoint being encoded and written in the background, if any.
    writing: Option<std::thread::JoinHandle<Result<()>>>,
    /// Updated by the writer.
    pub stats: std::sync::Arc<std::sync::Mutex<CheckpointStats>>,
}

impl Coordinator {
    /// A coordinator sending barriers through `barriers`, starting at `start` (a restored frontier);
    /// `async_outputs` are the job's Kafka outputs, if any.
    pub fn new(
        dir: CheckpointDir,
        interval: std::time::Duration,
        mut barriers: timely::dataflow::InputHandle<Time, timely::container::CapacityContainerBuilder<Vec<Time>>>,
        start: Option<Time>,
        gathered: std::rc::Rc<std::cell::RefCell<Gathered>>,
        async_outputs: Option<AsyncOutputs>,
    ) -> Self {
        if let Some(start) = start {
            barriers.advance_to(start);
            barriers.flush();
        }
        Coordinator {
            dir,
            interval,
            barriers: Some(barriers),
            last_request: Instant::now(),
            last_frontier: start,
            gathered,
            async_outputs,
            writing: None,
            stats: Default::default(),
        }
    }

    /// Writes finished checkpoints (with `control`'s part, asked then), asks for a new one when due,
    /// and moves the barrier input up to the events' frontier (`None`: the events are complete, the
    /// input closes).
    pub fn step(&mut self, events_frontier: Option<Time>, control: impl FnOnce() -> Option<ControlCheckpoint>) -> Result<()> {
        self.write_ready(control)?;
        let Some(input) = self.barriers.as_mut() else { return Ok(()) };
        let idle = self.gathered.borrow().pending.is_empty() && self.writing.is_none();
        let at = *input.time();
        // Not before the events have started (a checkpoint at 0 would hold nothing to resume from).
        if idle && at > 0 && self.last_request.elapsed() >= self.interval && self.last_frontier.is_none_or(|l| at > l) {
            // The barrier input is at `at` and holds the sinks back: nothing at or after `at` has
            // been queued yet, so what is acknowledged now is all before it.
            let kafka_outputs = self.async_outputs.as_ref().map(|o| (o.positions)()).unwrap_or_default();
            self.gathered.borrow_mut().pending.insert(
                at,
                Gathering {
                    partitions: BTreeMap::new(),
                    windows: Vec::new(),
                    partitions_done: false,
                    windows_done: false,
                    decisions: None,
                    dead_letters: None,
                    kafka_outputs,
                    requested: Instant::now(),
                },
            );
            input.send(at);
            self.last_request = Instant::now();
            self.last_frontier = Some(at);
        }
        match events_frontier {
            Some(f) if f > at => input.advance_to(f),
            Some(_) => {}
            None => self.barriers = None,
        }
        if let Some(input) = self.barriers.as_mut() {
            input.flush();
        }
        Ok(())
    }

    /// Waits for the checkpoint being written, if any.
    pub fn finish(&mut self) -> Result<()> {
        match self.writing.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => bail!("the checkpoint writer panicked"),
            None => Ok(()),
        }
    }

    fn write_ready(&mut self, control: impl FnOnce() -> Option<ControlCheckpoint>) -> Result<()> {
        if self.writing.as_ref().is_some_and(|w| w.is_finished()) {
            self.finish()?;
        }
        if self.writing.is_some() {
            return Ok(());
        }
        let ready = {
            let gathered = self.gathered.borrow();
            gathered
                .pending
                .iter()
                .next()
                .filter(|(_, g)| g.partitions_done && g.windows_done && g.decisions.is_some() && g.dead_letters.is_some())
                .map(|(f, _)| *f)
        };
        let Some(frontier) = ready else { return Ok(()) };
        let Some(g) = self.gathered.borrow_mut().pending.remove(&frontier) else { return Ok(()) };
        let window_entries = g.windows.len();
        let checkpoint = Checkpoint {
            frontier,
            partitions: g.partitions,
            windows: g.windows,
            outputs: {
                let (decided, dead) = (g.decisions.unwrap_or_default(), g.dead_letters.unwrap_or_default());
                OutputPositions {
                    decisions: decided.decisions,
                    alerts: decided.alerts,
                    actions: decided.actions,
                    alert_gate: decided.alert_gate,
                    dead_letters: dead.dead_letters,
                    kafka: g.kafka_outputs,
                }
            },
            // Every update applied before the frontier is in (the decisions before it are written).
            control: control(),
        };
        let gathered_ms = g.requested.elapsed().as_secs_f64() * 1e3;
        // Encoding and writing run beside the worker, which goes on with the dataflow.
        let dir = self.dir.clone();
        let stats = std::sync::Arc::clone(&self.stats);
        // Every output record before the frontier is queued by now; the checkpoint commits once
        // they are all acknowledged.
        let acknowledged = self.async_outputs.as_ref().map(|o| ((o.mark)(), Arc::clone(&o.wait)));
        let writer = std::thread::Builder::new().name("checkpoint-writer".into()).spawn(move || {
            let started = Instant::now();
            let bytes = dir.write(&checkpoint, || {
                match acknowledged {
                    Some((mark, wait)) => wait(mark),
                    None => Ok(()),
                }
            })?;
            let write_ms = started.elapsed().as_secs_f64() * 1e3;
            let users = checkpoint.windows.iter().map(WindowEntry::key).collect::<std::collections::HashSet<_>>().len();
            tracing::info!(frontier, bytes, users, window_entries, gathered_ms, write_ms, "checkpoint written");
            if let Ok(mut stats) = stats.lock() {
                stats.written += 1;
                stats.last_frontier = Some(frontier);
                stats.last_bytes = bytes;
                stats.last_write_ms = write_ms;
                stats.max_write_ms = stats.max_write_ms.max(write_ms);
            }
            Ok(())
        });
        self.writing = Some(writer.context("starting the checkpoint writer")?);
        Ok(())
    }
}
