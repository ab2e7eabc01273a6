//! Option groups several commands share: the cluster (`-w`, `-n`, `-p`, `-h`), a job's inputs,
//! outputs and checkpoints, Kafka, the generator, and the data `train` and `evaluate` read.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::control::{ControlSpec, ModelSource, RulesSource};
use crate::job::JobSpec;
use crate::ingest::generator::GeneratorConfig;
use crate::kafka::source::KafkaSource;
use crate::kafka::KafkaConfig;
use crate::ingest::mapping::RecordFormat;
use crate::ingest::partition::Decoding;
use crate::job::SourceSpec;

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
    pub(super) fn extract(&self, keep_ids: bool) -> Result<(crate::training::dataset::Extracted, crate::training::dataset::Labels)> {
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
    /// Settings from a TOML file: any option of this command by its long name (`model_updates` or
    /// `model-updates`); an option given here overrides the file's (see `threatflow config check`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
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
    /// A GeoIP database (MaxMind format: GeoLite2-Country/City, ip-location-db's `*-mmdb`; see
    /// `scripts/geo`): every event with a `src_ip` gets its address's class, and a public one its
    /// country (when it has none), city and coordinates. In force from time 0; a line
    /// `{"database":"geoip","uri":…,"sha256":…,"effective_from":…}` among the model updates
    /// replaces it from then on.
    #[arg(long)]
    pub geoip_db: Option<String>,
    /// Expected sha256 of `--geoip-db` (verified when given).
    #[arg(long, requires = "geoip_db")]
    pub geoip_db_sha256: Option<String>,
    /// An ASN database (MaxMind format, e.g. GeoLite2-ASN, or ip-location-db's CSV ranges
    /// `start,end,asn,organisation`): public addresses get `asn` and `as_org`. Replaced like
    /// `--geoip-db` (`"database":"asn"`).
    #[arg(long)]
    pub asn_db: Option<String>,
    /// Expected sha256 of `--asn-db` (verified when given).
    #[arg(long, requires = "asn_db")]
    pub asn_db_sha256: Option<String>,
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
    /// Threat-intel indicators: a file (JSON lines, STIX 2.1 bundle or CSV; see the README) or a
    /// directory of them; repeatable. An event matching an indicator in force at its time is
    /// decided `threat` naming it; an indicator that comes into force is matched against the
    /// events of `--retro-window` before it (`retro` decisions). Without `--kafka` followed while
    /// the job runs (files added, changed or removed apply from then on); with it read once at
    /// start (indicators then come through the intel topic, with `--intel-topic`).
    #[arg(long)]
    pub intel: Vec<PathBuf>,
    /// How far back (event time) an indicator that comes into force is matched against past
    /// events (`0s`: not at all). Memory: about 165 bytes per event of the window, on the worker
    /// that owns its user.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub retro_window: Duration,
    /// Allowed lateness: events further behind their partition's watermark are judged at the watermark.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub allowed_lateness: Duration,
    /// Records longer than this many bytes are rejected.
    #[arg(long, default_value_t = crate::event::DEFAULT_MAX_RECORD_BYTES)]
    pub max_record_bytes: usize,
    /// Dead letters a source partition keeps whole at one watermark: the rest, until the watermark
    /// moves, are counted in one summary dead letter (their count, bytes and positions), so that
    /// a flood of bad records cannot fill memory.
    #[arg(long, default_value_t = crate::ingest::partition::DEFAULT_DEAD_LETTER_BURST)]
    pub dead_letter_burst: usize,
    /// An event whose time is further than this ahead of when its record was written (a Kafka
    /// message's timestamp, an input file's modification time) is rejected to the dead letters:
    /// it would move its partition's watermark into the future.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub max_future_skew: Duration,
    /// Record format: `canonical` (docs/semantics.md#events), `auto` (each record's source detected:
    /// canonical events or any mapping's records), or a mapping's name (`aws.cloudtrail`, ...).
    /// With `run`'s generator, it writes its events as that provider's raw records
    /// (`aws.cloudtrail`, `okta.okta`, `gcp.google_workspace`, `azure.signinlogs`; `auto`: each
    /// user's from one of them) and reads them back through the mapping.
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
    /// How alerts are written (the file and the alerts topic): `json`, or `ocsf` (OCSF 1.8.0
    /// Detection Findings, class 2004).
    #[arg(long, value_enum, default_value_t = crate::output::AlertsFormat::Json)]
    pub alerts_format: crate::output::AlertsFormat,
    /// Post the alerts here (repeatable): `[json=|slack=|teams=]URL`, a generic JSON webhook
    /// (`{"source", "alerts": [...]}`), a Slack or a Microsoft Teams incoming webhook. Needs
    /// `--alerts FILE`, the outbox they are read from. URLs hold secrets: prefer
    /// `--alerts-to-file` or `THREATFLOW_ALERTS_TO` (whitespace-separated).
    #[arg(long)]
    pub alerts_to: Vec<String>,
    /// A file of alert destinations, one per line (`#` comments).
    #[arg(long)]
    pub alerts_to_file: Option<PathBuf>,
    /// Alerts per request to a destination, at most.
    #[arg(long, default_value_t = 50)]
    pub alerts_to_batch: usize,
    /// Requests per second to a destination, at most.
    #[arg(long, default_value_t = 5.0)]
    pub alerts_to_rate: f64,
    /// Attempts per request (exponential backoff from 250 ms, or the receiver's `Retry-After`)
    /// before its alerts are set aside in `--alerts-undelivered`.
    #[arg(long, default_value_t = 6)]
    pub alerts_to_attempts: u32,
    /// One request's time limit.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub alerts_to_timeout: Duration,
    /// Alerts a destination refused or did not take within the attempts, as JSON lines
    /// `{destination, error, alert}` (default: beside the alerts file, `.undelivered.jsonl`).
    #[arg(long)]
    pub alerts_undelivered: Option<PathBuf>,
    /// Actions output (JSON lines): a revert or block command per such action of a decision.
    #[arg(long)]
    pub actions: Option<PathBuf>,
    /// Alert fatigue: a rule's (or the model's) alerts for one user are raised at most once per
    /// this much event time (`0s`: every one); decisions are not affected.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub alert_suppression: Duration,
    /// Entity risk (docs/semantics.md#entity-risk): an entity (see `--risk-entities`) whose
    /// detections' risk scores over `--risk-window` add up to this raises one `risk` decision
    /// listing them (0: off).
    #[arg(long, default_value_t = 0)]
    pub risk_threshold: u64,
    /// The window entity risk is summed over (event time); an entity raises at most one risk
    /// decision per window.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub risk_window: Duration,
    /// The entities risk is kept for.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [crate::detect::risk::Entity::User, crate::detect::risk::Entity::SrcIp])]
    pub risk_entities: Vec<crate::detect::risk::Entity>,
    /// Detections below this severity are building blocks: still decisions that add risk, but no
    /// alerts (risk decisions and the other detections alert).
    #[arg(long, value_enum)]
    pub risk_only_below: Option<crate::detect::action::Severity>,
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
    /// Serve live metrics here (`HOST:PORT`; port 0: any free port, logged): Prometheus text
    /// format at `/metrics`, `/healthz`, and `/readyz` (ready once restored and reading). Each
    /// process of a cluster serves its own.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Serve a live console here (`HOST:PORT`): the alerts as they are written with their
    /// explanations, throughput, rules, partitions and checkpoints, in a browser. Read-only; an
    /// address other than loopback needs a token.
    #[arg(long, value_name = "HOST:PORT")]
    pub console: Option<std::net::SocketAddr>,
    /// A file holding the console's token (also `THREATFLOW_CONSOLE_TOKEN`): pages and updates are
    /// served only to requests that carry it (`?token=` or `Authorization: Bearer`).
    #[arg(long, value_name = "PATH")]
    pub console_token_file: Option<PathBuf>,
    /// After the job ends, keep serving the metrics and the console this long, so that a scraper
    /// or a viewer sees the final values (a signal ends the wait).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub linger: Duration,
    /// Records each worker's source reads at a time; at most four such batches are in flight
    /// before the outputs catch up (smaller: lower latency and finer checkpoints, less throughput).
    /// By default 32768 canonical events, or 1024 providers' raw records (`--format`).
    #[arg(long)]
    pub read_batch: Option<usize>,
}

/// How to reach Kafka.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (`host:port,...`).
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// A librdkafka setting, `key=value` (`security.protocol`, `sasl.mechanism`, `sasl.username`,
    /// `ssl.ca.location`, ...); repeatable. Secrets belong in `--kafka-options-file` or the
    /// `THREATFLOW_KAFKA_OPTIONS` environment variable (`key=value` lines), not here.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,
    /// A client properties file of librdkafka settings, `key=value` lines (`#` comments), read
    /// before `--kafka-option`s; for secrets such as `sasl.password`.
    #[arg(long, value_name = "PATH")]
    pub kafka_options_file: Option<std::path::PathBuf>,
    /// Create missing topics instead of failing.
    #[arg(long)]
    pub create_topics: bool,
    /// Partitions of the topics `--create-topics` creates.
    #[arg(long, default_value_t = 4)]
    pub topic_partitions: usize,
    /// How long to keep retrying while the broker cannot be reached at start.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub kafka_connect_timeout: Duration,
    /// A file holding the key (16 bytes or more) that control updates on the control topics are
    /// signed with (HMAC-SHA256): a job applies only updates that verify; `mark`, `unblock` and
    /// `model publish` sign what they send. Also `THREATFLOW_CONTROL_KEY_FILE`.
    #[arg(long, value_name = "PATH")]
    pub control_key_file: Option<std::path::PathBuf>,
    /// Read threat-intel indicators from the intel topic too (`--topic intel=NAME` renames it).
    #[arg(long)]
    pub intel_topic: bool,
}

/// The environment variable that may hold librdkafka settings, `key=value` lines.
pub const KAFKA_OPTIONS_ENV: &str = "THREATFLOW_KAFKA_OPTIONS";

impl KafkaArgs {
    /// The Kafka configuration, when `--kafka` is given.
    pub fn config(&self) -> Result<Option<KafkaConfig>> {
        let Some(brokers) = &self.kafka else { return Ok(None) };
        let mut config = KafkaConfig::new(brokers.clone());
        // The environment first, then the file, then the command line: later settings win.
        let mut lines = std::env::var(KAFKA_OPTIONS_ENV).map(|text| crate::kafka::option_lines(&text)).unwrap_or_default();
        if let Some(path) = &self.kafka_options_file {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading Kafka settings from {}", path.display()))?;
            lines.extend(crate::kafka::option_lines(&text));
        }
        lines.extend(self.kafka_options.iter().cloned());
        config.options = crate::kafka::parse_options(&lines)?;
        config.create_topics = self.create_topics;
        config.partitions = self.topic_partitions;
        config.connect_timeout = self.kafka_connect_timeout;
        config.control_key = crate::control::signing::ControlKey::from_file_or_env(self.control_key_file.as_deref())?;
        config.intel_topic = self.intel_topic;
        Ok(Some(config))
    }

    pub(super) fn required(&self) -> Result<KafkaConfig> {
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

impl JobArgs {
    pub(super) fn control(&self, default_model: bool, default_rules: bool) -> Result<ControlSpec> {
        let model = match &self.model {
            Some(path) => Some(ModelSource::File(path.clone(), self.model_sha256.clone())),
            None if default_model => Some(ModelSource::Bytes(crate::detect::model::DEFAULT_MODEL.to_vec())),
            None => None,
        };
        let mut rules: Vec<RulesSource> = self.rules.iter().cloned().map(RulesSource::File).collect();
        if default_rules {
            // The shipped rules parse (a unit test checks it); should they not, run without them.
            match crate::detect::rules::parse_rules(crate::detect::rules::DEFAULT_RULES) {
                Ok(specs) => rules.insert(0, RulesSource::Specs(specs)),
                Err(e) => tracing::error!("shipped rules: {e:#}"),
            }
        }
        if let Some(dir) = &self.rules_dir {
            rules.push(RulesSource::SigmaDir(dir.clone(), read_placeholders(self.sigma_placeholders.as_deref())?));
        }
        // Without Kafka the model-updates file is followed while the job runs (`model publish --to`).
        Ok(ControlSpec {
            model,
            model_updates: self.model_updates.clone(),
            follow: true,
            verified_models: Vec::new(),
            rules,
            marks: self.marks.clone(),
            databases: self.databases(),
            intel: self.intel.clone(),
        })
    }

    /// Where the alerts are posted: `--alerts-to`, `--alerts-to-file` and `THREATFLOW_ALERTS_TO`.
    fn alert_deliveries(&self) -> Result<Option<crate::output::webhooks::DeliverySpec>> {
        let mut given: Vec<String> = self.alerts_to.clone();
        if let Some(path) = &self.alerts_to_file {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading the alert destinations {}", path.display()))?;
            given.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string));
        }
        if let Ok(text) = std::env::var("THREATFLOW_ALERTS_TO") {
            given.extend(text.split_whitespace().map(str::to_string));
        }
        if given.is_empty() {
            return Ok(None);
        }
        let mut destinations: Vec<crate::output::webhooks::Destination> = given.iter().map(|d| d.parse()).collect::<Result<_>>()?;
        // The same destination given twice (the command line and the environment) is posted to once.
        let mut keys = std::collections::BTreeSet::new();
        destinations.retain(|d| keys.insert(d.key()));
        let Some(alerts) = &self.alerts else {
            anyhow::bail!("--alerts-to needs --alerts FILE: the alerts file is the outbox the deliveries read and resume from");
        };
        Ok(Some(crate::output::webhooks::DeliverySpec {
            destinations,
            batch: self.alerts_to_batch,
            rate: self.alerts_to_rate,
            attempts: self.alerts_to_attempts,
            timeout: self.alerts_to_timeout,
            undelivered: self.alerts_undelivered.clone().unwrap_or_else(|| alerts.with_extension("undelivered.jsonl")),
        }))
    }

    /// The databases given on the command line.
    fn databases(&self) -> Vec<(crate::enrich::DatabaseKind, String, Option<String>)> {
        use crate::enrich::DatabaseKind;
        let given = [(DatabaseKind::Geoip, &self.geoip_db, &self.geoip_db_sha256), (DatabaseKind::Asn, &self.asn_db, &self.asn_db_sha256)];
        given.into_iter().filter_map(|(kind, location, sha256)| Some((kind, location.clone()?, sha256.clone()))).collect()
    }

    pub(super) fn job(&self, source: SourceSpec, control: ControlSpec) -> Result<JobSpec> {
        let format = RecordFormat::parse(&self.format, self.mappings_dir.as_deref())?;
        let mut job = JobSpec::new(&self.dataflow, source);
        job.control = control;
        job.allowed_lateness = ms(self.allowed_lateness);
        job.read_batch = self.read_batch.map(|batch| batch.max(1));
        job.dead_letter_burst = self.dead_letter_burst;
        job.decoding = Decoding { max_record_bytes: self.max_record_bytes, format, max_future_skew: ms(self.max_future_skew), ..Decoding::default() };
        job.dead_letters_path = self.dead_letters.clone();
        job.alerts_path = self.alerts.clone();
        job.alerts_format = self.alerts_format;
        job.alert_deliveries = self.alert_deliveries()?;
        job.actions_path = self.actions.clone();
        job.alert_suppression = ms(self.alert_suppression);
        job.risk = (self.risk_threshold > 0).then(|| crate::detect::risk::RiskOptions {
            threshold: self.risk_threshold,
            window: ms(self.risk_window).max(1),
            entities: self.risk_entities.clone(),
        });
        job.quiet_below = self.risk_only_below;
        job.block_for = ms(self.block_for);
        job.retro_window = ms(self.retro_window);
        job.checkpoints = self.checkpoint_dir.as_ref().map(|path| {
            (crate::checkpoint::CheckpointDir { path: path.clone(), keep: self.checkpoint_keep }, self.checkpoint_interval)
        });
        Ok(job)
    }
}

/// The placeholder values of `--sigma-placeholders` (a YAML map of name to values); none without it.
pub(super) fn read_placeholders(path: Option<&Path>) -> Result<crate::detect::sigma::Placeholders> {
    let Some(path) = path else { return Ok(crate::detect::sigma::Placeholders::new()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_norway::from_str(&text).with_context(|| format!("{}: not a map of placeholder to values", path.display()))
}

/// A time given on the command line or in a test case: ms since the epoch, or RFC 3339.
pub(super) fn parse_time(text: &str) -> Result<crate::event::Time, String> {
    text.parse::<u64>().or_else(|_| crate::event::parse_rfc3339_ms(text))
}

/// A time as RFC 3339 with milliseconds, in UTC (as ms when it is past what a date can say).
pub(super) fn rfc3339(ts: crate::event::Time) -> String {
    match i64::try_from(ts).ok().and_then(chrono::DateTime::from_timestamp_millis) {
        Some(date) => date.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => ts.to_string(),
    }
}

pub(super) fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// A flag set by the first SIGTERM or Ctrl-C (a second one exits at once).
pub(super) fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop)).context("installing a signal handler")?;
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing a signal handler")?;
    }
    Ok(stop)
}
