//! Threat decisions: how an event, its features and the control collection at its time decide.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::StreamVec;

use crate::detect::control::{in_force, Control, ControlArrangement};
use crate::detect::marks::MarkIndex;
use crate::detect::action::{Severity, ThreatAction};
use crate::detect::sigma::RecordView;
use crate::detect::sigma_set::{LatestSigmaSet, SigmaSet, SourceRules};
use crate::enrich::intel::IntelHit;
use crate::event::{Event, Position, Time};
use crate::state::as_of::{as_of_lookup, PerVersion};
use crate::state::features::{FeatureName, Features};
use crate::state::UserEvent;

/// A decision's verdict. Benign events produce no decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The model or a rule flagged the event.
    Threat,
    /// The user was blocked at the event's time.
    Blocked,
    /// A threat-intel indicator that came into force later matches the event: reported when the
    /// indicator arrived (`ts`), naming the event and its own time (`event_ts`); see
    /// [`crate::detect::intel`].
    Retro,
    /// An entity's accumulated risk reached the threshold (see [`crate::detect::risk`]).
    Risk,
}

impl Verdict {
    /// The verdict's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Threat => "threat",
            Verdict::Blocked => "blocked",
            Verdict::Retro => "retro",
            Verdict::Risk => "risk",
        }
    }
}

/// A threat decision (format: docs/semantics.md#decision-record).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// A pure function of the event and the verdict ([`decision_id`]), for deduplication.
    pub decision_id: String,
    /// The decided event.
    pub event_id: String,
    /// The event's user.
    pub user: String,
    /// The time the event was judged at: its `ts`, or the watermark when it was late.
    pub ts: Time,
    /// `threat`, `blocked` or `retro`.
    pub verdict: Verdict,
    /// The model score, present whenever a model was in force.
    pub score: Option<f64>,
    /// The version of the model in force, if any.
    pub model_version: Option<String>,
    /// Ids of the matching rules, sorted.
    pub rules: Vec<String>,
    /// Their titles, in the order of `rules` (the id when a rule has no title).
    pub rule_titles: Vec<String>,
    /// The marked threat whose fingerprint the event repeats, if any.
    pub fingerprint_match: Option<String>,
    /// The event's features.
    pub features: Features,
    /// What the decision asks to be done.
    pub actions: Vec<ThreatAction>,
    /// How urgent: the highest of the matching rules' severities, high for a marked threat's
    /// repeat, by its confidence for a threat-intel indicator, medium for the model alone.
    pub severity: Severity,
    /// When the model flagged the event: each feature's share of the logit, `w · log1p(x)`,
    /// largest first.
    pub contributions: Vec<(FeatureName, f64)>,
    /// Whether the event arrived behind its partition's watermark.
    pub late: bool,
    /// The event's own `ts` when it differs from `ts` (late events).
    pub event_ts: Option<Time>,
    /// For each matching correlation rule, `(rule id, its group)`: the `group-by` fields and their
    /// values (`field=value, ...`; empty for a rule without `group-by`).
    pub correlation_groups: Vec<(String, String)>,
    /// A `blocked` decision: the event whose threat decision blocked the user.
    pub blocked_by: Option<String>,
    /// A decision that blocks the user, or a `blocked` one: until when (event time, inclusive).
    pub blocked_until: Option<Time>,
    /// Where the event was read (file or Kafka partition, and record), for `revert` commands.
    pub position: Option<Position>,
    /// The event's source address, if it had one.
    #[serde(default)]
    pub src_ip: Option<String>,
    /// What the GeoIP/ASN databases said about the event's source address (absent when the job
    /// enriches nothing; see [`crate::enrich`]).
    #[serde(default)]
    pub enrichment: Option<crate::enrich::Enrichment>,
    /// The threat-intel indicators the event matched (in force at `ts`; for a `retro` decision,
    /// those that came into force at `ts`), absent when none did.
    #[serde(default)]
    pub intel: Option<Vec<IntelHit>>,
    /// What the decision adds to its entities' risk (docs/semantics.md#entity-risk).
    #[serde(default)]
    pub risk_score: u32,
    /// A `risk` decision's entity, score and contributions.
    #[serde(default)]
    pub risk: Option<RiskAlert>,
}

/// Why an entity raised a `risk` decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskAlert {
    /// `user` or `src_ip`.
    pub entity: String,
    /// The user or the address.
    pub value: String,
    /// Its risk at the decision's time.
    pub score: u64,
    /// The threshold it reached.
    pub threshold: u64,
    /// The window risk is summed over (ms).
    pub window: Time,
    /// The detections in the window, in `(ts, decision_id)` order.
    pub contributions: Vec<RiskContribution>,
}

/// A detection that added to an entity's risk.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RiskContribution {
    /// Its time.
    pub ts: Time,
    /// Its decision.
    pub decision_id: String,
    /// The decided event.
    pub event_id: String,
    /// The event's user.
    pub user: String,
    /// The rules it matched.
    pub rules: Vec<String>,
    /// What it added.
    pub score: u32,
}

impl Decision {
    /// The decision `verdict` on `event` judged at `time` with its `features`, naming nothing yet
    /// (no score, rules, actions or mark; default severity): a dataflow fills in what decided it.
    pub fn for_event(time: Time, event: &Event, features: &Features, verdict: Verdict) -> Decision {
        Decision {
            features: *features,
            late: event.late,
            event_ts: (event.ts != time).then_some(event.ts),
            position: event.position.clone(),
            src_ip: event.src_ip.as_deref().map(str::to_string),
            enrichment: event.enrichment.as_deref().cloned(),
            intel: event.intel.as_deref().cloned(),
            ..Decision::about(decision_id(&event.event_id, verdict), event.event_id.to_string(), event.user.to_string(), time, verdict)
        }
    }

    /// The decision `decision_id` with `verdict` at `time` about `event_id` of `user`, naming
    /// nothing else (no score, rules, actions, features, position or address; default severity):
    /// what a decision made away from its event (`retro`, `risk`) fills in.
    pub fn about(decision_id: String, event_id: String, user: String, time: Time, verdict: Verdict) -> Decision {
        Decision {
            decision_id,
            event_id,
            user,
            ts: time,
            verdict,
            score: None,
            model_version: None,
            rules: Vec::new(),
            rule_titles: Vec::new(),
            fingerprint_match: None,
            features: Features::default(),
            actions: Vec::new(),
            severity: Severity::default(),
            contributions: Vec::new(),
            late: false,
            event_ts: None,
            correlation_groups: Vec::new(),
            blocked_by: None,
            blocked_until: None,
            position: None,
            src_ip: None,
            enrichment: None,
            intel: None,
            risk_score: 0,
            risk: None,
        }
    }
}

/// The decision id: 128-bit xxh3 of the event id and the verdict, in hex.
pub fn decision_id(event_id: &str, verdict: Verdict) -> String {
    let mut bytes = Vec::with_capacity(event_id.len() + 9);
    bytes.extend_from_slice(event_id.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(verdict.as_str().as_bytes());
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes))
}

/// Decides events with their features against the models, rules and marks in force at their time.
/// Each set of Sigma rules in force it builds becomes `latest`'s, for decoders to match records
/// against early (see [`crate::detect::sigma_set`]).
pub fn decide_as_of<'s>(
    scored: StreamVec<'s, Time, (UserEvent, Features)>,
    control: ControlArrangement<'s>,
    latest: Option<Arc<LatestSigmaSet>>,
) -> StreamVec<'s, Time, Decision> {
    as_of_lookup(
        scored,
        control,
        Pipeline,
        "Decide",
        |_| (),
        |(e, _): &(UserEvent, Features)| e.time,
        {
            let mut index = PerVersion::default();
            move |time, (e, f), controls, version| {
                let index = index.get(version, || {
                    let index = ControlIndex::new(controls);
                    if let Some(latest) = &latest {
                        latest.publish(index.sigma_set(), time);
                    }
                    index
                });
                decide(time, &e, &f, controls, index)
            }
        },
    )
}

/// The controls in force indexed for [`decide`] (by their positions in its `controls`): the marks
/// by fingerprint, and the rules by the events they can match, so that an event is compared with
/// the few rules and marks it may match rather than with all of them.
#[derive(Debug, Default)]
pub struct ControlIndex {
    /// The model in force: one at a time; should an input ever hold two, the greatest, so that the
    /// choice does not depend on arrival order.
    model: Option<usize>,
    /// The rules that only feed correlations ([`correlated_only`]).
    hidden: Vec<String>,
    marks: MarkIndex,
    rules: RuleIndex,
}

impl ControlIndex {
    /// Indexes the controls in force (those with a positive count).
    pub fn new(controls: &[(&Control, isize)]) -> ControlIndex {
        let marks = MarkIndex::new(in_force(controls).filter_map(|(position, control)| match control {
            Control::Mark(mark) => Some((position, mark)),
            Control::Model(_) | Control::Rule(_) | Control::Unblock(_) | Control::Database(_) | Control::Indicator(_) => None,
        }));
        let mut plain = Vec::new();
        let mut sigma = Vec::new();
        for (position, control) in in_force(controls) {
            if let Control::Rule(rule) = control {
                // A new-terms rule chooses events for `crate::detect::new_terms`; it does not decide.
                if rule.new_terms.is_some() {
                    continue;
                }
                match &rule.sigma {
                    Some(detection) => sigma.push((position, detection.clone())),
                    None => plain.push(position),
                }
            }
        }
        let (sigma_positions, sigma_rules) = sigma.into_iter().unzip();
        let rules = RuleIndex { plain, sigma_positions, sigma: Arc::new(SigmaSet::new(sigma_rules)), by_source: Default::default() };
        let model = in_force(controls).filter(|(_, control)| matches!(control, Control::Model(_))).map(|(position, _)| position).next_back();
        let hidden = correlated_only(controls).into_iter().map(str::to_string).collect();
        ControlIndex { model, hidden, marks, rules }
    }

    /// The Sigma rules in force as one set (see [`crate::detect::sigma_set`]).
    pub fn sigma_set(&self) -> &Arc<SigmaSet> {
        &self.rules.sigma
    }

    /// The same controls with every rule tried on every event (the rules not indexed): what the
    /// index must agree with, for tests and benchmarks.
    pub fn scanning_every_rule(controls: &[(&Control, isize)]) -> ControlIndex {
        let mut index = ControlIndex::new(controls);
        index.rules.plain.append(&mut index.rules.sigma_positions);
        index.rules.sigma = Arc::new(SigmaSet::new(Vec::new()));
        index
    }
}

/// The rules in force by the events they can match: the Sigma rules as one [`SigmaSet`], which
/// compares an event with the rules of its source that may match it (and gives the matches made
/// when its record was decoded: see [`crate::detect::sigma_set`]); the others are tried on every
/// event.
#[derive(Debug, Default)]
struct RuleIndex {
    /// Rules without a Sigma detection.
    plain: Vec<usize>,
    /// The positions of the rules with one, in the order of `sigma`.
    sigma_positions: Vec<usize>,
    /// Their detections.
    sigma: Arc<SigmaSet>,
    /// Per event source, its Sigma rules, indexed when the source is first seen.
    by_source: std::cell::RefCell<std::collections::HashMap<String, std::rc::Rc<SourceRules>, foldhash::fast::FixedState>>,
}

impl RuleIndex {
    fn for_source(&self, source: &str) -> std::rc::Rc<SourceRules> {
        if let Some(rules) = self.by_source.borrow().get(source) {
            return std::rc::Rc::clone(rules);
        }
        let rules = std::rc::Rc::new(self.sigma.for_source(source));
        self.by_source.borrow_mut().insert(source.to_string(), std::rc::Rc::clone(&rules));
        rules
    }

    /// The positions (in the controls) of the Sigma rules whose detections match the event's
    /// record: those found when it was decoded, when the set in force is the one it was matched
    /// against, else matched now.
    fn sigma_matches<'v>(&'v self, event: &Event, record: &RecordView<'v>) -> Vec<usize> {
        let Some(source) = event.source.as_deref() else { return Vec::new() };
        let early = event.extra.early_matches().filter(|early| early.rules == self.sigma.fingerprint());
        let matched = match early {
            Some(early) => early.matched.clone(),
            None => self.sigma.matched(&self.for_source(source), record),
        };
        matched.into_iter().filter_map(|position| self.sigma_positions.get(position as usize).copied()).collect()
    }
}

/// Decides an event judged at `time` with its features and the control collection in force then.
///
/// `controls` are the accumulated control values (model, rules, marks) with their multiplicities,
/// and `index` their [`ControlIndex`]. The event is a threat when the model says so, a rule
/// matches, it repeats a marked threat, or it matched a threat-intel indicator (found before, in
/// [`crate::detect::intel`]).
pub fn decide(time: Time, event: &Event, features: &Features, controls: &[(&Control, isize)], index: &ControlIndex) -> Option<Decision> {
    let model = index.model.and_then(|position| match controls.get(position) {
        Some((Control::Model(model), _)) => Some(model),
        _ => None,
    });
    let score = model.map(|m| m.score(features));
    let model_threat = matches!((model, score), (Some(m), Some(s)) if m.is_threat(s));
    let mut rules: Vec<(String, String, u32)> = Vec::new();
    let mut actions = Vec::new();
    let mut severity = None;
    // The first mark (by id) whose fingerprint the event repeats.
    let fingerprint_match = index
        .marks
        .candidates(event)
        .filter_map(|position| match controls.get(position).map(|(control, _)| *control) {
            Some(Control::Mark(mark)) if mark.matches(event) => Some(mark.id.as_str()),
            _ => None,
        })
        .min();
    let record = RecordView::of_fields(&event.extra);
    // A rule matches when its conditions hold and its Sigma detection, if any, matches.
    let mut consider = |position: usize, detection_matched: bool| {
        if let Some((Control::Rule(rule), _)) = controls.get(position) {
            let matched = match detection_matched {
                true => rule.holds_conditions(event, features),
                false => rule.matches_viewed(event, features, &record),
            };
            if matched && !is_hidden(rule, &index.hidden) {
                rules.push((rule.id.clone(), rule.title.clone().unwrap_or_else(|| rule.id.clone()), rule.risk_score));
                actions.extend(rule.actions.iter().copied());
                severity = severity.max(Some(rule.severity));
            }
        }
    };
    index.rules.plain.iter().for_each(|p| consider(*p, false));
    index.rules.sigma_matches(event, &record).into_iter().for_each(|p| consider(p, true));
    let intel = event.intel.as_deref().filter(|hits| !hits.is_empty());
    if !model_threat && rules.is_empty() && fingerprint_match.is_none() && intel.is_none() {
        return None;
    }
    if model_threat || fingerprint_match.is_some() || intel.is_some() {
        actions.push(ThreatAction::Alert);
    }
    if fingerprint_match.is_some() {
        severity = severity.max(Some(Severity::High));
    }
    if let Some(hits) = intel {
        severity = severity.max(hits.iter().map(|h| Severity::of_confidence(h.confidence)).max());
    }
    let contributions = match model {
        Some(m) if model_threat => m.contributions(features),
        _ => Vec::new(),
    };
    rules.sort();
    rules.dedup_by(|a, b| a.0 == b.0);
    actions.sort();
    actions.dedup();
    let risk_score = rules.iter().map(|(_, _, risk)| *risk).sum::<u32>()
        + if model_threat { Severity::Medium.risk_score() } else { 0 }
        + if fingerprint_match.is_some() { Severity::High.risk_score() } else { 0 }
        + intel_risk(intel.into_iter().flatten());
    Some(Decision {
        score,
        model_version: model.map(|m| m.version.clone()),
        rule_titles: rules.iter().map(|(_, title, _)| title.clone()).collect(),
        rules: rules.into_iter().map(|(id, ..)| id).collect(),
        risk_score,
        fingerprint_match: fingerprint_match.map(str::to_string),
        actions,
        severity: severity.unwrap_or_default(),
        contributions,
        ..Decision::for_event(time, event, features, Verdict::Threat)
    })
}

/// What matches with threat-intel indicators add to risk: each indicator's severity's score.
pub fn intel_risk<'a>(hits: impl IntoIterator<Item = &'a IntelHit>) -> u32 {
    hits.into_iter().map(|hit| Severity::of_confidence(hit.confidence).risk_score()).sum()
}

/// The rules that only feed correlations: those the correlation rules in force refer to (by id or
/// `name`) without `generate: true`. They do not decide on their own.
pub fn correlated_only<'a>(controls: &[(&'a Control, isize)]) -> Vec<&'a str> {
    in_force(controls)
        .filter_map(|(_, control)| match control {
            Control::Rule(rule) => rule.sigma.as_ref().and_then(|s| s.correlation()).filter(|c| !c.generate),
            _ => None,
        })
        .flat_map(|c| c.rules.iter().map(String::as_str))
        .collect()
}

/// Whether `rule` is one of `hidden` (by id or Sigma `name`).
fn is_hidden(rule: &crate::detect::rules::Rule, hidden: &[String]) -> bool {
    !hidden.is_empty()
        && hidden.iter().any(|h| *h == rule.id || rule.sigma.as_ref().and_then(|s| s.name.as_deref()) == Some(h.as_str()))
}

/// The decision for an event of a blocked user (judged at `time`): verdict `blocked`, naming the
/// event whose decision blocked the user.
pub fn blocked(time: Time, event: &Event, features: &Features, blocked_by: &str, until: Time) -> Decision {
    Decision {
        blocked_by: Some(blocked_by.to_string()),
        blocked_until: Some(until),
        ..Decision::for_event(time, event, features, Verdict::Blocked)
    }
}

/// A correlation rule matched at an event: what the decision gains.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CorrelationMatch {
    /// The correlation rule's id.
    pub rule: String,
    /// Its title.
    pub title: String,
    /// Its severity (Sigma `level`).
    pub severity: Severity,
    /// Its actions.
    pub actions: Vec<ThreatAction>,
    /// What it adds to the event's entities' risk.
    pub risk_score: u32,
    /// The group it matched for (`field=value, ...`).
    pub group: String,
}

/// Adds correlation matches to an event's decision, or makes one (no model verdict: the score is
/// the decision step's, absent here) when the event had none.
pub fn with_correlations(decision: Option<Decision>, time: Time, event: &Event, features: &Features, matches: &[CorrelationMatch]) -> Option<Decision> {
    if matches.is_empty() {
        return decision;
    }
    let mut d = decision.unwrap_or_else(|| Decision {
        severity: Severity::Informational,
        ..Decision::for_event(time, event, features, Verdict::Threat)
    });
    let mut rules: Vec<(String, String)> = d.rules.drain(..).zip(d.rule_titles.drain(..)).collect();
    for m in matches {
        if !rules.iter().any(|(id, _)| *id == m.rule) {
            d.risk_score += m.risk_score;
        }
        rules.push((m.rule.clone(), m.title.clone()));
        d.actions.extend(m.actions.iter().copied());
        d.severity = d.severity.max(m.severity);
        d.correlation_groups.push((m.rule.clone(), m.group.clone()));
    }
    rules.sort();
    rules.dedup_by(|a, b| a.0 == b.0);
    (d.rules, d.rule_titles) = rules.into_iter().unzip();
    d.actions.sort();
    d.actions.dedup();
    d.correlation_groups.sort();
    d.correlation_groups.dedup();
    Some(d)
}
