//! The nine standard per-user features: the updates each event contributes to the shared feature
//! arrangement, and how an event's feature vector is read back from that arrangement.
//!
//! An event at time `t` contributes `+d` at `t` and `-d` at `t + W` to `(user, value)`, so that
//! the accumulation at time `t'` covers exactly the events with `t' - W < t <= t'` (DESIGN.md).
//! Counters accumulate their diffs (counts, byte sums); distinct features count the values whose
//! accumulation is positive. `new_country` reads the countries seen *strictly before* `t` within
//! 30 days, so those contributions are shifted: `+1` at `t + 1`, `-1` at `t + W`.
//!
//! Retractions wait in [`WindowState`] until the events' frontier passes them, and distinct values
//! are coalesced there: a value already present moves its single pending retraction instead of
//! adding one per event.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::checkpoint::WindowEntry;
use crate::event::{ActionKind, Event, Time};

/// One minute in milliseconds.
pub const MINUTE: Time = 60_000;
/// One hour in milliseconds.
pub const HOUR: Time = 60 * MINUTE;
/// One day in milliseconds.
pub const DAY: Time = 24 * HOUR;

/// The key of the feature arrangement: a 128-bit fingerprint of the user name (xxh3), so that
/// keys are small and fixed-size; two of a million users collide with probability about 1e-27.
pub type UserKey = u128;

/// The user key of a user name.
pub fn user_key(user: &str) -> UserKey {
    xxhash_rust::xxh3::xxh3_128(user.as_bytes())
}

/// The worker-routing hash of a user key, used by every operator keyed by user.
pub fn route(key: &UserKey) -> u64 {
    *key as u64
}

/// Names of the standard features, in their standard order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FeatureName {
    /// Count of `login_failed` in 5 minutes.
    #[serde(rename = "failed_logins_5m")]
    FailedLogins5m,
    /// Count of `login` in 1 hour.
    #[serde(rename = "logins_1h")]
    Logins1h,
    /// Distinct countries of logins and failed logins in 24 hours.
    #[serde(rename = "countries_24h")]
    Countries24h,
    /// 1 if the event's country was not seen for the user in the previous 30 days.
    #[serde(rename = "new_country")]
    NewCountry,
    /// Sum of `bytes` of downloads in 1 hour.
    #[serde(rename = "download_bytes_1h")]
    DownloadBytes1h,
    /// Count of `share_external` in 1 hour.
    #[serde(rename = "external_shares_1h")]
    ExternalShares1h,
    /// Count of `delete` in 10 minutes.
    #[serde(rename = "deletes_10m")]
    Deletes10m,
    /// Count of `permission_change` and `admin_action` in 1 hour.
    #[serde(rename = "privilege_changes_1h")]
    PrivilegeChanges1h,
    /// Distinct resources in 1 hour.
    #[serde(rename = "distinct_resources_1h")]
    DistinctResources1h,
}

impl FeatureName {
    /// All standard features, in order.
    pub const ALL: [FeatureName; 9] = [
        FeatureName::FailedLogins5m,
        FeatureName::Logins1h,
        FeatureName::Countries24h,
        FeatureName::NewCountry,
        FeatureName::DownloadBytes1h,
        FeatureName::ExternalShares1h,
        FeatureName::Deletes10m,
        FeatureName::PrivilegeChanges1h,
        FeatureName::DistinctResources1h,
    ];

    /// The feature's name as in DESIGN.md.
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureName::FailedLogins5m => "failed_logins_5m",
            FeatureName::Logins1h => "logins_1h",
            FeatureName::Countries24h => "countries_24h",
            FeatureName::NewCountry => "new_country",
            FeatureName::DownloadBytes1h => "download_bytes_1h",
            FeatureName::ExternalShares1h => "external_shares_1h",
            FeatureName::Deletes10m => "deletes_10m",
            FeatureName::PrivilegeChanges1h => "privilege_changes_1h",
            FeatureName::DistinctResources1h => "distinct_resources_1h",
        }
    }

    /// Looks a feature up by name.
    pub fn parse(name: &str) -> Option<FeatureName> {
        FeatureName::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// The feature's window.
    pub fn window(self) -> Time {
        match self {
            FeatureName::FailedLogins5m => 5 * MINUTE,
            FeatureName::Deletes10m => 10 * MINUTE,
            FeatureName::Countries24h => DAY,
            FeatureName::NewCountry => 30 * DAY,
            _ => HOUR,
        }
    }
}

/// The feature vector of one event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Features {
    /// See [`FeatureName::FailedLogins5m`].
    pub failed_logins_5m: u64,
    /// See [`FeatureName::Logins1h`].
    pub logins_1h: u64,
    /// See [`FeatureName::Countries24h`].
    pub countries_24h: u64,
    /// See [`FeatureName::NewCountry`].
    pub new_country: u64,
    /// See [`FeatureName::DownloadBytes1h`].
    pub download_bytes_1h: u64,
    /// See [`FeatureName::ExternalShares1h`].
    pub external_shares_1h: u64,
    /// See [`FeatureName::Deletes10m`].
    pub deletes_10m: u64,
    /// See [`FeatureName::PrivilegeChanges1h`].
    pub privilege_changes_1h: u64,
    /// See [`FeatureName::DistinctResources1h`].
    pub distinct_resources_1h: u64,
}

impl Features {
    /// The value of one feature.
    pub fn get(&self, name: FeatureName) -> u64 {
        match name {
            FeatureName::FailedLogins5m => self.failed_logins_5m,
            FeatureName::Logins1h => self.logins_1h,
            FeatureName::Countries24h => self.countries_24h,
            FeatureName::NewCountry => self.new_country,
            FeatureName::DownloadBytes1h => self.download_bytes_1h,
            FeatureName::ExternalShares1h => self.external_shares_1h,
            FeatureName::Deletes10m => self.deletes_10m,
            FeatureName::PrivilegeChanges1h => self.privilege_changes_1h,
            FeatureName::DistinctResources1h => self.distinct_resources_1h,
        }
    }

    fn set(&mut self, name: FeatureName, value: u64) {
        match name {
            FeatureName::FailedLogins5m => self.failed_logins_5m = value,
            FeatureName::Logins1h => self.logins_1h = value,
            FeatureName::Countries24h => self.countries_24h = value,
            FeatureName::NewCountry => self.new_country = value,
            FeatureName::DownloadBytes1h => self.download_bytes_1h = value,
            FeatureName::ExternalShares1h => self.external_shares_1h = value,
            FeatureName::Deletes10m => self.deletes_10m = value,
            FeatureName::PrivilegeChanges1h => self.privilege_changes_1h = value,
            FeatureName::DistinctResources1h => self.distinct_resources_1h = value,
        }
    }

    /// Reads an event's features from its user's accumulated feature values as of the event's time.
    pub fn from_accumulated(event: &Event, vals: &[(&FeatureVal, isize)]) -> Features {
        let mut features = Features::default();
        let country = event.country.as_deref().and_then(country_code);
        let mut seen_before = false;
        for (val, diff) in vals {
            if *diff <= 0 {
                continue;
            }
            match val {
                FeatureVal::Counter(name) => features.set(*name, *diff as u64),
                FeatureVal::Country(_) => features.countries_24h += 1,
                FeatureVal::Resource(_) => features.distinct_resources_1h += 1,
                FeatureVal::SeenCountry(c) => seen_before |= Some(*c) == country,
            }
        }
        features.new_country = u64::from(country.is_some() && !seen_before);
        features
    }
}

/// A value of the feature arrangement (keyed by [`UserKey`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FeatureVal {
    /// A counter feature; the diff is the count or the byte sum.
    Counter(FeatureName),
    /// A country of a login or failed login in the last 24 hours.
    Country(u16),
    /// A country seen in the 30 days strictly before.
    SeenCountry(u16),
    /// A resource (64-bit xxh3 fingerprint of its name) in the last hour.
    Resource(u64),
}

/// Packs an ISO alpha-2 country code into two bytes.
pub fn country_code(country: &str) -> Option<u16> {
    match country.as_bytes() {
        [a, b] => Some(u16::from_be_bytes([a.to_ascii_uppercase(), b.to_ascii_uppercase()])),
        _ => None,
    }
}

/// Byte counts are clamped to this per event so that a day of sums fits the `isize` diff.
pub const MAX_EVENT_BYTES: u64 = 1 << 48;

/// The counter an action feeds, with the amount.
fn counter_of(event: &Event) -> Option<(FeatureName, isize)> {
    match event.kind() {
        ActionKind::LoginFailed => Some((FeatureName::FailedLogins5m, 1)),
        ActionKind::Login => Some((FeatureName::Logins1h, 1)),
        ActionKind::Download => {
            let bytes = event.bytes.unwrap_or(0).min(MAX_EVENT_BYTES);
            (bytes > 0).then_some((FeatureName::DownloadBytes1h, bytes as isize))
        }
        ActionKind::ShareExternal => Some((FeatureName::ExternalShares1h, 1)),
        ActionKind::Delete => Some((FeatureName::Deletes10m, 1)),
        ActionKind::PermissionChange | ActionKind::AdminAction => Some((FeatureName::PrivilegeChanges1h, 1)),
        ActionKind::Upload | ActionKind::Other => None,
    }
}

/// An update of the feature arrangement: `((user, value), time, diff)`.
pub type FeatureUpdate = ((UserKey, FeatureVal), Time, isize);

/// Per-worker state that turns events, in time order, into feature-arrangement updates.
///
/// Retractions (`-d` at `t + W`) are held here, queued by time, and sent only once the events'
/// frontier has passed their time: the arrangement's batcher then never holds far-future updates
/// (30-day windows would otherwise keep every event's retraction there, re-scanned at every seal).
/// A distinct value keeps one pending retraction: an event that extends the value's presence
/// moves its end instead of adding a retraction, so a user logging in from the same country a
/// hundred times holds one pending update for it, not a hundred.
#[derive(Default)]
pub struct WindowState {
    /// End (exclusive) of each distinct value's current presence interval.
    present_until: HashMap<(UserKey, FeatureVal), Time, foldhash::fast::FixedState>,
    /// Pending retractions of the 30-day countries by time, as `(time, slot)`; one per value,
    /// checked against `present_until` when due and re-queued if the interval was extended.
    pending: BinaryHeap<Reverse<(Time, usize)>>,
    /// The `(key, value)` of each pending heap retraction (always `-1`), by slot; `free` lists
    /// unused slots.
    slots: Vec<(UserKey, FeatureVal)>,
    free: Vec<usize>,
    /// Counter retractions, one queue per counter: a counter's window is fixed and events come in
    /// time order, so each queue is already sorted by time (no heap needed).
    counters: [VecDeque<(Time, UserKey, isize)>; 9],
    /// Retractions of the short-window distinct values (countries in 24 h, resources in 1 h), one
    /// queue each, sorted for the same reason. An extension queues a new entry and leaves the old
    /// one stale, which is cheap for short windows; the 30-day countries use the heap instead.
    short: [VecDeque<(Time, UserKey, FeatureVal)>; 2],
    /// Each user's feature values as of the updates made so far (users with none are absent).
    totals: HashMap<UserKey, Totals, foldhash::fast::FixedState>,
}

/// One user's accumulated counters and distinct counts: the sums of the diffs of its updates.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    /// By [`FeatureName`] index; only the counter features are used.
    counters: [isize; 9],
    /// Countries of the last 24 hours present.
    countries: isize,
    /// Resources of the last hour present.
    resources: isize,
}

/// The queue in [`WindowState::short`] of a distinct value, if it has one.
fn short_queue(val: FeatureVal) -> Option<usize> {
    match val {
        FeatureVal::Country(_) => Some(0),
        FeatureVal::Resource(_) => Some(1),
        FeatureVal::SeenCountry(_) | FeatureVal::Counter(_) => None,
    }
}

impl WindowState {
    /// Appends the updates of one event judged at `time` to `out`; queues its retractions.
    ///
    /// Events must be presented in non-decreasing `time` order (events at the same time in any order),
    /// and [`WindowState::expire`] called with the events' frontier in between.
    pub fn updates(&mut self, key: UserKey, event: &Event, time: Time, out: &mut Vec<FeatureUpdate>) {
        let start = out.len();
        self.event_updates(key, event, time, out);
        self.total(&out[start..]);
    }

    /// Applies the events of one time `time` (all of them, each `(time, event)`) and appends their
    /// features as of `time` to `features`: every event of the same millisecond counts, and the
    /// retractions due at `time` are applied first. The events' updates and the retractions go
    /// to `out`, as with [`WindowState::updates`] and [`WindowState::expire`].
    pub fn judge<E: std::ops::Deref<Target = Event>>(
        &mut self,
        time: Time,
        events: &[(Time, E)],
        out: &mut Vec<FeatureUpdate>,
        features: &mut Vec<Features>,
    ) {
        let first = features.len();
        // A country is new if no event of the 30 days strictly before had it: read before this
        // time's events extend the intervals.
        for (_, event) in events {
            let country = event.country.as_deref().and_then(country_code);
            let seen = country.is_some_and(|c| {
                self.present_until.get(&(event.key, FeatureVal::SeenCountry(c))).is_some_and(|until| *until > time)
            });
            features.push(Features { new_country: u64::from(country.is_some() && !seen), ..Features::default() });
        }
        for (_, event) in events {
            self.updates(event.key, event, time, out);
        }
        self.expire(Some(time + 1), out);
        for ((_, event), features) in events.iter().zip(&mut features[first..]) {
            if let Some(totals) = self.totals.get(&event.key) {
                // Only counter features have counters; the others stay 0 here.
                for name in FeatureName::ALL {
                    let n = totals.counters[name as usize];
                    if n > 0 {
                        features.set(name, n as u64);
                    }
                }
                features.countries_24h = totals.countries.max(0) as u64;
                features.distinct_resources_1h = totals.resources.max(0) as u64;
            }
        }
    }

    /// Adds updates to the users' totals (the 30-day countries only decide `new_country`, which
    /// reads the intervals themselves: their updates start a millisecond late).
    fn total(&mut self, updates: &[FeatureUpdate]) {
        for &((key, val), _, diff) in updates {
            let totals = self.totals.entry(key).or_default();
            match val {
                FeatureVal::Counter(name) => totals.counters[name as usize] += diff,
                FeatureVal::Country(_) => totals.countries += diff,
                FeatureVal::Resource(_) => totals.resources += diff,
                FeatureVal::SeenCountry(_) => continue,
            }
            if diff < 0 && *totals == Totals::default() {
                self.totals.remove(&key);
            }
        }
    }

    fn event_updates(&mut self, key: UserKey, event: &Event, time: Time, out: &mut Vec<FeatureUpdate>) {
        if let Some((name, amount)) = counter_of(event) {
            let val = FeatureVal::Counter(name);
            out.push(((key, val), time, amount));
            self.counters[name as usize].push_back((time + name.window(), key, -amount));
        }
        if let Some(c) = event.country.as_deref().and_then(country_code) {
            if matches!(event.kind(), ActionKind::Login | ActionKind::LoginFailed) {
                self.present(key, FeatureVal::Country(c), time, FeatureName::Countries24h.window(), out);
            }
            // Seen *strictly before* a later event: present during [time + 1, time + W).
            self.present(key, FeatureVal::SeenCountry(c), time + 1, FeatureName::NewCountry.window() - 1, out);
        }
        if let Some(resource) = event.resource.as_deref() {
            let val = FeatureVal::Resource(xxhash_rust::xxh3::xxh3_64(resource.as_bytes()));
            self.present(key, val, time, FeatureName::DistinctResources1h.window(), out);
        }
    }

    /// Makes `val` present during `[start, start + len)`, merging with its current interval.
    fn present(&mut self, key: UserKey, val: FeatureVal, start: Time, len: Time, out: &mut Vec<FeatureUpdate>) {
        let end = start + len;
        match self.present_until.get_mut(&(key, val)) {
            // Overlapping or adjacent: extend (a heap entry is re-queued when due; a short-window
            // value queues a new entry and its old one goes stale).
            Some(until) if *until >= start => {
                if end > *until {
                    *until = end;
                    if let Some(q) = short_queue(val) {
                        self.short[q].push_back((end, key, val));
                    }
                }
            }
            // Ended, but its retraction is not sent yet: send it, and start a new interval.
            Some(until) => {
                out.push(((key, val), *until, -1));
                out.push(((key, val), start, 1));
                *until = end;
                self.queue(end, key, val);
            }
            None => {
                out.push(((key, val), start, 1));
                self.present_until.insert((key, val), end);
                self.queue(end, key, val);
            }
        }
    }

    /// Appends the retractions due before `frontier` (all of them when `None`: no more events).
    ///
    /// No event at or after the frontier can extend an interval ending before it.
    pub fn expire(&mut self, frontier: Option<Time>, out: &mut Vec<FeatureUpdate>) {
        let start = out.len();
        self.expire_queues(frontier, out);
        self.total(&out[start..]);
    }

    fn expire_queues(&mut self, frontier: Option<Time>, out: &mut Vec<FeatureUpdate>) {
        for (name, queue) in FeatureName::ALL.iter().zip(self.counters.iter_mut()) {
            while let Some(&(time, key, diff)) = queue.front() {
                if frontier.is_some_and(|f| time >= f) {
                    break;
                }
                queue.pop_front();
                out.push(((key, FeatureVal::Counter(*name)), time, diff));
            }
        }
        for queue in self.short.iter_mut() {
            while let Some(&(time, key, val)) = queue.front() {
                if frontier.is_some_and(|f| time >= f) {
                    break;
                }
                queue.pop_front();
                // Only the entry at the interval's current end retracts; others are stale.
                if self.present_until.get(&(key, val)) == Some(&time) {
                    out.push(((key, val), time, -1));
                    self.present_until.remove(&(key, val));
                }
            }
        }
        while let Some(Reverse((time, slot))) = self.pending.peek().copied() {
            if frontier.is_some_and(|f| time >= f) {
                break;
            }
            self.pending.pop();
            let (key, val) = self.slots[slot];
            let until = self.present_until.get(&(key, val)).copied().unwrap_or(Time::MAX);
            if until == time {
                out.push(((key, val), time, -1));
                self.present_until.remove(&(key, val));
                self.free.push(slot);
            } else if until > time && until != Time::MAX {
                // Extended since: due later.
                self.pending.push(Reverse((until, slot)));
            } else {
                // A stale entry: the interval was closed and replaced (see `present`).
                self.free.push(slot);
            }
        }
    }

    /// Queues the retraction of a distinct value at `time`.
    fn queue(&mut self, time: Time, key: UserKey, val: FeatureVal) {
        if let Some(q) = short_queue(val) {
            self.short[q].push_back((time, key, val));
            return;
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = (key, val);
                slot
            }
            None => {
                self.slots.push((key, val));
                self.slots.len() - 1
            }
        };
        self.pending.push(Reverse((time, slot)));
    }

    /// The windows' contents at the frontier `F` of the last [`WindowState::expire`]: every pending
    /// counter retraction and every distinct value present.
    pub fn export(&self, out: &mut Vec<WindowEntry>) {
        for (name, queue) in FeatureName::ALL.iter().zip(self.counters.iter()) {
            for &(until, key, diff) in queue {
                out.push(WindowEntry::Counter { key, val: FeatureVal::Counter(*name), amount: -diff, until });
            }
        }
        for (&(key, val), &until) in &self.present_until {
            out.push(WindowEntry::Present { key, val, until });
        }
    }

    /// Restores exported contents into an empty state, and appends the updates that make the
    /// arrangement hold them at `at` (the checkpoint's frontier).
    pub fn import(&mut self, entries: Vec<WindowEntry>, at: Time, out: &mut Vec<FeatureUpdate>) {
        let start = out.len();
        self.import_entries(entries, at, out);
        self.total(&out[start..]);
    }

    fn import_entries(&mut self, mut entries: Vec<WindowEntry>, at: Time, out: &mut Vec<FeatureUpdate>) {
        // Blocks and correlation windows are other operators' state.
        entries.retain(|e| matches!(e, WindowEntry::Counter { .. } | WindowEntry::Present { .. }));
        let until = |e: &WindowEntry| match e {
            WindowEntry::Counter { until, .. } | WindowEntry::Present { until, .. } => *until,
            WindowEntry::Block { until, .. } => *until,
            WindowEntry::Correlation { time, .. } => *time,
        };
        // Queues must be in time order.
        entries.sort_by_key(until);
        for entry in entries {
            match entry {
                WindowEntry::Counter { key, val, amount, until } => {
                    if let FeatureVal::Counter(name) = val {
                        self.counters[name as usize].push_back((until, key, -amount));
                        out.push(((key, val), at, amount));
                    }
                }
                WindowEntry::Present { key, val, until } => {
                    self.present_until.insert((key, val), until);
                    self.queue(until, key, val);
                    out.push(((key, val), at, 1));
                }
                WindowEntry::Block { .. } | WindowEntry::Correlation { .. } => {}
            }
        }
    }

    /// The time of the earliest pending retraction.
    pub fn next_expiry(&self) -> Option<Time> {
        let counters = self.counters.iter().filter_map(|q| q.front().map(|(time, ..)| *time));
        let short = self.short.iter().filter_map(|q| q.front().map(|(time, ..)| *time));
        self.pending.peek().map(|Reverse((time, _))| *time).into_iter().chain(counters).chain(short).min()
    }
}
