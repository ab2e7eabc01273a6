//! Where a job's control collection comes from: the initial model, model updates, rules files,
//! Sigma rule directories, marks and threat-intel indicators ([`ControlSpec`], [`intel`]), loaded
//! once at start, or followed while the job runs ([`feed`]). The collection itself is [`crate::detect::control`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::detect::control::ControlLog;
use crate::detect::model::{self, Model};
use crate::detect::rules::{self, RuleSpec};
use crate::event::Time;

pub mod feed;
pub mod intel;
pub mod signing;

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
    /// The enrichment databases in force from time 0 (`--geoip-db`, `--asn-db`): location and,
    /// when given, the sha256 they must have. A job enriches its events only when it starts with
    /// one; updates in `model_updates` (lines with `"database"`) then replace them.
    pub databases: Vec<(crate::enrich::DatabaseKind, String, Option<String>)>,
    /// Threat-intel indicator files or directories ([`intel`]; followed while the job runs with
    /// `follow`).
    pub intel: Vec<PathBuf>,
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
    SigmaDir(PathBuf, crate::detect::sigma::Placeholders),
}

impl ControlSpec {
    /// Whether the job's events are enriched (it starts with a database).
    pub fn enriches(&self) -> bool {
        !self.databases.is_empty()
    }

    /// What the job follows while it runs, when it follows anything.
    pub fn followed(&self) -> Option<feed::Followed> {
        let rules_dir = self.rules.iter().find_map(|r| match r {
            RulesSource::SigmaDir(dir, placeholders) => Some((dir.clone(), placeholders.clone())),
            _ => None,
        });
        let followed = feed::Followed { model_updates: self.model_updates.clone(), marks: self.marks.clone(), rules_dir, intel: self.intel.clone() };
        let any = followed.model_updates.is_some() || followed.marks.is_some() || followed.rules_dir.is_some() || !followed.intel.is_empty();
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
        let mut databases = Vec::new();
        for (kind, location, sha256) in &self.databases {
            let database = crate::enrich::Database::load(*kind, location, sha256.as_deref())?;
            tracing::info!(kind = kind.as_str(), %location, sha256 = %database.sha256, "database loaded, in force from time 0");
            databases.push((0, database));
        }
        if let Some(path) = self.model_updates.as_ref().filter(|_| !self.follow) {
            let base = path.parent().map(Path::to_path_buf);
            for update in model::read_updates(path)? {
                if let Some(kind) = update.database {
                    match feed::verified_database(&update, kind, base.as_deref()) {
                        Ok(database) => databases.push((update.effective_from, database)),
                        Err(error) => tracing::error!("{error:#}"),
                    }
                    continue;
                }
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
        let mut log = ControlLog::with_models(models);
        for (from, database) in databases {
            log.add_database(from, database);
        }
        if let Some(path) = self.marks.as_ref().filter(|_| !self.follow) {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading marks {}", path.display()))?;
            let mut updates = Vec::new();
            for (number, line) in crate::ingest::lines::data_lines(&text) {
                match crate::detect::marks::parse_update(line) {
                    Ok(update) => updates.push(update),
                    Err(error) => tracing::error!(position = %format!("{}:{number}", path.display()), "mark rejected, skipped: {error:#}"),
                }
            }
            log.add_marks(updates);
        }
        if !self.follow {
            for path in &self.intel {
                log.add_indicators(intel::read_indicators(path)?);
            }
        }
        for source in &self.rules {
            match source {
                RulesSource::File(path) => log.add_rules(rules::read_rules(path)?),
                RulesSource::Specs(specs) => log.add_rules(specs.iter().cloned()),
                RulesSource::SigmaDir(..) if self.follow => Vec::new(),
                RulesSource::SigmaDir(dir, placeholders) => {
                    let (loaded, refused) = crate::detect::sigma::read_dir(dir, placeholders)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::control::Control;

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
}
