//! The control collection: models and rules as one small collection over event time.
//!
//! At every time the collection holds exactly the model in force (the one with the greatest
//! `effective_from <= t`) and the rules in force. It is broadcast to every worker and arranged
//! there, so each event reads it as of its own time (no race between an update and the events, on
//! any worker: the point where Flink's broadcast state is weak).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::event::Time;
use crate::marks::{Mark, MarkUpdate};
use crate::model::{self, Model};
use crate::rules::{self, Rule, RuleSpec};

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
    Mark(crate::marks::Mark),
    /// An unblock (never retracted: it lifts the blocks made before its `effective_from`).
    Unblock(crate::marks::Unblock),
}

/// An update of the control collection.
pub type ControlUpdate = (Control, Time, isize);

/// Where the models and rules of a job come from.
#[derive(Clone, Debug, Default)]
pub struct ControlSpec {
    /// The initial model, in force from time 0.
    pub model: Option<ModelSource>,
    /// A JSON-lines file of model updates.
    pub model_updates: Option<PathBuf>,
    /// Follow `model_updates` and the Sigma rules directory while the job runs (lines appended
    /// later, as by `threatflow model publish`, apply at their `effective_from`; rule files added,
    /// changed or removed apply from then on) instead of reading them once at start.
    pub follow: bool,
    /// Already verified models with their `effective_from` (tests, embedding).
    pub verified_models: Vec<(Time, Model)>,
    /// Rule files.
    pub rules: Vec<RulesSource>,
    /// A JSON-lines file of marks (followed while the job runs with `follow`).
    pub marks: Option<PathBuf>,
}

/// An initial model: artifact bytes and, when known, the digest they must have.
#[derive(Clone, Debug)]
pub enum ModelSource {
    /// A file, with an optional expected sha256.
    File(PathBuf, Option<String>),
    /// Bytes (the shipped default model).
    Bytes(Vec<u8>),
}

/// Rules from a file or from memory.
#[derive(Clone, Debug)]
pub enum RulesSource {
    /// A rules file.
    File(PathBuf),
    /// Rule updates (the shipped defaults, tests).
    Specs(Vec<RuleSpec>),
    /// A directory of Sigma rules, with the placeholder values `|expand` uses; a rule that does
    /// not parse is reported with its file and line and skipped.
    SigmaDir(PathBuf, crate::sigma::Placeholders),
}

impl ControlSpec {
    /// What the job follows while it runs, when it follows anything.
    pub fn followed(&self) -> Option<crate::control_feed::Followed> {
        let rules_dir = self.rules.iter().find_map(|r| match r {
            RulesSource::SigmaDir(dir, placeholders) => Some((dir.clone(), placeholders.clone())),
            _ => None,
        });
        let followed = crate::control_feed::Followed { model_updates: self.model_updates.clone(), marks: self.marks.clone(), rules_dir };
        let any = followed.model_updates.is_some() || followed.marks.is_some() || followed.rules_dir.is_some();
        (self.follow && any).then_some(followed)
    }

    /// Loads every model and rule, and returns them as a [`ControlLog`].
    ///
    /// The initial model must load (a bad start is a clear error); a model update that cannot be
    /// fetched or verified, and a rule that does not validate, are reported and skipped, so what was
    /// in force stays in force.
    pub fn load(&self) -> Result<ControlLog> {
        let mut models: Vec<(Time, Model)> = Vec::new();
        if let Some(source) = &self.model {
            let model = match source {
                ModelSource::File(path, sha) => {
                    let bytes = std::fs::read(path).with_context(|| format!("reading model {}", path.display()))?;
                    Model::from_bytes(&bytes, sha.as_deref()).with_context(|| format!("model {}", path.display()))?
                }
                ModelSource::Bytes(bytes) => Model::from_bytes(bytes, None).context("default model")?,
            };
            tracing::info!(version = %model.version, sha256 = %model.sha256, "model loaded, in force from time 0");
            models.push((0, model));
        }
        if let Some(path) = self.model_updates.as_ref().filter(|_| !self.follow) {
            let base = path.parent().map(Path::to_path_buf);
            for update in model::read_updates(path)? {
                match model::load_update(&update, base.as_deref()) {
                    Ok(model) => {
                        tracing::info!(version = %update.version, effective_from = update.effective_from, "model update verified");
                        models.push((update.effective_from, model));
                    }
                    Err(error) => tracing::error!(
                        version = %update.version, uri = %update.uri,
                        "model update rejected, the previous model stays in force: {error:#}"
                    ),
                }
            }
        }
        models.extend(self.verified_models.iter().cloned());
        let mut log = ControlLog { models, specs: Vec::new(), marks: Vec::new() };
        if let Some(path) = self.marks.as_ref().filter(|_| !self.follow) {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading marks {}", path.display()))?;
            let mut updates = Vec::new();
            for (number, line) in crate::source::data_lines(&text) {
                match crate::marks::parse_update(line) {
                    Ok(update) => updates.push(update),
                    Err(error) => tracing::error!(position = %format!("{}:{number}", path.display()), "mark rejected, skipped: {error:#}"),
                }
            }
            log.add_marks(updates);
        }
        for source in &self.rules {
            match source {
                RulesSource::File(path) => log.add_rules(rules::read_rules(path)?),
                RulesSource::Specs(specs) => log.add_rules(specs.iter().cloned()),
                RulesSource::SigmaDir(..) if self.follow => Vec::new(),
                RulesSource::SigmaDir(dir, placeholders) => {
                    let (loaded, refused) = crate::sigma::read_dir(dir, placeholders)?;
                    for why in &refused {
                        tracing::error!("Sigma rule refused, skipped: {why}");
                    }
                    tracing::info!(loaded = loaded.len(), refused = refused.len(), dir = %dir.display(), "Sigma rules");
                    log.add_rules(loaded.into_iter().map(RuleSpec::from_sigma))
                }
            };
        }
        Ok(log)
    }
}

/// Every model and rule update of a job so far; turns a new update into the control collection's
/// changes (updates read from Kafka while the job runs).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ControlLog {
    models: Vec<(Time, Model)>,
    specs: Vec<RuleSpec>,
    marks: Vec<MarkUpdate>,
}

impl ControlLog {
    /// The control collection's updates for everything logged.
    pub fn updates(&self) -> Vec<ControlUpdate> {
        timeline(self.models.clone(), self.specs.clone(), self.marks.clone())
    }

    /// Logs a verified model in force from `from`; returns the collection's changes.
    pub fn add_model(&mut self, from: Time, model: Model) -> Vec<ControlUpdate> {
        let before = self.updates();
        self.models.push((from, model));
        changes(before, self.updates())
    }

    /// Logs mark updates; a mark that does not validate is reported and skipped. Returns the
    /// collection's changes.
    pub fn add_marks(&mut self, updates: impl IntoIterator<Item = MarkUpdate>) -> Vec<ControlUpdate> {
        let before = self.updates();
        for update in updates {
            match update.mark() {
                Ok(_) => self.marks.push(update),
                Err(error) => tracing::error!(mark = %update.id, "mark rejected, skipped: {error:#}"),
            }
        }
        changes(before, self.updates())
    }

    /// Logs rule updates; a rule that does not validate is reported and skipped. Returns the
    /// collection's changes.
    pub fn add_rules(&mut self, specs: impl IntoIterator<Item = RuleSpec>) -> Vec<ControlUpdate> {
        let before = self.updates();
        for spec in specs {
            if let (false, Err(error)) = (spec.remove, Rule::from_spec(&spec)) {
                tracing::error!(rule = %spec.id, "rule rejected, skipped: {error:#}");
                continue;
            }
            self.specs.push(spec);
        }
        changes(before, self.updates())
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

/// Turns models, rule updates and mark updates into updates of the control collection.
pub fn timeline(mut models: Vec<(Time, Model)>, mut specs: Vec<RuleSpec>, mut marks: Vec<MarkUpdate>) -> Vec<ControlUpdate> {
    let mut updates = Vec::new();
    // Models: the one with the greatest `effective_from <= t` applies; for equal times the later wins.
    models.sort_by_key(|(from, _)| *from);
    let mut current: Option<Model> = None;
    for (from, model) in models {
        if let Some(old) = current.take() {
            updates.push((Control::Model(old), from, -1));
        }
        updates.push((Control::Model(model.clone()), from, 1));
        current = Some(model);
    }
    // Rules: a later update with the same id replaces or removes the rule.
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
    // Marks: likewise by id.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn model(version: &str) -> Model {
        let artifact = format!(r#"{{"version":"{version}","features":["deletes_10m"],"weights":[1.0],"bias":-1.0,"threshold":0.5}}"#);
        Model::from_bytes(artifact.as_bytes(), None).unwrap()
    }

    /// The collection at time `t`, from updates.
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

    /// A Sigma rule read once at start (jobs with Kafka) applies from its own `effective_from`, as
    /// a followed directory's does.
    #[test]
    fn a_static_rules_dir_keeps_each_rules_effective_from() {
        let dir = tempfile::tempdir().unwrap();
        let rule = |id: &str, from: &str| format!("title: {id}\nid: {id}\n{from}logsource: {{product: aws}}\ndetection:\n  s: {{a: 1}}\n  condition: s\n");
        std::fs::write(dir.path().join("r.yml"), rule("late", "effective_from: 500\n") + "---\n" + &rule("always", "")).unwrap();
        let spec = ControlSpec { rules: vec![RulesSource::SigmaDir(dir.path().to_path_buf(), Default::default())], ..Default::default() };
        let mut from: Vec<(String, Time)> = spec
            .load()
            .unwrap()
            .updates()
            .into_iter()
            .filter_map(|(c, t, _)| match c {
                Control::Rule(r) => Some((r.id, t)),
                _ => None,
            })
            .collect();
        from.sort();
        assert_eq!(from, [("always".to_string(), 0), ("late".to_string(), 500)]);
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
        applied.extend(log.add_rules(crate::rules::parse_rules(rules).unwrap()));
        // A rule that does not validate is skipped.
        assert!(log.add_rules(crate::rules::parse_rules(r#"[{"id":"bad"}]"#).unwrap()).is_empty());
        for t in [0, 49, 50, 69, 70, 89, 90, 99, 100, 1000] {
            assert_eq!(at(&applied, t), at(&log.updates(), t), "at {t}");
        }
        let version = |t| match &at(&applied, t)[0] {
            Control::Model(m) => m.version.clone(),
            Control::Rule(_) | Control::Mark(_) | Control::Unblock(_) => unreachable!(),
        };
        assert_eq!([version(0), version(50), version(100)], ["v1", "v3", "v2"]);
        assert_eq!(at(&applied, 70).len(), 2);
        assert_eq!(at(&applied, 90).len(), 1);
    }
}
