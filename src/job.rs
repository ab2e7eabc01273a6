//! What a job reads, runs and writes: [`JobSpec`], and where its events come from ([`SourceSpec`]).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::checkpoint::{Checkpoint, CheckpointDir};
use crate::control::ControlSpec;
use crate::event::Time;
use crate::ingest::files::JsonLinesPartition;
use crate::ingest::generator::{GeneratorConfig, GeneratorPartition};
use crate::ingest::partition::{Decoding, Partition, SourceConfig};
use crate::kafka::source::KafkaSource;
use crate::kafka::KafkaConfig;

/// What a job reads, runs and writes.
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// Name of the dataflow (see `dataflows/`).
    pub dataflow: String,
    /// Where events come from.
    pub source: SourceSpec,
    /// Models and rules.
    pub control: ControlSpec,
    /// Allowed lateness (ms).
    pub allowed_lateness: Time,
    /// Records a source reads at a time (see [`SourceConfig::batch`]); `None`: the
    /// [`Decoding::default_batch`] of the job's format.
    pub read_batch: Option<usize>,
    /// Dead letters a partition gives whole at one time (see [`SourceConfig::dead_letter_burst`]).
    pub dead_letter_burst: usize,
    /// How records become events (size limit, canonical or providers' formats).
    pub decoding: Decoding,
    /// Decisions as JSON lines.
    pub decisions_path: Option<PathBuf>,
    /// Dead letters as JSON lines.
    pub dead_letters_path: Option<PathBuf>,
    /// Alerts as JSON lines.
    pub alerts_path: Option<PathBuf>,
    /// How alerts are written (file and topic).
    pub alerts_format: crate::output::AlertsFormat,
    /// Where the alerts are posted (read from the alerts file).
    pub alert_deliveries: Option<crate::output::webhooks::DeliverySpec>,
    /// Revert and block commands as JSON lines.
    pub actions_path: Option<PathBuf>,
    /// Alerts of one rule (or the model) for one user are raised at most once per this many ms
    /// (0: every one).
    pub alert_suppression: Time,
    /// Entity risk scoring, when on (see [`crate::detect::risk`]).
    pub risk: Option<crate::detect::risk::RiskOptions>,
    /// Detections below this severity raise no alert (`--risk-only-below`).
    pub quiet_below: Option<crate::detect::action::Severity>,
    /// How long a decision whose actions include `block` blocks its user (ms of event time).
    pub block_for: Time,
    /// Kafka: control topics read while the job runs, and output topics written.
    pub kafka: Option<KafkaConfig>,
    /// Set it to end the job early: sources stop reading and what was read is decided (SIGTERM).
    pub stop: Arc<AtomicBool>,
    /// Checkpoints: where, and how often.
    pub checkpoints: Option<(CheckpointDir, Duration)>,
    /// Keep decisions and dead letters in the report (tests, embedding).
    pub collect: bool,
    /// Show a progress bar (worker 0, when attached to a terminal).
    pub progress: bool,
    /// Total events expected, for the progress bar.
    pub expected_events: Option<u64>,
    /// How far back (event time) a threat-intel indicator that comes into force is matched
    /// against past events (`retro` decisions; 0: not at all). See [`crate::detect::intel`].
    pub retro_window: Time,
}

impl JobSpec {
    /// A job running `dataflow` over `source`, writing nothing and collecting nothing.
    pub fn new(dataflow: &str, source: SourceSpec) -> Self {
        JobSpec {
            dataflow: dataflow.to_string(),
            source,
            control: ControlSpec::default(),
            allowed_lateness: 5_000,
            read_batch: None,
            dead_letter_burst: SourceConfig::default().dead_letter_burst,
            decoding: Decoding::default(),
            decisions_path: None,
            dead_letters_path: None,
            alerts_path: None,
            alerts_format: Default::default(),
            alert_deliveries: None,
            actions_path: None,
            alert_suppression: 0,
            risk: None,
            quiet_below: None,
            block_for: crate::detect::verdicts::DEFAULT_BLOCK_FOR,
            kafka: None,
            stop: Arc::default(),
            checkpoints: None,
            collect: false,
            progress: false,
            expected_events: None,
            retro_window: crate::detect::intel::DEFAULT_RETRO_WINDOW,
        }
    }
}

/// Where a job's events come from.
#[derive(Clone, Debug)]
pub enum SourceSpec {
    /// The embedded generator.
    Generator(GeneratorConfig),
    /// JSON-lines files, one partition each.
    Files(Vec<PathBuf>),
    /// In-memory JSON-lines inputs, one partition each (tests, embedding).
    Memory(Vec<Vec<u8>>),
    /// A Kafka topic, one partition per topic partition.
    Kafka(KafkaSource),
}

impl SourceSpec {
    /// Checks that every input can be opened (and, for Kafka, waits for the broker and reads the
    /// topic's partitions), so that a bad input fails the job before any worker starts (a worker
    /// failing alone would leave its peers waiting).
    pub fn prepare(&mut self) -> Result<()> {
        match self {
            SourceSpec::Files(paths) => {
                for path in paths.iter() {
                    std::fs::File::open(path).with_context(|| format!("opening input {}", path.display()))?;
                }
            }
            SourceSpec::Kafka(kafka) => kafka.prepare()?,
            SourceSpec::Generator(_) | SourceSpec::Memory(_) => {}
        }
        Ok(())
    }

    /// The partitions worker `index` of `peers` reads (partition `i` goes to worker `i % peers`);
    /// Kafka partitions start at the offsets `restored` recorded (the others seek later).
    pub fn partitions(
        &self,
        index: usize,
        peers: usize,
        decoding: &Decoding,
        restored: Option<&Checkpoint>,
    ) -> Result<Vec<Box<dyn Partition>>> {
        let mine = |i: usize| i % peers == index;
        let mut parts: Vec<Box<dyn Partition>> = Vec::new();
        match self {
            SourceSpec::Generator(config) => {
                for p in (0..config.partitions).filter(|p| mine(*p)) {
                    parts.push(Box::new(GeneratorPartition::new(config.clone(), p).with_records(decoding)?));
                }
            }
            SourceSpec::Files(paths) => {
                for path in paths.iter().enumerate().filter_map(|(i, path)| mine(i).then_some(path)) {
                    parts.push(JsonLinesPartition::open_input(path, decoding.clone())?);
                }
            }
            SourceSpec::Memory(inputs) => {
                for (i, bytes) in inputs.iter().enumerate().filter(|(i, _)| mine(*i)) {
                    parts.push(Box::new(JsonLinesPartition::from_bytes(format!("memory:{i}"), bytes.clone(), decoding.clone())));
                }
            }
            SourceSpec::Kafka(kafka) => parts = kafka.partitions(index, peers, decoding, restored)?,
        }
        Ok(parts)
    }
}

