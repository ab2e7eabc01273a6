//! The shared inputs every dataflow builds on, and the trait a dataflow implements.
//!
//! The engine builds, once per job: the events partitioned by user, the per-user feature
//! arrangement, and the broadcast control arrangement (models and rules). A dataflow (one file in
//! `dataflows/`) receives them as [`SharedInputs`] and returns its decisions; it reads the shared
//! arrangements instead of re-deriving them, and may build arrangements of its own.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::{ValBatcher, ValSpine};
use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange as ExchangePact, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::{Capability, Concat, Exchange};
use timely::dataflow::{Scope, StreamVec};

use crate::as_of::{as_of_lookup, TimeStash};
use crate::checkpoint::WindowEntry;
use crate::control::Control;
use crate::decision::Decision;
use crate::event::{Event, Time};
use crate::features::{route, FeatureUpdate, FeatureVal, Features, UserKey, WindowState};

/// An arrangement keyed by user, maintained on the worker that owns the user.
pub type UserArrangement<'s, V> = Arranged<'s, TraceAgent<ValSpine<UserKey, V, Time, isize>>>;

/// The per-user feature arrangement.
pub type FeatureArrangement<'s> = UserArrangement<'s, FeatureVal>;

/// The control arrangement (models and rules), replicated on every worker.
pub type ControlArrangement<'s> = Arranged<'s, TraceAgent<ValSpine<(), Control, Time, isize>>>;

/// An event routed to the worker that owns its user; cheap to clone within a worker.
pub type UserEvent = Rc<Event>;

/// Events with their standard features as of their time.
pub type Scored<'s> = StreamVec<'s, Time, (UserEvent, Features)>;

/// The feature arrangement's updates (see [`crate::features`]).
pub type FeatureUpdates<'s> = VecCollection<'s, Time, (UserKey, FeatureVal)>;

/// What every dataflow receives.
#[derive(Clone)]
pub struct SharedInputs<'s> {
    /// The dataflow scope.
    pub scope: Scope<'s, Time>,
    /// Valid events, on the worker owning their user, each carrying the time it is judged at.
    pub events: StreamVec<'s, Time, UserEvent>,
    /// The same events with their standard features as of their time (see [`feature_windows`]).
    pub scored: Scored<'s>,
    /// Models and rules in force, on every worker.
    pub control: ControlArrangement<'s>,
    /// The feature windows' updates, arranged by [`SharedInputs::features`] on first use.
    feature_updates: FeatureUpdates<'s>,
    features: Rc<RefCell<Option<FeatureArrangement<'s>>>>,
    /// Set once a dataflow asks for the arrangement: until then the window operator sends no updates.
    features_wanted: Rc<Cell<bool>>,
}

impl<'s> SharedInputs<'s> {
    /// The standard feature aggregates per user, as a differential arrangement that any dataflow
    /// can read as of any time (with [`as_of_lookup`] or [`with_features`]): updates `(user,
    /// value)` with `+d` at an event's time and `-d` at time + W (see [`crate::features`]).
    ///
    /// Built once, on the first call, and shared by every caller; a job whose dataflows never ask
    /// for it does not maintain it ([`SharedInputs::scored`] already carries each event's features).
    pub fn features(&self) -> FeatureArrangement<'s> {
        self.features_wanted.set(true);
        self.features.borrow_mut().get_or_insert_with(|| arrange_by_user(self.feature_updates.clone(), "Features")).clone()
    }
}

/// A dataflow a researcher can select with `--dataflow NAME`.
pub trait Dataflow: Send + Sync {
    /// The name `--dataflow` selects it by.
    fn name(&self) -> &'static str;
    /// One line on what it detects.
    fn description(&self) -> &'static str;
    /// Builds the dataflow from the shared inputs; returns its decisions, each at its event's time.
    fn build<'s>(&self, inputs: SharedInputs<'s>) -> StreamVec<'s, Time, Decision>;
}

/// Builds the shared inputs from the source's events and the control collection (no checkpoints).
pub fn build_shared<'s>(
    scope: Scope<'s, Time>,
    events: StreamVec<'s, Time, Event>,
    control: VecCollection<'s, Time, ((), Control)>,
) -> SharedInputs<'s> {
    build_shared_with_checkpoints(scope, events, control, no_checkpoints(scope)).0
}

/// Checkpoint plumbing that never checkpoints.
pub fn no_checkpoints(scope: Scope<'_, Time>) -> WindowCheckpoints<'_> {
    WindowCheckpoints { barriers: empty(scope), restore: empty(scope) }
}

/// Builds a dataflow over the shared inputs and takes its decisions through the verdict step
/// (correlation rules, blocks; see [`crate::verdicts`]): the job's decisions, and the state each
/// worker exports at checkpoint barriers.
pub fn decisions_of<'s>(
    dataflow: &dyn Dataflow,
    inputs: SharedInputs<'s>,
    block_for: Time,
    checkpoints: WindowCheckpoints<'s>,
) -> (StreamVec<'s, Time, Decision>, ExportedWindows<'s>) {
    let decided = dataflow.build(inputs.clone());
    let (hits, correlations) = crate::correlation::correlate(inputs.scored.clone(), inputs.control.clone(), checkpoints.clone());
    let unblocks = inputs
        .control
        .flat_map_ref(|_, control: &Control| match control {
            Control::Unblock(unblock) => Some(unblock.clone()),
            _ => None,
        })
        .inner;
    let (decisions, blocks) = crate::verdicts::verdicts(inputs.scored, decided, hits, unblocks, block_for, checkpoints);
    // Gathered on worker 0, as the feature windows are.
    (decisions, correlations.concat(blocks).exchange(|_| 0))
}

/// A stream with no records.
fn empty<'s, D: timely::ExchangeData>(scope: Scope<'s, Time>) -> StreamVec<'s, Time, D> {
    timely::dataflow::operators::generic::operator::empty(scope)
}

/// Arranges a per-user collection that is already partitioned by user (as [`SharedInputs::events`] is).
pub fn arrange_by_user<'s, V>(updates: VecCollection<'s, Time, (UserKey, V)>, name: &str) -> UserArrangement<'s, V>
where
    V: differential_dataflow::ExchangeData,
{
    arrange_core::<_, _, ValBatcher<UserKey, V, Time, isize>, ValSpine<UserKey, V, Time, isize>>(
        updates.inner,
        Pipeline,
        name,
        ValBatcher::new,
    )
}

/// Each worker's windows exported at a barrier `F`, as `(F, entries)`, on worker 0.
pub type ExportedWindows<'s> = StreamVec<'s, Time, (Time, Vec<WindowEntry>)>;

/// Checkpoint plumbing of the feature windows: barrier times in (broadcast, from worker 0),
/// restored window entries in (at the checkpoint's frontier), and each worker's exported windows
/// out (on worker 0). The correlation windows and the blocks use the same plumbing.
#[derive(Clone)]
pub struct WindowCheckpoints<'s> {
    /// Checkpoint barriers: a record `F` at time `F` asks every worker for its windows at `F`.
    pub barriers: StreamVec<'s, Time, Time>,
    /// Window entries of a restored checkpoint, at its frontier.
    pub restore: StreamVec<'s, Time, WindowEntry>,
}

/// Builds the shared inputs from the source's events and the control collection, with the
/// checkpoint plumbing; returns them and the stream of windows exported at each barrier (on
/// worker 0: `(F, entries)` from every worker).
pub fn build_shared_with_checkpoints<'s>(
    scope: Scope<'s, Time>,
    events: StreamVec<'s, Time, Event>,
    control: VecCollection<'s, Time, ((), Control)>,
    checkpoints: WindowCheckpoints<'s>,
) -> (SharedInputs<'s>, ExportedWindows<'s>) {
    let events = events.exchange(|e: &Event| route(&e.key)).map(Rc::new);
    let features_wanted = Rc::new(Cell::new(false));
    let (scored, feature_updates, exported) = feature_windows(events.clone(), checkpoints, Rc::clone(&features_wanted));
    let control = arrange_core::<_, _, ValBatcher<(), Control, Time, isize>, ValSpine<(), Control, Time, isize>>(
        control.inner.broadcast(),
        Pipeline,
        "Control",
        ValBatcher::new,
    );
    let features = Rc::new(RefCell::new(None));
    (SharedInputs { scope, events, scored, control, feature_updates, features, features_wanted }, exported)
}

/// The feature windows: each event with its standard features as of its own time, computed once
/// the events' frontier has passed that time (every event of the millisecond counts, whatever
/// the arrival order); and, when `updates_wanted` is set before the dataflow runs, the
/// feature-arrangement updates, with the retractions sent when the frontier passes their time
/// (see [`WindowState`]).
///
/// A checkpoint barrier `F` splits the work: everything before `F` is applied, the windows are
/// exported, then the rest. Restored entries are imported before any event is applied.
pub fn feature_windows<'s>(
    events: StreamVec<'s, Time, UserEvent>,
    checkpoints: WindowCheckpoints<'s>,
    updates_wanted: Rc<Cell<bool>>,
) -> (Scored<'s>, FeatureUpdates<'s>, ExportedWindows<'s>) {
    let scope = events.scope();
    let mut builder = OperatorBuilder::new("FeatureWindows".to_owned(), scope);
    let mut events_in = builder.new_input(events, Pipeline);
    let mut barriers_in = builder.new_input(checkpoints.barriers, Pipeline);
    let mut restore_in = builder.new_input(checkpoints.restore, ExchangePact::new(|e: &WindowEntry| route(&e.key())));
    let (scored_out, scored) = builder.new_output::<Vec<(UserEvent, Features)>>();
    let (updates_out, updates) = builder.new_output::<Vec<FeatureUpdate>>();
    let (exported_out, exported) = builder.new_output::<Vec<(Time, Vec<WindowEntry>)>>();
    let mut scored_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<(UserEvent, Features)>>>::from(scored_out);
    let mut updates_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<FeatureUpdate>>>::from(updates_out);
    let mut exported_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<(Time, Vec<WindowEntry>)>>>::from(exported_out);
    const SCORED: usize = 0;
    const UPDATES: usize = 1;
    const EXPORTED: usize = 2;
    builder.build(move |_capabilities| {
        let mut stash: TimeStash<UserEvent> = TimeStash::for_outputs(2);
        let mut ready = Vec::new();
        let mut state = WindowState::default();
        // Held (on the updates output) at the earliest pending retraction, when updates are wanted.
        let mut retractions: Option<Capability<Time>> = None;
        let mut barriers: Vec<Capability<Time>> = Vec::new();
        let mut restoring: Option<(Capability<Time>, Vec<WindowEntry>)> = None;
        let mut updates = Vec::new();
        let mut features = Vec::new();
        move |frontiers| {
            let wanted = updates_wanted.get();
            events_in.for_each(|cap, data| {
                for event in data.drain(..) {
                    stash.insert(&cap, event.time, event);
                }
            });
            barriers_in.for_each(|cap, data| {
                for at in data.drain(..) {
                    barriers.push(cap.delayed(&at, EXPORTED));
                }
            });
            restore_in.for_each(|cap, data| {
                if restoring.is_none() {
                    restoring = cap.retain_least(UPDATES).map(|cap| (cap, Vec::new()));
                }
                if let Some((_, entries)) = restoring.as_mut() {
                    entries.append(data);
                }
            });
            // Nothing is applied until every restored entry is in.
            let restore_frontier = frontiers[2].frontier().first().copied();
            if let Some((cap, entries)) = restoring.take_if(|(cap, _)| restore_frontier.is_none_or(|f| f > *cap.time())) {
                let at = *cap.time();
                let (started, count) = (std::time::Instant::now(), entries.len());
                state.import(entries, at, &mut updates);
                tracing::info!(entries = count, import_ms = started.elapsed().as_secs_f64() * 1e3, "feature windows restored");
                if wanted {
                    if let Some(next) = state.next_expiry() {
                        retractions = Some(cap.delayed(&next));
                    }
                    updates_out.activate().session(&cap).give_iterator(updates.drain(..));
                }
                updates.clear();
            }
            if restoring.is_some() {
                return;
            }
            // Work up to the least of the three frontiers, stopping at each barrier to export.
            let bound = frontiers.iter().filter_map(|f| f.frontier().first().copied()).min();
            barriers.sort_by_key(|c| *c.time());
            let mut scored_handle = scored_out.activate();
            let mut updates_handle = updates_out.activate();
            let mut exported_handle = exported_out.activate();
            loop {
                let barrier = barriers.first().map(|c| *c.time()).filter(|b| bound.is_none_or(|f| *b < f));
                let upto = barrier.or(bound);
                ready.clear();
                stash.take_before(upto, &mut ready);
                if let (Some(held_scored), Some(held_updates)) = (stash.held_for(SCORED), stash.held_for(UPDATES)) {
                    for same in ready.chunk_by(|a, b| a.0 == b.0) {
                        state.judge(same[0].0, same, &mut updates, &mut features);
                    }
                    scored_handle
                        .session(held_scored)
                        .give_iterator(ready.drain(..).zip(features.drain(..)).map(|((_, event), features)| (event, features)));
                    // New retractions may be earlier than the held one: mint from the events' capability.
                    if let Some(next) = state.next_expiry().filter(|_| wanted) {
                        match retractions.as_mut() {
                            Some(cap) if *cap.time() <= next => {}
                            _ => retractions = Some(held_updates.delayed(&next)),
                        }
                    }
                }
                state.expire(upto, &mut updates);
                if wanted && !updates.is_empty() {
                    // Every update is at or after one of the two capabilities; use the earlier.
                    let cap = match (stash.held_for(UPDATES), retractions.as_ref()) {
                        (Some(a), Some(b)) => Some(if a.time() <= b.time() { a } else { b }),
                        (a, b) => a.or(b),
                    };
                    if let Some(cap) = cap {
                        updates_handle.session(cap).give_iterator(updates.drain(..));
                    }
                }
                updates.clear();
                match state.next_expiry().filter(|_| wanted) {
                    Some(next) => {
                        if let Some(cap) = retractions.as_mut() {
                            cap.downgrade(&next);
                        }
                    }
                    None => retractions = None,
                }
                stash.release();
                let Some(at) = barrier else { break };
                let cap = barriers.remove(0);
                let mut entries = Vec::new();
                state.export(&mut entries);
                exported_handle.session(&cap).give((at, entries));
            }
        }
    });
    (scored, updates.as_collection(), exported.exchange(|_| 0))
}

/// Looks up each event's standard features in the shared arrangement as of its own time (for
/// events of a dataflow's own making; [`SharedInputs::scored`] already has the source's events
/// with theirs).
pub fn with_features<'s>(
    events: StreamVec<'s, Time, UserEvent>,
    features: FeatureArrangement<'s>,
) -> StreamVec<'s, Time, (UserEvent, Features)> {
    as_of_lookup(
        events,
        features,
        Pipeline,
        "FeatureLookup",
        |e: &UserEvent| e.key,
        |e: &UserEvent| e.time,
        |_time, e, vals| Some((Rc::clone(e), Features::from_accumulated(e, vals))),
    )
}

/// Decides events with their features against the models and rules in force at their time.
pub fn decide<'s>(
    scored: StreamVec<'s, Time, (UserEvent, Features)>,
    control: ControlArrangement<'s>,
) -> StreamVec<'s, Time, Decision> {
    as_of_lookup(
        scored,
        control,
        Pipeline,
        "Decide",
        |_| (),
        |(e, _): &(UserEvent, Features)| e.time,
        |time, (e, f), controls| crate::decision::decide(time, e, f, controls),
    )
}
