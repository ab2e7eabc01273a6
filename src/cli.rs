//! The command line: `run`, `replay`, `train`, `evaluate`, `model publish`, `generate`, `produce`,
//! `consume`, `dataflows`, with timely's cluster options (`-w`, `-n`, `-p`, `-h`) merged into the
//! same parser.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::control::{ControlSpec, ModelSource, RulesSource};
use crate::engine::{run, JobReport, JobSpec};
use crate::generator::{GeneratorConfig, DEFAULT_START};
use crate::kafka::source::KafkaSource;
use crate::kafka::tools::ProduceInput;
use crate::kafka::KafkaConfig;
use crate::mapping::RecordFormat;
use crate::source::{Decoding, SourceSpec};

/// threatflow: real-time threat detection for cloud-application activity streams.
#[derive(Debug, Parser)]
#[command(name = "threatflow", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the embedded generator (or, with `--kafka`, the activity topic) through a dataflow and
    /// report throughput and detection quality.
    #[command(disable_help_flag = true)]
    Run(RunArgs),
    /// Run a dataflow over JSON-lines files of canonical events (backfill) and write decisions.
    #[command(disable_help_flag = true)]
    Replay(ReplayArgs),
    /// Train a model on history: features computed by the serving dataflow, a logistic regression
    /// fitted on them, a threshold for an alert budget; writes the artifact and its sha256.
    Train(TrainArgs),
    /// Measure a model on a labelled set (precision, recall, PR-AUC, alerts per 1,000 events, per
    /// scenario) and draw its PR curve and score histogram.
    Evaluate(EvaluateArgs),
    /// Model updates for a running engine.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Mark an event as a threat: later events with its fingerprint are decided as threats naming
    /// the mark (appended to the marks file an engine follows, or sent to the marks topic).
    Mark(MarkArgs),
    /// Unblock a user blocked by a decision: the user's blocks made before `--effective-from` no
    /// longer apply from then on (appended to the marks file an engine follows, or sent to the
    /// marks topic).
    Unblock(UnblockArgs),
    /// Write the embedded generator's events (and ground truth) as JSON lines.
    Generate(GenerateArgs),
    /// Send the embedded generator's events, or files' lines, to a Kafka topic at a fixed rate.
    Produce(ProduceArgs),
    /// Print or save the records of a Kafka topic.
    Consume(ConsumeArgs),
    /// List the dataflows `--dataflow` can select.
    Dataflows,
}

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

fn parse_time(text: &str) -> Result<crate::event::Time, String> {
    text.parse::<u64>().or_else(|_| crate::event::parse_rfc3339_ms(text))
}

/// `threatflow mark`.
#[derive(Debug, Args)]
pub struct MarkArgs {
    /// The event to mark.
    pub event_id: String,
    /// Files where the event is (JSON lines; see `--format`).
    #[arg(long, required_unless_present = "remove")]
    pub input: Vec<PathBuf>,
    /// Record format of the inputs: `canonical`, `auto` or a mapping's name.
    #[arg(long, default_value = "canonical")]
    pub format: String,
    /// The fingerprint's fields (canonical names or the record's own fields).
    #[arg(long, value_delimiter = ',', default_values_t = crate::marks::DEFAULT_FIELDS.map(String::from))]
    pub fields: Vec<String>,
    /// Event time from which the mark applies (ms or RFC 3339; default: just after the event).
    #[arg(long, value_parser = parse_time)]
    pub effective_from: Option<crate::event::Time>,
    /// Remove the event's mark from `--effective-from` on instead.
    #[arg(long, requires = "effective_from")]
    pub remove: bool,
    /// Append to this marks file (what `--marks FILE` follows).
    #[arg(long, conflicts_with = "kafka")]
    pub to: Option<PathBuf>,
    /// The marks topic's name (with `--kafka`).
    #[arg(long, default_value = "marks")]
    pub topic: String,
    /// Kafka connection (the marks topic).
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// `threatflow unblock`.
#[derive(Debug, Args)]
pub struct UnblockArgs {
    /// The user.
    pub user: String,
    /// Event time from which the user is unblocked (ms or RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub effective_from: crate::event::Time,
    /// Append to this marks file (what `--marks FILE` follows).
    #[arg(long, conflicts_with = "kafka")]
    pub to: Option<PathBuf>,
    /// The marks topic's name (with `--kafka`).
    #[arg(long, default_value = "marks")]
    pub topic: String,
    /// Kafka connection (the marks topic).
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// The events and labels `train` and `evaluate` read.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// JSON-lines files of canonical events, one partition each (default: the embedded generator,
    /// or the activity topic with `--kafka`).
    #[arg(long)]
    pub input: Vec<PathBuf>,
    /// Labels, JSON lines: `{event_id, label}` (1/0, true/false, "malicious"/"benign"; optional
    /// `scenario`), or the ground truth of `threatflow generate --labels`. Events without a label
    /// are benign. Default: the generator's ground truth.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// The generated stream (without `--input` or `--kafka`).
    #[command(flatten)]
    pub generator: GeneratorArgs,
    /// Kafka: read the activity topic up to the end offsets it has at start.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// A topic name for a role, `ROLE=NAME` (here: `activity=NAME`).
    #[arg(long = "topic", value_name = "ROLE=NAME", requires = "kafka")]
    pub topics: Vec<String>,
    /// Allowed lateness, as when serving.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub allowed_lateness: Duration,
    /// Record format, as when serving (`canonical`, `auto` or a mapping's name).
    #[arg(long, default_value = "canonical")]
    pub format: String,
    /// More mappings (`*.yaml`).
    #[arg(long)]
    pub mappings_dir: Option<PathBuf>,
    /// Worker threads.
    #[arg(short = 'w', long = "workers", default_value_t = 1)]
    pub workers: usize,
}

impl DataArgs {
    /// Every event's served features, and the labels.
    fn extract(&self, keep_ids: bool) -> Result<(crate::training::dataset::Extracted, crate::training::dataset::Labels)> {
        use crate::training::dataset::{extract, read_labels, ExtractSpec};
        let lateness = ms(self.allowed_lateness);
        let (source, expected) = if !self.input.is_empty() {
            (SourceSpec::Files(self.input.clone()), None)
        } else if let Some(kafka) = self.kafka.config()? {
            (SourceSpec::Kafka(KafkaSource::new(kafka.with_topics(&self.topics)?, true)), None)
        } else {
            let generator = GeneratorConfig { allowed_lateness: lateness, ..self.generator.config() };
            (SourceSpec::Generator(generator), Some(self.generator.events))
        };
        let generated = matches!(source, SourceSpec::Generator(_));
        let format = RecordFormat::parse(&self.format, self.mappings_dir.as_deref())?;
        let decoding = Decoding { format, ..Decoding::default() };
        let spec = ExtractSpec { allowed_lateness: lateness, keep_ids, progress: Some(expected), decoding, ..ExtractSpec::new(source) };
        let mut data = extract(timely::Config::process(self.workers.max(1)), spec)?;
        let labels = match &self.labels {
            Some(path) => read_labels(path)?,
            None if generated => std::mem::take(&mut data.ground_truth),
            None => anyhow::bail!("--labels FILE is needed: only the generator knows its ground truth"),
        };
        tracing::info!(
            events = data.examples.len(),
            rejected = data.rejected,
            labelled_malicious = labels.values().filter(|t| t.malicious).count(),
            seconds = data.elapsed.as_secs_f64(),
            "features computed"
        );
        Ok((data, labels))
    }
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

/// Timely's cluster options.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Worker threads per process.
    #[arg(short = 'w', long = "workers", alias = "threads", default_value_t = 1)]
    pub workers: usize,
    /// Number of processes in the cluster.
    #[arg(short = 'n', long = "processes", default_value_t = 1)]
    pub processes: usize,
    /// This process's index in the cluster.
    #[arg(short = 'p', long = "process", default_value_t = 0)]
    pub process: usize,
    /// File with one `host:port` line per process (default: localhost:2101, 2102, ...).
    #[arg(short = 'h', long = "hostfile")]
    pub hostfile: Option<PathBuf>,
    /// Timely's progress tracking: `demand` (its default: progress updates batched) or `eager`
    /// (sent at once; lower latency, more messages).
    #[arg(long, default_value = "demand", value_parser = ["demand", "eager"])]
    pub progress_mode: String,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

impl ClusterArgs {
    /// The timely configuration these options describe.
    pub fn timely_config(&self) -> Result<timely::Config> {
        let mut args = vec![
            "threatflow".to_string(),
            "-w".into(),
            self.workers.to_string(),
            "-n".into(),
            self.processes.to_string(),
            "-p".into(),
            self.process.to_string(),
            "--progress-mode".into(),
            self.progress_mode.clone(),
        ];
        if let Some(hostfile) = &self.hostfile {
            args.push("-h".into());
            args.push(hostfile.display().to_string());
        }
        let mut config = timely::Config::from_args(args.into_iter().skip(1)).map_err(|e| anyhow::anyhow!("cluster options: {e}"))?;
        differential_dataflow::configure(&mut config.worker, &differential_dataflow::Config::default().idle_merge_effort(Some(1000)));
        Ok(config)
    }
}

/// Options shared by jobs.
#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// Dataflow to run (see `threatflow dataflows`).
    #[arg(long, default_value = "threat")]
    pub dataflow: String,
    /// Model artifact (JSON), in force from time 0.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Expected sha256 of the model artifact (verified when given).
    #[arg(long)]
    pub model_sha256: Option<String>,
    /// JSON-lines file of model updates `{version, uri, sha256, effective_from}`. Without `--kafka`
    /// it is followed while the job runs: updates appended later (`threatflow model publish --to
    /// FILE`) apply at their `effective_from`. With `--kafka` it is read once at start (updates
    /// then come through the models topic).
    #[arg(long)]
    pub model_updates: Option<PathBuf>,
    /// Threshold-rule files (JSON array, JSON lines or YAML); repeatable.
    #[arg(long)]
    pub rules: Vec<PathBuf>,
    /// A directory of Sigma rules (`*.yml`, `*.yaml`, recursively), applied to the records of
    /// their logsource (see `--format`); a rule that does not parse is reported and skipped.
    #[arg(long)]
    pub rules_dir: Option<PathBuf>,
    /// Placeholder values for Sigma's `|expand`: a YAML map from name to a list of values.
    #[arg(long)]
    pub sigma_placeholders: Option<PathBuf>,
    /// Marked threats, JSON lines (`threatflow mark ... --to FILE` appends to it); without
    /// `--kafka` followed while the job runs, with it read once at start (marks then come through
    /// the marks topic).
    #[arg(long)]
    pub marks: Option<PathBuf>,
    /// Allowed lateness: events further behind their partition's watermark are judged at the watermark.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub allowed_lateness: Duration,
    /// Records longer than this many bytes are rejected.
    #[arg(long, default_value_t = crate::event::DEFAULT_MAX_RECORD_BYTES)]
    pub max_record_bytes: usize,
    /// Record format: `canonical` (DESIGN.md events), `auto` (each record's source detected:
    /// canonical events or any mapping's records), or a mapping's name (`aws.cloudtrail`, ...).
    #[arg(long, default_value = "canonical")]
    pub format: String,
    /// More mappings (`*.yaml`), added to the shipped ones (a known name replaces it).
    #[arg(long)]
    pub mappings_dir: Option<PathBuf>,
    /// Dead-letter output (JSON lines).
    #[arg(long)]
    pub dead_letters: Option<PathBuf>,
    /// Alerts output (JSON lines): decisions whose actions include `alert`, with severity, rules
    /// and the model's contributions.
    #[arg(long)]
    pub alerts: Option<PathBuf>,
    /// Actions output (JSON lines): a revert or block command per such action of a decision.
    #[arg(long)]
    pub actions: Option<PathBuf>,
    /// Alert fatigue: a rule's (or the model's) alerts for one user are raised at most once per
    /// this much event time (`0s`: every one); decisions are not affected.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub alert_suppression: Duration,
    /// How long a decision whose actions include `block` blocks its user: that user's events after
    /// the decision, up to this much event time later, are decided `blocked` (`threatflow unblock`
    /// lifts it earlier).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub block_for: Duration,
    /// Write consistent checkpoints here, and resume from the newest valid one at start.
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Time between checkpoints.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub checkpoint_interval: Duration,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 3)]
    pub checkpoint_keep: usize,
    /// Records each worker's source reads at a time; at most four such batches are in flight
    /// before the outputs catch up (smaller: lower latency and finer checkpoints, less throughput).
    #[arg(long, default_value_t = crate::source::SourceConfig::default().batch)]
    pub read_batch: usize,
}

/// How to reach Kafka.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (`host:port,...`).
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// A librdkafka setting, `key=value` (`security.protocol`, `sasl.mechanism`, `sasl.username`,
    /// `ssl.ca.location`, ...); repeatable.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,
    /// Create missing topics instead of failing.
    #[arg(long)]
    pub create_topics: bool,
    /// Partitions of the topics `--create-topics` creates.
    #[arg(long, default_value_t = 4)]
    pub topic_partitions: usize,
    /// How long to keep retrying while the broker cannot be reached at start.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub kafka_connect_timeout: Duration,
}

impl KafkaArgs {
    /// The Kafka configuration, when `--kafka` is given.
    pub fn config(&self) -> Result<Option<KafkaConfig>> {
        let Some(brokers) = &self.kafka else { return Ok(None) };
        let mut config = KafkaConfig::new(brokers.clone());
        config.options = crate::kafka::parse_options(&self.kafka_options)?;
        config.create_topics = self.create_topics;
        config.partitions = self.topic_partitions;
        config.connect_timeout = self.kafka_connect_timeout;
        Ok(Some(config))
    }

    fn required(&self) -> Result<KafkaConfig> {
        self.config()?.context("--kafka BROKERS is required")
    }
}

/// The embedded generator's stream.
#[derive(Debug, Clone, Args)]
pub struct GeneratorArgs {
    /// Number of users.
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    /// Number of events.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl GeneratorArgs {
    /// The generator configuration (other settings at their defaults).
    pub fn config(&self) -> GeneratorConfig {
        GeneratorConfig { seed: self.seed, users: self.users, events: self.events, ..GeneratorConfig::default() }
    }
}

/// `threatflow run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The generated stream.
    #[command(flatten)]
    pub generator: GeneratorArgs,
    /// Decisions output (JSON lines); none by default.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Do not load the shipped default rules (`rules/default.json`).
    #[arg(long)]
    pub no_default_rules: bool,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// `threat` (the threat dataflow), or `flink-compare`: the Apache Flink comparison workload
    /// of `../shared/bench/WORKLOAD.md` (its own stream of `--events` events, checksums, latency
    /// probes).
    #[arg(long, default_value = "threat", value_parser = ["threat", "flink-compare"])]
    pub workload: String,
    /// Kafka: read events from the activity topic instead of the generator, model and rule updates
    /// from their topics while running, and write decisions, alerts, actions and dead letters to
    /// theirs.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// A topic name for a role, `ROLE=NAME`; the default name is the role's (activity, models,
    /// rules, marks, decisions, alerts, actions, dead-letters); repeatable.
    #[arg(long = "topic", value_name = "ROLE=NAME", requires = "kafka")]
    pub topics: Vec<String>,
    /// Stop at the end offsets the activity topic has at start (a bounded run); by default the job
    /// follows the topic until SIGTERM or Ctrl-C, then decides what it has read and ends.
    #[arg(long, requires = "kafka")]
    pub until_end: bool,
    /// An activity partition at its end for this long no longer holds event time back.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Job options.
    #[command(flatten)]
    pub job: JobArgs,
    /// Cluster options.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `threatflow produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic to write.
    #[arg(long, default_value = "activity")]
    pub topic: String,
    /// Records per second, open loop (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Send these files' lines as they are (file `i` to partition `i % P`) instead of generated events.
    #[arg(long)]
    pub input: Vec<PathBuf>,
    /// Stamp each generated event with the wall-clock time it is sent (ms), so that event time
    /// follows the clock: latency measurements (`experiments/kafka_end_to_end.sh`).
    #[arg(long, conflicts_with = "input")]
    pub retime: bool,
    /// The generated stream (without `--input`).
    #[command(flatten)]
    pub generator: GeneratorArgs,
}

/// `threatflow consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic to read.
    #[arg(long)]
    pub topic: String,
    /// Write the records here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Keep reading new records until SIGTERM or Ctrl-C (default: stop at the end offsets at start).
    #[arg(long)]
    pub follow: bool,
    /// Start each line with the record's timestamp and its receive time (ms), tab-separated.
    #[arg(long)]
    pub timestamps: bool,
}

/// `threatflow replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Input files of canonical events (JSON lines); each is one partition.
    #[arg(long, required = true)]
    pub input: Vec<PathBuf>,
    /// Decisions output (JSON lines).
    #[arg(long)]
    pub output: PathBuf,
    /// Job options.
    #[command(flatten)]
    pub job: JobArgs,
    /// Cluster options.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `threatflow generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Events output (JSON lines; the partitions merged by time, each keeping its own order).
    #[arg(long)]
    pub out: PathBuf,
    /// Ground-truth output (JSON lines of labels).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// The generated stream.
    #[command(flatten)]
    pub generator: GeneratorArgs,
    /// Generator partitions.
    #[arg(long, default_value_t = 16)]
    pub partitions: usize,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl JobArgs {
    fn control(&self, default_model: bool, default_rules: bool) -> Result<ControlSpec> {
        let model = match &self.model {
            Some(path) => Some(ModelSource::File(path.clone(), self.model_sha256.clone())),
            None if default_model => Some(ModelSource::Bytes(crate::model::DEFAULT_MODEL.to_vec())),
            None => None,
        };
        let mut rules: Vec<RulesSource> = self.rules.iter().cloned().map(RulesSource::File).collect();
        if default_rules {
            // The shipped rules parse (a unit test checks it); should they not, run without them.
            match crate::rules::parse_rules(crate::rules::DEFAULT_RULES) {
                Ok(specs) => rules.insert(0, RulesSource::Specs(specs)),
                Err(e) => tracing::error!("shipped rules: {e:#}"),
            }
        }
        if let Some(dir) = &self.rules_dir {
            let placeholders = match &self.sigma_placeholders {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    serde_norway::from_str(&text).with_context(|| format!("{}: not a map of placeholder to values", path.display()))?
                }
                None => crate::sigma::Placeholders::new(),
            };
            rules.push(RulesSource::SigmaDir(dir.clone(), placeholders));
        }
        // Without Kafka the model-updates file is followed while the job runs (`model publish --to`).
        Ok(ControlSpec {
            model,
            model_updates: self.model_updates.clone(),
            follow: true,
            verified_models: Vec::new(),
            rules,
            marks: self.marks.clone(),
        })
    }

    fn job(&self, source: SourceSpec, control: ControlSpec) -> Result<JobSpec> {
        let format = RecordFormat::parse(&self.format, self.mappings_dir.as_deref())?;
        let mut job = JobSpec::new(&self.dataflow, source);
        job.control = control;
        job.allowed_lateness = ms(self.allowed_lateness);
        job.read_batch = self.read_batch.max(1);
        job.decoding = Decoding { max_record_bytes: self.max_record_bytes, format };
        job.dead_letters_path = self.dead_letters.clone();
        job.alerts_path = self.alerts.clone();
        job.actions_path = self.actions.clone();
        job.alert_suppression = ms(self.alert_suppression);
        job.block_for = ms(self.block_for);
        job.checkpoints = self.checkpoint_dir.as_ref().map(|path| {
            (crate::checkpoint::CheckpointDir { path: path.clone(), keep: self.checkpoint_keep }, self.checkpoint_interval)
        });
        Ok(job)
    }
}

/// Runs a parsed command line.
pub fn execute(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run_generated(args),
        Command::Replay(args) => replay(args),
        Command::Train(args) => train(args),
        Command::Evaluate(args) => evaluate(args),
        Command::Model(ModelCommand::Publish(args)) => publish(args),
        Command::Mark(args) => mark(args),
        Command::Unblock(args) => {
            let line = serde_json::to_string(&crate::marks::MarkUpdate::unblock(&args.user, args.effective_from))?;
            send_control(&line, args.to.as_deref(), &args.kafka, &args.topic)?;
            eprintln!("sent {line}");
            Ok(())
        }
        Command::Generate(args) => generate(args),
        Command::Produce(args) => produce(args),
        Command::Consume(args) => consume(args),
        Command::Dataflows => {
            for d in crate::dataflows::all() {
                println!("{:<16} {}", d.name(), d.description());
            }
            Ok(())
        }
    }
}

/// A flag set by the first SIGTERM or Ctrl-C (a second one exits at once).
fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop)).context("installing a signal handler")?;
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing a signal handler")?;
    }
    Ok(stop)
}

fn run_generated(args: RunArgs) -> Result<()> {
    if args.workload == "flink-compare" {
        return run_compare(&args);
    }
    let control = args.job.control(true, !args.no_default_rules)?;
    let mut job = match args.kafka.config()? {
        Some(kafka) => {
            let kafka = kafka.with_topics(&args.topics)?;
            let mut source = KafkaSource::new(kafka.clone(), args.until_end);
            source.idle_timeout = args.idle_timeout;
            let control = ControlSpec { follow: false, ..control };
            let mut job = args.job.job(SourceSpec::Kafka(source), control)?;
            job.kafka = Some(kafka);
            job
        }
        None => {
            let generator = GeneratorConfig { allowed_lateness: ms(args.job.allowed_lateness), ..args.generator.config() };
            let mut job = args.job.job(SourceSpec::Generator(generator), control)?;
            job.expected_events = (args.cluster.processes == 1).then_some(args.generator.events);
            job
        }
    };
    job.decisions_path = args.output.clone();
    job.progress = true;
    job.stop = stop_on_signals()?;
    let is_reporter = args.cluster.process == 0;
    let report = run(args.cluster.timely_config()?, job)?;
    if is_reporter {
        print_report(&report, args.json)?;
    }
    Ok(())
}

fn replay(args: ReplayArgs) -> Result<()> {
    let mut job = args.job.job(SourceSpec::Files(args.input.clone()), args.job.control(false, false)?)?;
    job.decisions_path = Some(args.output.clone());
    if job.dead_letters_path.is_none() {
        job.dead_letters_path = Some(args.output.with_extension("dead-letters.jsonl"));
    }
    let is_reporter = args.cluster.process == 0;
    let report = run(args.cluster.timely_config()?, job)?;
    if is_reporter {
        tracing::info!(
            events = report.events,
            rejected = report.rejected,
            late = report.late,
            decisions = report.decisions,
            seconds = report.elapsed.as_secs_f64(),
            "replay done: decisions in {}",
            args.output.display()
        );
    }
    Ok(())
}

fn run_compare(args: &RunArgs) -> Result<()> {
    let events = args.generator.events;
    let report = crate::compare::run(args.cluster.timely_config()?, crate::compare::CompareConfig { events, ..Default::default() })?;
    if args.cluster.process != 0 {
        return Ok(());
    }
    let sums = &report.checksums;
    let latency_ms = |q: f64| report.latency.value_at_quantile(q) as f64 / 1e6;
    let value = serde_json::json!({
        "workload": "flink-compare",
        "events": events,
        "seconds": report.elapsed.as_secs_f64(),
        "events_per_second": report.throughput(events),
        "flagged": sums.flagged,
        "per_version": sums.per_version,
        "checksum_idx": sums.checksum_idx,
        "checksum_user": sums.checksum_user,
        "probe_latency_ms": {"p50": latency_ms(0.5), "p99": latency_ms(0.99), "max": report.latency.max() as f64 / 1e6},
    });
    if args.json {
        println!("{value}");
    } else {
        println!(
            "{events} events in {:.2} s: {:.0} events/s\nflagged {} per version {:?} checksumIdx {} checksumUser {}\nprobe latency p50 {:.2} ms, p99 {:.2} ms",
            report.elapsed.as_secs_f64(),
            report.throughput(events),
            sums.flagged,
            sums.per_version,
            sums.checksum_idx,
            sums.checksum_user,
            latency_ms(0.5),
            latency_ms(0.99)
        );
    }
    Ok(())
}

fn produce(args: ProduceArgs) -> Result<()> {
    let kafka = args.kafka.required()?;
    let input = if args.input.is_empty() {
        ProduceInput::Generator { config: args.generator.config(), retime: args.retime }
    } else {
        ProduceInput::Files(args.input.clone())
    };
    let sent = crate::kafka::tools::produce(&kafka, &args.topic, input, args.rate, true)?;
    eprintln!("{sent} records sent to {}", args.topic);
    Ok(())
}

fn consume(args: ConsumeArgs) -> Result<()> {
    let kafka = args.kafka.required()?;
    let stop = stop_on_signals()?;
    let count = match &args.out {
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let mut out = std::io::BufWriter::new(file);
            crate::kafka::tools::consume(&kafka, &args.topic, args.follow, args.timestamps, &stop, &mut out)?
        }
        None => {
            let mut out = std::io::stdout().lock();
            crate::kafka::tools::consume(&kafka, &args.topic, args.follow, args.timestamps, &stop, &mut out)?
        }
    };
    tracing::info!(records = count, topic = %args.topic, "consumed");
    Ok(())
}

fn print_report(report: &JobReport, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let value = serde_json::json!({
            "events": report.events,
            "rejected": report.rejected,
            "late": report.late,
            "decisions": report.decisions,
            "seconds": report.elapsed.as_secs_f64(),
            "events_per_second": report.throughput(),
            "quality": report.quality,
            "checkpoints": report.checkpoints,
        });
        writeln!(out, "{value}")?;
        return Ok(());
    }
    writeln!(
        out,
        "{} events ({} late, {} rejected) in {:.2} s: {:.0} events/s; {} decisions",
        report.events,
        report.late,
        report.rejected,
        report.elapsed.as_secs_f64(),
        report.throughput(),
        report.decisions
    )?;
    if let Some(c) = &report.checkpoints {
        if let (Some(from), Some(ms)) = (c.restored_from, c.restore_ms) {
            write!(out, "restored from the checkpoint at {from}: read in {ms:.0} ms")?;
            if let Some(resumed) = c.resumed_ms {
                write!(out, ", deciding again {resumed:.0} ms after the start")?;
            }
            writeln!(out)?;
        }
        write!(out, "{} checkpoints written", c.written)?;
        if let Some(frontier) = c.last_frontier {
            write!(out, "; the last at {frontier}: {} bytes in {:.0} ms (longest write {:.0} ms)", c.last_bytes, c.last_write_ms, c.max_write_ms)?;
        }
        writeln!(out)?;
    }
    if let Some(quality) = &report.quality {
        write!(out, "\n{}", quality.table())?;
    }
    Ok(())
}

fn generate(args: GenerateArgs) -> Result<()> {
    let config = GeneratorConfig { partitions: args.partitions, start: DEFAULT_START, ..args.generator.config() };
    let (partitions, labels) = crate::generator::generate_all(&config);
    let file = std::fs::File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut out = std::io::BufWriter::new(file);
    // Merge the partitions by the time of their next event, so the file reads as one stream with
    // the same bounded disorder as each partition.
    let mut heads: std::collections::BinaryHeap<std::cmp::Reverse<(u64, usize, usize)>> =
        partitions.iter().enumerate().filter(|(_, p)| !p.is_empty()).map(|(i, p)| std::cmp::Reverse((p[0].ts, i, 0))).collect();
    while let Some(std::cmp::Reverse((_, p, k))) = heads.pop() {
        writeln!(out, "{}", partitions[p][k].to_json())?;
        if let Some(next) = partitions[p].get(k + 1) {
            heads.push(std::cmp::Reverse((next.ts, p, k + 1)));
        }
    }
    out.flush().with_context(|| format!("writing {}", args.out.display()))?;
    if let Some(path) = &args.labels {
        let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        for label in &labels {
            writeln!(out, "{}", serde_json::to_string(label)?)?;
        }
        out.flush().with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn train(args: TrainArgs) -> Result<()> {
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
    spec.command = Some(std::env::args().collect::<Vec<_>>().join(" "));
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

fn evaluate(args: EvaluateArgs) -> Result<()> {
    let model = match &args.model {
        Some(uri) => {
            let bytes = crate::location::fetch(uri, None)?;
            crate::model::Model::from_bytes(&bytes, args.model_sha256.as_deref()).with_context(|| format!("model {uri}"))?
        }
        None => crate::model::Model::from_bytes(crate::model::DEFAULT_MODEL, None).context("the shipped model")?,
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

fn publish(args: PublishArgs) -> Result<()> {
    // The engine verifies again when it fetches; checking here catches a wrong location, digest
    // or version before anything is sent.
    let bytes = crate::location::fetch(&args.uri, None)?;
    let model = crate::model::Model::from_bytes(&bytes, args.sha256.as_deref()).with_context(|| format!("model artifact {}", args.uri))?;
    anyhow::ensure!(model.version == args.version, "--version {} but the artifact is version {}", args.version, model.version);
    let update = crate::model::ModelUpdate {
        version: args.version.clone(),
        uri: args.uri.clone(),
        sha256: model.sha256.clone(),
        effective_from: args.effective_from,
    };
    let line = serde_json::to_string(&update)?;
    send_control(&line, args.to.as_deref(), &args.kafka, &args.topic)?;
    eprintln!("published {line}");
    Ok(())
}

/// Appends a control line to a followed file, or sends it to a control topic.
fn send_control(line: &str, to: Option<&std::path::Path>, kafka: &KafkaArgs, topic: &str) -> Result<()> {
    match (to, kafka.config()?) {
        (Some(path), _) => {
            // One write of a whole line with O_APPEND: a follower never reads half an update.
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            file.write_all(format!("{line}\n").as_bytes()).with_context(|| format!("appending to {}", path.display()))?;
            file.sync_data().with_context(|| format!("syncing {}", path.display()))
        }
        (None, Some(kafka)) => crate::kafka::tools::send_one(&kafka, topic, line.as_bytes()),
        (None, None) => anyhow::bail!("say where to send it: --to FILE or --kafka BROKERS"),
    }
}

fn mark(args: MarkArgs) -> Result<()> {
    use crate::marks::{Mark, MarkUpdate};
    let update = if args.remove {
        MarkUpdate { effective_from: args.effective_from.unwrap_or_default(), ..MarkUpdate::removal(format!("mark:{}", args.event_id)) }
    } else {
        let format = RecordFormat::parse(&args.format, None)?;
        let inputs: Vec<&std::path::Path> = args.input.iter().map(PathBuf::as_path).collect();
        let event = crate::marks::find_event(&inputs, &args.event_id, &format)?;
        let fields: Vec<&str> = args.fields.iter().map(String::as_str).collect();
        let mut mark = Mark::of(&event, &fields);
        if let Some(at) = args.effective_from {
            mark.effective_from = at;
        }
        MarkUpdate::of(&mark)
    };
    let line = serde_json::to_string(&update)?;
    send_control(&line, args.to.as_deref(), &args.kafka, &args.topic)?;
    eprintln!("sent {line}");
    Ok(())
}
