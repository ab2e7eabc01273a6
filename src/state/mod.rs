//! Per-user state over event time: the feature windows and the arrangements every detector reads
//! as of an event's own time.
//!
//! [`features`] defines the ten standard features and the windows that maintain them;
//! [`windows`] is the operator that runs them (checkpointed); [`windowed`] keeps any per-user
//! collection of values over a window the same way, for a researcher's dataflow; [`as_of`] is the
//! half join that reads an arrangement as of each event's time.

use std::rc::Rc;

use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::{ValBatcher, ValSpine};
use differential_dataflow::VecCollection;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::StreamVec;

use crate::event::{Event, Time, UserKey};
use crate::state::as_of::as_of_lookup;
use crate::state::features::{FeatureVal, Features};

pub mod as_of;
pub mod features;
pub mod windowed;
pub mod windows;

/// An event routed to the worker that owns its user; cheap to clone within a worker.
pub type UserEvent = Rc<Event>;

/// Events with their standard features as of their time.
pub type Scored<'s> = StreamVec<'s, Time, (UserEvent, Features)>;

/// An arrangement keyed by user, maintained on the worker that owns the user.
pub type UserArrangement<'s, V> = Arranged<'s, TraceAgent<ValSpine<UserKey, V, Time, isize>>>;

/// The per-user feature arrangement.
pub type FeatureArrangement<'s> = UserArrangement<'s, FeatureVal>;

/// The feature arrangement's updates (see [`features`]).
pub type FeatureUpdates<'s> = VecCollection<'s, Time, (UserKey, FeatureVal)>;

/// Arranges a per-user collection that is already partitioned by user (as the events are).
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

/// Looks up each event's standard features in the feature arrangement as of its own time.
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
        |_time, e, vals, _| {
            let features = Features::from_accumulated(&e, vals);
            Some((e, features))
        },
    )
}
