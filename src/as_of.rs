//! The as-of lookup (half join): each event reads an arrangement exactly as of its own time.
//!
//! timely 0.32 / differential 0.26 have no usable `half_join` (`differential-dogs3` targets older
//! versions), so this is our own `binary_frontier` operator, after `shared/notes/as-of-lookup.md`:
//! events are stashed under a capability for their time; once the arrangement's frontier has passed
//! that time, every update at a time `<= t` is in the trace, so the answer is exact and final, and the
//! event is emitted once, at `t`, never retracted.
//!
//! Two departures from the note: the pact is a parameter (arrangements built with `Pipeline`, such
//! as the broadcast control collection, are read with `Pipeline`), and the accumulated values are
//! computed once per `(key, time)` and handed to a closure by reference, so a large value (a model)
//! is not cloned per event.

use std::collections::BTreeMap;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{ParallelizationContract, Pipeline};
use timely::dataflow::operators::{generic::Operator, Capability};
use timely::dataflow::StreamVec;
use timely::progress::Antichain;

use differential_dataflow::difference::{IsZero, Semigroup};
use differential_dataflow::operators::arrange::Arranged;
use differential_dataflow::trace::cursor::cursor_list;
use differential_dataflow::trace::implementations::BatchContainer;
use differential_dataflow::trace::{BatchCursor, BatchDiff, BatchValOwn, Cursor, Navigable, TraceReader};

use crate::event::Time;

/// For each event `e` at time `t = time_of(&e)` (at or after its message's time), calls
/// `logic(t, &e, vals)` once the arrangement's frontier has passed `t`, where `vals` are the non-zero accumulations of `key_of(&e)`'s values over all updates
/// with time `<= t`, in value order; emits what `logic` returns, at time `t`.
///
/// `pact` must route events to the worker that holds their key in `arranged` (`Pipeline` when the
/// events are already partitioned like the arrangement, or when it is replicated on every worker).
///
/// ```
/// use timely::dataflow::channels::pact::Pipeline;
/// use timely::dataflow::operators::{ToStream, Capture, capture::Extract};
/// use differential_dataflow::AsCollection;
/// use threatflow::as_of::as_of_lookup;
///
/// let captured = timely::example(|scope| {
///     // `(key, val)` updates: key 1 holds "a" from time 5 on, and "b" during [7, 9).
///     let updates = vec![((1u64, 'a'), 5u64, 1isize), ((1, 'b'), 7, 1), ((1, 'b'), 9, -1)];
///     let arranged = updates.to_stream(scope).as_collection().arrange_by_key();
///     // Events are `(key, time)`, sent at time 0 and read at their own time.
///     let events = vec![(1u64, 4u64), (1, 5), (1, 8), (1, 9)].to_stream(scope);
///     as_of_lookup(events, arranged, Pipeline, "Lookup", |(k, _)| *k, |(_, t)| *t, |t, _event, vals| {
///         Some((t, vals.iter().map(|(v, _)| *v).collect::<String>()))
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
    L: FnMut(Time, &E, &[(BatchValOwn<Tr>, BatchDiff<Tr>)]) -> Option<O> + 'static,
{
    type C<Tr> = BatchCursor<Tr>;
    let mut trace = Some(arranged.trace);
    // We only ever read through the empty frontier, so physical merging need not be held back.
    if let Some(trace) = trace.as_mut() {
        trace.set_physical_compaction(Antichain::new().borrow());
    }
    // Events waiting for the arrangement's frontier, by time; one capability per time.
    let mut stash: BTreeMap<Time, (Capability<Time>, Vec<E>)> = BTreeMap::new();
    let mut times: Vec<(Time, BatchDiff<Tr>)> = Vec::new();
    let mut key_con = <<C<Tr> as Cursor>::KeyContainer as BatchContainer>::with_capacity(1);

    events.binary_frontier::<_, CapacityContainerBuilder<Vec<O>>, _, _, _, _>(
        arranged.stream,
        pact,
        Pipeline,
        name,
        move |_cap, _info| {
            move |(input1, frontier1), (input2, frontier2), output| {
                // 1. Stash events by their own time, each time under a capability for it.
                input1.for_each(|cap, data| {
                    for event in data.drain(..) {
                        let time = time_of(&event);
                        stash.entry(time).or_insert_with(|| (cap.delayed(&time, 0), Vec::new())).1.push(event);
                    }
                });
                // 2. The trace holds the batches; the stream is read for its frontier only.
                input2.for_each(|_cap, _data| {});

                // 3. Answer every stashed time that the arrangement's frontier has passed.
                let mut ready = Vec::new();
                while let Some(entry) = stash.first_entry() {
                    if frontier2.less_equal(entry.key()) {
                        break;
                    }
                    ready.push(entry.remove());
                }
                if !ready.is_empty() {
                    let Some(trace) = trace.as_mut() else { return };
                    let since = trace.get_logical_compaction().to_owned();
                    for (cap, _) in ready.iter() {
                        // Holding compaction at the event frontier makes this impossible; a violation
                        // would mean wrong answers, so it is a bug worth stopping for.
                        assert!(since.less_equal(cap.time()), "{}: time {} below compaction", "as_of_lookup", cap.time());
                    }
                    // Work list sorted by (key, time): cursors only seek forward.
                    let mut work: Vec<(K, usize, E)> = Vec::new();
                    for (idx, (_, evs)) in ready.iter_mut().enumerate() {
                        work.extend(evs.drain(..).map(|e| (key_of(&e), idx, e)));
                    }
                    // `ready` is in time order, so its index orders times.
                    work.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
                    let (mut cursor, storage) = cursor_list(trace.batches_through(Antichain::new().borrow()).unwrap_or_default());
                    let mut results: Vec<Vec<O>> = (0..ready.len()).map(|_| Vec::new()).collect();
                    // Accumulated values per distinct time of the current key.
                    let mut group_vals: Vec<Vec<(BatchValOwn<Tr>, BatchDiff<Tr>)>> = Vec::new();
                    let mut group_times: Vec<usize> = Vec::new();
                    let mut lo = 0;
                    while lo < work.len() {
                        let mut hi = lo + 1;
                        while hi < work.len() && work[hi].0 == work[lo].0 {
                            hi += 1;
                        }
                        group_times.clear();
                        for w in &work[lo..hi] {
                            if group_times.last() != Some(&w.1) {
                                group_times.push(w.1);
                            }
                        }
                        group_vals.iter_mut().for_each(Vec::clear);
                        group_vals.resize_with(group_times.len().max(group_vals.len()), Vec::new);
                        key_con.clear();
                        key_con.push_own(&work[lo].0);
                        cursor.seek_key(&storage, key_con.index(0));
                        if cursor.get_key(&storage) == Some(key_con.index(0)) {
                            while let Some(val) = cursor.get_val(&storage) {
                                times.clear();
                                cursor.map_times(&storage, |t, d| times.push((C::<Tr>::owned_time(t), C::<Tr>::owned_diff(d))));
                                times.sort_by(|a, b| a.0.cmp(&b.0));
                                // Sweep this key's times (ascending) and the value's updates together.
                                let (mut acc, mut j): (Option<BatchDiff<Tr>>, usize) = (None, 0);
                                for (g, idx) in group_times.iter().enumerate() {
                                    let t_ev = *ready[*idx].0.time();
                                    while j < times.len() && times[j].0 <= t_ev {
                                        match acc.as_mut() {
                                            Some(a) => a.plus_equals(&times[j].1),
                                            None => acc = Some(times[j].1.clone()),
                                        }
                                        j += 1;
                                    }
                                    if let Some(a) = acc.as_ref().filter(|a| !a.is_zero()) {
                                        group_vals[g].push((C::<Tr>::owned_val(val), a.clone()));
                                    }
                                }
                                cursor.step_val(&storage);
                            }
                        }
                        let mut g = 0;
                        for (_, idx, e) in &work[lo..hi] {
                            while group_times[g] != *idx {
                                g += 1;
                            }
                            let time = *ready[*idx].0.time();
                            if let Some(out) = logic(time, e, &group_vals[g]) {
                                results[*idx].push(out);
                            }
                        }
                        lo = hi;
                    }
                    // Emit under each event's own capability (= its time).
                    for ((cap, _), recs) in ready.iter().zip(results) {
                        if !recs.is_empty() {
                            output.session(cap).give_iterator(recs.into_iter());
                        }
                    }
                }

                // 4. Allow compaction up to the least time we can still be asked about.
                let mut hold: Antichain<Time> = frontier1.frontier().to_owned();
                if let Some(t) = stash.keys().next() {
                    hold.insert(*t);
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
