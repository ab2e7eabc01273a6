//! `threatflow generate`, `produce` and `consume`: test data to files and Kafka topics, and back.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::ingest::generator::{GeneratorConfig, DEFAULT_START};
use crate::ingest::mapping::RecordFormat;
use crate::ingest::provider_records::Rendering;
use crate::kafka::tools::ProduceInput;
use super::options::{GeneratorArgs, KafkaArgs};
use super::options::stop_on_signals;

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
    /// Write `canonical` events, or providers' raw records: `aws.cloudtrail`, `okta.okta`,
    /// `gcp.google_workspace`, `azure.signinlogs`, or `auto` (each user's records from one of
    /// them); read them back with the same `--format`.
    #[arg(long, default_value = "canonical")]
    pub format: String,
}

pub(super) fn produce(args: ProduceArgs) -> Result<()> {
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

pub(super) fn consume(args: ConsumeArgs) -> Result<()> {
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

pub(super) fn generate(args: GenerateArgs) -> Result<()> {
    let config = GeneratorConfig { partitions: args.partitions, start: DEFAULT_START, ..args.generator.config() };
    let rendering = Rendering::for_format(&RecordFormat::parse(&args.format, None)?)?;
    let (partitions, labels) = crate::ingest::generator::generate_all(&config);
    let file = std::fs::File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut out = std::io::BufWriter::new(file);
    // Merge the partitions by the time of their next event, so the file reads as one stream with
    // the same bounded disorder as each partition.
    let mut heads: std::collections::BinaryHeap<std::cmp::Reverse<(u64, usize, usize)>> =
        partitions.iter().enumerate().filter(|(_, p)| !p.is_empty()).map(|(i, p)| std::cmp::Reverse((p[0].ts, i, 0))).collect();
    while let Some(std::cmp::Reverse((_, p, k))) = heads.pop() {
        let event = &partitions[p][k];
        match rendering {
            Some(rendering) => writeln!(out, "{}", rendering.render(event))?,
            None => writeln!(out, "{}", event.to_json())?,
        }
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
