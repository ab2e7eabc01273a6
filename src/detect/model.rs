//! Model artifacts and model updates: loading by location, sha256 verification, scoring.
//!
//! A model is passed by location, not by value: an update names `{version, uri, sha256,
//! effective_from}`; the engine fetches the artifact, verifies its digest and its feature names,
//! and only then lets it into the control collection. A bad update is reported and skipped, so the
//! previous model stays in force.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use ordered_float::OrderedFloat;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::Time;
use crate::state::features::{FeatureName, Features};

/// The model artifact as stored (format of docs/semantics.md#model, plus how it was made; other keys are ignored).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ModelArtifact {
    /// Version name.
    pub version: String,
    /// Feature names, in the order of `weights`.
    pub features: Vec<String>,
    /// One weight per feature, applied to `log1p(feature)`.
    pub weights: Vec<f64>,
    /// Bias term.
    pub bias: f64,
    /// Decision threshold on the sigmoid score.
    pub threshold: f64,
    /// A line for people (hand-set models say so here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// How `threatflow train` made it: data, split, fit, metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
}

/// A verified model as it travels in the control collection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Model {
    /// Version name (from the update, which must agree with the artifact).
    pub version: String,
    /// Hex sha256 of the artifact.
    pub sha256: String,
    /// Features, in the order of `weights`.
    pub features: Vec<FeatureName>,
    /// Weights on `log1p(feature)`.
    pub weights: Vec<OrderedFloat<f64>>,
    /// Bias term.
    pub bias: OrderedFloat<f64>,
    /// Decision threshold.
    pub threshold: OrderedFloat<f64>,
}

impl Model {
    /// Validates an artifact's contents.
    pub fn from_artifact(artifact: ModelArtifact, sha256: String) -> Result<Model> {
        ensure!(
            artifact.features.len() == artifact.weights.len(),
            "model {}: {} features but {} weights",
            artifact.version,
            artifact.features.len(),
            artifact.weights.len()
        );
        let features = artifact
            .features
            .iter()
            .map(|name| FeatureName::parse(name).with_context(|| format!("model {}: unknown feature `{name}`", artifact.version)))
            .collect::<Result<Vec<_>>>()?;
        let finite = artifact.weights.iter().chain([&artifact.bias, &artifact.threshold]).all(|x| x.is_finite());
        ensure!(finite, "model {}: weights, bias and threshold must be finite numbers", artifact.version);
        ensure!(
            (0.0..=1.0).contains(&artifact.threshold),
            "model {}: threshold {} is not in [0, 1]",
            artifact.version,
            artifact.threshold
        );
        Ok(Model {
            version: artifact.version,
            sha256,
            features,
            weights: artifact.weights.into_iter().map(OrderedFloat).collect(),
            bias: OrderedFloat(artifact.bias),
            threshold: OrderedFloat(artifact.threshold),
        })
    }

    /// Parses and validates artifact bytes, checking the expected digest when one is given.
    pub fn from_bytes(bytes: &[u8], expected_sha256: Option<&str>) -> Result<Model> {
        let digest = hex::encode(Sha256::digest(bytes));
        if let Some(expected) = expected_sha256 {
            ensure!(
                digest.eq_ignore_ascii_case(expected),
                "sha256 mismatch: the artifact's digest is not the {expected} the update names"
            );
        }
        let artifact: ModelArtifact = serde_json::from_slice(bytes).context("model artifact is not valid JSON")?;
        Model::from_artifact(artifact, digest)
    }

    /// The model score `sigmoid(w · log1p(x) + b)`, summed in feature order.
    pub fn score(&self, features: &Features) -> f64 {
        let mut z = self.bias.0;
        for (name, w) in self.features.iter().zip(&self.weights) {
            z += w.0 * (features.get(*name) as f64).ln_1p();
        }
        1.0 / (1.0 + (-z).exp())
    }

    /// Each feature's share of the score's logit, `w · log1p(x)`, largest first (zeros left out):
    /// what made the model decide.
    pub fn contributions(&self, features: &Features) -> Vec<(FeatureName, f64)> {
        let mut parts: Vec<(FeatureName, f64)> = self
            .features
            .iter()
            .zip(&self.weights)
            .map(|(name, w)| (*name, w.0 * (features.get(*name) as f64).ln_1p()))
            .filter(|(_, c)| *c != 0.0)
            .collect();
        parts.sort_by(|a, b| b.1.total_cmp(&a.1));
        parts
    }

    /// Whether a score makes the event a model threat.
    pub fn is_threat(&self, score: f64) -> bool {
        score >= self.threshold.0
    }
}

/// A model update: where the artifact is, what it must hash to, and from when it applies.
///
/// The same line with `"database": "geoip"` or `"asn"` (and no version) replaces an enrichment
/// database instead (see [`crate::enrich`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelUpdate {
    /// Version name (none for a database).
    #[serde(default)]
    pub version: String,
    /// The kind of enrichment database this update replaces, when it is one and not a model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<crate::enrich::DatabaseKind>,
    /// Location: a path, a `file://` URI or `s3://BUCKET/KEY` (see [`crate::location`]). Relative
    /// paths are relative to the updates file.
    pub uri: String,
    /// Hex sha256 of the artifact.
    pub sha256: String,
    /// Event time from which the model applies.
    pub effective_from: Time,
}

/// Fetches and verifies the artifact an update names (relative paths against `base`).
pub fn load_update(update: &ModelUpdate, base: Option<&Path>) -> Result<Model> {
    let bytes = crate::location::fetch(&update.uri, base).context("fetching the model artifact")?;
    let model = Model::from_bytes(&bytes, Some(&update.sha256)).with_context(|| format!("model artifact {}", update.uri))?;
    ensure!(
        model.version == update.version,
        "the update names version {} but the artifact is version {}",
        update.version,
        model.version
    );
    Ok(model)
}

/// Reads a JSON-lines file of model updates (blank lines and `#` comments are skipped).
pub fn read_updates(path: &Path) -> Result<Vec<ModelUpdate>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading model updates {}", path.display()))?;
    let mut updates = Vec::new();
    for (number, line) in crate::ingest::lines::data_lines(&text) {
        let update = serde_json::from_str(line).with_context(|| format!("{}:{number}: bad model update", path.display()))?;
        updates.push(update);
    }
    Ok(updates)
}

/// The model shipped with threatflow (made by `threatflow train`; the command is in `models/README.md`).
pub const DEFAULT_MODEL: &[u8] = include_bytes!("../../models/default.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_model_loads_and_scores() {
        let model = Model::from_bytes(DEFAULT_MODEL, None).unwrap();
        let quiet = Features { logins_1h: 1, distinct_resources_1h: 2, ..Features::default() };
        assert!(!model.is_threat(model.score(&quiet)));
        let brute = Features { failed_logins_5m: 30, logins_1h: 1, new_country: 1, countries_24h: 2, ..Features::default() };
        assert!(model.is_threat(model.score(&brute)));
    }

    #[test]
    fn rejects_bad_artifacts() {
        let ok = br#"{"version":"v1","features":["deletes_10m"],"weights":[1.0],"bias":-1.0,"threshold":0.5}"#;
        assert!(Model::from_bytes(ok, None).is_ok());
        let digest = hex::encode(Sha256::digest(ok));
        assert!(Model::from_bytes(ok, Some(&digest)).is_ok());
        let err = Model::from_bytes(ok, Some(&"0".repeat(64))).unwrap_err().to_string();
        assert!(err.contains("sha256 mismatch"), "{err}");
        let unknown = br#"{"version":"v1","features":["shoe_size"],"weights":[1.0],"bias":-1.0,"threshold":0.5}"#;
        let err = format!("{:#}", Model::from_bytes(unknown, None).unwrap_err());
        assert!(err.contains("unknown feature `shoe_size`"), "{err}");
        let short = br#"{"version":"v1","features":["deletes_10m"],"weights":[],"bias":-1.0,"threshold":0.5}"#;
        assert!(Model::from_bytes(short, None).is_err());
        assert!(Model::from_bytes(b"{", None).is_err());
    }
}
