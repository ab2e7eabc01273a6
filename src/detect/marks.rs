//! Marked threats: an analyst marks an event as a threat; later events with the same fingerprint
//! are decided as threats naming the mark.
//!
//! A mark carries its fingerprint: the fields it compares (the default, docs/semantics.md#marks, is `action`,
//! `resource`, `src_ip`, `user_agent`; `threatflow mark --fields` chooses others, raw records'
//! own fields included) and the marked event's values of them (`null` when it had none). An event
//! repeats the mark when each of those fields has the same value (an absent field equals `null`),
//! from the mark's `effective_from` on (by default just after the marked event's time). Marks are
//! JSON lines `{"id", "event_id", "fingerprint": {field: value}, "effective_from"}`; `{"id",
//! "effective_from", "remove": true}` removes one.
//!
//! The same file (or topic) carries the analyst's other decision: `{"id", "unblock": USER,
//! "effective_from"}` lifts the blocks of `USER` made before `effective_from` (see
//! [`crate::detect::verdicts`]); `threatflow unblock USER` writes it.
//!
//! ```
//! use threatflow::detect::marks::{Mark, DEFAULT_FIELDS};
//! use threatflow::event::parse_event;
//! let marked = parse_event(br#"{"event_id":"e1","ts":10,"user":"ann","action":"download","resource":"payroll.xlsx","src_ip":"203.0.113.9"}"#, 1 << 20)?;
//! let mark = Mark::of(&marked, &DEFAULT_FIELDS);
//! assert_eq!(mark.effective_from, 11);
//! let repeat = parse_event(br#"{"event_id":"e2","ts":99,"user":"bob","action":"download","resource":"payroll.xlsx","src_ip":"203.0.113.9"}"#, 1 << 20)?;
//! assert!(mark.matches(&repeat));
//! let other = parse_event(br#"{"event_id":"e3","ts":99,"user":"bob","action":"download","resource":"payroll.xlsx","src_ip":"203.0.113.9","user_agent":"curl"}"#, 1 << 20)?;
//! assert!(!mark.matches(&other));
//! # Ok::<(), threatflow::event::RejectReason>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::event::{Event, Time};

/// The default fingerprint fields (docs/semantics.md#marks).
pub const DEFAULT_FIELDS: [&str; 4] = ["action", "resource", "src_ip", "user_agent"];

/// A mark as it travels in the control collection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Mark {
    /// The mark's id (decisions name it in `fingerprint_match`).
    pub id: String,
    /// The marked event.
    pub event_id: String,
    /// Field to the marked event's value (`None`: it had none).
    pub fingerprint: BTreeMap<String, Option<String>>,
    /// Event time from which the mark applies.
    pub effective_from: Time,
}

impl Mark {
    /// The mark of an event on `fields`, in force just after the event's time; its id is
    /// `mark:EVENT_ID`.
    pub fn of(event: &Event, fields: &[&str]) -> Mark {
        let fingerprint = fields.iter().map(|f| (f.to_string(), event.field(f).map(|v| v.into_owned()))).collect();
        Mark { id: format!("mark:{}", event.event_id), event_id: event.event_id.to_string(), fingerprint, effective_from: event.ts.saturating_add(1) }
    }

    /// Whether an event has the marked fingerprint.
    pub fn matches(&self, event: &Event) -> bool {
        self.fingerprint.iter().all(|(field, value)| event.field(field).as_deref() == value.as_deref())
    }
}

/// The marks in force, indexed by fingerprint: finding the marks an event repeats costs one hash
/// lookup per distinct list of fingerprint fields, not a comparison with every mark (a team's
/// marks can number in the thousands, and every event is looked up).
///
/// It holds positions in the caller's list of marks and yields candidates, which the caller
/// confirms with [`Mark::matches`] (two fingerprints may share a hash).
///
/// ```
/// use threatflow::detect::marks::{Mark, MarkIndex, DEFAULT_FIELDS};
/// use threatflow::event::parse_event;
/// let event = |id: &str, ip: &str| parse_event(format!(r#"{{"event_id":"{id}","ts":10,"user":"ann","action":"download","src_ip":"{ip}"}}"#).as_bytes(), 1 << 20);
/// let marks = [Mark::of(&event("a", "203.0.113.9")?, &DEFAULT_FIELDS), Mark::of(&event("b", "198.51.100.7")?, &["src_ip"])];
/// let index = MarkIndex::new(marks.iter().enumerate());
/// assert_eq!(index.candidates(&event("c", "198.51.100.7")?).collect::<Vec<_>>(), [1]);
/// assert_eq!(index.candidates(&event("d", "203.0.113.9")?).collect::<Vec<_>>(), [0]);
/// # Ok::<(), threatflow::event::RejectReason>(())
/// ```
#[derive(Debug, Default)]
pub struct MarkIndex {
    by_fields: Vec<SameFields>,
}

/// The marks with one list of fingerprint fields.
#[derive(Debug)]
struct SameFields {
    fields: Vec<String>,
    /// The marks' positions by the hash of their values.
    by_hash: HashMap<u64, Vec<usize>>,
}

impl MarkIndex {
    /// Indexes marks given with their positions.
    pub fn new<'a>(marks: impl IntoIterator<Item = (usize, &'a Mark)>) -> MarkIndex {
        let mut index = MarkIndex::default();
        for (position, mark) in marks {
            let slot = match index.by_fields.iter().position(|same| same.fields.iter().eq(mark.fingerprint.keys())) {
                Some(slot) => slot,
                None => {
                    index.by_fields.push(SameFields { fields: mark.fingerprint.keys().cloned().collect(), by_hash: HashMap::new() });
                    index.by_fields.len() - 1
                }
            };
            let hash = fingerprint_hash(mark.fingerprint.values().map(Option::as_deref));
            index.by_fields[slot].by_hash.entry(hash).or_default().push(position);
        }
        index
    }

    /// The positions of the marks `event` may repeat.
    pub fn candidates<'s>(&'s self, event: &Event) -> impl Iterator<Item = usize> + 's {
        let hashes: Vec<u64> = self
            .by_fields
            .iter()
            .map(|same| {
                let values: Vec<_> = same.fields.iter().map(|field| event.field(field)).collect();
                fingerprint_hash(values.iter().map(Option::as_deref))
            })
            .collect();
        self.by_fields.iter().zip(hashes).flat_map(|(same, hash)| same.by_hash.get(&hash).into_iter().flatten().copied())
    }
}

/// The hash of a fingerprint's values, in field order (an absent value hashes as `None`).
fn fingerprint_hash<'a>(values: impl Iterator<Item = Option<&'a str>>) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    values.for_each(|value| value.hash(&mut hasher));
    hasher.finish()
}

/// An analyst's unblock of a user: the user's blocks made before `effective_from` no longer apply
/// to events from `effective_from` on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Unblock {
    /// The user.
    pub user: String,
    /// Event time from which the user is unblocked.
    pub effective_from: Time,
}

/// A mark update as written: a mark, the removal of one, or an unblock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkUpdate {
    /// The mark's id.
    pub id: String,
    /// The marked event (not needed for a removal).
    #[serde(default)]
    pub event_id: Option<String>,
    /// The fingerprint (not needed for a removal).
    #[serde(default)]
    pub fingerprint: BTreeMap<String, Option<String>>,
    /// From when.
    #[serde(default)]
    pub effective_from: Time,
    /// Removes the mark with this id.
    #[serde(default)]
    pub remove: bool,
    /// Not a mark: unblocks this user from `effective_from` on.
    #[serde(default)]
    pub unblock: Option<String>,
}

impl MarkUpdate {
    /// The update putting `mark` in force.
    pub fn of(mark: &Mark) -> MarkUpdate {
        MarkUpdate {
            id: mark.id.clone(),
            event_id: Some(mark.event_id.clone()),
            fingerprint: mark.fingerprint.clone(),
            effective_from: mark.effective_from,
            remove: false,
            unblock: None,
        }
    }

    /// The update unblocking `user` from `effective_from`.
    pub fn unblock(user: &str, effective_from: Time) -> MarkUpdate {
        MarkUpdate {
            id: format!("unblock:{user}@{effective_from}"),
            event_id: None,
            fingerprint: BTreeMap::new(),
            effective_from,
            remove: false,
            unblock: Some(user.to_string()),
        }
    }

    /// The unblock it asks for, if it is one.
    pub fn as_unblock(&self) -> Option<Unblock> {
        self.unblock.as_ref().map(|user| Unblock { user: user.clone(), effective_from: self.effective_from })
    }

    /// The update removing mark `id` (from 0; set `effective_from`).
    pub fn removal(id: String) -> MarkUpdate {
        MarkUpdate { id, event_id: None, fingerprint: BTreeMap::new(), effective_from: 0, remove: true, unblock: None }
    }

    /// The mark it puts in force (`None` for a removal or an unblock).
    pub fn mark(&self) -> Result<Option<Mark>> {
        if let Some(user) = &self.unblock {
            ensure!(!user.is_empty() && !self.remove, "unblock {}: needs a user and cannot be removed", self.id);
            return Ok(None);
        }
        if self.remove {
            return Ok(None);
        }
        ensure!(!self.fingerprint.is_empty(), "mark {}: an empty fingerprint would match every event", self.id);
        let event_id = self.event_id.clone().with_context(|| format!("mark {}: no event_id", self.id))?;
        Ok(Some(Mark { id: self.id.clone(), event_id, fingerprint: self.fingerprint.clone(), effective_from: self.effective_from }))
    }
}

/// Parses one JSON line of marks.
pub fn parse_update(line: &str) -> Result<MarkUpdate> {
    let update: MarkUpdate = serde_json::from_str(line).context("not a mark {id, event_id, fingerprint, effective_from}")?;
    update.mark()?;
    Ok(update)
}

/// Finds event `event_id` in JSON-lines files of events (canonical, or providers' records through
/// `format`).
pub fn find_event(inputs: &[&Path], event_id: &str, format: &crate::ingest::mapping::RecordFormat) -> Result<Event> {
    use crate::ingest::partition::{Decoding, Item, Partition};
    for path in inputs {
        let decoding = Decoding { format: format.clone(), ..Decoding::default() };
        let mut partition = crate::ingest::files::JsonLinesPartition::open(path, decoding)?;
        let mut items = Vec::new();
        loop {
            items.clear();
            let more = partition.poll(4096, &mut items)?;
            for item in items.drain(..) {
                if let Item::Event(event) = item {
                    if event.event_id == event_id {
                        return Ok(event);
                    }
                }
            }
            if !more {
                break;
            }
        }
    }
    anyhow::bail!("no event {event_id:?} in {}", inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An event with these values of `resource`, `src_ip` and `user_agent` (`None`: absent).
    fn event(values: &[Option<u8>; 3]) -> Event {
        let mut record = serde_json::json!({"event_id": "e", "ts": 5, "user": "ann", "action": "download"});
        for (field, value) in ["resource", "src_ip", "user_agent"].iter().zip(values) {
            if let Some(v) = value {
                record[field] = serde_json::Value::String(format!("{field}{v}"));
            }
        }
        crate::event::parse_event(record.to_string().as_bytes(), 1 << 20).expect("an event")
    }

    proptest! {
        /// The index finds exactly the marks a comparison with every mark finds, for marks on
        /// different field lists and values that may be absent.
        #[test]
        fn the_index_finds_what_a_scan_finds(
            marked in proptest::collection::vec((proptest::array::uniform3(proptest::option::of(0u8..3)), 0usize..3), 0..40),
            events in proptest::collection::vec(proptest::array::uniform3(proptest::option::of(0u8..3)), 1..20),
        ) {
            let field_lists: [&[&str]; 3] = [&["resource", "src_ip", "user_agent"], &["src_ip"], &["resource", "user_agent"]];
            let marks: Vec<Mark> = marked.iter().map(|(values, fields)| Mark::of(&event(values), field_lists[*fields])).collect();
            let index = MarkIndex::new(marks.iter().enumerate());
            for values in &events {
                let event = event(values);
                let mut found: Vec<usize> = index.candidates(&event).filter(|i| marks[*i].matches(&event)).collect();
                found.sort();
                let scanned: Vec<usize> = (0..marks.len()).filter(|i| marks[*i].matches(&event)).collect();
                prop_assert_eq!(found, scanned);
            }
        }
    }
}
