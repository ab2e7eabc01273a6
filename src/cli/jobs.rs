//! `threatflow run` and `threatflow replay`: a job over the generator, Kafka or files, and its report.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::control::ControlSpec;
use crate::engine::run;
use crate::output::sinks::JobReport;
use crate::ingest::generator::GeneratorConfig;
use crate::kafka::source::KafkaSource;
use crate::job::SourceSpec;
use super::options::{ClusterArgs, GeneratorArgs, JobArgs, KafkaArgs};
use super::options::{ms, stop_on_signals};

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

pub(super) fn run_generated(args: RunArgs) -> Result<()> {
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
    let report = run_serving(&args.job, args.cluster.timely_config()?, job)?;
    if is_reporter {
        print_report(&report, args.json)?;
    }
    Ok(())
}

pub(super) fn replay(args: ReplayArgs) -> Result<()> {
    let mut job = args.job.job(SourceSpec::Files(args.input.clone()), args.job.control(false, false)?)?;
    job.decisions_path = Some(args.output.clone());
    if job.dead_letters_path.is_none() {
        job.dead_letters_path = Some(args.output.with_extension("dead-letters.jsonl"));
    }
    let is_reporter = args.cluster.process == 0;
    let report = run_serving(&args.job, args.cluster.timely_config()?, job)?;
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

/// Runs `job`, serving its metrics and console when `--metrics-addr` and `--console` ask, and
/// lingering after it ends for `--linger` (or until a signal sets the job's stop flag).
fn run_serving(args: &JobArgs, config: timely::Config, job: crate::job::JobSpec) -> Result<JobReport> {
    if args.metrics_addr.is_none() && args.console.is_none() {
        return run(config, job);
    }
    if let Some(addr) = args.metrics_addr {
        super::serve::serve_metrics(addr)?;
    }
    if let Some(addr) = args.console {
        super::serve::serve_console(addr, console_token(args)?)?;
    }
    let stop = std::sync::Arc::clone(&job.stop);
    let report = run(config, job);
    let metrics = &crate::metrics::METRICS;
    metrics.set_ready(false);
    metrics.finished.set(1);
    let until = std::time::Instant::now() + args.linger;
    while std::time::Instant::now() < until && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    report
}

/// The console's token: `--console-token-file`, else `THREATFLOW_CONSOLE_TOKEN`.
fn console_token(args: &JobArgs) -> Result<Option<String>> {
    let token = match &args.console_token_file {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| format!("reading the console token {}", path.display()))?),
        None => std::env::var("THREATFLOW_CONSOLE_TOKEN").ok(),
    };
    Ok(token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
}

pub(super) fn print_report(report: &JobReport, json: bool) -> Result<()> {
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
