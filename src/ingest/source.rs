//! The source: partitions read, their records decoded, and their events given times with
//! per-partition watermarks.
//!
//! ```text
//! read (the partitions' worker) ─batches─► decode (any worker) ─items─► judge (the partitions' worker) ─► events, side records, checkpoint parts
//! ```
//!
//! Per partition the watermark is the greatest event time seen minus the allowed lateness. An event
//! behind its partition's watermark is not dropped: it takes the watermark as its time and is marked
//! late. The judge holds its capability at the least watermark of its open partitions; an exhausted
//! partition stops holding anything back.
//!
//! Decoding a provider's raw record (parsing it and mapping it) costs most of reading it, and a
//! partition is read by one worker: so its records go out in batches, round the workers, to be
//! decoded ([`Decoding::defer`]), and come back to the partition's worker, which judges them in the
//! order they were read. Their times, and hence every decision, are those of a source that decodes
//! as it reads. Batches of canonical events, decoded as read, go straight to the judge.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::{Exchange as _, Operator};
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use crate::checkpoint::{Checkpoint, PartitionCheckpoint, PartitionPosition, PartitionStats};
use crate::event::{DeadLetter, Event, Time};
use crate::ingest::dead_letter_burst::DeadLetterRun;
use crate::ingest::partition::{Decoding, ErrorSlot, Item, Partition, SideRecord, SourceConfig};

/// How a source takes part in checkpoints.
pub struct SourceCheckpoints<'s> {
    /// Checkpoint barriers (broadcast): a record `F` asks for every partition's part at `F`.
    pub barriers: StreamVec<'s, Time, Time>,
    /// The checkpoint the job resumes from.
    pub restore: Option<Arc<Checkpoint>>,
}

/// A partition's part of a checkpoint: `(F, partition name, part)`.
pub type PartitionPart = (Time, String, PartitionCheckpoint);

/// What one poll of a partition read, on its way to the worker that decodes it and back to the
/// partition's worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ReadBatch {
    /// The worker that reads the partition and judges its records.
    owner: usize,
    /// The partition's index among the owner's.
    slot: usize,
    /// The batch's number in its partition's order.
    seq: u64,
    /// The worker that decodes its records.
    decoder: usize,
    /// Where the partition was before the poll (checkpoints only) and after it.
    start: Option<PartitionPosition>,
    end: Option<PartitionPosition>,
    /// Whether the partition was idle after the poll (see [`Partition::idle`]).
    idle: bool,
    /// Whether the partition has more to read.
    more: bool,
    /// The items the poll gave (records count one each before they are decoded).
    read: usize,
    items: Vec<Item>,
}

impl ReadBatch {
    /// Decodes the records the partition left undecoded, in place and in order.
    fn decode(&mut self, decoding: &Decoding) {
        if !self.items.iter().any(|item| matches!(item, Item::Record(_))) {
            return;
        }
        let mut items = Vec::with_capacity(self.items.len());
        for item in self.items.drain(..) {
            match item {
                Item::Record(record) => record.decode(decoding, &mut items),
                item => items.push(item),
            }
        }
        self.items = items;
    }
}

struct PartitionState {
    max_ts: Option<Time>,
    stats: PartitionStats,
    /// Where the partition is after its last judged batch (`None`: it cannot resume).
    position: Option<PartitionPosition>,
    /// Whether the partition was idle after its last judged batch.
    idle: bool,
    /// Exhausted: it holds nothing back.
    finished: bool,
    /// The number of the next batch to judge, and the batches that came before it.
    next: u64,
    waiting: BTreeMap<u64, ReadBatch>,
    /// The batches read that the barriers' frontier may still need, oldest first (checkpoints only).
    batches: VecDeque<Batch>,
    /// A restored partition re-reads from a batch start: records it had given before the
    /// checkpoint's frontier (time below it) are read again but not given.
    skip_before: Option<Time>,
    /// The dead letters at the partition's current time.
    dead_letter_run: DeadLetterRun,
}

/// Where a batch of records started, and the times its records were given at: a checkpoint at `F`
/// resumes a partition at the start of its first batch with a record at or after `F`.
struct Batch {
    position: PartitionPosition,
    max_ts: Option<Time>,
    stats: PartitionStats,
    /// The greatest time of its records.
    max_time: Time,
}

impl PartitionState {
    fn watermark(&self, lateness: Time) -> Time {
        self.max_ts.map_or(0, |m| m.saturating_sub(lateness))
    }

    /// The partition's part of a checkpoint at `frontier`: the start of the first batch with a
    /// record at or after it, or where it is now.
    fn checkpoint(&self, frontier: Time) -> Option<PartitionCheckpoint> {
        match self.batches.iter().find(|b| b.max_time >= frontier) {
            Some(batch) => Some(PartitionCheckpoint {
                position: batch.position.clone(),
                max_ts: batch.max_ts,
                stats: batch.stats.clone(),
                finished: false,
            }),
            None => Some(PartitionCheckpoint {
                position: self.position.clone()?,
                max_ts: self.max_ts,
                stats: self.stats.clone(),
                finished: self.finished,
            }),
        }
    }
}

/// Adds what a partition read since `(events, late)` to the live metrics and sets its position
/// and watermark there.
fn record_partition_metrics(state: &PartitionState, (events, late): (u64, u64), lateness: Time) {
    let metrics = &crate::metrics::METRICS;
    let name = [state.stats.partition.as_str()];
    metrics.events.with_label_values(&name).inc_by(state.stats.events - events);
    metrics.late.with_label_values(&name).inc_by(state.stats.late - late);
    let position = match state.position {
        Some(PartitionPosition::Bytes { offset, .. } | PartitionPosition::Items(offset)) => i64::try_from(offset).ok(),
        Some(PartitionPosition::Offset(offset)) => Some(offset),
        None => None,
    };
    if let Some(position) = position {
        metrics.position.with_label_values(&name).set(position);
    }
    metrics.watermark.with_label_values(&name).set(i64::try_from(state.watermark(lateness)).unwrap_or(i64::MAX));
}

/// Builds a source reading `partitions` (this worker's share); returns the events, the side
/// records, and the partitions' checkpoint parts (on worker 0).
///
/// Events are sent in messages at the source's capability and carry their own time in
/// [`Event::time`] (at or after the message's time), as differential updates do.
/// `probe` is the job's output probe, used to bound the batches in flight. With checkpoints, the
/// source notes where each batch it read started (position, watermark, counts) and the greatest
/// time it gave its records, and on a barrier `F` sends, per partition, the start of the first
/// batch with a record at or after `F`. A restored partition seeks there and reads on, giving only
/// the records at or after `F` (their times are a function of the partition's records before
/// them, so they are the times they had).
#[allow(clippy::too_many_arguments)]
pub fn partitioned_source<'s>(
    scope: Scope<'s, Time>,
    name: &str,
    partitions: Vec<Box<dyn Partition>>,
    config: SourceConfig,
    probe: ProbeHandle<Time>,
    errors: ErrorSlot,
    checkpoints: Option<SourceCheckpoints<'s>>,
) -> (StreamVec<'s, Time, Event>, StreamVec<'s, Time, SideRecord>, StreamVec<'s, Time, PartitionPart>) {
    let logging = checkpoints.is_some();
    let (barriers, restore) = match checkpoints {
        Some(c) => (c.barriers, c.restore),
        None => (timely::dataflow::operators::generic::operator::empty(scope), None),
    };
    let (partitions, states) = restore_partitions(partitions, restore.as_deref(), &errors);
    let handoff = Rc::new(Handoff::default());
    let read = read_partitions(scope, &format!("{name}Read"), partitions, &config, logging, Rc::clone(&handoff), Rc::clone(&errors));
    // Canonical events are decoded as they are read: their batches stay on this worker.
    let decoded = match config.decoding.defers() {
        true => decode_batches(read, &format!("{name}Decode"), config.decoding.clone()),
        false => read,
    };
    let judge = Judge { config, probe, errors, logging, handoff, restored_frontier: restore.map(|c| c.frontier) };
    judge.build(scope, name, decoded, barriers, states)
}

/// Decodes each batch's records on the worker the reader chose, and sends the batch back to its
/// partition's worker.
fn decode_batches<'s>(read: StreamVec<'s, Time, ReadBatch>, name: &str, decoding: Decoding) -> StreamVec<'s, Time, ReadBatch> {
    let decoded = read.unary(Exchange::new(|batch: &ReadBatch| batch.decoder as u64), name, move |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                for batch in data.iter_mut() {
                    batch.decode(&decoding);
                }
                output.session(&cap).give_container(data);
            });
        }
    });
    decoded.exchange(|batch: &ReadBatch| batch.owner as u64)
}

/// What a worker's reader and judge share.
#[derive(Default)]
struct Handoff {
    /// Records read and not yet judged: the reader waits while there is one batch for each worker
    /// to decode.
    unjudged: Cell<usize>,
    /// Emptied item buffers, handed back to the reader: a batch of canonical events fills
    /// megabytes, which are not worth allocating (and faulting in) again for every batch.
    spare: RefCell<Vec<Vec<Item>>>,
    /// The reader, woken by the judge when it has judged a batch, rather than polling while it
    /// waits.
    reader: RefCell<Option<timely::scheduling::Activator>>,
}

impl Handoff {
    /// The most emptied buffers kept.
    const SPARE: usize = 8;

    fn give_back(&self, mut items: Vec<Item>) {
        let mut spare = self.spare.borrow_mut();
        if spare.len() < Self::SPARE {
            items.clear();
            spare.push(items);
        }
    }
}

/// A partition and its index among the worker's.
type Slotted = (usize, Box<dyn Partition>);

/// Moves restored partitions to where the checkpoint recorded; returns the partitions still to
/// read, by slot, and every partition's state.
fn restore_partitions(partitions: Vec<Box<dyn Partition>>, restore: Option<&Checkpoint>, errors: &ErrorSlot) -> (Vec<Slotted>, Vec<PartitionState>) {
    let mut open = Vec::new();
    let mut states = Vec::new();
    for (slot, mut partition) in partitions.into_iter().enumerate() {
        let stats = PartitionStats { partition: partition.name(), ..Default::default() };
        let mut state = PartitionState {
            max_ts: None,
            stats,
            position: None,
            idle: false,
            finished: false,
            next: 0,
            waiting: BTreeMap::new(),
            batches: VecDeque::new(),
            skip_before: None,
            dead_letter_run: DeadLetterRun::default(),
        };
        if let Some((checkpoint, part)) = restore.and_then(|c| Some((c, c.partitions.get(&state.stats.partition)?))) {
            if let Err(error) = partition.seek(&part.position) {
                errors.borrow_mut().get_or_insert(error.context(format!("restoring partition {}", state.stats.partition)));
            }
            state.max_ts = part.max_ts;
            state.stats = part.stats.clone();
            state.skip_before = Some(checkpoint.frontier);
            state.finished = part.finished;
        }
        state.position = partition.position();
        if !state.finished {
            open.push((slot, partition));
        }
        states.push(state);
    }
    (open, states)
}

/// The operator that polls this worker's partitions and sends what they read, a batch per poll,
/// to be decoded: batches with records to decode round the workers, the others to this worker.
fn read_partitions<'s>(
    scope: Scope<'s, Time>,
    name: &str,
    mut open: Vec<Slotted>,
    config: &SourceConfig,
    logging: bool,
    handoff: Rc<Handoff>,
    errors: ErrorSlot,
) -> StreamVec<'s, Time, ReadBatch> {
    let (index, peers) = (scope.index(), scope.peers());
    let config = config.clone();
    timely::dataflow::operators::generic::operator::source(scope, name, move |capability, info| {
        let activator = scope.activator_for(Rc::clone(&info.address));
        *handoff.reader.borrow_mut() = Some(activator.clone());
        let waker = scope.worker().sync_activator_for(info.address.to_vec());
        let mut all_wake = true;
        for (_, partition) in open.iter_mut() {
            let waker = waker.clone();
            // An error only means the worker has gone.
            all_wake &= partition.wake_on_arrival(Arc::new(move || {
                let _ = waker.activate();
            }));
        }
        // The reader's batches carry no times: the judge gives them. Its capability only keeps
        // the operator alive until every partition is read.
        let mut capability = Some(capability);
        let mut seqs = vec![0u64; open.len()];
        let mut idle = vec![false; open.len()];
        let mut next_decoder = index;
        // One batch for each worker to decode.
        let max_unjudged = config.batch * peers;
        move |output| {
            let Some(cap) = capability.as_ref() else { return };
            let stopping = config.stop.load(Ordering::Relaxed) || errors.borrow().is_some();
            if handoff.unjudged.get() >= max_unjudged && !stopping {
                // The judge wakes the reader; this is only a safety net.
                activator.activate_after(Duration::from_millis(10));
                return;
            }
            let mut session = output.session(cap);
            let per_partition = config.batch.div_ceil(open.len().max(1)).max(64);
            let mut read = 0;
            let mut finished = Vec::new();
            for (k, (slot, partition)) in open.iter_mut().enumerate() {
                let mut items = handoff.spare.borrow_mut().pop().unwrap_or_default();
                let start = if logging { partition.position() } else { None };
                let polled = if stopping { Ok(false) } else { partition.poll(per_partition, &mut items) };
                let more = match polled {
                    Ok(more) => more,
                    Err(error) => {
                        let error = error.context(format!("reading partition {}", partition.name()));
                        tracing::error!("{error:#}");
                        errors.borrow_mut().get_or_insert(error);
                        false
                    }
                };
                let now_idle = partition.idle();
                if items.is_empty() && more && now_idle == idle[k] {
                    handoff.give_back(items);
                    continue;
                }
                idle[k] = now_idle;
                read += items.len();
                handoff.unjudged.set(handoff.unjudged.get() + items.len());
                let decoder = if items.iter().any(|item| matches!(item, Item::Record(_))) {
                    next_decoder = (next_decoder + 1) % peers;
                    next_decoder
                } else {
                    index
                };
                let seq = seqs[k];
                seqs[k] += 1;
                session.give(ReadBatch { owner: index, slot: *slot, seq, decoder, start, end: partition.position(), idle: now_idle, more, read: items.len(), items });
                if !more {
                    finished.push(k);
                }
            }
            drop(session);
            for k in finished.into_iter().rev() {
                open.remove(k);
                seqs.remove(k);
                idle.remove(k);
            }
            if open.is_empty() {
                capability = None;
            } else if read > 0 {
                activator.activate();
            } else {
                // Nothing to read right now (a caught-up Kafka partition): look again shortly
                // instead of spinning, or, when every partition wakes the source on arrival, only
                // to notice idleness and stops.
                activator.activate_after(Duration::from_millis(if all_wake { 10 } else { 1 }));
            }
        }
    })
}

/// What the judge needs besides its inputs.
struct Judge {
    config: SourceConfig,
    probe: ProbeHandle<Time>,
    errors: ErrorSlot,
    logging: bool,
    handoff: Rc<Handoff>,
    restored_frontier: Option<Time>,
}

impl Judge {
    /// The operator that takes each partition's decoded batches in the order they were read and
    /// gives their events times (watermarks, lateness), their dead letters in runs, and, on
    /// checkpoint barriers, the partitions' parts.
    fn build<'s>(
        self,
        scope: Scope<'s, Time>,
        name: &str,
        decoded: StreamVec<'s, Time, ReadBatch>,
        barriers: StreamVec<'s, Time, Time>,
        mut states: Vec<PartitionState>,
    ) -> (StreamVec<'s, Time, Event>, StreamVec<'s, Time, SideRecord>, StreamVec<'s, Time, PartitionPart>) {
        let Judge { config, probe, errors, logging, handoff, restored_frontier } = self;
        let mut builder = OperatorBuilder::new(name.to_owned(), scope);
        let info = builder.operator_info();
        let (events_out, events) = builder.new_output::<Vec<Event>>();
        let (side_out, side) = builder.new_output::<Vec<SideRecord>>();
        let (parts_out, parts) = builder.new_output::<Vec<PartitionPart>>();
        let mut events_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Event>>>::from(events_out);
        let mut side_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<SideRecord>>>::from(side_out);
        let mut parts_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<PartitionPart>>>::from(parts_out);
        // The decoded batches hold nothing back: the judge's own capabilities, at or below every
        // time it will give, do.
        let mut decoded_in = builder.new_input_connection(decoded, Pipeline, []);
        // Barriers hold back the side records (so that the dead letters written when a checkpoint is
        // cut are exactly those before it) and the parts, but not the events: the barriers follow the
        // events' frontier.
        let identity = || timely::progress::Antichain::from_elem(Default::default());
        let not_events = [(1, identity()), (2, identity())];
        let mut barriers_in = builder.new_input_connection(barriers, Pipeline, not_events);
        let activator = scope.activator_for(Rc::clone(&info.address));

        builder.build(move |mut capabilities| {
            // The parts output answers barriers with their own capabilities.
            capabilities.pop();
            // A restored job starts at the checkpoint's frontier.
            if let Some(frontier) = restored_frontier {
                for cap in capabilities.iter_mut() {
                    cap.downgrade(&frontier);
                }
            }
            let mut caps = (!states.iter().all(|s| s.finished)).then_some(capabilities);
            // Records sent per watermark not yet passed by the output: `(watermark, records)`.
            let mut in_flight: VecDeque<(Time, usize)> = VecDeque::new();
            let max_in_flight = config.batch * config.max_batches_in_flight;
            move |frontiers| {
                // Checkpoint barriers: every partition's part, then forget what no barrier can need.
                barriers_in.for_each(|cap, data| {
                    let mut handle = parts_out.activate();
                    for at in data.drain(..) {
                        let cap = cap.delayed(&at, 2);
                        let mut session = handle.session(&cap);
                        for state in states.iter() {
                            match state.checkpoint(at) {
                                Some(part) => session.give((at, state.stats.partition.clone(), part)),
                                None => tracing::warn!(partition = %state.stats.partition, "this partition cannot resume from a checkpoint"),
                            }
                        }
                    }
                });
                if logging {
                    let keep_from = frontiers[1].frontier().first().copied();
                    for state in states.iter_mut() {
                        while state.batches.front().is_some_and(|b| keep_from.is_none_or(|k| b.max_time < k)) {
                            state.batches.pop_front();
                        }
                    }
                }
                decoded_in.for_each(|_, data| {
                    for batch in data.drain(..) {
                        states[batch.slot].waiting.insert(batch.seq, batch);
                    }
                });
                let Some(capabilities) = caps.as_mut() else { return };
                // Back-pressure: wait until the output has caught up with older records.
                while let Some((t, _)) = in_flight.front() {
                    if probe.less_than(t) {
                        break;
                    }
                    in_flight.pop_front();
                }
                if in_flight.iter().map(|(_, n)| n).sum::<usize>() >= max_in_flight {
                    activator.activate_after(Duration::from_micros(100));
                    return;
                }
                let mut events_handle = events_out.activate();
                let mut side_handle = side_out.activate();
                let mut events_session = events_handle.session(&capabilities[0]);
                let mut side_session = side_handle.session(&capabilities[1]);
                let lateness = config.allowed_lateness;
                // Events are never stamped before the capability; only idle partitions that wake up
                // behind it (the others hold it back) see it above their own watermark.
                let floor = *capabilities[0].time();
                let mut judged = 0;
                let mut dead_letters: Vec<(Time, DeadLetter)> = Vec::new();
                for state in states.iter_mut().filter(|s| !s.finished) {
                    while let Some(batch) = state.waiting.remove(&state.next) {
                        state.next += 1;
                        judged += batch.items.len();
                        handoff.unjudged.set(handoff.unjudged.get() - batch.read);
                        if let Some(reader) = handoff.reader.borrow().as_ref() {
                            reader.activate();
                        }
                        let (events, side) = (&mut |event| events_session.give(event), &mut |record| side_session.give(record));
                        let items = judge_batch(state, batch, &config, floor, logging, &mut dead_letters, events, side);
                        handoff.give_back(items);
                        if state.finished {
                            tracing::debug!(partition = %state.stats.partition, events = state.stats.events, "partition exhausted");
                            state.dead_letter_run.close(&mut dead_letters);
                            side_session.give(SideRecord::Finished(state.stats.clone()));
                            break;
                        }
                    }
                }
                // The least watermark of the partitions still holding the frontier back; when all are
                // idle, the frontier stays where it is. Dead-letter runs it passes end first.
                let watermark = states.iter().filter(|s| !s.finished && !s.idle).map(|s| s.watermark(lateness)).min().unwrap_or(floor);
                let ending = errors.borrow().is_some();
                for state in states.iter_mut().filter(|s| !s.finished) {
                    if ending || state.dead_letter_run.time().is_some_and(|time| time < watermark) {
                        state.dead_letter_run.close(&mut dead_letters);
                    }
                }
                drop(events_session);
                drop(side_session);
                for (time, dead) in dead_letters.drain(..) {
                    side_handle.session(&capabilities[1].delayed(&time)).give(SideRecord::DeadLetter(dead));
                }
                if states.iter().all(|s| s.finished) || ending {
                    caps = None;
                    return;
                }
                for cap in capabilities.iter_mut() {
                    if *cap.time() < watermark {
                        cap.downgrade(&watermark);
                    }
                }
                match in_flight.back_mut() {
                    Some((t, n)) if *t == watermark => *n += judged,
                    _ => in_flight.push_back((watermark, judged)),
                }
            }
        });
        (events, side, parts.exchange(|_| 0))
    }
}

/// Gives a partition's batch its times: each event at its own time, or at the partition's
/// watermark when it is late; each dead letter at the watermark. Returns the emptied buffer.
#[allow(clippy::too_many_arguments)]
fn judge_batch(
    state: &mut PartitionState,
    mut batch: ReadBatch,
    config: &SourceConfig,
    floor: Time,
    logging: bool,
    dead_letters: &mut Vec<(Time, DeadLetter)>,
    events: &mut impl FnMut(Event),
    side: &mut impl FnMut(SideRecord),
) -> Vec<Item> {
    let lateness = config.allowed_lateness;
    // The decode operator has done this when the records were deferred; a record still undecoded
    // is decoded here rather than lost.
    batch.decode(&config.decoding);
    config.records_read.fetch_add(batch.items.len() as u64, Ordering::Relaxed);
    let start = logging.then(|| (batch.start, state.max_ts, state.stats.clone()));
    let (events_before, late_before) = (state.stats.events, state.stats.late);
    let mut max_time = None;
    let mut items = batch.items;
    for item in items.drain(..) {
        // The time a record is given at, from its partition's records before it; a restored
        // partition re-reading records it gave before the checkpoint skips them.
        let own_watermark = state.watermark(lateness);
        let skip = |time: Time| state.skip_before.is_some_and(|f| time < f);
        match item {
            Item::Event(mut event) => {
                // (A record given before the checkpoint was judged against its own partition's
                // watermark: the floor only matters after an idle spell.)
                let skipped = skip(event.ts.max(own_watermark));
                let watermark = if skipped { own_watermark } else { own_watermark.max(floor) };
                if event.ts < watermark {
                    event.time = watermark;
                    event.late = true;
                    state.stats.late += 1;
                } else {
                    event.time = event.ts;
                    state.max_ts = Some(state.max_ts.map_or(event.ts, |m| m.max(event.ts)));
                }
                state.stats.events += 1;
                if !skipped {
                    max_time = max_time.max(Some(event.time));
                    events(event);
                }
            }
            Item::Rejected(dead) => {
                state.stats.rejected += 1;
                // At its partition's watermark: a function of the partition's records before it,
                // so the dead-letter output's order does not depend on how reading was batched
                // (or resumed).
                if !skip(own_watermark) {
                    let time = own_watermark.max(floor);
                    max_time = max_time.max(Some(time));
                    state.dead_letter_run.admit(time, dead, config.dead_letter_burst, dead_letters);
                }
            }
            Item::Lost(dead) => {
                state.stats.rejected += 1;
                let time = own_watermark.max(floor).max(state.skip_before.unwrap_or(0));
                max_time = max_time.max(Some(time));
                dead_letters.push((time, dead));
            }
            Item::Label(label) => {
                if !skip(label.ts) {
                    side(SideRecord::Label(label));
                }
            }
            // Decoded above.
            Item::Record(_) => {}
        }
    }
    state.position = batch.end;
    state.idle = batch.idle;
    state.finished = !batch.more;
    record_partition_metrics(state, (events_before, late_before), lateness);
    if let (Some((Some(position), max_ts, stats)), Some(max_time)) = (start, max_time) {
        state.batches.push_back(Batch { position, max_ts, stats, max_time });
    }
    items
}
