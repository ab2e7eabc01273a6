//! Criterion benchmarks of checkpoint encoding and restore, and the comparison with abomonation
//! that decides the durable codec: the feature windows of many active users are encoded and
//! decoded with the shipped codec (bincode + xxh3-128 header, [`threatflow::checkpoint`]), and as
//! a flat array of plain records with abomonation (the best case for it: one copy into an aligned
//! buffer, a checksum, an in-place decode, then the conversion back to window entries a restore
//! needs). `import` is the feature-window state rebuilt from the entries. Run with
//! `cargo bench --bench checkpoint` (`USERS=1000000` for the 1M-user figures).

use std::hint::black_box;

use abomonation::{decode, encode, Abomonation};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use threatflow::checkpoint::operator::StatePart;
use threatflow::checkpoint::{self, Checkpoint};
use threatflow::state::features::{FeatureName, FeatureVal, WindowEntry, WindowState};
use threatflow::ingest::generator::{generate_all, GeneratorConfig};

/// A window entry as plain data: `kind` 0 counter, 1 present; `val_tag` and `val` the value.
#[derive(Clone, Copy)]
struct FlatEntry {
    key: u128,
    kind: u8,
    val_tag: u8,
    val: u64,
    amount: i64,
    until: u64,
    place: u32,
}
// Plain data without pointers: the default (no-op) methods are the right ones.
impl Abomonation for FlatEntry {}

fn flat(entry: &WindowEntry) -> FlatEntry {
    let (kind, key, val, amount, until) = match *entry {
        WindowEntry::Counter { key, val, amount, until } => (0, key, val, amount as i64, until),
        WindowEntry::Present { key, val, until } => (1, key, val, 0, until),
    };
    let (val_tag, val, place) = match val {
        FeatureVal::Counter(name) => (0, name as u64, 0),
        FeatureVal::Country(c) => (1, c as u64, 0),
        FeatureVal::SeenCountry(c) => (2, c as u64, 0),
        FeatureVal::Resource(r) => (3, r, 0),
        FeatureVal::LoginPlace(at, place) => (4, at, place.packed()),
    };
    FlatEntry { key, kind, val_tag, val, amount, until, place }
}

fn unflat(f: &FlatEntry) -> WindowEntry {
    let val = match f.val_tag {
        0 => FeatureVal::Counter(FeatureName::ALL[f.val as usize]),
        1 => FeatureVal::Country(f.val as u16),
        2 => FeatureVal::SeenCountry(f.val as u16),
        3 => FeatureVal::Resource(f.val),
        _ => FeatureVal::LoginPlace(f.val, threatflow::enrich::place::Place::from_packed(f.place)),
    };
    match f.kind {
        0 => WindowEntry::Counter { key: f.key, val, amount: f.amount as isize, until: f.until },
        _ => WindowEntry::Present { key: f.key, val, until: f.until },
    }
}

/// The feature windows after a day of generated activity of `users` users, and its last time.
fn windows(users: u64) -> (Vec<WindowEntry>, u64) {
    let config = GeneratorConfig { users, events: users * 8, partitions: 1, ..Default::default() };
    let mut events: Vec<_> = generate_all(&config).0.into_iter().flatten().collect();
    events.sort_by_key(|e| e.ts);
    let mut state = WindowState::default();
    let mut out = Vec::new();
    for e in &events {
        out.clear();
        state.updates(e.key, e, e.ts, &mut out);
        state.expire(Some(e.ts), &mut out);
    }
    let mut entries = Vec::new();
    state.export(&mut entries);
    (entries, events.last().map_or(0, |e| e.ts))
}

fn checkpoint_codecs(c: &mut Criterion) {
    let users: u64 = std::env::var("USERS").ok().and_then(|u| u.parse().ok()).unwrap_or(100_000);
    let (entries, at) = windows(users);
    let active = entries.iter().map(WindowEntry::key).collect::<std::collections::HashSet<_>>().len();
    // The feature windows as the state layer keeps them: one part, its entries bincode-encoded.
    let part = StatePart { name: "feature-windows".into(), version: 1, bytes: bincode::serialize(&entries).expect("encode part") };
    let checkpoint = Checkpoint { frontier: at, state: vec![part], ..Default::default() };
    let bytes = checkpoint::encode(&checkpoint).expect("encode");
    let flats: Vec<FlatEntry> = entries.iter().map(flat).collect();
    let mut abomonated = Vec::new();
    unsafe { encode(&flats, &mut abomonated) }.expect("abomonation encode");
    eprintln!(
        "{active} active users, {} window entries: bincode {} bytes, abomonation {} bytes",
        entries.len(),
        bytes.len(),
        abomonated.len()
    );

    let mut group = c.benchmark_group(format!("checkpoint_{users}_users"));
    group.sample_size(10);
    group.throughput(Throughput::Elements(entries.len() as u64));
    group.bench_function("bincode_encode", |b| b.iter(|| black_box(checkpoint::encode(&checkpoint).expect("encode").len())));
    group.bench_function("bincode_decode", |b| b.iter(|| black_box(checkpoint::decode(&bytes).expect("decode").entries::<WindowEntry>("feature-windows").expect("entries").len())));
    group.bench_function("abomonation_encode", |b| {
        b.iter(|| {
            let flats: Vec<FlatEntry> = entries.iter().map(flat).collect();
            let mut out = Vec::with_capacity(abomonated.len());
            unsafe { encode(&flats, &mut out) }.expect("encode");
            black_box(xxhash_rust::xxh3::xxh3_128(&out));
            black_box(out.len())
        })
    });
    group.bench_function("abomonation_decode", |b| {
        b.iter(|| {
            // Sound only on bytes this build wrote, verified, in a buffer aligned for the types.
            let mut aligned: Vec<u128> = vec![0; abomonated.len().div_ceil(16)];
            let buffer = unsafe { std::slice::from_raw_parts_mut(aligned.as_mut_ptr().cast::<u8>(), abomonated.len()) };
            buffer.copy_from_slice(&abomonated);
            black_box(xxhash_rust::xxh3::xxh3_128(buffer));
            let (decoded, _) = unsafe { decode::<Vec<FlatEntry>>(buffer) }.expect("decode");
            let restored: Vec<WindowEntry> = decoded.iter().map(unflat).collect();
            black_box(restored.len())
        })
    });
    group.bench_function("import_windows", |b| {
        b.iter(|| {
            let mut state = WindowState::default();
            let mut updates = Vec::new();
            state.import(entries.clone(), at, &mut updates);
            black_box(updates.len())
        })
    });
    group.finish();
}

criterion_group!(benches, checkpoint_codecs);
criterion_main!(benches);
