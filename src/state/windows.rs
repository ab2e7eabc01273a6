//! The feature windows operator: each event with its standard features as of its own time, and
//! the updates of the shared feature arrangement, with the windows checkpointed through the state
//! layer ([`crate::checkpoint::operator`]).

use std::cell::Cell;
use std::rc::Rc;

use differential_dataflow::AsCollection;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::checkpoint::operator::{CheckpointedOperator, CheckpointedState, StateCheckpoints, Step};
use crate::event::Time;
use crate::state::as_of::TimeStash;
use crate::event::route;
use crate::state::features::{FeatureUpdate, Features, WindowEntry, WindowState};
use crate::state::{FeatureUpdates, Scored, UserEvent};

/// The feature windows as the checkpoint layer sees them.
#[derive(Default)]
struct FeatureWindows {
    windows: WindowState,
    /// The updates that make the arrangement hold a restored state, until they are sent.
    restored: Vec<FeatureUpdate>,
}

impl CheckpointedState for FeatureWindows {
    type Entry = WindowEntry;

    fn part(&self) -> (&'static str, u32) {
        ("feature-windows", 1)
    }

    fn route(entry: &WindowEntry) -> u64 {
        route(&entry.key())
    }

    fn import(&mut self, entries: Vec<WindowEntry>, at: Time) {
        self.windows.import(entries, at, &mut self.restored);
    }

    fn export(&mut self, _at: Time, entries: &mut Vec<WindowEntry>) {
        self.windows.export(entries);
    }
}

/// The feature windows: each event with its standard features as of its own time, computed once
/// the events' frontier has passed that time (every event of the millisecond counts, whatever
/// the arrival order); and, when `updates_wanted` is set before the dataflow runs, the
/// feature-arrangement updates, with the retractions sent when the frontier passes their time
/// (see [`WindowState`]).
pub fn feature_windows<'s>(
    events: StreamVec<'s, Time, UserEvent>,
    checkpoints: &StateCheckpoints<'s>,
    updates_wanted: Rc<Cell<bool>>,
) -> (Scored<'s>, FeatureUpdates<'s>) {
    const SCORED: usize = 0;
    const UPDATES: usize = 1;
    let mut op = CheckpointedOperator::new("FeatureWindows", checkpoints, FeatureWindows::default());
    let mut events_in = op.new_input(events, Pipeline);
    let (mut scored_out, scored) = op.new_output::<(UserEvent, Features)>();
    let (mut updates_out, update_stream) = op.new_output::<FeatureUpdate>();
    let mut stash: TimeStash<UserEvent> = TimeStash::for_outputs(2);
    let mut ready = Vec::new();
    // Held (on the updates output) at the earliest pending retraction, when updates are wanted.
    let mut retractions: Option<Capability<Time>> = None;
    let mut updates = Vec::new();
    let mut features = Vec::new();
    op.build(move |state, step| {
        let wanted = updates_wanted.get();
        match step {
            Step::Receive => events_in.for_each(|cap, data| {
                for event in data.drain(..) {
                    stash.insert(&cap, event.time, event);
                }
            }),
            Step::Restored { capabilities, .. } => {
                let cap = &capabilities[UPDATES];
                if wanted {
                    if let Some(next) = state.windows.next_expiry() {
                        retractions = Some(cap.delayed(&next));
                    }
                    updates_out.activate().session(cap).give_iterator(state.restored.drain(..));
                }
                state.restored.clear();
            }
            Step::Advance(upto) => {
                let windows = &mut state.windows;
                ready.clear();
                stash.take_before(upto, &mut ready);
                if let (Some(held_scored), Some(held_updates)) = (stash.held_for(SCORED), stash.held_for(UPDATES)) {
                    for same in ready.chunk_by(|a, b| a.0 == b.0) {
                        windows.judge(same[0].0, same, &mut updates, &mut features);
                    }
                    scored_out
                        .activate()
                        .session(held_scored)
                        .give_iterator(ready.drain(..).zip(features.drain(..)).map(|((_, event), features)| (event, features)));
                    // New retractions may be earlier than the held one: mint from the events' capability.
                    if let Some(next) = windows.next_expiry().filter(|_| wanted) {
                        match retractions.as_mut() {
                            Some(cap) if *cap.time() <= next => {}
                            _ => retractions = Some(held_updates.delayed(&next)),
                        }
                    }
                }
                windows.expire(upto, &mut updates);
                if wanted && !updates.is_empty() {
                    // Every update is at or after one of the two capabilities; use the earlier.
                    let cap = match (stash.held_for(UPDATES), retractions.as_ref()) {
                        (Some(a), Some(b)) => Some(if a.time() <= b.time() { a } else { b }),
                        (a, b) => a.or(b),
                    };
                    if let Some(cap) = cap {
                        updates_out.activate().session(cap).give_iterator(updates.drain(..));
                    }
                }
                updates.clear();
                match windows.next_expiry().filter(|_| wanted) {
                    Some(next) => {
                        if let Some(cap) = retractions.as_mut() {
                            cap.downgrade(&next);
                        }
                    }
                    None => retractions = None,
                }
                stash.release();
            }
        }
    });
    (scored, update_stream.as_collection())
}
