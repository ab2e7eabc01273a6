//! Entity risk: every detection adds its `risk_score` to its entities (the user, the source
//! address), and an entity whose risk over a window reaches a threshold raises one `risk` decision
//! listing what contributed (docs/semantics.md#entity-risk).
//!
//! ```text
//! decisions ──(one contribution per entity, by entity)──► RiskScores ──► risk decisions
//! ```
//!
//! Per entity, in event-time order once the decisions have passed a time: the contributions of a
//! millisecond are added together, those out of the window dropped, and the entity raises a risk
//! decision when its sum reaches the threshold and it raised none within the window before. The
//! contributions in the window and the last risk decision's time are checkpointed (`risk-scores`).
//! Many low-severity hits thus become few alerts (`--risk-only-below` keeps them out of the
//! alerts), as Splunk's risk-based alerting and Elastic's entity risk do, but exact by event time.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange as ExchangePact;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::StreamVec;

use crate::checkpoint::operator::{CheckpointedOperator, CheckpointedState, StateCheckpoints, Step};
use crate::detect::action::{Severity, ThreatAction};
use crate::detect::decision::{Decision, RiskAlert, RiskContribution, Verdict};
use crate::event::{route, Time, UserKey};
use crate::state::as_of::TimeStash;

/// A kind of entity risk is kept for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    /// The decision's user.
    User,
    /// Its source address.
    #[value(name = "src_ip")]
    SrcIp,
}

impl Entity {
    /// How decisions name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::User => "user",
            Entity::SrcIp => "src_ip",
        }
    }

    /// A decision's value of this entity.
    fn of(self, decision: &Decision) -> Option<&str> {
        match self {
            Entity::User => Some(decision.user.as_str()),
            Entity::SrcIp => decision.src_ip.as_deref(),
        }
    }
}

/// How risk is scored (`--risk-threshold`, `--risk-window`, `--risk-entities`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RiskOptions {
    /// The risk at which an entity raises a risk decision.
    pub threshold: u64,
    /// The window risk is summed over (ms).
    pub window: Time,
    /// The entities risk is kept for.
    pub entities: Vec<Entity>,
}

/// A detection's contribution to one entity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contribution {
    /// The entity's key (kind and value).
    pub entity_key: UserKey,
    /// Its kind.
    pub entity: Entity,
    /// Its value.
    pub value: String,
    /// The detection.
    pub detection: RiskContribution,
    /// The detection's source address (named by a risk decision it raises).
    pub src_ip: Option<String>,
}

/// The risk decisions of the entities of `decisions` (see the module doc); risk decisions feed no
/// risk. The entities' windows are checkpointed.
pub fn risk_decisions<'s>(decisions: StreamVec<'s, Time, Decision>, options: RiskOptions, checkpoints: &StateCheckpoints<'s>) -> StreamVec<'s, Time, Decision> {
    let entities = options.entities.clone();
    let contributions = decisions.flat_map(move |d| contributions(&d, &entities));
    scores(contributions, options, checkpoints)
}

/// What a decision contributes to each of its entities: nothing unless it is a `threat` or
/// `retro` decision with a positive risk score.
pub fn contributions(decision: &Decision, entities: &[Entity]) -> Vec<Contribution> {
    if !matches!(decision.verdict, Verdict::Threat | Verdict::Retro) || decision.risk_score == 0 {
        return Vec::new();
    }
    entities
        .iter()
        .filter_map(|entity| {
            let value = entity.of(decision)?;
            Some(Contribution {
                entity_key: entity_key(*entity, value),
                entity: *entity,
                value: value.to_string(),
                detection: RiskContribution {
                    ts: decision.ts,
                    decision_id: decision.decision_id.clone(),
                    event_id: decision.event_id.clone(),
                    user: decision.user.clone(),
                    rules: decision.rules.clone(),
                    score: decision.risk_score,
                },
                src_ip: decision.src_ip.clone(),
            })
        })
        .collect()
}

/// An entity's key: xxh3-128 of its kind and value.
fn entity_key(entity: Entity, value: &str) -> UserKey {
    let mut bytes = Vec::with_capacity(value.len() + 8);
    bytes.extend_from_slice(entity.as_str().as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(value.as_bytes());
    xxhash_rust::xxh3::xxh3_128(&bytes)
}

/// One entity's contributions in the window and its last risk decision.
#[derive(Debug)]
struct EntityRisk {
    entity: Entity,
    value: String,
    window: VecDeque<(RiskContribution, Option<String>)>,
    last_raised: Option<Time>,
}

impl EntityRisk {
    /// Drops the contributions out of the window of `now`.
    fn expire(&mut self, now: Time, window: Time) {
        if let Some(low) = now.checked_sub(window) {
            while self.window.front().is_some_and(|(c, _)| c.ts <= low) {
                self.window.pop_front();
            }
        }
    }

    /// Whether it holds nothing that matters at `now` or later.
    fn is_spent(&self, now: Time, window: Time) -> bool {
        self.window.is_empty() && self.last_raised.is_none_or(|t| t.saturating_add(window) <= now)
    }
}

/// What a checkpoint keeps of an entity: a contribution in its window, or its last risk decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskEntry {
    /// The entity's key.
    pub entity_key: UserKey,
    /// Its kind.
    pub entity: Entity,
    /// Its value.
    pub value: String,
    /// A contribution in the window, with its source address.
    pub contribution: Option<(RiskContribution, Option<String>)>,
    /// The time of its last risk decision.
    pub last_raised: Option<Time>,
}

/// The entities routed to one worker.
struct Scores {
    window: Time,
    entities: HashMap<UserKey, EntityRisk, foldhash::fast::FixedState>,
    /// Contributions since the spent entities were last forgotten.
    since_sweep: usize,
}

impl CheckpointedState for Scores {
    type Entry = RiskEntry;

    fn part(&self) -> (&'static str, u32) {
        ("risk-scores", 1)
    }

    fn route(entry: &RiskEntry) -> u64 {
        route(&entry.entity_key)
    }

    fn import(&mut self, entries: Vec<RiskEntry>, _at: Time) {
        for RiskEntry { entity_key, entity, value, contribution, last_raised } in entries {
            let risk = self.entities.entry(entity_key).or_insert_with(|| EntityRisk { entity, value, window: VecDeque::new(), last_raised: None });
            risk.window.extend(contribution);
            risk.last_raised = risk.last_raised.max(last_raised);
        }
        for risk in self.entities.values_mut() {
            risk.window.make_contiguous().sort();
        }
    }

    fn export(&mut self, at: Time, entries: &mut Vec<RiskEntry>) {
        let window = self.window;
        for (key, risk) in self.entities.iter_mut() {
            risk.expire(at, window);
            let entry = |contribution| RiskEntry { entity_key: *key, entity: risk.entity, value: risk.value.clone(), contribution, last_raised: None };
            entries.extend(risk.window.iter().map(|c| entry(Some(c.clone()))));
            if let Some(raised) = risk.last_raised.filter(|t| t.saturating_add(window) > at) {
                entries.push(RiskEntry { last_raised: Some(raised), ..entry(None) });
            }
        }
    }
}

impl Scores {
    /// Adds the contributions of one time to their entities, then raises a risk decision for each
    /// entity whose risk reached the threshold and that raised none within the window before.
    fn observe_time(&mut self, time: Time, contributions: &[(Time, Contribution)], options: &RiskOptions, mut raise: impl FnMut(Decision)) {
        let mut by_entity: BTreeMap<UserKey, Vec<&Contribution>> = BTreeMap::new();
        for (_, c) in contributions {
            by_entity.entry(c.entity_key).or_default().push(c);
        }
        for (key, mut arrived) in by_entity {
            arrived.sort_by(|a, b| a.detection.decision_id.cmp(&b.detection.decision_id));
            let first = arrived[0];
            let risk = self.entities.entry(key).or_insert_with(|| EntityRisk {
                entity: first.entity,
                value: first.value.clone(),
                window: VecDeque::new(),
                last_raised: None,
            });
            risk.expire(time, options.window);
            risk.window.extend(arrived.iter().map(|c| (c.detection.clone(), c.src_ip.clone())));
            let score: u64 = risk.window.iter().map(|(c, _)| u64::from(c.score)).sum();
            let rested = risk.last_raised.is_none_or(|t| t.saturating_add(options.window) <= time);
            if score >= options.threshold && rested {
                risk.last_raised = Some(time);
                let by = arrived.iter().min_by(|a, b| a.detection.event_id.cmp(&b.detection.event_id)).copied().unwrap_or(first);
                raise(risk_decision(risk, by, time, score, options));
            }
        }
    }
}

/// The risk decision an entity raises at `time` with `score`, named after the contribution `by`.
fn risk_decision(risk: &EntityRisk, by: &Contribution, time: Time, score: u64, options: &RiskOptions) -> Decision {
    let id = format!("{}\u{0}{}\u{0}{time}\u{0}risk", risk.entity.as_str(), risk.value);
    let decision_id = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(id.as_bytes()));
    Decision {
        actions: vec![ThreatAction::Alert],
        severity: Severity::High,
        src_ip: by.src_ip.clone(),
        risk: Some(RiskAlert {
            entity: risk.entity.as_str().to_string(),
            value: risk.value.clone(),
            score,
            threshold: options.threshold,
            window: options.window,
            contributions: risk.window.iter().map(|(c, _)| c.clone()).collect(),
        }),
        ..Decision::about(decision_id, by.detection.event_id.clone(), by.detection.user.clone(), time, Verdict::Risk)
    }
}

/// The risk of every entity routed to this worker, with checkpoints (see [`risk_decisions`]).
fn scores<'s>(contributions: StreamVec<'s, Time, Contribution>, options: RiskOptions, checkpoints: &StateCheckpoints<'s>) -> StreamVec<'s, Time, Decision> {
    let state = Scores { window: options.window, entities: HashMap::default(), since_sweep: 0 };
    let mut op = CheckpointedOperator::new("RiskScores", checkpoints, state);
    let mut contributions_in = op.new_input(contributions, ExchangePact::new(|c: &Contribution| route(&c.entity_key)));
    let (mut raised_out, raised) = op.new_output::<Decision>();
    let mut stash: TimeStash<Contribution> = TimeStash::default();
    let mut ready = Vec::new();
    op.build(move |scores, step| match step {
        Step::Receive => contributions_in.for_each(|cap, data| {
            for c in data.drain(..) {
                stash.insert(&cap, c.detection.ts, c);
            }
        }),
        Step::Restored { .. } => {}
        Step::Advance(upto) => {
            ready.clear();
            stash.take_before(upto, &mut ready);
            if let Some(cap) = stash.held() {
                let mut raised = raised_out.activate();
                let mut session = raised.session(cap);
                for same in ready.chunk_by(|a, b| a.0 == b.0) {
                    scores.since_sweep += same.len();
                    scores.observe_time(same[0].0, same, &options, |d| session.give(d));
                }
            }
            stash.release();
            // Forget the entities that hold nothing any more, now and then.
            if scores.since_sweep > scores.entities.len().max(1024) {
                if let Some(now) = upto.map(|b| b.saturating_sub(1)) {
                    let window = scores.window;
                    scores.entities.retain(|_, risk| {
                        risk.expire(now, window);
                        !risk.is_spent(now, window)
                    });
                }
                scores.since_sweep = 0;
            }
        }
    });
    raised
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(threshold: u64, window: Time) -> RiskOptions {
        RiskOptions { threshold, window, entities: vec![Entity::User] }
    }

    fn contribution(event: &str, ts: Time, score: u32) -> (Time, Contribution) {
        (ts, Contribution {
            entity_key: entity_key(Entity::User, "ann"),
            entity: Entity::User,
            value: "ann".into(),
            detection: RiskContribution { ts, decision_id: format!("d-{event}"), event_id: event.into(), user: "ann".into(), rules: vec!["r".into()], score },
            src_ip: None,
        })
    }

    /// Feeds contributions time by time; returns `(ts, event, score, contributing events)` of each
    /// risk decision.
    fn run(scores: &mut Scores, options: &RiskOptions, contributions: Vec<(Time, Contribution)>) -> Vec<(Time, String, u64, Vec<String>)> {
        let mut raised = Vec::new();
        for same in contributions.chunk_by(|a, b| a.0 == b.0) {
            scores.observe_time(same[0].0, same, options, |d| {
                let risk = d.risk.unwrap();
                raised.push((d.ts, d.event_id, risk.score, risk.contributions.into_iter().map(|c| c.event_id).collect()));
            });
        }
        raised
    }

    fn scores(window: Time) -> Scores {
        Scores { window, entities: HashMap::default(), since_sweep: 0 }
    }

    #[test]
    fn risk_sums_over_the_window_and_raises_once_per_window() {
        let o = options(100, 1000);
        let raised = run(&mut scores(1000), &o, vec![
            contribution("a", 0, 50),
            contribution("b", 500, 40),
            // a leaves the window at 1000: 40 + 30 < 100.
            contribution("c", 1000, 30),
            contribution("e", 1200, 30),
            contribution("d", 1200, 20),
            // Raised at 1200; not again before 2200.
            contribution("f", 1300, 100),
            contribution("g", 2200, 100),
        ]);
        assert_eq!(raised, [
            (1200, "d".into(), 120, vec!["b".into(), "c".into(), "d".into(), "e".into()]),
            (2200, "g".into(), 200, vec!["f".into(), "g".into()]),
        ]);
    }

    #[test]
    fn the_windows_and_the_last_risk_decision_survive_a_checkpoint() {
        let o = options(100, 1000);
        let mut before = scores(1000);
        run(&mut before, &o, vec![contribution("a", 0, 60), contribution("b", 100, 60), contribution("c", 900, 30)]);
        let mut entries = Vec::new();
        before.export(950, &mut entries);
        let mut after = scores(1000);
        after.import(entries, 950);
        // Raised at 100: not again before 1100, though the risk is 90 + 60 at 1000.
        assert!(run(&mut after, &o, vec![contribution("d", 1000, 60)]).is_empty());
        assert_eq!(run(&mut after, &o, vec![contribution("e", 1100, 20)]), [(1100, "e".into(), 110, vec!["c".into(), "d".into(), "e".into()])]);
    }
}
