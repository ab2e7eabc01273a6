//! The ten standard per-user features: the updates each event contributes to the shared feature
//! arrangement, and how an event's feature vector is read back from that arrangement.
//!
//! An event at time `t` contributes `+d` at `t` and `-d` at `t + W` to `(user, value)`, so that
//! the accumulation at time `t'` covers exactly the events with `t' - W < t <= t'` (docs/semantics.md#feature-windows).
//! Counters accumulate their diffs (counts, byte sums); distinct features count the values whose
//! accumulation is positive. `new_country` reads the countries seen *strictly before* `t` within
//! 30 days, so those contributions are shifted: `+1` at `t + 1`, `-1` at `t + W`.
//!
//! `travel_speed_kmh` reads the places of the user's latest located login strictly before `t`
//! (within 24 hours): each place is present from just after its login until the next located
//! login supersedes it (or 24 hours pass), so the arrangement holds one group of places per user.
//!
//! Retractions wait in [`WindowState`] until the events' frontier passes them, and distinct values
//! are coalesced there: a value already present moves its single pending retraction instead of
//! adding one per event.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::enrich::place::Place;
use crate::event::{ActionKind, Event, Time, UserKey, DAY, HOUR, MINUTE};


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
    /// Speed (km/h) from the places of the previous located login of the last 24 hours to this
    /// login's place.
    #[serde(rename = "travel_speed_kmh")]
    TravelSpeedKmh,
}

/// How many standard features there are.
pub const FEATURES: usize = FeatureName::ALL.len();

impl FeatureName {
    /// All standard features, in order.
    pub const ALL: [FeatureName; 10] = [
        FeatureName::FailedLogins5m,
        FeatureName::Logins1h,
        FeatureName::Countries24h,
        FeatureName::NewCountry,
        FeatureName::DownloadBytes1h,
        FeatureName::ExternalShares1h,
        FeatureName::Deletes10m,
        FeatureName::PrivilegeChanges1h,
        FeatureName::DistinctResources1h,
        FeatureName::TravelSpeedKmh,
    ];

    /// The feature's name as in docs/semantics.md#feature-windows.
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
            FeatureName::TravelSpeedKmh => "travel_speed_kmh",
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
            FeatureName::Countries24h | FeatureName::TravelSpeedKmh => DAY,
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
    /// See [`FeatureName::TravelSpeedKmh`].
    #[serde(default)]
    pub travel_speed_kmh: u64,
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
            FeatureName::TravelSpeedKmh => self.travel_speed_kmh,
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
            FeatureName::TravelSpeedKmh => self.travel_speed_kmh = value,
        }
    }

    /// Reads an event's features from its user's accumulated feature values as of the event's time.
    pub fn from_accumulated(event: &Event, vals: &[(&FeatureVal, isize)]) -> Features {
        let mut features = Features::default();
        let country = event.country.as_deref().and_then(country_code);
        let mut seen_before = false;
        let place = located_login(event);
        for (val, diff) in vals {
            if *diff <= 0 {
                continue;
            }
            match val {
                FeatureVal::Counter(name) => features.set(*name, *diff as u64),
                FeatureVal::Country(_) => features.countries_24h += 1,
                FeatureVal::Resource(_) => features.distinct_resources_1h += 1,
                FeatureVal::SeenCountry(c) => seen_before |= Some(*c) == country,
                // One group of places is present at a time (see the module doc).
                FeatureVal::LoginPlace(at, from) => {
                    if let Some(to) = place {
                        let speed = Place::speed_kmh(*from, to, event.time.saturating_sub(*at));
                        features.travel_speed_kmh = features.travel_speed_kmh.max(speed);
                    }
                }
            }
        }
        features.new_country = u64::from(country.is_some() && !seen_before);
        features
    }
}

/// The place of a login or failed login that has one (see [`Place::of`]).
fn located_login(event: &Event) -> Option<Place> {
    matches!(event.kind(), ActionKind::Login | ActionKind::LoginFailed).then(|| Place::of(event)).flatten()
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
    /// A place of the user's latest located login strictly before, with that login's time
    /// (within 24 hours).
    LoginPlace(Time, Place),
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


/// The feature windows of one user value at a checkpoint's frontier: a counter's pending
/// retraction, or a distinct value present until a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowEntry {
    /// A counter contribution `amount`, retracted at `until`.
    Counter {
        /// The user.
        key: UserKey,
        /// Which counter (a `FeatureVal::Counter`).
        val: FeatureVal,
        /// Its amount.
        amount: isize,
        /// When it leaves the window.
        until: Time,
    },
    /// A distinct value present until `until`.
    Present {
        /// The user.
        key: UserKey,
        /// The value.
        val: FeatureVal,
        /// When it leaves the window.
        until: Time,
    },
}

impl WindowEntry {
    /// The user the entry belongs to.
    pub fn key(&self) -> UserKey {
        match self {
            WindowEntry::Counter { key, .. } | WindowEntry::Present { key, .. } => *key,
        }
    }
}

/// An update of the feature arrangement: `((user, value), time, diff)`.
pub type FeatureUpdate = ((UserKey, FeatureVal), Time, isize);

/// Per-worker state of the feature windows: turns events, in time order, into each event's
/// features and into feature-arrangement updates.
///
/// Each user's state is one entry: the running totals of its counters and distinct counts, and
/// the distinct values present with the end of their presence, so judging an event costs one
/// lookup. Retractions (`-d` at `t + W`) are queued by time and applied (and sent) only once the
/// events' frontier has passed their time: the arrangement's batcher then never holds far-future
/// updates (30-day windows would otherwise keep every event's retraction there). A distinct value
/// keeps one pending retraction: an event that extends the value's presence moves its end instead
/// of adding a retraction, so a user logging in from the same country a hundred times holds one
/// pending update for it, not a hundred.
#[derive(Default)]
pub struct WindowState {
    /// Per user with anything in a window.
    users: HashMap<UserKey, UserWindows, foldhash::fast::FixedState>,
    /// Pending retractions of the 30-day countries by time; one per value, checked against the
    /// value's presence when due and re-queued if the interval was extended.
    pending: BinaryHeap<Reverse<(Time, UserKey, FeatureVal)>>,
    /// Counter retractions, one queue per counter: a counter's window is fixed and events come in
    /// time order, so each queue is already sorted by time (no heap needed).
    counters: [ChunkedQueue<(Time, UserKey, isize)>; FEATURES],
    /// Retractions of the short-window distinct values (countries in 24 h, resources in 1 h), one
    /// queue each, sorted for the same reason. An extension queues a new entry and leaves the old
    /// one stale, which is cheap for short windows; the 30-day countries use the heap instead.
    short: [ChunkedQueue<(Time, UserKey, FeatureVal)>; 2],
    /// The end of each login group's 24 hours: `(end, user, the group's time)`, in time order; an
    /// entry whose group was superseded is stale.
    login_groups: ChunkedQueue<(Time, UserKey, Time)>,
}

/// One user's windows.
#[derive(Default)]
struct UserWindows {
    /// Accumulated counters (by [`FeatureName`] index; only the counter features are used).
    counters: [isize; FEATURES],
    /// Countries of the last 24 hours present.
    countries: isize,
    /// Resources of the last hour present.
    resources: isize,
    /// Each distinct value present, with the end (exclusive) of its presence interval.
    present: Present,
    /// The places of the latest located login, until 24 hours have passed.
    logins: Option<Box<LoginGroup>>,
}

/// The places of a user's located logins (and failed logins) of one millisecond.
struct LoginGroup {
    time: Time,
    places: Vec<Place>,
}

impl UserWindows {
    fn is_empty(&self) -> bool {
        self.counters == [0; FEATURES] && self.countries == 0 && self.resources == 0 && self.present.is_empty() && self.logins.is_none()
    }

    /// Adds `diff` to the total a value feeds (the 30-day countries feed none: `new_country`
    /// reads their presence).
    fn add(&mut self, val: FeatureVal, diff: isize) {
        match val {
            FeatureVal::Counter(name) => self.counters[name as usize] += diff,
            FeatureVal::Country(_) => self.countries += diff,
            FeatureVal::Resource(_) => self.resources += diff,
            FeatureVal::SeenCountry(_) | FeatureVal::LoginPlace(..) => {}
        }
    }

    /// The speed from the places of the latest located login strictly before `time` (within 24
    /// hours) to `to`: the greatest when that login millisecond had several places.
    fn travel_speed(&self, time: Time, to: Place) -> u64 {
        let group = self.logins.as_deref().filter(|g| g.time < time && time < g.time.saturating_add(DAY));
        group.map_or(0, |g| g.places.iter().map(|from| Place::speed_kmh(*from, to, time - g.time)).max().unwrap_or(0))
    }
}

/// A user's distinct values and the ends of their presence: a short list scanned in place, which
/// becomes a hash map for users with many values (a service account touching thousands of
/// resources an hour).
enum Present {
    Few(Vec<(FeatureVal, Time)>),
    Many(HashMap<FeatureVal, Time, foldhash::fast::FixedState>),
}

impl Default for Present {
    fn default() -> Self {
        Present::Few(Vec::new())
    }
}

impl Present {
    /// Values a list holds before it becomes a map.
    const FEW: usize = 32;

    fn get_mut(&mut self, val: FeatureVal) -> Option<&mut Time> {
        match self {
            Present::Few(list) => list.iter_mut().find(|(v, _)| *v == val).map(|(_, until)| until),
            Present::Many(map) => map.get_mut(&val),
        }
    }

    fn get(&self, val: FeatureVal) -> Option<Time> {
        match self {
            Present::Few(list) => list.iter().find(|(v, _)| *v == val).map(|(_, until)| *until),
            Present::Many(map) => map.get(&val).copied(),
        }
    }

    fn insert(&mut self, val: FeatureVal, until: Time) {
        match self {
            Present::Few(list) if list.len() < Self::FEW => list.push((val, until)),
            Present::Few(list) => {
                let mut map: HashMap<_, _, _> = list.drain(..).collect();
                map.insert(val, until);
                *self = Present::Many(map);
            }
            Present::Many(map) => {
                map.insert(val, until);
            }
        }
    }

    /// Removes a value. Room a burst of values made is given back as they expire (a list keeps
    /// at most about twice what it holds, a map as small as a list becomes one again): what a
    /// user's values take follows what they hold now, not the most they ever held, so memory
    /// does not creep up as more users have their bursts over a long run.
    fn remove(&mut self, val: FeatureVal) {
        match self {
            Present::Few(list) => {
                list.retain(|(v, _)| *v != val);
                if list.capacity() > 2 * list.len() + 4 {
                    list.shrink_to(list.len() + 2);
                }
            }
            Present::Many(map) => {
                map.remove(&val);
                if map.len() <= Self::FEW / 2 {
                    *self = Present::Few(map.drain().collect());
                } else if map.capacity() > 4 * map.len() {
                    map.shrink_to(2 * map.len());
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Present::Few(list) => list.is_empty(),
            Present::Many(map) => map.is_empty(),
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = (FeatureVal, Time)> + '_> {
        match self {
            Present::Few(list) => Box::new(list.iter().copied()),
            Present::Many(map) => Box::new(map.iter().map(|(v, t)| (*v, *t))),
        }
    }
}

/// A FIFO queue in fixed-size chunks: growing it never copies what it holds (a `VecDeque` doubles
/// and copies everything: a stall of a hundred milliseconds at a million retractions).
struct ChunkedQueue<T> {
    chunks: VecDeque<VecDeque<T>>,
}

impl<T> Default for ChunkedQueue<T> {
    fn default() -> Self {
        ChunkedQueue { chunks: VecDeque::new() }
    }
}

impl<T> ChunkedQueue<T> {
    /// Entries per chunk.
    const CHUNK: usize = 4096;

    fn push_back(&mut self, item: T) {
        match self.chunks.back_mut() {
            Some(chunk) if chunk.len() < Self::CHUNK => chunk.push_back(item),
            _ => {
                let mut chunk = VecDeque::with_capacity(Self::CHUNK);
                chunk.push_back(item);
                self.chunks.push_back(chunk);
            }
        }
    }

    fn front(&self) -> Option<&T> {
        self.chunks.front().and_then(VecDeque::front)
    }

    fn pop_front(&mut self) -> Option<T> {
        let chunk = self.chunks.front_mut()?;
        let item = chunk.pop_front();
        if chunk.is_empty() {
            self.chunks.pop_front();
        }
        item
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

/// The queue in [`WindowState::short`] of a distinct value, if it has one.
fn short_queue(val: FeatureVal) -> Option<usize> {
    match val {
        FeatureVal::Country(_) => Some(0),
        FeatureVal::Resource(_) => Some(1),
        FeatureVal::SeenCountry(_) | FeatureVal::Counter(_) | FeatureVal::LoginPlace(..) => None,
    }
}

/// Queues the retraction of a distinct value's presence at `time`: in its short window's queue, or
/// in the heap of the 30-day countries. (Takes the two fields, not the state: callers hold a
/// user's entry at the same time.)
fn queue_retraction(
    short: &mut [ChunkedQueue<(Time, UserKey, FeatureVal)>; 2],
    pending: &mut BinaryHeap<Reverse<(Time, UserKey, FeatureVal)>>,
    time: Time,
    key: UserKey,
    val: FeatureVal,
) {
    match short_queue(val) {
        Some(q) => short[q].push_back((time, key, val)),
        None => pending.push(Reverse((time, key, val))),
    }
}

impl WindowState {
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
        // Likewise the travel speed from the previous located login.
        for (_, event) in events {
            let user = self.users.get(&event.key);
            let country = event.country.as_deref().and_then(country_code);
            let seen = country.is_some_and(|c| {
                user.and_then(|u| u.present.get(FeatureVal::SeenCountry(c))).is_some_and(|until| until > time)
            });
            let travel_speed_kmh = located_login(event).zip(user).map_or(0, |(to, user)| user.travel_speed(time, to));
            features.push(Features { new_country: u64::from(country.is_some() && !seen), travel_speed_kmh, ..Features::default() });
        }
        for (_, event) in events {
            self.updates(event.key, event, time, out);
        }
        self.expire(Some(time.saturating_add(1)), out);
        for ((_, event), features) in events.iter().zip(&mut features[first..]) {
            if let Some(user) = self.users.get(&event.key) {
                // Only counter features have counters; the others stay 0 here.
                for name in FeatureName::ALL {
                    let n = user.counters[name as usize];
                    if n > 0 {
                        features.set(name, n as u64);
                    }
                }
                features.countries_24h = user.countries.max(0) as u64;
                features.distinct_resources_1h = user.resources.max(0) as u64;
            }
        }
    }

    /// Appends the updates of one event judged at `time` to `out`; queues its retractions.
    ///
    /// Events must be presented in non-decreasing `time` order (events at the same time in any order),
    /// and [`WindowState::expire`] called with the events' frontier in between.
    pub fn updates(&mut self, key: UserKey, event: &Event, time: Time, out: &mut Vec<FeatureUpdate>) {
        let user = self.users.entry(key).or_default();
        if let Some((name, amount)) = counter_of(event) {
            let val = FeatureVal::Counter(name);
            out.push(((key, val), time, amount));
            user.add(val, amount);
            self.counters[name as usize].push_back((time.saturating_add(name.window()), key, -amount));
        }
        let mut distinct = |val: FeatureVal, start: Time, len: Time| {
            let end = start.saturating_add(len);
            match user.present.get_mut(val) {
                // Overlapping or adjacent: extend (a heap entry is re-queued when due; a
                // short-window value queues a new entry and its old one goes stale).
                Some(until) if *until >= start => {
                    if end > *until {
                        *until = end;
                        if let Some(q) = short_queue(val) {
                            self.short[q].push_back((end, key, val));
                        }
                    }
                    return;
                }
                // Ended, but its retraction is not sent yet: send it, and start a new interval.
                Some(until) => {
                    out.push(((key, val), *until, -1));
                    out.push(((key, val), start, 1));
                    *until = end;
                }
                None => {
                    out.push(((key, val), start, 1));
                    user.present.insert(val, end);
                    user.add(val, 1);
                }
            }
            queue_retraction(&mut self.short, &mut self.pending, end, key, val);
        };
        if let Some(c) = event.country.as_deref().and_then(country_code) {
            if matches!(event.kind(), ActionKind::Login | ActionKind::LoginFailed) {
                distinct(FeatureVal::Country(c), time, FeatureName::Countries24h.window());
            }
            // Seen *strictly before* a later event: present during [time + 1, time + W).
            distinct(FeatureVal::SeenCountry(c), time.saturating_add(1), FeatureName::NewCountry.window() - 1);
        }
        if let Some(resource) = event.resource.as_deref() {
            let val = FeatureVal::Resource(xxhash_rust::xxh3::xxh3_64(resource.as_bytes()));
            distinct(val, time, FeatureName::DistinctResources1h.window());
        }
        if let Some(place) = located_login(event) {
            // Present from just after the login until superseded or 24 hours have passed.
            let start = time.saturating_add(1);
            match user.logins.as_deref_mut() {
                Some(group) if group.time == time => {
                    if !group.places.contains(&place) {
                        group.places.push(place);
                        out.push(((key, FeatureVal::LoginPlace(time, place)), start, 1));
                    }
                }
                _ => {
                    if let Some(old) = user.logins.take() {
                        let end = old.time.saturating_add(DAY).min(start);
                        out.extend(old.places.iter().map(|p| ((key, FeatureVal::LoginPlace(old.time, *p)), end, -1)));
                    }
                    out.push(((key, FeatureVal::LoginPlace(time, place)), start, 1));
                    user.logins = Some(Box::new(LoginGroup { time, places: vec![place] }));
                    self.login_groups.push_back((time.saturating_add(DAY), key, time));
                }
            }
        }
        // An event that feeds no window (an upload without a resource) leaves no user behind.
        if user.is_empty() {
            self.users.remove(&key);
        }
    }

    /// Appends the retractions due before `frontier` (all of them when `None`: no more events).
    ///
    /// No event at or after the frontier can extend an interval ending before it.
    pub fn expire(&mut self, frontier: Option<Time>, out: &mut Vec<FeatureUpdate>) {
        let due = |time: Time| frontier.is_none_or(|f| time < f);
        for (name, queue) in FeatureName::ALL.iter().zip(self.counters.iter_mut()) {
            while let Some(&(time, key, diff)) = queue.front().filter(|(time, ..)| due(*time)) {
                queue.pop_front();
                let val = FeatureVal::Counter(*name);
                out.push(((key, val), time, diff));
                Self::change(&mut self.users, key, |user| user.add(val, diff));
            }
        }
        for queue in self.short.iter_mut() {
            while let Some(&(time, key, val)) = queue.front().filter(|(time, ..)| due(*time)) {
                queue.pop_front();
                // Only the entry at the interval's current end retracts; others are stale.
                Self::change(&mut self.users, key, |user| {
                    if user.present.get(val) == Some(time) {
                        out.push(((key, val), time, -1));
                        user.present.remove(val);
                        user.add(val, -1);
                    }
                });
            }
        }
        while let Some(&(end, key, at)) = self.login_groups.front().filter(|(end, ..)| due(*end)) {
            self.login_groups.pop_front();
            Self::change(&mut self.users, key, |user| {
                if let Some(group) = user.logins.take_if(|g| g.time == at) {
                    out.extend(group.places.iter().map(|p| ((key, FeatureVal::LoginPlace(at, *p)), end, -1)));
                }
            });
        }
        while let Some(&Reverse((time, key, val))) = self.pending.peek().filter(|Reverse((time, ..))| due(*time)) {
            self.pending.pop();
            let mut later = None;
            Self::change(&mut self.users, key, |user| match user.present.get(val) {
                Some(until) if until == time => {
                    out.push(((key, val), time, -1));
                    user.present.remove(val);
                }
                // Extended since: due later.
                Some(until) if until > time => later = Some(until),
                // A stale entry: the interval was closed and replaced (see `updates`).
                _ => {}
            });
            if let Some(until) = later {
                self.pending.push(Reverse((until, key, val)));
            }
        }
        // The users map gives back the room of users gone (as `Present` does for values).
        if self.users.capacity() > 4 * self.users.len() + 1024 {
            self.users.shrink_to(2 * self.users.len());
        }
    }

    /// Applies `change` to a user's windows, and forgets the user once they are empty.
    fn change(users: &mut HashMap<UserKey, UserWindows, foldhash::fast::FixedState>, key: UserKey, change: impl FnOnce(&mut UserWindows)) {
        if let Some(user) = users.get_mut(&key) {
            change(user);
            if user.is_empty() {
                users.remove(&key);
            }
        }
    }

    /// The windows' contents at the frontier `F` of the last [`WindowState::expire`]: every pending
    /// counter retraction and every distinct value present.
    pub fn export(&self, out: &mut Vec<WindowEntry>) {
        for (name, queue) in FeatureName::ALL.iter().zip(self.counters.iter()) {
            for &(until, key, diff) in queue.iter() {
                out.push(WindowEntry::Counter { key, val: FeatureVal::Counter(*name), amount: -diff, until });
            }
        }
        for (&key, user) in &self.users {
            for (val, until) in user.present.iter() {
                out.push(WindowEntry::Present { key, val, until });
            }
            if let Some(group) = user.logins.as_deref() {
                let until = group.time.saturating_add(DAY);
                out.extend(group.places.iter().map(|p| WindowEntry::Present { key, val: FeatureVal::LoginPlace(group.time, *p), until }));
            }
        }
    }

    /// Restores exported contents into an empty state, and appends the updates that make the
    /// arrangement hold them at `at` (the checkpoint's frontier).
    pub fn import(&mut self, mut entries: Vec<WindowEntry>, at: Time, out: &mut Vec<FeatureUpdate>) {
        let until = |e: &WindowEntry| match e {
            WindowEntry::Counter { until, .. } | WindowEntry::Present { until, .. } => *until,
        };
        // Queues must be in time order.
        entries.sort_by_key(until);
        for entry in entries {
            match entry {
                WindowEntry::Counter { key, val, amount, until } => {
                    if let FeatureVal::Counter(name) = val {
                        self.counters[name as usize].push_back((until, key, -amount));
                        self.users.entry(key).or_default().add(val, amount);
                        out.push(((key, val), at, amount));
                    }
                }
                WindowEntry::Present { key, val: val @ FeatureVal::LoginPlace(time, place), until } => {
                    let user = self.users.entry(key).or_default();
                    match user.logins.as_deref_mut() {
                        Some(group) if group.time == time => group.places.push(place),
                        _ => {
                            user.logins = Some(Box::new(LoginGroup { time, places: vec![place] }));
                            self.login_groups.push_back((until, key, time));
                        }
                    }
                    out.push(((key, val), at, 1));
                }
                WindowEntry::Present { key, val, until } => {
                    let user = self.users.entry(key).or_default();
                    user.present.insert(val, until);
                    user.add(val, 1);
                    queue_retraction(&mut self.short, &mut self.pending, until, key, val);
                    out.push(((key, val), at, 1));
                }
            }
        }
    }

    /// The time of the earliest pending retraction.
    pub fn next_expiry(&self) -> Option<Time> {
        let counters = self.counters.iter().filter_map(|q| q.front().map(|(time, ..)| *time));
        let short = self.short.iter().filter_map(|q| q.front().map(|(time, ..)| *time));
        let logins = self.login_groups.front().map(|(time, ..)| *time);
        self.pending.peek().map(|Reverse((time, ..))| *time).into_iter().chain(counters).chain(short).chain(logins).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A burst of values makes a map; as they expire it becomes a short list again and gives
    /// back its room, holding the same values throughout.
    #[test]
    fn present_values_give_back_the_room_of_a_burst() {
        let mut present = Present::default();
        for r in 0..200u64 {
            present.insert(FeatureVal::Resource(r), r + 1_000);
        }
        assert!(matches!(present, Present::Many(_)));
        for r in 0..190u64 {
            present.remove(FeatureVal::Resource(r));
            assert_eq!(present.get(FeatureVal::Resource(r)), None);
        }
        let Present::Few(list) = &present else { panic!("ten values make a list again") };
        assert!(list.capacity() <= 2 * list.len() + 4, "{} of {}", list.len(), list.capacity());
        for r in 190..200u64 {
            assert_eq!(present.get(FeatureVal::Resource(r)), Some(r + 1_000));
        }
        for r in 190..199u64 {
            present.remove(FeatureVal::Resource(r));
        }
        let Present::Few(list) = &present else { panic!("a list") };
        assert!(list.len() == 1 && list.capacity() <= 6, "{}", list.capacity());
    }

    /// An event of `user` at `ts` with an action, a country and a resource.
    fn event(id: usize, user: &str, ts: Time, action: &str, country: &str, resource: u32) -> Event {
        let text = format!(
            r#"{{"event_id":"e{id}","ts":{ts},"user":"{user}","action":"{action}","country":"{country}","resource":"r{resource}","bytes":7}}"#
        );
        crate::event::parse_event(text.as_bytes(), 1 << 20).expect("a valid event")
    }

    /// The features of `events[i]` straight from the definitions of docs/semantics.md#feature-windows.
    fn oracle(events: &[Event], i: usize) -> Features {
        let e = &events[i];
        let within = |w: Time| events.iter().filter(move |o| o.user == e.user && o.ts <= e.ts && o.ts + w > e.ts);
        let count = |w: Time, actions: &[&str]| within(w).filter(|o| actions.contains(&o.action.as_str())).count() as u64;
        let distinct = |values: Vec<&str>| values.into_iter().collect::<std::collections::BTreeSet<_>>().len() as u64;
        let login = ["login", "login_failed"];
        // The latest located login strictly before, within a day, and the fastest of its places.
        let located = |o: &Event| login.contains(&o.action.as_str()) && o.country.is_some();
        let before: Vec<&Event> = events.iter().filter(|o| o.user == e.user && located(o) && o.ts < e.ts && o.ts + DAY > e.ts).collect();
        let latest = before.iter().map(|o| o.ts).max();
        let place = |o: &Event| Place::of_country(o.country.as_deref().unwrap()).unwrap();
        let travel_speed_kmh = match latest {
            Some(at) if located(e) => {
                before.iter().filter(|o| o.ts == at).map(|o| Place::speed_kmh(place(o), place(e), e.ts - at)).max().unwrap()
            }
            _ => 0,
        };
        Features {
            failed_logins_5m: count(5 * MINUTE, &["login_failed"]),
            logins_1h: count(HOUR, &["login"]),
            countries_24h: distinct(within(DAY).filter(|o| login.contains(&o.action.as_str())).filter_map(|o| o.country.as_deref()).collect()),
            new_country: u64::from(
                !events.iter().any(|o| o.user == e.user && o.ts < e.ts && o.ts + 30 * DAY > e.ts && o.country == e.country),
            ),
            download_bytes_1h: within(HOUR).filter(|o| o.action == "download").map(|o| o.bytes.unwrap_or(0)).sum(),
            external_shares_1h: count(HOUR, &["share_external"]),
            deletes_10m: count(10 * MINUTE, &["delete"]),
            privilege_changes_1h: count(HOUR, &["permission_change", "admin_action"]),
            distinct_resources_1h: distinct(within(HOUR).filter_map(|o| o.resource.as_deref()).collect()),
            travel_speed_kmh,
        }
    }

    /// Mostly short gaps (so that windows fill up), some at the window lengths, some long.
    fn gap() -> impl Strategy<Value = Time> {
        prop_oneof![3 => Just(0), 12 => 1u64..2_000, 1 => Just(5 * MINUTE), 1 => Just(HOUR), 1 => 1u64..DAY, 1 => Just(30 * DAY)]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// `judge` gives every event the oracle's features, with users that keep few distinct values
        /// and users that keep many (past the list-to-map switch), times that repeat, and gaps
        /// around the window lengths; `export` then `import` into a fresh state carries on alike.
        #[test]
        fn judged_features_are_the_definitions(
            steps in proptest::collection::vec((0u8..3, gap(), 0usize..6, 0usize..3, 0u32..80), 1..200),
            cut in 0usize..200,
        ) {
            let actions = ["login", "login_failed", "download", "delete", "share_external", "admin_action"];
            let countries = ["US", "DE", "JP"];
            let (mut ts, mut events) = (1_000u64, Vec::new());
            for (i, (user, gap, action, country, resource)) in steps.iter().enumerate() {
                ts += gap;
                // User 2 touches a new resource nearly every time: past `Present::FEW` values.
                let resource = if *user == 2 { i as u32 } else { *resource % 5 };
                events.push(event(i, &format!("u{user}"), ts, actions[*action], countries[*country], resource));
            }
            let mut state = WindowState::default();
            let (mut out, mut features) = (Vec::new(), Vec::new());
            let mut i = 0;
            while i < events.len() {
                if i >= cut.min(events.len()) && cut > 0 {
                    // Restart from a checkpoint taken at this event's time.
                    state.expire(Some(events[i].ts), &mut out);
                    let mut entries = Vec::new();
                    state.export(&mut entries);
                    state = WindowState::default();
                    state.import(entries, events[i].ts, &mut out);
                }
                let time = events[i].ts;
                let same: Vec<(Time, &Event)> = events[i..].iter().take_while(|e| e.ts == time).map(|e| (time, e)).collect();
                state.judge(time, &same, &mut out, &mut features);
                i += same.len();
            }
            for (i, got) in features.iter().enumerate() {
                prop_assert_eq!(*got, oracle(&events, i), "event {}", i);
            }
        }
    }

    /// A user with more distinct values than a list holds (a map then): every event's features
    /// are the oracle's as values arrive, are counted once, expire and are exported and imported.
    #[test]
    fn many_distinct_values() {
        let mut events = Vec::new();
        for i in 0..3 * Present::FEW {
            // A new resource every 20 s for a while, every fifth one repeated, then quiet, then more.
            let ts = 1_000 + i as Time * 20_000 + if i >= 2 * Present::FEW { HOUR } else { 0 };
            let resource = if i % 5 == 4 { i as u32 - 1 } else { i as u32 };
            events.push(event(i, "svc", ts, "download", "US", resource));
        }
        for restart in [false, true] {
            let mut state = WindowState::default();
            let (mut out, mut features) = (Vec::new(), Vec::new());
            for (i, e) in events.iter().enumerate() {
                if restart && i % 17 == 0 {
                    state.expire(Some(e.ts), &mut out);
                    let mut entries = Vec::new();
                    state.export(&mut entries);
                    state = WindowState::default();
                    state.import(entries, e.ts, &mut out);
                }
                state.judge(e.ts, &[(e.ts, e)], &mut out, &mut features);
                assert_eq!(features[i], oracle(&events, i), "event {i}, restart {restart}");
            }
            assert!(features.iter().any(|f| f.distinct_resources_1h > Present::FEW as u64));
        }
    }
}
