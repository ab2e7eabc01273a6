//! Criterion benchmarks of the per-event hot paths: parsing and validation, the feature windows
//! (state updates and each event's features), reading features back from accumulated values, scoring, the
//! whole decision, and the as-of lookup (a dataflow that arranges updates and looks events up in
//! it, beside the same dataflow without the lookup); and providers' records (mapping, Sigma
//! matching, and parsing a record with serde_json, sonic-rs and simd-json). Run with `cargo bench
//! --bench hot_paths`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use threatflow::detect::control::Control;
use threatflow::detect::decision::{decide, ControlIndex};
use threatflow::detect::marks::{Mark, DEFAULT_FIELDS};
use threatflow::event::{parse_event, DEFAULT_MAX_RECORD_BYTES};
use threatflow::state::features::{Features, WindowState};
use threatflow::ingest::generator::{generate_all, GeneratorConfig};
use threatflow::detect::model::{Model, DEFAULT_MODEL};
use threatflow::detect::rules::{parse_rules, Rule, DEFAULT_RULES};

fn sample_events() -> Vec<threatflow::event::Event> {
    let config = GeneratorConfig { users: 1_000, events: 20_000, partitions: 1, ..Default::default() };
    generate_all(&config).0.into_iter().flatten().collect()
}

fn hot_paths(c: &mut Criterion) {
    let events = sample_events();
    let lines: Vec<String> = events.iter().map(|e| e.to_json()).collect();

    let mut group = c.benchmark_group("per_event");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("parse_and_validate", |b| {
        b.iter(|| {
            for line in &lines {
                black_box(parse_event(line.as_bytes(), DEFAULT_MAX_RECORD_BYTES).ok());
            }
        })
    });
    // The feature windows as the dataflow drives them: the events of each millisecond applied
    // together, the retractions due applied, and each event's features read.
    let mut by_time: Vec<(u64, &threatflow::event::Event)> = events.iter().map(|e| (e.time, e)).collect();
    by_time.sort_by_key(|(t, _)| *t);
    group.bench_function("feature_windows", |b| {
        let (mut out, mut features) = (Vec::with_capacity(16), Vec::with_capacity(16));
        b.iter(|| {
            let mut state = WindowState::default();
            for same in by_time.chunk_by(|a, b| a.0 == b.0) {
                out.clear();
                features.clear();
                state.judge(same[0].0, same, &mut out, &mut features);
                black_box(&features);
            }
        })
    });

    let model = Model::from_bytes(DEFAULT_MODEL, None).expect("default model");
    let rules: Vec<Rule> = parse_rules(DEFAULT_RULES).expect("rules").iter().map(|s| Rule::from_spec(s).expect("rule")).collect();
    let mut owned: Vec<Control> = vec![Control::Model(model.clone())];
    owned.extend(rules.into_iter().map(Control::Rule));
    let controls: Vec<(&Control, isize)> = owned.iter().map(|c| (c, 1)).collect();
    let features = Features { failed_logins_5m: 3, logins_1h: 1, countries_24h: 1, download_bytes_1h: 40_000_000, distinct_resources_1h: 7, ..Default::default() };
    group.bench_function("model_score", |b| b.iter(|| black_box(model.score(black_box(&features)))));
    let index = ControlIndex::new(&controls);
    group.bench_function("decide", |b| {
        b.iter(|| {
            for e in &events {
                black_box(decide(e.time, e, &features, &controls, &index));
            }
        })
    });
    // With a thousand marks in force (none repeated by these events): the index keeps the cost
    // near the one without.
    owned.extend((0..1_000).map(|i| {
        let fingerprint = DEFAULT_FIELDS.iter().map(|f| (f.to_string(), Some(format!("{f}-{i}")))).collect();
        Control::Mark(Mark { id: format!("mark:{i}"), event_id: format!("e{i}"), fingerprint, effective_from: 0 })
    }));
    let controls: Vec<(&Control, isize)> = owned.iter().map(|c| (c, 1)).collect();
    let index = ControlIndex::new(&controls);
    group.bench_function("decide_with_1000_marks", |b| {
        b.iter(|| {
            for e in &events {
                black_box(decide(e.time, e, &features, &controls, &index));
            }
        })
    });
    group.finish();
}

/// `((key, value), time, diff)` updates and `(key, time)` events.
type LookupWorkload = (Vec<((u64, u64), u64, isize)>, Vec<(u64, u64)>);

/// `(key, value)` updates of 10,000 keys (each value present for a while) and 200,000 events
/// `(key, time)` to look up, both in time order.
fn lookup_workload() -> LookupWorkload {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut updates = Vec::new();
    for t in 0..100_000u64 {
        let (key, value) = (next() % 10_000, next() % 8);
        updates.push(((key, value), t * 10, 1));
        updates.push(((key, value), t * 10 + 5_000, -1));
    }
    updates.sort_by_key(|u| u.1);
    let events = (0..200_000u64).map(|i| (next() % 10_000, i * 5)).collect();
    (updates, events)
}

/// Runs the lookup dataflow once on one worker; returns the number of answers (or of events, without
/// the lookup).
fn run_lookup(updates: &[((u64, u64), u64, isize)], events: &[(u64, u64)], lookup: bool) -> usize {
    use differential_dataflow::AsCollection;
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::{Inspect, ToStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&count);
    let (updates, events) = (updates.to_vec(), events.to_vec());
    timely::execute_directly(move |worker| {
        worker.dataflow::<u64, _, _>(|scope| {
            let arranged = updates.to_stream(scope).as_collection().arrange_by_key();
            let events = events.to_stream(scope);
            if lookup {
                let answers = threatflow::state::as_of::as_of_lookup(events, arranged, Pipeline, "Lookup", |(k, _)| *k, |(_, t)| *t, |_, _, vals, _| {
                    Some(vals.iter().map(|(_, d)| *d).sum::<isize>())
                });
                answers.inspect(move |_| {
                    counted.fetch_add(1, Ordering::Relaxed);
                });
            } else {
                arranged.stream.inspect(|_| {});
                events.inspect(move |_| {
                    counted.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
    });
    count.load(Ordering::Relaxed)
}

fn as_of(c: &mut Criterion) {
    let (updates, events) = lookup_workload();
    let mut group = c.benchmark_group("as_of_lookup");
    group.sample_size(10);
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("arrange_only", |b| b.iter(|| black_box(run_lookup(&updates, &events, false))));
    group.bench_function("arrange_and_lookup", |b| b.iter(|| black_box(run_lookup(&updates, &events, true))));
    group.finish();
}

/// Providers' records: detecting and mapping a CloudTrail record (`--format auto`), and matching
/// it against every shipped Sigma rule (logsource routing, then detection), per record.
fn raw_logs(c: &mut Criterion) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/stratus-red-team/detonation-logs");
    let mut records: Vec<serde_json::Value> = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir).expect("test data").map(|e| e.expect("entry").path()).collect();
    files.sort();
    for file in files {
        let array: serde_json::Value = serde_json::from_slice(&std::fs::read(file).expect("read")).expect("JSON");
        records.extend(array.as_array().cloned().unwrap_or_default());
    }
    let texts: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    let format = threatflow::ingest::mapping::RecordFormat::parse("auto", None).expect("mappings");
    let rules_dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/sigma"));
    let (rules, _) = threatflow::detect::sigma::read_dir(rules_dir, &Default::default()).expect("rules");
    let mut group = c.benchmark_group("raw_logs");
    group.throughput(Throughput::Elements(records.len() as u64));
    // Parsing alone, into each candidate document: serde_json's `Value` (what records were parsed
    // into before), sonic-rs's (what `threatflow::event::Record` is), simd-json's borrowed value.
    let parse_serde_json = |texts: &[String]| texts.iter().for_each(|t| drop(black_box(serde_json::from_str::<serde_json::Value>(t).expect("JSON"))));
    let parse_sonic_rs = |texts: &[String]| texts.iter().for_each(|t| drop(black_box(sonic_rs::from_str::<sonic_rs::Value>(t).expect("JSON"))));
    let parse_simd_json = |texts: &[String]| {
        let mut buffer = Vec::new();
        for text in texts {
            buffer.clear();
            buffer.extend_from_slice(text.as_bytes());
            drop(black_box(simd_json::to_borrowed_value(&mut buffer).expect("JSON")));
        }
    };
    group.bench_function("parse_serde_json_value", |b| b.iter(|| parse_serde_json(&texts)));
    group.bench_function("parse_sonic_rs_value", |b| b.iter(|| parse_sonic_rs(&texts)));
    group.bench_function("parse_simd_json_borrowed", |b| b.iter(|| parse_simd_json(&texts)));
    let medians = alternated(&[&|| parse_serde_json(&texts), &|| parse_sonic_rs(&texts), &|| parse_simd_json(&texts)], 20);
    let rate = |d: std::time::Duration| (20 * texts.len()) as f64 / d.as_secs_f64();
    println!(
        "raw_logs: parsing {} CloudTrail records: serde_json {:.0}, sonic-rs {:.0} ({:.2}x), simd-json {:.0} ({:.2}x) records/s",
        texts.len(),
        rate(medians[0]),
        rate(medians[1]),
        medians[0].as_secs_f64() / medians[1].as_secs_f64(),
        rate(medians[2]),
        medians[0].as_secs_f64() / medians[2].as_secs_f64()
    );
    group.bench_function("cloudtrail_parse_and_map", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            for text in &texts {
                out.clear();
                let value: threatflow::event::Record = sonic_rs::from_str(text).expect("JSON");
                format.decode(value, &mut out);
                black_box(&out);
            }
        })
    });
    // Events as the source makes them: each record parsed from its text. (`sonic_rs::to_value`
    // of the `serde_json` records would make hash-map objects, which no source makes.)
    let mut decoded = Vec::new();
    for text in &texts {
        format.decode(sonic_rs::from_str(text).expect("a record"), &mut decoded);
    }
    let events: Vec<_> = decoded.into_iter().filter_map(|(e, _)| e.ok()).collect();
    group.bench_function("sigma_282_rules", |b| {
        b.iter(|| {
            for event in &events {
                black_box(rules.iter().filter(|r| r.matches_event(event)).count());
            }
        })
    });
    // The decision step with the rules in force: every rule tried on every event, and through the
    // rule index (logsource, then the field a rule pins to exact values).
    let owned: Vec<Control> = rules
        .into_iter()
        .map(|sigma| Control::Rule(Rule::from_spec(&threatflow::detect::rules::RuleSpec::from_sigma(sigma)).expect("a Sigma rule is a valid rule")))
        .collect();
    let controls: Vec<(&Control, isize)> = owned.iter().map(|c| (c, 1)).collect();
    let features = Features::default();
    for (name, index) in [("decide_282_rules_scanned", ControlIndex::scanning_every_rule(&controls)), ("decide_282_rules_indexed", ControlIndex::new(&controls))] {
        group.bench_function(name, |b| {
            b.iter(|| {
                for event in &events {
                    black_box(decide(event.ts, event, &features, &controls, &index));
                }
            })
        });
    }
    // rsigma-eval's engine (its inverted index and logsource routing) on the same rules and
    // records, parsed: the reference our rule evaluation is measured against.
    let mut engine = rsigma_eval::Engine::new();
    engine.add_collection(&rsigma_parser::parse_sigma_directory(rules_dir).expect("rsigma parses the rules")).expect("rsigma compiles the rules");
    let logsource = rsigma_parser::LogSource { product: Some("aws".into()), service: Some("cloudtrail".into()), ..Default::default() };
    let rsigma = |records: &[serde_json::Value]| {
        for record in records {
            black_box(engine.evaluate_with_logsource(&rsigma_eval::JsonEvent::borrow(record), &logsource).len());
        }
    };
    group.bench_function("rsigma_eval_engine", |b| b.iter(|| rsigma(&records)));
    group.finish();

    // The ratio, in one run.
    let index = ControlIndex::new(&controls);
    let ours = || events.iter().for_each(|event| drop(black_box(decide(event.ts, event, &features, &controls, &index))));
    let theirs = || rsigma(&records);
    let medians = alternated(&[&ours, &theirs], 20);
    let rate = |d: std::time::Duration| (20 * records.len()) as f64 / d.as_secs_f64();
    println!(
        "raw_logs: our decision step {:.0} records/s, rsigma-eval {:.0} records/s ({} rules): {:.2}x rsigma-eval",
        rate(medians[0]),
        rate(medians[1]),
        engine.rule_count(),
        medians[1].as_secs_f64() / medians[0].as_secs_f64()
    );
}

/// The median time of `rounds` calls of each step, over 31 alternating turns (the host is noisy:
/// figures compared within one run, side by side).
fn alternated(steps: &[&dyn Fn()], rounds: usize) -> Vec<std::time::Duration> {
    let mut times = vec![Vec::new(); steps.len()];
    for _ in 0..31 {
        for (step, times) in steps.iter().zip(&mut times) {
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                step();
            }
            times.push(started.elapsed());
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort();
            t[15]
        })
        .collect()
}

criterion_group!(benches, hot_paths, as_of, raw_logs);
criterion_main!(benches);
