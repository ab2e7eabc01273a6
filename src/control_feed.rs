//! Model and rule updates that arrive while the job runs, applied at their `effective_from`.
//!
//! A reader thread follows where updates are published (the models and rules topics, see
//! [`crate::kafka::control`], or a JSON-lines file of model updates that `threatflow model publish`
//! appends to, see [`follow_file`]). In rounds, it notes the wall-clock instant, reads everything
//! published so far, and reports the updates read with that instant: everything published before
//! it has now been read. Model artifacts are fetched and verified on the reader thread, so only
//! verified models reach the dataflow.
//!
//! Worker 0 owns the control input. It only advances it to an events frontier it observed *before*
//! the instant of a report, so an update published before the events it must apply to is always
//! in the collection before those events are decided: decisions switch exactly at
//! `effective_from`. An update whose `effective_from` is already behind the control input applies
//! from the input's time instead, and says so in the log.
//!
//! Checkpoints hold the [`ControlLog`] (every update with the time it was applied from) and the
//! positions of the rounds applied; a restored job starts from both, so an update keeps the time
//! it was first applied from.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use differential_dataflow::input::InputSession;

use crate::checkpoint::ControlCheckpoint;
use crate::control::{Control, ControlLog};
use crate::event::Time;
use crate::model::{self, Model, ModelUpdate};
use crate::rules::RuleSpec;

/// An update read by a reader (models already fetched and verified).
#[derive(Debug)]
pub enum ControlMessage {
    /// A verified model and the time it applies from.
    Model(Time, Model),
    /// Rule updates.
    Rules(Vec<RuleSpec>),
}

/// Where a reader is: a topic and partition (or a file and 0), and the next offset (or byte).
pub type FeedPosition = (String, i32);

/// What a reader reports after each round.
#[derive(Debug)]
pub struct Round {
    /// Every update published before this instant has been read.
    pub started: Instant,
    /// The updates read in this round.
    pub messages: Vec<ControlMessage>,
    /// The next offset of every position after this round.
    pub next: BTreeMap<FeedPosition, i64>,
}

/// A reader thread: given where to start, it sends rounds until the flag is set.
pub type Reader = Box<dyn FnOnce(BTreeMap<FeedPosition, i64>, Sender<Round>, Arc<AtomicBool>) -> Result<()> + Send>;

/// Feeds the control input from a reader thread (worker 0).
pub struct ControlFeed {
    log: ControlLog,
    rounds: Receiver<Round>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<Result<()>>>,
    /// Events frontiers observed and when (`None`: the events are complete).
    seen: VecDeque<(Instant, Option<Time>)>,
    last_seen: Option<Option<Time>>,
    /// The next offset of every position after the rounds applied so far.
    applied: BTreeMap<FeedPosition, i64>,
}

impl ControlFeed {
    /// Starts `reader`; `log` holds the job's static models and rules, unless a restored
    /// checkpoint's log and positions are given.
    pub fn start(name: &str, reader: Reader, log: ControlLog, restored: Option<&ControlCheckpoint>) -> Result<Self> {
        let (log, applied) = match restored {
            Some(c) => (c.log.clone(), c.offsets.clone()),
            None => (log, BTreeMap::new()),
        };
        let (sender, rounds) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let reader_stop = Arc::clone(&stop);
        let next = applied.clone();
        let reader = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || reader(next, sender, reader_stop))
            .with_context(|| format!("starting {name}"))?;
        Ok(ControlFeed { log, rounds, stop, reader: Some(reader), seen: VecDeque::new(), last_seen: None, applied })
    }

    /// Every update so far.
    pub fn log(&self) -> ControlLog {
        self.log.clone()
    }

    /// What a checkpoint keeps: every update applied so far and the positions after them.
    pub fn checkpoint(&self) -> ControlCheckpoint {
        ControlCheckpoint { log: self.log.clone(), offsets: self.applied.clone() }
    }

    /// Applies the updates read so far and advances `input` as far as is safe, given the events
    /// frontier now; closes it (returns `true`) once the events are complete and everything
    /// published until then is read.
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
            Some(Ok(Err(error))) => error.context("reading control updates"),
            Some(Err(_)) => anyhow!("the control reader panicked"),
            _ => anyhow!("the control reader stopped"),
        }
    }
}

impl Drop for ControlFeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A model update, fetched and verified (relative locations against `base`).
pub fn verified_model(update: &ModelUpdate, base: Option<&Path>) -> Result<ControlMessage> {
    let model = model::load_update(update, base)
        .with_context(|| format!("model {} rejected, the previous model stays in force", update.version))?;
    tracing::info!(version = %update.version, sha256 = %update.sha256, "model artifact fetched and verified");
    Ok(ControlMessage::Model(update.effective_from, model))
}

/// A reader following a JSON-lines file of model updates: each round reads the complete lines
/// appended since the last one (a line still being written waits for its newline). A file that
/// does not exist yet has no updates yet. A line that does not parse, or whose artifact cannot be
/// fetched or verified, is logged with its line number and skipped.
pub fn follow_file(path: PathBuf) -> Reader {
    Box::new(move |mut next, rounds, stop| {
        let key: FeedPosition = (path.display().to_string(), 0);
        let base = path.parent().map(Path::to_path_buf);
        let mut offset = next.get(&key).copied().unwrap_or(0).max(0) as u64;
        // Line numbers for the log: counted from the start of the file on the first read.
        let mut line_number = 0usize;
        let mut counted_to = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let mut messages = Vec::new();
            let appended = read_from(&path, counted_to.min(offset))?;
            let mut at = counted_to.min(offset);
            for line in appended.split_inclusive(|b| *b == b'\n').take_while(|l| l.ends_with(b"\n")) {
                line_number += 1;
                at += line.len() as u64;
                counted_to = at;
                if at <= offset {
                    continue;
                }
                offset = at;
                let text = String::from_utf8_lossy(line);
                let text = text.trim();
                if text.is_empty() || text.starts_with('#') {
                    continue;
                }
                let parsed = serde_json::from_str::<ModelUpdate>(text)
                    .context("not a model update {version, uri, sha256, effective_from}")
                    .and_then(|update| verified_model(&update, base.as_deref()));
                match parsed {
                    Ok(message) => messages.push(message),
                    Err(error) => tracing::error!(position = %format!("{}:{line_number}", path.display()), "control update rejected, skipped: {error:#}"),
                }
            }
            next.insert(key.clone(), offset as i64);
            if rounds.send(Round { started, messages, next: next.clone() }).is_err() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    })
}

/// The bytes of `path` from `offset` on (none when the file does not exist).
fn read_from(path: &Path, offset: u64) -> Result<Vec<u8>> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("opening {}", path.display())),
    };
    file.seek(SeekFrom::Start(offset)).with_context(|| format!("seeking in {}", path.display()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes)
}
