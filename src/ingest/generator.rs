//! The embedded event generator: realistic cloud-application activity with injected, labelled attacks.
//!
//! Deterministic by seed: every user's habits and every attack are functions of `(seed, user)` and
//! `(seed, instance)`, and a partition's stream is a function of `(seed, partition)`, so the stream
//! does not depend on how many workers read it. Users have a home country and IP addresses, working
//! hours in their time zone, sessions that start with a login (sometimes after a typo), habitual
//! actions and resources, and now and then a business trip. Attacks (brute force, impossible travel,
//! exfiltration, mass delete, privilege escalation, external sharing) are injected on victim users;
//! their ground truth travels beside the stream as [`Label`]s, never inside the events.
//! Arrival order is perturbed within a bound, and a few events arrive later than the allowed lateness.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::event::{Event, Text, Time};
use crate::event::{DAY, HOUR, MINUTE};
use crate::ingest::truth::{Label, Scenario};
use crate::checkpoint::PartitionPosition;
use crate::event::Position;
use crate::ingest::partition::{Decoding, Item, Partition};
use crate::ingest::provider_records::Rendering;

/// 2026-01-05T00:00:00Z, a Monday.
pub const DEFAULT_START: Time = 1_767_571_200_000;

/// Generator settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeneratorConfig {
    /// Seed of everything.
    pub seed: u64,
    /// Number of users.
    pub users: u64,
    /// Total number of events over all partitions.
    pub events: u64,
    /// Number of partitions (units of order; fixed, independent of the worker count).
    pub partitions: usize,
    /// Event time of the start of the first day.
    pub start: Time,
    /// Bound on the arrival delay of ordinary out-of-order events (ms).
    pub max_disorder: Time,
    /// The job's allowed lateness; a few events are delayed beyond it, to exercise late handling.
    pub allowed_lateness: Time,
    /// One event in this many arrives later than the allowed lateness (0: none).
    pub late_one_in: u64,
    /// Events per attack instance injected (at least one instance per scenario).
    pub events_per_attack: u64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 1,
            users: 10_000,
            events: 1_000_000,
            partitions: 16,
            start: DEFAULT_START,
            max_disorder: 2_000,
            allowed_lateness: 5_000,
            late_one_in: 20_000,
            events_per_attack: 40_000,
        }
    }
}

/// Countries with a time-zone offset (hours) and a continent, for homes and travel.
const COUNTRIES: [(&str, i64, u8, u32); 20] = [
    ("US", -6, 0, 30),
    ("CA", -5, 0, 5),
    ("BR", -3, 1, 4),
    ("MX", -6, 0, 3),
    ("GB", 0, 2, 10),
    ("DE", 1, 2, 10),
    ("FR", 1, 2, 7),
    ("NL", 1, 2, 4),
    ("ES", 1, 2, 4),
    ("IT", 1, 2, 4),
    ("SE", 1, 2, 2),
    ("PL", 1, 2, 3),
    ("IN", 5, 3, 6),
    ("SG", 8, 3, 2),
    ("JP", 9, 3, 3),
    ("AU", 10, 4, 3),
    ("ZA", 2, 5, 1),
    ("NG", 1, 5, 1),
    ("KR", 9, 3, 2),
    ("AR", -3, 1, 1),
];

/// Where attackers come from (never a user's home).
const ATTACKER_COUNTRIES: [&str; 6] = ["RU", "KP", "IR", "VN", "RO", "UA"];

const USER_AGENTS: [&str; 5] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) Safari/17.2",
    "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
    "DriveSync/4.2 (Windows)",
    "MailApp/16.0 (iOS 18.1)",
];

const ATTACKER_AGENT: &str = "python-requests/2.31.0";

/// Benign actions with the app they happen in and their weight.
const HABITS: [(&str, &str, u32); 9] = [
    ("view", "drive", 400),
    ("edit", "docs", 200),
    ("download", "drive", 140),
    ("upload", "drive", 80),
    ("share_internal", "drive", 60),
    ("send_mail", "mail", 100),
    ("delete", "drive", 30),
    ("share_external", "drive", 8),
    ("permission_change", "drive", 3),
];

fn mix(a: u64, b: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(&b.to_le_bytes(), a)
}

fn pick_index(rng: &mut ChaCha8Rng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut r = rng.random_range(0..total.max(1));
    for (i, w) in weights.iter().enumerate() {
        if r < *w {
            return i;
        }
        r -= w;
    }
    weights.len() - 1
}

/// A user's habits.
struct Profile {
    name: String,
    home: usize,
    ips: Vec<Text>,
    agent: &'static str,
    /// Start of the working day, hours after local midnight, and its length in hours.
    work_start: f64,
    work_hours: f64,
    sessions_per_day: u32,
    events_per_session: u32,
    /// Personal action weights (a perturbation of `HABITS`).
    habits: Vec<u32>,
    resources: u32,
    team: u64,
    admin: bool,
}

/// An address in a network registered to a country (the first two octets of a /16, or for North
/// Korea's only block a /22), so that a GeoIP database places generated events where the
/// generator says they are. Checked against the pinned database of `scripts/geo`
/// (`tests/enrichment.rs`).
const NETWORKS: [(&str, [u8; 2], u8); 26] = [
    ("US", [2, 0], 16),
    ("CA", [3, 96], 16),
    ("BR", [4, 160], 16),
    ("MX", [68, 155], 16),
    ("GB", [1, 186], 16),
    ("DE", [2, 28], 16),
    ("FR", [2, 3], 16),
    ("NL", [2, 153], 16),
    ("ES", [2, 136], 16),
    ("IT", [2, 32], 16),
    ("SE", [2, 64], 16),
    ("PL", [5, 173], 16),
    ("IN", [1, 6], 16),
    ("SG", [3, 0], 16),
    ("JP", [1, 5], 16),
    ("AU", [1, 40], 16),
    ("ZA", [4, 167], 16),
    ("NG", [41, 58], 16),
    ("KR", [1, 11], 16),
    ("AR", [24, 232], 16),
    ("RU", [2, 60], 16),
    ("KP", [175, 45], 22),
    ("IR", [2, 144], 16),
    ("VN", [1, 52], 16),
    ("RO", [5, 12], 16),
    ("UA", [5, 58], 16),
];

/// The country codes the generator places addresses in, with their networks (see [`NETWORKS`]).
pub fn country_networks() -> Vec<(&'static str, std::net::Ipv4Addr, u8)> {
    NETWORKS.iter().map(|(country, [a, b], len)| (*country, std::net::Ipv4Addr::new(*a, *b, if *len == 22 { 176 } else { 0 }, 0), *len)).collect()
}

/// A random address in `country`'s network. Draws three numbers as it always did (the second
/// octet's draw is unused), so that every other value a seed generates stays as it was.
fn ip_in_country(country: &str, rng: &mut ChaCha8Rng) -> Text {
    let (_, [a, b], len) = NETWORKS.iter().find(|(c, ..)| *c == country).copied().unwrap_or(NETWORKS[0]);
    let _unused: i32 = rng.random_range(0..256);
    let third: i32 = rng.random_range(0..256);
    let fourth: i32 = rng.random_range(1..255);
    let third = if len == 22 { 176 + third % 4 } else { third };
    compact_str::format_compact!("{a}.{b}.{third}.{fourth}")
}

fn ip_in(country: usize, rng: &mut ChaCha8Rng) -> Text {
    ip_in_country(COUNTRIES[country].0, rng)
}

impl Profile {
    fn new(seed: u64, user: u64) -> Profile {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, user));
        let weights: Vec<u32> = COUNTRIES.iter().map(|c| c.3).collect();
        let home = pick_index(&mut rng, &weights);
        let ips = (0..rng.random_range(1..=3)).map(|_| ip_in(home, &mut rng)).collect();
        let admin = rng.random_bool(0.03);
        let mut habits: Vec<u32> = HABITS.iter().map(|h| h.2 * rng.random_range(50..150) / 100).collect();
        if admin {
            habits[8] += 20;
        }
        Profile {
            name: format!("user{user:06}@example.com"),
            home,
            ips,
            agent: USER_AGENTS[rng.random_range(0..USER_AGENTS.len())],
            work_start: rng.random_range(7.0..10.0),
            work_hours: rng.random_range(7.5..10.0),
            sessions_per_day: rng.random_range(2..=6),
            events_per_session: rng.random_range(8..=30),
            habits,
            resources: rng.random_range(10..80),
            team: user / 40,
            admin,
        }
    }

    fn resource(&self, user: u64, rng: &mut ChaCha8Rng) -> Text {
        if rng.random_bool(0.3) {
            compact_str::format_compact!("drive/team{}/doc{}", self.team, rng.random_range(0..40))
        } else {
            compact_str::format_compact!("drive/{user}/doc{}", rng.random_range(0..self.resources))
        }
    }
}

/// A generated event before it gets its id.
struct Draft {
    ts: Time,
    action: &'static str,
    app: &'static str,
    resource: Option<Text>,
    ip: Text,
    country: &'static str,
    bytes: Option<u64>,
    agent: &'static str,
    label: Option<(Scenario, u64)>,
}

/// A user's working day: where they are, and the sessions still to come.
struct Day {
    country: usize,
    ip: Text,
    sessions: VecDeque<i64>,
}

/// The session in progress: what is left of it.
struct Session {
    t: Time,
    failed_logins: u32,
    login: bool,
    activities: u32,
    admin_action: bool,
}

/// An actor's upcoming events: a user's, generated one at a time (day plan, then session by
/// session), or an attack's, generated whole.
struct Actor {
    user: u64,
    profile: std::rc::Rc<Profile>,
    rng: ChaCha8Rng,
    /// The next event, once generated.
    next: Option<Draft>,
    /// A user's state; `None` for an attack.
    routine: Option<Routine>,
    /// An attack's remaining events.
    queue: VecDeque<Draft>,
}

/// Where a user is in their routine.
struct Routine {
    day: u64,
    today: Option<Day>,
    session: Option<Session>,
    last_session_end: i64,
}

impl Actor {
    fn user(seed: u64, user: u64, profile: std::rc::Rc<Profile>) -> Actor {
        let rng = ChaCha8Rng::seed_from_u64(mix(seed ^ 0xAC71_F17E, user));
        let routine = Routine { day: 0, today: None, session: None, last_session_end: i64::MIN };
        Actor { user, profile, rng, next: None, routine: Some(routine), queue: VecDeque::new() }
    }

    fn attack(user: u64, profile: std::rc::Rc<Profile>, rng: ChaCha8Rng, queue: VecDeque<Draft>) -> Actor {
        Actor { user, profile, rng, next: None, routine: None, queue }
    }

    /// The time of the next event, generating it if needed; `None` when the actor is done.
    fn peek(&mut self, start: Time) -> Option<Time> {
        if self.next.is_none() {
            self.next = match self.routine.as_mut() {
                Some(routine) => Some(routine.next_event(&self.profile, self.user, &mut self.rng, start)),
                None => self.queue.pop_front(),
            };
        }
        self.next.as_ref().map(|d| d.ts)
    }

    fn take(&mut self) -> Option<Draft> {
        self.next.take()
    }

}

impl Routine {
    /// The user's next event: the next step of the session in progress, of the next session, or
    /// of the next day.
    fn next_event(&mut self, p: &Profile, user: u64, rng: &mut ChaCha8Rng, start: Time) -> Draft {
        let routine = self;
        loop {
            if routine.today.is_none() {
                routine.today = Some(plan_day(p, routine.day, start, rng));
                routine.day += 1;
            }
            let Some(today) = routine.today.as_mut() else { continue };
            if routine.session.is_none() {
                let Some(session_start) = today.sessions.pop_front() else {
                    routine.today = None;
                    continue;
                };
                let t = session_start.max(routine.last_session_end.saturating_add(MINUTE as i64)).max(start as i64) as Time;
                let failed_logins = if rng.random_bool(0.05) { rng.random_range(1..=2) } else { 0 };
                let activities = rng.random_range(p.events_per_session / 2..=p.events_per_session * 3 / 2);
                let admin_action = p.admin && rng.random_bool(0.3);
                routine.session = Some(Session { t, failed_logins, login: true, activities, admin_action });
            }
            let Some(session) = routine.session.as_mut() else { continue };
            let draft = |ts, action, app, resource, bytes| Draft {
                ts,
                action,
                app,
                resource,
                ip: today.ip.clone(),
                country: COUNTRIES[today.country].0,
                bytes,
                agent: p.agent,
                label: None,
            };
            if session.failed_logins > 0 {
                session.failed_logins -= 1;
                let event = draft(session.t, "login_failed", "sso", None, None);
                session.t += rng.random_range(3_000..20_000);
                return event;
            }
            if session.login {
                session.login = false;
                return draft(session.t, "login", "sso", None, None);
            }
            if session.activities > 0 {
                session.activities -= 1;
                session.t += 1_000 + (rng.random::<f64>().max(1e-9).ln().abs() * 45_000.0) as Time;
                let (action, app, _) = HABITS[pick_index(rng, &p.habits)];
                let bytes = match action {
                    "download" | "upload" => Some(rng.random_range(10_000..20_000_000)),
                    "view" | "edit" => Some(rng.random_range(1_000..500_000)),
                    _ => None,
                };
                let resource = if action == "send_mail" { None } else { Some(p.resource(user, rng)) };
                return draft(session.t, action, app, resource, bytes);
            }
            if session.admin_action {
                session.admin_action = false;
                session.t += rng.random_range(10_000..60_000);
                return draft(session.t, "admin_action", "admin", Some("admin/console".into()), None);
            }
            routine.last_session_end = session.t as i64;
            routine.session = None;
        }
    }
}

/// Plans a user's day: where they work from (home, or now and then a nearby country on a trip) and
/// when their sessions start.
fn plan_day(p: &Profile, day: u64, start: Time, rng: &mut ChaCha8Rng) -> Day {
    let weekend = day % 7 >= 5;
    let sessions = if weekend { u32::from(rng.random_bool(0.2)) } else { p.sessions_per_day };
    let travel = !weekend && rng.random_bool(0.01);
    let (country, ip) = if travel {
        let near: Vec<usize> = (0..COUNTRIES.len()).filter(|c| *c != p.home && COUNTRIES[*c].2 == COUNTRIES[p.home].2).collect();
        let c = if near.is_empty() { p.home } else { near[rng.random_range(0..near.len())] };
        (c, ip_in(c, rng))
    } else {
        (p.home, p.ips[rng.random_range(0..p.ips.len())].clone())
    };
    let offset_ms = COUNTRIES[p.home].1 * HOUR as i64;
    let day_start = start as i64 + (day * DAY) as i64 - offset_ms;
    let work_start = day_start + (p.work_start * HOUR as f64) as i64;
    let work_len = (p.work_hours * HOUR as f64) as i64;
    let mut starts: Vec<i64> = (0..sessions).map(|_| work_start + rng.random_range(0..work_len)).collect();
    starts.sort();
    Day { country, ip, sessions: starts.into() }
}

/// A benign login of a user from home (used to set the scene of an attack).
fn push_own_login(profile: &Profile, ts: Time) -> Draft {
    Draft {
        ts,
        action: "login",
        app: "sso",
        resource: None,
        ip: profile.ips[0].clone(),
        country: COUNTRIES[profile.home].0,
        bytes: None,
        agent: profile.agent,
        label: None,
    }
}

/// One attack instance.
#[derive(Clone, Debug)]
struct Instance {
    id: u64,
    scenario: Scenario,
    user: u64,
    start: Time,
}

/// The attack plan: a function of the configuration only, the same on every worker.
fn attack_plan(config: &GeneratorConfig) -> Vec<Instance> {
    let count = (config.events / config.events_per_attack.max(1)).max(Scenario::ALL.len() as u64);
    // About 80 events per user per working day (4 sessions of 20), a few at weekends: 59 a day.
    // Attacks start in the first three quarters of the expected span, so that partitions that
    // reach their quota early (more users, busier users) still hold every attack whole.
    let per_day = (config.users as f64 * 59.0).max(1.0);
    let span = ((config.events as f64 / per_day) * DAY as f64) as Time;
    let lo = 3 * HOUR;
    let hi = (span * 3 / 4).max(lo + HOUR);
    (0..count)
        .map(|id| {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(config.seed ^ 0xA77A_C4ED, id));
            Instance {
                id,
                scenario: Scenario::ALL[(id % Scenario::ALL.len() as u64) as usize],
                user: rng.random_range(0..config.users.max(1)),
                start: config.start + rng.random_range(lo..hi),
            }
        })
        .collect()
}

/// Builds an attack instance's events.
fn attack_actor(config: &GeneratorConfig, instance: &Instance, profile: std::rc::Rc<Profile>) -> Actor {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(config.seed ^ 0x0BAD_5EED, instance.id));
    let mut queue = VecDeque::new();
    let label = Some((instance.scenario, instance.id));
    let foreign = ATTACKER_COUNTRIES[rng.random_range(0..ATTACKER_COUNTRIES.len())];
    let foreign_ip = ip_in_country(foreign, &mut rng);
    let own_ip = profile.ips[0].clone();
    let home = COUNTRIES[profile.home].0;
    let user = instance.user;
    let mut t = instance.start;
    let push = |queue: &mut VecDeque<Draft>, ts, action, app, resource, bytes, remote: bool| {
        queue.push_back(Draft {
            ts,
            action,
            app,
            resource,
            ip: if remote { foreign_ip.clone() } else { own_ip.clone() },
            country: if remote { foreign } else { home },
            bytes,
            agent: if remote { ATTACKER_AGENT } else { profile.agent },
            label,
        })
    };
    match instance.scenario {
        Scenario::BruteForce => {
            for _ in 0..rng.random_range(15..40) {
                push(&mut queue, t, "login_failed", "sso", None, None, true);
                t += rng.random_range(2_000..8_000);
            }
            push(&mut queue, t, "login", "sso", None, None, true);
            for _ in 0..rng.random_range(3..8) {
                t += rng.random_range(5_000..30_000);
                let r = profile.resource(user, &mut rng);
                push(&mut queue, t, "download", "drive", Some(r), Some(rng.random_range(1_000_000..30_000_000)), true);
            }
        }
        Scenario::ImpossibleTravel => {
            // While the victim is at work at home: a weekday after a weekday, three hours into the day.
            let day = (t - config.start) / DAY;
            let day = day + [0, 0, 0, 0, 0, 2, 1][(day % 7) as usize];
            let local_start = (profile.work_start * HOUR as f64) as i64 - COUNTRIES[profile.home].1 * HOUR as i64;
            t = (config.start as i64 + (day * DAY) as i64 + local_start + 3 * HOUR as i64).max(config.start as i64) as Time;
            // The victim's own login from home shortly before (not part of the attack: no label).
            let own = push_own_login(&profile, t.saturating_sub(rng.random_range(20 * MINUTE..60 * MINUTE)));
            queue.push_back(own);
            push(&mut queue, t, "login", "sso", None, None, true);
            for _ in 0..rng.random_range(2..6) {
                t += rng.random_range(10_000..120_000);
                let r = profile.resource(user, &mut rng);
                push(&mut queue, t, "view", "drive", Some(r), Some(rng.random_range(1_000..500_000)), true);
            }
        }
        Scenario::Exfiltration => {
            for _ in 0..rng.random_range(40..150) {
                let r = profile.resource(user, &mut rng);
                push(&mut queue, t, "download", "drive", Some(r), Some(rng.random_range(20_000_000..200_000_000)), false);
                t += rng.random_range(5_000..20_000);
            }
        }
        Scenario::MassDelete => {
            for _ in 0..rng.random_range(60..200) {
                let r = profile.resource(user, &mut rng);
                push(&mut queue, t, "delete", "drive", Some(r), None, false);
                t += rng.random_range(1_000..4_000);
            }
        }
        Scenario::PrivilegeEscalation => {
            for i in 0..rng.random_range(8..25) {
                let action = if i % 3 == 0 { "admin_action" } else { "permission_change" };
                let r = compact_str::format_compact!("admin/role{}", rng.random_range(0..20));
                push(&mut queue, t, action, "admin", Some(r), None, false);
                t += rng.random_range(10_000..60_000);
            }
        }
        Scenario::ExternalSharing => {
            for _ in 0..rng.random_range(15..60) {
                let r = profile.resource(user, &mut rng);
                push(&mut queue, t, "share_external", "drive", Some(r), None, false);
                t += rng.random_range(5_000..30_000);
            }
        }
    }
    Actor::attack(user, profile, rng, queue)
}

/// One partition of the generated stream: the users `u` with `u % partitions == index`.
pub struct GeneratorPartition {
    config: GeneratorConfig,
    index: usize,
    actors: Vec<Actor>,
    /// Actors by their next event time.
    heap: BinaryHeap<Reverse<(Time, usize)>>,
    /// Generated events by arrival time, for bounded out-of-order delivery.
    arrivals: BinaryHeap<Reverse<(Time, u64)>>,
    pending: std::collections::HashMap<u64, (Draft, std::rc::Rc<Profile>)>,
    generated: u64,
    quota: u64,
    newest: Time,
    rng: ChaCha8Rng,
    /// Items handed out so far (the position a checkpoint records).
    items_out: u64,
    /// Items generated past a seek target, handed out first.
    carry: Vec<Item>,
    /// Providers' raw records instead of canonical events: how they are written and read back,
    /// and the partition's name for their positions.
    records: Option<(Rendering, Decoding, std::sync::Arc<str>)>,
}

impl GeneratorPartition {
    /// Partition `index` of the stream `config` describes.
    pub fn new(config: GeneratorConfig, index: usize) -> Self {
        let parts = config.partitions.max(1) as u64;
        let i = index as u64;
        let quota = config.events / parts + u64::from(i < config.events % parts);
        let mut profiles = std::collections::HashMap::new();
        let mut actors = Vec::new();
        for user in (i..config.users).step_by(parts as usize) {
            let profile = std::rc::Rc::new(Profile::new(config.seed, user));
            profiles.insert(user, std::rc::Rc::clone(&profile));
            actors.push(Actor::user(config.seed, user, profile));
        }
        for instance in attack_plan(&config).iter().filter(|inst| inst.user % parts == i) {
            let profile = std::rc::Rc::clone(&profiles[&instance.user]);
            actors.push(attack_actor(&config, instance, profile));
        }
        let mut heap = BinaryHeap::new();
        for (k, actor) in actors.iter_mut().enumerate() {
            if let Some(ts) = actor.peek(config.start) {
                heap.push(Reverse((ts, k)));
            }
        }
        let rng = ChaCha8Rng::seed_from_u64(mix(config.seed ^ 0xDE1A_7ED0, i));
        GeneratorPartition {
            config,
            index,
            actors,
            heap,
            arrivals: BinaryHeap::new(),
            pending: Default::default(),
            generated: 0,
            quota,
            newest: 0,
            rng,
            items_out: 0,
            carry: Vec::new(),
            records: None,
        }
    }

    /// Writes each event as a provider's raw record for `decoding`'s format and reads it back
    /// through that format's mapping, as a source of real logs would (see
    /// [`crate::ingest::provider_records`]); canonical events stay as they are.
    pub fn with_records(mut self, decoding: &Decoding) -> anyhow::Result<Self> {
        let name: std::sync::Arc<str> = self.name().into();
        self.records = Rendering::for_format(&decoding.format)?.map(|rendering| (rendering, decoding.clone(), name));
        Ok(self)
    }

    /// Generates the next event in event-time order and schedules its arrival.
    fn generate_one(&mut self) -> bool {
        let Some(Reverse((_, k))) = self.heap.pop() else { return false };
        let actor = &mut self.actors[k];
        let Some(draft) = actor.take() else { return true };
        if let Some(ts) = actor.peek(self.config.start) {
            self.heap.push(Reverse((ts, k)));
        }
        let seq = self.generated;
        self.generated += 1;
        self.newest = self.newest.max(draft.ts);
        let delay = if self.config.late_one_in > 0 && self.rng.random_range(0..self.config.late_one_in) == 0 {
            self.config.allowed_lateness + self.rng.random_range(1_000..600_000)
        } else if self.rng.random_bool(0.2) {
            self.rng.random_range(0..=self.config.max_disorder)
        } else {
            0
        };
        self.arrivals.push(Reverse((draft.ts + delay, seq)));
        self.pending.insert(seq, (draft, std::rc::Rc::clone(&actor.profile)));
        true
    }

    fn finish(&self, seq: u64, draft: Draft, user: &str, out: &mut Vec<Item>) {
        let mut seed = [0u8; 24];
        for (chunk, n) in seed.chunks_exact_mut(8).zip([self.config.seed, self.index as u64, seq]) {
            chunk.copy_from_slice(&n.to_le_bytes());
        }
        let event_id = hex_id(xxhash_rust::xxh3::xxh3_128(&seed));
        let label = draft.label.map(|(scenario, instance)| Label { event_id: event_id.to_string(), scenario, instance, user: user.to_string(), ts: draft.ts });
        let event = Event {
            event_id,
            ts: draft.ts,
            user: Text::new(user),
            action: Text::const_new(draft.action),
            app: Some(Text::const_new(draft.app)),
            resource: draft.resource,
            src_ip: Some(draft.ip),
            country: Some(Text::const_new(draft.country)),
            bytes: draft.bytes,
            user_agent: Some(Text::const_new(draft.agent)),
            extra: Default::default(),
            source: None,
            enrichment: None,
            intel: None,
            key: crate::event::user_key(user),
            time: draft.ts,
            late: false,
            position: None,
        };
        match &self.records {
            None => {
                out.extend(label.map(Item::Label));
                out.push(Item::Event(event));
            }
            Some((rendering, decoding, name)) => {
                let record = rendering.render(&event);
                let position = || Position { source: std::sync::Arc::clone(name), record: seq, offset: 0 };
                decoding.read(record.as_bytes(), record.len(), None, position, label, out);
            }
        }
    }
}

/// `id` as 32 lower-case hex digits (what `format!("{id:032x}")` gives, without the formatter).
fn hex_id(id: u128) -> Text {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    for (i, digit) in text.iter_mut().enumerate() {
        *digit = DIGITS[((id >> (124 - 4 * i)) & 0xf) as usize];
    }
    Text::from_utf8(text).unwrap_or_default()
}

impl Partition for GeneratorPartition {
    fn name(&self) -> String {
        format!("generator:{}", self.index)
    }

    fn poll(&mut self, max: usize, out: &mut Vec<Item>) -> anyhow::Result<bool> {
        let before = out.len();
        let more = self.generate_into(max, out);
        self.items_out += (out.len() - before) as u64;
        Ok(more)
    }

    fn position(&self) -> Option<PartitionPosition> {
        Some(PartitionPosition::Items(self.items_out))
    }

    /// Regenerates the stream up to the position (the generator is deterministic).
    fn seek(&mut self, position: &PartitionPosition) -> anyhow::Result<()> {
        let PartitionPosition::Items(target) = *position else { anyhow::bail!("a generator resumes from an item count") };
        let mut skipped = Vec::new();
        let mut more = true;
        while self.items_out < target && more {
            skipped.clear();
            more = self.generate_into(4096, &mut skipped);
            let take = ((target - self.items_out) as usize).min(skipped.len());
            self.items_out += take as u64;
            self.carry.extend(skipped.drain(take..));
        }
        Ok(())
    }
}

impl GeneratorPartition {
    /// Appends about `max` items (carried ones first); `false` once exhausted.
    fn generate_into(&mut self, max: usize, out: &mut Vec<Item>) -> bool {
        let carried = self.carry.len();
        out.append(&mut self.carry);
        if carried >= max {
            return true;
        }
        let mut emitted = carried;
        while emitted < max {
            let exhausted = self.generated >= self.quota;
            if !exhausted && !self.generate_one() {
                self.quota = self.generated;
            }
            // Deliver what has arrived by the newest generated time (everything, once exhausted).
            while let Some(Reverse((arrival, seq))) = self.arrivals.peek().copied() {
                if arrival > self.newest && self.generated < self.quota {
                    break;
                }
                self.arrivals.pop();
                if let Some((draft, profile)) = self.pending.remove(&seq) {
                    self.finish(seq, draft, &profile.name, out);
                    emitted += 1;
                }
            }
            if self.generated >= self.quota && self.arrivals.is_empty() {
                return false;
            }
        }
        true
    }
}

/// The generated stream, partition by partition in arrival order, for tests and for writing
/// files: `(events per partition, labels)`.
pub fn generate_all(config: &GeneratorConfig) -> (Vec<Vec<Event>>, Vec<Label>) {
    let mut partitions = Vec::new();
    let mut labels = Vec::new();
    let mut out = Vec::new();
    for p in 0..config.partitions {
        let mut part = GeneratorPartition::new(config.clone(), p);
        let mut events = Vec::new();
        loop {
            let more = part.poll(4096, &mut out).unwrap_or(false);
            for item in out.drain(..) {
                match item {
                    Item::Event(e) => events.push(e),
                    Item::Label(l) => labels.push(l),
                    Item::Rejected(_) | Item::Lost(_) | Item::Record(_) => {}
                }
            }
            if !more {
                break;
            }
        }
        partitions.push(events);
    }
    (partitions, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_ids_are_the_formatted_value() {
        for id in [0u128, 1, 0xdead_beef, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210] {
            assert_eq!(hex_id(id), format!("{id:032x}"));
        }
    }

    #[test]
    fn deterministic_exact_count_and_all_scenarios() {
        let config = GeneratorConfig { users: 200, events: 20_000, partitions: 4, events_per_attack: 5_000, late_one_in: 2_000, ..Default::default() };
        let (a, la) = generate_all(&config);
        let (b, lb) = generate_all(&config);
        assert_eq!(a.iter().map(Vec::len).sum::<usize>(), 20_000);
        assert_eq!(a, b);
        assert_eq!(la, lb);
        let ids: std::collections::HashSet<_> = a.iter().flatten().map(|e| &e.event_id).collect();
        assert_eq!(ids.len(), 20_000, "event ids are unique");
        let scenarios: std::collections::BTreeSet<_> = la.iter().map(|l| l.scenario).collect();
        assert_eq!(scenarios.len(), Scenario::ALL.len(), "{scenarios:?}");
        assert!(la.iter().all(|l| ids.contains(&Text::from(l.event_id.as_str()))), "labels name generated events");
        // Arrival order is perturbed but bounded, except for the deliberately late events.
        let (mut late, mut disordered) = (0, 0);
        for part in &a {
            let mut max_ts = 0;
            for e in part {
                late += usize::from(e.ts + config.allowed_lateness < max_ts);
                disordered += usize::from(e.ts < max_ts);
                max_ts = max_ts.max(e.ts);
            }
        }
        assert!((1..=40).contains(&late), "{late} late events");
        assert!(disordered > 100, "{disordered} out-of-order events");
    }
}
