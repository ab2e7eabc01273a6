//! `threatflow train`, `threatflow evaluate` and `threatflow model publish`: models from history to a
//! running engine.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::control::send_control;
use super::options::{DataArgs, KafkaArgs};
use super::options::parse_time;

/// `threatflow model ...`.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Verify an artifact and send its update `{version, uri, sha256, effective_from}` to a running
    /// engine: to the models topic (`--kafka`) or appended to the model-updates file it follows
    /// (`--to FILE`).
    Publish(PublishArgs),
}

/// `threatflow model publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Where the artifact is: a path, `file://...` or `s3://BUCKET/KEY` (the engine fetches it).
    #[arg(long)]
    pub uri: String,
    /// The version; must be the artifact's.
    #[arg(long)]
    pub version: String,
    /// Event time the model applies from: ms since the epoch, or RFC 3339.
    #[arg(long, value_parser = parse_time)]
    pub effective_from: crate::event::Time,
    /// The artifact's expected sha256 (default: the digest of what is at `--uri` now).
    #[arg(long)]
    pub sha256: Option<String>,
    /// Append the update to this model-updates file (what `--model-updates FILE` follows).
    #[arg(long, conflicts_with = "kafka")]
    pub to: Option<PathBuf>,
    /// The models topic's name (with `--kafka`).
    #[arg(long, default_value = "models")]
    pub topic: String,
    /// Kafka connection (the models topic).
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// `threatflow train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The events and labels to learn from.
    #[command(flatten)]
    pub data: DataArgs,
    /// Where to write the artifact: a path, `file://...` or `s3://BUCKET/KEY`; its sha256 goes
    /// beside it (`URI.sha256`).
    #[arg(long)]
    pub out: String,
    /// The model's version name.
    #[arg(long)]
    pub version: String,
    /// L2 penalty on the standardised weights.
    #[arg(long, default_value_t = crate::training::fit::FitConfig::default().l2)]
    pub l2: f64,
    /// Weigh a malicious event as this many benign ones (default: the best of 1, √r and r by
    /// average precision, r = benign/malicious).
    #[arg(long, conflicts_with = "balanced")]
    pub positive_weight: Option<f64>,
    /// Weigh the classes to contribute equally (r).
    #[arg(long)]
    pub balanced: bool,
    /// The share of events, the latest by time, held out to choose the threshold and validate.
    #[arg(long, default_value_t = 0.2)]
    pub validation_fraction: f64,
    /// Choose the threshold flagging at most this many events per 1,000 on the held-out events.
    #[arg(long, default_value_t = 1.0)]
    pub alert_budget: f64,
    /// Choose the lowest threshold reaching this precision on the held-out events instead.
    #[arg(long)]
    pub target_precision: Option<f64>,
    /// Also write every event's features as JSON lines `{event_id, ts, features}`.
    #[arg(long)]
    pub features_out: Option<PathBuf>,
}

/// `threatflow evaluate`.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// The labelled events.
    #[command(flatten)]
    pub data: DataArgs,
    /// The model: a path, `file://...` or `s3://BUCKET/KEY` (default: the shipped model).
    #[arg(long)]
    pub model: Option<String>,
    /// The model's expected sha256.
    #[arg(long)]
    pub model_sha256: Option<String>,
    /// Write `pr_curve.svg` and `score_histogram.svg` here.
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Also report the recall at this many alerts per 1,000 events (to compare models at one load).
    #[arg(long)]
    pub alert_budget: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn train(args: TrainArgs) -> Result<()> {
    use crate::training::{ThresholdGoal, TrainSpec};
    let (data, labels) = args.data.extract(args.features_out.is_some())?;
    if let Some(path) = &args.features_out {
        crate::training::dataset::write_features(path, &data)?;
    }
    let mut spec = TrainSpec::new(&args.version);
    spec.fit.l2 = args.l2;
    spec.class_weighting = match (args.positive_weight, args.balanced) {
        (Some(w), _) => crate::training::ClassWeighting::Positive(w),
        (None, true) => crate::training::ClassWeighting::Balanced,
        (None, false) => crate::training::ClassWeighting::Tuned,
    };
    spec.validation_fraction = args.validation_fraction;
    spec.threshold = match args.target_precision {
        Some(p) => ThresholdGoal::Precision(p),
        None => ThresholdGoal::AlertsPer1000(args.alert_budget),
    };
    spec.command = Some(redact_secrets(std::env::args()).join(" "));
    let trained = crate::training::train(&data, &labels, &spec)?;
    crate::location::store(&args.out, &trained.bytes)?;
    let name = args.out.rsplit('/').next().unwrap_or(&args.out);
    crate::location::store(&format!("{}.sha256", args.out), format!("{}  {name}\n", trained.sha256).as_bytes())?;
    let (t, v) = (&trained.train, &trained.validation);
    println!("model {} written to {} (sha256 {})", args.version, args.out, trained.sha256);
    println!("threshold {:.6}; validation from ts {}", trained.artifact.threshold, trained.split_ts);
    println!("{:<11} {:>10} {:>9} {:>8} {:>10} {:>8} {:>10}", "set", "events", "malicious", "PR-AUC", "precision", "recall", "alerts/1k");
    for (name, m) in [("train", t), ("validation", v)] {
        println!(
            "{name:<11} {:>10} {:>9} {:>8.3} {:>10.3} {:>8.3} {:>10.2}",
            m.events, m.malicious, m.pr_auc, m.precision, m.recall, m.alerts_per_1000
        );
    }
    println!(
        "publish: threatflow model publish --uri {} --version {} --sha256 {} --effective-from TIME (--to FILE | --kafka BROKERS)",
        args.out, args.version, trained.sha256
    );
    Ok(())
}

pub(super) fn evaluate(args: EvaluateArgs) -> Result<()> {
    let model = match &args.model {
        Some(uri) => {
            let bytes = crate::location::fetch(uri, None)?;
            crate::detect::model::Model::from_bytes(&bytes, args.model_sha256.as_deref()).with_context(|| format!("model {uri}"))?
        }
        None => crate::detect::model::Model::from_bytes(crate::detect::model::DEFAULT_MODEL, None).context("the shipped model")?,
    };
    let (data, labels) = args.data.extract(false)?;
    let evaluation = crate::training::evaluate::evaluate(&data, &labels, &model);
    let at_budget = args.alert_budget.map(|b| evaluation.recall_at_budget(b).map(|r| (b, r))).transpose()?;
    let plots = args.plots.as_deref().map(|dir| evaluation.write_plots(dir)).transpose()?;
    if args.json {
        let mut value = serde_json::to_value(&evaluation)?;
        if let Some((budget, recall)) = at_budget {
            value["recall_at_budget"] = serde_json::json!({"alerts_per_1000": budget, "recall": recall});
        }
        println!("{value}");
    } else {
        print!("{}", evaluation.table());
        if let Some((budget, recall)) = at_budget {
            println!("recall at {budget} alerts per 1,000 events: {recall:.3}");
        }
        for path in plots.unwrap_or_default() {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

pub(super) fn publish(args: PublishArgs) -> Result<()> {
    // The engine verifies again when it fetches; checking here catches a wrong location, digest
    // or version before anything is sent.
    let bytes = crate::location::fetch(&args.uri, None)?;
    let model = crate::detect::model::Model::from_bytes(&bytes, args.sha256.as_deref()).with_context(|| format!("model artifact {}", args.uri))?;
    anyhow::ensure!(model.version == args.version, "--version {} but the artifact is version {}", args.version, model.version);
    let update = crate::detect::model::ModelUpdate {
        version: args.version.clone(),
        database: None,
        uri: args.uri.clone(),
        sha256: model.sha256.clone(),
        effective_from: args.effective_from,
    };
    let line = serde_json::to_string(&update)?;
    send_control(&line, args.to.as_deref(), &args.kafka, &args.topic)?;
    eprintln!("published {line}");
    Ok(())
}

/// The arguments with the values of secret settings (`sasl.password=...`) replaced by `***`, for
/// an artifact's record of the command that made it.
fn redact_secrets(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .map(|arg| {
            let (flag, setting) = arg.strip_prefix("--kafka-option=").map_or(("", arg.as_str()), |s| ("--kafka-option=", s));
            match setting.split_once('=') {
                Some((key, _)) if crate::kafka::is_secret_option(key) => format!("{flag}{key}=***"),
                _ => arg,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_redacted_from_the_recorded_command() {
        let args = ["threatflow", "train", "--kafka-option", "sasl.password=hunter2", "--kafka-option=ssl.key.password=x", "--kafka-option", "sasl.username=ann"];
        let redacted = super::redact_secrets(args.map(String::from)).join(" ");
        assert_eq!(redacted, "threatflow train --kafka-option sasl.password=*** --kafka-option=ssl.key.password=*** --kafka-option sasl.username=ann");
    }
}
