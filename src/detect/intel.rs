//! Threat-intel matching in the dataflow: each event is matched against the indicators in force at
//! its own time, and an indicator that comes into force is matched against the events of the
//! retro window before it (retro-matching), exactly once.
//!
//! **Live.** An event's values ([`observables`]: `src_ip`, `user`, `user_agent`, the enriched
//! `asn`, domains of the fields in [`DOMAIN_FIELDS`] and hashes of those in [`HASH_FIELDS`]) are
//! looked up in the index of indicators ([`crate::enrich::intel`]) as of the event's time; the hits
//! travel with the event ([`Event::intel`]) and make its decision a `threat` naming them, with a
//! severity from their confidence ([`Severity::of_confidence`]).
//!
//! **Retro.** Each worker keeps a history of its events (those of the users it owns) over the
//! retro window: per event its id, user, times and the fingerprints of its values (64-bit
//! [`value_hash`]; its address as bits, for networks). When a value becomes indicated at `T` (an
//! indicator of it is in force at `T` and none was at `T - 1`), once every event before `T` is in,
//! the events of `[T - window, T)` holding it are reported as `retro` decisions at `T`, one per
//! event, naming every indicator that came into force at `T` and matched it. The history is
//! checkpointed; indicators that came into force before a restored checkpoint's frontier are
//! not reported again, those after it are (the outputs were cut back to the checkpoint): exactly
//! once across a kill, and the same on any worker count, since every event is on exactly one
//! worker. An event at `T` or later is matched live instead.
//!
//! Memory: 112 bytes per event in the window and its id's bytes (about 165 bytes in all, measured
//! on 10 million generated events); `--retro-window 0` keeps none.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::checkpoint::operator::{CheckpointedOperator, CheckpointedState, StateCheckpoints, Step};
use crate::detect::action::{Severity, ThreatAction};
use crate::detect::decision::{decision_id, Decision, Verdict};
use crate::enrich::intel::{
    address_bits, address_hash, address_text, domain_suffixes, event_normal, mask, network_of, parse_address, value_hash, Indicator, IndicatorKind,
    IntelHit, IntelIndex,
};
use crate::event::{route, user_key, Event, Text, Time};
use crate::state::as_of::TimeStash;

/// The retro window by default: seven days.
pub const DEFAULT_RETRO_WINDOW: Time = 7 * crate::event::DAY;

/// Fields whose values (or URLs' hosts) are matched against domain indicators.
pub const DOMAIN_FIELDS: [&str; 7] = ["domain", "dest_domain", "hostname", "host", "url", "dest_url", "resource"];
/// Fields whose values are matched against hash indicators.
pub const HASH_FIELDS: [&str; 5] = ["sha256", "sha1", "md5", "hash", "file_hash"];

/// How a job matches indicators.
#[derive(Clone, Debug, Default)]
pub enum IntelMode {
    /// Not at all (no indicators and none can arrive).
    #[default]
    Off,
    /// With this index, which nothing changes while the job runs (all its indicators were read at
    /// start): events are matched as they pass, without waiting.
    Fixed(Arc<IntelIndex>),
    /// With the indicators of the control collection in force at each event's time (events wait
    /// for the control collection to be complete up to their time, as decisions do).
    InForce,
}

/// How a job matches indicators, and how far back an arriving one looks.
#[derive(Clone, Debug, Default)]
pub struct IntelOptions {
    /// With which indicators.
    pub mode: IntelMode,
    /// How far back (event time) an indicator that comes into force is matched; 0: not at all.
    pub retro_window: Time,
}

impl IntelOptions {
    /// The events with their indicator hits and the `retro` decisions ([`intel_matched`]); the
    /// events unchanged and no decision when the mode is [`IntelMode::Off`].
    pub fn apply<'s>(
        self,
        events: StreamVec<'s, Time, Event>,
        indicators: StreamVec<'s, Time, (Indicator, Time, isize)>,
        checkpoints: &StateCheckpoints<'s>,
    ) -> (StreamVec<'s, Time, Event>, StreamVec<'s, Time, Decision>) {
        match self.mode {
            IntelMode::Off => {
                let none = timely::dataflow::operators::generic::operator::empty(events.scope());
                (events, none)
            }
            mode => intel_matched(events, indicators, mode, self.retro_window, checkpoints),
        }
    }
}

/// The host of a URL (`scheme://host[:port]/...`), or the text itself when it is no URL.
fn host_of(text: &str) -> &str {
    let Some((_, rest)) = text.split_once("://") else { return text };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.split(':').next().unwrap_or(host),
    }
}

/// Calls `each` with every value of `event` other than its address that an indicator can match,
/// normalised ([`event_normal`]); a domain once (its parents are the index's and the history's
/// business). The address is [`address_of`].
///
/// ```
/// use threatflow::detect::intel::observables;
/// use threatflow::enrich::intel::IndicatorKind;
/// let event = threatflow::event::parse_event(br#"{"event_id":"e","ts":1,"user":"Ann@Example.com","action":"download","src_ip":"203.0.113.9","resource":"https://files.Evil.example:8443/a.zip","sha256":"AB12"}"#, 1 << 20)?;
/// let mut seen = Vec::new();
/// observables(&event, |kind, value| seen.push((kind, value.to_string())));
/// assert_eq!(seen, [
///     (IndicatorKind::User, "ann@example.com".to_string()),
///     (IndicatorKind::Domain, "files.evil.example".to_string()),
///     (IndicatorKind::Hash, "ab12".to_string()),
/// ]);
/// # Ok::<(), threatflow::event::RejectReason>(())
/// ```
pub fn observables(event: &Event, mut each: impl FnMut(IndicatorKind, &str)) {
    let mut value = |kind: IndicatorKind, text: &str| {
        if let Some(normal) = event_normal(kind, text) {
            each(kind, &normal);
        }
    };
    value(IndicatorKind::User, &event.user);
    if let Some(agent) = event.user_agent.as_deref() {
        value(IndicatorKind::UserAgent, agent);
    }
    if let Some(asn) = event.enrichment.as_ref().and_then(|e| e.asn) {
        value(IndicatorKind::Asn, &asn.to_string());
    }
    if event.extra.is_empty() && event.resource.as_deref().is_none_or(|r| !r.contains("://")) {
        return; // no field of a domain or a hash (canonical events mostly)
    }
    for field in DOMAIN_FIELDS {
        let Some(text) = event.field(field) else { continue };
        // A resource is a domain only when it is a URL (a file name has dots too).
        if field == "resource" && !text.contains("://") {
            continue;
        }
        let host = host_of(&text);
        if host.contains('.') && parse_address(host).is_none() {
            value(IndicatorKind::Domain, host);
        }
    }
    for field in HASH_FIELDS {
        if let Some(text) = event.field(field) {
            value(IndicatorKind::Hash, &text);
        }
    }
}

/// The event's source address as bits, and whether it is IPv6 ([`address_bits`]).
pub fn address_of(event: &Event) -> Option<(u128, bool)> {
    event.src_ip.as_deref().and_then(parse_address).map(address_bits)
}

/// What the retro history keeps of an event's values: its address and its fingerprints.
struct Observed {
    address: PackedAddress,
    fingerprints: Fingerprints,
}

/// A source address as the history keeps it: its bits, and 4 or 6 for its family (0: none), in
/// 17 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedAddress {
    bits: [u8; 16],
    family: u8,
}

impl PackedAddress {
    fn pack(address: Option<(u128, bool)>) -> PackedAddress {
        match address {
            Some((bits, v6)) => PackedAddress { bits: bits.to_le_bytes(), family: if v6 { 6 } else { 4 } },
            None => PackedAddress { bits: [0; 16], family: 0 },
        }
    }

    /// The address as bits, and whether it is IPv6.
    fn get(self) -> Option<(u128, bool)> {
        (self.family != 0).then(|| (u128::from_le_bytes(self.bits), self.family == 6))
    }
}

/// One pass over an event's values: its hits in `index` as of `at`, and what the retro history
/// keeps of them (when `remember`).
fn observe(index: &IntelIndex, event: &Event, at: Time, remember: bool) -> (Option<Arc<Vec<IntelHit>>>, Option<Observed>) {
    let mut hits = Vec::new();
    let address = address_of(event);
    let mut fingerprints = Fingerprints::default();
    if let Some((bits, v6)) = address {
        if index.has(IndicatorKind::Ip) {
            index.lookup_address(bits, v6, at, &mut hits);
        }
        fingerprints.push(address_hash(bits, v6));
    }
    if !index.is_empty() || remember {
        observables(event, |kind, normal| {
            if index.has(kind) {
                index.lookup_normal(kind, normal, at, &mut hits);
            }
            if remember {
                match kind {
                    IndicatorKind::Domain => domain_suffixes(normal).for_each(|d| fingerprints.push(value_hash(kind, d))),
                    kind => fingerprints.push(value_hash(kind, normal)),
                }
            }
        });
    }
    let observed = remember.then_some(Observed { address: PackedAddress::pack(address), fingerprints });
    if hits.is_empty() {
        return (None, observed);
    }
    hits.sort();
    hits.dedup();
    (Some(Arc::new(hits)), observed)
}

/// An event's fingerprints: the first four inline (its address, user, user agent, AS), more (its
/// domains and hashes) on the heap. `0` is no fingerprint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprints {
    inline: [u64; 4],
    // Boxed: a thin pointer keeps every history entry 16 bytes smaller; few events have more.
    #[allow(clippy::box_collection)]
    more: Option<Box<Vec<u64>>>,
}

impl Fingerprints {
    fn push(&mut self, fingerprint: u64) {
        let fingerprint = fingerprint.max(1);
        match self.inline.iter_mut().find(|f| **f == 0) {
            Some(free) => *free = fingerprint,
            None => self.more.get_or_insert_with(Box::default).push(fingerprint),
        }
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.inline.iter().copied().filter(|f| *f != 0).chain(self.more.iter().flat_map(|m| m.iter().copied()))
    }
}

/// An event as the retro-matching history exports it to checkpoints (and takes it back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The time it was judged at.
    pub time: Time,
    /// Its own time.
    pub ts: Time,
    /// Its id.
    pub event_id: Text,
    /// Its user.
    pub user: Text,
    /// Its source address (networks are matched on it).
    address: PackedAddress,
    /// Whether it was late.
    pub late: bool,
    /// The fingerprints of its values (a domain's and its parents').
    fingerprints: Fingerprints,
}

impl Seen {
    /// The entry of `event`, of which `observed` is what the history keeps.
    fn observed(event: &Event, observed: Observed) -> Seen {
        let Observed { address, fingerprints } = observed;
        Seen {
            time: event.time,
            ts: event.ts,
            event_id: event.event_id.clone(),
            user: event.user.clone(),
            address,
            late: event.late,
            fingerprints,
        }
    }
}

/// An entry of the history: a [`Seen`] whose id is kept in its chunk's text (112 bytes, and the
/// id's bytes: no allocation per event).
struct Kept {
    time: Time,
    ts: Time,
    user: Text,
    /// Where its id is in its chunk's `ids`.
    id: (u32, u32),
    address: PackedAddress,
    late: bool,
    fingerprints: Fingerprints,
}

/// A history entry and its id.
type KeptEntry<'a> = (&'a Kept, &'a str);

/// A run of history entries and the text of their ids.
#[derive(Default)]
struct Chunk {
    kept: Vec<Kept>,
    ids: String,
}

/// A worker's events of the retro window, in time order, in chunks of fixed size: growing never
/// copies what is kept, and forgetting frees whole chunks.
#[derive(Default)]
pub struct History {
    chunks: VecDeque<Chunk>,
    /// How many entries of the first chunk are forgotten.
    start: usize,
}

impl History {
    const CHUNK: usize = 1 << 15;

    /// Appends `event`'s entry, which must not be before the last one.
    fn push(&mut self, event: &Event, observed: Observed) {
        let Observed { address, fingerprints } = observed;
        self.push_entry(event.time, event.ts, event.late, &event.event_id, &event.user, address, fingerprints);
    }

    /// Appends a restored entry.
    fn push_seen(&mut self, seen: Seen) {
        self.push_entry(seen.time, seen.ts, seen.late, &seen.event_id, &seen.user, seen.address, seen.fingerprints);
    }

    #[allow(clippy::too_many_arguments)]
    fn push_entry(&mut self, time: Time, ts: Time, late: bool, event_id: &str, user: &Text, address: PackedAddress, fingerprints: Fingerprints) {
        if self.chunks.back().is_none_or(|c| c.kept.len() >= Self::CHUNK) {
            self.chunks.push_back(Chunk { kept: Vec::with_capacity(Self::CHUNK), ids: String::with_capacity(Self::CHUNK * 32) });
        }
        let Some(chunk) = self.chunks.back_mut() else { return };
        let at = chunk.ids.len();
        chunk.ids.push_str(event_id);
        chunk.kept.push(Kept {
            time,
            ts,
            user: user.clone(),
            id: (at as u32, event_id.len() as u32),
            address,
            late,
            fingerprints,
        });
    }

    /// Forgets the entries before `before`.
    fn forget_before(&mut self, before: Time) {
        while let Some(first) = self.chunks.front() {
            if first.kept.last().is_some_and(|e| e.time < before) {
                self.chunks.pop_front();
                self.start = 0;
            } else {
                self.start += first.kept[self.start..].partition_point(|e| e.time < before);
                break;
            }
        }
    }

    /// The entries from the first at `from` or later, in order, with their ids.
    fn from(&self, from: Time) -> impl Iterator<Item = (&Kept, &str)> {
        let skipped = self.chunks.iter().take_while(|c| c.kept.last().is_some_and(|e| e.time < from)).count();
        self.chunks.iter().enumerate().skip(skipped).flat_map(move |(n, chunk)| {
            let kept = if n == 0 { &chunk.kept[self.start..] } else { &chunk.kept[..] };
            let first = kept.partition_point(|e| e.time < from);
            kept[first..].iter().map(|k| (k, chunk.ids.get(k.id.0 as usize..(k.id.0 + k.id.1) as usize).unwrap_or_default()))
        })
    }

    /// Every entry kept, in order, as checkpoints keep them.
    fn exported(&self) -> impl Iterator<Item = Seen> + '_ {
        self.from(0).map(|(k, id)| Seen {
            time: k.time,
            ts: k.ts,
            event_id: id.into(),
            user: k.user.clone(),
            address: k.address,
            late: k.late,
            fingerprints: k.fingerprints.clone(),
        })
    }

    /// The retro decisions for the values that became indicated at each time of `arrived` (each
    /// with the indicators that did), against the entries of the window before it: one pass over
    /// the entries of all their windows, in decision order (time, then the entry's order).
    fn retro(&self, arrived: &BTreeMap<Time, Vec<&Indicator>>, window: Time) -> BTreeMap<Time, Vec<Decision>> {
        let mut exact: HashMap<u64, Vec<(Time, &Indicator)>, foldhash::fast::FixedState> = HashMap::default();
        let mut networks: Vec<(Time, &Indicator, u128, bool, u8)> = Vec::new();
        for (time, indicators) in arrived {
            for indicator in indicators {
                let fingerprint = match indicator.kind {
                    IndicatorKind::Ip => match network_of(indicator) {
                        Some((bits, v6, prefix)) if prefix == if v6 { 128 } else { 32 } => address_hash(bits, v6),
                        Some((bits, v6, prefix)) => {
                            networks.push((*time, indicator, bits, v6, prefix));
                            continue;
                        }
                        None => continue,
                    },
                    kind => value_hash(kind, &indicator.value),
                };
                exact.entry(fingerprint.max(1)).or_default().push((*time, indicator));
            }
        }
        let (Some(first), Some(last)) = (arrived.keys().next(), arrived.keys().next_back()) else { return BTreeMap::new() };
        let mut found: BTreeMap<(Time, usize), (KeptEntry<'_>, Vec<IntelHit>)> = BTreeMap::new();
        for (n, (seen, id)) in self.from(first.saturating_sub(window)).take_while(|(e, _)| e.time < *last).enumerate() {
            let in_window = |time: Time| time.saturating_sub(window) <= seen.time && seen.time < time;
            for fingerprint in seen.fingerprints.iter() {
                for (time, indicator) in exact.get(&fingerprint).into_iter().flatten().filter(|(t, _)| in_window(*t)) {
                    found.entry((*time, n)).or_insert_with(|| ((seen, id), Vec::new())).1.push(IntelHit::of(indicator, &indicator.value));
                }
            }
            if let (Some((address, is_v6)), false) = (seen.address.get(), networks.is_empty()) {
                for (time, indicator, bits, v6, prefix) in &networks {
                    if *v6 == is_v6 && mask(address, *prefix, *v6) == *bits && in_window(*time) {
                        found.entry((*time, n)).or_insert_with(|| ((seen, id), Vec::new())).1.push(IntelHit::of(indicator, &address_text(address, is_v6)));
                    }
                }
            }
        }
        let mut decisions: BTreeMap<Time, Vec<Decision>> = BTreeMap::new();
        for ((time, _), ((seen, id), hits)) in found {
            decisions.entry(time).or_default().push(retro_decision(seen, id, time, hits));
        }
        decisions
    }
}

/// The intel operator's state: the indicators waiting to be retro-matched and the retro history
/// (only the history is checkpointed: the indicators come again from the control collection on
/// restore).
struct IntelState {
    history: History,
    /// Indicators that came into force, by time, waiting to be retro-matched.
    arrived: BTreeMap<Time, Vec<Indicator>>,
    /// Indicators before this time (a restored checkpoint's frontier) were retro-matched already.
    restored_at: Time,
}

impl CheckpointedState for IntelState {
    type Entry = Seen;

    fn part(&self) -> (&'static str, u32) {
        ("intel-history", 1)
    }

    fn route(entry: &Seen) -> u64 {
        route(&user_key(&entry.user))
    }

    fn import(&mut self, mut entries: Vec<Seen>, at: Time) {
        entries.sort_by_key(|e| e.time);
        entries.into_iter().for_each(|e| self.history.push_seen(e));
        self.restored_at = at;
    }

    fn export(&mut self, _at: Time, entries: &mut Vec<Seen>) {
        entries.extend(self.history.exported());
    }
}

/// The events with their indicator hits ([`Event::intel`]), and the `retro` decisions, for events
/// on the worker owning their user; `indicators` are the control collection's indicator updates,
/// on every worker. Retro-matching looks `retro_window` back (0: none).
pub fn intel_matched<'s>(
    events: StreamVec<'s, Time, Event>,
    indicators: StreamVec<'s, Time, (Indicator, Time, isize)>,
    mode: IntelMode,
    retro_window: Time,
    checkpoints: &StateCheckpoints<'s>,
) -> (StreamVec<'s, Time, Event>, StreamVec<'s, Time, Decision>) {
    let state = IntelState { history: History::default(), arrived: BTreeMap::new(), restored_at: 0 };
    let mut op = CheckpointedOperator::new("Intel", checkpoints, state);
    let mut events_in = op.new_input(events, Pipeline);
    let mut indicators_in = op.new_input(indicators, Pipeline);
    let (mut events_out, matched) = op.new_output::<Event>();
    let (mut retro_out, retro) = op.new_output::<Decision>();
    let fixed = match &mode {
        IntelMode::Fixed(index) => Some(Arc::clone(index)),
        _ => None,
    };
    let mut followed = IntelIndex::default();
    // Events waiting for the indicators (in force mode), and the history's entries waiting for
    // their time (fixed mode); boxed while they wait: a stash moves what it keeps.
    let mut waiting: TimeStash<Box<Event>> = TimeStash::for_outputs(1);
    let mut seen: TimeStash<Box<Seen>> = TimeStash::for_outputs(1);
    let mut updates: Vec<(Indicator, Time, isize)> = Vec::new();
    let mut retro_at: BTreeMap<Time, Capability<Time>> = BTreeMap::new();
    let (mut ready, mut ready_seen) = (Vec::new(), Vec::new());
    let (mut compacted, mut changed) = (std::time::Instant::now(), false);
    op.build(move |state, step| match step {
        Step::Receive => {
            events_in.for_each(|cap, data| {
                for mut event in data.drain(..) {
                    match fixed.as_deref() {
                        Some(index) => {
                            let (hits, remembered) = observe(index, &event, event.time, retro_window > 0);
                            if let Some(remembered) = remembered {
                                seen.insert(&cap, event.time, Box::new(Seen::observed(&event, remembered)));
                            }
                            event.intel = hits;
                            if let Some(cap) = cap.retain_least(0) {
                                events_out.activate().session(&cap).give(event);
                            }
                        }
                        None => waiting.insert(&cap, event.time, Box::new(event)),
                    }
                }
            });
            indicators_in.for_each(|cap, data| {
                for (indicator, time, diff) in data.drain(..) {
                    if diff > 0 && retro_window > 0 {
                        retro_at.entry(time).or_insert_with(|| cap.delayed(&time, 1));
                    }
                    updates.push((indicator, time, diff));
                }
            });
        }
        Step::Restored { .. } => {}
        Step::Advance(bound) => {
            // 1. Indicator changes into the index; those coming into force wait to be retro-matched.
            for (indicator, time, diff) in updates.drain(..) {
                if fixed.is_none() {
                    followed.update(&indicator, time, diff);
                    changed = true;
                }
                if diff > 0 && retro_window > 0 && time >= state.restored_at {
                    state.arrived.entry(time).or_default().push(indicator);
                }
            }
            let index: &IntelIndex = fixed.as_deref().unwrap_or(&followed);
            // 2. Events whose time the indicators have passed, matched as of it.
            ready.clear();
            waiting.take_before(bound, &mut ready);
            if let Some(cap) = waiting.held() {
                let mut output = events_out.activate();
                let mut session = output.session(cap);
                for (time, mut event) in ready.drain(..) {
                    let (hits, remembered) = observe(index, &event, time, retro_window > 0);
                    if let Some(remembered) = remembered {
                        state.history.push(&event, remembered);
                    }
                    event.intel = hits;
                    session.give(*event);
                }
            }
            waiting.release();
            ready_seen.clear();
            seen.take_before(bound, &mut ready_seen);
            for (_, entry) in ready_seen.drain(..) {
                state.history.push_seen(*entry);
            }
            seen.release();
            // 3. Values that became indicated before the bound, against the window before them.
            let due = match bound {
                Some(bound) => {
                    let later = state.arrived.split_off(&bound);
                    std::mem::replace(&mut state.arrived, later)
                }
                None => std::mem::take(&mut state.arrived),
            };
            let newly: BTreeMap<Time, Vec<&Indicator>> = due
                .iter()
                .map(|(time, arrived)| (*time, arrived.iter().filter(|i| newly_indicated(index, i, *time)).collect::<Vec<_>>()))
                .filter(|(_, arrived)| !arrived.is_empty())
                .collect();
            for (time, decisions) in state.history.retro(&newly, retro_window) {
                if let Some(cap) = retro_at.get(&time) {
                    retro_out.activate().session(cap).give_iterator(decisions.into_iter());
                }
            }
            match bound {
                Some(bound) => {
                    retro_at.retain(|time, _| *time >= bound);
                    state.history.forget_before(bound.saturating_sub(retro_window));
                }
                None => {
                    retro_at.clear();
                    state.history = History::default();
                }
            }
            // Followed indicators' old changes are summed now and then (it changes no answer: every
            // question still to come is at `bound - 1` or later).
            if let (None, Some(bound), true) = (&fixed, bound, changed) {
                if compacted.elapsed() > std::time::Duration::from_secs(1) {
                    followed.compact(bound.saturating_sub(1));
                    compacted = std::time::Instant::now();
                    changed = false;
                }
            }
        }
    });
    (matched, retro)
}

/// Whether `indicator`'s value became indicated at `time`: in force then and not just before.
fn newly_indicated(index: &IntelIndex, indicator: &Indicator, time: Time) -> bool {
    index.value_in_force(indicator, time) && (time == 0 || !index.value_in_force(indicator, time - 1))
}

/// The `retro` decision on a history entry for the indicators that came into force at `time`.
fn retro_decision(seen: &Kept, event_id: &str, time: Time, mut hits: Vec<IntelHit>) -> Decision {
    hits.sort();
    hits.dedup();
    Decision {
        actions: vec![ThreatAction::Alert],
        severity: Severity::of_confidence(hits.iter().map(|h| h.confidence).max().unwrap_or(0)),
        late: seen.late,
        event_ts: Some(seen.ts),
        src_ip: seen.address.get().map(|(bits, v6)| crate::enrich::intel::from_bits(bits, v6).to_string()),
        risk_score: crate::detect::decision::intel_risk(&hits),
        intel: Some(hits),
        ..Decision::about(decision_id(&format!("{event_id}\u{0}{time}"), Verdict::Retro), event_id.to_string(), seen.user.to_string(), time, Verdict::Retro)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(time: Time) -> Seen {
        Seen {
            time,
            ts: time,
            event_id: format!("event-{time:08}-with-a-long-id").into(),
            user: "ann".into(),
            address: PackedAddress::pack(None),
            late: false,
            fingerprints: Fingerprints::default(),
        }
    }

    /// Entries across chunk boundaries: forgetting, reading from a time, and exporting keep the
    /// entries and their ids exactly.
    #[test]
    fn the_history_keeps_its_entries_across_chunks() {
        assert!(std::mem::size_of::<Kept>() <= 112, "{} bytes", std::mem::size_of::<Kept>());
        let mut history = History::default();
        let times: Vec<Time> = (0..100_000u64).map(|n| n / 3).collect();
        for time in &times {
            history.push_seen(entry(*time));
        }
        history.forget_before(10_000);
        let kept: Vec<Seen> = history.exported().collect();
        let expected: Vec<Seen> = times.iter().filter(|t| **t >= 10_000).map(|t| entry(*t)).collect();
        assert_eq!(kept, expected);
        let from: Vec<(Time, String)> = history.from(30_000).take(4).map(|(k, id)| (k.time, id.to_string())).collect();
        assert_eq!(from[0], (30_000, "event-00030000-with-a-long-id".to_string()));
        assert_eq!(from.len(), 4);
        history.forget_before(40_000);
        assert_eq!(history.iter_count(), times.iter().filter(|t| **t >= 40_000).count());
    }

    impl History {
        fn iter_count(&self) -> usize {
            self.from(0).count()
        }
    }
}
