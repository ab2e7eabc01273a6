//! The ML approach offline: features from history (computed by the serving dataflow), a fitted
//! logistic regression, a threshold for an alert budget, and the model artifact the engine serves.
//!
//! ```text
//! events ──► dataset::extract (source + feature windows + as-of lookup, as served) ──► examples
//! labels ──────────────────────────────────────────────────────────────────────────────┘
//!     ──► time split (train | validation) ──► fit::fit (standardised, L2, class-weighted)
//!     ──► threshold on validation (alert budget or precision) ──► ModelArtifact + sha256
//! ```
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! use threatflow::ingest::generator::GeneratorConfig;
//! use threatflow::job::SourceSpec;
//! use threatflow::training::{dataset, train, TrainSpec};
//!
//! let generator = GeneratorConfig { users: 300, events: 60_000, seed: 7, ..GeneratorConfig::default() };
//! let data = dataset::extract(timely::Config::process(2), dataset::ExtractSpec::new(SourceSpec::Generator(generator)))?;
//! let labels = data.ground_truth.clone();
//! let trained = train(&data, &labels, &TrainSpec::new("doc-1"))?;
//! assert_eq!(trained.artifact.features.len(), 10);
//! // The artifact loads as the engine loads it.
//! let model = threatflow::detect::model::Model::from_bytes(&trained.bytes, Some(&trained.sha256))?;
//! assert_eq!(model.version, "doc-1");
//! # Ok(()) }
//! ```

pub mod dataset;
pub mod evaluate;
pub mod fit;
pub mod metrics;

use anyhow::{bail, ensure, Context, Result};
use ndarray::Array1;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::event::Time;
use crate::state::features::FeatureName;
use crate::detect::model::{Model, ModelArtifact};
use dataset::{design_matrix, Extracted, Labels};
use fit::{FitConfig, Fitted};
use metrics::{average_precision, threshold_for_budget, threshold_for_precision, Confusion};

/// How the threshold is chosen, on the validation events.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdGoal {
    /// The lowest threshold flagging at most this many events per 1,000.
    AlertsPer1000(f64),
    /// The lowest threshold whose precision reaches this.
    Precision(f64),
}

/// How the positive (malicious) class is weighted against the negative one in the fit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeighting {
    /// Fit with each of 1, √r and r (r = benign / malicious training events, i.e. balanced) and
    /// keep the fit with the best average precision over all events.
    Tuned,
    /// Balanced: each class contributes half of the loss.
    Balanced,
    /// A malicious event weighs this many benign ones.
    Positive(f64),
}

/// What to train.
#[derive(Clone, Debug)]
pub struct TrainSpec {
    /// The model's version name.
    pub version: String,
    /// Features, in the artifact's order.
    pub features: Vec<FeatureName>,
    /// The fit's settings (its class weight is set by `class_weighting`).
    pub fit: FitConfig,
    /// How the classes are weighted.
    pub class_weighting: ClassWeighting,
    /// The share of events, the latest by time, held out for validation and the threshold.
    pub validation_fraction: f64,
    /// How the threshold is chosen.
    pub threshold: ThresholdGoal,
    /// Recorded in the artifact (the command that made it).
    pub command: Option<String>,
}

impl TrainSpec {
    /// Every standard feature, the default fit, the latest 20 % for validation, at most one
    /// alert per 1,000 events.
    pub fn new(version: &str) -> Self {
        TrainSpec {
            version: version.to_string(),
            features: FeatureName::ALL.to_vec(),
            fit: FitConfig::default(),
            class_weighting: ClassWeighting::Tuned,
            validation_fraction: 0.2,
            threshold: ThresholdGoal::AlertsPer1000(1.0),
            command: None,
        }
    }
}

/// Quality on one set of events at the chosen threshold.
#[derive(Clone, Debug, Serialize)]
pub struct SetMetrics {
    /// Events.
    pub events: u64,
    /// Malicious events.
    pub malicious: u64,
    /// Average precision of the scores (PR-AUC).
    pub pr_auc: f64,
    /// Precision at the threshold.
    pub precision: f64,
    /// Recall at the threshold.
    pub recall: f64,
    /// Events flagged per 1,000 at the threshold.
    pub alerts_per_1000: f64,
}

impl SetMetrics {
    fn of(scores: &[f64], labels: &[bool], threshold: f64) -> SetMetrics {
        let at = Confusion::at(scores, labels, threshold);
        SetMetrics {
            events: scores.len() as u64,
            malicious: labels.iter().filter(|l| **l).count() as u64,
            pr_auc: average_precision(scores, labels),
            precision: at.precision(),
            recall: at.recall(),
            alerts_per_1000: at.flagged_per_1000(),
        }
    }
}

/// What training produced.
#[derive(Clone, Debug)]
pub struct Trained {
    /// The artifact.
    pub artifact: ModelArtifact,
    /// Its bytes, as written.
    pub bytes: Vec<u8>,
    /// Hex sha256 of `bytes`.
    pub sha256: String,
    /// The fitted parameters (also in the artifact).
    pub fitted: Fitted,
    /// Quality on the training events.
    pub train: SetMetrics,
    /// Quality on the validation events (the threshold was chosen there).
    pub validation: SetMetrics,
    /// Events at or after this time were held out.
    pub split_ts: Time,
}

/// Fits a model on `data` with `labels` (events without a label are benign) and makes its
/// artifact.
pub fn train(data: &Extracted, labels: &Labels, spec: &TrainSpec) -> Result<Trained> {
    ensure!(!spec.features.is_empty(), "no features to train on");
    ensure!((0.0..1.0).contains(&spec.validation_fraction), "the validation fraction must be in [0, 1)");
    let examples = &data.examples;
    ensure!(examples.len() >= 2, "{} events: too few to train on", examples.len());
    let truth: Vec<bool> = examples.iter().map(|e| labels.get(&e.id).is_some_and(|t| t.malicious)).collect();
    // The latest events by time are held out; events of one millisecond stay on one side.
    let held_out = ((examples.len() as f64) * spec.validation_fraction).round() as usize;
    let split_ts = if held_out == 0 { Time::MAX } else { examples[examples.len() - held_out].ts };
    let split = examples.partition_point(|e| e.ts < split_ts);
    ensure!(split > 0, "every event is at or after the split time {split_ts}: nothing left to train on");
    let x = design_matrix(&examples[..split], &spec.features);
    let y: Array1<f64> = truth[..split].iter().map(|t| if *t { 1.0 } else { 0.0 }).collect();
    let positives = truth[..split].iter().filter(|t| **t).count();
    if positives == 0 {
        bail!("no malicious event among the {split} training events: check the labels (they join on event_id)");
    }
    tracing::info!(
        train = split,
        train_malicious = positives,
        validation = examples.len() - split,
        split_ts,
        "fitting a logistic regression"
    );
    let ratio = (split - positives) as f64 / positives as f64;
    let candidates = match spec.class_weighting {
        ClassWeighting::Tuned => vec![Some(1.0), Some(ratio.sqrt()), None],
        ClassWeighting::Balanced => vec![None],
        ClassWeighting::Positive(w) => vec![Some(w)],
    };
    // Candidates are compared on every event: the held-out part alone holds too few attacks to
    // rank them (a few instances), and ten parameters fitted on the rest barely overfit it.
    let mut best: Option<(f64, Fitted, Vec<f64>)> = None;
    let mut tried = Vec::new();
    for positive_weight in candidates {
        let config = FitConfig { positive_weight, ..spec.fit.clone() };
        let fitted = fit::fit(x.view(), y.view(), &config).context("fitting the model")?;
        // Scored exactly as the engine scores (same function, same order of sums), so that a
        // threshold cuts the served scores where it cuts these.
        let scorer = Model::from_artifact(artifact_of(spec, &fitted, 0.5), String::new())?;
        let scores: Vec<f64> = examples.iter().map(|e| scorer.score(&e.features)).collect();
        let quality = average_precision(&scores, &truth);
        tracing::info!(?positive_weight, iterations = fitted.iterations, converged = fitted.converged, average_precision = quality, "fitted");
        tried.push(serde_json::json!({"positive_weight": positive_weight, "average_precision": quality, "converged": fitted.converged}));
        if best.as_ref().is_none_or(|(q, ..)| quality > *q || q.is_nan()) {
            best = Some((quality, fitted, scores));
        }
    }
    drop(x);
    let Some((_, fitted, scores)) = best else { bail!("no class weighting to fit with") };
    let (train_scores, validation_scores) = scores.split_at(split);
    let (train_truth, validation_truth) = truth.split_at(split);
    // The threshold is chosen on the held-out events (on the training events when none are held out).
    let (choose_scores, choose_truth) =
        if validation_scores.is_empty() { (train_scores, train_truth) } else { (validation_scores, validation_truth) };
    let threshold = match spec.threshold {
        ThresholdGoal::AlertsPer1000(budget) => threshold_for_budget(choose_scores, budget)?,
        ThresholdGoal::Precision(target) => threshold_for_precision(choose_scores, choose_truth, target)
            .with_context(|| format!("no threshold reaches precision {target} on the validation events"))?,
    };
    // Stored thresholds must be in [0, 1] (a budget above every score gives just above the maximum).
    let threshold = threshold.clamp(0.0, 1.0);
    let train_metrics = SetMetrics::of(train_scores, train_truth, threshold);
    let validation_metrics = SetMetrics::of(validation_scores, validation_truth, threshold);
    let mut artifact = artifact_of(spec, &fitted, threshold);
    artifact.training = Some(serde_json::json!({
        "command": spec.command,
        "threatflow": env!("CARGO_PKG_VERSION"),
        "events": examples.len(),
        "rejected": data.rejected,
        "from_ts": examples.first().map(|e| e.ts),
        "to_ts": examples.last().map(|e| e.ts),
        "validation_from_ts": (split < examples.len()).then_some(split_ts),
        "inputs": "log1p(feature)",
        "feature_means": fitted.means,
        "feature_stds": fitted.stds,
        "fit": {"config": spec.fit, "class_weighting": spec.class_weighting, "tried": tried, "iterations": fitted.iterations, "converged": fitted.converged, "loss": fitted.loss},
        "threshold_goal": spec.threshold,
        "train": train_metrics,
        "validation": validation_metrics,
    }));
    let mut bytes = serde_json::to_vec_pretty(&artifact).context("encoding the model artifact")?;
    bytes.push(b'\n');
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok(Trained { artifact, bytes, sha256, fitted, train: train_metrics, validation: validation_metrics, split_ts })
}

/// The artifact of a fit (without training metadata).
fn artifact_of(spec: &TrainSpec, fitted: &Fitted, threshold: f64) -> ModelArtifact {
    ModelArtifact {
        version: spec.version.clone(),
        features: spec.features.iter().map(|f| f.as_str().to_string()).collect(),
        weights: fitted.weights.clone(),
        bias: fitted.bias,
        threshold,
        note: Some(
            "Trained by `threatflow train`: L2-regularised, class-weighted logistic regression on log1p(features), \
             standardisation folded into weights and bias; see `training`."
                .into(),
        ),
        training: None,
    }
}
