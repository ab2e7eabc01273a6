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
//! use threatflow::engine::{run, JobSpec};
//! use threatflow::rules::parse_rules;
//! use threatflow::source::SourceSpec;
//!
//! // Twelve failed logins in a minute, then a success.
//! let mut lines = String::new();
//! for i in 0..13u64 {
//!     let action = if i < 12 { "login_failed" } else { "login" };
//!     lines += &format!("{{\"event_id\":\"e{i}\",\"ts\":{},\"user\":\"ann\",\"action\":\"{action}\"}}\n", 1_000 + i * 5_000);
//! }
//! let mut job = JobSpec::new("threat", SourceSpec::Memory(vec![lines.into_bytes()]));
//! job.control = ControlSpec {
//!     model: Some(ModelSource::Bytes(threatflow::model::DEFAULT_MODEL.to_vec())),
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
//! Modules, in the order data flows through them: [`source`] (partitions, watermarks, dead
//! letters) and [`generator`]; [`event`]; [`shared`] (the inputs every dataflow shares: events by
//! user, the [`features`] arrangement, the [`control`] arrangement of [`model`]s and [`rules`]);
//! [`as_of`] (the half join); [`dataflows`] (one file per dataflow); [`decision`]; [`correlation`]
//! (Sigma correlation windows) and [`verdicts`] (correlation matches, blocks); [`engine`]
//! (workers, sinks) and [`output`]; [`kafka`] (topics in and out); [`eval`] (quality against
//! ground truth); [`cli`].

#![deny(missing_docs)]

pub mod as_of;
pub mod checkpoint;
pub mod cli;
pub mod compare;
pub mod control;
pub mod control_feed;
pub mod correlation;
#[path = "../dataflows/mod.rs"]
pub mod dataflows;
pub mod decision;
pub mod engine;
pub mod eval;
pub mod event;
pub mod features;
pub mod generator;
pub mod kafka;
pub mod location;
pub mod mapping;
pub mod marks;
pub mod model;
pub mod output;
pub mod rules;
pub mod shared;
pub mod sigma;
pub mod source;
pub mod training;
pub mod verdicts;
