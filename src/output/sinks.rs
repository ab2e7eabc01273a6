//! The two sinks of a job, on worker 0: decisions (with the alerts and action commands they
//! imply) and side records (dead letters, ground-truth labels, partition counts).
//!
//! Each hands the job's [`Output`]s a time's records once every input has passed that time,
//! sorted (decisions by `decision_id`, dead letters by position), so an output is the same bytes
//! whatever the number of workers or processes. Both are checkpointed operators: their state is
//! their outputs' lengths once everything before a barrier is written (and the alert gate's),
//! which a restored job cuts its files back to.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::StreamVec;

use crate::checkpoint::coordinator::CheckpointStats;
use crate::checkpoint::operator::{CheckpointedOperator, CheckpointedState, StateCheckpoints, Step};
use crate::checkpoint::{Checkpoint, PartitionStats};
use crate::detect::decision::Decision;
use crate::event::{DeadLetter, Time};
use crate::ingest::truth::Label;
use crate::ingest::partition::{ErrorSlot, SideRecord};
use crate::output::quality::Quality;
use crate::output::{AlertGate, Output, OutputPositions};

/// What a job did (returned by worker 0; other workers return `None`).
#[derive(Debug, Default)]
pub struct JobReport {
    /// Valid events read.
    pub events: u64,
    /// Records rejected.
    pub rejected: u64,
    /// Late events.
    pub late: u64,
    /// Decisions made.
    pub decisions: u64,
    /// Wall-clock time of the dataflow.
    pub elapsed: Duration,
    /// Counts per partition.
    pub partitions: Vec<PartitionStats>,
    /// Quality against ground truth, when the source has labels.
    pub quality: Option<Quality>,
    /// Decisions, when collected, in output order.
    pub collected_decisions: Vec<Decision>,
    /// Dead letters, when collected, in output order.
    pub collected_dead_letters: Vec<DeadLetter>,
    /// What checkpointing did, when the job checkpoints.
    pub checkpoints: Option<CheckpointStats>,
}

impl JobReport {
    /// Events per second.
    pub fn throughput(&self) -> f64 {
        (self.events + self.rejected) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What the sinks of one worker share: the outputs (worker 0's; none elsewhere), what they
/// accumulate for the report, and whether each sink has seen the end of its input.
#[derive(Clone)]
pub struct Sinks {
    outputs: Rc<RefCell<Vec<Box<dyn Output>>>>,
    results: Rc<RefCell<Results>>,
    errors: ErrorSlot,
    collect: bool,
    /// Whether the source has ground truth: the decided events are then kept for the quality
    /// report (a finite run of the generator); otherwise nothing grows with the decisions.
    labelled: bool,
    decisions_done: Rc<Cell<bool>>,
    side_done: Rc<Cell<bool>>,
}

#[derive(Default)]
struct Results {
    report: JobReport,
    labels: Vec<Label>,
    decided: Vec<(String, String, Time)>,
    /// Per alert, the events it covers.
    alerted: Vec<Vec<String>>,
}

impl Sinks {
    /// Sinks writing to `outputs` (empty on workers other than 0); write errors go to `errors`;
    /// with `collect`, decisions and dead letters are kept for the report; with `labelled` (a
    /// source with ground truth), what the quality report needs.
    pub fn new(outputs: Vec<Box<dyn Output>>, errors: ErrorSlot, collect: bool, labelled: bool) -> Self {
        Sinks {
            outputs: Rc::new(RefCell::new(outputs)),
            results: Rc::default(),
            errors,
            collect,
            labelled,
            decisions_done: Rc::default(),
            side_done: Rc::default(),
        }
    }

    /// Whether both sinks have written everything.
    pub fn done(&self) -> bool {
        self.decisions_done.get() && self.side_done.get()
    }

    /// Finishes every output (waits until everything is written).
    pub fn finish(&self) {
        for output in self.outputs.borrow_mut().iter_mut() {
            self.keep_error(output.finish());
        }
    }

    /// The report of what the sinks saw, with quality against the labels when there were any.
    pub fn report(&self) -> JobReport {
        let mut results = self.results.borrow_mut();
        let results = &mut *results;
        results.report.partitions.sort_by(|a, b| a.partition.cmp(&b.partition));
        if !results.labels.is_empty() {
            let quality = Quality::compute(&results.labels, &results.decided, results.report.events);
            results.report.quality = Some(quality.with_alerts(&results.labels, &results.alerted));
        }
        std::mem::take(&mut results.report)
    }

    /// Keeps the first error (the job ends with it once the dataflow is done).
    fn keep_error(&self, result: Result<()>) {
        if let Err(error) = result {
            self.errors.borrow_mut().get_or_insert(error);
        }
    }

    /// What the outputs hold, synced to disk first (for a checkpoint).
    fn synced(&self) -> OutputPositions {
        for output in self.outputs.borrow_mut().iter_mut() {
            self.keep_error(output.sync());
        }
        self.written()
    }

    fn written(&self) -> OutputPositions {
        let mut all = OutputPositions::default();
        for output in self.outputs.borrow().iter() {
            let w = output.written();
            all.decisions = all.decisions.or(w.decisions);
            all.alerts = all.alerts.or(w.alerts);
            all.actions = all.actions.or(w.actions);
            all.dead_letters = all.dead_letters.or(w.dead_letters);
        }
        all
    }
}

/// The decision sink's checkpointed state: the outputs' lengths and the alert gate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionSinkPart {
    /// The decisions, alerts and actions files' lengths.
    pub files: OutputPositions,
    /// The alert gate's `(reason, user, last alert)` still suppressing at the frontier.
    pub alert_gate: Vec<(String, String, Time)>,
}

/// The side sink's checkpointed state: the dead-letter file's length.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideSinkPart {
    /// The dead letters' file length.
    pub dead_letters: Option<u64>,
}

const DECISION_SINK: &str = "decision-sink";
const SIDE_SINK: &str = "side-sink";

/// The file lengths a restored job cuts its outputs back to.
pub fn restored_positions(checkpoint: &Checkpoint) -> Result<OutputPositions> {
    let decisions: Vec<DecisionSinkPart> = checkpoint.entries(DECISION_SINK)?;
    let side: Vec<SideSinkPart> = checkpoint.entries(SIDE_SINK)?;
    let files = decisions.into_iter().next().map(|d| d.files).unwrap_or_default();
    Ok(OutputPositions { dead_letters: side.into_iter().next().and_then(|s| s.dead_letters), ..files })
}

/// The sinks' parts of a checkpoint that records the outputs as they are before anything is
/// written (a Kafka job's checkpoint at 0, so that what a run killed before its first checkpoint
/// wrote is not written again).
pub fn initial_parts(files: OutputPositions) -> Result<Vec<crate::checkpoint::operator::StatePart>> {
    use crate::checkpoint::operator::StatePart;
    let decisions = DecisionSinkPart { files: OutputPositions { dead_letters: None, ..files.clone() }, alert_gate: Vec::new() };
    let side = SideSinkPart { dead_letters: files.dead_letters };
    Ok(vec![
        StatePart { name: DECISION_SINK.into(), version: 1, bytes: bincode::serialize(&vec![decisions])? },
        StatePart { name: SIDE_SINK.into(), version: 1, bytes: bincode::serialize(&vec![side])? },
    ])
}

struct DecisionSink {
    sinks: Sinks,
    gate: AlertGate,
    pending: BTreeMap<Time, Vec<Decision>>,
}

impl CheckpointedState for DecisionSink {
    type Entry = DecisionSinkPart;

    fn part(&self) -> (&'static str, u32) {
        (DECISION_SINK, 1)
    }

    fn route(_: &DecisionSinkPart) -> u64 {
        0
    }

    fn import(&mut self, entries: Vec<DecisionSinkPart>, _at: Time) {
        if let Some(part) = entries.into_iter().next() {
            self.gate.restore(&part.alert_gate);
        }
    }

    fn export(&mut self, at: Time, entries: &mut Vec<DecisionSinkPart>) {
        if !self.sinks.outputs.borrow().is_empty() {
            entries.push(DecisionSinkPart { files: self.sinks.synced(), alert_gate: self.gate.state(at) });
        }
    }
}

impl DecisionSink {
    /// Writes the decisions of every time before `upto`, in `decision_id` order.
    fn write_before(&mut self, upto: Option<Time>) {
        let mut wrote = false;
        let mut results = self.sinks.results.borrow_mut();
        let mut outputs = self.sinks.outputs.borrow_mut();
        while let Some(entry) = self.pending.first_entry() {
            if upto.is_some_and(|upto| *entry.key() >= upto) {
                break;
            }
            let mut ready = entry.remove();
            ready.sort_by(|a, b| a.decision_id.cmp(&b.decision_id));
            wrote = true;
            for d in ready {
                let alert = self.gate.admit(&d);
                for output in outputs.iter_mut() {
                    self.sinks.keep_error(output.decision(&d, alert));
                }
                results.report.decisions += 1;
                count_decision(&d, alert);
                if self.sinks.labelled {
                    if alert {
                        let covered = match &d.risk {
                            Some(risk) => risk.contributions.iter().map(|c| c.event_id.clone()).collect(),
                            None => vec![d.event_id.clone()],
                        };
                        results.alerted.push(covered);
                    }
                    if d.risk.is_none() {
                        results.decided.push((d.event_id.clone(), d.user.clone(), d.ts));
                    }
                }
                if self.sinks.collect {
                    results.report.collected_decisions.push(d);
                }
            }
        }
        if wrote {
            for output in outputs.iter_mut() {
                self.sinks.keep_error(output.flush());
            }
        }
        if let Some(upto) = upto {
            self.gate.forget_before(upto);
        }
    }
}

/// Adds a decision written to the live metrics, and an alert to the console's when one is open.
fn count_decision(d: &Decision, alert: bool) {
    let metrics = &crate::metrics::METRICS;
    metrics.decisions.with_label_values(&[d.verdict.as_str()]).inc();
    if alert {
        metrics.alerts.inc();
        if crate::recent::RECENT.is_enabled() {
            match serde_json::to_string(d) {
                Ok(json) => crate::recent::RECENT.push(json),
                Err(error) => tracing::warn!("an alert the console cannot show: {error}"),
            }
        }
    }
    for rule in &d.rules {
        metrics.rule_hits.with_label_values(&[rule.as_str()]).inc();
    }
}

/// The decision sink: gathers the decisions on worker 0 and writes them per completed time.
/// Alerts of one rule (or the model) for one user are raised at most once per
/// `alert_suppression` ms (see [`AlertGate`]).
pub fn decision_sink<'s>(decisions: StreamVec<'s, Time, Decision>, sinks: &Sinks, gate: AlertGate, checkpoints: &StateCheckpoints<'s>) {
    let state = DecisionSink { sinks: sinks.clone(), gate, pending: BTreeMap::new() };
    let mut op = CheckpointedOperator::new("DecisionSink", checkpoints, state);
    let mut decisions_in = op.new_input(decisions, Exchange::new(|_: &Decision| 0));
    let done = Rc::clone(&sinks.decisions_done);
    op.build(move |sink, step| match step {
        // Decisions carry their time (`ts`); messages may be stamped earlier.
        Step::Receive => decisions_in.for_each(|_cap, data| {
            for d in data.drain(..) {
                sink.pending.entry(d.ts).or_default().push(d);
            }
        }),
        Step::Restored { .. } => {}
        Step::Advance(upto) => {
            sink.write_before(upto);
            if upto.is_none() {
                done.set(true);
            }
        }
    });
}

struct SideSink {
    sinks: Sinks,
    pending: BTreeMap<Time, Vec<SideRecord>>,
}

impl CheckpointedState for SideSink {
    type Entry = SideSinkPart;

    fn part(&self) -> (&'static str, u32) {
        (SIDE_SINK, 1)
    }

    fn route(_: &SideSinkPart) -> u64 {
        0
    }

    fn import(&mut self, _entries: Vec<SideSinkPart>, _at: Time) {}

    fn export(&mut self, _at: Time, entries: &mut Vec<SideSinkPart>) {
        if !self.sinks.outputs.borrow().is_empty() {
            entries.push(SideSinkPart { dead_letters: self.sinks.synced().dead_letters });
        }
    }
}

impl SideSink {
    /// Writes the dead letters of every time before `upto` (by position), and keeps the labels and
    /// counts for the report.
    fn write_before(&mut self, upto: Option<Time>) {
        let mut wrote = false;
        let mut results = self.sinks.results.borrow_mut();
        let mut outputs = self.sinks.outputs.borrow_mut();
        while let Some(entry) = self.pending.first_entry() {
            if upto.is_some_and(|upto| *entry.key() >= upto) {
                break;
            }
            let mut dead: Vec<DeadLetter> = Vec::new();
            for record in entry.remove() {
                match record {
                    SideRecord::DeadLetter(d) => dead.push(d),
                    SideRecord::Label(l) => results.labels.push(l),
                    SideRecord::Finished(stats) => {
                        results.report.events += stats.events;
                        results.report.rejected += stats.rejected;
                        results.report.late += stats.late;
                        results.report.partitions.push(stats);
                    }
                }
            }
            dead.sort_by(|a, b| a.position.cmp(&b.position));
            wrote |= !dead.is_empty();
            for d in dead {
                for output in outputs.iter_mut() {
                    self.sinks.keep_error(output.dead_letter(&d));
                }
                if self.sinks.collect {
                    results.report.collected_dead_letters.push(d);
                }
            }
        }
        // Written out before a checkpoint counts the file's bytes.
        if wrote {
            for output in outputs.iter_mut() {
                self.sinks.keep_error(output.flush());
            }
        }
    }
}

/// The side sink: dead letters written per completed time (in a stable order), labels and counts
/// kept for the report.
pub fn side_sink<'s>(side: StreamVec<'s, Time, SideRecord>, sinks: &Sinks, checkpoints: &StateCheckpoints<'s>) {
    let state = SideSink { sinks: sinks.clone(), pending: BTreeMap::new() };
    let mut op = CheckpointedOperator::new("SideSink", checkpoints, state);
    let mut side_in = op.new_input(side, Exchange::new(|_: &SideRecord| 0));
    let done = Rc::clone(&sinks.side_done);
    op.build(move |sink, step| match step {
        Step::Receive => side_in.for_each(|cap, data| sink.pending.entry(cap.least().copied().unwrap_or_default()).or_default().append(data)),
        Step::Restored { .. } => {}
        Step::Advance(upto) => {
            sink.write_before(upto);
            if upto.is_none() {
                done.set(true);
            }
        }
    });
}
