//! Consistent checkpoints: what a job needs to resume at a frontier `F`, and its durable format.
//!
//! A checkpoint at `F` holds every checkpointed operator's state consolidated at `F` (every event
//! judged before `F` applied, none at or after it: the feature windows, correlation windows,
//! blocks, a dataflow's own state, and the sinks' output positions once every decision before `F`
//! was written), and each source partition's position before its first record whose time is not
//! below `F` (with its watermark and counts there). Restoring it and reading on from the
//! positions gives the same decisions as a run that never stopped (`docs/semantics.md#checkpoints`).
//!
//! [`operator`] is the one layer every stateful operator goes through; [`coordinator`] is worker
//! 0's side: barriers out, parts gathered, files written.
//!
//! Files are `ckpt-<F>.bin`: magic, format version, payload length, xxh3-128 of the payload, then
//! the payload (bincode of [`Checkpoint`]). They are written to a temporary name, synced, and
//! renamed (the commit); the newest file that reads back whole, verifies and fits the job (its
//! dataflow, its outputs) is used, and one that does not is reported and skipped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::event::Time;
use operator::StatePart;

pub mod coordinator;
pub mod operator;

const MAGIC: &[u8; 8] = b"TFCKPT\0\x01";
/// The format version; a checkpoint of another version is refused. Each operator's state is a
/// part with a version of its own ([`operator::CheckpointedState::part`]).
pub const FORMAT_VERSION: u32 = 5;
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

/// Counts of one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStats {
    /// The partition's name.
    pub partition: String,
    /// Valid events.
    pub events: u64,
    /// Records rejected (dead letters).
    pub rejected: u64,
    /// Late events.
    pub late: u64,
}

/// Everything needed to resume at `frontier`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every decision before this time is written; nothing at or after it is applied to the state.
    pub frontier: Time,
    /// The dataflow that wrote it (a checkpoint is restored by the same dataflow only).
    pub dataflow: String,
    /// Partitions by name.
    pub partitions: BTreeMap<String, PartitionCheckpoint>,
    /// Every checkpointed operator's state, one part per operator and worker (see [`operator`]).
    pub state: Vec<StatePart>,
    /// Per output topic partition `(topic, partition)`, an offset at or before the first record
    /// written for a time at or after the frontier (the end offset acknowledged when the barrier
    /// was sent): a restored job reads on from it to find what it must not write again.
    pub async_outputs: BTreeMap<(String, i32), i64>,
    /// The control feed's part (Kafka jobs and followed files: the updates read while running).
    pub control: Option<StatePart>,
}

impl Checkpoint {
    /// The entries of every part named `name` (all workers'), decoded.
    pub fn entries<E: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Vec<E>> {
        let mut entries = Vec::new();
        for part in self.state.iter().filter(|p| p.name == name) {
            let mut decoded: Vec<E> = bincode::deserialize(&part.bytes).with_context(|| format!("decoding the checkpoint's {name}"))?;
            entries.append(&mut decoded);
        }
        Ok(entries)
    }
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
    /// Written by an incompatible version.
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

    /// Every checkpoint file, newest first, read and verified (or why it cannot be).
    pub fn list(&self) -> Result<Vec<(PathBuf, Result<Checkpoint, String>)>> {
        Ok(self.files()?.into_iter().map(|path| {
            let checkpoint = std::fs::read(&path).map_err(|e| format!("unreadable: {e}")).and_then(|bytes| decode(&bytes).map_err(|e| e.to_string()));
            (path, checkpoint)
        }).collect())
    }

    /// The newest checkpoint that verifies and that `usable` accepts. One that cannot be used,
    /// for any reason (damaged, another format version, refused by `usable`), is reported and the
    /// previous one is tried; when checkpoints exist and none can be used, that is an error (starting
    /// over would write again what was written).
    pub fn newest(&self, usable: impl Fn(&Checkpoint) -> Result<()>) -> Result<Option<Checkpoint>> {
        let mut refused = Vec::new();
        for path in self.files()? {
            let started = Instant::now();
            let checkpoint = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("unreadable: {e}"))
                .and_then(|bytes| Ok((decode(&bytes)?, bytes.len())))
                .and_then(|(checkpoint, bytes)| usable(&checkpoint).map(|()| (checkpoint, bytes)));
            match checkpoint {
                Ok((checkpoint, bytes)) => {
                    if !refused.is_empty() {
                        tracing::warn!(frontier = checkpoint.frontier, "falling back to the older checkpoint {}", path.display());
                    }
                    tracing::info!(
                        frontier = checkpoint.frontier,
                        bytes,
                        read_ms = started.elapsed().as_secs_f64() * 1e3,
                        "restoring checkpoint {}",
                        path.display()
                    );
                    return Ok(Some(checkpoint));
                }
                Err(why) => {
                    tracing::error!("checkpoint {} cannot be used ({why:#}); trying an older one", path.display());
                    refused.push(format!("{}: {why:#}", path.display()));
                }
            }
        }
        if !refused.is_empty() {
            bail!("no checkpoint in {} can be used ({}); move them away to start over", self.path.display(), refused.join("; "));
        }
        Ok(None)
    }
}

/// Truncates an output file to the length a checkpoint recorded (what was written after the
/// checkpoint is written again by the resumed job).
pub fn truncate_output(path: &Path, length: u64) -> Result<()> {
    let file = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path).with_context(|| format!("opening {}", path.display()))?;
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
        checkpoint.state.push(StatePart { name: "windows".into(), version: 1, bytes: bincode::serialize(&vec![7u64, 99]).unwrap() });
        let bytes = encode(&checkpoint).unwrap();
        assert_eq!(decode(&bytes).unwrap().state, checkpoint.state);
        assert_eq!(decode(&bytes).unwrap().entries::<u64>("windows").unwrap(), [7, 99]);
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
    fn directory_falls_back_past_a_damaged_newest_and_keeps_k() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = CheckpointDir { path: dir.path().to_path_buf(), keep: 2 };
        for f in [10, 20, 30] {
            checkpoints.write(&Checkpoint { frontier: f, ..Default::default() }, || Ok(())).unwrap();
        }
        assert_eq!(checkpoints.files().unwrap().len(), 2);
        let any = |_: &Checkpoint| Ok(());
        assert_eq!(checkpoints.newest(any).unwrap().unwrap().frontier, 30);
        // One the caller cannot use (its outputs are shorter than it recorded, say).
        let not_30 = |c: &Checkpoint| if c.frontier == 30 { bail!("no") } else { Ok(()) };
        assert_eq!(checkpoints.newest(not_30).unwrap().unwrap().frontier, 20);
        let newest = checkpoints.file(30);
        let bytes = std::fs::read(&newest).unwrap();
        std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
        assert_eq!(checkpoints.newest(any).unwrap().unwrap().frontier, 20);
        let listed: Vec<bool> = checkpoints.list().unwrap().into_iter().map(|(_, c)| c.is_ok()).collect();
        assert_eq!(listed, [false, true]);
        std::fs::remove_file(checkpoints.file(20)).unwrap();
        let err = format!("{:#}", checkpoints.newest(any).unwrap_err());
        assert!(err.contains("no checkpoint in") && err.contains("damaged"), "{err}");
        std::fs::remove_file(checkpoints.file(30)).unwrap();
        assert!(checkpoints.newest(any).unwrap().is_none());
    }
}

