//! The dataflows a job can run, one file each, and what every one of them is built from;
//! `--dataflow NAME` selects one.
//!
//! A dataflow receives the job's [`SharedInputs`] (the events on the worker that owns their user,
//! each with its standard features as of its time, the shared feature arrangement and the control
//! arrangement of models, rules and marks) and returns its decisions. It reads the shared
//! arrangements instead of re-deriving them; state of its own goes through the checkpoint layer
//! ([`SharedInputs::windowed_by_user`], or a
//! [`CheckpointedOperator`](crate::checkpoint::operator::CheckpointedOperator) with
//! [`SharedInputs::checkpoints`]), so that a job restored after a kill decides exactly as one
//! that never stopped.
//!
//! To add one: write `src/dataflows/NAME.rs` with a type implementing [`Dataflow`], add
//! `pub mod NAME;` here and an entry to [`all`].

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::trace::implementations::{ValBatcher, ValSpine};
use differential_dataflow::VecCollection;
use serde::de::DeserializeOwned;
use serde::Serialize;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::vec::{Broadcast, Filter, Map};
use timely::dataflow::operators::Exchange;
use timely::dataflow::{Scope, StreamVec};

use crate::checkpoint::operator::StateCheckpoints;
use crate::detect::control::{Control, ControlArrangement};
use crate::detect::decision::Decision;
use crate::detect::enrichment::EnrichmentMode;
use crate::detect::intel::IntelOptions;
use crate::detect::sigma_set::LatestSigmaSet;
use crate::enrich::intel::Indicator;
use crate::event::{route, Event, Time, UserKey};
use crate::state::windowed::{windowed_by_user, Window};
use crate::state::windows::feature_windows;
use crate::state::{arrange_by_user, FeatureArrangement, FeatureUpdates, Scored, UserArrangement, UserEvent};

pub mod country_drift;
pub mod threat;

/// A dataflow a researcher can select with `--dataflow NAME`.
pub trait Dataflow: Send + Sync {
    /// The name `--dataflow` selects it by.
    fn name(&self) -> &'static str;
    /// One line on what it detects.
    fn description(&self) -> &'static str;
    /// Whether every piece of state the dataflow keeps goes through the checkpoint layer (or is
    /// read from the shared inputs, which do). A dataflow that says `false` cannot run with
    /// checkpoints: restored, it would have forgotten its history and decide differently.
    fn checkpointed(&self) -> bool;
    /// Builds the dataflow from the shared inputs; returns its decisions, each at its event's time.
    fn build<'s>(&self, inputs: SharedInputs<'s>) -> StreamVec<'s, Time, Decision>;
}

/// Every dataflow, the default first.
pub fn all() -> Vec<Box<dyn Dataflow>> {
    vec![Box::new(threat::Threat), Box::new(country_drift::CountryDrift::default())]
}

/// The dataflow named `name`.
pub fn find(name: &str) -> Option<Box<dyn Dataflow>> {
    all().into_iter().find(|d| d.name() == name)
}

/// The names of all dataflows.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|d| d.name()).collect()
}

/// What every dataflow receives.
#[derive(Clone)]
pub struct SharedInputs<'s> {
    /// The dataflow scope.
    pub scope: Scope<'s, Time>,
    /// Valid events, on the worker owning their user, each carrying the time it is judged at.
    pub events: StreamVec<'s, Time, UserEvent>,
    /// The same events with their standard features as of their time.
    pub scored: Scored<'s>,
    /// Models, rules and marks in force, on every worker.
    pub control: ControlArrangement<'s>,
    /// The checkpoint plumbing, for operators that keep state of their own.
    pub checkpoints: StateCheckpoints<'s>,
    /// `retro` decisions: events of the past that an indicator arriving later matches
    /// ([`crate::detect::intel`]); added to the job's decisions after the verdict step.
    pub retro: StreamVec<'s, Time, Decision>,
    /// Where the decision step publishes the Sigma rules in force for the decoders to match
    /// records early, when they do ([`SharedInputs::with_early_matching`]).
    pub latest_sigma: Option<Arc<LatestSigmaSet>>,
    /// The feature windows' updates, arranged by [`SharedInputs::features`] on first use.
    feature_updates: FeatureUpdates<'s>,
    features: Rc<RefCell<Option<FeatureArrangement<'s>>>>,
    /// Set once a dataflow asks for the arrangement: until then the window operator sends no updates.
    features_wanted: Rc<Cell<bool>>,
    /// Arrangements a dataflow made with [`SharedInputs::arrange_by_user`]: state the checkpoints
    /// do not keep.
    unkept: Rc<RefCell<Vec<String>>>,
}

impl<'s> SharedInputs<'s> {
    /// Builds the shared inputs from the source's events and the control collection: the control
    /// collection is broadcast and arranged on every worker, its indicators apart; events are
    /// enriched as `enrichment` says ([`crate::detect::enrichment`]) where they were read; then
    /// they go to the worker owning their user, are matched against the indicators as `intel`
    /// says ([`crate::detect::intel`]) and go through the feature windows.
    pub fn build(
        scope: Scope<'s, Time>,
        events: StreamVec<'s, Time, Event>,
        control: VecCollection<'s, Time, ((), Control)>,
        checkpoints: &StateCheckpoints<'s>,
        enrichment: EnrichmentMode,
        intel: IntelOptions,
    ) -> Self {
        let (control, indicators) = split_indicators(control.inner.broadcast());
        let control = arrange_core::<_, _, ValBatcher<(), Control, Time, isize>, ValSpine<(), Control, Time, isize>>(
            control,
            Pipeline,
            "Control",
            ValBatcher::new,
        );
        let events = enrichment.apply(events, &control);
        let events = events.exchange(|e: &Event| route(&e.key));
        let (events, retro) = intel.apply(events, indicators, checkpoints);
        let events = events.map(Rc::new);
        let features_wanted = Rc::new(Cell::new(false));
        let (scored, feature_updates) = feature_windows(events.clone(), checkpoints, Rc::clone(&features_wanted));
        SharedInputs {
            scope,
            events,
            scored,
            control,
            checkpoints: checkpoints.clone(),
            retro,
            latest_sigma: None,
            feature_updates,
            features: Rc::default(),
            features_wanted,
            unkept: Rc::default(),
        }
    }

    /// The same inputs with the decoders matching records against the Sigma rules `latest`
    /// holds (see [`crate::detect::sigma_set`]).
    pub fn with_early_matching(self, latest: Option<Arc<LatestSigmaSet>>) -> Self {
        SharedInputs { latest_sigma: latest, ..self }
    }

    /// The standard feature aggregates per user, as a differential arrangement that any dataflow
    /// can read as of any time (with [`crate::state::as_of::as_of_lookup`] or
    /// [`crate::state::with_features`]): updates `(user, value)` with `+d` at an event's time and
    /// `-d` at time + W (see [`crate::state::features`]).
    ///
    /// Built once, on the first call, and shared by every caller; a job whose dataflows never ask
    /// for it does not maintain it ([`SharedInputs::scored`] already carries each event's features).
    pub fn features(&self) -> FeatureArrangement<'s> {
        self.features_wanted.set(true);
        self.features.borrow_mut().get_or_insert_with(|| arrange_by_user(self.feature_updates.clone(), "Features")).clone()
    }

    /// A per-user collection of `values` (`((user, value), time)`), each present for `window`,
    /// arranged by user and kept by the checkpoints under `name` (see [`crate::state::windowed`]).
    pub fn windowed_by_user<V>(&self, name: &'static str, values: StreamVec<'s, Time, ((UserKey, V), Time)>, window: Window) -> UserArrangement<'s, V>
    where
        V: differential_dataflow::ExchangeData + Serialize + DeserializeOwned,
    {
        windowed_by_user(name, values, window, &self.checkpoints)
    }

    /// Arranges a per-user collection of the dataflow's own making. Its contents are not
    /// checkpointed: a job with checkpoints refuses a dataflow that uses it.
    pub fn arrange_by_user<V>(&self, updates: VecCollection<'s, Time, (UserKey, V)>, name: &str) -> UserArrangement<'s, V>
    where
        V: differential_dataflow::ExchangeData,
    {
        self.unkept.borrow_mut().push(name.to_string());
        arrange_by_user(updates, name)
    }

    /// The arrangements made with [`SharedInputs::arrange_by_user`].
    pub fn unkept_state(&self) -> Vec<String> {
        self.unkept.borrow().clone()
    }
}

/// The control collection's updates without its indicators, and the indicators' updates: the
/// arrangement every event reads stays small however many indicators a job has.
#[allow(clippy::type_complexity)]
fn split_indicators<'s>(
    control: StreamVec<'s, Time, (((), Control), Time, isize)>,
) -> (StreamVec<'s, Time, (((), Control), Time, isize)>, StreamVec<'s, Time, (Indicator, Time, isize)>) {
    let indicators = control.clone().flat_map(|(((), control), time, diff)| match control {
        Control::Indicator(indicator) => Some((indicator, time, diff)),
        _ => None,
    });
    let others = control.filter(|(((), control), _, _)| !matches!(control, Control::Indicator(_)));
    (others, indicators)
}

#[cfg(test)]
mod tests {
    use differential_dataflow::input::Input;

    use super::*;

    /// An arrangement a dataflow makes itself is reported, so that a job with checkpoints refuses it.
    #[test]
    fn an_arrangement_of_a_dataflows_own_making_is_reported_as_unkept() {
        timely::execute_directly(|worker| {
            worker.dataflow::<Time, _, _>(|scope| {
                let checkpoints = StateCheckpoints::none(scope);
                let (_control_input, control) = scope.new_collection::<((), Control), isize>();
                let events = timely::dataflow::operators::generic::operator::empty(scope);
                let inputs = SharedInputs::build(scope, events, control, &checkpoints, EnrichmentMode::Off, IntelOptions::default());
                assert!(inputs.unkept_state().is_empty());
                let (_own_input, own) = scope.new_collection::<(UserKey, u64), isize>();
                inputs.arrange_by_user(own, "OwnHistory");
                assert_eq!(inputs.unkept_state(), vec!["OwnHistory".to_string()]);
            });
        });
    }
}
