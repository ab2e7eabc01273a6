//! Sigma correlation rules evaluated incrementally: per rule and group, a window of the events
//! that matched the rules it refers to, over event time.
//!
//! ```text
//! events + features ──► StatefulRulesObserve (as of each event's time: the correlations in force
//!                       and the rules they refer to; `crate::detect::observe`)
//!                   ──(by rule and group)──► CorrelationWindows ──► matches
//! ```
//!
//! An event matched by a referenced rule is an observation of `(correlation, group)`, the group
//! being the event's values of the rule's `group-by` fields (through its `aliases`). Each group's
//! window holds the observations `o` with `t - timespan < time(o) <= t`; the observations of one
//! time are all added before the condition is tested, so every event of a millisecond sees the
//! others, whatever their arrival order (as the standard features do). When the condition holds,
//! each event observed at `t` in that group matches the correlation rule: the verdict step
//! ([`crate::detect::verdicts`]) adds it to the event's decision.
//!
//! - `event_count`: the observations in the window;
//! - `value_count`: the distinct values of `field` among them;
//! - `temporal`: the distinct referenced rules among them;
//! - `temporal_ordered`: how many of the referenced rules appear in the window in their order.
//!
//! Windows are the checkpointed state of the operator (entries still inside their window at the
//! checkpoint's frontier).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange as ExchangePact;
use timely::dataflow::StreamVec;

use crate::checkpoint::operator::{CheckpointedOperator, CheckpointedState, StateCheckpoints, Step};
use crate::detect::control::{in_force, Control};
use crate::detect::decision::CorrelationMatch;
use crate::detect::action::{Severity, ThreatAction};
use crate::detect::rules::{field_value, Rule};
use crate::detect::sigma::correlation::{Correlation, CorrelationKind, CountCondition};
use crate::event::{route, Event, Time, UserKey};
use crate::state::as_of::TimeStash;
use crate::state::features::Features;

/// What a correlation window needs of its rule (carried by each observation, so a changed rule
/// applies from the time it changed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrelationDef {
    /// The rule's id.
    pub id: String,
    /// Its title.
    pub title: String,
    /// Its severity.
    pub severity: Severity,
    /// Its actions.
    pub actions: Vec<ThreatAction>,
    /// What a match adds to its entities' risk.
    pub risk_score: u32,
    /// Its type.
    pub kind: CorrelationKind,
    /// Window length (ms).
    pub timespan: Time,
    /// When it matches.
    pub condition: CountCondition,
    /// How many rules it refers to.
    pub members: u32,
    /// Its `group-by` names.
    pub group_by: Vec<String>,
}

/// An event matched by a rule a correlation refers to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// Routing key of `(rule, values)`.
    pub group: UserKey,
    /// The correlation rule.
    pub rule: Arc<CorrelationDef>,
    /// The event's values of the `group-by` fields.
    pub values: Vec<Option<String>>,
    /// Which referenced rule matched (its index in the rule's `rules`).
    pub member: u32,
    /// The event's value of the counted field (`value_count`).
    pub value: Option<String>,
    /// The event.
    pub event_id: String,
    /// Its user.
    pub key: UserKey,
    /// Its time.
    pub time: Time,
}

/// A correlation rule matched at an event: sent to the event's user's worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hit {
    /// The event's user.
    pub key: UserKey,
    /// The event.
    pub event_id: String,
    /// Its time.
    pub time: Time,
    /// What its decision gains.
    pub matched: CorrelationMatch,
}

/// The correlation rules in force (by their positions in the controls), each with its definition
/// and, per member, the positions of the rules it refers to (by id or `name`; not correlations):
/// found once per change of the controls rather than for every event.
#[derive(Debug, Default)]
pub struct CorrelationIndex {
    correlations: Vec<(usize, Arc<CorrelationDef>, Vec<Vec<usize>>)>,
}

impl CorrelationIndex {
    /// Indexes the controls in force (those with a positive count).
    pub fn new(controls: &[(&Control, isize)]) -> CorrelationIndex {
        let rules: Vec<(usize, &Rule)> = in_force(controls)
            .filter_map(|(position, control)| match control {
                Control::Rule(rule) => Some((position, rule)),
                _ => None,
            })
            .collect();
        let mut correlations = Vec::new();
        for (position, rule) in &rules {
            let Some(correlation) = rule.sigma.as_ref().and_then(|s| s.correlation()) else { continue };
            let members = correlation
                .rules
                .iter()
                .map(|reference| {
                    let referred = |r: &&Rule| {
                        refers_to(r, reference) && r.new_terms.is_none() && r.sigma.as_ref().is_none_or(|s| s.correlation().is_none())
                    };
                    rules.iter().filter(|(_, r)| referred(r)).map(|(p, _)| *p).collect()
                })
                .collect();
            correlations.push((*position, Arc::new(definition(rule, correlation)), members));
        }
        CorrelationIndex { correlations }
    }
}

/// The observations an event makes at `time`: for each correlation rule in force, each rule it
/// refers to that the event matches. `index` is the controls' [`CorrelationIndex`].
pub fn observe(time: Time, event: &Event, features: &Features, controls: &[(&Control, isize)], index: &CorrelationIndex) -> Vec<Observation> {
    let mut found = Vec::new();
    let record = crate::detect::sigma::RecordView::of_fields(&event.extra);
    for (position, def, members) in &index.correlations {
        let Some((Control::Rule(correlation_rule), _)) = controls.get(*position) else { continue };
        let Some(correlation) = correlation_rule.sigma.as_ref().and_then(|s| s.correlation()) else { continue };
        for (member, referred) in members.iter().enumerate() {
            let matched = referred.iter().any(|p| matches!(controls.get(*p), Some((Control::Rule(r), _)) if r.matches_viewed(event, features, &record)));
            if !matched {
                continue;
            }
            let values: Vec<Option<String>> =
                correlation.group_by.iter().map(|g| field_value(event, correlation.group_field(g, member)).map(|v| v.into_owned())).collect();
            let value = correlation.field.as_deref().and_then(|f| field_value(event, f)).map(|v| v.into_owned());
            found.push(Observation {
                group: group_key(&def.id, &values),
                rule: Arc::clone(def),
                values,
                member: member as u32,
                value,
                event_id: event.event_id.to_string(),
                key: event.key,
                time,
            });
        }
    }
    found
}

/// Whether a correlation's reference names `rule` (its id or Sigma `name`).
fn refers_to(rule: &Rule, reference: &str) -> bool {
    rule.id == reference || rule.sigma.as_ref().and_then(|s| s.name.as_deref()) == Some(reference)
}

fn definition(rule: &Rule, correlation: &Correlation) -> CorrelationDef {
    CorrelationDef {
        id: rule.id.clone(),
        title: rule.title.clone().unwrap_or_else(|| rule.id.clone()),
        severity: rule.severity,
        actions: rule.actions.clone(),
        risk_score: rule.risk_score,
        kind: correlation.kind,
        timespan: correlation.timespan,
        condition: correlation.condition.clone(),
        members: correlation.rules.len() as u32,
        group_by: correlation.group_by.clone(),
    }
}

/// The routing key of a rule's group.
fn group_key(rule: &str, values: &[Option<String>]) -> UserKey {
    let mut bytes = rule.as_bytes().to_vec();
    for value in values {
        bytes.push(0);
        if let Some(v) = value {
            bytes.push(1);
            bytes.extend_from_slice(v.as_bytes());
        }
    }
    xxhash_rust::xxh3::xxh3_128(&bytes)
}

/// One group's window: its observations in time order (then by member and value).
#[derive(Debug, Default)]
struct GroupWindow {
    rule: String,
    values: Vec<Option<String>>,
    timespan: Time,
    entries: VecDeque<(Time, u32, Option<String>)>,
}

impl GroupWindow {
    /// Drops the observations that are out of the window of an event at `now`.
    fn expire(&mut self, now: Time) {
        if let Some(low) = now.checked_sub(self.timespan) {
            while self.entries.front().is_some_and(|(t, ..)| *t <= low) {
                self.entries.pop_front();
            }
        }
    }

    /// The count the rule's condition is tested on.
    fn count(&self, def: &CorrelationDef) -> u64 {
        match def.kind {
            CorrelationKind::EventCount => self.entries.len() as u64,
            CorrelationKind::ValueCount => self.entries.iter().filter_map(|(_, _, v)| v.as_deref()).collect::<BTreeSet<_>>().len() as u64,
            CorrelationKind::Temporal => self.entries.iter().map(|(_, m, _)| *m).collect::<BTreeSet<_>>().len() as u64,
            CorrelationKind::TemporalOrdered => {
                let mut next = 0;
                for (_, member, _) in &self.entries {
                    if *member == next {
                        next += 1;
                    }
                }
                u64::from(next)
            }
        }
    }

    /// The group as decisions name it: `field=value, ...`.
    fn label(&self, def: &CorrelationDef) -> String {
        def.group_by
            .iter()
            .zip(&self.values)
            .map(|(field, value)| format!("{field}={}", value.as_deref().unwrap_or("null")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One observation in a group's window at a checkpoint's frontier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowedObservation {
    /// The group's routing key (rule and group values).
    pub group: UserKey,
    /// The correlation rule's id.
    pub rule: String,
    /// The group's values.
    pub values: Vec<Option<String>>,
    /// The event's time.
    pub time: Time,
    /// Which of the rule's referenced rules it matched.
    pub member: u32,
    /// Its value of the counted field (`value_count`).
    pub value: Option<String>,
}

/// The windows of the groups routed to one worker: its checkpointed state.
#[derive(Default)]
struct Windows {
    groups: HashMap<UserKey, GroupWindow>,
    /// Observations since the empty groups were last forgotten.
    since_sweep: usize,
}

impl CheckpointedState for Windows {
    type Entry = WindowedObservation;

    fn part(&self) -> (&'static str, u32) {
        ("correlation-windows", 1)
    }

    fn route(entry: &WindowedObservation) -> u64 {
        route(&entry.group)
    }

    fn import(&mut self, entries: Vec<WindowedObservation>, _at: Time) {
        for WindowedObservation { group, rule, values, time, member, value } in entries {
            let window = self.groups.entry(group).or_insert_with(|| GroupWindow { rule, values, ..Default::default() });
            window.entries.push_back((time, member, value));
        }
    }

    fn export(&mut self, at: Time, entries: &mut Vec<WindowedObservation>) {
        for (group, window) in self.groups.iter_mut() {
            window.expire(at);
            for (time, member, value) in &window.entries {
                entries.push(WindowedObservation {
                    group: *group,
                    rule: window.rule.clone(),
                    values: window.values.clone(),
                    time: *time,
                    member: *member,
                    value: value.clone(),
                });
            }
        }
    }
}

/// The correlation rules matched at events: keeps the window of every group routed to this worker
/// from the observations ([`observe`], made by [`crate::detect::observe`]) and sends each match to
/// the event's user's worker. The windows are checkpointed.
pub fn correlate<'s>(observations: StreamVec<'s, Time, Observation>, checkpoints: &StateCheckpoints<'s>) -> StreamVec<'s, Time, Hit> {
    let mut op = CheckpointedOperator::new("CorrelationWindows", checkpoints, Windows::default());
    let mut observations_in = op.new_input(observations, ExchangePact::new(|o: &Observation| route(&o.group)));
    let (mut hits_out, hits) = op.new_output::<Hit>();
    let mut stash: TimeStash<Observation> = TimeStash::default();
    let mut ready = Vec::new();
    op.build(move |state, step| match step {
        Step::Receive => observations_in.for_each(|cap, data| {
            for o in data.drain(..) {
                stash.insert(&cap, o.time, o);
            }
        }),
        Step::Restored { .. } => {}
        Step::Advance(upto) => {
            ready.clear();
            stash.take_before(upto, &mut ready);
            if let Some(cap) = stash.held() {
                let mut hits = hits_out.activate();
                let mut session = hits.session(cap);
                for same in ready.chunk_by(|a, b| a.0 == b.0) {
                    state.since_sweep += same.len();
                    observe_time(&mut state.groups, same[0].0, same, |hit| session.give(hit));
                }
            }
            stash.release();
            // Forget the groups whose windows are empty, now and then (amortised over observations).
            if state.since_sweep > state.groups.len().max(1024) {
                if let Some(now) = ready_bound(upto) {
                    state.groups.retain(|_, w| {
                        w.expire(now);
                        !w.entries.is_empty()
                    });
                }
                state.since_sweep = 0;
            }
        }
    });
    hits
}

/// The latest time whose events are all processed below `bound`.
fn ready_bound(bound: Option<Time>) -> Option<Time> {
    bound.map(|b| b.saturating_sub(1))
}

/// Adds the observations of one time to their groups' windows, then tests each group's condition;
/// every observation of a group whose condition holds is a hit.
fn observe_time(groups: &mut HashMap<UserKey, GroupWindow>, time: Time, observations: &[(Time, Observation)], mut hit: impl FnMut(Hit)) {
    let mut by_group: BTreeMap<UserKey, Vec<&Observation>> = BTreeMap::new();
    for (_, o) in observations {
        by_group.entry(o.group).or_default().push(o);
    }
    for (group, mut observed) in by_group {
        observed.sort_by(|a, b| (a.member, &a.value, &a.event_id).cmp(&(b.member, &b.value, &b.event_id)));
        // The rule as of this time (every observation of a time carries the same one).
        let def = &observed[0].rule;
        let window = groups.entry(group).or_insert_with(|| GroupWindow { rule: def.id.clone(), values: observed[0].values.clone(), ..Default::default() });
        window.timespan = def.timespan;
        window.expire(time);
        for o in &observed {
            window.entries.push_back((time, o.member, o.value.clone()));
        }
        if def.condition.holds(window.count(def)) {
            let group_label = window.label(def);
            for o in observed {
                hit(Hit {
                    key: o.key,
                    event_id: o.event_id.clone(),
                    time,
                    matched: CorrelationMatch {
                        rule: def.id.clone(),
                        title: def.title.clone(),
                        severity: def.severity,
                        actions: def.actions.clone(),
                        risk_score: def.risk_score,
                        group: group_label.clone(),
                    },
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(kind: CorrelationKind, timespan: Time, gte: u64, members: u32) -> Arc<CorrelationDef> {
        Arc::new(CorrelationDef {
            id: "c".into(),
            title: "c".into(),
            severity: Severity::High,
            actions: vec![ThreatAction::Alert],
            risk_score: 50,
            kind,
            timespan,
            condition: CountCondition { gte: Some(gte), ..Default::default() },
            members,
            group_by: vec!["src_ip".into()],
        })
    }

    fn obs(def: &Arc<CorrelationDef>, event: &str, time: Time, member: u32, value: Option<&str>) -> (Time, Observation) {
        let values = vec![Some("10.0.0.1".to_string())];
        (time, Observation {
            group: group_key(&def.id, &values),
            rule: Arc::clone(def),
            values,
            member,
            value: value.map(str::to_string),
            event_id: event.into(),
            key: 1,
            time,
        })
    }

    /// Feeds observations time by time; returns the events that matched.
    fn run(observations: Vec<(Time, Observation)>) -> Vec<String> {
        let mut groups = HashMap::new();
        let mut hits = Vec::new();
        let mut at = 0;
        while at < observations.len() {
            let time = observations[at].0;
            let end = observations[at..].iter().position(|(t, _)| *t != time).map_or(observations.len(), |n| at + n);
            observe_time(&mut groups, time, &observations[at..end], |h| hits.push(h.event_id));
            at = end;
        }
        hits
    }

    #[test]
    fn event_count_counts_inside_the_timespan_and_same_time_events_see_each_other() {
        let d = def(CorrelationKind::EventCount, 100, 3, 1);
        // e1 at 0 leaves the window of an event at 100 (window (0, 100]).
        let hits = run(vec![obs(&d, "e1", 0, 0, None), obs(&d, "e2", 50, 0, None), obs(&d, "e3", 100, 0, None), obs(&d, "e4", 120, 0, None)]);
        assert_eq!(hits, ["e4"]);
        // Two events in the same millisecond both see the third.
        let hits = run(vec![obs(&d, "a", 10, 0, None), obs(&d, "b", 20, 0, None), obs(&d, "c", 20, 0, None)]);
        assert_eq!(hits, ["b", "c"]);
    }

    #[test]
    fn value_count_counts_distinct_values() {
        let d = def(CorrelationKind::ValueCount, 1000, 3, 1);
        let hits = run(vec![
            obs(&d, "e1", 1, 0, Some("ann")),
            obs(&d, "e2", 2, 0, Some("ann")),
            obs(&d, "e3", 3, 0, Some("bob")),
            obs(&d, "e4", 4, 0, None),
            obs(&d, "e5", 5, 0, Some("cy")),
        ]);
        assert_eq!(hits, ["e5"]);
    }

    #[test]
    fn temporal_needs_every_rule_and_temporal_ordered_their_order() {
        let d = def(CorrelationKind::Temporal, 1000, 2, 2);
        assert_eq!(run(vec![obs(&d, "b", 1, 1, None), obs(&d, "a", 2, 0, None)]), ["a"]);
        let d = def(CorrelationKind::TemporalOrdered, 1000, 2, 2);
        assert!(run(vec![obs(&d, "b", 1, 1, None), obs(&d, "a", 2, 0, None)]).is_empty());
        assert_eq!(run(vec![obs(&d, "a", 1, 0, None), obs(&d, "b", 2, 1, None)]), ["b"]);
        // Outside the timespan the first one no longer counts.
        assert!(run(vec![obs(&d, "a", 1, 0, None), obs(&d, "b", 1001, 1, None)]).is_empty());
    }
}
