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
use crate::model::{self, Model};
use crate::rules::{self, Rule, RuleSpec};

/// An element of the control collection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Control {
    /// The model in force.
    Model(Model),
    /// A rule in force.
    Rule(Rule),
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
    /// Already verified models with their `effective_from` (tests, embedding).
    pub verified_models: Vec<(Time, Model)>,
    /// Rule files.
    pub rules: Vec<RulesSource>,
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
}

impl ControlSpec {
    /// Loads every model and rule, and returns the control collection's updates.
    ///
    /// The initial model must load (a bad start is a clear error); a model update that cannot be
    /// fetched or verified, and a rule that does not validate, are reported and skipped, so what was
    /// in force stays in force.
    pub fn load(&self) -> Result<Vec<ControlUpdate>> {
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
        if let Some(path) = &self.model_updates {
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
        let mut specs = Vec::new();
        for source in &self.rules {
            match source {
                RulesSource::File(path) => specs.extend(rules::read_rules(path)?),
                RulesSource::Specs(s) => specs.extend(s.iter().cloned()),
            }
        }
        Ok(timeline(models, specs))
    }
}

/// Turns models and rule updates into updates of the control collection.
pub fn timeline(mut models: Vec<(Time, Model)>, mut specs: Vec<RuleSpec>) -> Vec<ControlUpdate> {
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
    updates
}
