//! The dataflow against a straightforward reference implementation, on property-generated logs.
//!
//! The reference keeps each user's events in a sorted log and recomputes every feature of every
//! event from scratch, applies the model and rule updates by scanning them, and decides. The
//! dataflow must agree exactly on which events are decided, the verdict, the rule ids, the model
//! version, every feature value, and the score to 1e-9; on 1 and 2 workers.
//!
//! Generated logs have few users (so windows fill), same-millisecond events, times on scales from
//! milliseconds to days (so every window boundary is crossed), several partitions with arrival out
//! of order within the allowed lateness and some events beyond it, and model and rule updates
//! (including replacements and removals) in the middle of the stream. Some rules block the user:
//! the reference then walks each user's events in time order, deciding `blocked` the events a
//! running block covers (after the blocking decision's time, up to the block's length, unless an
//! analyst's unblock came in between), which checks the dataflow's feedback of blocks by event time.

use std::collections::BTreeMap;

use ordered_float::OrderedFloat;
use proptest::prelude::*;

use threatflow::control::{ControlSpec, RulesSource};
use threatflow::detect::decision::Decision;
use threatflow::engine::run;
use threatflow::job::{JobSpec, SourceSpec};
use threatflow::state::features::FeatureName;
use threatflow::detect::model::Model;
use threatflow::detect::marks::MarkUpdate;
use threatflow::detect::action::ThreatAction;
use threatflow::detect::rules::{Bounds, RuleSpec};

const LATENESS: u64 = 5_000;
const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

#[derive(Clone, Debug)]
struct Ev {
    id: String,
    ts: u64,
    user: String,
    action: &'static str,
    country: Option<&'static str>,
    resource: Option<&'static str>,
    bytes: Option<u64>,
}

impl Ev {
    fn json(&self) -> String {
        let mut v = serde_json::json!({"event_id": self.id, "ts": self.ts, "user": self.user, "action": self.action});
        if let Some(c) = self.country {
            v["country"] = c.into();
        }
        if let Some(r) = self.resource {
            v["resource"] = r.into();
        }
        if let Some(b) = self.bytes {
            v["bytes"] = b.into();
        }
        v.to_string()
    }
}

const ACTIONS: [&str; 10] = [
    "login", "login_failed", "download", "upload", "share_external", "delete", "permission_change", "admin_action", "view", "login",
];
const COUNTRIES: [&str; 3] = ["US", "DE", "JP"];
const RESOURCES: [&str; 4] = ["a", "b", "c", "d"];

/// Times: a base plus a sum of steps on mixed scales, so that same-millisecond events and every
/// window edge (exactly `W` apart included) occur.
fn time_step() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        3 => 0u64..2_000,
        2 => (0u64..12).prop_map(|k| k * MINUTE),
        1 => prop::sample::select(vec![5 * MINUTE, 10 * MINUTE, HOUR, DAY, 30 * DAY, 1, HOUR - 1, DAY + 1]),
        1 => 0u64..(2 * DAY),
    ]
}

fn event_strategy() -> impl Strategy<Value = (u8, usize, Option<usize>, Option<usize>, Option<u64>, u64, u64)> {
    (
        0u8..3,
        0usize..ACTIONS.len(),
        prop::option::weighted(0.8, 0usize..COUNTRIES.len()),
        prop::option::weighted(0.7, 0usize..RESOURCES.len()),
        prop::option::weighted(0.6, 0u64..5_000_000_000),
        time_step(),
        // arrival jitter: mostly within the lateness, sometimes beyond it
        prop_oneof![8 => 0u64..LATENESS, 1 => LATENESS..(4 * LATENESS)],
    )
}

#[derive(Clone, Debug)]
struct Case {
    partitions: Vec<Vec<Ev>>,
    models: Vec<(u64, Model)>,
    rules: Vec<RuleSpec>,
    /// How long a block lasts.
    block_for: u64,
    /// Analysts' unblocks: `(user, effective_from)`.
    unblocks: Vec<(String, u64)>,
}

/// A country's centre as docs/semantics.md says: the table's coordinates rounded to 0.01°.
fn center(country: &str) -> (f64, f64) {
    let table = include_str!("../src/enrich/data/country-centers.csv");
    let row = table.lines().find(|l| l.starts_with(&format!("{country},"))).expect("a country of the table");
    let fields: Vec<f64> = row.split(',').skip(1).map(|f| f.parse().unwrap()).collect();
    ((fields[0] * 100.0).round() / 100.0, (fields[1] * 100.0).round() / 100.0)
}

/// km/h between two countries' centres in `elapsed` ms: haversine on a sphere of radius
/// 6371.0088 km, rounded down.
fn speed_kmh(from: &str, to: &str, elapsed: u64) -> u64 {
    let ((lat1, lon1), (lat2, lon2)) = (center(from), center(to));
    let a = ((lat2 - lat1).to_radians() / 2.0).sin().powi(2)
        + lat1.to_radians().cos() * lat2.to_radians().cos() * ((lon2 - lon1).to_radians() / 2.0).sin().powi(2);
    let km = 2.0 * 6371.0088 * a.sqrt().asin();
    (km / (elapsed as f64 / 3_600_000.0)).floor() as u64
}

fn model(version: String, weights: Vec<f64>, bias: f64, threshold: f64) -> Model {
    Model {
        version,
        sha256: String::new(),
        features: FeatureName::ALL.to_vec(),
        weights: weights.into_iter().map(OrderedFloat).collect(),
        bias: OrderedFloat(bias),
        threshold: OrderedFloat(threshold),
    }
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let events = prop::collection::vec(event_strategy(), 1..120);
    let models = prop::collection::vec((0u64..100, prop::collection::vec(-1.0f64..2.0, 10), -6.0f64..0.0, 0.05f64..0.95), 0..4);
    let rules = prop::collection::vec(
        (0usize..4, 0u64..100, any::<bool>(), 0usize..10, 0u64..4, prop::option::of(0usize..ACTIONS.len()), prop::bool::weighted(0.4)),
        0..5,
    );
    let blocks = (prop::sample::select(vec![1, 2_000, 5 * MINUTE, HOUR, 3 * DAY]), prop::collection::vec((0u8..3, 0u64..100), 0..3));
    (events, models, rules, 1usize..4, blocks).prop_map(|(events, models, rules, parts, (block_for, unblocks))| {
        let base = 1_700_000_000_000u64;
        let mut ts = base;
        let mut arrivals: Vec<(u64, usize, Ev)> = Vec::new();
        for (i, (user, action, country, resource, bytes, step, jitter)) in events.into_iter().enumerate() {
            ts += step;
            let ev = Ev {
                id: format!("e{i}"),
                ts,
                user: format!("u{user}"),
                action: ACTIONS[action],
                country: country.map(|c| COUNTRIES[c]),
                resource: resource.map(|r| RESOURCES[r]),
                bytes,
            };
            arrivals.push((ts + jitter, i, ev));
        }
        let span = ts - base + 1;
        arrivals.sort_by_key(|(arrival, i, _)| (*arrival, *i));
        let mut partitions = vec![Vec::new(); parts];
        for (k, (_, _, ev)) in arrivals.into_iter().enumerate() {
            partitions[k % parts].push(ev);
        }
        let models = models
            .into_iter()
            .enumerate()
            .map(|(i, (at, w, b, thr))| {
                let from = if i == 0 { 0 } else { base + span * at / 100 };
                (from, model(format!("v{i}"), w, b, thr))
            })
            .collect();
        let rules = rules
            .into_iter()
            .map(|(id, at, remove, feature, gte, action, block)| {
                let mut features = BTreeMap::new();
                features.insert(FeatureName::ALL[feature].as_str().to_string(), Bounds { gte: Some(OrderedFloat(gte as f64)), ..Default::default() });
                let mut when = BTreeMap::new();
                if let Some(a) = action {
                    when.insert("action".to_string(), vec![ACTIONS[a].to_string()]);
                }
                RuleSpec {
                    id: format!("r{id}"),
                    effective_from: base + span * at / 100,
                    when,
                    features,
                    actions: Some(if block { vec![ThreatAction::Alert, ThreatAction::Block] } else { vec![ThreatAction::Alert] }),
                    title: None,
                    severity: None,
                    remove,
                    sigma: None,
                    new_terms: None,
                    risk_score: None,
                }
            })
            .collect();
        let unblocks = unblocks.into_iter().map(|(user, at)| (format!("u{user}"), base + span * at / 100)).collect();
        Case { partitions, models, rules, block_for, unblocks }
    })
}

/// What the reference decides for one event.
#[derive(Debug, PartialEq)]
struct Expected {
    time: u64,
    late: bool,
    features: [u64; 10],
    score: Option<f64>,
    model_version: Option<String>,
    rules: Vec<String>,
    /// Whether a rule in `rules` blocks.
    blocks: bool,
    /// For a `blocked` verdict: the event whose decision blocked the user.
    blocked_by: Option<String>,
}

fn reference(case: &Case) -> BTreeMap<String, Expected> {
    // 1. Times: per partition, in arrival order, late events take the watermark.
    let mut judged: Vec<(u64, bool, &Ev)> = Vec::new();
    for part in &case.partitions {
        let mut max_ts: Option<u64> = None;
        for ev in part {
            let watermark = max_ts.map_or(0, |m| m.saturating_sub(LATENESS));
            if ev.ts < watermark {
                judged.push((watermark, true, ev));
            } else {
                judged.push((ev.ts, false, ev));
                max_ts = Some(max_ts.map_or(ev.ts, |m| m.max(ev.ts)));
            }
        }
    }
    let mut out = BTreeMap::new();
    for &(t, late, ev) in &judged {
        // 2. Features from the user's whole log, recomputed per event.
        let log: Vec<(u64, &Ev)> = judged.iter().filter(|(_, _, e)| e.user == ev.user).map(|(t2, _, e)| (*t2, *e)).collect();
        let within = |w: u64| log.iter().filter(move |(t2, _)| *t2 <= t && *t2 + w > t).map(|(_, e)| *e);
        let count = |w: u64, actions: &[&str]| within(w).filter(|e| actions.contains(&e.action)).count() as u64;
        let mut countries: Vec<&str> = within(DAY).filter(|e| e.action == "login" || e.action == "login_failed").filter_map(|e| e.country).collect();
        countries.sort();
        countries.dedup();
        let mut resources: Vec<&str> = within(HOUR).filter_map(|e| e.resource).collect();
        resources.sort();
        resources.dedup();
        let seen_before = ev.country.is_some_and(|c| {
            log.iter().any(|(t2, e)| *t2 < t && *t2 + 30 * DAY > t && e.country == Some(c))
        });
        // Travel speed: from the latest located login of the day strictly before, fastest place.
        let located = |e: &Ev| (e.action == "login" || e.action == "login_failed") && e.country.is_some();
        let previous: Vec<(u64, &Ev)> = log.iter().filter(|(t2, e)| *t2 < t && *t2 + DAY > t && located(e)).copied().collect();
        let travel_speed = match previous.iter().map(|(t2, _)| *t2).max() {
            Some(at) if located(ev) => previous
                .iter()
                .filter(|(t2, _)| *t2 == at)
                .map(|(_, e)| speed_kmh(e.country.unwrap(), ev.country.unwrap(), t - at))
                .max()
                .unwrap_or(0),
            _ => 0,
        };
        let features = [
            count(5 * MINUTE, &["login_failed"]),
            count(HOUR, &["login"]),
            countries.len() as u64,
            u64::from(ev.country.is_some() && !seen_before),
            within(HOUR).filter(|e| e.action == "download").map(|e| e.bytes.unwrap_or(0)).sum(),
            count(HOUR, &["share_external"]),
            count(10 * MINUTE, &["delete"]),
            count(HOUR, &["permission_change", "admin_action"]),
            resources.len() as u64,
            travel_speed,
        ];
        // 3. The model with the greatest effective_from <= t (the later one on ties).
        let model = case.models.iter().enumerate().filter(|(_, (from, _))| *from <= t).max_by_key(|(i, (from, _))| (*from, *i)).map(|(_, (_, m))| m);
        let score = model.map(|m| {
            let z = m.bias.0 + m.weights.iter().zip(features).map(|(w, x)| w.0 * (x as f64).ln_1p()).sum::<f64>();
            1.0 / (1.0 + (-z).exp())
        });
        let model_threat = matches!((model, score), (Some(m), Some(s)) if s >= m.threshold.0);
        // 4. Rules: replay the updates up to t, in effective_from order (file order on ties).
        let mut ordered: Vec<&RuleSpec> = case.rules.iter().collect();
        ordered.sort_by_key(|r| r.effective_from);
        let mut in_force: BTreeMap<&str, &RuleSpec> = BTreeMap::new();
        for r in ordered.into_iter().filter(|r| r.effective_from <= t) {
            if r.remove {
                in_force.remove(r.id.as_str());
            } else {
                in_force.insert(&r.id, r);
            }
        }
        let rules: Vec<String> = in_force
            .values()
            .filter(|r| {
                r.features.iter().all(|(name, b)| {
                    let i = FeatureName::ALL.iter().position(|f| f.as_str() == name).unwrap();
                    b.gte.is_none_or(|g| features[i] as f64 >= g.0)
                }) && r.when.get("action").is_none_or(|accepted| accepted.iter().any(|a| a == ev.action))
            })
            .map(|r| r.id.clone())
            .collect();
        let blocks = rules.iter().any(|id| in_force[id.as_str()].actions.as_ref().is_some_and(|a| a.contains(&ThreatAction::Block)));
        out.insert(
            ev.id.clone(),
            (ev.user.clone(), model_threat || !rules.is_empty(), Expected { time: t, late, features, score, model_version: model.map(|m| m.version.clone()), rules, blocks, blocked_by: None }),
        );
    }
    with_blocks(case, out)
}

/// An event's user, whether it is a threat before blocks, and its expected decision.
type Judged = (String, bool, Expected);

/// Applies blocks: per user, in time order, an event a running block covers is decided `blocked`
/// (whatever it would have been); a threat decision that blocks starts a block for the user's
/// events after its time, up to `block_for` later; events of one time do not block each other (the
/// least event id names a block); an unblock lifts the blocks made before it from its time on.
fn with_blocks(case: &Case, all: BTreeMap<String, Judged>) -> BTreeMap<String, Expected> {
    // User to time to `(event id, threat, expected)`.
    type ByTime = BTreeMap<u64, Vec<(String, bool, Expected)>>;
    let mut by_user: BTreeMap<String, ByTime> = BTreeMap::new();
    for (id, (user, threat, e)) in all {
        by_user.entry(user).or_default().entry(e.time).or_default().push((id, threat, e));
    }
    let mut out = BTreeMap::new();
    for (user, times) in by_user {
        // (from, until, by)
        let mut block: Option<(u64, u64, String)> = None;
        for (t, events) in times {
            let lifted = |from: u64| case.unblocks.iter().any(|(u, at)| *u == user && from < *at && *at <= t);
            let running = block.as_ref().filter(|(from, until, _)| *from < t && t <= *until && !lifted(*from)).cloned();
            let mut new_block: Option<String> = None;
            for (id, threat, mut e) in events {
                if let Some((_, _, by)) = &running {
                    e.blocked_by = Some(by.clone());
                    out.insert(id, e);
                } else if threat {
                    if e.blocks {
                        new_block = Some(new_block.map_or(id.clone(), |b: String| b.min(id.clone())));
                    }
                    out.insert(id, e);
                }
            }
            if let Some(by) = new_block {
                block = Some((t, t.saturating_add(case.block_for), by));
            }
        }
    }
    out
}

fn dataflow(case: &Case, workers: usize) -> BTreeMap<String, Decision> {
    let inputs = case
        .partitions
        .iter()
        .map(|p| p.iter().map(|e| e.json() + "\n").collect::<String>().into_bytes())
        .collect();
    let mut job = JobSpec::new("threat", SourceSpec::Memory(inputs));
    job.allowed_lateness = LATENESS;
    job.collect = true;
    job.block_for = case.block_for;
    // Unblocks travel in the marks file.
    let marks = tempfile::NamedTempFile::new().unwrap();
    let lines: String =
        case.unblocks.iter().map(|(user, at)| serde_json::to_string(&MarkUpdate::unblock(user, *at)).unwrap() + "\n").collect();
    std::fs::write(marks.path(), lines).unwrap();
    job.control = ControlSpec {
        verified_models: case.models.clone(),
        rules: vec![RulesSource::Specs(case.rules.clone())],
        marks: Some(marks.path().to_path_buf()),
        ..Default::default()
    };
    let report = run(timely::Config::process(workers), job).expect("job runs");
    let mut out = BTreeMap::new();
    for d in report.collected_decisions {
        assert!(out.insert(d.event_id.clone(), d).is_none(), "one decision per event");
    }
    out
}

fn check(case: &Case, workers: usize) -> Result<(), TestCaseError> {
    let expected = reference(case);
    let actual = dataflow(case, workers);
    prop_assert_eq!(expected.keys().collect::<Vec<_>>(), actual.keys().collect::<Vec<_>>(), "decided events");
    for (id, e) in &expected {
        let d = &actual[id];
        let f = &d.features;
        let features = [
            f.failed_logins_5m,
            f.logins_1h,
            f.countries_24h,
            f.new_country,
            f.download_bytes_1h,
            f.external_shares_1h,
            f.deletes_10m,
            f.privilege_changes_1h,
            f.distinct_resources_1h,
            f.travel_speed_kmh,
        ];
        prop_assert_eq!(features, e.features, "features of {}", id);
        prop_assert_eq!((d.ts, d.late), (e.time, e.late), "time of {}", id);
        if let Some(by) = &e.blocked_by {
            prop_assert_eq!(d.verdict, threatflow::detect::decision::Verdict::Blocked, "verdict of {}", id);
            prop_assert_eq!(d.blocked_by.as_ref(), Some(by), "blocked by, {}", id);
            continue;
        }
        prop_assert_eq!(d.blocked_until, e.blocks.then(|| e.time + case.block_for), "block of {}", id);
        prop_assert_eq!(&d.rules, &e.rules, "rules of {}", id);
        prop_assert_eq!(&d.model_version, &e.model_version, "model of {}", id);
        match (d.score, e.score) {
            (Some(a), Some(b)) => prop_assert!((a - b).abs() <= 1e-9, "score of {}: {} vs {}", id, a, b),
            (a, b) => prop_assert_eq!(a, b, "score of {}", id),
        }
        prop_assert_eq!(d.verdict, threatflow::detect::decision::Verdict::Threat);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn dataflow_matches_reference_on_one_worker(case in case_strategy()) {
        check(&case, 1)?;
    }

    #[test]
    fn dataflow_matches_reference_on_two_workers(case in case_strategy()) {
        check(&case, 2)?;
    }
}

/// Same-millisecond events count for each other whatever their arrival order, and `new_country`
/// looks strictly before: two logins from a new country in the same millisecond are both new.
#[test]
fn same_millisecond_events_see_each_other() {
    let ev = |id: &str, ts, action, country| Ev { id: id.into(), ts, user: "u".into(), action, country, resource: None, bytes: None };
    let case = Case {
        partitions: vec![vec![
            ev("a", 1_000, "login_failed", Some("DE")),
            ev("b", 1_000, "login_failed", Some("DE")),
            ev("c", 999, "login", Some("US")),
            ev("d", 1_000 + 5 * MINUTE, "login_failed", Some("DE")),
        ]],
        models: Vec::new(),
        rules: vec![RuleSpec {
            id: "all".into(),
            effective_from: 0,
            when: BTreeMap::new(),
            features: [("logins_1h".to_string(), Bounds { gte: Some(OrderedFloat(0.0)), ..Default::default() })].into(),
            actions: None,
            title: None,
            severity: None,
            remove: false,
            sigma: None,
            new_terms: None,
            risk_score: None,
        }],
        block_for: HOUR,
        unblocks: Vec::new(),
    };
    let actual = dataflow(&case, 2);
    let f = |id: &str| (actual[id].features.failed_logins_5m, actual[id].features.new_country, actual[id].features.countries_24h);
    assert_eq!(f("a"), (2, 1, 2));
    assert_eq!(f("b"), (2, 1, 2));
    assert_eq!(f("c"), (0, 1, 1));
    // At exactly 5 minutes later, the two earlier failures have left the window.
    assert_eq!(f("d"), (1, 0, 2));
    check(&case, 1).unwrap();
}

/// A block's edges: events of the blocking decision's own millisecond are not blocked, the last
/// millisecond of the block is, the next is not; an unblock applies from its own millisecond on.
#[test]
fn block_edges_are_exact() {
    let ev = |id: &str, ts, user: &str, action| Ev { id: id.into(), ts, user: user.into(), action, country: None, resource: None, bytes: None };
    let t = 1_700_000_000_000;
    let case = Case {
        partitions: vec![vec![
            ev("a1", t, "ann", "delete"),
            ev("a2", t, "ann", "view"),
            ev("a3", t + 1_000, "ann", "view"),
            ev("a4", t + 1_001, "ann", "view"),
            ev("a5", t + 1_001, "ann", "delete"),
            ev("a6", t + 1_500, "ann", "view"),
            ev("b1", t + 1_800, "bob", "delete"),
            ev("b2", t + 1_801, "bob", "view"),
            ev("b3", t + 1_900, "bob", "view"),
        ]],
        models: Vec::new(),
        rules: vec![RuleSpec {
            id: "deletes".into(),
            effective_from: 0,
            when: [("action".to_string(), vec!["delete".to_string()])].into(),
            features: BTreeMap::new(),
            actions: Some(vec![ThreatAction::Alert, ThreatAction::Block]),
            title: None,
            severity: None,
            remove: false,
            sigma: None,
            new_terms: None,
            risk_score: None,
        }],
        block_for: 1_000,
        unblocks: vec![("bob".into(), t + 1_900)],
    };
    let verdicts = |workers| {
        dataflow(&case, workers).into_values().map(|d| (d.event_id, d.verdict.as_str(), d.blocked_by)).collect::<Vec<_>>()
    };
    let by = |id: &str| Some(id.to_string());
    let expected = vec![
        ("a1".to_string(), "threat", None),
        ("a3".to_string(), "blocked", by("a1")),
        ("a5".to_string(), "threat", None),
        ("a6".to_string(), "blocked", by("a5")),
        ("b1".to_string(), "threat", None),
        ("b2".to_string(), "blocked", by("b1")),
    ];
    assert_eq!(verdicts(1), expected);
    assert_eq!(verdicts(2), expected);
    check(&case, 2).unwrap();
}
