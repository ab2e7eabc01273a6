//! Where a job's results go: decisions, the alerts and action commands derived from them, and dead
//! letters, to JSON-lines files and to Kafka topics.
//!
//! Worker 0 hands every output the records of each completed time in a fixed order, so outputs
//! are the same whatever the number of workers. Every record carries its `decision_id` (dead
//! letters their source position), so a reader can remove duplicates.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::detect::decision::{Decision, Verdict};
use crate::detect::action::{Severity, ThreatAction};
use crate::event::{DeadLetter, Position, Time};
use crate::state::features::{FeatureName, Features};

pub mod ocsf;
pub mod quality;
pub mod sinks;
pub mod webhooks;

/// How many bytes of each output file are written, for checkpoints (outputs that can be cut back
/// on recovery).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputPositions {
    /// Bytes of the decisions file.
    pub decisions: Option<u64>,
    /// Bytes of the alerts file (written with the decisions).
    pub alerts: Option<u64>,
    /// Bytes of the actions file (written with the decisions).
    pub actions: Option<u64>,
    /// Bytes of the dead-letters file.
    pub dead_letters: Option<u64>,
}

/// An alert for the administrator: a decision whose actions include `alert`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The decision that raised it.
    pub decision_id: String,
    /// The decided event.
    pub event_id: String,
    /// Its user.
    pub user: String,
    /// The time it was judged at.
    pub ts: Time,
    /// `threat`, `blocked`, `retro` or `risk`.
    pub verdict: Verdict,
    /// The model score, if a model was in force.
    pub score: Option<f64>,
    /// The model version in force.
    pub model_version: Option<String>,
    /// How urgent.
    pub severity: Severity,
    /// The matching rules' ids.
    pub rules: Vec<String>,
    /// Their titles.
    pub rule_titles: Vec<String>,
    /// The marked threat the event repeats.
    pub fingerprint_match: Option<String>,
    /// The features the decision was made on.
    pub features: Features,
    /// When the model flagged it: each feature's share of the logit, largest first.
    pub contributions: Vec<(FeatureName, f64)>,
    /// The matching correlation rules and the group each matched for.
    pub correlation_groups: Vec<(String, String)>,
    /// A `blocked` decision's or a blocking decision's end of the block.
    pub blocked_until: Option<Time>,
    /// The event's source address (absent when it had none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_ip: Option<String>,
    /// The threat-intel indicators the event matched (absent when none did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intel: Option<Vec<crate::enrich::intel::IntelHit>>,
    /// A `retro` (or late) decision's event's own time (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_ts: Option<Time>,
    /// A `risk` decision's entity, its score and every detection that contributed (absent
    /// otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<crate::detect::decision::RiskAlert>,
}

/// A command for an enforcement system: revert the event or block the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionCommand {
    /// The decision that asks for it.
    pub decision_id: String,
    /// `revert` or `block`.
    pub action: ThreatAction,
    /// The user.
    pub user: String,
    /// The event to revert (or that caused the block).
    pub event_id: String,
    /// The time it was judged at.
    pub ts: Time,
    /// `revert`: where the event was read (file or Kafka partition, record and byte offset).
    pub position: Option<Position>,
    /// `block`: the user is blocked for events after `ts` up to this time (inclusive).
    pub until: Option<Time>,
}

impl Alert {
    /// The alert a decision raises, if its actions include `alert`.
    pub fn of(d: &Decision) -> Option<Alert> {
        d.actions.contains(&ThreatAction::Alert).then(|| Alert {
            decision_id: d.decision_id.clone(),
            event_id: d.event_id.clone(),
            user: d.user.clone(),
            ts: d.ts,
            verdict: d.verdict,
            score: d.score,
            model_version: d.model_version.clone(),
            severity: d.severity,
            rules: d.rules.clone(),
            rule_titles: d.rule_titles.clone(),
            fingerprint_match: d.fingerprint_match.clone(),
            features: d.features,
            contributions: d.contributions.clone(),
            correlation_groups: d.correlation_groups.clone(),
            blocked_until: d.blocked_until,
            src_ip: d.src_ip.clone(),
            intel: d.intel.clone(),
            event_ts: d.event_ts,
            risk: d.risk.clone(),
        })
    }
}

/// How alerts are written, to files and to the alerts topic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AlertsFormat {
    /// [`Alert`] as JSON.
    #[default]
    Json,
    /// An OCSF Detection Finding (see [`ocsf`]).
    Ocsf,
}

impl AlertsFormat {
    /// The alert record `decision` raises, if its actions include `alert`.
    pub fn record(self, decision: &Decision) -> Option<AlertRecord> {
        let alert = Alert::of(decision)?;
        Some(match self {
            AlertsFormat::Json => AlertRecord::Json(alert),
            AlertsFormat::Ocsf => AlertRecord::Ocsf(ocsf::finding(&alert, decision.position.as_ref(), decision.enrichment.as_ref())),
        })
    }
}

/// An alert as written: an [`Alert`] (its fields in their order) or an OCSF finding.
#[derive(Serialize)]
#[serde(untagged)]
// Made and written at once, one at a time: boxing the alert would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum AlertRecord {
    /// `--alerts-format json`.
    Json(Alert),
    /// `--alerts-format ocsf`.
    Ocsf(serde_json::Value),
}

/// The decision id of an alert record in either format (`decision_id`, or an OCSF finding's
/// `finding_info.uid`).
pub fn alert_decision_id(record: &serde_json::Value) -> Option<&str> {
    record.get("decision_id").or_else(|| record.pointer("/finding_info/uid"))?.as_str()
}

/// Alert fatigue: the alerts of one rule (or of the model) for one user, or of one correlation
/// rule for one of its groups, are raised at most once per period; a marked threat's repeat
/// always alerts. Decisions are not affected, only which of
/// them raise an alert. Fed decisions in output order (time, then `decision_id`), so the outcome
/// is the same on any number of workers, and checkpointed (a resumed job suppresses as the
/// uninterrupted one did).
#[derive(Clone, Debug, Default)]
pub struct AlertGate {
    period: Time,
    /// Detections below this severity raise no alert (they feed entity risk; `risk` decisions
    /// always alert).
    quiet_below: Option<crate::detect::action::Severity>,
    /// `(reason, user or correlation group)` to the time it last alerted.
    last: std::collections::BTreeMap<(String, String), Time>,
    /// When [`AlertGate::forget_before`] next looks for expired entries.
    next_sweep: Time,
}

impl AlertGate {
    /// A gate with `period` (0: every alert is raised), resuming from a checkpoint's `state`.
    pub fn new(period: Time, state: &[(String, String, Time)]) -> Self {
        let mut gate = AlertGate { period, quiet_below: None, last: Default::default(), next_sweep: 0 };
        gate.restore(state);
        gate
    }

    /// The same gate raising no alert for the detections below `severity` (`--risk-only-below`).
    pub fn quiet_below(self, severity: Option<crate::detect::action::Severity>) -> Self {
        AlertGate { quiet_below: severity, ..self }
    }

    /// Resumes from a checkpoint's `state` ([`AlertGate::state`]).
    pub fn restore(&mut self, state: &[(String, String, Time)]) {
        self.last.extend(state.iter().map(|(r, u, t)| ((r.clone(), u.clone()), *t)));
    }

    /// Whether the decision raises its alert: it asks for one, and one of its reasons (a rule,
    /// `model`, or `intel:INDICATOR`) has not alerted for this user within the period.
    pub fn admit(&mut self, d: &Decision) -> bool {
        if !d.actions.contains(&ThreatAction::Alert) {
            return false;
        }
        if d.verdict != crate::detect::decision::Verdict::Risk && self.quiet_below.is_some_and(|floor| d.severity < floor) {
            return false;
        }
        if self.period == 0 || d.fingerprint_match.is_some() {
            return true;
        }
        let mut reasons: Vec<std::borrow::Cow<'_, str>> = d.rules.iter().map(|r| r.as_str().into()).collect();
        if !d.contributions.is_empty() {
            reasons.push("model".into());
        }
        // A threat-intel indicator is a reason of its own (per indicator and user).
        reasons.extend(d.intel.iter().flatten().map(|hit| format!("intel:{}", hit.indicator).into()));
        if reasons.is_empty() {
            return true;
        }
        let mut raised = false;
        for reason in reasons {
            let group = d.correlation_groups.iter().find(|(rule, _)| *rule == reason).map_or(&d.user, |(_, group)| group);
            let key = (reason.into_owned(), group.clone());
            if self.last.get(&key).is_none_or(|t| d.ts >= t.saturating_add(self.period)) {
                self.last.insert(key, d.ts);
                raised = true;
            }
        }
        raised
    }

    /// Forgets the reasons whose suppression has ended by `frontier` (every decision still to come
    /// is at or after it, and would raise their alert anyway), so that the gate holds only what
    /// suppresses; sweeps at most once per period of event time.
    pub fn forget_before(&mut self, frontier: Time) {
        if frontier < self.next_sweep {
            return;
        }
        let period = self.period;
        self.last.retain(|_, t| t.saturating_add(period) > frontier);
        self.next_sweep = frontier.saturating_add(period.max(1));
    }

    /// How many reasons the gate holds.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether the gate holds no reason.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// What a checkpoint at `frontier` keeps: the reasons still suppressing there.
    pub fn state(&self, frontier: Time) -> Vec<(String, String, Time)> {
        self.last.iter().filter(|(_, t)| t.saturating_add(self.period) > frontier).map(|((r, u), t)| (r.clone(), u.clone(), *t)).collect()
    }
}

impl ActionCommand {
    /// The revert and block commands a decision asks for.
    pub fn of(d: &Decision) -> impl Iterator<Item = ActionCommand> + '_ {
        d.actions.iter().filter(|a| **a != ThreatAction::Alert).map(|action| ActionCommand {
            decision_id: d.decision_id.clone(),
            action: *action,
            user: d.user.clone(),
            event_id: d.event_id.clone(),
            ts: d.ts,
            position: (*action == ThreatAction::Revert).then(|| d.position.clone()).flatten(),
            until: (*action == ThreatAction::Block).then_some(d.blocked_until).flatten(),
        })
    }
}

/// A destination for a job's results, driven by worker 0.
pub trait Output {
    /// One decision, with the actions it implies and its alert when `alert` (see [`AlertGate`]).
    fn decision(&mut self, decision: &Decision, alert: bool) -> Result<()>;
    /// One rejected record.
    fn dead_letter(&mut self, dead: &DeadLetter) -> Result<()>;
    /// Called once every record of a time has been handed over; makes what was written durable
    /// enough for the output's guarantees (files: written out; Kafka: handed to the producer).
    fn flush(&mut self) -> Result<()>;
    /// Called before a checkpoint records [`Output::written`]: makes what was written survive a
    /// crash of the machine (files: synced to disk).
    fn sync(&mut self) -> Result<()> {
        self.flush()
    }
    /// Called at the end of the job: waits until everything is written.
    fn finish(&mut self) -> Result<()> {
        self.flush()
    }
    /// How much has been written, for checkpoints (outputs that can be truncated on recovery).
    fn written(&self) -> OutputPositions {
        OutputPositions::default()
    }
}

/// A JSON-lines file and the bytes written to it.
struct LinesFile {
    path: PathBuf,
    out: BufWriter<File>,
    bytes: u64,
}

/// The JSON-lines files a job writes (each optional).
#[derive(Clone, Debug, Default)]
pub struct OutputPaths {
    /// Decisions.
    pub decisions: Option<PathBuf>,
    /// Alerts (decisions whose actions include `alert`).
    pub alerts: Option<PathBuf>,
    /// How the alerts are written.
    pub alerts_format: AlertsFormat,
    /// Revert and block commands.
    pub actions: Option<PathBuf>,
    /// Rejected records.
    pub dead_letters: Option<PathBuf>,
}

/// Decisions, alerts, actions and dead letters as JSON-lines files.
pub struct JsonLinesOutput {
    alerts_format: AlertsFormat,
    decisions: Option<LinesFile>,
    alerts: Option<LinesFile>,
    actions: Option<LinesFile>,
    dead_letters: Option<LinesFile>,
    line: Vec<u8>,
}

/// Creates the file, or with `append` opens it to write on at its end (a resumed job).
fn open(path: Option<&Path>, append: bool) -> Result<Option<LinesFile>> {
    path.map(|p| {
        let file = if append {
            std::fs::OpenOptions::new().append(true).create(true).open(p)
        } else {
            File::create(p)
        };
        let file = file.with_context(|| format!("creating {}", p.display()))?;
        // Checkpoints record output lengths from here: an unknown length is an error, not 0.
        let bytes = file.metadata().with_context(|| format!("reading the length of {}", p.display()))?.len();
        Ok(LinesFile { path: p.to_path_buf(), out: BufWriter::with_capacity(1 << 20, file), bytes })
    })
    .transpose()
}

fn write_line<T: Serialize>(out: &mut Option<LinesFile>, line: &mut Vec<u8>, value: &T) -> Result<()> {
    if let Some(file) = out.as_mut() {
        line.clear();
        serde_json::to_writer(&mut *line, value)?;
        line.push(b'\n');
        file.out.write_all(line).with_context(|| format!("writing {}", file.path.display()))?;
        file.bytes += line.len() as u64;
    }
    Ok(())
}

impl JsonLinesOutput {
    /// Creates (truncates) the files that are named, or with `append` writes on at their ends.
    pub fn open(paths: &OutputPaths, append: bool) -> Result<Self> {
        Ok(JsonLinesOutput {
            alerts_format: paths.alerts_format,
            decisions: open(paths.decisions.as_deref(), append)?,
            alerts: open(paths.alerts.as_deref(), append)?,
            actions: open(paths.actions.as_deref(), append)?,
            dead_letters: open(paths.dead_letters.as_deref(), append)?,
            line: Vec::new(),
        })
    }
}

impl Output for JsonLinesOutput {
    fn decision(&mut self, decision: &Decision, alert: bool) -> Result<()> {
        write_line(&mut self.decisions, &mut self.line, decision)?;
        if let Some(record) = (alert && self.alerts.is_some()).then(|| self.alerts_format.record(decision)).flatten() {
            write_line(&mut self.alerts, &mut self.line, &record)?;
        }
        for command in ActionCommand::of(decision) {
            write_line(&mut self.actions, &mut self.line, &command)?;
        }
        Ok(())
    }

    fn dead_letter(&mut self, dead: &DeadLetter) -> Result<()> {
        write_line(&mut self.dead_letters, &mut self.line, dead)
    }

    fn flush(&mut self) -> Result<()> {
        let files = [&mut self.decisions, &mut self.alerts, &mut self.actions, &mut self.dead_letters];
        for file in files.into_iter().flatten() {
            file.out.flush().with_context(|| format!("writing {}", file.path.display()))?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        let files = [&mut self.decisions, &mut self.alerts, &mut self.actions, &mut self.dead_letters];
        for file in files.into_iter().flatten() {
            file.out.flush().with_context(|| format!("writing {}", file.path.display()))?;
            file.out.get_ref().sync_data().with_context(|| format!("syncing {}", file.path.display()))?;
        }
        Ok(())
    }

    fn written(&self) -> OutputPositions {
        let bytes = |file: &Option<LinesFile>| file.as_ref().map(|f| f.bytes);
        OutputPositions {
            decisions: bytes(&self.decisions),
            alerts: bytes(&self.alerts),
            actions: bytes(&self.actions),
            dead_letters: bytes(&self.dead_letters),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(id: &str, user: &str, ts: Time, rules: &[&str], mark: bool) -> Decision {
        Decision {
            rules: rules.iter().map(|r| r.to_string()).collect(),
            fingerprint_match: mark.then(|| "mark:x".to_string()),
            actions: vec![ThreatAction::Alert],
            severity: Severity::Medium,
            risk_score: 25,
            ..Decision::about(id.into(), id.into(), user.into(), ts, Verdict::Threat)
        }
    }

    #[test]
    fn the_alert_gate_raises_each_reason_once_per_period_and_user() {
        let mut gate = AlertGate::new(100, &[]);
        let raised: Vec<bool> = [
            decision("a", "ann", 0, &["r1"], false),
            decision("b", "ann", 50, &["r1"], false),   // r1 for ann: suppressed
            decision("c", "bob", 60, &["r1"], false),   // another user
            decision("d", "ann", 70, &["r1", "r2"], false), // r2 is new
            decision("e", "ann", 99, &["r1", "r2"], false),
            decision("f", "ann", 100, &["r1"], false),  // a period after `a`
            decision("g", "ann", 101, &["r1"], true),   // a mark's repeat always alerts
        ]
        .iter()
        .map(|d| gate.admit(d))
        .collect();
        assert_eq!(raised, [true, false, true, true, false, true, true]);
        // Resuming from the state at 150 suppresses as the gate itself does.
        let mut resumed = AlertGate::new(100, &gate.state(150));
        for (d, expected) in [(decision("h", "ann", 160, &["r2"], false), false), (decision("i", "ann", 170, &["r2"], false), true)] {
            assert_eq!((resumed.admit(&d), gate.admit(&d)), (expected, expected), "{}", d.decision_id);
        }
        assert!(AlertGate::new(0, &[]).admit(&decision("j", "ann", 0, &["r1"], false)));
        // Forgetting what no longer suppresses changes no outcome, and keeps the gate small.
        let mut pruned = AlertGate::new(100, &[]);
        let mut kept = AlertGate::new(100, &[]);
        for t in 0..2_000u64 {
            let d = decision(&format!("k{t}"), &format!("user{}", t % 50), t * 7, &["r1"], false);
            pruned.forget_before(d.ts);
            assert_eq!(pruned.admit(&d), kept.admit(&d), "{t}");
        }
        assert!(pruned.len() <= 50 && kept.len() == 50, "{} {}", pruned.len(), kept.len());
        let mut expiring = AlertGate::new(100, &[]);
        for u in 0..1_000 {
            expiring.admit(&decision(&format!("m{u}"), &format!("u{u}"), 10, &["r1"], false));
        }
        expiring.forget_before(110);
        assert!(expiring.is_empty());
    }
}
