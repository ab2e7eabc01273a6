//! One pass over the events for the stateful rule kinds: each event, as of its own time, against
//! the correlation rules and the new-terms rules in force then (one as-of lookup for both, rather
//! than one per kind: most events find nothing, and each lookup stashes every event).
//!
//! ```text
//! events + features ──► StatefulRulesObserve ─┬─► correlation observations ──► crate::detect::correlation
//!        ▲ control (as of each event's time)  └─► new-terms observations ───► crate::detect::new_terms
//! ```

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::vec::{Map, Partition};
use timely::dataflow::StreamVec;

use crate::detect::control::ControlArrangement;
use crate::detect::correlation::{self, CorrelationIndex};
use crate::detect::new_terms::{self, NewTermsIndex, Observed};
use crate::event::Time;
use crate::state::as_of::{as_of_lookup, PerVersion};
use crate::state::features::Features;
use crate::state::UserEvent;

/// What an event finds.
#[derive(Clone, Debug)]
enum Found {
    Correlation(correlation::Observation),
    NewTerms(Observed),
}

/// Observes every event against the correlation and new-terms rules in force at its time: the
/// correlations' observations and the new-terms rules' (see each module).
#[allow(clippy::type_complexity)]
pub fn observe_stateful_rules<'s>(
    scored: StreamVec<'s, Time, (UserEvent, Features)>,
    control: ControlArrangement<'s>,
) -> (StreamVec<'s, Time, correlation::Observation>, StreamVec<'s, Time, Observed>) {
    let found = as_of_lookup(
        scored,
        control,
        Pipeline,
        "StatefulRulesObserve",
        |_| (),
        |(e, _): &(UserEvent, Features)| e.time,
        {
            let mut index = PerVersion::default();
            move |time, (e, f), controls, version| {
                let (correlations, first_seen) = index.get(version, || (CorrelationIndex::new(controls), NewTermsIndex::new(controls)));
                let mut found: Vec<Found> = correlation::observe(time, &e, &f, controls, correlations).into_iter().map(Found::Correlation).collect();
                found.extend(new_terms::observe(time, &e, &f, controls, first_seen).into_iter().map(Found::NewTerms));
                (!found.is_empty()).then_some(found)
            }
        },
    )
    .flat_map(|found| found);
    let mut parts = found.partition(2, |found| match found {
        Found::Correlation(_) => (0, found),
        Found::NewTerms(_) => (1, found),
    });
    let first_seen = parts.pop().expect("two parts").flat_map(|found| match found {
        Found::NewTerms(o) => Some(o),
        Found::Correlation(_) => None,
    });
    let correlations = parts.pop().expect("two parts").flat_map(|found| match found {
        Found::Correlation(o) => Some(o),
        Found::NewTerms(_) => None,
    });
    (correlations, first_seen)
}
