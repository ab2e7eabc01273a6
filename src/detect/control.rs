//! The control collection: models, rules, marks, unblocks, enrichment databases and threat-intel
//! indicators as one collection over event time.
//!
//! At every time the collection holds exactly the model in force (the one with the greatest
//! `effective_from <= t`) and the rules and marks in force. It is broadcast to every worker and
//! arranged there, so each event reads it as of its own time (no race between an update and the
//! events, on any worker: the point where Flink's broadcast state is weak). See
//! `docs/semantics.md#models-and-rules`.

use std::collections::BTreeMap;

use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::ValSpine;
use serde::{Deserialize, Serialize};

use crate::detect::marks::{Mark, MarkUpdate, Unblock};
use crate::enrich::intel::{Indicator, IndicatorUpdate};
use crate::enrich::{Database, DatabaseKind};
use crate::detect::model::Model;
use crate::detect::rules::{Rule, RuleSpec};
use crate::event::Time;

/// The control arrangement, replicated on every worker.
pub type ControlArrangement<'s> = Arranged<'s, TraceAgent<ValSpine<(), Control, Time, isize>>>;

/// An element of the control collection.
// A model's weights make it the largest element; the collection is small, and boxing would only
// add indirection to every lookup.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Control {
    /// The model in force.
    Model(Model),
    /// A rule in force.
    Rule(Rule),
    /// A marked threat in force.
    Mark(Mark),
    /// An unblock (never retracted: it lifts the blocks made before its `effective_from`).
    Unblock(Unblock),
    /// The GeoIP or ASN database in force (at most one of each kind; see [`crate::enrich`]).
    Database(Database),
    /// A threat-intel indicator in force. Indicators can number in the hundred thousands: they are
    /// split from the rest before it is arranged, into an index of their own
    /// ([`crate::detect::intel`]).
    Indicator(Indicator),
}

/// An update of the control collection.
pub type ControlUpdate = (Control, Time, isize);

/// The controls in force among accumulated ones (those with a positive count), with their
/// positions: what the decision and correlation steps index them by.
pub fn in_force<'s, 'a>(controls: &'s [(&'a Control, isize)]) -> impl DoubleEndedIterator<Item = (usize, &'a Control)> + 's {
    controls.iter().enumerate().filter(|(_, (_, diff))| *diff > 0).map(|(position, (control, _))| (position, *control))
}

/// Every model and rule update of a job so far; turns a new update into the control collection's
/// changes (updates read from Kafka while the job runs).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ControlLog {
    models: Vec<(Time, Model)>,
    specs: Vec<RuleSpec>,
    marks: Vec<MarkUpdate>,
    databases: Vec<(Time, Database)>,
    indicators: Vec<IndicatorUpdate>,
}

impl ControlLog {
    /// A log of these models and nothing else.
    pub fn with_models(models: Vec<(Time, Model)>) -> Self {
        ControlLog { models, ..ControlLog::default() }
    }

    /// The databases, when every one logged applies from time 0 (for equal kinds the later
    /// wins): then nothing the log holds changes them over time.
    pub fn databases_from_start(&self) -> Option<crate::enrich::Databases> {
        let mut databases = crate::enrich::Databases::default();
        for (from, database) in &self.databases {
            if *from != 0 {
                return None;
            }
            match database.kind {
                DatabaseKind::Geoip => databases.geo = Some(database.clone()),
                DatabaseKind::Asn => databases.asn = Some(database.clone()),
            }
        }
        Some(databases)
    }

    /// The control collection's updates for everything logged.
    pub fn updates(&self) -> Vec<ControlUpdate> {
        let mut updates = model_timeline(self.models.clone());
        updates.extend(rule_timeline(self.specs.clone()));
        updates.extend(mark_timeline(self.marks.clone()));
        updates.extend(database_timeline(self.databases.clone()));
        updates.extend(indicator_timeline(&self.indicators));
        updates
    }

    /// The control collection's updates for the indicators logged (the others' are not computed).
    pub fn indicator_updates(&self) -> Vec<ControlUpdate> {
        indicator_timeline(&self.indicators)
    }

    /// Logs indicator updates; returns the collection's changes (only the indicators' timeline is
    /// recomputed).
    pub fn add_indicators(&mut self, updates: impl IntoIterator<Item = IndicatorUpdate>) -> Vec<ControlUpdate> {
        let before = indicator_timeline(&self.indicators);
        self.indicators.extend(updates);
        changes(before, indicator_timeline(&self.indicators))
    }

    /// Logs a verified database in force from `from` (replacing the one of its kind from then
    /// on); returns the collection's changes.
    pub fn add_database(&mut self, from: Time, database: Database) -> Vec<ControlUpdate> {
        let before = database_timeline(self.databases.clone());
        self.databases.push((from, database));
        changes(before, database_timeline(self.databases.clone()))
    }

    /// Logs a verified model in force from `from`; returns the collection's changes.
    pub fn add_model(&mut self, from: Time, model: Model) -> Vec<ControlUpdate> {
        let before = model_timeline(self.models.clone());
        self.models.push((from, model));
        changes(before, model_timeline(self.models.clone()))
    }

    /// Logs mark updates; a mark that does not validate is reported and skipped. Returns the
    /// collection's changes (only the marks' timeline is recomputed: models are not cloned).
    pub fn add_marks(&mut self, updates: impl IntoIterator<Item = MarkUpdate>) -> Vec<ControlUpdate> {
        let before = mark_timeline(self.marks.clone());
        for update in updates {
            match update.mark() {
                Ok(_) => self.marks.push(update),
                Err(error) => tracing::error!(mark = %update.id, "mark rejected, skipped: {error:#}"),
            }
        }
        changes(before, mark_timeline(self.marks.clone()))
    }

    /// Logs rule updates; a rule that does not validate is reported and skipped. Returns the
    /// collection's changes.
    pub fn add_rules(&mut self, specs: impl IntoIterator<Item = RuleSpec>) -> Vec<ControlUpdate> {
        let before = rule_timeline(self.specs.clone());
        for spec in specs {
            if let (false, Err(error)) = (spec.remove, Rule::from_spec(&spec)) {
                tracing::error!(rule = %spec.id, "rule rejected, skipped: {error:#}");
                continue;
            }
            self.specs.push(spec);
        }
        changes(before, rule_timeline(self.specs.clone()))
    }
}

/// What turns the collection described by `before` into the one described by `after`.
///
/// A change that takes effect at `t` leaves the collection before `t` as it was, so every change
/// returned is at `t` or later.
fn changes(before: Vec<ControlUpdate>, after: Vec<ControlUpdate>) -> Vec<ControlUpdate> {
    let mut all: Vec<ControlUpdate> = before.into_iter().map(|(c, t, d)| (c, t, -d)).chain(after).collect();
    all.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    let mut out: Vec<ControlUpdate> = Vec::new();
    for (control, time, diff) in all {
        match out.last_mut() {
            Some(last) if last.0 == control && last.1 == time => last.2 += diff,
            _ => out.push((control, time, diff)),
        }
    }
    out.retain(|(_, _, diff)| *diff != 0);
    out
}

/// Models: the one with the greatest `effective_from <= t` applies; for equal times the later wins.
/// (Each model's `effective_from` is shown in the live metrics.)
fn model_timeline(mut models: Vec<(Time, Model)>) -> Vec<ControlUpdate> {
    let mut updates = Vec::new();
    models.sort_by_key(|(from, _)| *from);
    let mut current: Option<Model> = None;
    for (from, model) in models {
        let shown = i64::try_from(from).unwrap_or(i64::MAX);
        crate::metrics::METRICS.model_effective_from.with_label_values(&[model.version.as_str()]).set(shown);
        if let Some(old) = current.take() {
            updates.push((Control::Model(old), from, -1));
        }
        updates.push((Control::Model(model.clone()), from, 1));
        current = Some(model);
    }
    updates
}

/// Databases: per kind, the one with the greatest `effective_from <= t` applies, as models do.
fn database_timeline(mut databases: Vec<(Time, Database)>) -> Vec<ControlUpdate> {
    let mut updates = Vec::new();
    databases.sort_by_key(|(from, database)| (database.kind, *from));
    let mut current: Option<(DatabaseKind, Database)> = None;
    for (from, database) in databases {
        if let Some((_, old)) = current.take().filter(|(kind, _)| *kind == database.kind) {
            updates.push((Control::Database(old), from, -1));
        }
        updates.push((Control::Database(database.clone()), from, 1));
        current = Some((database.kind, database));
    }
    updates
}

/// Rules: a later update with the same id replaces or removes the rule.
fn rule_timeline(mut specs: Vec<RuleSpec>) -> Vec<ControlUpdate> {
    let mut updates = Vec::new();
    specs.sort_by_key(|s| s.effective_from);
    let mut in_force: BTreeMap<String, Rule> = BTreeMap::new();
    for spec in specs {
        let from = spec.effective_from;
        let replacement = if spec.remove {
            None
        } else {
            match Rule::from_spec(&spec) {
                Ok(rule) => Some(rule),
                Err(error) => {
                    tracing::error!(rule = %spec.id, "rule rejected, skipped: {error:#}");
                    continue;
                }
            }
        };
        if let Some(old) = in_force.remove(&spec.id) {
            updates.push((Control::Rule(old), from, -1));
        }
        if let Some(rule) = replacement {
            in_force.insert(rule.id.clone(), rule.clone());
            updates.push((Control::Rule(rule), from, 1));
        }
    }
    updates
}

/// Marks: likewise by id; unblocks are never retracted.
fn mark_timeline(mut marks: Vec<MarkUpdate>) -> Vec<ControlUpdate> {
    let mut updates = Vec::new();
    marks.sort_by_key(|m| m.effective_from);
    let mut marked: BTreeMap<String, Mark> = BTreeMap::new();
    for update in marks {
        let from = update.effective_from;
        if let Some(unblock) = update.as_unblock() {
            updates.push((Control::Unblock(unblock), from, 1));
            continue;
        }
        let Ok(replacement) = update.mark() else { continue };
        if let Some(old) = marked.remove(&update.id) {
            updates.push((Control::Mark(old), from, -1));
        }
        if let Some(mark) = replacement {
            marked.insert(mark.id.clone(), mark.clone());
            updates.push((Control::Mark(mark), from, 1));
        }
    }
    updates
}

/// Indicators: each update of an id is in force from its `effective_from` until the next update of
/// that id (a replacement or a removal) or its own `expires`, whichever is first.
fn indicator_timeline(updates: &[IndicatorUpdate]) -> Vec<ControlUpdate> {
    let mut by_id: BTreeMap<&str, Vec<&IndicatorUpdate>> = BTreeMap::new();
    for update in updates {
        by_id.entry(update.id.as_str()).or_default().push(update);
    }
    let mut timeline = Vec::new();
    for mut of_id in by_id.into_values() {
        of_id.sort_by_key(|u| u.effective_from); // stable: for equal times the later update wins
        for (n, update) in of_id.iter().enumerate() {
            let Some(indicator) = update.indicator.as_ref() else { continue };
            let next = of_id.get(n + 1).map(|u| u.effective_from);
            let until = match (next, indicator.expires) {
                (Some(next), Some(expires)) => Some(next.min(expires)),
                (next, expires) => next.or(expires),
            };
            if until.is_some_and(|until| until <= update.effective_from) {
                continue;
            }
            timeline.push((Control::Indicator(indicator.clone()), update.effective_from, 1));
            if let Some(until) = until {
                timeline.push((Control::Indicator(indicator.clone()), until, -1));
            }
        }
    }
    // One indicator re-applied unchanged adds up to nothing at the time it was re-applied.
    changes(Vec::new(), timeline)
}

#[cfg(test)]
mod tests {
    use super::*;
    fn model(version: &str) -> Model {
        let artifact = format!(r#"{{"version":"{version}","features":["deletes_10m"],"weights":[1.0],"bias":-1.0,"threshold":0.5}}"#);
        Model::from_bytes(artifact.as_bytes(), None).unwrap()
    }

    /// The collection at time `t`, from updates.
    #[allow(clippy::mutable_key_type)] // Sigma rules cache compiled patterns; their order does not use the cache.
    fn at(updates: &[ControlUpdate], t: Time) -> Vec<Control> {
        let mut counts: BTreeMap<Control, isize> = BTreeMap::new();
        for (c, _, d) in updates.iter().filter(|u| u.1 <= t) {
            *counts.entry(c.clone()).or_default() += d;
        }
        counts.into_iter().filter(|(_, d)| *d != 0).map(|(c, d)| {
            assert_eq!(d, 1);
            c
        }).collect()
    }

    #[test]
    fn log_changes_add_up_to_the_timeline() {
        let mut log = ControlLog::default();
        let mut applied = log.add_model(0, model("v1"));
        applied.extend(log.add_model(100, model("v2")));
        // An update between two others, then a rule and its removal.
        let changes = log.add_model(50, model("v3"));
        assert!(changes.iter().all(|(_, t, _)| *t >= 50), "{changes:?}");
        applied.extend(changes);
        let rules = r#"[{"id":"r","effective_from":70,"when":{"action":["delete"]}},{"id":"r","effective_from":90,"remove":true}]"#;
        applied.extend(log.add_rules(crate::detect::rules::parse_rules(rules).unwrap()));
        // A rule that does not validate is skipped.
        assert!(log.add_rules(crate::detect::rules::parse_rules(r#"[{"id":"bad"}]"#).unwrap()).is_empty());
        for t in [0, 49, 50, 69, 70, 89, 90, 99, 100, 1000] {
            assert_eq!(at(&applied, t), at(&log.updates(), t), "at {t}");
        }
        let version = |t| match &at(&applied, t)[0] {
            Control::Model(m) => m.version.clone(),
            Control::Rule(_) | Control::Mark(_) | Control::Unblock(_) | Control::Database(_) | Control::Indicator(_) => unreachable!(),
        };
        assert_eq!([version(0), version(50), version(100)], ["v1", "v3", "v2"]);
        assert_eq!(at(&applied, 70).len(), 2);
        assert_eq!(at(&applied, 90).len(), 1);
    }

    #[test]
    fn indicators_are_in_force_until_replaced_removed_or_expired() {
        use crate::enrich::intel::{Indicator, IndicatorKind, IndicatorUpdate};
        let put = |id: &str, value: &str, from: Time, expires: Option<Time>| IndicatorUpdate {
            id: id.into(),
            effective_from: from,
            indicator: Some(Indicator::new(id, IndicatorKind::Ip, value, "s", 50, from, expires).unwrap()),
        };
        let mut log = ControlLog::default();
        let mut applied = log.add_indicators([put("a", "192.0.2.1", 10, Some(50)), put("b", "192.0.2.2", 0, None)]);
        // A replacement before the first one expires, and a removal.
        applied.extend(log.add_indicators([put("a", "192.0.2.3", 30, None), IndicatorUpdate { id: "b".into(), effective_from: 40, indicator: None }]));
        let values = |updates: &[ControlUpdate], t| -> Vec<String> {
            let mut values: Vec<String> = at(updates, t).into_iter().filter_map(|c| match c {
                Control::Indicator(i) => Some(i.value),
                _ => None,
            }).collect();
            values.sort();
            values
        };
        for (t, expected) in [(0, vec!["192.0.2.2"]), (10, vec!["192.0.2.1", "192.0.2.2"]), (30, vec!["192.0.2.2", "192.0.2.3"]), (40, vec!["192.0.2.3"]), (60, vec!["192.0.2.3"])] {
            assert_eq!(values(&applied, t), expected, "at {t}");
            assert_eq!(values(&log.updates(), t), expected, "at {t}");
        }
    }
}
