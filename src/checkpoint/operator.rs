//! The one layer for checkpointed state: a trait an operator's state implements, and an operator
//! builder that owns the checkpoint protocol, so that keeping state across a kill is a few lines.
//!
//! The protocol (see `docs/semantics.md#checkpoints`): worker 0 sends a barrier `F` to every
//! worker (a record `F` at time `F`). Each checkpointed operator applies everything before `F`,
//! exports its state there (nothing at or after `F` applied), and goes on. On restore, the
//! checkpoint's parts come in at its frontier; each operator takes its own part, each entry on
//! the worker that owns it, and imports it before it applies anything. An owner names and
//! versions its part ([`CheckpointedState::part`]); the checkpoint composes the parts as bytes,
//! so no module above knows another's state types.
//!
//! ```
//! use timely::dataflow::channels::pact::Pipeline;
//! use timely::dataflow::operators::capture::{Capture, Extract};
//! use timely::dataflow::operators::ToStream;
//! use threatflow::checkpoint::operator::{CheckpointedOperator, CheckpointedState, StateCheckpoints, Step};
//!
//! /// A running total: its state is one number per worker.
//! #[derive(Default)]
//! struct Total(u64);
//!
//! impl CheckpointedState for Total {
//!     type Entry = u64;
//!     fn part(&self) -> (&'static str, u32) { ("total", 1) }
//!     fn route(_: &u64) -> u64 { 0 }
//!     fn import(&mut self, entries: Vec<u64>, _at: u64) { self.0 += entries.iter().sum::<u64>() }
//!     fn export(&mut self, _at: u64, entries: &mut Vec<u64>) { entries.push(self.0) }
//! }
//!
//! let totals = timely::execute_directly(|worker| {
//!     worker.dataflow::<u64, _, _>(|scope| {
//!         let checkpoints = StateCheckpoints::none(scope);
//!         let mut op = CheckpointedOperator::new("Total", &checkpoints, Total::default());
//!         let mut input = op.new_input((1..=4u64).to_stream(scope), Pipeline);
//!         let (mut out, totals) = op.new_output::<u64>();
//!         op.build(move |total, step| {
//!             if let Step::Receive = step {
//!                 input.for_each(|cap, data: &mut Vec<u64>| {
//!                     total.0 += data.iter().sum::<u64>();
//!                     if let Some(cap) = cap.retain_least(0) {
//!                         out.activate().session(&cap).give(total.0);
//!                     }
//!                 });
//!             }
//!         });
//!         totals.capture()
//!     })
//! });
//! let totals: Vec<u64> = totals.extract().into_iter().flat_map(|(_, d)| d).collect();
//! assert_eq!(totals.last(), Some(&10));
//! ```

use std::cell::RefCell;
use std::rc::Rc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{ParallelizationContract, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{InputHandleCore, OutputBuilder};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Capability, Concatenate, Exchange};
use timely::dataflow::{Scope, Stream, StreamVec};
use timely::Container;

use crate::event::Time;

/// An operator's state, as a checkpoint keeps it.
pub trait CheckpointedState: 'static {
    /// One entry of the exported state: a checkpoint holds every worker's, and a restore gives
    /// each to the worker that owns it ([`CheckpointedState::route`]), whatever the worker count.
    type Entry: timely::ExchangeData + Serialize + DeserializeOwned;
    /// The part's name in a checkpoint (unique in a job) and its entries' format version: a
    /// checkpoint whose part has another version is refused.
    fn part(&self) -> (&'static str, u32);
    /// The worker an entry belongs to, as the hash the operator's inputs are exchanged by.
    fn route(entry: &Self::Entry) -> u64;
    /// Takes this worker's entries of a restored checkpoint at frontier `at`, before anything is
    /// applied.
    fn import(&mut self, entries: Vec<Self::Entry>, at: Time);
    /// Writes the state at a barrier `at` (everything before `at` applied, nothing at or after).
    fn export(&mut self, at: Time, entries: &mut Vec<Self::Entry>);
}

/// One worker's state of one operator at a checkpoint, encoded by its owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatePart {
    /// The owner's name for it ([`CheckpointedState::part`]).
    pub name: String,
    /// The owner's format version.
    pub version: u32,
    /// The entries, bincode-encoded.
    pub bytes: Vec<u8>,
}

/// What a checkpointed operator is told to do, in this order on each activation.
pub enum Step<'a> {
    /// Take in what arrived on your inputs (stash it: nothing may be applied before a restore).
    Receive,
    /// The state was restored at the checkpoint's frontier `at` (once, only on a worker that got
    /// entries): emit what the restored state implies, with these capabilities at `at`, one per
    /// output of yours in the order they were made.
    Restored {
        /// The checkpoint's frontier.
        at: Time,
        /// Capabilities at `at`, one per output.
        capabilities: &'a [Capability<Time>],
    },
    /// Apply everything before this time (`None`: everything there is); a barrier may follow.
    Advance(Option<Time>),
}

/// The checkpoint plumbing of one dataflow: barriers in (from worker 0, on every worker), the
/// parts of a restored checkpoint in (at its frontier), and every checkpointed operator's
/// exported parts out. Cloned into every operator that keeps state.
#[derive(Clone)]
pub struct StateCheckpoints<'s> {
    barriers: StreamVec<'s, Time, Time>,
    restore: StreamVec<'s, Time, StatePart>,
    registry: Rc<RefCell<Registry<'s>>>,
}

#[derive(Default)]
struct Registry<'s> {
    declared: Vec<(&'static str, u32)>,
    exported: Vec<StreamVec<'s, Time, (Time, StatePart)>>,
}

impl<'s> StateCheckpoints<'s> {
    /// Plumbing with barriers `F` at time `F` on every worker and the restored parts at the
    /// checkpoint's frontier (any worker).
    pub fn new(barriers: StreamVec<'s, Time, Time>, restore: StreamVec<'s, Time, StatePart>) -> Self {
        StateCheckpoints { barriers, restore, registry: Rc::default() }
    }

    /// Plumbing that never checkpoints nor restores.
    pub fn none(scope: Scope<'s, Time>) -> Self {
        let empty_barriers = timely::dataflow::operators::generic::operator::empty(scope);
        let empty_restore = timely::dataflow::operators::generic::operator::empty(scope);
        StateCheckpoints::new(empty_barriers, empty_restore)
    }

    /// The parts the operators built so far declared: `(name, version)`.
    pub fn declared(&self) -> Vec<(&'static str, u32)> {
        self.registry.borrow().declared.clone()
    }

    /// Every checkpointed operator's exported parts, `(F, part)`, on worker 0. Call it once every
    /// operator is built.
    pub fn exported(&self, scope: Scope<'s, Time>) -> StreamVec<'s, Time, (Time, StatePart)> {
        let streams = std::mem::take(&mut self.registry.borrow_mut().exported);
        scope.concatenate(streams).exchange(|_| 0)
    }

    /// The barriers, for operators that keep positions rather than state (sources).
    pub fn barriers(&self) -> StreamVec<'s, Time, Time> {
        self.barriers.clone()
    }
}

/// An output of records `D`, as [`CheckpointedOperator::new_output`] makes it.
pub type OutputOf<D> = OutputBuilder<Time, CapacityContainerBuilder<Vec<D>>>;

/// A restored checkpoint's entries for this worker as they arrive, with capabilities at its frontier.
struct Restoring<E> {
    at: Time,
    capabilities: Vec<Capability<Time>>,
    entries: Vec<E>,
}

/// Builds an operator whose state `S` is checkpointed: inputs and outputs as with timely's
/// `OperatorBuilder`, and logic called with the state and a [`Step`]. The builder adds the
/// barrier and restore inputs and the export output, and runs the protocol (module doc).
pub struct CheckpointedOperator<'s, S: CheckpointedState> {
    builder: OperatorBuilder<'s, Time>,
    checkpoints: StateCheckpoints<'s>,
    state: S,
    outputs: usize,
}

impl<'s, S: CheckpointedState> CheckpointedOperator<'s, S> {
    /// An operator named `name` (shown in timely's logs) keeping `state`.
    pub fn new(name: &str, checkpoints: &StateCheckpoints<'s>, state: S) -> Self {
        let builder = OperatorBuilder::new(name.to_owned(), checkpoints.barriers.scope());
        CheckpointedOperator { builder, checkpoints: checkpoints.clone(), state, outputs: 0 }
    }

    /// Adds an input (as timely's `OperatorBuilder::new_input`).
    pub fn new_input<C: Container, P>(&mut self, stream: Stream<'s, Time, C>, pact: P) -> InputHandleCore<Time, C, P::Puller>
    where
        P: ParallelizationContract<Time, C>,
    {
        self.builder.new_input(stream, pact)
    }

    /// Adds an output of records `D`; its index (for [`Step::Restored`]) is the number made before.
    pub fn new_output<D: Clone + 'static>(&mut self) -> (OutputOf<D>, StreamVec<'s, Time, D>) {
        self.outputs += 1;
        let (output, stream) = self.builder.new_output::<Vec<D>>();
        (OutputBuilder::from(output), stream)
    }

    /// Builds the operator with its logic (see [`Step`]).
    pub fn build(self, mut logic: impl FnMut(&mut S, Step<'_>) + 'static) {
        let CheckpointedOperator { mut builder, checkpoints, mut state, outputs } = self;
        let (name, version) = state.part();
        let mut registry = checkpoints.registry.borrow_mut();
        registry.declared.push((name, version));
        let restore = checkpoints
            .restore
            .clone()
            .flat_map(move |part: StatePart| if part.name == name { decode_part::<S::Entry>(&part, version) } else { Vec::new() })
            .exchange(|entry: &S::Entry| S::route(entry));
        let restore_port = builder.shape().inputs() + 1;
        let mut barriers_in = builder.new_input(checkpoints.barriers.clone(), Pipeline);
        let mut restore_in = builder.new_input(restore, Pipeline);
        let (exported_out, exported) = builder.new_output::<Vec<(Time, StatePart)>>();
        let mut exported_out = OutputOf::<(Time, StatePart)>::from(exported_out);
        registry.exported.push(exported);
        builder.build(move |_capabilities| {
            let mut barriers: Vec<Capability<Time>> = Vec::new();
            let mut restored: Option<Restoring<S::Entry>> = None;
            let mut restoring = true;
            let mut entries = Vec::new();
            move |frontiers| {
                logic(&mut state, Step::Receive);
                barriers_in.for_each(|cap, data| {
                    for at in data.drain(..) {
                        barriers.push(cap.delayed(&at, outputs));
                    }
                });
                restore_in.for_each(|cap, data| {
                    let Some(&at) = cap.least() else { return };
                    let restoring = restored.get_or_insert_with(|| Restoring {
                        at,
                        capabilities: (0..outputs).map(|output| cap.delayed(&at, output)).collect(),
                        entries: Vec::new(),
                    });
                    restoring.entries.append(data);
                });
                // Nothing is applied until every restored entry is in.
                if restoring {
                    if !frontiers[restore_port].frontier().is_empty() {
                        return;
                    }
                    restoring = false;
                    if let Some(Restoring { at, capabilities, entries }) = restored.take() {
                        let (count, started) = (entries.len(), std::time::Instant::now());
                        state.import(entries, at);
                        logic(&mut state, Step::Restored { at, capabilities: &capabilities });
                        tracing::info!(part = name, entries = count, import_ms = started.elapsed().as_secs_f64() * 1e3, "state restored");
                    }
                }
                // Work up to the least frontier, stopping at each barrier to export.
                let bound = frontiers.iter().filter_map(|f| f.frontier().first().copied()).min();
                barriers.sort_by_key(|c| *c.time());
                loop {
                    let barrier = barriers.first().map(|c| *c.time()).filter(|b| bound.is_none_or(|f| *b < f));
                    logic(&mut state, Step::Advance(barrier.or(bound)));
                    let Some(at) = barrier else { break };
                    let cap = barriers.remove(0);
                    entries.clear();
                    state.export(at, &mut entries);
                    let bytes = bincode::serialize(&entries).unwrap_or_else(|e| panic!("encoding state part {name}: {e}"));
                    exported_out.activate().session(&cap).give((at, StatePart { name: name.to_string(), version, bytes }));
                }
            }
        });
    }
}

/// The entries of a part. Its version was checked before the dataflow ran and the checkpoint's
/// checksum verified, so a failure here is a bug, not bad input.
fn decode_part<E: DeserializeOwned>(part: &StatePart, version: u32) -> Vec<E> {
    assert_eq!(part.version, version, "state part {} has version {}, not {version}", part.name, part.version);
    bincode::deserialize(&part.bytes).unwrap_or_else(|e| panic!("decoding state part {}: {e}", part.name))
}

/// Checks that a checkpoint's parts can be restored by a dataflow that declared `declared`:
/// every part is declared with its version, and no name is declared twice.
pub fn check_parts(parts: &[StatePart], declared: &[(&'static str, u32)]) -> anyhow::Result<()> {
    for (i, (name, _)) in declared.iter().enumerate() {
        anyhow::ensure!(!declared[..i].iter().any(|(n, _)| n == name), "two operators keep state under the name {name:?}");
    }
    for part in parts {
        match declared.iter().find(|(name, _)| *name == part.name) {
            Some((_, version)) if *version == part.version => {}
            Some((_, version)) => anyhow::bail!(
                "the checkpoint's state {:?} has format version {}, this build reads version {version}; move the checkpoint away to start over",
                part.name,
                part.version
            ),
            None => anyhow::bail!(
                "the checkpoint holds state {:?} that no operator of this dataflow keeps (written by another dataflow?)",
                part.name
            ),
        }
    }
    Ok(())
}
