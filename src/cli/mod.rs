//! The command line: `run`, `replay`, `train`, `evaluate`, `model publish`, `generate`, `produce`,
//! `consume`, `test`, `backtest`, `dataflows`, with timely's cluster options (`-w`, `-n`, `-p`,
//! `-h`) merged into the same parser.

pub mod backtest;
pub mod config;
pub mod control;
pub mod data;
pub mod jobs;
pub mod models;
pub mod options;
pub mod rule_tests;
pub mod serve;


use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use self::backtest::{backtest, BacktestArgs};
use self::control::{mark, unblock, MarkArgs, UnblockArgs};
use self::data::{consume, generate, produce, ConsumeArgs, GenerateArgs, ProduceArgs};
use self::jobs::{replay, run_generated, ReplayArgs, RunArgs};
use self::models::{evaluate, publish, train, EvaluateArgs, ModelCommand, TrainArgs};
use self::rule_tests::{test_rules, TestArgs};

/// threatflow: real-time threat detection for cloud-application activity streams.
#[derive(Debug, Parser)]
#[command(name = "threatflow", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `threatflow config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file and print the effective configuration of a job using it (the
    /// file's settings, else the defaults; secrets redacted).
    Check {
        /// The file (TOML: the options of the command, by long name).
        file: std::path::PathBuf,
        /// The command it configures.
        #[arg(long = "for", default_value = "run", value_parser = config::CONFIGURABLE)]
        command: String,
    },
}

/// `threatflow intel ...`.
#[derive(Debug, Subcommand)]
pub enum IntelCommand {
    /// Read indicator files as a job would (`--intel`) and print, per file, how many indicators
    /// of each kind load and why each refused record was refused (JSON lines); fails when any
    /// record is refused.
    Check {
        /// Indicator files or directories.
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
    },
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
    /// Test rules as code: run each test case of the rules under a directory (a rule's `tests:`
    /// key, `*.tests.yml` files) through a job, compare the rule's detections with the expected
    /// ones, and fail on any difference (`--junit FILE` for CI).
    Test(TestArgs),
    /// Compare a rule set with a baseline on the same history: per rule, hits, alerts per day, and
    /// the events only one side flags.
    Backtest(BacktestArgs),
    /// List the dataflows `--dataflow` can select.
    Dataflows,
    /// Sign a control update (a model update, a mark or unblock, rules) with the control key:
    /// prints the one-line record to send to a control topic (`produce --input`, any Kafka tool).
    SignUpdate {
        /// The key file (also `THREATFLOW_CONTROL_KEY_FILE`).
        #[arg(long, value_name = "PATH")]
        control_key_file: Option<std::path::PathBuf>,
        /// The update (default: standard input), signed whole.
        file: Option<std::path::PathBuf>,
    },
    /// Job settings in a TOML file (`run --config FILE`, `replay --config FILE`).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Threat-intel indicator files (`run --intel`, `replay --intel`).
    #[command(subcommand)]
    Intel(IntelCommand),
    /// Describe the checkpoints in a directory, newest first, as JSON lines: frontier, dataflow,
    /// state parts, the output lengths recorded, or why one cannot be used.
    Checkpoints {
        /// The checkpoint directory (`--checkpoint-dir` of the job).
        dir: std::path::PathBuf,
    },
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
        Command::Unblock(args) => unblock(args),
        Command::Generate(args) => generate(args),
        Command::Produce(args) => produce(args),
        Command::Consume(args) => consume(args),
        Command::Test(args) => test_rules(args),
        Command::Backtest(args) => backtest(args),
        Command::Dataflows => {
            for d in crate::dataflows::all() {
                println!("{:<16} {}", d.name(), d.description());
            }
            Ok(())
        }
        Command::Checkpoints { dir } => describe_checkpoints(dir),
        Command::Intel(IntelCommand::Check { paths }) => check_indicators(&paths),
        Command::Config(ConfigCommand::Check { file, command }) => {
            print!("{}", config::effective(&command, &file)?);
            Ok(())
        }
        Command::SignUpdate { control_key_file, file } => {
            let key = crate::control::signing::ControlKey::from_file_or_env(control_key_file.as_deref())?
                .context("no control key: --control-key-file PATH or THREATFLOW_CONTROL_KEY_FILE")?;
            let update = match file {
                Some(path) => std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
                None => std::io::read_to_string(std::io::stdin()).context("reading the update from standard input")?,
            };
            println!("{}", key.sign(update.trim_end()));
            Ok(())
        }
    }
}

/// Prints one JSON line per indicator file: the indicators by kind, removals, and the refusals.
fn check_indicators(paths: &[std::path::PathBuf]) -> Result<()> {
    let mut refusals = 0;
    for path in paths {
        for file in crate::control::intel::indicator_files(path)? {
            let (updates, refused) = crate::control::intel::read_file(&file)?;
            let mut by_kind = std::collections::BTreeMap::<&str, usize>::new();
            for indicator in updates.iter().filter_map(|u| u.indicator.as_ref()) {
                *by_kind.entry(indicator.kind.as_str()).or_default() += 1;
            }
            let removals = updates.iter().filter(|u| u.indicator.is_none()).count();
            refusals += refused.len();
            println!("{}", serde_json::json!({"file": file, "indicators": by_kind, "removals": removals, "refused": refused}));
        }
    }
    anyhow::ensure!(refusals == 0, "{refusals} record(s) refused");
    Ok(())
}

/// Prints one JSON line per checkpoint in `dir`, newest first.
fn describe_checkpoints(path: std::path::PathBuf) -> Result<()> {
    let dir = crate::checkpoint::CheckpointDir { path, keep: usize::MAX };
    for (file, checkpoint) in dir.list()? {
        let line = match checkpoint {
            Ok(c) => serde_json::json!({
                "file": file,
                "frontier": c.frontier,
                "dataflow": c.dataflow,
                "partitions": c.partitions,
                "state": c.state.iter().map(|p| serde_json::json!({"name": p.name, "version": p.version, "bytes": p.bytes.len()})).collect::<Vec<_>>(),
                "outputs": crate::output::sinks::restored_positions(&c)?,
                "kafka_outputs": c.async_outputs.iter().map(|((topic, partition), end)| serde_json::json!({"topic": topic, "partition": partition, "end": end})).collect::<Vec<_>>(),
            }),
            Err(why) => serde_json::json!({"file": file, "error": why}),
        };
        println!("{line}");
    }
    Ok(())
}
