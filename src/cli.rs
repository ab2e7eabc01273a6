//! The command line: `run`, `replay`, `generate`, `dataflows`, with timely's cluster options
//! (`-w`, `-n`, `-p`, `-h`) merged into the same parser.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::control::{ControlSpec, ModelSource, RulesSource};
use crate::engine::{run, JobReport, JobSpec};
use crate::generator::{GeneratorConfig, DEFAULT_START};
use crate::source::SourceSpec;

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
    /// Run the embedded generator through a dataflow and report throughput and detection quality.
    #[command(disable_help_flag = true)]
    Run(RunArgs),
    /// Run a dataflow over JSON-lines files of canonical events (backfill) and write decisions.
    #[command(disable_help_flag = true)]
    Replay(ReplayArgs),
    /// Write the embedded generator's events (and ground truth) as JSON lines.
    Generate(GenerateArgs),
    /// List the dataflows `--dataflow` can select.
    Dataflows,
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
    /// JSON-lines file of model updates `{version, uri, sha256, effective_from}`.
    #[arg(long)]
    pub model_updates: Option<PathBuf>,
    /// Threshold-rule files (JSON array, JSON lines or YAML); repeatable.
    #[arg(long)]
    pub rules: Vec<PathBuf>,
    /// Allowed lateness: events further behind their partition's watermark are judged at the watermark.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub allowed_lateness: Duration,
    /// Records longer than this many bytes are rejected.
    #[arg(long, default_value_t = crate::event::DEFAULT_MAX_RECORD_BYTES)]
    pub max_record_bytes: usize,
    /// Dead-letter output (JSON lines).
    #[arg(long)]
    pub dead_letters: Option<PathBuf>,
}

/// `threatflow run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Number of users.
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    /// Number of events to generate.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Decisions output (JSON lines); none by default.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Do not load the shipped default rules (`rules/default.json`).
    #[arg(long)]
    pub no_default_rules: bool,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Job options.
    #[command(flatten)]
    pub job: JobArgs,
    /// Cluster options.
    #[command(flatten)]
    pub cluster: ClusterArgs,
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
    /// Number of users.
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    /// Number of events.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Generator partitions.
    #[arg(long, default_value_t = 16)]
    pub partitions: usize,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl JobArgs {
    fn control(&self, default_model: bool, default_rules: bool) -> ControlSpec {
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
        ControlSpec { model, model_updates: self.model_updates.clone(), verified_models: Vec::new(), rules }
    }

    fn job(&self, source: SourceSpec, control: ControlSpec) -> JobSpec {
        let mut job = JobSpec::new(&self.dataflow, source);
        job.control = control;
        job.allowed_lateness = ms(self.allowed_lateness);
        job.max_record_bytes = self.max_record_bytes;
        job.dead_letters_path = self.dead_letters.clone();
        job
    }
}

/// Runs a parsed command line.
pub fn execute(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run_generated(args),
        Command::Replay(args) => replay(args),
        Command::Generate(args) => generate(args),
        Command::Dataflows => {
            for d in crate::dataflows::all() {
                println!("{:<16} {}", d.name(), d.description());
            }
            Ok(())
        }
    }
}

fn run_generated(args: RunArgs) -> Result<()> {
    let generator = GeneratorConfig {
        seed: args.seed,
        users: args.users,
        events: args.events,
        allowed_lateness: ms(args.job.allowed_lateness),
        ..GeneratorConfig::default()
    };
    let mut job = args.job.job(SourceSpec::Generator(generator), args.job.control(true, !args.no_default_rules));
    job.decisions_path = args.output.clone();
    job.progress = true;
    job.expected_events = (args.cluster.processes == 1).then_some(args.events);
    let is_reporter = args.cluster.process == 0;
    let report = run(args.cluster.timely_config()?, job)?;
    if is_reporter {
        print_report(&report, args.json)?;
    }
    Ok(())
}

fn replay(args: ReplayArgs) -> Result<()> {
    let mut job = args.job.job(SourceSpec::Files(args.input.clone()), args.job.control(false, false));
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
    if let Some(quality) = &report.quality {
        write!(out, "\n{}", quality.table())?;
    }
    Ok(())
}

fn generate(args: GenerateArgs) -> Result<()> {
    let config = GeneratorConfig {
        seed: args.seed,
        users: args.users,
        events: args.events,
        partitions: args.partitions,
        start: DEFAULT_START,
        ..GeneratorConfig::default()
    };
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
