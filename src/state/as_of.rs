//! The as-of lookup (half join): each event reads an arrangement exactly as of its own time.
//!
//! timely 0.32 / differential 0.26 have no usable `half_join` (`differential-dogs3` targets older
//! versions), so this is our own `binary_frontier` operator, after `docs/as-of-lookup.md`:
//! events are stashed by their time; once the arrangement's frontier has passed that time, every
//! update at a time `<= t` is in the trace, so the answer is exact and final, and the event is
//! answered once, never retracted.
//!
//! Departures from the note: the pact is a parameter (arrangements built with `Pipeline`, such as
//! the broadcast control collection, are read with `Pipeline`); each key's values are cloned once
//! per activation and handed to a closure by reference, so a large value (a model) is not cloned
//! per event, and gathered again only when one of the key's updates falls between two events'
//! times, so that 300 rules in force cost per update, not per event time; and events carry their
//! own time, stashed under one capability per operator ([`TimeStash`]) rather than one per
//! distinct time, since with millisecond times nearly every event has a time of its own and
//! per-time capabilities made progress tracking the bottleneck.

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{ParallelizationContract, Pipeline};
use timely::dataflow::operators::{generic::Operator, Capability, InputCapability};
use timely::dataflow::StreamVec;
use timely::progress::frontier::MutableAntichain;
use timely::progress::Antichain;

use differential_dataflow::difference::{IsZero, Semigroup};
use differential_dataflow::operators::arrange::Arranged;
use differential_dataflow::trace::cursor::cursor_list;
use differential_dataflow::trace::implementations::BatchContainer;
use differential_dataflow::trace::{BatchCursor, BatchDiff, BatchValOwn, Cursor, Navigable, TraceReader};

use crate::event::Time;

/// The values handed to a lookup's logic: each with its accumulated difference.
type Vals<'a, Tr> = Vec<(&'a BatchValOwn<Tr>, BatchDiff<Tr>)>;

/// For each event `e` at time `t = time_of(&e)` (at or after its message's time), calls
/// `logic(t, e, vals, version)` (the event by value: a logic that emits it changed moves it) once the arrangement's frontier has passed `t`, where `vals` are
/// the non-zero accumulations of `key_of(&e)`'s values over all updates with time `<= t`, in value
/// order; emits what `logic` returns in a message at a time `<= t` (outputs carry their own time,
/// as differential updates do: one message per activation, not one per distinct time).
///
/// `version` is the same for two calls only when their `vals` are the same, so `logic` may keep
/// what it derives from `vals` (an index) and rebuild it only when `version` changes (it may
/// change without the values changing).
///
/// `pact` must route events to the worker that holds their key in `arranged` (`Pipeline` when the
/// events are already partitioned like the arrangement, or when it is replicated on every worker).
///
/// ```
/// use timely::dataflow::channels::pact::Pipeline;
/// use timely::dataflow::operators::{ToStream, Capture, capture::Extract};
/// use differential_dataflow::AsCollection;
/// use threatflow::state::as_of::as_of_lookup;
///
/// let captured = timely::example(|scope| {
///     // `(key, val)` updates: key 1 holds "a" from time 5 on, and "b" during [7, 9).
///     let updates = vec![((1u64, 'a'), 5u64, 1isize), ((1, 'b'), 7, 1), ((1, 'b'), 9, -1)];
///     let arranged = updates.to_stream(scope).as_collection().arrange_by_key();
///     // Events are `(key, time)`, sent at time 0 and read at their own time.
///     let events = vec![(1u64, 4u64), (1, 5), (1, 8), (1, 9)].to_stream(scope);
///     as_of_lookup(events, arranged, Pipeline, "Lookup", |(k, _)| *k, |(_, t)| *t, |t, _event, vals, _version| {
///         Some((t, vals.iter().map(|(v, _)| **v).collect::<String>()))
///     })
///     .capture()
/// });
/// let mut seen: Vec<_> = captured.extract().into_iter().flat_map(|(_, d)| d).collect();
/// seen.sort();
/// assert_eq!(seen, vec![(4, "".into()), (5, "a".into()), (8, "ab".into()), (9, "a".into())]);
/// ```
pub fn as_of_lookup<'s, Tr, K, E, O, P, L>(
    events: StreamVec<'s, Time, E>,
    arranged: Arranged<'s, Tr>,
    pact: P,
    name: &str,
    key_of: impl Fn(&E) -> K + 'static,
    time_of: impl Fn(&E) -> Time + 'static,
    mut logic: L,
) -> StreamVec<'s, Time, O>
where
    Tr: TraceReader<Batch: Navigable, Time = Time> + 'static,
    BatchCursor<Tr>: Cursor<Time = Time>,
    <BatchCursor<Tr> as Cursor>::KeyContainer: BatchContainer<Owned = K>,
    K: Ord + Clone + 'static,
    E: Clone + 'static,
    O: Clone + 'static,
    P: ParallelizationContract<Time, Vec<E>>,
    BatchDiff<Tr>: PartialEq,
    L: FnMut(Time, E, &[(&BatchValOwn<Tr>, BatchDiff<Tr>)], u64) -> Option<O> + 'static,
{
    type C<Tr> = BatchCursor<Tr>;
    let mut trace = Some(arranged.trace);
    // We only ever read through the empty frontier, so physical merging need not be held back.
    if let Some(trace) = trace.as_mut() {
        trace.set_physical_compaction(Antichain::new().borrow());
    }
    // Events waiting for the arrangement's frontier, by time, under one capability.
    let mut stash: TimeStash<E> = TimeStash::default();
    // Buffers reused across activations (fresh multi-megabyte vectors cost page faults).
    let mut ready: Vec<(Time, E)> = Vec::new();
    let mut times_of: Vec<Time> = Vec::new();
    // Each event is taken out (`None`) when handed to `logic`.
    let mut work: Vec<(K, usize, Option<E>)> = Vec::new();
    let mut results: Vec<O> = Vec::new();
    // The current key's values (each cloned once), their updates as `(time, index into key_vals,
    // diff)`, and each value's accumulation so far.
    let mut key_vals: Vec<BatchValOwn<Tr>> = Vec::new();
    let mut updates: Vec<(Time, usize, BatchDiff<Tr>)> = Vec::new();
    let mut accumulated: Vec<Option<BatchDiff<Tr>>> = Vec::new();
    let mut key_con = <<C<Tr> as Cursor>::KeyContainer as BatchContainer>::with_capacity(1);
    // The values last handed to `logic`, and their version: it changes whenever they do.
    let mut last_vals: Vec<(BatchValOwn<Tr>, BatchDiff<Tr>)> = Vec::new();
    let mut version: u64 = 0;

    events.binary_frontier::<_, CapacityContainerBuilder<Vec<O>>, _, _, _, _>(
        arranged.stream,
        pact,
        Pipeline,
        name,
        move |_cap, _info| {
            move |(input1, frontier1), (input2, frontier2), output| {
                // 1. Stash events by their own time.
                input1.for_each(|cap, data| {
                    for event in data.drain(..) {
                        stash.insert(&cap, time_of(&event), event);
                    }
                });
                // 2. The trace holds the batches; the stream is read for its frontier only.
                input2.for_each(|_cap, _data| {});

                // 3. Answer every stashed time that the arrangement's frontier has passed.
                stash.take_ready(frontier2, &mut ready);
                if let (false, Some(held)) = (ready.is_empty(), stash.held()) {
                    let Some(trace) = trace.as_mut() else { return };
                    let since = trace.get_logical_compaction().to_owned();
                    if let Some((time, _)) = ready.first() {
                        // `ready` is sorted: the first time is the least. Holding compaction at the event
                        // frontier makes a violation impossible; one would mean wrong answers, so it is
                        // a bug worth stopping for.
                        assert!(since.less_equal(time), "as_of_lookup: time {time} below compaction");
                    }
                    // Work list sorted by (key, time): cursors only seek forward.
                    times_of.clear();
                    times_of.extend(ready.iter().map(|(t, _)| *t));
                    work.extend(ready.drain(..).enumerate().map(|(idx, (_, e))| (key_of(&e), idx, Some(e))));
                    // `ready` is in time order, so its index orders times.
                    work.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
                    let (mut cursor, storage) = cursor_list(trace.batches_through(Antichain::new().borrow()).unwrap_or_default());
                    let mut lo = 0;
                    while lo < work.len() {
                        let mut hi = lo + 1;
                        while hi < work.len() && work[hi].0 == work[lo].0 {
                            hi += 1;
                        }
                        // The key's values (each cloned once) and all their updates, by time.
                        key_vals.clear();
                        updates.clear();
                        key_con.clear();
                        key_con.push_own(&work[lo].0);
                        cursor.seek_key(&storage, key_con.index(0));
                        if cursor.get_key(&storage) == Some(key_con.index(0)) {
                            while let Some(val) = cursor.get_val(&storage) {
                                let index = key_vals.len();
                                key_vals.push(C::<Tr>::owned_val(val));
                                cursor.map_times(&storage, |t, d| updates.push((C::<Tr>::owned_time(t), index, C::<Tr>::owned_diff(d))));
                                cursor.step_val(&storage);
                            }
                        }
                        updates.sort_by_key(|(t, _, _)| *t);
                        // Sweep the events (ascending times) and the updates together: the values
                        // are gathered again only when an update has passed, so that a key whose
                        // values seldom change (the controls) costs per update, not per event
                        // time times values.
                        accumulated.clear();
                        accumulated.resize(key_vals.len(), None);
                        let (mut next, mut vals): (usize, Vals<Tr>) = (0, Vec::new());
                        for (position, (_, idx, e)) in work[lo..hi].iter_mut().enumerate() {
                            let time = times_of[*idx];
                            let before = next;
                            while next < updates.len() && updates[next].0 <= time {
                                let (_, index, diff) = &updates[next];
                                match accumulated[*index].as_mut() {
                                    Some(a) => a.plus_equals(diff),
                                    None => accumulated[*index] = Some(diff.clone()),
                                }
                                next += 1;
                            }
                            if next > before || position == 0 {
                                vals.clear();
                                vals.extend(
                                    accumulated.iter().enumerate().filter_map(|(i, a)| a.as_ref().filter(|a| !a.is_zero()).map(|a| (&key_vals[i], a.clone()))),
                                );
                                // The version stays while the values handed out stay the same,
                                // across events, activations and keys.
                                let same = last_vals.len() == vals.len() && last_vals.iter().zip(&vals).all(|((v, d), (w, e))| v == *w && d == e);
                                if !same {
                                    last_vals = vals.iter().map(|(v, d)| ((*v).clone(), d.clone())).collect();
                                    version += 1;
                                }
                            }
                            let Some(e) = e.take() else { continue };
                            if let Some(out) = logic(time, e, &vals, version) {
                                results.push(out);
                            }
                        }
                        lo = hi;
                    }
                    // One message at the least ready time; each output carries its own time.
                    work.clear();
                    if !results.is_empty() {
                        output.session(held).give_iterator(results.drain(..));
                    }
                }
                stash.release();

                // 4. Allow compaction up to the least time we can still be asked about.
                let mut hold: Antichain<Time> = frontier1.frontier().to_owned();
                if let Some(t) = stash.least() {
                    hold.insert(t);
                }
                if hold.is_empty() {
                    trace = None; // no more events: release the trace
                } else if let Some(tr) = trace.as_mut() {
                    tr.set_logical_compaction(hold.borrow());
                }
            }
        },
    )
}

/// What a lookup's logic derives from the values it is given (an index of them), kept while their
/// version (see [`as_of_lookup`]) stays the same and derived again when it changes.
///
/// ```
/// use threatflow::state::as_of::PerVersion;
/// let mut derived = PerVersion::default();
/// assert_eq!(*derived.get(1, || "first"), "first");
/// assert_eq!(*derived.get(1, || "not derived again"), "first");
/// assert_eq!(*derived.get(2, || "second"), "second");
/// ```
pub struct PerVersion<T> {
    kept: Option<(u64, T)>,
}

impl<T> Default for PerVersion<T> {
    fn default() -> Self {
        PerVersion { kept: None }
    }
}

impl<T> PerVersion<T> {
    /// The value derived for `version`, deriving it with `derive` unless it is kept.
    pub fn get(&mut self, version: u64, derive: impl FnOnce() -> T) -> &T {
        if self.kept.as_ref().is_some_and(|(kept, _)| *kept != version) {
            self.kept = None;
        }
        &self.kept.get_or_insert_with(|| (version, derive())).1
    }
}

/// Records stashed by their own time under a single capability (per output), held at the least
/// stashed time.
///
/// One capability instead of one per distinct time keeps progress tracking per activation rather
/// than per event (event times are milliseconds: nearly every event has a time of its own), and a
/// flat list instead of a map by time keeps stashing free of per-time allocations.
pub struct TimeStash<E> {
    outputs: usize,
    held: Vec<Capability<Time>>,
    records: Vec<(Time, E)>,
    least: Option<Time>,
}

impl<E> Default for TimeStash<E> {
    fn default() -> Self {
        TimeStash::for_outputs(1)
    }
}

impl<E> TimeStash<E> {
    /// A stash that holds a capability for each of the operator's first `outputs` outputs.
    pub fn for_outputs(outputs: usize) -> Self {
        TimeStash { outputs, held: Vec::new(), records: Vec::new(), least: None }
    }

    /// Stashes `record` at `time`, which must not be before the time of the message it came in.
    pub fn insert(&mut self, cap: &InputCapability<Time>, time: Time, record: E) {
        if self.held.first().is_none_or(|held| time < *held.time()) {
            self.held = (0..self.outputs).map(|output| cap.delayed(&time, output)).collect();
        }
        self.least = Some(self.least.map_or(time, |l| l.min(time)));
        self.records.push((time, record));
    }
    /// Moves the records whose time the frontier has passed to the end of `ready`, sorted by time
    /// (stable). The capabilities stay held (at a time `<=` all of them) until
    /// [`TimeStash::release`].
    pub fn take_ready(&mut self, frontier: &MutableAntichain<Time>, ready: &mut Vec<(Time, E)>) {
        self.take_before(frontier.frontier().first().copied(), ready)
    }

    /// Moves the records before `bound` (all when `None`) to the end of `ready`, sorted by time
    /// (stable). `ready` is the caller's, reused across calls: no allocation per call.
    pub fn take_before(&mut self, bound: Option<Time>, ready: &mut Vec<(Time, E)>) {
        let passed = |time: Time| bound.is_none_or(|b| time < b);
        if self.least.is_none_or(|least| !passed(least)) {
            return;
        }
        let start = ready.len();
        ready.extend(self.records.extract_if(.., |(time, _)| passed(*time)));
        self.least = self.records.iter().map(|(t, _)| *t).min();
        ready[start..].sort_by_key(|(t, _)| *t);
    }

    /// The capability held for output 0, at a time `<=` every stashed and every just-taken record.
    pub fn held(&self) -> Option<&Capability<Time>> {
        self.held.first()
    }

    /// The capability held for `output` (see [`TimeStash::for_outputs`]).
    pub fn held_for(&self, output: usize) -> Option<&Capability<Time>> {
        self.held.get(output)
    }

    /// Moves the capabilities up to the least stashed time, or drops them when nothing is stashed.
    pub fn release(&mut self) {
        match self.least {
            Some(least) => self.held.iter_mut().for_each(|held| held.downgrade(&least)),
            None => self.held.clear(),
        }
    }

    /// The least stashed time.
    pub fn least(&self) -> Option<Time> {
        self.least
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use differential_dataflow::AsCollection;
    use proptest::prelude::*;
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::{capture::Extract, Capture, ToStream};

    use super::as_of_lookup;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every event gets exactly the non-zero accumulations of its key's values over the
        /// updates at or before its time (a brute-force oracle), and one version never stands for
        /// two different sets of values.
        #[test]
        fn answers_as_the_oracle_and_versions_name_one_set_of_values(
            updates in proptest::collection::vec(((0u64..3, 0u8..4), 0u64..20, prop_oneof![Just(1isize), Just(-1), Just(2)]), 0..30),
            events in proptest::collection::vec((0u64..3, 0u64..25), 1..40),
        ) {
            let (sent_updates, sent_events) = (updates.clone(), events.clone());
            let captured = timely::example(move |scope| {
                let arranged = sent_updates.to_stream(scope).as_collection().arrange_by_key();
                let events = sent_events.into_iter().enumerate().map(|(i, (k, t))| (k, t, i)).collect::<Vec<_>>().to_stream(scope);
                as_of_lookup(events, arranged, Pipeline, "Lookup", |(k, _, _)| *k, |(_, t, _)| *t, |t, (k, _, i), vals, version| {
                    Some((i, k, t, vals.iter().map(|(v, d)| (**v, *d)).collect::<Vec<_>>(), version))
                })
                .capture()
            });
            let seen: Vec<_> = captured.extract().into_iter().flat_map(|(_, d)| d).collect();
            prop_assert_eq!(seen.len(), events.len());
            let mut by_version: HashMap<u64, Vec<(u8, isize)>> = HashMap::new();
            for (i, k, t, vals, version) in seen {
                let mut accumulated: BTreeMap<u8, isize> = BTreeMap::new();
                for ((key, value), time, diff) in &updates {
                    if *key == k && *time <= t {
                        *accumulated.entry(*value).or_default() += diff;
                    }
                }
                let expected: Vec<(u8, isize)> = accumulated.into_iter().filter(|(_, d)| *d != 0).collect();
                prop_assert_eq!(&vals, &expected, "event {} (key {}, time {})", i, k, t);
                if let Some(before) = by_version.insert(version, vals.clone()) {
                    prop_assert_eq!(before, vals, "version {} named two sets of values", version);
                }
            }
        }
    }
}
