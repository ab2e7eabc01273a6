//! Runs a job: builds the dataflow on every worker, drives it to completion, writes the outputs.
//!
//! ```text
//! source ──events──► shared inputs (by user: features; broadcast: control) ──► dataflow ──► decisions sink (worker 0)
//!    └──side records (dead letters, labels, counts)───────────────────────────────────────► side sink (worker 0)
//! ```
//! Both sinks run on worker 0 and hand each time's records to the job's [`Output`]s (files, Kafka
//! topics) once the frontier has passed it, sorted, so an output is the same bytes whatever the
//! number of workers or processes. The control input (models, rules) is fed by worker 0: all at
//! once from files, or while the job runs from Kafka topics or followed files and rule
//! directories ([`crate::control_feed`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use differential_dataflow::input::Input as _;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Concat, Input, Operator, Probe};
use timely::dataflow::ProbeHandle;

use crate::checkpoint::{
    truncate_output, Checkpoint, CheckpointDir, CheckpointStats, Coordinator, Gathered, AsyncOutputs, OutputKind, OutputPositions,
    WindowEntry,
};
use crate::control::{ControlLog, ControlSpec};
use crate::control_feed::ControlFeed;
use crate::decision::Decision;
use crate::eval::Quality;
use crate::event::{DeadLetter, Time};
use crate::generator::Label;
use crate::kafka::sink::KafkaOutput;
use crate::kafka::{KafkaConfig, Role};
use crate::output::{JsonLinesOutput, Output};
use crate::shared::{build_shared_with_checkpoints, decisions_of, WindowCheckpoints};
use crate::source::{partitioned_source, Decoding, ErrorSlot, PartitionStats, SideRecord, SourceCheckpoints, SourceConfig, SourceSpec};

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
    /// Records a source reads at a time (see [`SourceConfig::batch`]).
    pub read_batch: usize,
    /// How records become events (size limit, canonical or providers' formats).
    pub decoding: Decoding,
    /// Decisions as JSON lines.
    pub decisions_path: Option<PathBuf>,
    /// Dead letters as JSON lines.
    pub dead_letters_path: Option<PathBuf>,
    /// Alerts as JSON lines.
    pub alerts_path: Option<PathBuf>,
    /// Revert and block commands as JSON lines.
    pub actions_path: Option<PathBuf>,
    /// Alerts of one rule (or the model) for one user are raised at most once per this many ms
    /// (0: every one).
    pub alert_suppression: Time,
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
}

impl JobSpec {
    /// A job running `dataflow` over `source`, writing nothing and collecting nothing.
    pub fn new(dataflow: &str, source: SourceSpec) -> Self {
        JobSpec {
            dataflow: dataflow.to_string(),
            source,
            control: ControlSpec::default(),
            allowed_lateness: 5_000,
            read_batch: SourceConfig::default().batch,
            decoding: Decoding::default(),
            decisions_path: None,
            dead_letters_path: None,
            alerts_path: None,
            actions_path: None,
            alert_suppression: 0,
            block_for: crate::verdicts::DEFAULT_BLOCK_FOR,
            kafka: None,
            stop: Arc::default(),
            checkpoints: None,
            collect: false,
            progress: false,
            expected_events: None,
        }
    }
}

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

/// What worker 0's sinks accumulate.
#[derive(Default)]
struct SinkState {
    report: JobReport,
    labels: Vec<Label>,
    decided: Vec<(String, String, Time)>,
}

/// What the outputs have written so far.
fn written(outputs: &[Box<dyn Output>]) -> OutputPositions {
    let mut all = OutputPositions::default();
    for output in outputs {
        let w = output.written();
        all.decisions = all.decisions.or(w.decisions);
        all.alerts = all.alerts.or(w.alerts);
        all.actions = all.actions.or(w.actions);
        all.dead_letters = all.dead_letters.or(w.dead_letters);
    }
    all
}

/// The windows of a restored checkpoint, given at its frontier by worker 0 (nothing elsewhere).
fn restored_windows_stream<'s>(scope: timely::dataflow::Scope<'s, Time>, windows: Option<(Time, Vec<WindowEntry>)>) -> timely::dataflow::StreamVec<'s, Time, WindowEntry> {
    let mut windows = windows;
    timely::dataflow::operators::generic::operator::source(scope, "RestoredWindows", move |capability, _info| {
        let mut capability = Some(capability);
        move |output| {
            if let Some(cap) = capability.take() {
                if let Some((frontier, entries)) = windows.take() {
                    let cap = cap.delayed(&frontier);
                    output.session(&cap).give_iterator(entries.into_iter());
                }
            }
        }
    })
}

/// Keeps the first error of a result (the job ends with it once the dataflow is done).
fn keep_error(result: Result<()>, errors: &ErrorSlot) {
    if let Err(error) = result {
        errors.borrow_mut().get_or_insert(error);
    }
}

/// Runs a job on a timely configuration; returns worker 0's report.
pub fn run(config: timely::Config, mut job: JobSpec) -> Result<JobReport> {
    if crate::dataflows::find(&job.dataflow).is_none() {
        bail!("unknown dataflow {:?}; known: {}", job.dataflow, crate::dataflows::names().join(", "));
    }
    job.source.prepare()?;
    if let Some(kafka) = &job.kafka {
        // Every process checks (or creates) the topics before any worker starts.
        let topics: Vec<&str> = Role::ALL[1..].iter().map(|r| kafka.topic(*r)).collect();
        kafka.partition_counts(&topics)?;
    }
    let control = Arc::new(job.control.load()?);
    let job_started = Instant::now();
    let (restore, stats) = restore(&job)?;
    let job = Arc::new(job);
    let progress = Arc::new(AtomicU64::new(0));
    let guards =
        timely::execute(config, move |worker| run_worker(worker, &job, &control, &progress, restore.clone(), stats.clone(), job_started))
        .map_err(|e| anyhow!("starting the timely cluster: {e}"))?;
    let mut report = None;
    for result in guards.join() {
        if let Some(r) = result.map_err(|e| anyhow!("a worker failed: {e}"))?? {
            report = Some(r);
        }
    }
    Ok(report.unwrap_or_default())
}

/// The newest valid checkpoint of the job, and the time it took to read.
fn restore(job: &JobSpec) -> Result<(Option<Arc<Checkpoint>>, CheckpointStats)> {
    let Some((dir, _)) = &job.checkpoints else { return Ok(Default::default()) };
    let started = Instant::now();
    let Some(checkpoint) = dir.newest()? else { return Ok(Default::default()) };
    let restore_ms = started.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        frontier = checkpoint.frontier,
        partitions = checkpoint.partitions.len(),
        window_entries = checkpoint.windows.len(),
        restore_ms,
        "resuming from a checkpoint"
    );
    let stats = CheckpointStats { restored_from: Some(checkpoint.frontier), restore_ms: Some(restore_ms), ..Default::default() };
    Ok((Some(Arc::new(checkpoint)), stats))
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    job: &JobSpec,
    control: &ControlLog,
    progress: &Arc<AtomicU64>,
    restored: Option<Arc<Checkpoint>>,
    mut restore_stats: CheckpointStats,
    job_started: Instant,
) -> Result<Option<JobReport>> {
    let index = worker.index();
    let peers = worker.peers();
    let dataflow = crate::dataflows::find(&job.dataflow).ok_or_else(|| anyhow!("unknown dataflow {}", job.dataflow))?;
    let partitions = job.source.partitions(index, peers, &job.decoding, restored.as_deref())?;
    let errors: ErrorSlot = Rc::new(RefCell::new(None));
    let state = Rc::new(RefCell::new(SinkState::default()));
    let mut outputs: Vec<Box<dyn Output>> = Vec::new();
    let mut control_feed = None;
    let mut async_outputs: Option<AsyncOutputs> = None;
    if index == 0 {
        // Worker 0 alone writes the outputs: it alone cuts them back to a restored checkpoint.
        if let Some(checkpoint) = &restored {
            let outputs = &checkpoint.outputs;
            let files = [
                (&job.decisions_path, outputs.decisions),
                (&job.alerts_path, outputs.alerts),
                (&job.actions_path, outputs.actions),
                (&job.dead_letters_path, outputs.dead_letters),
            ];
            for (path, length) in files {
                if let (Some(path), Some(length)) = (path, length) {
                    truncate_output(path, length)?;
                }
            }
        }
        let paths = crate::output::OutputPaths {
            decisions: job.decisions_path.clone(),
            alerts: job.alerts_path.clone(),
            actions: job.actions_path.clone(),
            dead_letters: job.dead_letters_path.clone(),
        };
        let files = JsonLinesOutput::open(&paths, restored.is_some())?;
        outputs.push(Box::new(files));
        if let Some(kafka) = &job.kafka {
            let output = KafkaOutput::new(kafka, restored.as_ref().map(|c| &c.outputs.kafka))?;
            let view = output.checkpoint_view();
            if let (Some((dir, _)), None) = (&job.checkpoints, &restored) {
                // What a run killed before its first checkpoint wrote must not be written again
                // either: a checkpoint at 0 records where the output topics end now.
                let outputs = OutputPositions {
                    decisions: job.decisions_path.as_ref().map(|_| 0),
                    alerts: job.alerts_path.as_ref().map(|_| 0),
                    actions: job.actions_path.as_ref().map(|_| 0),
                    dead_letters: job.dead_letters_path.as_ref().map(|_| 0),
                    kafka: (view.positions)(),
                    alert_gate: Vec::new(),
                };
                dir.write(&Checkpoint { outputs, ..Default::default() }, || Ok(()))?;
            }
            async_outputs = Some(view);
            outputs.push(Box::new(output));
            let restored_control = restored.as_ref().and_then(|c| c.control.as_ref());
            control_feed = Some(crate::kafka::control::start(kafka, control.clone(), restored_control)?);
        } else if let Some(followed) = job.control.followed() {
            let restored_control = restored.as_ref().and_then(|c| c.control.as_ref());
            let reader = crate::control_feed::follow_files(followed);
            control_feed = Some(ControlFeed::start("control-files-reader", reader, control.clone(), restored_control)?);
        }
    }
    let outputs = Rc::new(RefCell::new(outputs));
    let sink_errors = Rc::clone(&errors);
    let collect = job.collect;
    // Each sink sets its flag once its input is complete; the job is over when both are set.
    let decisions_done = Rc::new(std::cell::Cell::new(false));
    let side_done = Rc::new(std::cell::Cell::new(false));

    let probe = ProbeHandle::new();
    let events_probe = ProbeHandle::new();
    let source_config = SourceConfig {
        allowed_lateness: job.allowed_lateness,
        batch: job.read_batch,
        records_read: Arc::clone(progress),
        stop: Arc::clone(&job.stop),
        ..SourceConfig::default()
    };
    let gathered: Rc<RefCell<Gathered>> = Rc::default();
    let checkpointing = job.checkpoints.is_some();
    let (control_input, barrier_input) = worker.dataflow::<Time, _, _>(|scope| {
        let (control_input, control) = scope.new_collection();
        // Checkpoint barriers from worker 0, on every worker; restored windows from worker 0.
        let (barrier_input, barriers) = scope.new_input::<Vec<Time>>();
        let barriers = barriers.broadcast();
        let restored_windows = (index == 0).then(|| restored.as_ref().map(|c| (c.frontier, c.windows.clone()))).flatten();
        let restore_stream = restored_windows_stream(scope, restored_windows);
        let source_checkpoints =
            checkpointing.then(|| SourceCheckpoints { barriers: barriers.clone(), restore: restored.clone() });
        let (events, side, parts) = partitioned_source(
            scope,
            "Source",
            partitions,
            source_config,
            probe.clone(),
            Rc::clone(&errors),
            source_checkpoints,
        );
        let events = events.probe_with(&events_probe);
        let checkpoints = WindowCheckpoints { barriers, restore: restore_stream };
        let (inputs, windows) = build_shared_with_checkpoints(scope, events, control, checkpoints.clone());
        let (decisions, verdict_state) = decisions_of(&*dataflow, inputs, job.block_for, checkpoints);
        let exported = windows.concat(verdict_state);

        // Checkpoint parts and windows: gathered on worker 0.
        let parts_gathered = Rc::clone(&gathered);
        parts.sink(Pipeline, "CheckpointParts", move |(input, frontier)| {
            let mut gathered = parts_gathered.borrow_mut();
            input.for_each(|_, data| {
                for (at, name, part) in data.drain(..) {
                    gathered.add_partition(at, name, part);
                }
            });
            gathered.complete_before(frontier.frontier().first().copied(), false);
        });
        let windows_gathered = Rc::clone(&gathered);
        exported.sink(Pipeline, "CheckpointWindows", move |(input, frontier)| {
            let mut gathered = windows_gathered.borrow_mut();
            input.for_each(|_, data| {
                for (at, entries) in data.drain(..) {
                    gathered.add_windows(at, entries);
                }
            });
            gathered.complete_before(frontier.frontier().first().copied(), true);
        });

        // Decisions: gathered on worker 0, written per completed time in `decision_id` order.
        let sink_state = Rc::clone(&state);
        let write_errors = Rc::clone(&sink_errors);
        let sink_outputs = Rc::clone(&outputs);
        let sink_gathered = Rc::clone(&gathered);
        let mut pending: BTreeMap<Time, Vec<Decision>> = BTreeMap::new();
        let done = Rc::clone(&decisions_done);
        let gate_state = restored.as_ref().map(|c| c.outputs.alert_gate.clone()).unwrap_or_default();
        let mut gate = crate::output::AlertGate::new(job.alert_suppression, &gate_state);
        // The outputs' lengths and the alert gate's state, for a checkpoint at `frontier`.
        let positions = |outputs: &[Box<dyn Output>], gate: &crate::output::AlertGate, frontier: Time| OutputPositions {
            alert_gate: gate.state(frontier),
            ..written(outputs)
        };
        decisions
            .probe_with(&probe)
            .sink(Exchange::new(|_: &Decision| 0), "DecisionSink", move |(input, frontier)| {
                // Decisions carry their time (`ts`); messages may be stamped earlier.
                input.for_each(|_cap, data| {
                    for d in data.drain(..) {
                        pending.entry(d.ts).or_default().push(d);
                    }
                });
                let mut state = sink_state.borrow_mut();
                let mut outputs = sink_outputs.borrow_mut();
                let mut wrote = false;
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let time = *entry.key();
                    sink_gathered.borrow_mut().record_output(OutputKind::Decisions, |f| f <= time, &positions(&outputs, &gate, time));
                    let mut ready = entry.remove();
                    ready.sort_by(|a, b| a.decision_id.cmp(&b.decision_id));
                    wrote = true;
                    for d in ready {
                        let alert = gate.admit(&d);
                        for output in outputs.iter_mut() {
                            keep_error(output.decision(&d, alert), &write_errors);
                        }
                        state.report.decisions += 1;
                        state.decided.push((d.event_id.clone(), d.user.clone(), d.ts));
                        if collect {
                            state.report.collected_decisions.push(d);
                        }
                    }
                }
                sink_gathered.borrow_mut().record_output(
                    OutputKind::Decisions,
                    |f| frontier.frontier().iter().all(|t| *t >= f),
                    &positions(&outputs, &gate, frontier.frontier().first().copied().unwrap_or(Time::MAX)),
                );
                if wrote {
                    for output in outputs.iter_mut() {
                        keep_error(output.flush(), &write_errors);
                    }
                }
                if frontier.is_empty() && !done.get() {
                    done.set(true);
                }
            });

        // Side records: dead letters written as they come (in a stable order per time), labels and counts kept.
        let sink_state = Rc::clone(&state);
        let write_errors = Rc::clone(&sink_errors);
        let sink_outputs = Rc::clone(&outputs);
        let sink_gathered = Rc::clone(&gathered);
        let mut pending: BTreeMap<Time, Vec<SideRecord>> = BTreeMap::new();
        let done = Rc::clone(&side_done);
        side.probe_with(&probe).sink(Exchange::new(|_: &SideRecord| 0), "SideSink", move |(input, frontier)| {
            input.for_each(|cap, data| pending.entry(cap.least().copied().unwrap_or_default()).or_default().append(data));
            let mut state = sink_state.borrow_mut();
            let mut outputs = sink_outputs.borrow_mut();
            while let Some(entry) = pending.first_entry() {
                if frontier.less_equal(entry.key()) {
                    break;
                }
                let time = *entry.key();
                sink_gathered.borrow_mut().record_output(OutputKind::DeadLetters, |f| f <= time, &written(&outputs));
                let mut dead: Vec<DeadLetter> = Vec::new();
                for record in entry.remove() {
                    match record {
                        SideRecord::DeadLetter(d) => dead.push(d),
                        SideRecord::Label(l) => state.labels.push(l),
                        SideRecord::Finished(stats) => {
                            state.report.events += stats.events;
                            state.report.rejected += stats.rejected;
                            state.report.late += stats.late;
                            state.report.partitions.push(stats);
                        }
                    }
                }
                dead.sort_by(|a, b| a.position.cmp(&b.position));
                for d in dead {
                    for output in outputs.iter_mut() {
                        keep_error(output.dead_letter(&d), &write_errors);
                    }
                    if collect {
                        state.report.collected_dead_letters.push(d);
                    }
                }
            }
            sink_gathered.borrow_mut().record_output(
                OutputKind::DeadLetters,
                |f| frontier.frontier().iter().all(|t| *t >= f),
                &written(&outputs),
            );
            if frontier.is_empty() && !done.get() {
                done.set(true);
            }
        });
        (control_input, barrier_input)
    });
    // Worker 0 coordinates checkpoints; the other workers' barrier inputs close at once.
    let mut coordinator = match (&job.checkpoints, index) {
        (Some((dir, interval)), 0) => Some(Coordinator::new(
            dir.clone(),
            *interval,
            barrier_input,
            restored.as_ref().map(|c| c.frontier),
            Rc::clone(&gathered),
            async_outputs.take(),
        )),
        _ => {
            drop(barrier_input);
            None
        }
    };

    // The control collection is fed by worker 0 alone and broadcast. A job without control topics
    // knows all its model and rule updates up front and closes the input at once.
    let mut control_input = Some(control_input);
    if index == 0 {
        if let Some(input) = control_input.as_mut() {
            let log = control_feed.as_ref().map_or_else(|| control.clone(), ControlFeed::log);
            for (control, time, diff) in log.updates() {
                input.update_at(((), control), time, diff);
            }
            // A restored job goes on from the checkpoint's frontier (late updates apply from
            // there). Flushed now: the events may not pass the frontier (and move the input on)
            // until the outputs, which wait on this input, have caught up with them.
            if let (Some(_), Some(checkpoint)) = (&control_feed, &restored) {
                input.advance_to(checkpoint.frontier);
                input.flush();
            }
        }
    }
    if control_feed.is_none() {
        control_input = None;
    }

    let bar = (index == 0 && job.progress).then(|| progress_bar(job.expected_events));
    let started = Instant::now();
    let mut last_draw = Instant::now();
    // A stall (the output frontier still for 10 s while events are pending) is logged with the
    // frontiers that explain it.
    let mut last_output: (Option<Time>, Instant) = (None, Instant::now());
    while !(decisions_done.get() && side_done.get()) {
        let events_frontier = events_probe.with_frontier(|f| f.first().copied());
        let output_frontier = probe.with_frontier(|f| f.first().copied());
        if output_frontier != last_output.0 {
            last_output = (output_frontier, Instant::now());
            if let (Some(restored), None) = (&restored, restore_stats.resumed_ms) {
                if output_frontier.is_none_or(|f| f > restored.frontier) {
                    let resumed_ms = job_started.elapsed().as_secs_f64() * 1e3;
                    restore_stats.resumed_ms = Some(resumed_ms);
                    if index == 0 {
                        tracing::info!(resumed_ms, "restored: the output passed the checkpoint's frontier");
                    }
                }
            }
        } else if last_output.1.elapsed() > Duration::from_secs(10) && events_frontier != output_frontier {
            tracing::warn!(
                worker = index,
                ?events_frontier,
                ?output_frontier,
                control_input = ?control_input.as_ref().map(|i| *i.time()),
                records_read = progress.load(Ordering::Relaxed),
                "the output frontier has not moved for 10 s"
            );
            last_output.1 = Instant::now();
        }
        let control_part = || control_feed.as_ref().map(ControlFeed::checkpoint);
        if let Some(Err(error)) = coordinator.as_mut().map(|c| c.step(events_frontier, control_part)) {
            tracing::error!("checkpoint failed: {error:#}");
            errors.borrow_mut().get_or_insert(error);
            job.stop.store(true, Ordering::Relaxed);
            coordinator = None;
        }
        if let (Some(feed), Some(input)) = (control_feed.as_mut(), control_input.as_mut()) {
            match feed.step(input, events_frontier) {
                Ok(false) => {}
                Ok(true) => control_input = None,
                Err(error) => {
                    // Without its control input the job cannot go on; end it with this error.
                    errors.borrow_mut().get_or_insert(error);
                    job.stop.store(true, Ordering::Relaxed);
                    control_input = None;
                }
            }
        }
        // The control reader wakes this thread with each round; checkpoints are polled.
        worker.step_or_park(Some(Duration::from_millis(if coordinator.is_some() { 1 } else { 10 })));
        if let Some(bar) = bar.as_ref() {
            if last_draw.elapsed() > Duration::from_millis(100) {
                bar.set_position(progress.load(Ordering::Relaxed));
                last_draw = Instant::now();
            }
        }
    }
    let elapsed = started.elapsed();
    if let Some(Err(error)) = coordinator.as_mut().map(Coordinator::finish) {
        errors.borrow_mut().get_or_insert(error);
    }
    let checkpoint_stats = coordinator.as_ref().and_then(|c| c.stats.lock().ok().map(|s| s.clone())).map(|written| CheckpointStats {
        restored_from: restore_stats.restored_from,
        restore_ms: restore_stats.restore_ms,
        resumed_ms: restore_stats.resumed_ms,
        ..written
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    for output in outputs.borrow_mut().iter_mut() {
        keep_error(output.finish(), &errors);
    }
    if let Some(error) = errors.borrow_mut().take() {
        return Err(error);
    }
    if index != 0 {
        return Ok(None);
    }
    let mut state = state.borrow_mut();
    let state = &mut *state;
    state.report.elapsed = elapsed;
    state.report.checkpoints = checkpoint_stats;
    state.report.partitions.sort_by(|a, b| a.partition.cmp(&b.partition));
    if !state.labels.is_empty() {
        state.report.quality = Some(Quality::compute(&state.labels, &state.decided, state.report.events));
    }
    Ok(Some(std::mem::take(&mut state.report)))
}

/// A progress bar of events read (with a length when the total is known).
pub(crate) fn progress_bar(total: Option<u64>) -> indicatif::ProgressBar {
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::no_length(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
