//! The Flink comparison workload (`docs/flink-workload.md`): the same event stream, the same
//! per-user features and the same broadcast, event-time versioned model as the Apache Flink
//! baseline job (`experiments/flink/ThreatBench.java`), so the two can be timed side by side and
//! their checksums compared. A benchmark harness, not part of the engine:
//!
//! ```text
//! cargo run --release --example flink_compare -- --events 10000000 -w 2 [--json]
//! ```
//!
//! The stream is counter based: event `idx` is a pure function of `idx`. Worker `w` of `W`
//! generates the events with `idx % W == w` (W divides 16, so each user's events come from one
//! worker, in `idx` order), exchanges them by a hash of the user (Flink's `keyBy`), and the keyed
//! operator updates the user's counters and scores the event with the model version in force at
//! its time. The models are a second, broadcast input; events wait until its frontier has passed
//! their time. The checksums are checked against the reference values by its tests
//! (`cargo test --release --example flink_compare`, run by `scripts/test`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Operator, Probe};
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use clap::Parser;
use threatflow::cli::options::ClusterArgs;
use threatflow::state::as_of::TimeStash;

/// The generator's seed.
pub const SEED: u64 = 0x7EA7_D37E_C710_2026;
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
const LANES: u64 = 16;
const USERS: u64 = 100_000;
const HOT_USERS: u64 = 1_024;
/// The first event's time (ms).
pub const T0: u64 = 1_700_000_000_000;
const PROBE_EVERY: u64 = 1_000;
const NORMAL_WEIGHTS: [u64; 8] = [300, 60, 250, 200, 100, 50, 30, 10];
const BAD_WEIGHTS: [u64; 8] = [150, 300, 50, 250, 20, 100, 80, 50];

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn bounded(r: u64, n: u64) -> u64 {
    ((r >> 32) * n) >> 32
}

/// One event of the comparison stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompareEvent {
    /// Position in the global stream.
    pub idx: u64,
    /// User id.
    pub user: u32,
    /// Action index (0 login_ok .. 7 admin_change).
    pub action: u8,
    /// Bytes.
    pub bytes: u64,
    /// Country code, 0..19.
    pub country: u8,
    /// Event time (ms).
    pub ts: u64,
}

impl CompareEvent {
    /// Event `idx` of the stream (docs/flink-workload.md#event-stream).
    pub fn generate(idx: u64) -> CompareEvent {
        let mut x = mix64(SEED.wrapping_add(idx.wrapping_add(1).wrapping_mul(GAMMA)));
        if x == 0 {
            x = GAMMA;
        }
        let mut d = [0u64; 6];
        for out in d.iter_mut() {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            *out = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        }
        let lane = idx % LANES;
        let hot = bounded(d[0], 100) < 20;
        let user = lane + LANES * bounded(d[1], if hot { HOT_USERS } else { USERS } / LANES);
        let bad = user % 97 == 13;
        let a = bounded(d[2], 1000);
        let weights = if bad { &BAD_WEIGHTS } else { &NORMAL_WEIGHTS };
        let mut cumulative = 0;
        let action = weights
            .iter()
            .position(|w| {
                cumulative += w;
                a < cumulative
            })
            .unwrap_or(7) as u8;
        let bytes = match action {
            3 => bounded(d[3], if bad { 200_000_000 } else { 50_000_000 }),
            4 => bounded(d[3], 50_000_000),
            2 | 5 => bounded(d[3], 1_000_000),
            _ => bounded(d[3], 4096),
        };
        let country = if bad || bounded(d[4], 100) >= 98 { bounded(d[5], 20) } else { user % 20 };
        CompareEvent { idx, user: user as u32, action, bytes, country: country as u8, ts: T0 + idx / 10 }
    }
}

/// A model version of the broadcast schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareModel {
    /// Version number.
    pub version: u32,
    /// Event time from which it applies.
    pub effective_ts: u64,
    /// Weights of the eight features.
    pub weights: [f64; 8],
    /// Bias.
    pub bias: f64,
    /// Threshold on the score (strictly greater flags).
    pub threshold: f64,
}

/// The four model versions for a run of `events` events (docs/flink-workload.md#models-and-scoring).
pub fn model_schedule(events: u64) -> Vec<CompareModel> {
    let span = events / 10;
    let w01 = [4.0, 3.0, 1.0, 1.5, 2.0, 3.0, 6.0, 0.5];
    let w1 = [5.0, 3.0, 1.0, 1.5, 2.0, 3.0, 6.0, 0.5];
    let w23 = [5.0, 3.5, 0.5, 2.0, 2.5, 3.5, 8.0, 0.5];
    vec![
        CompareModel { version: 0, effective_ts: T0, weights: w01, bias: -6.5, threshold: 0.5 },
        CompareModel { version: 1, effective_ts: T0 + span / 4, weights: w1, bias: -6.5, threshold: 0.6 },
        CompareModel { version: 2, effective_ts: T0 + span / 2, weights: w23, bias: -7.0, threshold: 0.6 },
        CompareModel { version: 3, effective_ts: T0 + 3 * span / 4, weights: w23, bias: -7.0, threshold: 0.45 },
    ]
}

/// Per-user keyed state (docs/flink-workload.md#per-user-features).
#[derive(Clone, Copy, Debug, Default)]
pub struct UserState {
    counts: [u64; 8],
    total: u64,
    bytes: u64,
    country_mask: u32,
}

impl UserState {
    /// Applies an event and returns the feature vector of the updated state.
    pub fn update(&mut self, e: &CompareEvent) -> [f64; 8] {
        self.counts[e.action as usize] += 1;
        self.total += 1;
        self.bytes = self.bytes.wrapping_add(e.bytes);
        self.country_mask |= 1 << e.country;
        let logins = self.counts[0] + self.counts[1];
        let total = self.total as f64;
        let b = self.bytes as f64;
        [
            if logins == 0 { 0.0 } else { self.counts[1] as f64 / logins as f64 },
            self.country_mask.count_ones() as f64 / 20.0,
            b / (b + 1.0e8),
            self.counts[3] as f64 / total,
            self.counts[5] as f64 / total,
            self.counts[6] as f64 / total,
            self.counts[7] as f64 / total,
            total / (total + 50.0),
        ]
    }
}

impl CompareModel {
    /// The score `sigmoid(bias + Σ w·x)`, summed left to right.
    pub fn score(&self, x: &[f64; 8]) -> f64 {
        let mut z = self.bias;
        for (w, x) in self.weights.iter().zip(x) {
            z += w * x;
        }
        1.0 / (1.0 + (-z).exp())
    }
}

/// What the sink keeps (docs/flink-workload.md#outputs-and-checksums).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksums {
    /// Flagged events.
    pub flagged: u64,
    /// Flagged events per model version.
    pub per_version: [u64; 4],
    /// Wrapping sum of `idx` over flagged events.
    pub checksum_idx: u64,
    /// Wrapping sum of `user * 4 + version + 1` over flagged events.
    pub checksum_user: u64,
}

impl Checksums {
    fn add(&mut self, idx: u64, user: u32, version: u32) {
        self.flagged += 1;
        self.per_version[version as usize] += 1;
        self.checksum_idx = self.checksum_idx.wrapping_add(idx);
        self.checksum_user = self.checksum_user.wrapping_add(u64::from(user) * 4 + u64::from(version) + 1);
    }

    fn merge(&mut self, other: &Checksums) {
        self.flagged += other.flagged;
        for (a, b) in self.per_version.iter_mut().zip(other.per_version) {
            *a += b;
        }
        self.checksum_idx = self.checksum_idx.wrapping_add(other.checksum_idx);
        self.checksum_user = self.checksum_user.wrapping_add(other.checksum_user);
    }
}

/// A run of the comparison job.
#[derive(Clone, Debug)]
pub struct CompareConfig {
    /// Number of events (a multiple of 16).
    pub events: u64,
    /// Events per generated batch.
    pub batch: usize,
}

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig { events: 1_000_000, batch: 8_192 }
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct CompareReport {
    /// The decisions' checksums.
    pub checksums: Checksums,
    /// Wall-clock time of the dataflow.
    pub elapsed: Duration,
    /// Latency of the probe events (every 1000th), from generation to the sink, in nanoseconds.
    pub latency: hdrhistogram::Histogram<u64>,
}

impl CompareReport {
    /// Events per second.
    pub fn throughput(&self, events: u64) -> f64 {
        events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What the keyed operator sends to the sink.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Output {
    /// A flagged event: `(idx, user, version, score)`.
    Decision(u64, u32, u32, f64),
    /// A latency probe: nanoseconds since the job's start at generation.
    Probe(u64),
}

/// Runs the comparison job; returns the merged checksums of all workers.
pub fn run(config: timely::Config, job: CompareConfig) -> Result<CompareReport> {
    ensure!(job.events.is_multiple_of(LANES), "the comparison workload needs a multiple of 16 events");
    let results = Arc::new(Mutex::new((Checksums::default(), None::<hdrhistogram::Histogram<u64>>)));
    let shared = Arc::clone(&results);
    let started = Instant::now();
    let guards = timely::execute(config, move |worker| {
        let peers = worker.peers() as u64;
        if !LANES.is_multiple_of(peers) {
            return Err(anyhow!("the comparison workload needs a worker count that divides 16, not {peers}"));
        }
        let checksums = std::rc::Rc::new(std::cell::RefCell::new(Checksums::default()));
        let latency = std::rc::Rc::new(std::cell::RefCell::new(histogram()));
        let probe = ProbeHandle::new();
        let (sink_sums, sink_latency) = (checksums.clone(), latency.clone());
        worker.dataflow::<u64, _, _>(|scope| {
            let events = generate(scope, scope.index() as u64, peers, &job, probe.clone(), started);
            let models = model_input(scope, job.events);
            score(events, models)
                .probe_with(&probe)
                .sink(Pipeline, "CompareSink", move |(input, _frontier)| {
                    let mut sums = sink_sums.borrow_mut();
                    let mut latency = sink_latency.borrow_mut();
                    input.for_each(|_, data| {
                        for output in data.drain(..) {
                            match output {
                                Output::Decision(idx, user, version, _score) => sums.add(idx, user, version),
                                Output::Probe(generated) => {
                                    let now = started.elapsed().as_nanos() as u64;
                                    latency.saturating_record(now.saturating_sub(generated));
                                }
                            }
                        }
                    });
                });
        });
        while worker.step_or_park(None) {}
        let mut results = shared.lock().map_err(|_| anyhow!("a worker panicked"))?;
        results.0.merge(&checksums.borrow());
        match results.1.as_mut() {
            Some(h) => h.add(&*latency.borrow()).map_err(|e| anyhow!("merging histograms: {e}"))?,
            None => results.1 = Some(latency.borrow().clone()),
        }
        Ok(())
    })
    .map_err(|e| anyhow!("starting the timely cluster: {e}"))?;
    for result in guards.join() {
        result.map_err(|e| anyhow!("a worker failed: {e}"))??;
    }
    let elapsed = started.elapsed();
    let (checksums, latency) = std::mem::take(&mut *results.lock().map_err(|_| anyhow!("a worker panicked"))?);
    Ok(CompareReport { checksums, elapsed, latency: latency.unwrap_or_else(histogram) })
}

fn histogram() -> hdrhistogram::Histogram<u64> {
    // 1 µs to 100 s at 3 significant digits; the bounds are valid constants.
    hdrhistogram::Histogram::new_with_bounds(1_000, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// The source: worker `index` of `peers` generates `idx = index, index + peers, ...` in batches,
/// each at the time of its first event, with at most a few batches in flight. Every 1000th event
/// carries its generation time (ns since `started`) as a latency probe.
fn generate<'s>(
    scope: Scope<'s, u64>,
    index: u64,
    peers: u64,
    job: &CompareConfig,
    probe: ProbeHandle<u64>,
    started: Instant,
) -> StreamVec<'s, u64, (CompareEvent, Option<u64>)> {
    let (end, batch) = (job.events, job.batch);
    source(scope, "CompareSource", move |capability, info| {
        let activator = scope.activator_for(info.address);
        let mut capability = Some(capability);
        let mut next = index;
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        move |output| {
            let Some(cap) = capability.as_mut() else { return };
            while in_flight.front().is_some_and(|t| !probe.less_than(t)) {
                in_flight.pop_front();
            }
            if in_flight.len() < 4 {
                let time = T0 + next / 10;
                cap.downgrade(&time);
                let mut session = output.session(&*cap);
                for _ in 0..batch {
                    if next >= end {
                        break;
                    }
                    let event = CompareEvent::generate(next);
                    let generated = next.is_multiple_of(PROBE_EVERY).then(|| started.elapsed().as_nanos() as u64);
                    session.give((event, generated));
                    next += peers;
                }
                in_flight.push_back(time);
            }
            if next >= end {
                capability = None;
            } else {
                activator.activate();
            }
        }
    })
}

/// The model schedule as a broadcast input, fed by worker 0 and closed (like Flink's bounded
/// `fromData` source).
fn model_input<'s>(scope: Scope<'s, u64>, events: u64) -> StreamVec<'s, u64, CompareModel> {
    let models = if scope.index() == 0 { model_schedule(events) } else { Vec::new() };
    source(scope, "CompareModels", move |capability, _info| {
        let mut capability = Some(capability);
        let mut models = Some(models);
        move |output| {
            if let (Some(cap), Some(models)) = (capability.take(), models.take()) {
                output.session(&cap).give_iterator(models.into_iter());
            }
        }
    })
    .broadcast()
}

/// The keyed operator: events by user, models broadcast; each event waits until the models'
/// frontier has passed its time, then updates its user's state and is scored with the version in
/// force at its `ts`.
fn score<'s>(
    events: StreamVec<'s, u64, (CompareEvent, Option<u64>)>,
    models: StreamVec<'s, u64, CompareModel>,
) -> StreamVec<'s, u64, Output> {
    // Keyed by a hash of the user, as Flink's `keyBy` does: events cross workers.
    let by_user = Exchange::new(|(e, _): &(CompareEvent, Option<u64>)| u64::from(e.user).wrapping_mul(GAMMA) >> 32);
    events.binary_frontier(models, by_user, Pipeline, "CompareScore", |_, _| {
        let mut states: foldhash::HashMap<u32, UserState> = foldhash::HashMap::default();
        let mut versions: Vec<CompareModel> = Vec::new();
        let mut stash = TimeStash::default();
        let mut ready = Vec::new();
        move |(events, _), (models, model_frontier), output| {
            models.for_each(|_, data| {
                versions.append(data);
                versions.sort_by_key(|m| m.effective_ts);
            });
            events.for_each(|cap, data| {
                for (event, generated) in data.drain(..) {
                    stash.insert(&cap, event.ts, (event, generated));
                }
            });
            // Stable by time, so each user's events stay in `idx` order.
            stash.take_ready(model_frontier, &mut ready);
            if let Some(held) = stash.held() {
                let mut session = output.session(held);
                for (_, (event, generated)) in ready.drain(..) {
                    let features = states.entry(event.user).or_default().update(&event);
                    if let Some(model) = versions.iter().rev().find(|m| m.effective_ts <= event.ts) {
                        let p = model.score(&features);
                        if p > model.threshold {
                            session.give(Output::Decision(event.idx, event.user, model.version, p));
                        }
                    }
                    if let Some(generated) = generated {
                        session.give(Output::Probe(generated));
                    }
                }
            }
            stash.release();
        }
    })
}

/// Runs the workload and prints its throughput, checksums and probe latencies.
#[derive(Parser)]
struct Args {
    /// Events (a multiple of 16).
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let events = args.events;
    let report = run(args.cluster.timely_config()?, CompareConfig { events, ..Default::default() })?;
    if args.cluster.process != 0 {
        return Ok(());
    }
    let sums = &report.checksums;
    let latency_ms = |q: f64| report.latency.value_at_quantile(q) as f64 / 1e6;
    let value = serde_json::json!({
        "workload": "flink-compare",
        "events": events,
        "seconds": report.elapsed.as_secs_f64(),
        "events_per_second": report.throughput(events),
        "flagged": sums.flagged,
        "per_version": sums.per_version,
        "checksum_idx": sums.checksum_idx,
        "checksum_user": sums.checksum_user,
        "probe_latency_ms": {"p50": latency_ms(0.5), "p99": latency_ms(0.99), "max": report.latency.max() as f64 / 1e6},
    });
    if args.json {
        println!("{value}");
    } else {
        println!(
            "{events} events in {:.2} s: {:.0} events/s\nflagged {} per version {:?} checksumIdx {} checksumUser {}\nprobe latency p50 {:.2} ms, p99 {:.2} ms",
            report.elapsed.as_secs_f64(),
            report.throughput(events),
            sums.flagged,
            sums.per_version,
            sums.checksum_idx,
            sums.checksum_user,
            latency_ms(0.5),
            latency_ms(0.99)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_events_and_stream_sums_match_the_reference() {
        let first: Vec<String> = (0..8)
            .map(|i| {
                let e = CompareEvent::generate(i);
                format!("{},{},{},{},{},{}", e.idx, e.user, e.action, e.bytes, e.ts, e.country)
            })
            .collect();
        // docs/flink-workload.md#reference-values, with action names as indexes.
        assert_eq!(
            first,
            [
                "0,88528,0,2163,1700000000000,8",
                "1,27777,2,894873,1700000000000,17",
                "2,74610,0,244,1700000000000,10",
                "3,979,2,602597,1700000000000,19",
                "4,196,0,3240,1700000000000,16",
                "5,44789,2,67863,1700000000000,9",
                "6,70102,4,33313914,1700000000000,2",
                "7,48215,0,3668,1700000000000,15",
            ]
        );
        let (mut users, mut bytes, mut countries, mut actions) = (0u64, 0u64, 0u64, [0u64; 8]);
        let mut distinct = std::collections::HashSet::new();
        for idx in 0..100_000 {
            let e = CompareEvent::generate(idx);
            users += u64::from(e.user);
            bytes += e.bytes;
            countries += u64::from(e.country);
            actions[e.action as usize] += 1;
            distinct.insert(e.user);
        }
        assert_eq!((users, bytes, countries, distinct.len()), (4005766976, 781635089154, 948310, 55577));
        assert_eq!(actions, [29992, 6258, 24753, 19972, 9971, 5086, 2990, 978]);
    }

    #[test]
    fn a_small_run_matches_the_reference_on_two_workers() {
        let report = run(timely::Config::process(2), CompareConfig { events: 100_000, ..Default::default() }).unwrap();
        assert_eq!(report.checksums.flagged, 415);
        assert_eq!(report.checksums.per_version, [7, 45, 149, 214]);
        assert_eq!((report.checksums.checksum_idx, report.checksums.checksum_user), (29585020, 71660456));
    }

    #[test]
    fn decisions_match_the_reference_on_one_and_four_workers() {
        for workers in [1, 4] {
            let report = run(timely::Config::process(workers), CompareConfig { events: 1_000_000, ..Default::default() }).unwrap();
            let expected = Checksums { flagged: 5939, per_version: [528, 1559, 1318, 2534], checksum_idx: 3720996959, checksum_user: 795006468 };
            assert_eq!(report.checksums, expected, "{workers} workers");
            assert_eq!(report.latency.len(), 1_000, "one probe per 1000 events");
        }
    }
}
