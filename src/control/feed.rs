//! Model, rule and mark updates that arrive while the job runs, applied at their `effective_from`.
//!
//! A reader thread follows where updates are published (the models, rules and marks topics, see
//! [`crate::kafka::control`]; or, without Kafka, the files `threatflow model publish` and
//! `threatflow mark` append to and a directory of Sigma rules, see [`follow_files`]). In rounds,
//! it notes the wall-clock instant, reads everything published so far, and reports the updates
//! read with that instant: everything published before it has now been read. Worker 0 wakes the
//! reader when it observes a new events frontier, and the reader wakes worker 0 with each round.
//! Model artifacts are fetched and verified on the reader thread, so only verified models reach
//! the dataflow.
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
use serde::{Deserialize, Serialize};

use crate::checkpoint::operator::StatePart;
use crate::detect::control::{Control, ControlLog};
use crate::detect::marks::MarkUpdate;
use crate::detect::model::{self, Model, ModelUpdate};
use crate::detect::rules::RuleSpec;
use crate::detect::sigma::Placeholders;
use crate::enrich::Database;
use crate::event::Time;

/// An update read by a reader (models already fetched and verified).
#[derive(Debug)]
pub enum ControlMessage {
    /// A verified model and the time it applies from.
    Model(Time, Model),
    /// Rule updates, each from its `effective_from`.
    Rules(Vec<RuleSpec>),
    /// Rule updates from a followed directory: from the current frontier, or a later
    /// `effective_from` (changed files carry no time of their own).
    RulesFromNow(Vec<RuleSpec>),
    /// Marked threats (and their removals).
    Marks(Vec<MarkUpdate>),
    /// A verified enrichment database and the time it applies from.
    Database(Time, Database),
    /// Threat-intel indicators (and their removals), each from its `effective_from`.
    Indicators(Vec<crate::enrich::intel::IndicatorUpdate>),
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
pub type Reader = Box<dyn FnOnce(BTreeMap<FeedPosition, i64>, Rounds, Arc<AtomicBool>) -> Result<()> + Send>;

/// Where a reader sends its rounds: to worker 0, woken to apply each at once (rather than when its
/// next park times out).
pub struct Rounds {
    sender: Sender<Round>,
    worker: std::thread::Thread,
}

impl Rounds {
    /// Sends a round and wakes worker 0; fails once the job has gone.
    pub fn send(&self, round: Round) -> Result<(), std::sync::mpsc::SendError<Round>> {
        self.sender.send(round)?;
        self.worker.unpark();
        Ok(())
    }
}

/// Waits (on a reader thread) until worker 0 observes a new events frontier, or `timeout`: only a
/// round started after that lets the control input follow it, so a reader that starts its next
/// round then keeps the decisions' wait short without asking the broker more often than needed.
pub fn await_new_frontier(timeout: Duration) {
    std::thread::park_timeout(timeout);
}

/// The model and rule updates read while the job runs: every update with the time it applies
/// from, and the next position of each control topic partition or file after them. Kept in a
/// checkpoint as the part [`ControlCheckpoint::PART`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ControlCheckpoint {
    /// The updates, static ones included.
    pub log: ControlLog,
    /// `(topic, partition)` to the next offset to read.
    pub offsets: BTreeMap<FeedPosition, i64>,
}

impl ControlCheckpoint {
    /// The part's name in a checkpoint.
    pub const PART: &'static str = "control-feed";
    const VERSION: u32 = 3;

    /// As a checkpoint part.
    pub fn encode(&self) -> Result<StatePart> {
        let bytes = bincode::serialize(self).context("encoding the control feed's checkpoint")?;
        Ok(StatePart { name: Self::PART.to_string(), version: Self::VERSION, bytes })
    }

    /// From a checkpoint part.
    pub fn decode(part: &StatePart) -> Result<Self> {
        anyhow::ensure!(
            part.name == Self::PART && part.version == Self::VERSION,
            "the checkpoint's control part is {:?} version {}, this build reads {:?} version {}",
            part.name,
            part.version,
            Self::PART,
            Self::VERSION
        );
        bincode::deserialize(&part.bytes).context("decoding the control feed's checkpoint")
    }
}

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
    pub fn start(name: &str, reader: Reader, log: ControlLog, restored: Option<&StatePart>) -> Result<Self> {
        let (log, applied) = match restored.map(ControlCheckpoint::decode).transpose()? {
            Some(c) => (c.log, c.offsets),
            None => (log, BTreeMap::new()),
        };
        let (sender, rounds) = std::sync::mpsc::channel();
        let sender = Rounds { sender, worker: std::thread::current() };
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
    pub fn checkpoint(&self) -> Result<StatePart> {
        ControlCheckpoint { log: self.log.clone(), offsets: self.applied.clone() }.encode()
    }

    /// Applies the updates read so far and advances `input` as far as is safe, given the events
    /// frontier now; closes it (returns `true`) once the events are complete and everything
    /// published until then is read.
    pub fn step(&mut self, input: &mut InputSession<Time, ((), Control), isize>, events_frontier: Option<Time>) -> Result<bool> {
        if self.last_seen != Some(events_frontier) {
            self.seen.push_back((Instant::now(), events_frontier));
            self.last_seen = Some(events_frontier);
            if let Some(reader) = self.reader.as_ref() {
                reader.thread().unpark();
            }
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
                let from = applies_from("model update", &model.version, from, now);
                tracing::info!(version = %model.version, effective_from = from, "model update received");
                self.log.add_model(from, model)
            }
            ControlMessage::Database(from, database) => {
                let from = applies_from("database update", &database.location, from, now);
                tracing::info!(kind = database.kind.as_str(), location = %database.location, sha256 = %database.sha256, effective_from = from, "database update received");
                self.log.add_database(from, database)
            }
            ControlMessage::Marks(mut updates) => {
                for update in updates.iter_mut() {
                    update.effective_from = applies_from("mark", &update.id, update.effective_from, now);
                    tracing::info!(mark = %update.id, effective_from = update.effective_from, remove = update.remove, "mark received");
                }
                self.log.add_marks(updates)
            }
            ControlMessage::Indicators(mut updates) => {
                let count = updates.len();
                for update in updates.iter_mut() {
                    update.effective_from = applies_from("indicator", &update.id, update.effective_from, now);
                }
                tracing::info!(indicators = count, "indicator updates received");
                self.log.add_indicators(updates)
            }
            ControlMessage::RulesFromNow(mut specs) => {
                for spec in specs.iter_mut() {
                    spec.effective_from = spec.effective_from.max(now);
                    tracing::info!(rule = %spec.id, effective_from = spec.effective_from, remove = spec.remove, "rule update read");
                }
                self.log.add_rules(specs)
            }
            ControlMessage::Rules(mut specs) => {
                for spec in specs.iter_mut() {
                    spec.effective_from = applies_from("rule update", &spec.id, spec.effective_from, now);
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

/// The time an update applies from: its `effective_from`, or the control input's time `now` when
/// it arrived after that (said in the log).
fn applies_from(what: &str, id: &str, effective_from: Time, now: Time) -> Time {
    if effective_from < now {
        tracing::warn!(id, effective_from, applies_from = now, "{what} arrived after its effective_from: it applies from the current frontier");
    }
    effective_from.max(now)
}

impl Drop for ControlFeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A model (or database) update, fetched and verified (relative locations against `base`).
pub fn verified_model(update: &ModelUpdate, base: Option<&Path>) -> Result<ControlMessage> {
    if let Some(kind) = update.database {
        let database = verified_database(update, kind, base)?;
        return Ok(ControlMessage::Database(update.effective_from, database));
    }
    let model = model::load_update(update, base)
        .with_context(|| format!("model {} rejected, the previous model stays in force", update.version))?;
    tracing::info!(version = %update.version, sha256 = %update.sha256, "model artifact fetched and verified");
    Ok(ControlMessage::Model(update.effective_from, model))
}

/// A database update's database, read and verified (relative locations against `base`).
pub fn verified_database(update: &ModelUpdate, kind: crate::enrich::DatabaseKind, base: Option<&Path>) -> Result<Database> {
    let location = crate::location::Location::parse(&update.uri, base)?.to_string();
    let database = Database::load(kind, &location, Some(&update.sha256))
        .with_context(|| format!("{} database {location} rejected, the previous one stays in force", kind.as_str()))?;
    tracing::info!(kind = kind.as_str(), %location, sha256 = %database.sha256, "database fetched and verified");
    Ok(database)
}

/// What a job follows without Kafka (each may be absent): JSON-lines files of model updates and of
/// marks, and a directory of Sigma rules.
#[derive(Clone, Debug, Default)]
pub struct Followed {
    /// Model updates `{version, uri, sha256, effective_from}`.
    pub model_updates: Option<PathBuf>,
    /// Marks (see [`crate::detect::marks`]).
    pub marks: Option<PathBuf>,
    /// Sigma rules, and the placeholder values they use.
    pub rules_dir: Option<(PathBuf, Placeholders)>,
    /// Threat-intel indicator files or directories ([`crate::control::intel`]).
    pub intel: Vec<PathBuf>,
}

/// How often a followed directory of rules is scanned for changes.
const RULES_DIR_SCAN: Duration = Duration::from_millis(200);

/// A reader following, without Kafka, what `followed` names, all of it in each round.
pub fn follow_files(followed: Followed) -> Reader {
    Box::new(move |mut next, rounds, stop| {
        let Followed { model_updates, marks, rules_dir, intel } = followed;
        let mut intel: Vec<crate::control::intel::IndicatorDir> = intel.into_iter().map(crate::control::intel::IndicatorDir::new).collect();
        let mut files: Vec<JsonLinesFile> = model_updates
            .map(|path| JsonLinesFile::new(path, &next, parse_model_line))
            .into_iter()
            .chain(marks.map(|path| JsonLinesFile::new(path, &next, parse_mark_line)))
            .collect();
        let mut rules = rules_dir.map(|(dir, placeholders)| RulesDir { dir, placeholders, files: BTreeMap::new(), first: true });
        // Files are read every round; a directory of rules (hundreds of files to look at) is
        // scanned every `RULES_DIR_SCAN`: an edited rule applies within that.
        let pause = Duration::from_millis(5);
        let mut scanned: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let mut messages = Vec::new();
            for file in files.iter_mut() {
                file.round(&mut messages, &mut next)?;
            }
            if scanned.is_none_or(|at| at.elapsed() >= RULES_DIR_SCAN) {
                if let Some(rules) = rules.as_mut() {
                    rules.round(&mut messages);
                }
                let indicators: Vec<_> = intel.iter_mut().flat_map(|dir| dir.scan()).collect();
                if !indicators.is_empty() {
                    messages.push(ControlMessage::Indicators(indicators));
                }
                scanned = Some(Instant::now());
            }
            if rounds.send(Round { started, messages, next: next.clone() }).is_err() {
                return Ok(());
            }
            std::thread::sleep(pause);
        }
        Ok(())
    })
}

/// A model update line, its artifact fetched and verified (relative locations against `base`).
fn parse_model_line(text: &str, base: Option<&Path>) -> Result<ControlMessage> {
    let update = serde_json::from_str::<ModelUpdate>(text).context("not a model update {version, uri, sha256, effective_from}")?;
    verified_model(&update, base)
}

fn parse_mark_line(text: &str, _base: Option<&Path>) -> Result<ControlMessage> {
    Ok(ControlMessage::Marks(vec![crate::detect::marks::parse_update(text)?]))
}

/// A JSON-lines file of updates: each round reads the complete lines appended since the last one
/// (a line still being written waits for its newline). A file that does not exist yet has no
/// updates yet. A line that does not parse (or, for a model, whose artifact cannot be fetched or
/// verified) is logged with its line number and skipped.
struct JsonLinesFile {
    parse: fn(&str, Option<&Path>) -> Result<ControlMessage>,
    path: PathBuf,
    key: FeedPosition,
    base: Option<PathBuf>,
    offset: u64,
    /// Line numbers for the log: counted from the start of the file on the first read.
    line_number: usize,
    counted_to: u64,
}

impl JsonLinesFile {
    fn new(path: PathBuf, next: &BTreeMap<FeedPosition, i64>, parse: fn(&str, Option<&Path>) -> Result<ControlMessage>) -> Self {
        let key: FeedPosition = (path.display().to_string(), 0);
        let offset = next.get(&key).copied().unwrap_or(0).max(0) as u64;
        let base = path.parent().map(Path::to_path_buf);
        JsonLinesFile { parse, path, key, base, offset, line_number: 0, counted_to: 0 }
    }

    fn round(&mut self, messages: &mut Vec<ControlMessage>, next: &mut BTreeMap<FeedPosition, i64>) -> Result<()> {
        let from = self.counted_to.min(self.offset);
        let appended = read_from(&self.path, from)?;
        let mut at = from;
        for line in appended.split_inclusive(|b| *b == b'\n').take_while(|l| l.ends_with(b"\n")) {
            self.line_number += 1;
            at += line.len() as u64;
            self.counted_to = at;
            if at <= self.offset {
                continue;
            }
            self.offset = at;
            let text = String::from_utf8_lossy(line);
            let text = text.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            match (self.parse)(text, self.base.as_deref()) {
                Ok(message) => messages.push(message),
                Err(error) => tracing::error!(
                    position = %format!("{}:{}", self.path.display(), self.line_number),
                    "control update rejected, skipped: {error:#}"
                ),
            }
        }
        next.insert(self.key.clone(), self.offset as i64);
        Ok(())
    }
}

/// A directory of Sigma rules, scanned each round. The first scan puts every rule in force from
/// its `effective_from` (a top-level key of the rule, ms or RFC 3339; 0 without it); later, a new
/// or changed file's rules apply from the current frontier (or their later `effective_from`), and
/// the rules of a deleted file, or gone from a changed one, are removed from the current frontier.
/// A rule that does not parse is reported with its file and line and skipped (the rule of that id
/// in force, if any, stays).
struct RulesDir {
    dir: PathBuf,
    placeholders: Placeholders,
    /// Each file's modification time and length, and the ids of its rules.
    files: BTreeMap<PathBuf, (Option<std::time::SystemTime>, u64, Vec<String>)>,
    first: bool,
}

impl RulesDir {
    fn round(&mut self, messages: &mut Vec<ControlMessage>) {
        let mut seen = std::collections::BTreeSet::new();
        let mut specs = Vec::new();
        for path in crate::detect::sigma::rule_files(&self.dir) {
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            let stamp = (meta.modified().ok(), meta.len());
            seen.insert(path.clone());
            if self.files.get(&path).is_some_and(|(modified, len, _)| (*modified, *len) == stamp) {
                continue;
            }
            let (rules, refused) = crate::detect::sigma::read_file(&path, &self.placeholders);
            for why in &refused {
                tracing::error!("Sigma rule refused, skipped: {why}");
            }
            let before = self.files.insert(path.clone(), (stamp.0, stamp.1, rules.iter().map(|r| r.id.clone()).collect()));
            specs.extend(rules.into_iter().map(RuleSpec::from_sigma));
            let kept: Vec<&String> = specs.iter().map(|s| &s.id).collect();
            let gone: Vec<String> = before.map(|(_, _, ids)| ids).unwrap_or_default().into_iter().filter(|id| !kept.contains(&id)).collect();
            specs.extend(gone.into_iter().map(RuleSpec::removal));
        }
        let deleted: Vec<PathBuf> = self.files.keys().filter(|p| !seen.contains(*p)).cloned().collect();
        for path in deleted {
            if let Some((_, _, ids)) = self.files.remove(&path) {
                specs.extend(ids.into_iter().map(RuleSpec::removal));
            }
        }
        if specs.is_empty() {
            return;
        }
        if std::mem::take(&mut self.first) {
            tracing::info!(rules = specs.len(), dir = %self.dir.display(), "Sigma rules loaded");
            messages.push(ControlMessage::Rules(specs));
        } else {
            messages.push(ControlMessage::RulesFromNow(specs));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_logs_with_every_kind_of_rule_round_trip() {
        let sigma = crate::detect::sigma::SigmaRule::parse(
            "title: t\neffective_from: 7\nlogsource: {product: aws}\ndetection:\n  s: {a|expand: '%x%'}\n  condition: s\n",
            &crate::detect::sigma::Placeholders::from([("x".to_string(), vec!["1".to_string()])]),
        )
        .unwrap();
        let mut log = ControlLog::default();
        log.add_rules(crate::detect::rules::parse_rules(r#"[{"id": "r", "features": {"deletes_10m": {"gte": 3}}}]"#).unwrap());
        log.add_rules([crate::detect::rules::RuleSpec::from_sigma(sigma)]);
        let part = ControlCheckpoint { log: log.clone(), offsets: BTreeMap::new() }.encode().unwrap();
        let checkpoint = crate::checkpoint::Checkpoint { control: Some(part), ..Default::default() };
        let decoded = crate::checkpoint::decode(&crate::checkpoint::encode(&checkpoint).unwrap()).unwrap();
        assert_eq!(ControlCheckpoint::decode(&decoded.control.unwrap()).unwrap().log.updates(), log.updates());
    }
}
