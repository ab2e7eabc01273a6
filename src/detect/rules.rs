//! Threshold rules (format: docs/semantics.md#threshold-rules): a predicate on event fields plus bounds on features.
//!
//! ```json
//! {"id": "brute-force", "effective_from": 0, "when": {"action": ["login", "login_failed"]},
//!  "features": {"failed_logins_5m": {"gte": 10}}, "actions": ["alert", "block"]}
//! ```
//! Removal is `{"id": "brute-force", "effective_from": T, "remove": true}`; a later update with the
//! same id replaces the rule.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use ordered_float::OrderedFloat;
use serde::{Deserialize, Serialize};

use crate::event::{Event, Time};
use crate::state::features::{FeatureName, Features};
use crate::detect::new_terms_spec::NewTerms;
use crate::detect::sigma::{RecordView, SigmaRule};
use crate::detect::action::{Severity, ThreatAction};

/// Bounds on one feature; all given bounds must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    /// `value >= gte`
    pub gte: Option<OrderedFloat<f64>>,
    /// `value > gt`
    pub gt: Option<OrderedFloat<f64>>,
    /// `value <= lte`
    pub lte: Option<OrderedFloat<f64>>,
    /// `value < lt`
    pub lt: Option<OrderedFloat<f64>>,
}

impl Bounds {
    /// Whether `value` satisfies every bound.
    pub fn holds(&self, value: u64) -> bool {
        let v = value as f64;
        self.gte.is_none_or(|b| v >= b.0)
            && self.gt.is_none_or(|b| v > b.0)
            && self.lte.is_none_or(|b| v <= b.0)
            && self.lt.is_none_or(|b| v < b.0)
    }
}

/// A rule update as written by users.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Rule id; a later update with the same id replaces or removes the rule.
    pub id: String,
    /// Event time from which the update applies.
    #[serde(default)]
    pub effective_from: Time,
    /// Field name to accepted values; every listed field must match one of its values.
    #[serde(default)]
    pub when: BTreeMap<String, Vec<String>>,
    /// Feature name to bounds; all must hold.
    #[serde(default)]
    pub features: BTreeMap<String, Bounds>,
    /// Actions of a match (default: alert).
    #[serde(default)]
    pub actions: Option<Vec<ThreatAction>>,
    /// Human-readable title.
    #[serde(default)]
    pub title: Option<String>,
    /// Severity of its alerts (default: a Sigma rule's `level`, else medium).
    #[serde(default)]
    pub severity: Option<Severity>,
    /// Removes the rule with this id.
    #[serde(default)]
    pub remove: bool,
    /// Makes it a new-terms rule: its other conditions choose the events it looks at.
    #[serde(default)]
    pub new_terms: Option<NewTerms>,
    /// What a match adds to its entities' risk (default: by severity).
    #[serde(default)]
    pub risk_score: Option<u32>,
    /// A Sigma detection the event must match too (rules from `--rules-dir`). (Always written:
    /// checkpoints use bincode, which cannot skip fields.)
    #[serde(default)]
    pub sigma: Option<SigmaRule>,
}

impl RuleSpec {
    /// The update removing rule `id` (from time 0; set `effective_from`).
    pub fn removal(id: String) -> RuleSpec {
        RuleSpec {
            id,
            effective_from: 0,
            when: BTreeMap::new(),
            features: BTreeMap::new(),
            actions: None,
            title: None,
            severity: None,
            remove: true,
            new_terms: None,
            risk_score: None,
            sigma: None,
        }
    }

    /// The update that puts a Sigma rule in force from its own `effective_from` (0 without one).
    pub fn from_sigma(rule: SigmaRule) -> RuleSpec {
        RuleSpec {
            id: rule.id.clone(),
            effective_from: rule.effective_from.unwrap_or(0),
            when: BTreeMap::new(),
            features: BTreeMap::new(),
            actions: rule.actions.clone(),
            title: Some(rule.title.clone()),
            severity: rule.level.as_deref().map(Severity::of_level),
            remove: false,
            new_terms: rule.new_terms.clone(),
            risk_score: rule.risk_score,
            sigma: Some(rule),
        }
    }
}

/// A validated rule, as it travels in the control collection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// Rule id.
    pub id: String,
    /// Field predicates.
    pub when: BTreeMap<String, Vec<String>>,
    /// Feature bounds.
    pub features: Vec<(FeatureName, Bounds)>,
    /// Actions of a match.
    pub actions: Vec<ThreatAction>,
    /// Title.
    pub title: Option<String>,
    /// Severity of its alerts.
    pub severity: Severity,
    /// A Sigma detection the event must match too.
    pub sigma: Option<SigmaRule>,
    /// A new-terms rule's combination: the rule then chooses events, it does not decide.
    pub new_terms: Option<NewTerms>,
    /// What a match adds to its entities' risk.
    pub risk_score: u32,
}

impl Rule {
    /// Validates a rule spec (not a removal).
    pub fn from_spec(spec: &RuleSpec) -> Result<Rule> {
        ensure!(!spec.id.is_empty(), "rule id is empty");
        ensure!(!spec.remove, "rule {} is a removal", spec.id);
        let features = spec
            .features
            .iter()
            .map(|(name, bounds)| {
                let feature = FeatureName::parse(name).with_context(|| format!("rule {}: unknown feature `{name}`", spec.id))?;
                Ok((feature, bounds.clone()))
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(new_terms) = &spec.new_terms {
            new_terms.validate().with_context(|| format!("rule {}", spec.id))?;
            ensure!(spec.sigma.as_ref().is_none_or(|s| s.correlation().is_none()), "rule {}: a correlation rule cannot have `new_terms`", spec.id);
        }
        ensure!(
            !spec.when.is_empty() || !features.is_empty() || spec.sigma.is_some() || spec.new_terms.is_some(),
            "rule {} has neither `when` nor `features`: it would flag every event",
            spec.id
        );
        let mut actions = spec.actions.clone().unwrap_or_else(|| vec![ThreatAction::Alert]);
        actions.sort();
        actions.dedup();
        let title = spec.title.clone().or_else(|| spec.sigma.as_ref().map(|s| s.title.clone()));
        let severity = spec.severity.unwrap_or_default();
        Ok(Rule {
            id: spec.id.clone(),
            when: spec.when.clone(),
            features,
            actions,
            title,
            severity,
            sigma: spec.sigma.clone(),
            new_terms: spec.new_terms.clone(),
            risk_score: spec.risk_score.unwrap_or(severity.risk_score()),
        })
    }

    /// Whether the rule matches an event with its features; `record` is the event's own record,
    /// made once per event for the Sigma rules that need it.
    pub fn matches(&self, event: &Event, features: &Features) -> bool {
        self.matches_viewed(event, features, &RecordView::of_fields(&event.extra))
    }

    /// [`Rule::matches`] with the event's record read through `view`, shared by the rules an
    /// event is compared with (see [`RecordView`]).
    pub fn matches_viewed<'v>(&'v self, event: &Event, features: &Features, view: &RecordView<'v>) -> bool {
        self.holds_conditions(event, features) && self.sigma.as_ref().is_none_or(|sigma| sigma.matches_viewed(event, view))
    }

    /// Whether the event and its features meet the rule's conditions besides its Sigma
    /// detection: its feature bounds and its `when` fields.
    pub fn holds_conditions(&self, event: &Event, features: &Features) -> bool {
        self.features.iter().all(|(name, bounds)| bounds.holds(features.get(*name)))
            && self.when.iter().all(|(field, accepted)| event.field(field).is_some_and(|value| accepted.iter().any(|a| *a == *value)))
    }
}

/// An event's value of a field, as rules compare it: a canonical field, one of its record's
/// top-level fields, or a dotted path into its record (raw logs). Strings as they are, other
/// scalars as JSON text; absent or `null`: none.
pub fn field_value<'e>(event: &'e Event, name: &str) -> Option<std::borrow::Cow<'e, str>> {
    if let Some(value) = event.field(name) {
        return Some(value);
    }
    use sonic_rs::JsonValueTrait;
    let mut segments = name.split('.');
    let mut at = event.extra.get(segments.next()?)?;
    for segment in segments {
        at = at.get(segment)?;
    }
    match at.as_str() {
        Some(s) => Some(std::borrow::Cow::Borrowed(s)),
        None if at.is_null() => None,
        None => Some(std::borrow::Cow::Owned(at.to_string())),
    }
}

/// Reads rule updates from a JSON array, JSON lines, or YAML (a list or a single rule) file.
pub fn read_rules(path: &Path) -> Result<Vec<RuleSpec>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading rules {}", path.display()))?;
    parse_rules(&text).with_context(|| format!("rules file {}", path.display()))
}

/// Parses rule updates from text (see [`read_rules`]).
pub fn parse_rules(text: &str) -> Result<Vec<RuleSpec>> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed).context("bad JSON rules array");
    }
    // JSON lines, perhaps after `#` comments.
    let first_line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'));
    if first_line.is_some_and(|l| l.starts_with('{')) {
        let mut specs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            specs.push(serde_json::from_str(line).with_context(|| format!("line {}: bad rule", i + 1))?);
        }
        return Ok(specs);
    }
    let value: serde_norway::Value = serde_norway::from_str(text).context("bad YAML rules")?;
    match value {
        serde_norway::Value::Sequence(_) => serde_norway::from_value(value).context("bad YAML rule list"),
        serde_norway::Value::Mapping(_) => Ok(vec![serde_norway::from_value(value).context("bad YAML rule")?]),
        serde_norway::Value::Null => Ok(Vec::new()),
        _ => bail!("a rules file holds a list of rules"),
    }
}

/// The rules shipped with threatflow, used by `threatflow run` by default.
pub const DEFAULT_RULES: &str = include_str!("../../rules/default.json");

/// The rule updates of a text of Sigma rules (from a rules topic: no placeholders), each from its
/// `effective_from` or 0; every document must parse (see [`crate::detect::sigma::parse_documents`]).
pub fn parse_sigma_updates(text: &str) -> Result<Vec<RuleSpec>> {
    Ok(crate::detect::sigma::parse_documents(text)?.into_iter().map(RuleSpec::from_sigma).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse_event;

    #[test]
    fn matches_fields_and_bounds() {
        let specs = parse_rules(
            "- id: r1\n  when: {action: [login], country: [RU, KP]}\n  features: {failed_logins_5m: {gte: 3}}\n  actions: [block, alert, block]\n",
        )
        .unwrap();
        let rule = Rule::from_spec(&specs[0]).unwrap();
        assert_eq!(rule.actions, vec![ThreatAction::Alert, ThreatAction::Block]);
        let e = parse_event(br#"{"event_id":"1","ts":5,"user":"u","action":"login","country":"ru"}"#, 1 << 20).unwrap();
        let f = Features { failed_logins_5m: 3, ..Features::default() };
        assert!(rule.matches(&e, &f));
        assert!(!rule.matches(&e, &Features { failed_logins_5m: 2, ..f }));
        let other = Event { action: "download".into(), ..e.clone() };
        assert!(!rule.matches(&other, &f));
        let no_country = Event { country: None, ..e };
        assert!(!rule.matches(&no_country, &f));
    }

    #[test]
    fn rejects_unknown_features_and_fields() {
        let specs = parse_rules(r#"[{"id":"x","features":{"height":{"gt":1}}}]"#).unwrap();
        assert!(Rule::from_spec(&specs[0]).is_err());
        assert!(parse_rules(r#"[{"id":"x","wen":{}}]"#).is_err());
        let specs = parse_rules("{\"id\":\"a\",\"remove\":true,\"effective_from\":9}\n").unwrap();
        assert!(specs[0].remove);
        let defaults = parse_rules(DEFAULT_RULES).unwrap();
        assert!(defaults.iter().all(|s| Rule::from_spec(s).is_ok()));
    }
}
