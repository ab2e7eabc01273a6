//! The command line: `run`, `replay`, `train`, `evaluate`, `model publish`, `generate`, `produce`,
//! `consume`, `dataflows`, with timely's cluster options (`-w`, `-n`, `-p`, `-h`) merged into the
//! same parser.

pub mod control;
pub mod data;
pub mod jobs;
pub mod models;
pub mod options;


use anyhow::Result;
use clap::{Parser, Subcommand};

use self::control::{mark, unblock, MarkArgs, UnblockArgs};
use self::data::{consume, generate, produce, ConsumeArgs, GenerateArgs, ProduceArgs};
use self::jobs::{replay, run_generated, ReplayArgs, RunArgs};
use self::models::{evaluate, publish, train, EvaluateArgs, ModelCommand, TrainArgs};

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
        Command::Dataflows => {
            for d in crate::dataflows::all() {
                println!("{:<16} {}", d.name(), d.description());
            }
            Ok(())
        }
    }
}

