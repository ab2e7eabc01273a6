//! The threat dataflow (the default): every event is decided as of its own time against its user's
//! standard features, the model in force and the rules in force.
//!
//! ```text
//! events ──(by user)──► FeatureLookup ──► Decide ──► decisions
//!                        ▲ features         ▲ control (models, rules; broadcast)
//! ```

use timely::dataflow::StreamVec;

use crate::dataflows::{Dataflow, SharedInputs};
use crate::detect::decision::{decide_as_of, Decision};
use crate::event::Time;

/// The standard threat dataflow.
pub struct Threat;

impl Dataflow for Threat {
    fn name(&self) -> &'static str {
        "threat"
    }

    fn description(&self) -> &'static str {
        "standard features + model + threshold rules, decided as of each event's time"
    }

    fn checkpointed(&self) -> bool {
        true
    }

    fn build<'s>(&self, inputs: SharedInputs<'s>) -> StreamVec<'s, Time, Decision> {
        decide_as_of(inputs.scored, inputs.control, inputs.latest_sigma)
    }
}
