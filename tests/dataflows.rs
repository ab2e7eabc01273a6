//! The researcher-facing dataflows other than the default, selected by name.

use threatflow::engine::run;
use threatflow::job::{JobSpec, SourceSpec};

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

/// The features every event carries (`SharedInputs::scored`, computed in the window operator) are
/// the ones the shared arrangement (`SharedInputs::features`, built only for dataflows that ask
/// for it) gives as of the event's time: two independent paths, on 1 and 2 workers, over a
/// generated stream with out-of-order and late events.
#[test]
fn the_shared_feature_arrangement_agrees_with_the_features_events_carry() {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;
    use std::sync::{Arc, Mutex};

    use differential_dataflow::input::Input;
    use threatflow::checkpoint::operator::StateCheckpoints;
    use threatflow::dataflows::SharedInputs;
    use threatflow::detect::control::Control;
    use threatflow::state::features::Features;
    use threatflow::ingest::generator::GeneratorConfig;
    use threatflow::state::with_features;
    use threatflow::ingest::partition::{Decoding, SourceConfig};
    use threatflow::ingest::source::partitioned_source;
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::{Operator, Probe};
    use timely::dataflow::ProbeHandle;

    type Seen = Arc<Mutex<BTreeMap<String, (Option<Features>, Option<Features>)>>>;
    let generator = GeneratorConfig { users: 300, events: 40_000, seed: 5, late_one_in: 500, ..GeneratorConfig::default() };
    let mut outcomes = Vec::new();
    for workers in [1, 2] {
        let seen: Seen = Arc::default();
        let spec = SourceSpec::Generator(generator.clone());
        let shared_seen = Arc::clone(&seen);
        timely::execute(timely::Config::process(workers), move |worker| {
            let partitions = spec.partitions(worker.index(), worker.peers(), &Decoding::default(), None).expect("partitions");
            let probe = ProbeHandle::new();
            let errors = Rc::new(RefCell::new(None));
            let record = |seen: Seen, carried: bool| {
                move |(event, features): (Rc<threatflow::event::Event>, Features)| {
                    let mut seen = seen.lock().unwrap();
                    let slot = seen.entry(event.event_id.to_string()).or_default();
                    let side = if carried { &mut slot.0 } else { &mut slot.1 };
                    assert!(side.replace(features).is_none(), "one answer per event and path");
                }
            };
            worker.dataflow::<u64, _, _>(|scope| {
                let (events, _side, _parts) = partitioned_source(scope, "Source", partitions, SourceConfig::default(), probe.clone(), errors, None);
                let (_, control) = scope.new_collection::<((), Control), isize>();
                let inputs = SharedInputs::build(scope, events, control, &StateCheckpoints::none(scope), Default::default(), Default::default());
                let looked_up = with_features(inputs.events.clone(), inputs.features());
                for (stream, carried) in [(inputs.scored, true), (looked_up, false)] {
                    let mut keep = record(Arc::clone(&shared_seen), carried);
                    stream.probe_with(&probe).sink(Pipeline, "Keep", move |(input, _)| {
                        input.for_each(|_, data| data.drain(..).for_each(&mut keep));
                    });
                }
            });
            while !probe.done() {
                worker.step();
            }
        })
        .expect("timely runs");
        let seen = Arc::try_unwrap(seen).unwrap().into_inner().unwrap();
        assert!(seen.len() >= 39_000, "{} events", seen.len());
        for (id, (carried, looked_up)) in &seen {
            assert!(carried.is_some() && carried == looked_up, "event {id}: carried {carried:?}, arrangement {looked_up:?}");
        }
        assert!(seen.values().any(|(f, _)| f.unwrap().new_country == 1 && f.unwrap().countries_24h >= 1));
        outcomes.push(seen);
    }
    assert_eq!(outcomes[0], outcomes[1], "the same on 1 and 2 workers");
}
