//! A per-user collection of values, each present for a window of event time, kept through the
//! checkpoint layer: the state a researcher's dataflow declares instead of an arrangement of its
//! own making, so that a job restored from a checkpoint sees the same history.
//!
//! A value seen at time `t` is in the collection during `[t + delay, t + delay + window)`. The
//! checkpoint at `F` holds the values still present at or after `F`; restored, each is added back
//! at `F` (or its start, if later) and retracted at its end, so the collection is the same at
//! every time from `F` on.

use std::collections::VecDeque;

use differential_dataflow::{AsCollection, ExchangeData};
use serde::de::DeserializeOwned;
use serde::Serialize;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::StreamVec;

use crate::checkpoint::operator::{CheckpointedOperator, CheckpointedState, StateCheckpoints, Step};
use crate::event::{route, Time, UserKey};
use crate::state::as_of::TimeStash;
use crate::state::{arrange_by_user, UserArrangement};

/// How long a value is present, and from when.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// From this long after the value's time (1: strictly after it, so that an event does not see
    /// itself when looked up at its own time).
    pub delay: Time,
    /// For this long.
    pub length: Time,
}

/// One value in the window: `(user, value, from, until)`.
type Present<V> = (UserKey, V, Time, Time);

/// The values present, in order of their end.
struct WindowedValues<V> {
    name: &'static str,
    present: VecDeque<Present<V>>,
}

impl<V: ExchangeData + Serialize + DeserializeOwned> CheckpointedState for WindowedValues<V> {
    type Entry = Present<V>;

    fn part(&self) -> (&'static str, u32) {
        (self.name, 1)
    }

    fn route(entry: &Present<V>) -> u64 {
        route(&entry.0)
    }

    fn import(&mut self, mut entries: Vec<Present<V>>, _at: Time) {
        entries.sort_by_key(|entry| entry.3);
        self.present = entries.into();
    }

    fn export(&mut self, at: Time, entries: &mut Vec<Present<V>>) {
        entries.extend(self.present.iter().filter(|entry| entry.3 > at).cloned());
    }
}

/// The collection of `values` (`(user, value)` at a time) over `window`, arranged by user and
/// checkpointed as the state named `name` (unique in the dataflow).
pub fn windowed_by_user<'s, V>(
    name: &'static str,
    values: StreamVec<'s, Time, ((UserKey, V), Time)>,
    window: Window,
    checkpoints: &StateCheckpoints<'s>,
) -> UserArrangement<'s, V>
where
    V: ExchangeData + Serialize + DeserializeOwned,
{
    let state: WindowedValues<V> = WindowedValues { name, present: VecDeque::new() };
    let mut op = CheckpointedOperator::new(name, checkpoints, state);
    let mut values_in = op.new_input(values, Pipeline);
    let (mut updates_out, updates) = op.new_output::<((UserKey, V), Time, isize)>();
    let mut stash: TimeStash<(UserKey, V)> = TimeStash::default();
    let mut ready = Vec::new();
    op.build(move |state, step| match step {
        Step::Receive => values_in.for_each(|cap, data| {
            for (value, time) in data.drain(..) {
                stash.insert(&cap, time, value);
            }
        }),
        Step::Restored { at, capabilities } => {
            let updates = state.present.iter().flat_map(|(key, value, from, until)| {
                let kv = (*key, value.clone());
                [(kv.clone(), (*from).max(at), 1), (kv, *until, -1)]
            });
            updates_out.activate().session(&capabilities[0]).give_iterator(updates);
        }
        Step::Advance(upto) => {
            ready.clear();
            stash.take_before(upto, &mut ready);
            if let Some(cap) = stash.held() {
                let mut session = updates_out.activate();
                let mut session = session.session(cap);
                for (time, (key, value)) in ready.drain(..) {
                    let from = time.saturating_add(window.delay);
                    let until = from.saturating_add(window.length);
                    session.give(((key, value.clone()), from, 1));
                    session.give(((key, value.clone()), until, -1));
                    state.present.push_back((key, value, from, until));
                }
            }
            stash.release();
            if let Some(upto) = upto {
                while state.present.front().is_some_and(|entry| entry.3 <= upto) {
                    state.present.pop_front();
                }
            }
        }
    });
    arrange_by_user(updates.as_collection(), name)
}
