//! The researcher-facing dataflows other than the default, selected by name.

use threatflow::engine::{run, JobSpec};
use threatflow::source::SourceSpec;

const HOUR: u64 = 3_600_000;

fn login(id: usize, ts: u64, user: &str, country: &str) -> String {
    format!("{{\"event_id\":\"{id}\",\"ts\":{ts},\"user\":\"{user}\",\"action\":\"login\",\"country\":\"{country}\"}}\n")
}

/// `country-drift` flags a login outside the user's dominant login country of the last 7 days,
/// once the user has at least 5 logins there making up at least 80 % of them; it reads the shared
/// feature arrangement for the decision's features.
#[test]
fn country_drift_flags_logins_outside_the_dominant_country() {
    let mut lines = String::new();
    let mut id = 0;
    let mut next = |ts, user, country| {
        id += 1;
        lines += &login(id, ts, user, country);
    };
    next(10, "bob", "US");
    next(20, "bob", "DE"); // 2: too little history to judge
    for day in 0..5 {
        next(1_000 + day * 24 * HOUR, "ann", "US"); // five logins from home over five days
    }
    next(5 * 24 * HOUR, "ann", "DE"); // 8: drift
    next(5 * 24 * HOUR + HOUR, "ann", "US"); // 9: home again
    next(12 * 24 * HOUR, "ann", "JP"); // 10: the home logins have left the 7-day window
    let mut job = JobSpec::new("country-drift", SourceSpec::Memory(vec![lines.into_bytes()]));
    job.collect = true;
    let report = run(timely::Config::process(2), job).expect("job runs");
    let flagged: Vec<(&str, &[String], u64, u64)> = report
        .collected_decisions
        .iter()
        .map(|d| (d.event_id.as_str(), d.rules.as_slice(), d.features.logins_1h, d.features.new_country))
        .collect();
    assert_eq!(flagged, vec![("8", &["country-drift".to_string()][..], 1, 1)]);
}

#[test]
fn every_listed_dataflow_runs_by_name() {
    let line = login(1, 5, "ann", "US");
    for name in threatflow::dataflows::names() {
        let mut job = JobSpec::new(name, SourceSpec::Memory(vec![line.clone().into_bytes()]));
        job.collect = true;
        let report = run(timely::Config::thread(), job).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(report.events, 1, "{name}");
        assert!(report.collected_decisions.is_empty(), "{name}: one login is no threat");
    }
}
