//! Runs a job: renders the pipeline ([`crate::render`]) on every worker, drives it to completion
//! (feeding the control collection, coordinating checkpoints, showing progress), and returns
//! worker 0's report.
//!
//! The control input (models, rules, marks) is fed by worker 0: all at once from files, or while
//! the job runs from Kafka topics or followed files and rule directories
//! ([`crate::control::feed`]).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Result};
use timely::dataflow::ProbeHandle;

use crate::checkpoint::coordinator::{AsyncOutputs, CheckpointStats, Coordinator, Gathered};
use crate::checkpoint::operator::check_parts;
use crate::checkpoint::{truncate_output, Checkpoint};
use crate::control::feed::ControlFeed;
use crate::dataflows::Dataflow;
use crate::detect::control::ControlLog;
use crate::detect::intel::{IntelMode, IntelOptions};
use crate::detect::sigma_set::LatestSigmaSet;
use crate::detect::enrichment::EnrichmentMode;
use crate::event::Time;
use crate::ingest::partition::{Decoding, EarlyMatching, ErrorSlot, SourceConfig};
use crate::job::{JobSpec, SourceSpec};
use crate::kafka::sink::KafkaOutput;
use crate::kafka::Role;
use crate::output::webhooks::Deliveries;
use crate::output::sinks::{initial_parts, restored_positions, JobReport, Sinks};
use crate::output::{JsonLinesOutput, Output, OutputPaths, OutputPositions};
use crate::render::{render, Parts};

/// Runs a job on a timely configuration; returns worker 0's report.
pub fn run(config: timely::Config, mut job: JobSpec) -> Result<JobReport> {
    let Some(dataflow) = crate::dataflows::find(&job.dataflow) else {
        bail!("unknown dataflow {:?}; known: {}", job.dataflow, crate::dataflows::names().join(", "));
    };
    if job.checkpoints.is_some() && !dataflow.checkpointed() {
        bail!("the dataflow {:?} keeps state the checkpoints do not: it cannot run with checkpoints", job.dataflow);
    }
    job.source.prepare()?;
    if let Some(kafka) = &job.kafka {
        // Every process checks (or creates) the topics before any worker starts.
        let roles = Role::ALL[1..].iter().filter(|r| **r != Role::Intel || kafka.intel_topic);
        let topics: Vec<&str> = roles.map(|r| kafka.topic(*r)).collect();
        kafka.partition_counts(&topics)?;
    }
    let one_process = !matches!(config.communication, timely::CommunicationConfig::Cluster { .. });
    let controls = Arc::new(Controls::of(&job, one_process)?);
    let job_started = Instant::now();
    let (restore, stats) = restore(&job, one_process)?;
    let job = Arc::new(job);
    let progress = Arc::new(AtomicU64::new(0));
    let guards =
        timely::execute(config, move |worker| run_worker(worker, &job, &controls, &progress, restore.clone(), stats.clone(), job_started))
        .map_err(|e| anyhow!("starting the timely cluster: {e}"))?;
    let mut report = None;
    for result in guards.join() {
        if let Some(r) = result.map_err(|e| anyhow!("a worker failed: {e}"))?? {
            report = Some(r);
        }
    }
    Ok(report.unwrap_or_default())
}

/// The newest checkpoint the job can resume from, and the time it took to read. One written by
/// another dataflow, or (in a single process, which sees the files worker 0 writes) one that
/// recorded more output than the files hold, is skipped for an older one.
fn restore(job: &JobSpec, one_process: bool) -> Result<(Option<Arc<Checkpoint>>, CheckpointStats)> {
    let Some((dir, _)) = &job.checkpoints else { return Ok(Default::default()) };
    let started = Instant::now();
    let usable = |checkpoint: &Checkpoint| {
        ensure!(checkpoint.dataflow == job.dataflow, "written by the dataflow {:?}, not {:?}", checkpoint.dataflow, job.dataflow);
        if one_process {
            outputs_hold(job, checkpoint)?;
        }
        Ok(())
    };
    let Some(checkpoint) = dir.newest(usable)? else { return Ok(Default::default()) };
    let restore_ms = started.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        frontier = checkpoint.frontier,
        partitions = checkpoint.partitions.len(),
        state_parts = checkpoint.state.len(),
        restore_ms,
        "resuming from a checkpoint"
    );
    let stats = CheckpointStats { restored_from: Some(checkpoint.frontier), restore_ms: Some(restore_ms), ..Default::default() };
    Ok((Some(Arc::new(checkpoint)), stats))
}

/// The job's output files, with the lengths a checkpoint recorded for them.
fn output_lengths<'j>(job: &'j JobSpec, checkpoint: &Checkpoint) -> Result<Vec<(&'j std::path::Path, u64)>> {
    let lengths = restored_positions(checkpoint)?;
    let files = [
        (&job.decisions_path, lengths.decisions),
        (&job.alerts_path, lengths.alerts),
        (&job.actions_path, lengths.actions),
        (&job.dead_letters_path, lengths.dead_letters),
    ];
    Ok(files.into_iter().filter_map(|(path, length)| Some((path.as_deref()?, length?))).collect())
}

/// Whether the output files hold at least what the checkpoint recorded.
fn outputs_hold(job: &JobSpec, checkpoint: &Checkpoint) -> Result<()> {
    for (path, length) in output_lengths(job, checkpoint)? {
        let actual = std::fs::metadata(path).map_or(0, |m| m.len());
        ensure!(actual >= length, "{} has {actual} bytes, fewer than the {length} it recorded", path.display());
    }
    Ok(())
}

/// Worker 0's outputs, the Kafka producer's positions, and the control feed the job follows.
type OpenedOutputs = (Vec<Box<dyn Output>>, Option<AsyncOutputs>, Option<ControlFeed>);

/// Opens worker 0's outputs (files cut back to a restored checkpoint; Kafka topics) and starts
/// the control feed, when the job follows one.
fn open_outputs(job: &JobSpec, control: &ControlLog, restored: Option<&Checkpoint>) -> Result<OpenedOutputs> {
    // Worker 0 alone writes the outputs: it alone cuts them back to a restored checkpoint.
    if let Some(checkpoint) = restored {
        for (path, length) in output_lengths(job, checkpoint)? {
            truncate_output(path, length)?;
        }
    }
    let paths = OutputPaths {
        decisions: job.decisions_path.clone(),
        alerts: job.alerts_path.clone(),
        alerts_format: job.alerts_format,
        actions: job.actions_path.clone(),
        dead_letters: job.dead_letters_path.clone(),
    };
    let mut outputs: Vec<Box<dyn Output>> = vec![Box::new(JsonLinesOutput::open(&paths, restored.is_some())?)];
    let mut async_outputs = None;
    let mut control_feed = None;
    let restored_control = restored.and_then(|c| c.control.as_ref());
    if let Some(kafka) = &job.kafka {
        let output = KafkaOutput::new(kafka, restored.map(|c| &c.async_outputs))?.with_alerts_format(job.alerts_format);
        let view = output.checkpoint_view();
        if let (Some((dir, _)), None) = (&job.checkpoints, restored) {
            // What a run killed before its first checkpoint wrote must not be written again
            // either: a checkpoint at 0 records where the output topics end now.
            let files = OutputPositions {
                decisions: job.decisions_path.as_ref().map(|_| 0),
                alerts: job.alerts_path.as_ref().map(|_| 0),
                actions: job.actions_path.as_ref().map(|_| 0),
                dead_letters: job.dead_letters_path.as_ref().map(|_| 0),
            };
            let checkpoint = Checkpoint {
                dataflow: job.dataflow.clone(),
                state: initial_parts(files)?,
                async_outputs: (view.positions)(0),
                ..Default::default()
            };
            dir.write(&checkpoint, || Ok(()))?;
        }
        async_outputs = Some(view);
        outputs.push(Box::new(output));
        control_feed = Some(crate::kafka::control::start(kafka, control.clone(), restored_control)?);
    } else if let Some(followed) = job.control.followed() {
        let reader = crate::control::feed::follow_files(followed);
        control_feed = Some(ControlFeed::start("control-files-reader", reader, control.clone(), restored_control)?);
    }
    Ok((outputs, async_outputs, control_feed))
}

/// What a job's process loads once for all its workers: the controls known at start, and how
/// events are enriched and matched against indicators.
struct Controls {
    log: ControlLog,
    enrichment: EnrichmentMode,
    intel: IntelOptions,
    /// The Sigma rules in force, for the decoders to match providers' records early; only when
    /// nothing else reads a record's fields after decoding (no enrichment, no indicators) and
    /// decoded records do not cross processes (which sends their fields as parsed pairs), so
    /// that keeping a record's text rather than its parsed form pays.
    latest_sigma: Option<Arc<LatestSigmaSet>>,
}

impl Controls {
    fn of(job: &JobSpec, one_process: bool) -> Result<Controls> {
        let log = job.control.load()?;
        // A job enriches only when it starts with a database; without a control topic or followed
        // file, the databases it starts with are those of its whole run.
        let may_arrive = job.kafka.is_some() || job.control.followed().is_some();
        let enrichment = match (job.control.enriches(), log.databases_from_start()) {
            (false, _) => EnrichmentMode::Off,
            (true, Some(databases)) if !may_arrive => EnrichmentMode::Fixed(databases),
            (true, _) => EnrichmentMode::InForce,
        };
        let intel = IntelOptions { mode: intel_mode(job, &log), retro_window: job.retro_window };
        let early_matching = one_process && matches!(enrichment, EnrichmentMode::Off) && matches!(intel.mode, IntelMode::Off);
        let latest_sigma = early_matching.then(LatestSigmaSet::new);
        Ok(Controls { log, enrichment, intel, latest_sigma })
    }
}

/// How a job matches threat-intel indicators: as they come and go when more can arrive; else with
/// one index of those read at start (shared by the workers), or not at all when there are none.
fn intel_mode(job: &JobSpec, control: &ControlLog) -> IntelMode {
    let followed = job.kafka.is_none() && job.control.followed().is_some_and(|f| !f.intel.is_empty());
    let from_topic = job.kafka.as_ref().is_some_and(|kafka| kafka.intel_topic);
    if followed || from_topic {
        return IntelMode::InForce;
    }
    let updates = control.indicator_updates();
    if updates.is_empty() {
        return IntelMode::Off;
    }
    let mut index = crate::enrich::intel::IntelIndex::default();
    for (update, time, diff) in updates {
        if let crate::detect::control::Control::Indicator(indicator) = update {
            index.update(&indicator, time, diff);
        }
    }
    IntelMode::Fixed(Arc::new(index))
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    job: &JobSpec,
    controls: &Controls,
    progress: &Arc<AtomicU64>,
    restored: Option<Arc<Checkpoint>>,
    mut restore_stats: CheckpointStats,
    job_started: Instant,
) -> Result<Option<JobReport>> {
    let index = worker.index();
    let peers = worker.peers();
    let dataflow: Box<dyn Dataflow> = crate::dataflows::find(&job.dataflow).ok_or_else(|| anyhow!("unknown dataflow {}", job.dataflow))?;
    // Providers' raw records are decoded on every worker, whichever reads them (a lone worker
    // decodes them as it reads), and matched against the Sigma rules as they are decoded.
    let early_matching = controls.latest_sigma.clone().map(|latest| latest as Arc<dyn EarlyMatching>);
    let decoding = Decoding { defer: peers > 1, early_matching, ..job.decoding.clone() };
    let partitions = job.source.partitions(index, peers, &decoding, restored.as_deref())?;
    let errors: ErrorSlot = Rc::new(RefCell::new(None));
    let control = &controls.log;
    let (outputs, mut async_outputs, mut control_feed) = match index {
        0 => open_outputs(job, control, restored.as_deref())?,
        _ => (Vec::new(), None, None),
    };
    // The alerts file is open (cut back to a restored checkpoint): its deliveries can start.
    let deliveries = match (index, &job.alert_deliveries, &job.alerts_path) {
        (0, Some(spec), Some(alerts)) => {
            let cursors = job.checkpoints.as_ref().map(|(dir, _)| dir.path.join("alert-deliveries"));
            let restored_alerts = match restored.as_deref() {
                Some(checkpoint) => Some(restored_positions(checkpoint)?.alerts.unwrap_or(0)),
                None => None,
            };
            Some(Deliveries::start(spec, alerts, cursors.as_deref(), restored_alerts, Arc::clone(&job.stop))?)
        }
        _ => None,
    };
    let sinks = Sinks::new(outputs, Rc::clone(&errors), job.collect, matches!(job.source, SourceSpec::Generator(_)));
    let probe = ProbeHandle::new();
    let events_probe = ProbeHandle::new();
    let source = SourceConfig {
        allowed_lateness: job.allowed_lateness,
        batch: job.read_batch.unwrap_or_else(|| job.decoding.default_batch()),
        dead_letter_burst: job.dead_letter_burst,
        records_read: Arc::clone(progress),
        stop: Arc::clone(&job.stop),
        decoding,
        ..SourceConfig::default()
    };
    let gathered: Rc<RefCell<Gathered>> = Rc::default();
    let rendered = worker.dataflow::<Time, _, _>(|scope| {
        let parts = Parts {
            job,
            dataflow: &*dataflow,
            partitions,
            source,
            restored: restored.clone(),
            sinks: &sinks,
            output_probe: probe.clone(),
            events_probe: events_probe.clone(),
            gathered: Rc::clone(&gathered),
            errors: Rc::clone(&errors),
            enrichment: controls.enrichment.clone(),
            intel: controls.intel.clone(),
            latest_sigma: controls.latest_sigma.clone(),
        };
        render(scope, parts)
    });
    if job.checkpoints.is_some() && !rendered.unkept.is_empty() {
        bail!(
            "the dataflow {:?} keeps arrangements the checkpoints do not ({}): it cannot run with checkpoints",
            job.dataflow,
            rendered.unkept.join(", ")
        );
    }
    if let Some(checkpoint) = &restored {
        check_parts(&checkpoint.state, &rendered.declared)?;
    }
    // Worker 0 coordinates checkpoints; the other workers' barrier inputs close at once.
    let mut coordinator = match (&job.checkpoints, index) {
        (Some((dir, interval)), 0) => Some(Coordinator::new(
            dir.clone(),
            job.dataflow.clone(),
            *interval,
            rendered.barriers,
            restored.as_ref().map(|c| c.frontier),
            Rc::clone(&gathered),
            async_outputs.take(),
        )),
        _ => {
            drop(rendered.barriers);
            None
        }
    };

    // The control collection is fed by worker 0 alone and broadcast. A job without control topics
    // knows all its model and rule updates up front and closes the input at once.
    let mut control_input = Some(rendered.control);
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

    let metrics = &crate::metrics::METRICS;
    if let Some(ms) = restore_stats.restore_ms {
        metrics.restore_duration.set(ms / 1e3);
    }
    metrics.set_ready(true);
    let mut checkpoints_shown = 0;
    let bar = (index == 0 && job.progress).then(|| progress_bar(job.expected_events));
    let started = Instant::now();
    let mut last_draw = Instant::now();
    // A stall (the output frontier still for 10 s while events are pending) is logged with the
    // frontiers that explain it.
    let mut last_output: (Option<Time>, Instant) = (None, Instant::now());
    while !sinks.done() {
        let events_frontier = events_probe.with_frontier(|f| f.first().copied());
        let output_frontier = probe.with_frontier(|f| f.first().copied());
        if let Some(frontier) = events_frontier {
            metrics.events_frontier.set(i64::try_from(frontier).unwrap_or(i64::MAX));
        }
        if output_frontier != last_output.0 {
            if let Some(frontier) = output_frontier {
                metrics.output_frontier_at(frontier);
            }
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
        let control_part = || control_feed.as_ref().map(ControlFeed::checkpoint).transpose();
        if let Some(Err(error)) = coordinator.as_mut().map(|c| c.step(events_frontier, control_part)) {
            tracing::error!("checkpoint failed: {error:#}");
            errors.borrow_mut().get_or_insert(error);
            job.stop.store(true, Ordering::Relaxed);
            coordinator = None;
        }
        if let Some(Ok(stats)) = coordinator.as_ref().map(|c| c.stats.lock()) {
            if stats.written > checkpoints_shown {
                metrics.checkpoints_written(stats.written - checkpoints_shown, stats.last_bytes, stats.last_write_ms);
                checkpoints_shown = stats.written;
            }
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
    sinks.finish();
    if let Some(error) = errors.borrow_mut().take() {
        return Err(error);
    }
    // The job ends once its alerts are delivered or set aside.
    if let Some(deliveries) = deliveries {
        deliveries.finish()?;
    }
    if index != 0 {
        return Ok(None);
    }
    let mut report = sinks.report();
    report.elapsed = elapsed;
    report.checkpoints = checkpoint_stats;
    Ok(Some(report))
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
