//! The shared inputs every dataflow builds on, and the trait a dataflow implements.
//!
//! The engine builds, once per job: the events partitioned by user, the per-user feature
//! arrangement, and the broadcast control arrangement (models and rules). A dataflow (one file in
//! `dataflows/`) receives them as [`SharedInputs`] and returns its decisions; it reads the shared
//! arrangements instead of re-deriving them, and may build arrangements of its own.

use std::rc::Rc;

use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::{ValBatcher, ValSpine};
use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::{Capability, Exchange, Operator};
use timely::dataflow::{Scope, StreamVec};

use crate::as_of::{as_of_lookup, TimeStash};
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

/// What every dataflow receives.
#[derive(Clone)]
pub struct SharedInputs<'s> {
    /// The dataflow scope.
    pub scope: Scope<'s, Time>,
    /// Valid events, on the worker owning their user, each carrying the time it is judged at.
    pub events: StreamVec<'s, Time, UserEvent>,
    /// The standard feature aggregates, per user.
    pub features: FeatureArrangement<'s>,
    /// Models and rules in force, on every worker.
    pub control: ControlArrangement<'s>,
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

/// Builds the shared inputs from the source's events and the control collection.
pub fn build_shared<'s>(
    scope: Scope<'s, Time>,
    events: StreamVec<'s, Time, Event>,
    control: VecCollection<'s, Time, ((), Control)>,
) -> SharedInputs<'s> {
    let events = events.exchange(|e: &Event| route(&e.key)).map(Rc::new);
    let features = arrange_by_user(feature_updates(events.clone()), "Features");
    let control = arrange_core::<_, _, ValBatcher<(), Control, Time, isize>, ValSpine<(), Control, Time, isize>>(
        control.inner.broadcast(),
        Pipeline,
        "Control",
        ValBatcher::new,
    );
    SharedInputs { scope, events, features, control }
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

/// The feature-arrangement updates of events, produced in time order once the events' frontier
/// has passed each time (coalescing distinct values needs that order), with the retractions sent
/// when the frontier passes their time (see [`WindowState`]).
pub fn feature_updates<'s>(events: StreamVec<'s, Time, UserEvent>) -> VecCollection<'s, Time, (UserKey, FeatureVal)> {
    events
        .unary_frontier::<CapacityContainerBuilder<Vec<FeatureUpdate>>, _, _, _>(Pipeline, "FeatureWindows", |_cap, _info| {
            let mut stash: TimeStash<UserEvent> = TimeStash::default();
            let mut state = WindowState::default();
            // Held at the earliest pending retraction.
            let mut retractions: Option<Capability<Time>> = None;
            let mut updates = Vec::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    for event in data.drain(..) {
                        stash.insert(&cap, event.time, event);
                    }
                });
                let ready = stash.take_ready(frontier);
                if let Some(held) = stash.held() {
                    for (time, event) in &ready {
                        state.updates(event.key, event, *time, &mut updates);
                    }
                    // New retractions may be earlier than the held one: mint from the events' capability.
                    if let Some(next) = state.next_expiry() {
                        match retractions.as_mut() {
                            Some(cap) if *cap.time() <= next => {}
                            _ => retractions = Some(held.delayed(&next)),
                        }
                    }
                }
                let upto = frontier.frontier().first().copied();
                state.expire(upto, &mut updates);
                if !updates.is_empty() {
                    // Every update is at or after one of the two capabilities; use the earlier.
                    let cap = match (stash.held(), retractions.as_ref()) {
                        (Some(a), Some(b)) => Some(if a.time() <= b.time() { a } else { b }),
                        (a, b) => a.or(b),
                    };
                    if let Some(cap) = cap {
                        output.session(cap).give_iterator(updates.drain(..));
                    }
                }
                match state.next_expiry() {
                    Some(next) => {
                        if let Some(cap) = retractions.as_mut() {
                            cap.downgrade(&next);
                        }
                    }
                    None => retractions = None,
                }
                stash.release();
            }
        })
        .as_collection()
}

/// Looks up each event's standard features as of its own time.
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
