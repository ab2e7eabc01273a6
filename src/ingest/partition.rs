//! Partitioned sources with per-partition watermarks.
//!
//! A partition is a unit of order (an input file, a generator partition, later a Kafka partition).
//! Partitions are fixed independently of the number of workers, and each is read by one worker, so
//! which events are late, and hence every decision, does not depend on how many workers run.
//!
//! Per partition the watermark is the greatest event time seen minus the allowed lateness. An event
//! behind its partition's watermark is not dropped: it takes the watermark as its time and is marked
//! late. The source holds its capability at the least watermark of its open partitions; an exhausted
//! partition stops holding anything back.

use std::collections::VecDeque;

use std::rc::Rc;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Exchange;
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use crate::checkpoint::{Checkpoint, PartitionCheckpoint, PartitionPosition, PartitionStats};
use crate::event::{parse_event, DeadLetter, Event, Position, RejectReason, Time};
use crate::ingest::dead_letter_burst::DeadLetterRun;
use crate::ingest::truth::Label;
use crate::ingest::mapping::RecordFormat;

/// What a partition yields.
// Events are nearly every item: boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Item {
    /// A valid event.
    Event(Event),
    /// A rejected record.
    Rejected(DeadLetter),
    /// Records gone before they could be read (deleted by retention while a restored job was
    /// down): a dead letter given at or after the restored frontier, never skipped as re-read.
    Lost(DeadLetter),
    /// Ground truth for an event (generator only; never seen by detectors).
    Label(Label),
}

/// A partition of a source.
pub trait Partition {
    /// The partition's name, for logs and dead letters.
    fn name(&self) -> String;
    /// Appends up to about `max` items to `out`; returns `Ok(false)` once exhausted.
    fn poll(&mut self, max: usize, out: &mut Vec<Item>) -> Result<bool>;
    /// Whether the partition is caught up and quiet, so that it need not hold the frontier back
    /// (unbounded sources only; a bounded partition is never idle).
    fn idle(&self) -> bool {
        false
    }
    /// Asks the partition to call `wake` when records arrive after a poll found none, so that the
    /// source reads them at once; returns whether it will. (Partitions that cannot tell are polled
    /// again every millisecond while caught up.)
    fn wake_on_arrival(&mut self, wake: Arc<dyn Fn() + Send + Sync>) -> bool {
        let _ = wake;
        false
    }
    /// Where the partition would read on from, for checkpoints; `None` when it cannot resume.
    fn position(&self) -> Option<PartitionPosition> {
        None
    }
    /// Moves to a position a checkpoint recorded.
    fn seek(&mut self, position: &PartitionPosition) -> Result<()> {
        let _ = position;
        anyhow::bail!("partition {} cannot resume from a checkpoint", self.name())
    }
}

/// Records beside the event stream: dead letters, ground truth, partition counts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SideRecord {
    /// A rejected record.
    DeadLetter(DeadLetter),
    /// Ground truth of a generated event.
    Label(Label),
    /// A partition is exhausted.
    Finished(PartitionStats),
}

/// How a source paces itself.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// Allowed lateness in milliseconds.
    pub allowed_lateness: Time,
    /// Items read per activation, shared among the open partitions.
    pub batch: usize,
    /// Batches (of `batch` records) this worker may have in flight before the output probe
    /// catches up.
    pub max_batches_in_flight: usize,
    /// Per partition and time, the dead letters given whole; the rest of that time's are counted
    /// in one summary (see [`crate::ingest::dead_letter_burst`]).
    pub dead_letter_burst: usize,
    /// Counts the records read (for a progress bar).
    pub records_read: Arc<AtomicU64>,
    /// Once set, every partition is treated as exhausted: the job drains and ends (SIGTERM).
    pub stop: Arc<AtomicBool>,
}

/// Records a source reads at a time by default when they are providers' raw records rather than
/// canonical events: a raw record is about ten times larger and several kilobytes once parsed, and
/// four batches of 32,768 of them in flight held 1.5 GB of parsed CloudTrail per worker and ran 30 %
/// slower than batches of 1,024, which stay in the caches.
pub const RAW_RECORDS_BATCH: usize = 1_024;

/// The dead letters a partition gives whole at one time by default: at most 256 MiB of originals.
pub const DEFAULT_DEAD_LETTER_BURST: usize = 1_000;

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            allowed_lateness: 5_000,
            batch: 32_768,
            max_batches_in_flight: 4,
            dead_letter_burst: DEFAULT_DEAD_LETTER_BURST,
            records_read: Arc::default(),
            stop: Arc::default(),
        }
    }
}

struct PartitionState {
    partition: Box<dyn Partition>,
    max_ts: Option<Time>,
    stats: PartitionStats,
    /// The batches read that the barriers' frontier may still need, oldest first (checkpoints only).
    batches: VecDeque<Batch>,
    /// A restored partition re-reads from a batch start: records it had given before the
    /// checkpoint's frontier (time below it) are read again but not given.
    skip_before: Option<Time>,
    /// The dead letters at the partition's current time.
    dead_letter_run: DeadLetterRun,
}

/// Where a batch of records started, and the times its records were given at: a checkpoint at `F`
/// resumes a partition at the start of its first batch with a record at or after `F`.
struct Batch {
    position: PartitionPosition,
    max_ts: Option<Time>,
    stats: PartitionStats,
    /// The greatest time of its records.
    max_time: Time,
}

impl PartitionState {
    fn watermark(&self, lateness: Time) -> Time {
        self.max_ts.map_or(0, |m| m.saturating_sub(lateness))
    }

    /// The partition's part of a checkpoint at `frontier`: the start of the first batch with a
    /// record at or after it, or where it is now.
    fn checkpoint(&self, frontier: Time, finished: bool) -> Option<PartitionCheckpoint> {
        match self.batches.iter().find(|b| b.max_time >= frontier) {
            Some(batch) => Some(PartitionCheckpoint {
                position: batch.position.clone(),
                max_ts: batch.max_ts,
                stats: batch.stats.clone(),
                finished: false,
            }),
            None => Some(PartitionCheckpoint {
                position: self.partition.position()?,
                max_ts: self.max_ts,
                stats: self.stats.clone(),
                finished,
            }),
        }
    }
}

/// Adds what a partition read since `(events, late)` to the live metrics and sets its position
/// and watermark there.
fn record_partition_metrics(state: &PartitionState, (events, late): (u64, u64), lateness: Time) {
    let metrics = &crate::metrics::METRICS;
    let name = [state.stats.partition.as_str()];
    metrics.events.with_label_values(&name).inc_by(state.stats.events - events);
    metrics.late.with_label_values(&name).inc_by(state.stats.late - late);
    let position = match state.partition.position() {
        Some(PartitionPosition::Bytes { offset, .. } | PartitionPosition::Items(offset)) => i64::try_from(offset).ok(),
        Some(PartitionPosition::Offset(offset)) => Some(offset),
        None => None,
    };
    if let Some(position) = position {
        metrics.position.with_label_values(&name).set(position);
    }
    metrics.watermark.with_label_values(&name).set(i64::try_from(state.watermark(lateness)).unwrap_or(i64::MAX));
}

/// How a source takes part in checkpoints.
pub struct SourceCheckpoints<'s> {
    /// Checkpoint barriers (broadcast): a record `F` asks for every partition's part at `F`.
    pub barriers: StreamVec<'s, Time, Time>,
    /// The checkpoint the job resumes from.
    pub restore: Option<Arc<Checkpoint>>,
}

/// A partition's part of a checkpoint: `(F, partition name, part)`.
pub type PartitionPart = (Time, String, PartitionCheckpoint);

/// A shared slot for the first error a source hits (an I/O error ends the job with that error).
pub type ErrorSlot = Rc<RefCell<Option<anyhow::Error>>>;

/// Builds a source reading `partitions` (this worker's share); returns the events, the side
/// records, and the partitions' checkpoint parts (on worker 0).
///
/// Events are sent in messages at the source's capability and carry their own time in
/// [`Event::time`] (at or after the message's time), as differential updates do.
/// `probe` is the job's output probe, used to bound the batches in flight. With checkpoints, the
/// source notes where each batch it read started (position, watermark, counts) and the greatest
/// time it gave its records, and on a barrier `F` sends, per partition, the start of the first
/// batch with a record at or after `F`. A restored partition seeks there and reads on, giving only
/// the records at or after `F` (their times are a function of the partition's records before
/// them, so they are the times they had).
#[allow(clippy::too_many_arguments)]
pub fn partitioned_source<'s>(
    scope: Scope<'s, Time>,
    name: &str,
    partitions: Vec<Box<dyn Partition>>,
    config: SourceConfig,
    probe: ProbeHandle<Time>,
    errors: ErrorSlot,
    checkpoints: Option<SourceCheckpoints<'s>>,
) -> (StreamVec<'s, Time, Event>, StreamVec<'s, Time, SideRecord>, StreamVec<'s, Time, PartitionPart>) {
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let info = builder.operator_info();
    let logging = checkpoints.is_some();
    let (barriers, restore) = match checkpoints {
        Some(c) => (c.barriers, c.restore),
        None => (timely::dataflow::operators::generic::operator::empty(scope), None),
    };
    let (events_out, events) = builder.new_output::<Vec<Event>>();
    let (side_out, side) = builder.new_output::<Vec<SideRecord>>();
    let (parts_out, parts) = builder.new_output::<Vec<PartitionPart>>();
    let mut events_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Event>>>::from(events_out);
    let mut side_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<SideRecord>>>::from(side_out);
    let mut parts_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<PartitionPart>>>::from(parts_out);
    // Barriers hold back the side records (so that the dead letters written when a checkpoint is
    // cut are exactly those before it) and the parts, but not the events: the barriers follow the
    // events' frontier.
    let identity = || timely::progress::Antichain::from_elem(Default::default());
    let not_events = [(1, identity()), (2, identity())];
    let mut barriers_in = builder.new_input_connection(barriers, timely::dataflow::channels::pact::Pipeline, not_events);
    let activator = scope.activator_for(Rc::clone(&info.address));
    let waker = scope.worker().sync_activator_for(info.address.to_vec());

    builder.build(move |mut capabilities| {
        // The parts output answers barriers with their own capabilities.
        capabilities.pop();
        let mut open: Vec<PartitionState> = Vec::new();
        let mut done: Vec<PartitionState> = Vec::new();
        let mut all_wake = true;
        for mut partition in partitions {
            let waker = waker.clone();
            // An error only means the worker has gone.
            all_wake &= partition.wake_on_arrival(Arc::new(move || {
                let _ = waker.activate();
            }));
            let stats = PartitionStats { partition: partition.name(), ..Default::default() };
            let mut state = PartitionState { partition, max_ts: None, stats, batches: VecDeque::new(), skip_before: None, dead_letter_run: DeadLetterRun::default() };
            match restore.as_ref().and_then(|c| c.partitions.get(&state.stats.partition)) {
                Some(part) => {
                    if let Err(error) = state.partition.seek(&part.position) {
                        errors.borrow_mut().get_or_insert(error.context(format!("restoring partition {}", state.stats.partition)));
                    }
                    state.max_ts = part.max_ts;
                    state.stats = part.stats.clone();
                    state.skip_before = restore.as_ref().map(|c| c.frontier);
                    if part.finished {
                        done.push(state);
                    } else {
                        open.push(state);
                    }
                }
                None => open.push(state),
            }
        }
        // A restored job starts at the checkpoint's frontier.
        if let Some(frontier) = restore.as_ref().map(|c| c.frontier) {
            for cap in capabilities.iter_mut() {
                cap.downgrade(&frontier);
            }
        }
        let mut caps = Some(capabilities);
        // An operator with an input is scheduled by its input; a source must start by itself.
        activator.activate();
        // Records sent per watermark not yet passed by the output: `(watermark, records)`.
        let mut in_flight: VecDeque<(Time, usize)> = VecDeque::new();
        let max_in_flight = config.batch * config.max_batches_in_flight;
        let mut items = Vec::new();
        move |frontiers| {
            // Checkpoint barriers: every partition's part, then forget what no barrier can need.
            barriers_in.for_each(|cap, data| {
                let mut handle = parts_out.activate();
                for at in data.drain(..) {
                    let cap = cap.delayed(&at, 2);
                    let mut session = handle.session(&cap);
                    let parts = open.iter().map(|s| (s, false)).chain(done.iter().map(|s| (s, true)));
                    for (state, finished) in parts {
                        match state.checkpoint(at, finished) {
                            Some(part) => session.give((at, state.stats.partition.clone(), part)),
                            None => tracing::warn!(partition = %state.stats.partition, "this partition cannot resume from a checkpoint"),
                        }
                    }
                }
            });
            if logging {
                let keep_from = frontiers[0].frontier().first().copied();
                for state in open.iter_mut().chain(done.iter_mut()) {
                    while state.batches.front().is_some_and(|b| keep_from.is_none_or(|k| b.max_time < k)) {
                        state.batches.pop_front();
                    }
                }
            }
            let Some(capabilities) = caps.as_mut() else { return };
            // Back-pressure: wait until the output has caught up with older records.
            while let Some((t, _)) = in_flight.front() {
                if probe.less_than(t) {
                    break;
                }
                in_flight.pop_front();
            }
            if in_flight.iter().map(|(_, n)| n).sum::<usize>() >= max_in_flight {
                activator.activate_after(Duration::from_micros(100));
                return;
            }
            let mut events_handle = events_out.activate();
            let mut side_handle = side_out.activate();
            let mut events_session = events_handle.session(&capabilities[0]);
            let mut side_session = side_handle.session(&capabilities[1]);
            let lateness = config.allowed_lateness;
            // Events are never stamped before the capability; only idle partitions that wake up
            // behind it (the others hold it back) see it above their own watermark.
            let floor = *capabilities[0].time();
            let stopping = config.stop.load(Ordering::Relaxed);
            let mut read = 0;
            let mut dead_letters: Vec<(Time, DeadLetter)> = Vec::new();
            let mut finished = Vec::new();
            let per_partition = config.batch.div_ceil(open.len().max(1)).max(64);
            for (index, state) in open.iter_mut().enumerate() {
                items.clear();
                let start = logging.then(|| (state.partition.position(), state.max_ts, state.stats.clone()));
                let (events_before, late_before) = (state.stats.events, state.stats.late);
                let polled = if stopping { Ok(false) } else { state.partition.poll(per_partition, &mut items) };
                let more = match polled {
                    Ok(more) => more,
                    Err(error) => {
                        let error = error.context(format!("reading partition {}", state.stats.partition));
                        tracing::error!("{error:#}");
                        errors.borrow_mut().get_or_insert(error);
                        false
                    }
                };
                config.records_read.fetch_add(items.len() as u64, Ordering::Relaxed);
                read += items.len();
                let mut max_time = None;
                for item in items.drain(..) {
                    // The time a record is given at, from its partition's records before it; a
                    // restored partition re-reading records it gave before the checkpoint skips them.
                    let own_watermark = state.watermark(lateness);
                    let skip = |time: Time| state.skip_before.is_some_and(|f| time < f);
                    match item {
                        Item::Event(mut event) => {
                            // (A record given before the checkpoint was judged against its own
                            // partition's watermark: the floor only matters after an idle spell.)
                            let skipped = skip(event.ts.max(own_watermark));
                            let watermark = if skipped { own_watermark } else { own_watermark.max(floor) };
                            if event.ts < watermark {
                                event.time = watermark;
                                event.late = true;
                                state.stats.late += 1;
                            } else {
                                event.time = event.ts;
                                state.max_ts = Some(state.max_ts.map_or(event.ts, |m| m.max(event.ts)));
                            }
                            state.stats.events += 1;
                            if !skipped {
                                max_time = max_time.max(Some(event.time));
                                events_session.give(event);
                            }
                        }
                        Item::Rejected(dead) => {
                            state.stats.rejected += 1;
                            // At its partition's watermark: a function of the partition's records
                            // before it, so the dead-letter output's order does not depend on how
                            // reading was batched (or resumed).
                            if !skip(own_watermark) {
                                let time = own_watermark.max(floor);
                                max_time = max_time.max(Some(time));
                                state.dead_letter_run.admit(time, dead, config.dead_letter_burst, &mut dead_letters);
                            }
                        }
                        Item::Lost(dead) => {
                            state.stats.rejected += 1;
                            let time = own_watermark.max(floor).max(state.skip_before.unwrap_or(0));
                            max_time = max_time.max(Some(time));
                            dead_letters.push((time, dead));
                        }
                        Item::Label(label) => {
                            if !skip(label.ts) {
                                side_session.give(SideRecord::Label(label));
                            }
                        }
                    }
                }
                record_partition_metrics(state, (events_before, late_before), lateness);
                if let (Some((Some(position), max_ts, stats)), Some(max_time)) = (start, max_time) {
                    state.batches.push_back(Batch { position, max_ts, stats, max_time });
                }
                if !more {
                    finished.push(index);
                }
            }
            for index in finished.into_iter().rev() {
                let mut state = open.remove(index);
                tracing::debug!(partition = %state.stats.partition, events = state.stats.events, "partition exhausted");
                state.dead_letter_run.close(&mut dead_letters);
                side_session.give(SideRecord::Finished(state.stats.clone()));
                done.push(state);
            }
            // The least watermark of the partitions still holding the frontier back; when all are
            // idle, the frontier stays where it is. Dead-letter runs it passes end first.
            let watermark = open.iter().filter(|s| !s.partition.idle()).map(|s| s.watermark(lateness)).min().unwrap_or(floor);
            let ending = errors.borrow().is_some();
            for state in open.iter_mut() {
                if ending || state.dead_letter_run.time().is_some_and(|time| time < watermark) {
                    state.dead_letter_run.close(&mut dead_letters);
                }
            }
            drop(events_session);
            drop(side_session);
            for (time, dead) in dead_letters.drain(..) {
                side_handle.session(&capabilities[1].delayed(&time)).give(SideRecord::DeadLetter(dead));
            }
            if open.is_empty() || errors.borrow().is_some() {
                caps = None;
                return;
            }
            for cap in capabilities.iter_mut() {
                if *cap.time() < watermark {
                    cap.downgrade(&watermark);
                }
            }
            match in_flight.back_mut() {
                Some((t, n)) if *t == watermark => *n += read,
                _ => in_flight.push_back((watermark, read)),
            }
            if read > 0 {
                activator.activate();
            } else {
                // Nothing to read right now (a caught-up Kafka partition): look again shortly
                // instead of spinning, or, when every partition wakes the source on arrival, only
                // to notice idleness and stops.
                activator.activate_after(Duration::from_millis(if all_wake { 10 } else { 1 }));
            }
        }
    });
    (events, side, parts.exchange(|_| 0))
}

/// How a source turns records into events.
#[derive(Clone, Debug)]
pub struct Decoding {
    /// Records longer than this are rejected.
    pub max_record_bytes: usize,
    /// Canonical events, or providers' records through mappings.
    pub format: RecordFormat,
    /// How far an event's time may be ahead of the time its record was written (a Kafka
    /// message's timestamp, an input file's modification time): an event further ahead is
    /// rejected, so that one broken clock or hostile record cannot move its partition's
    /// watermark into the future and make every later event late. Both times are read from the
    /// record's source, so a re-read after a restore decides the same.
    pub max_future_skew: Time,
}

impl Decoding {
    /// Records a source reads at a time unless told (`--read-batch`): 32,768 canonical events, or
    /// [`RAW_RECORDS_BATCH`] providers' raw records.
    pub fn default_batch(&self) -> usize {
        if self.format.is_canonical() {
            SourceConfig::default().batch
        } else {
            RAW_RECORDS_BATCH
        }
    }
}

/// The default of [`Decoding::max_future_skew`]: 15 minutes.
pub const DEFAULT_MAX_FUTURE_SKEW: Time = 15 * crate::event::MINUTE;

impl Default for Decoding {
    fn default() -> Self {
        Decoding {
            max_record_bytes: crate::event::DEFAULT_MAX_RECORD_BYTES,
            format: RecordFormat::Canonical,
            max_future_skew: DEFAULT_MAX_FUTURE_SKEW,
        }
    }
}

/// Why a record is not JSON, on one line: sonic-rs's message goes on with an excerpt of the
/// record, which the dead letter keeps whole anyway.
fn not_json(error: &sonic_rs::Error) -> String {
    let message = error.to_string();
    format!("not JSON: {}", message.lines().next().unwrap_or_default())
}

/// A record's items: its events (several when it holds a list of provider records), or dead
/// letters with the reason. `bytes` may hold only a prefix of a record of `size` bytes (an
/// oversized one); `written` is when the record was written, when the source knows (events more
/// than [`Decoding::max_future_skew`] after it are rejected); `position` is made for rejects only.
///
/// ```
/// use threatflow::event::Position;
/// use threatflow::ingest::partition::{decode_record, Decoding, Item};
///
/// let written = Some(1_767_571_200_000); // 2026-01-05
/// let position = || Position { source: "file:x".into(), record: 1, offset: 0 };
/// let mut out = Vec::new();
/// for ts in [1_767_571_200_000u64, 1_767_572_000_000, 4_102_444_800_000] {
///     let record = format!(r#"{{"event_id":"e{ts}","ts":{ts},"user":"u","action":"login"}}"#);
///     decode_record(record.as_bytes(), record.len(), &Decoding::default(), written, position, &mut out);
/// }
/// assert!(matches!(out[0], Item::Event(_)));
/// assert!(matches!(out[1], Item::Event(_)), "13 minutes ahead: within the 15 minutes allowed");
/// let Item::Rejected(dead) = &out[2] else { panic!("2100-01-01 is rejected") };
/// assert!(dead.reason.contains("implausibly far in the future"), "{}", dead.reason);
/// ```
pub fn decode_record(
    bytes: &[u8],
    size: usize,
    decoding: &Decoding,
    written: Option<Time>,
    position: impl Fn() -> Position,
    out: &mut Vec<Item>,
) {
    let max_record_bytes = decoding.max_record_bytes;
    let reject = |reason: RejectReason, original: &[u8], size: usize| {
        let kept = &original[..original.len().min(max_record_bytes)];
        crate::metrics::METRICS.rejected.with_label_values(&[reason.class()]).inc();
        Item::Rejected(DeadLetter::new(&reason, position(), kept, size))
    };
    let skew = decoding.max_future_skew;
    let plausible = |event: Event| match written {
        Some(written) if event.ts > written.saturating_add(skew) => Err(RejectReason::AheadOfWriting { ts: event.ts, written, skew }),
        _ => Ok(Event { position: Some(position()), ..event }),
    };
    if size > max_record_bytes {
        out.push(reject(RejectReason::TooLarge { size, limit: max_record_bytes }, bytes, size));
        return;
    }
    if decoding.format.is_canonical() {
        out.push(match parse_event(bytes, max_record_bytes).and_then(plausible) {
            Ok(event) => Item::Event(event),
            Err(reason) => reject(reason, bytes, size),
        });
        return;
    }
    let parsed = std::str::from_utf8(bytes)
        .map_err(|e| RejectReason::InvalidUtf8(e.to_string()))
        .and_then(|text| sonic_rs::from_str::<crate::event::Record>(text).map_err(|e| RejectReason::Invalid(not_json(&e))));
    let mut decoded = Vec::new();
    match parsed {
        Ok(record) => decoding.format.decode(record, &mut decoded),
        // Sources that write text lines (flow logs, access logs) are read by their mappings.
        Err(reason) => {
            let text = std::str::from_utf8(bytes).unwrap_or_default();
            if !decoding.format.decode_text(text, &mut decoded) {
                return out.push(reject(reason, bytes, size));
            }
        }
    }
    for (result, element) in decoded {
        out.push(match result.and_then(plausible) {
            Ok(event) => Item::Event(event),
            // An element of a list is kept alone, so that it can be fixed and sent again.
            Err(reason) => match element {
                Some(text) => reject(reason, text.as_bytes(), text.len()),
                None => reject(reason, bytes, size),
            },
        });
    }
}
