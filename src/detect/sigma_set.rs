//! The Sigma rules in force as one set, indexed by the records they can match: the decision step
//! matches an event's record against it, and the decoders match each provider's record against
//! the latest set as soon as it is parsed, while it is still in the caches ([`LatestSigmaSet`]).
//!
//! A record matched early keeps the matches and its text instead of its parsed form (see
//! [`crate::event::Fields::settle`]): the decision step uses the matches when the set in force at
//! the event's time is the one they were made with (the same rules in the same order: the same
//! fingerprint) and matches the record again otherwise, so decisions do not depend on when a
//! record was decoded.
//!
//! ```
//! use threatflow::detect::sigma::{Placeholders, RecordView, SigmaRule};
//! use threatflow::detect::sigma_set::SigmaSet;
//!
//! let rule = |name: &str| SigmaRule::parse(&format!(
//!     "title: {name}\nlogsource: {{product: aws, service: cloudtrail}}\ndetection: {{sel: {{eventName: {name}}}, condition: sel}}"
//! ), &Placeholders::default());
//! let set = SigmaSet::new(vec![rule("GetObject")?, rule("DeleteBucket")?]);
//! let record = sonic_rs::from_str(r#"{"eventName": "DeleteBucket"}"#)?;
//! let view = RecordView::new(&record);
//! assert_eq!(set.matched(&set.for_source("aws.cloudtrail"), &view).as_slice(), [1]);
//! assert!(set.matched(&set.for_source("okta"), &view).is_empty());
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use smallvec::SmallVec;

use crate::detect::sigma::{FieldName, RecordView, SigmaRule};
use crate::event::{EarlyMatches, Event, Text, Time};
use crate::ingest::partition::EarlyMatching;

/// Sigma rules in an order, with the fingerprint of that order and their texts.
#[derive(Debug)]
pub struct SigmaSet {
    fingerprint: u128,
    rules: Vec<SigmaRule>,
}

/// The rules of a [`SigmaSet`] that apply to one source, by their positions in the set.
#[derive(Debug, Default)]
pub struct SourceRules {
    /// Without a required field: tried on every record of the source.
    unkeyed: Vec<u32>,
    /// Per required field, the rules by each (lower-cased) value it must hold.
    keyed: Vec<(FieldName, RulesByValue)>,
}

/// Rules by a (lower-cased) value their required field must hold, with the longest value's
/// length: a longer ASCII text (user agents, messages) holds none of them and is not folded.
#[derive(Debug, Default)]
struct RulesByValue {
    rules: HashMap<String, Vec<u32>, foldhash::fast::FixedState>,
    longest: usize,
}

impl RulesByValue {
    /// The rules whose value `text` is, ignoring case (as `crate::event::lower_case` folds it).
    /// ASCII texts, nearly all, are folded on the stack.
    fn of_text(&self, text: &str) -> &[u32] {
        const ON_STACK: usize = 64;
        let found = match text.is_ascii() {
            true if text.len() > self.longest => None,
            true if !text.bytes().any(|b| b.is_ascii_uppercase()) => self.rules.get(text),
            true if text.len() <= ON_STACK => {
                let mut folded = [0u8; ON_STACK];
                let folded = &mut folded[..text.len()];
                folded.copy_from_slice(text.as_bytes());
                folded.make_ascii_lowercase();
                std::str::from_utf8(folded).ok().and_then(|folded| self.rules.get(folded))
            }
            _ => self.rules.get(crate::event::lower_case(text.into()).as_ref()),
        };
        found.map_or(&[], Vec::as_slice)
    }
}

impl Default for SigmaSet {
    fn default() -> Self {
        SigmaSet::new(Vec::new())
    }
}

impl SigmaSet {
    /// The set of `rules` in this order.
    pub fn new(rules: Vec<SigmaRule>) -> SigmaSet {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        rules.len().hash(&mut hasher);
        rules.iter().for_each(|rule| rule.hash(&mut hasher));
        SigmaSet { fingerprint: hasher.digest128(), rules }
    }

    /// What names the rules and their order: two sets with the same fingerprint match a record
    /// alike.
    pub fn fingerprint(&self) -> u128 {
        self.fingerprint
    }

    /// The rules that apply to `source`'s records (correlation rules match none), indexed by a
    /// field a rule needs to hold one of a few exact values, when it has one (see
    /// [`SigmaRule::requirements`]): of a rule's such fields, the one most of the source's rules
    /// have, so that a record's fields are looked up for few of them.
    pub fn for_source(&self, source: &str) -> SourceRules {
        let applies = |sigma: &&SigmaRule| sigma.applies_to(source) && sigma.correlation().is_none();
        // (A few fields: a list.)
        let mut rules_having: Vec<(FieldName, usize)> = Vec::new();
        for (field, _) in self.rules.iter().filter(applies).flat_map(|sigma| sigma.requirements()) {
            match rules_having.iter_mut().find(|(known, _)| known == field) {
                Some((_, count)) => *count += 1,
                None => rules_having.push((*field, 1)),
            }
        }
        let having = |field: &FieldName| rules_having.iter().find(|(known, _)| known == field).map_or(0, |(_, count)| *count);
        let mut rules = SourceRules::default();
        for (position, sigma) in (0u32..).zip(&self.rules) {
            if !applies(&sigma) {
                continue;
            }
            // (The first of those most rules have: `max_by_key` would take the last.)
            let most = sigma.requirements().iter().rev().max_by_key(|(field, _)| having(field));
            match most {
                None => rules.unkeyed.push(position),
                Some((field, values)) => {
                    let slot = match rules.keyed.iter().position(|(f, _)| f == field) {
                        Some(slot) => slot,
                        None => {
                            rules.keyed.push((*field, RulesByValue::default()));
                            rules.keyed.len() - 1
                        }
                    };
                    let by_value = &mut rules.keyed[slot].1;
                    for value in values {
                        by_value.rules.entry(value.clone()).or_default().push(position);
                        by_value.longest = by_value.longest.max(value.len());
                    }
                }
            }
        }
        rules
    }

    /// The positions, ascending, of the rules of `of_source` (this set's [`SigmaSet::for_source`])
    /// whose detections match the record `view` reads: the candidates its required fields' values
    /// name, matched in full.
    pub fn matched<'v>(&'v self, of_source: &SourceRules, view: &RecordView<'v>) -> SmallVec<[u32; 4]> {
        let mut candidates: SmallVec<[u32; 16]> = of_source.unkeyed.iter().copied().collect();
        for (field, by_value) in &of_source.keyed {
            view.each_text(*field, |text| candidates.extend_from_slice(by_value.of_text(text)));
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates.into_iter().filter(|&position| self.rules.get(position as usize).is_some_and(|rule| rule.matches_detection(view))).collect()
    }
}

/// The latest set the decision step built, shared by the process's decoders, which match records
/// against it early ([`EarlyMatching`]). Each decoding thread keeps its own reference to the set
/// and its per-source indexes, and looks at the shared one only when a newer set was published.
#[derive(Debug)]
pub struct LatestSigmaSet {
    /// Names this instance in the threads' caches.
    id: u64,
    /// How many sets were published (0: none yet).
    generation: AtomicU64,
    /// The latest set, with the time of the event it was built for.
    set: Mutex<Option<(Arc<SigmaSet>, Time)>>,
}

/// Names each [`LatestSigmaSet`] of the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A decoding thread's reference to a published set, with that set's rules per source.
struct Cached {
    id: u64,
    generation: u64,
    set: Arc<SigmaSet>,
    sources: Vec<(Text, SourceRules)>,
}

thread_local! {
    static CACHED: RefCell<Option<Cached>> = const { RefCell::new(None) };
}

impl LatestSigmaSet {
    /// No set yet.
    pub fn new() -> Arc<LatestSigmaSet> {
        Arc::new(LatestSigmaSet { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), generation: AtomicU64::new(0), set: Mutex::new(None) })
    }

    /// Makes `set`, built for an event at `time`, the latest, unless the latest was built for a
    /// later event (a worker behind the others) or has its fingerprint.
    pub fn publish(&self, set: &Arc<SigmaSet>, time: Time) {
        let mut latest = self.set.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match latest.as_mut() {
            Some((known, at)) if known.fingerprint == set.fingerprint => {
                *at = (*at).max(time);
                return;
            }
            Some((_, at)) if *at > time => return,
            _ => {}
        }
        *latest = Some((Arc::clone(set), time));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// This thread's reference to the latest set, refreshed when a newer one was published.
    fn refreshed(&self, cached: &mut Option<Cached>) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        if generation == 0 {
            return false;
        }
        if cached.as_ref().is_some_and(|c| (c.id, c.generation) == (self.id, generation)) {
            return true;
        }
        let latest = self.set.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref().map(|(set, _)| Arc::clone(set));
        *cached = latest.map(|set| Cached { id: self.id, generation, set, sources: Vec::new() });
        cached.is_some()
    }
}

impl EarlyMatching for LatestSigmaSet {
    fn early_matches(&self, event: &Event) -> Option<EarlyMatches> {
        // (Sigma rules match providers' records only; a canonical event's fields are not one.)
        let source = event.source.as_ref()?;
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if !self.refreshed(&mut cached) {
                return None;
            }
            let cached = cached.as_mut()?;
            let slot = match cached.sources.iter().position(|(known, _)| known == source) {
                Some(slot) => slot,
                None => {
                    cached.sources.push((source.clone(), cached.set.for_source(source)));
                    cached.sources.len() - 1
                }
            };
            let (set, of_source) = (&cached.set, &cached.sources[slot].1);
            let matched = set.matched(of_source, &RecordView::of_fields(&event.extra));
            Some(EarlyMatches { rules: set.fingerprint, matched })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::sigma::Placeholders;

    fn rule(detection: &str) -> SigmaRule {
        let text = format!("title: t\nlogsource: {{product: aws, service: cloudtrail}}\ndetection:\n{detection}");
        SigmaRule::parse(&text, &Placeholders::default()).expect("a valid rule")
    }

    fn fields(rule: &SigmaRule) -> Vec<(&str, Vec<&str>)> {
        rule.requirements().iter().map(|(field, values)| (field.as_str(), values.iter().map(String::as_str).collect())).collect()
    }

    /// Every field an `and` pins is a requirement; an `or` keeps those all its parts pin, with
    /// all their values; a `not` and a wildcard pin nothing.
    #[test]
    fn requirements_are_the_fields_a_match_needs() {
        let both = rule("  sel: {eventSource: s3.amazonaws.com, eventName: [GetObject, PutObject]}\n  filter: {userAgent: x}\n  condition: sel and not filter");
        assert_eq!(fields(&both), [("eventName", vec!["getobject", "putobject"]), ("eventSource", vec!["s3.amazonaws.com"])]);
        let either = rule("  a: {eventSource: s3.amazonaws.com, eventName: GetObject}\n  b: {eventName: ListBuckets, userAgent|contains: cli}\n  condition: a or b");
        assert_eq!(fields(&either), [("eventName", vec!["getobject", "listbuckets"])]);
        assert!(rule("  sel: {eventName|startswith: Get}\n  condition: sel").requirements().is_empty());
        assert!(rule("  sel: {eventName: Get}\n  condition: not sel").requirements().is_empty());
    }

    /// The latest set is the one built for the latest event: a worker behind the others does not
    /// put back an older one.
    #[test]
    fn the_latest_set_is_the_one_for_the_latest_event() {
        let older = Arc::new(SigmaSet::new(vec![rule("  sel: {eventName: A}\n  condition: sel")]));
        let newer = Arc::new(SigmaSet::new(vec![rule("  sel: {eventName: B}\n  condition: sel")]));
        let latest = LatestSigmaSet::new();
        let published = || latest.set.lock().ok().and_then(|set| set.as_ref().map(|(set, at)| (set.fingerprint(), *at)));
        latest.publish(&older, 5);
        latest.publish(&newer, 10);
        latest.publish(&older, 7);
        assert_eq!(published(), Some((newer.fingerprint(), 10)));
        latest.publish(&newer, 12);
        assert_eq!(published(), Some((newer.fingerprint(), 12)));
        assert_eq!(latest.generation.load(Ordering::Relaxed), 2);
    }

    /// A rule is indexed by the required field most of the source's rules have, so that a record's
    /// fields are looked up for few of them; a rule without one is tried on every record.
    #[test]
    fn rules_are_indexed_by_the_field_most_have() {
        let set = SigmaSet::new(vec![
            rule("  sel: {errorMessage: Failed authentication, eventName: ConsoleLogin}\n  condition: sel"),
            rule("  sel: {eventName: GetObject}\n  condition: sel"),
            rule("  sel: {userAgent|contains: trufflehog}\n  condition: sel"),
        ]);
        let of_source = set.for_source("aws.cloudtrail");
        assert_eq!(of_source.unkeyed, [2]);
        assert_eq!(of_source.keyed.len(), 1);
        let (field, by_value) = &of_source.keyed[0];
        assert_eq!(field.as_str(), "eventName");
        assert_eq!((by_value.of_text("ConsoleLogin"), by_value.of_text("GETOBJECT"), by_value.of_text("DeleteBucket")), (&[0][..], &[1][..], &[][..]));
        assert!(set.for_source("okta").keyed.is_empty());
    }
}
