//! New-terms rules evaluated incrementally: per rule and combination of field values, until when
//! the combination is remembered (docs/semantics.md#new-terms-rules).
//!
//! ```text
//!                    ┌─ combinations with `user` (stay on the user's worker) ──────────┐
//! events + features ─┤  StatefulRulesObserve (as of each event's time: the new-terms   ├─► NewTermsHistory ──► hits
//!                    │  rules in force that choose it) ── other combinations (by key) ─┤        ▲
//!                    └─ first observations (by rule) ──► NewTermsFirstObserved ─(to all)┘────────┘
//! ```
//!
//! An event chosen by a rule is an observation of its combination `(rule id, field names,
//! values)`, kept as one 128-bit key. The history holds, per key, the time until which it is
//! remembered (the greatest `time + history` of its observations). A combination that has `user`
//! among its fields is kept on the user's worker, where its events already are: most rules
//! (`user` + something) cost no exchange; the others are sent to the worker of their key.
//! Observations are taken in time order once every input has passed their time, all of one
//! millisecond together: a combination not remembered at `t` is new, and its observation at `t`
//! with the smallest event id hits, unless the rule is still learning: `t` is before its first
//! observation (on any worker, by judged time) plus `learning`. Everything is by judged time, so a
//! late event is observed at its partition's watermark: it never changes what was already emitted.
//!
//! Hits are correlation-style matches ([`Hit`]): the verdict step adds them to their event's
//! decision. The history (`new-terms`) and each rule's first observation
//! (`new-terms-first-observed`) are checkpointed. The history takes 33 bytes per slot of its hash
//! table (key, time, control byte) and a combination 1.1 to 2.3 slots; the `threatflow_state_keys`
//! and `threatflow_state_table_bytes` metrics show both.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange as ExchangePact, Pipeline};
use timely::dataflow::operators::vec::{Broadcast, Map, Partition};
use timely::dataflow::StreamVec;

use crate::checkpoint::operator::{CheckpointedOperator, CheckpointedState, StateCheckpoints, Step};
use crate::detect::action::{Severity, ThreatAction};
use crate::detect::control::{in_force, Control};
use crate::detect::correlation::Hit;
use crate::detect::decision::CorrelationMatch;
use crate::detect::rules::{field_value, Rule};
use crate::event::{route, Event, Time, UserKey};
use crate::state::as_of::TimeStash;
use crate::state::features::Features;
use crate::state::UserEvent;

/// What the history needs of a new-terms rule (carried by each observation, so that a changed
/// rule applies from the time it changed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTermsDef {
    /// The rule's id.
    pub id: String,
    /// Its title.
    pub title: String,
    /// Its severity.
    pub severity: Severity,
    /// Its actions.
    pub actions: Vec<ThreatAction>,
    /// What a hit adds to risk.
    pub risk_score: u32,
    /// Its field names.
    pub fields: Vec<String>,
    /// How long an observation is remembered (ms).
    pub history: Time,
    /// How long after its first observation the rule only learns (ms).
    pub learning: Time,
}

impl NewTermsDef {
    fn of(rule: &Rule) -> Option<NewTermsDef> {
        let new_terms = rule.new_terms.as_ref()?;
        Some(NewTermsDef {
            id: rule.id.clone(),
            title: rule.title.clone().unwrap_or_else(|| rule.id.clone()),
            severity: rule.severity,
            actions: rule.actions.clone(),
            risk_score: rule.risk_score,
            fields: new_terms.fields.clone(),
            history: new_terms.history,
            learning: new_terms.learning,
        })
    }

    /// Whether its combinations are kept on the user's worker (they include the user).
    fn by_user(&self) -> bool {
        self.fields.iter().any(|f| f == "user")
    }

    /// A match of this rule at an event, for the group `values`.
    fn matched(&self, values: String) -> CorrelationMatch {
        CorrelationMatch {
            rule: self.id.clone(),
            title: self.title.clone(),
            severity: self.severity,
            actions: self.actions.clone(),
            risk_score: self.risk_score,
            group: values,
        }
    }
}

/// An observation of a combination that includes the user, on the user's worker.
#[derive(Clone, Debug)]
pub struct LocalObservation {
    /// The combination's key: xxh3-128 of the rule id, the field names and the values.
    pub combination: UserKey,
    /// The rule as in force at the event's time.
    pub rule: Arc<NewTermsDef>,
    /// The event.
    pub event: UserEvent,
    /// Its judged time.
    pub time: Time,
}

/// An observation of another combination, sent to the worker of its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// The combination's key.
    pub combination: UserKey,
    /// The rule as in force at the event's time.
    pub rule: Arc<NewTermsDef>,
    /// The values of the rule's fields.
    pub values: Vec<String>,
    /// The event.
    pub event_id: String,
    /// Its user.
    pub key: UserKey,
    /// Its judged time.
    pub time: Time,
}

/// What observing an event finds.
#[derive(Clone, Debug)]
pub enum Observed {
    /// An observation kept on the user's worker.
    Local(LocalObservation),
    /// An observation sent to the worker of its combination.
    Remote(Observation),
    /// The first observation of a rule this worker reports, or an earlier one: `(rule id, time)`.
    Sighting(String, Time),
}

/// The new-terms rules' hits: from what observing the events against the new-terms rules in force
/// at their time found ([`observe`], made by [`crate::detect::observe`]), keeps each
/// combination's history and each rule's first observation, and sends each hit to the event's
/// user's worker. Both are checkpointed.
pub fn new_terms<'s>(observed: StreamVec<'s, Time, Observed>, checkpoints: &StateCheckpoints<'s>) -> StreamVec<'s, Time, Hit> {
    let mut parts = observed.partition(3, |o| {
        let part = match &o {
            Observed::Local(_) => 0,
            Observed::Remote(_) => 1,
            Observed::Sighting(..) => 2,
        };
        (part, o)
    });
    let sightings = parts.pop().expect("three parts").flat_map(|o| match o {
        Observed::Sighting(rule, time) => Some((rule, time)),
        _ => None,
    });
    let remote = parts.pop().expect("three parts").flat_map(|o| match o {
        Observed::Remote(o) => Some(o),
        _ => None,
    });
    let local = parts.pop().expect("three parts").flat_map(|o| match o {
        Observed::Local(o) => Some(o),
        _ => None,
    });
    let first_observed = first_observations(sightings, checkpoints).broadcast();
    history(local, remote, first_observed, checkpoints)
}

/// The new-terms rules in force (by their positions in the controls), each with its definition:
/// found once per change of the controls.
#[derive(Debug, Default)]
pub struct NewTermsIndex {
    rules: Vec<(usize, Arc<NewTermsDef>)>,
    /// Per rule, the earliest observation this worker reported while the index was in use
    /// (reported again when the controls change: a repeat changes no first observation).
    reported: Vec<std::cell::Cell<Time>>,
}

impl NewTermsIndex {
    /// Indexes the controls in force.
    pub fn new(controls: &[(&Control, isize)]) -> NewTermsIndex {
        let rules = in_force(controls)
            .filter_map(|(position, control)| match control {
                Control::Rule(rule) => NewTermsDef::of(rule).map(|def| (position, Arc::new(def))),
                _ => None,
            })
            .collect::<Vec<_>>();
        let reported = rules.iter().map(|_| std::cell::Cell::new(Time::MAX)).collect();
        NewTermsIndex { rules, reported }
    }
}

/// What an event judged at `time` finds: an observation per new-terms rule in force that chooses
/// it and for whose every field it has a value, and a sighting of each such rule that this worker
/// has not reported at a time so early.
pub fn observe(time: Time, event: &UserEvent, features: &Features, controls: &[(&Control, isize)], index: &NewTermsIndex) -> Vec<Observed> {
    let mut found = Vec::new();
    let record = crate::detect::sigma::RecordView::of_fields(&event.extra);
    for ((position, def), reported) in index.rules.iter().zip(&index.reported) {
        let Some((Control::Rule(rule), _)) = controls.get(*position) else { continue };
        if !rule.matches_viewed(event, features, &record) {
            continue;
        }
        let Some(combination) = combination_key(def, event) else { continue };
        if time < reported.get() {
            reported.set(time);
            found.push(Observed::Sighting(def.id.clone(), time));
        }
        let rule = Arc::clone(def);
        found.push(if def.by_user() {
            Observed::Local(LocalObservation { combination, rule, event: UserEvent::clone(event), time })
        } else {
            let values = def.fields.iter().filter_map(|f| field_value(event, f).map(|v| v.into_owned())).collect();
            Observed::Remote(Observation { combination, rule, values, event_id: event.event_id.to_string(), key: event.key, time })
        });
    }
    found
}

/// A combination's key: xxh3-128 over the rule id, its field names and the event's values, each
/// followed by a 0 byte; none when the event lacks a value.
fn combination_key(def: &NewTermsDef, event: &Event) -> Option<UserKey> {
    key_of(def, def.fields.iter().map(|field| field_value(event, field)))
}

/// A combination's key from its values (see [`combination_key`]).
fn key_of<'a>(def: &NewTermsDef, values: impl Iterator<Item = Option<std::borrow::Cow<'a, str>>>) -> Option<UserKey> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in std::iter::once(&def.id).chain(&def.fields) {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    for value in values {
        hasher.update(value?.as_bytes());
        hasher.update(&[0]);
    }
    Some(hasher.digest128())
}

/// The combination as decisions name it: `field=value, ...`.
fn label<'a>(fields: &[String], values: impl Iterator<Item = std::borrow::Cow<'a, str>>) -> String {
    fields.iter().zip(values).map(|(field, value)| format!("{field}={value}")).collect::<Vec<_>>().join(", ")
}

/// Each rule's first observation, on the worker of its id: what the learning periods count from.
#[derive(Default)]
struct FirstObserved {
    first: BTreeMap<String, Time>,
}

/// A rule's first observation at a checkpoint's frontier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstObservation {
    /// The rule's id.
    pub rule: String,
    /// The judged time of the first event it chose.
    pub time: Time,
}

fn rule_route(rule: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(rule.as_bytes())
}

impl CheckpointedState for FirstObserved {
    type Entry = FirstObservation;

    fn part(&self) -> (&'static str, u32) {
        ("new-terms-first-observed", 1)
    }

    fn route(entry: &FirstObservation) -> u64 {
        rule_route(&entry.rule)
    }

    fn import(&mut self, entries: Vec<FirstObservation>, _at: Time) {
        for FirstObservation { rule, time } in entries {
            let first = self.first.entry(rule).or_insert(time);
            *first = (*first).min(time);
        }
    }

    fn export(&mut self, _at: Time, entries: &mut Vec<FirstObservation>) {
        entries.extend(self.first.iter().map(|(rule, time)| FirstObservation { rule: rule.clone(), time: *time }));
    }
}

/// Each rule's first observation over every worker, `(rule id, time)`, sent when it is found (or
/// an earlier one is) at a time no later than it, and again at a restored checkpoint's frontier.
fn first_observations<'s>(sightings: StreamVec<'s, Time, (String, Time)>, checkpoints: &StateCheckpoints<'s>) -> StreamVec<'s, Time, (String, Time)> {
    let mut op = CheckpointedOperator::new("NewTermsFirstObserved", checkpoints, FirstObserved::default());
    let mut sightings_in = op.new_input(sightings, ExchangePact::new(|(rule, _): &(String, Time)| rule_route(rule)));
    let (mut first_out, first) = op.new_output::<(String, Time)>();
    let mut stash: TimeStash<String> = TimeStash::default();
    let mut ready = Vec::new();
    op.build(move |state, step| match step {
        Step::Receive => sightings_in.for_each(|cap, data| {
            for (rule, time) in data.drain(..) {
                stash.insert(&cap, time, rule);
            }
        }),
        Step::Restored { capabilities, .. } => {
            first_out.activate().session(&capabilities[0]).give_iterator(state.first.iter().map(|(rule, time)| (rule.clone(), *time)));
        }
        Step::Advance(upto) => {
            ready.clear();
            stash.take_before(upto, &mut ready);
            if let Some(cap) = stash.held() {
                let mut first = first_out.activate();
                let mut session = first.session(cap);
                for (time, rule) in ready.drain(..) {
                    if state.first.get(&rule).is_none_or(|t| time < *t) {
                        state.first.insert(rule.clone(), time);
                        session.give((rule, time));
                    }
                }
            }
            stash.release();
        }
    });
    first
}

/// A remembered combination at a checkpoint's frontier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// The combination's key.
    pub combination: UserKey,
    /// The worker route it is kept by (its user's, or its own).
    pub route: u64,
    /// Until when (exclusive) it is remembered.
    pub until: Time,
}

/// The combinations kept on one worker, each with the time until which it is remembered and its
/// route; and each rule's first observation (sent to every worker).
#[derive(Default)]
struct History {
    until: HashMap<UserKey, (Time, u64), foldhash::fast::FixedState>,
    first_observed: HashMap<String, Time>,
    /// Observations since forgotten combinations were last dropped.
    since_sweep: usize,
}

impl CheckpointedState for History {
    type Entry = Remembered;

    fn part(&self) -> (&'static str, u32) {
        ("new-terms", 1)
    }

    fn route(entry: &Remembered) -> u64 {
        entry.route
    }

    fn import(&mut self, entries: Vec<Remembered>, _at: Time) {
        self.until.extend(entries.into_iter().map(|r| (r.combination, (r.until, r.route))));
    }

    fn export(&mut self, at: Time, entries: &mut Vec<Remembered>) {
        self.until.retain(|_, (until, _)| *until > at);
        entries.extend(self.until.iter().map(|(combination, (until, route))| Remembered { combination: *combination, route: *route, until: *until }));
    }
}

/// An observation as the history takes it, wherever it was kept.
trait Observes {
    fn combination(&self) -> UserKey;
    fn rule(&self) -> &NewTermsDef;
    fn event_id(&self) -> &str;
    fn route(&self) -> u64;
    fn hit(&self, time: Time) -> Hit;
}

impl Observes for LocalObservation {
    fn combination(&self) -> UserKey {
        self.combination
    }
    fn rule(&self) -> &NewTermsDef {
        &self.rule
    }
    fn event_id(&self) -> &str {
        &self.event.event_id
    }
    fn route(&self) -> u64 {
        route(&self.event.key)
    }
    fn hit(&self, time: Time) -> Hit {
        let values = self.rule.fields.iter().filter_map(|f| field_value(&self.event, f));
        Hit { key: self.event.key, event_id: self.event.event_id.to_string(), time, matched: self.rule.matched(label(&self.rule.fields, values)) }
    }
}

impl Observes for Observation {
    fn combination(&self) -> UserKey {
        self.combination
    }
    fn rule(&self) -> &NewTermsDef {
        &self.rule
    }
    fn event_id(&self) -> &str {
        &self.event_id
    }
    fn route(&self) -> u64 {
        route(&self.combination)
    }
    fn hit(&self, time: Time) -> Hit {
        let values = self.values.iter().map(|v| std::borrow::Cow::Borrowed(v.as_str()));
        Hit { key: self.key, event_id: self.event_id.clone(), time, matched: self.rule.matched(label(&self.rule.fields, values)) }
    }
}

impl History {
    /// Takes the observations of one time: each combination not remembered at `time` is new, and
    /// its observation with the smallest event id hits, unless its rule is learning; then every
    /// combination seen is remembered for its rule's history.
    fn observe_time<O: Observes>(&mut self, time: Time, observations: &[(Time, O)], mut hit: impl FnMut(Hit)) {
        let mut sorted: Vec<&O> = observations.iter().map(|(_, o)| o).collect();
        sorted.sort_unstable_by(|a, b| (a.combination(), a.event_id()).cmp(&(b.combination(), b.event_id())));
        // Per combination, its observation with the smallest event id.
        for o in sorted.chunk_by(|a, b| a.combination() == b.combination()).map(|same| same[0]) {
            let combination = o.combination();
            let rule = o.rule();
            let (until, _) = self.until.entry(combination).or_insert((0, o.route()));
            let learned = self.first_observed.get(&rule.id).is_some_and(|first| time >= first.saturating_add(rule.learning));
            if *until <= time && learned {
                hit(o.hit(time));
            }
            *until = (*until).max(time.saturating_add(rule.history));
        }
    }
}

/// The history of the combinations kept on this worker, with checkpoints (see [`new_terms`]).
fn history<'s>(
    local: StreamVec<'s, Time, LocalObservation>,
    remote: StreamVec<'s, Time, Observation>,
    first_observed: StreamVec<'s, Time, (String, Time)>,
    checkpoints: &StateCheckpoints<'s>,
) -> StreamVec<'s, Time, Hit> {
    let mut op = CheckpointedOperator::new("NewTermsHistory", checkpoints, History::default());
    let mut local_in = op.new_input(local, Pipeline);
    let mut remote_in = op.new_input(remote, ExchangePact::new(|o: &Observation| route(&o.combination)));
    let mut first_in = op.new_input(first_observed, Pipeline);
    let (mut hits_out, hits) = op.new_output::<Hit>();
    let mut local_stash: TimeStash<LocalObservation> = TimeStash::default();
    let mut remote_stash: TimeStash<Observation> = TimeStash::default();
    let mut first_received: Vec<(String, Time)> = Vec::new();
    let (mut local_ready, mut remote_ready) = (Vec::new(), Vec::new());
    let mut shown = ShownSize::default();
    op.build(move |history, step| match step {
        Step::Receive => {
            local_in.for_each(|cap, data| {
                for o in data.drain(..) {
                    local_stash.insert(&cap, o.time, o);
                }
            });
            remote_in.for_each(|cap, data| {
                for o in data.drain(..) {
                    remote_stash.insert(&cap, o.time, o);
                }
            });
            first_in.for_each(|_cap, data| first_received.append(data));
        }
        Step::Restored { .. } => {}
        Step::Advance(upto) => {
            // A rule's first observation comes at a time no later than itself, and so before any
            // observation of the rule: every one an observation before `upto` needs is in. (Later
            // ones change no minimum that matters then.)
            for (rule, time) in first_received.drain(..) {
                let first = history.first_observed.entry(rule).or_insert(time);
                *first = (*first).min(time);
            }
            local_ready.clear();
            remote_ready.clear();
            local_stash.take_before(upto, &mut local_ready);
            remote_stash.take_before(upto, &mut remote_ready);
            // Hits go out at the earlier of the two stashes' times (no later than any hit's).
            let held = [local_stash.held(), remote_stash.held()].into_iter().flatten().min_by_key(|cap| *cap.time());
            if let Some(cap) = held {
                let mut hits = hits_out.activate();
                let mut session = hits.session(cap);
                // The two kinds never share a combination: each is taken in time order on its own.
                for same in local_ready.chunk_by(|a, b| a.0 == b.0) {
                    history.since_sweep += same.len();
                    history.observe_time(same[0].0, same, |hit| session.give(hit));
                }
                for same in remote_ready.chunk_by(|a, b| a.0 == b.0) {
                    history.since_sweep += same.len();
                    history.observe_time(same[0].0, same, |hit| session.give(hit));
                }
            }
            local_stash.release();
            remote_stash.release();
            // Forget what is no longer remembered, now and then (amortised over observations).
            if history.since_sweep > history.until.len().max(1024) {
                if let Some(now) = upto.map(|b| b.saturating_sub(1)) {
                    history.until.retain(|_, (until, _)| *until > now);
                    history.until.shrink_to(history.until.len() * 2);
                }
                history.since_sweep = 0;
            }
            // hashbrown fills its slots up to 7/8: `capacity` is 7/8 of them.
            let slots = history.until.capacity() * 8 / 7;
            shown.update(history.until.len(), slots * (std::mem::size_of::<(UserKey, (Time, u64))>() + 1));
        }
    });
    hits
}

/// The size of this worker's history in the process's metrics (`threatflow_state_keys` and
/// `threatflow_state_table_bytes` of `new-terms`): each worker adds what changed since it last
/// did, so the gauges hold the process's sum.
#[derive(Default)]
struct ShownSize {
    keys: usize,
    bytes: usize,
}

impl ShownSize {
    fn update(&mut self, keys: usize, bytes: usize) {
        let metrics = &crate::metrics::METRICS;
        metrics.state_keys.with_label_values(&["new-terms"]).add(keys as i64 - self.keys as i64);
        metrics.state_table_bytes.with_label_values(&["new-terms"]).add(bytes as i64 - self.bytes as i64);
        *self = ShownSize { keys, bytes };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(history: Time, learning: Time) -> Arc<NewTermsDef> {
        Arc::new(NewTermsDef {
            id: "nt".into(),
            title: "nt".into(),
            severity: Severity::Low,
            actions: vec![ThreatAction::Alert],
            risk_score: 15,
            fields: vec!["app".into(), "country".into()],
            history,
            learning,
        })
    }

    fn obs(def: &Arc<NewTermsDef>, event: &str, time: Time, country: &str) -> (Time, Observation) {
        let values = vec!["mail".to_string(), country.to_string()];
        let combination = key_of(def, values.iter().map(|v| Some(v.as_str().into()))).unwrap();
        (time, Observation { combination, rule: Arc::clone(def), values, event_id: event.into(), key: 1, time })
    }

    /// A history whose rule was first observed at `first`.
    fn history(first: Time) -> History {
        History { first_observed: HashMap::from([("nt".to_string(), first)]), ..Default::default() }
    }

    /// Feeds observations time by time; returns the events that hit, in order.
    fn run(history: &mut History, observations: Vec<(Time, Observation)>) -> Vec<String> {
        let mut hits = Vec::new();
        for same in observations.chunk_by(|a, b| a.0 == b.0) {
            history.observe_time(same[0].0, same, |h| hits.push(h.event_id));
        }
        hits.sort();
        hits
    }

    #[test]
    fn a_combination_is_new_again_once_its_history_has_passed() {
        let d = def(100, 0);
        let hits = run(&mut history(10), vec![
            obs(&d, "a", 10, "DE"),
            obs(&d, "b", 50, "DE"),
            obs(&d, "c", 60, "FR"),
            // Remembered until 150 (b at 50): not new at 149; then until 249, 348.
            obs(&d, "d", 149, "DE"),
            obs(&d, "e", 248, "DE"),
            obs(&d, "f", 348, "DE"),
        ]);
        assert_eq!(hits, ["a", "c", "f"]);
    }

    #[test]
    fn of_one_millisecond_the_smallest_event_id_hits_and_learning_only_remembers() {
        let d = def(1000, 0);
        assert_eq!(run(&mut history(5), vec![obs(&d, "z", 5, "DE"), obs(&d, "m", 5, "DE"), obs(&d, "q", 5, "FR")]), ["m", "q"]);
        // First observed at 50: learning until 150.
        let learning = def(1000, 100);
        assert_eq!(run(&mut history(50), vec![obs(&learning, "a", 50, "DE"), obs(&learning, "b", 150, "DE"), obs(&learning, "c", 150, "FR")]), ["c"]);
    }

    #[test]
    fn the_history_survives_a_checkpoint() {
        let d = def(100, 0);
        let mut before = history(10);
        run(&mut before, vec![obs(&d, "a", 10, "DE"), obs(&d, "b", 20, "FR")]);
        let mut entries = Vec::new();
        before.export(110, &mut entries);
        assert_eq!(entries.len(), 1, "DE (until 110) is forgotten at 110, FR is kept");
        let mut restored = history(10);
        restored.import(entries, 110);
        assert_eq!(run(&mut restored, vec![obs(&d, "c", 115, "FR"), obs(&d, "d", 116, "DE")]), ["d"]);
    }
}
