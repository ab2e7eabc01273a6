//! threatflow: real-time threat detection for the activity streams of cloud applications, on
//! timely-dataflow and differential-dataflow.
//!
//! Activity events feed a dataflow that incrementally maintains per-user feature aggregates
//! (arranged once, shared by every detector), looks each event up *as of its own time* against
//! those features and against the models and rules in force then, and emits threat decisions.
//! The same input gives the same decisions on any number of workers or processes.
//!
//! ```
//! use threatflow::control::{ControlSpec, ModelSource, RulesSource};
//! use threatflow::engine::run;
//! use threatflow::job::{JobSpec, SourceSpec};
//! use threatflow::detect::rules::parse_rules;
//!
//! // Twelve failed logins in a minute, then a success.
//! let mut lines = String::new();
//! for i in 0..13u64 {
//!     let action = if i < 12 { "login_failed" } else { "login" };
//!     lines += &format!("{{\"event_id\":\"e{i}\",\"ts\":{},\"user\":\"ann\",\"action\":\"{action}\"}}\n", 1_000 + i * 5_000);
//! }
//! let mut job = JobSpec::new("threat", SourceSpec::Memory(vec![lines.into_bytes()]));
//! job.control = ControlSpec {
//!     model: Some(ModelSource::Bytes(threatflow::detect::model::DEFAULT_MODEL.to_vec())),
//!     rules: vec![RulesSource::Specs(parse_rules(
//!         r#"[{"id": "brute-force", "features": {"failed_logins_5m": {"gte": 10}}}]"#,
//!     )?)],
//!     ..Default::default()
//! };
//! job.collect = true;
//! let report = run(timely::Config::process(2), job)?;
//! // The rule fires from the tenth failure on; every decision names the model and its score.
//! let by_rule: Vec<_> = report.collected_decisions.iter().filter(|d| d.rules == ["brute-force"]).map(|d| d.event_id.as_str()).collect();
//! assert_eq!(by_rule, ["e9", "e10", "e11", "e12"]);
//! assert!(report.collected_decisions.iter().all(|d| d.model_version.as_deref() == Some("default-trained-1") && d.score.is_some()));
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Modules, in layers: each imports only from its own layer or those below it, and no files
//! import each other in a circle (`tests/layers.rs` checks both).
//!
//! | layer | modules | what they do |
//! |---|---|---|
//! | 1 | [`event`], [`location`], [`enrich`], [`metrics`], [`recent`] | the activity event, time and user keys; where artifacts live; GeoIP/ASN databases and threat-intel indicators; the live metrics and alerts |
//! | 2 | [`checkpoint`] | the checkpoint format, the one layer for checkpointed state, the coordinator |
//! | 3 | [`ingest`] | partitions and watermarks, files, the generator, providers' mappings |
//! | 4 | [`state`] | feature windows, windowed per-user state, the as-of lookup |
//! | 5 | [`detect`] | models, rules, Sigma, marks, threat-intel matching, the control collection, decisions, correlation, verdicts |
//! | 6 | [`control`] | where the control collection comes from: files, followed files and directories, indicator feeds |
//! | 7 | [`dataflows`] | the `Dataflow` trait, what every dataflow receives, one file per dataflow |
//! | 8 | [`output`] | files, alerts, the sinks, the report |
//! | 9 | [`kafka`] | topics in and out |
//! | 10 | [`job`] | what a job is: its source, control, outputs and checkpoints |
//! | 11 | [`render`] | the pipeline, top to bottom: source, features, dataflow, correlation, verdicts, sinks |
//! | 12 | [`engine`] | the worker loop: restore, outputs, checkpoints, the control feed, the report |
//! | 13 | [`training`] | datasets from the serving dataflow, fitting, evaluation |
//! | 14 | [`cli`] | the `threatflow` command |
//!
//! The semantics (events, time, windows, decisions, checkpoints) are in `docs/semantics.md`.

#![deny(missing_docs)]

pub mod checkpoint;
pub mod cli;
pub mod control;
pub mod dataflows;
pub mod detect;
pub mod engine;
pub mod enrich;
pub mod event;
pub mod ingest;
pub mod job;
pub mod kafka;
pub mod location;
pub mod metrics;
pub mod recent;
pub mod output;
pub mod render;
pub mod state;
pub mod training;
