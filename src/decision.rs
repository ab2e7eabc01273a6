//! Threat decisions: how an event, its features and the control collection at its time decide.

use serde::{Deserialize, Serialize};

use crate::control::Control;
use crate::event::{Event, Time};
use crate::features::Features;
use crate::features::FeatureName;
use crate::rules::{Severity, ThreatAction};

/// A decision's verdict. Benign events produce no decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The model or a rule flagged the event.
    Threat,
    /// The user was blocked at the event's time.
    Blocked,
}

impl Verdict {
    /// The verdict's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Threat => "threat",
            Verdict::Blocked => "blocked",
        }
    }
}

/// A threat decision (DESIGN.md format).
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
    /// `threat` or `blocked`.
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
    /// repeat, medium for the model alone.
    pub severity: Severity,
    /// When the model flagged the event: each feature's share of the logit, `w · log1p(x)`,
    /// largest first.
    pub contributions: Vec<(FeatureName, f64)>,
    /// Whether the event arrived behind its partition's watermark.
    pub late: bool,
    /// The event's own `ts` when it differs from `ts` (late events).
    pub event_ts: Option<Time>,
}

/// The decision id: 128-bit xxh3 of the event id and the verdict, in hex.
pub fn decision_id(event_id: &str, verdict: Verdict) -> String {
    let mut bytes = Vec::with_capacity(event_id.len() + 9);
    bytes.extend_from_slice(event_id.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(verdict.as_str().as_bytes());
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes))
}

/// Decides an event judged at `time` with its features and the control collection in force then.
///
/// `controls` are the accumulated control values (model, rules, marks) with their multiplicities.
/// The event is a threat when the model says so, a rule matches, or it repeats a marked threat.
pub fn decide(time: Time, event: &Event, features: &Features, controls: &[(&Control, isize)]) -> Option<Decision> {
    // One model is in force at a time; should an input ever hold two, the greatest is used, so the
    // choice does not depend on arrival order.
    let model = controls
        .iter()
        .filter(|(_, diff)| *diff > 0)
        .filter_map(|(c, _)| match *c {
            Control::Model(m) => Some(m),
            Control::Rule(_) | Control::Mark(_) => None,
        })
        .next_back();
    let score = model.map(|m| m.score(features));
    let model_threat = matches!((model, score), (Some(m), Some(s)) if m.is_threat(s));
    let mut rules: Vec<(String, String)> = Vec::new();
    let mut actions = Vec::new();
    let mut severity = None;
    let record = std::cell::OnceCell::new();
    // The first mark (by id) whose fingerprint the event repeats.
    let mut fingerprint_match: Option<&str> = None;
    for (control, _) in controls.iter().filter(|(_, diff)| *diff > 0) {
        match *control {
            Control::Rule(rule) if rule.matches(event, features, &record) => {
                rules.push((rule.id.clone(), rule.title.clone().unwrap_or_else(|| rule.id.clone())));
                actions.extend(rule.actions.iter().copied());
                severity = severity.max(Some(rule.severity));
            }
            Control::Mark(mark) if mark.matches(event) && fingerprint_match.is_none_or(|id| mark.id.as_str() < id) => {
                fingerprint_match = Some(&mark.id);
            }
            _ => {}
        }
    }
    if !model_threat && rules.is_empty() && fingerprint_match.is_none() {
        return None;
    }
    if model_threat || fingerprint_match.is_some() {
        actions.push(ThreatAction::Alert);
    }
    if fingerprint_match.is_some() {
        severity = severity.max(Some(Severity::High));
    }
    let contributions = match model {
        Some(m) if model_threat => m.contributions(features),
        _ => Vec::new(),
    };
    rules.sort();
    rules.dedup_by(|a, b| a.0 == b.0);
    actions.sort();
    actions.dedup();
    let verdict = Verdict::Threat;
    Some(Decision {
        decision_id: decision_id(&event.event_id, verdict),
        event_id: event.event_id.clone(),
        user: event.user.clone(),
        ts: time,
        verdict,
        score,
        model_version: model.map(|m| m.version.clone()),
        rule_titles: rules.iter().map(|(_, title)| title.clone()).collect(),
        rules: rules.into_iter().map(|(id, _)| id).collect(),
        fingerprint_match: fingerprint_match.map(str::to_string),
        features: *features,
        actions,
        severity: severity.unwrap_or_default(),
        contributions,
        late: event.late,
        event_ts: (event.ts != time).then_some(event.ts),
    })
}
