//! Criterion benchmarks of the per-event hot paths: parsing and validation, the feature-window
//! updates an event contributes, reading features back from accumulated values, scoring, and the
//! whole decision. Run with `cargo bench --bench hot_paths`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use threatflow::control::Control;
use threatflow::decision::decide;
use threatflow::event::{parse_event, DEFAULT_MAX_RECORD_BYTES};
use threatflow::features::{Features, WindowState};
use threatflow::generator::{generate_all, GeneratorConfig};
use threatflow::model::{Model, DEFAULT_MODEL};
use threatflow::rules::{parse_rules, Rule, DEFAULT_RULES};

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
    group.bench_function("feature_window_updates", |b| {
        let mut out = Vec::with_capacity(16);
        b.iter(|| {
            let mut state = WindowState::default();
            for e in &events {
                out.clear();
                state.updates(e.key, e, e.time, &mut out);
                state.expire(Some(e.time), &mut out);
                black_box(&out);
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
    group.bench_function("decide", |b| {
        b.iter(|| {
            for e in &events {
                black_box(decide(e.time, e, &features, &controls));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
