//! Worker 0's side of checkpointing: sends barriers on an interval, gathers the parts (source
//! positions, every checkpointed operator's state), and writes each checkpoint once they are in
//! and the asynchronous outputs have acknowledged everything before it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::checkpoint::operator::StatePart;
use crate::checkpoint::{Checkpoint, CheckpointDir, PartitionCheckpoint};
use crate::event::Time;

/// What worker 0 has gathered for a barrier it sent.
#[derive(Debug)]
struct Gathering {
    partitions: BTreeMap<String, PartitionCheckpoint>,
    state: Vec<StatePart>,
    partitions_done: bool,
    state_done: bool,
    /// The Kafka outputs' acknowledged end offsets when the barrier was sent.
    async_outputs: BTreeMap<(String, i32), i64>,
    requested: Instant,
}

/// The parts of the checkpoints in progress, filled on worker 0.
#[derive(Debug, Default)]
pub struct Gathered {
    pending: BTreeMap<Time, Gathering>,
}

impl Gathered {
    /// Adds a partition's part.
    pub fn add_partition(&mut self, frontier: Time, name: String, part: PartitionCheckpoint) {
        if let Some(g) = self.pending.get_mut(&frontier) {
            g.partitions.insert(name, part);
        }
    }

    /// Adds a worker's state part of an operator.
    pub fn add_state(&mut self, frontier: Time, part: StatePart) {
        if let Some(g) = self.pending.get_mut(&frontier) {
            g.state.push(part);
        }
    }

    /// Marks the partitions' parts (`state: false`) or the state parts of every barrier before
    /// `frontier` complete.
    pub fn complete_before(&mut self, frontier: Option<Time>, state: bool) {
        for (at, g) in self.pending.iter_mut() {
            if frontier.is_none_or(|f| *at < f) {
                if state {
                    g.state_done = true;
                } else {
                    g.partitions_done = true;
                }
            }
        }
    }
}

/// What checkpointing did in a job: printed in the job's report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CheckpointStats {
    /// The frontier the job resumed from, if it was restored.
    pub restored_from: Option<Time>,
    /// Milliseconds to read, verify and decode the restored checkpoint.
    pub restore_ms: Option<f64>,
    /// Milliseconds from the job's start until its output passed the restored frontier: the
    /// state is restored and events are decided again.
    pub resumed_ms: Option<f64>,
    /// Checkpoints written.
    pub written: u64,
    /// The frontier of the last one.
    pub last_frontier: Option<Time>,
    /// Its size in bytes.
    pub last_bytes: u64,
    /// Milliseconds to encode, write and commit it.
    pub last_write_ms: f64,
    /// The longest write.
    pub max_write_ms: f64,
}

/// Per output partition (topic, partition), an offset.
pub type OutputOffsets = BTreeMap<(String, i32), i64>;

/// Outputs acknowledged asynchronously (Kafka topics), as checkpoints see them.
pub struct AsyncOutputs {
    /// Per output partition, an offset at or before every record not yet queued (and every record
    /// at or after the frontier that a run before a restart wrote and this run has not reached
    /// yet): asked when a barrier at the frontier is sent.
    pub positions: Box<dyn Fn(Time) -> OutputOffsets>,
    /// A mark after every record queued so far.
    pub mark: Box<dyn Fn() -> usize>,
    /// Waits until every record queued before a mark is acknowledged; fails if one could not be.
    pub wait: Arc<dyn Fn(usize) -> Result<()> + Send + Sync>,
}

/// Worker 0's side of checkpointing: sends barriers on an interval, and writes each checkpoint
/// once its parts are in and the outputs have been written up to it.
pub struct Coordinator {
    dir: CheckpointDir,
    dataflow: String,
    interval: std::time::Duration,
    barriers: Option<timely::dataflow::InputHandle<Time, timely::container::CapacityContainerBuilder<Vec<Time>>>>,
    last_request: Instant,
    last_frontier: Option<Time>,
    /// Filled by the sinks.
    pub gathered: std::rc::Rc<std::cell::RefCell<Gathered>>,
    async_outputs: Option<AsyncOutputs>,
    /// The checkpoint being encoded and written in the background, if any.
    writing: Option<std::thread::JoinHandle<Result<()>>>,
    /// Updated by the writer.
    pub stats: Arc<std::sync::Mutex<CheckpointStats>>,
}

impl Coordinator {
    /// A coordinator of `dataflow`'s checkpoints sending barriers through `barriers`, starting at
    /// `start` (a restored frontier); `async_outputs` are the job's Kafka outputs, if any.
    pub fn new(
        dir: CheckpointDir,
        dataflow: String,
        interval: std::time::Duration,
        mut barriers: timely::dataflow::InputHandle<Time, timely::container::CapacityContainerBuilder<Vec<Time>>>,
        start: Option<Time>,
        gathered: std::rc::Rc<std::cell::RefCell<Gathered>>,
        async_outputs: Option<AsyncOutputs>,
    ) -> Self {
        if let Some(start) = start {
            barriers.advance_to(start);
            barriers.flush();
        }
        Coordinator {
            dir,
            dataflow,
            interval,
            barriers: Some(barriers),
            last_request: Instant::now(),
            last_frontier: start,
            gathered,
            async_outputs,
            writing: None,
            stats: Default::default(),
        }
    }

    /// Writes finished checkpoints (with `control`'s part, asked then), asks for a new one when due,
    /// and moves the barrier input up to the events' frontier (`None`: the events are complete, the
    /// input closes).
    pub fn step(&mut self, events_frontier: Option<Time>, control: impl FnOnce() -> Result<Option<StatePart>>) -> Result<()> {
        self.write_ready(control)?;
        let Some(input) = self.barriers.as_mut() else { return Ok(()) };
        let idle = self.gathered.borrow().pending.is_empty() && self.writing.is_none();
        let at = *input.time();
        // Not before the events have started (a checkpoint at 0 would hold nothing to resume from).
        if idle && at > 0 && self.last_request.elapsed() >= self.interval && self.last_frontier.is_none_or(|l| at > l) {
            // The barrier input is at `at` and holds the sinks back: nothing at or after `at` has
            // been queued yet, so what is acknowledged now is all before it.
            let async_outputs = self.async_outputs.as_ref().map(|o| (o.positions)(at)).unwrap_or_default();
            self.gathered.borrow_mut().pending.insert(
                at,
                Gathering {
                    partitions: BTreeMap::new(),
                    state: Vec::new(),
                    partitions_done: false,
                    state_done: false,
                    async_outputs,
                    requested: Instant::now(),
                },
            );
            input.send(at);
            self.last_request = Instant::now();
            self.last_frontier = Some(at);
        }
        match events_frontier {
            Some(f) if f > at => input.advance_to(f),
            Some(_) => {}
            None => self.barriers = None,
        }
        if let Some(input) = self.barriers.as_mut() {
            input.flush();
        }
        Ok(())
    }

    /// Waits for the checkpoint being written, if any.
    pub fn finish(&mut self) -> Result<()> {
        match self.writing.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => bail!("the checkpoint writer panicked"),
            None => Ok(()),
        }
    }

    fn write_ready(&mut self, control: impl FnOnce() -> Result<Option<StatePart>>) -> Result<()> {
        if self.writing.as_ref().is_some_and(|w| w.is_finished()) {
            self.finish()?;
        }
        if self.writing.is_some() {
            return Ok(());
        }
        let ready = {
            let gathered = self.gathered.borrow();
            gathered
                .pending
                .iter()
                .next()
                .filter(|(_, g)| g.partitions_done && g.state_done)
                .map(|(f, _)| *f)
        };
        let Some(frontier) = ready else { return Ok(()) };
        let Some(g) = self.gathered.borrow_mut().pending.remove(&frontier) else { return Ok(()) };
        let parts = g.state.len();
        let checkpoint = Checkpoint {
            frontier,
            dataflow: self.dataflow.clone(),
            partitions: g.partitions,
            state: g.state,
            async_outputs: g.async_outputs,
            // Every update applied before the frontier is in (the decisions before it are written).
            control: control()?,
        };
        let gathered_ms = g.requested.elapsed().as_secs_f64() * 1e3;
        // Encoding and writing run beside the worker, which goes on with the dataflow.
        let dir = self.dir.clone();
        let stats = Arc::clone(&self.stats);
        // Every output record before the frontier is queued by now; the checkpoint commits once
        // they are all acknowledged.
        let acknowledged = self.async_outputs.as_ref().map(|o| ((o.mark)(), Arc::clone(&o.wait)));
        let writer = std::thread::Builder::new().name("checkpoint-writer".into()).spawn(move || {
            let started = Instant::now();
            let bytes = dir.write(&checkpoint, || {
                match acknowledged {
                    Some((mark, wait)) => wait(mark),
                    None => Ok(()),
                }
            })?;
            let write_ms = started.elapsed().as_secs_f64() * 1e3;
            tracing::info!(frontier, bytes, parts, gathered_ms, write_ms, "checkpoint written");
            if let Ok(mut stats) = stats.lock() {
                stats.written += 1;
                stats.last_frontier = Some(frontier);
                stats.last_bytes = bytes;
                stats.last_write_ms = write_ms;
                stats.max_write_ms = stats.max_write_ms.max(write_ms);
            }
            Ok(())
        });
        self.writing = Some(writer.context("starting the checkpoint writer")?);
        Ok(())
    }
}
