//! The last step of every job: each event's final verdict, with blocking fed back by event time.
//!
//! ```text
//! events + features ─┐
//! decisions ─────────┼─(by user)─► Verdicts ──► decisions
//! correlation hits ──┤               ▲ unblocks (control)
//! ```
//!
//! Per user, in event-time order once every input has passed a time: an event whose user is
//! blocked is decided `blocked` (whatever else it would have been); otherwise its decision, with
//! the correlation rules it matched added (or a decision made for them), goes out, and when its
//! actions include `block` the user is blocked for the events after it (docs/semantics.md#threat-actions-and-blocking: `ts` greater
//! than the decision's) up to `block_for` later. Events of one millisecond do not block each
//! other, so the outcome does not depend on their arrival order. An unblock lifts the blocks made
//! before its `effective_from` for the events from then on.
//!
//! Blocks are checkpointed (the ones still running at the checkpoint's frontier); unblocks are
//! control updates, which a restored job reads again.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange as ExchangePact, Pipeline};
use timely::dataflow::StreamVec;

use crate::checkpoint::operator::{CheckpointedOperator, CheckpointedState, StateCheckpoints, Step};
use crate::detect::correlation::Hit;
use crate::detect::decision::{self, Decision, Verdict};
use crate::detect::marks::Unblock;
use crate::detect::action::ThreatAction;
use crate::event::{route, user_key, Time, UserKey};
use crate::state::as_of::TimeStash;
use crate::state::features::Features;
use crate::state::UserEvent;

/// Default block duration: one hour of event time.
pub const DEFAULT_BLOCK_FOR: Time = 3_600_000;

/// A running block.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Block {
    /// The time of the decision that blocked the user: events after it are blocked.
    from: Time,
    /// The last time it applies to.
    until: Time,
    /// The event whose decision blocked the user.
    by: String,
}

/// What arrives for one time.
enum Item {
    Event(UserEvent, Features),
    // Boxed: every event is stashed, few have a decision or a correlation match.
    Decision(Box<Decision>),
    Hit(Box<Hit>),
}

/// A running block at a checkpoint's frontier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockEntry {
    /// The user.
    pub key: UserKey,
    /// The time of the decision that blocked the user.
    pub from: Time,
    /// The last time it applies to.
    pub until: Time,
    /// The event that blocked the user.
    pub by: String,
}

impl CheckpointedState for Blocks {
    type Entry = BlockEntry;

    fn part(&self) -> (&'static str, u32) {
        ("blocks", 1)
    }

    fn route(entry: &BlockEntry) -> u64 {
        route(&entry.key)
    }

    fn import(&mut self, entries: Vec<BlockEntry>, _at: Time) {
        for BlockEntry { key, from, until, by } in entries {
            self.insert(key, Block { from, until, by });
        }
    }

    fn export(&mut self, at: Time, entries: &mut Vec<BlockEntry>) {
        self.retain(|_, b| b.until >= at);
        entries.extend(self.iter().map(|(key, b)| BlockEntry { key: *key, from: b.from, until: b.until, by: b.by.clone() }));
    }
}

/// The final decisions: `decisions` of the dataflow, with the correlation `hits` added, blocked
/// users' events decided `blocked`, and blocks made by decisions whose actions include `block`
/// (for `block_for` ms). `unblocks` are the control collection's unblocks (every worker gets
/// them all). The blocks are checkpointed.
pub fn verdicts<'s>(
    scored: StreamVec<'s, Time, (UserEvent, Features)>,
    decisions: StreamVec<'s, Time, Decision>,
    hits: StreamVec<'s, Time, Hit>,
    unblocks: StreamVec<'s, Time, (Unblock, Time, isize)>,
    block_for: Time,
    checkpoints: &StateCheckpoints<'s>,
) -> StreamVec<'s, Time, Decision> {
    let mut op = CheckpointedOperator::new("Verdicts", checkpoints, Blocks::default());
    let mut scored_in = op.new_input(scored, Pipeline);
    let mut decisions_in = op.new_input(decisions, ExchangePact::new(|d: &Decision| route(&user_key(&d.user))));
    let mut hits_in = op.new_input(hits, ExchangePact::new(|h: &Hit| route(&h.key)));
    let mut unblocks_in = op.new_input(unblocks, Pipeline);
    let (mut decided_out, decided) = op.new_output::<Decision>();
    let mut stash: TimeStash<Item> = TimeStash::default();
    let mut ready = Vec::new();
    let mut items = Vec::new();
    // Per user, the `effective_from` of every unblock.
    let mut unblocked: Unblocked = Unblocked::default();
    op.build(move |blocks, step| match step {
        Step::Receive => {
            scored_in.for_each(|cap, data| {
                for (event, features) in data.drain(..) {
                    stash.insert(&cap, event.time, Item::Event(event, features));
                }
            });
            decisions_in.for_each(|cap, data| {
                for d in data.drain(..) {
                    stash.insert(&cap, d.ts, Item::Decision(Box::new(d)));
                }
            });
            hits_in.for_each(|cap, data| {
                for hit in data.drain(..) {
                    stash.insert(&cap, hit.time, Item::Hit(Box::new(hit)));
                }
            });
            // Unblocks apply by their own `effective_from` (see `is_blocked`), so they can be
            // taken as they come.
            unblocks_in.for_each(|_cap, data| {
                for (unblock, _time, diff) in data.drain(..) {
                    if diff > 0 {
                        unblocked.entry(user_key(&unblock.user)).or_default().push(unblock.effective_from);
                    }
                }
            });
        }
        Step::Restored { .. } => {}
        Step::Advance(upto) => {
            ready.clear();
            stash.take_before(upto, &mut ready);
            if let Some(cap) = stash.held() {
                let mut decided = decided_out.activate();
                let mut session = decided.session(cap);
                let mut ready = ready.drain(..).peekable();
                while let Some(&(time, _)) = ready.peek() {
                    items.clear();
                    items.extend(std::iter::from_fn(|| ready.next_if(|(t, _)| *t == time).map(|(_, item)| item)));
                    decide_time(time, &mut items, blocks, &unblocked, block_for, |d| session.give(d));
                }
            }
            stash.release();
        }
    });
    decided
}

/// Whether a user is blocked at `time` by `block`: the block covers the time and no unblock
/// between the blocking decision and `time` lifted it.
fn is_blocked(block: &Block, time: Time, unblocks: Option<&Vec<Time>>) -> bool {
    block.from < time && time <= block.until && !unblocks.is_some_and(|u| u.iter().any(|at| block.from < *at && *at <= time))
}

/// The running blocks, by user.
#[derive(Default)]
struct Blocks(HashMap<UserKey, Block, foldhash::fast::FixedState>);

impl std::ops::Deref for Blocks {
    type Target = HashMap<UserKey, Block, foldhash::fast::FixedState>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Blocks {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// Per user, the `effective_from` of every unblock.
type Unblocked = HashMap<UserKey, Vec<Time>, foldhash::fast::FixedState>;

/// Decides the events of one time (see the module doc), then applies the blocks their decisions
/// make. `items` are all of the time's; they are drained.
fn decide_time(
    time: Time,
    items: &mut Vec<Item>,
    blocks: &mut Blocks,
    unblocked: &Unblocked,
    block_for: Time,
    mut emit: impl FnMut(Decision),
) {
    // Most times hold only events of users without a block: nothing to say about them.
    let only_events = items.iter().all(|item| matches!(item, Item::Event(..)));
    let blocked = |event: &UserEvent| blocks.get(&event.key).filter(|b| is_blocked(b, time, unblocked.get(&event.key)));
    if only_events && (blocks.is_empty() || items.iter().all(|item| matches!(item, Item::Event(e, _) if blocked(e).is_none()))) {
        items.clear();
        return;
    }
    let mut events = Vec::new();
    let mut decisions: Vec<Decision> = Vec::new();
    let mut hits: Vec<Hit> = Vec::new();
    for item in items.drain(..) {
        match item {
            Item::Event(event, features) => events.push((event, features)),
            Item::Decision(d) => decisions.push(*d),
            Item::Hit(hit) => hits.push(*hit),
        }
    }
    let mut new_blocks: Vec<(UserKey, Block)> = Vec::new();
    for (event, features) in events {
        let decision = decisions.iter().position(|d| d.event_id == event.event_id).map(|i| decisions.swap_remove(i));
        if let Some(block) = blocked(&event) {
            emit(decision::blocked(time, &event, &features, &block.by, block.until));
            continue;
        }
        let matches: Vec<_> = hits.extract_if(.., |hit| hit.event_id == event.event_id).map(|hit| hit.matched).collect();
        let Some(mut d) = decision::with_correlations(decision, time, &event, &features, &matches) else { continue };
        if d.verdict == Verdict::Threat && d.actions.contains(&ThreatAction::Block) {
            let until = time.saturating_add(block_for);
            d.blocked_until = Some(until);
            new_blocks.push((event.key, Block { from: time, until, by: event.event_id.to_string() }));
        }
        emit(d);
    }
    // Decisions not about an event of this worker's stream (none from the shipped dataflows).
    for d in decisions {
        emit(d);
    }
    new_blocks.sort_by(|a, b| (a.0, &a.1.by).cmp(&(b.0, &b.1.by)));
    for (key, block) in new_blocks {
        // The first (by event id) of one time's blocks for a user names it; they end together.
        blocks.entry(key).and_modify(|b| if b.from != block.from { *b = block.clone() }).or_insert(block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse_event;

    fn event(id: &str, user: &str, ts: Time) -> UserEvent {
        let text = format!(r#"{{"event_id":"{id}","ts":{ts},"user":"{user}","action":"login"}}"#);
        std::rc::Rc::new(parse_event(text.as_bytes(), 1 << 20).unwrap())
    }

    fn blocking(id: &str, user: &str, ts: Time) -> Decision {
        let e = event(id, user, ts);
        let mut d = decision::with_correlations(
            None,
            ts,
            &e,
            &Features::default(),
            &[decision::CorrelationMatch {
                rule: "r".into(),
                title: "r".into(),
                severity: crate::detect::action::Severity::High,
                actions: vec![ThreatAction::Block],
                risk_score: 50,
                group: String::new(),
            }],
        )
        .unwrap();
        d.correlation_groups.clear();
        d
    }

    /// Runs the times in order; returns `(event, verdict, blocked_by)` of every decision.
    fn run(times: Vec<(Time, Vec<Item>)>, unblocked: Unblocked) -> Vec<(String, Verdict, Option<String>)> {
        let mut blocks = Blocks::default();
        let mut out = Vec::new();
        for (time, mut items) in times {
            decide_time(time, &mut items, &mut blocks, &unblocked, 100, |d| out.push((d.event_id, d.verdict, d.blocked_by)));
        }
        out.sort();
        out
    }

    fn ev(id: &str, ts: Time) -> Item {
        Item::Event(event(id, "ann", ts), Features::default())
    }

    #[test]
    fn a_block_covers_the_later_events_of_its_duration_not_those_of_its_own_time() {
        let times = vec![
            (10, vec![ev("a", 10), Item::Decision(Box::new(blocking("a", "ann", 10))), ev("b", 10)]),
            (11, vec![ev("c", 11), Item::Decision(Box::new(blocking("c", "ann", 11)))]),
            (110, vec![ev("d", 110)]),
            (111, vec![ev("e", 111)]),
        ];
        let decided = run(times, Unblocked::default());
        assert_eq!(
            decided,
            [
                ("a".into(), Verdict::Threat, None),
                // A blocked event is `blocked` even when it would be a threat; it does not extend the block.
                ("c".into(), Verdict::Blocked, Some("a".into())),
                ("d".into(), Verdict::Blocked, Some("a".into())),
            ]
        );
    }

    #[test]
    fn an_unblock_lifts_earlier_blocks_from_its_time() {
        let unblocked = Unblocked::from_iter([(user_key("ann"), vec![50])]);
        let times = vec![
            (10, vec![Item::Decision(Box::new(blocking("a", "ann", 10))), ev("a", 10)]),
            (49, vec![ev("b", 49)]),
            (50, vec![ev("c", 50)]),
            (60, vec![Item::Decision(Box::new(blocking("d", "ann", 60))), ev("d", 60)]),
            (61, vec![ev("e", 61)]),
        ];
        let decided = run(times, unblocked);
        assert_eq!(
            decided,
            [
                ("a".into(), Verdict::Threat, None),
                ("b".into(), Verdict::Blocked, Some("a".into())),
                ("d".into(), Verdict::Threat, None),
                // A block made after the unblock applies.
                ("e".into(), Verdict::Blocked, Some("d".into())),
            ]
        );
    }
}
