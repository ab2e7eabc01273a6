//! What partitions are and what they yield: the [`Partition`] trait, its [`Item`]s, and how a
//! record is decoded into them ([`Decoding`], [`decode_record`]). The operators that read
//! partitions and give their events times are in [`crate::ingest::source`].
//!
//! A partition is a unit of order (an input file, a generator partition, a Kafka partition).
//! Partitions are fixed independently of the number of workers, and each is read by one worker, so
//! which events are late, and hence every decision, does not depend on how many workers run.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{PartitionPosition, PartitionStats};
use crate::event::{parse_event, DeadLetter, Event, Position, RejectReason, Time};
use crate::ingest::truth::Label;
use crate::ingest::mapping::RecordFormat;

/// What a partition yields.
// Events are nearly every item: boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// A provider's record read but not decoded yet ([`Decoding::defer`]): the source has it
    /// decoded on any worker.
    Record(RawRecord),
}

/// A record as read, with what decoding it needs to know (see [`decode_record`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RawRecord {
    /// The record, or the first [`Decoding::max_record_bytes`] of an oversized one.
    pub bytes: Vec<u8>,
    /// Its whole length.
    pub size: usize,
    /// When it was written, when the source knows.
    pub written: Option<Time>,
    /// Where it was read.
    pub position: Position,
    /// The ground truth of the generated event it renders (the embedded generator only).
    pub label: Option<Label>,
}

impl RawRecord {
    /// The record's items, as [`Decoding::read`] would have given them.
    pub fn decode(self, decoding: &Decoding, out: &mut Vec<Item>) {
        decode_labelled(&self.bytes, self.size, decoding, self.written, || self.position.clone(), self.label, out);
    }
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

/// A shared slot for the first error a source hits (an I/O error ends the job with that error).
pub type ErrorSlot = Rc<RefCell<Option<anyhow::Error>>>;

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
    /// How the partitions decode their records (their own [`Decoding`]): those they leave
    /// undecoded ([`Decoding::defers`]) are decoded on every worker.
    pub decoding: Decoding,
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
            decoding: Decoding::default(),
        }
    }
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
    /// Whether partitions leave providers' raw records undecoded ([`Item::Record`]) for the
    /// source to decode on every worker: parsing and mapping cost most of reading them, and one
    /// partition's worker would do it alone. Canonical events are decoded as they are read, which
    /// costs less than sending them.
    pub defer: bool,
    /// Matches a provider's record against the Sigma rules as soon as it is decoded, while it is
    /// in the caches, so that its event can keep the record's text rather than its parsed form
    /// (see [`crate::event::Fields::settle`]); `None`: rules read the parsed record later.
    pub early_matching: Option<Arc<dyn EarlyMatching>>,
}

/// Matches a decoded event's record against the rules likely to be in force at its time (the
/// decision step checks that they are: see `crate::detect::sigma_set`).
pub trait EarlyMatching: std::fmt::Debug + Send + Sync {
    /// The rules `event`'s record matches, when a rule set is known yet.
    fn early_matches(&self, event: &Event) -> Option<crate::event::EarlyMatches>;
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

    /// Whether partitions leave their records undecoded (see [`Decoding::defer`]).
    pub fn defers(&self) -> bool {
        self.defer && !self.format.is_canonical()
    }

    /// Gives a record a partition read: its items (see [`decode_record`]), or the record itself
    /// when decoding is deferred. `label` is the ground truth of the generated event it renders;
    /// it follows the record's items.
    pub fn read(&self, bytes: &[u8], size: usize, written: Option<Time>, position: impl Fn() -> Position, label: Option<Label>, out: &mut Vec<Item>) {
        if self.defers() {
            let bytes = bytes[..bytes.len().min(self.max_record_bytes)].to_vec();
            out.push(Item::Record(RawRecord { bytes, size, written, position: position(), label }));
        } else {
            decode_labelled(bytes, size, self, written, position, label, out);
        }
    }
}

/// [`decode_record`], then the ground truth of the generated event the record renders. The label
/// names the user as the provider's record does (an ARN in CloudTrail): it follows the record's
/// event.
fn decode_labelled(bytes: &[u8], size: usize, decoding: &Decoding, written: Option<Time>, position: impl Fn() -> Position, label: Option<Label>, out: &mut Vec<Item>) {
    let first = out.len();
    decode_record(bytes, size, decoding, written, position, out);
    if let Some(mut label) = label {
        if let Some(Item::Event(mapped)) = out.get(first) {
            label.user = mapped.user.to_string();
        }
        out.push(Item::Label(label));
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
            defer: false,
            early_matching: None,
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
        .and_then(|text| Ok((text, sonic_rs::from_str::<crate::event::Record>(text).map_err(|e| RejectReason::Invalid(not_json(&e)))?)));
    let mut decoded = Vec::new();
    match parsed {
        Ok((text, record)) => {
            decoding.format.decode(record, &mut decoded);
            // A record that is one event is matched now, and its event keeps the record's text.
            if let (Some(early), [(Ok(event), None)]) = (&decoding.early_matching, decoded.as_mut_slice()) {
                if let Some(matches) = early.early_matches(event) {
                    event.extra.settle(text, matches);
                }
            }
        }
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
