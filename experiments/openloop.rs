//! Open-loop latency harness for the threat dataflow (the method of timely's `openloop` example).
//!
//! Events are scheduled at a fixed offered rate: event `i` is due at `i / rate` seconds after the
//! start, and its due time (in ms) is its timestamp. Each worker emits its share of the events when
//! they are due, whatever the dataflow is doing, and holds its capability at the current
//! millisecond, so event time advances with the wall clock. The latency of an event is measured
//! from its due time to the moment the output frontier passes its millisecond: a stall delays
//! every event due during it, and coordinated omission cannot hide it. Latencies go into an
//! hdrhistogram; the report has p50/p90/p99/p99.9/max, a per-second timeline, and the offered vs
//! achieved rate. `--sweep` raises the rate from `--rate` by `--step` (2) until the dataflow
//! saturates.
//!
//! ```text
//! cargo run --release --example openloop -- --rate 100000 --seconds 10 -w 2
//! cargo run --release --example openloop -- --sweep --rate 50000 -w 2 --json
//! ```
//! The events are the generator's (users, actions, countries, resources), re-timed to the
//! schedule; the dataflow is the real one (all features, the default model and rules).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use clap::Parser;
use differential_dataflow::input::Input as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::Probe;
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use threatflow::cli::options::ClusterArgs;
use threatflow::control::{ControlSpec, ModelSource, RulesSource};
use threatflow::event::{Event, Time};
use threatflow::ingest::generator::{GeneratorConfig, GeneratorPartition};
use threatflow::ingest::partition::{Item, Partition};

// The same allocator as the `threatflow` binary.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Open-loop latency of the threat dataflow.
#[derive(Debug, Parser)]
#[command(disable_help_flag = true)]
struct Args {
    /// Offered events per second (the first rate of a sweep).
    #[arg(long, default_value_t = 100_000.0)]
    rate: f64,
    /// Seconds per rate.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds at the start left out of the figures.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Users.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Dataflow.
    #[arg(long, default_value = "threat")]
    dataflow: String,
    /// Raise the rate (by `--step`) until the dataflow saturates (achieved < 95 % of offered, or
    /// p99 > 1 s).
    #[arg(long)]
    sweep: bool,
    /// Factor between the rates of a sweep.
    #[arg(long, default_value_t = 2.0)]
    step: f64,
    /// One JSON object per rate instead of text.
    #[arg(long)]
    json: bool,
    /// Cluster options.
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// The figures of one rate.
#[derive(Debug, Serialize)]
struct Report {
    dataflow: String,
    workers: usize,
    offered_per_second: f64,
    achieved_per_second: f64,
    latency_ms: Percentiles,
    /// Per second after the start: events whose millisecond the output passed, and their p99 (ms).
    timeline: Vec<(u64, u64, f64)>,
    /// The latency distribution as `(latency ms, fraction of events at or above it)`.
    ccdf: Vec<(f64, f64)>,
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    let args = Args::parse();
    let mut rate = args.rate;
    loop {
        let report = measure(&args, rate)?;
        let Some(report) = report else { return Ok(()) };
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            let l = &report.latency_ms;
            println!(
                "{} -w {}: offered {:.0}/s, achieved {:.0}/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
                report.dataflow, report.workers, report.offered_per_second, report.achieved_per_second, l.p50, l.p90, l.p99, l.p999, l.max
            );
        }
        let saturated = report.achieved_per_second < 0.95 * report.offered_per_second || report.latency_ms.p99 > 1_000.0;
        if !args.sweep || saturated {
            return Ok(());
        }
        rate *= args.step.max(1.01);
    }
}

/// Events due in millisecond `ms` at `rate` events per second.
fn due_in(ms: u64, rate: f64) -> u64 {
    let before = |ms: u64| (ms as f64 * rate / 1000.0).ceil() as u64;
    before(ms + 1) - before(ms)
}

/// Runs one rate; returns the report on process 0.
fn measure(args: &Args, rate: f64) -> Result<Option<Report>> {
    let config = args.cluster.timely_config()?;
    let control = ControlSpec {
        model: Some(ModelSource::Bytes(threatflow::detect::model::DEFAULT_MODEL.to_vec())),
        rules: vec![RulesSource::Specs(threatflow::detect::rules::parse_rules(threatflow::detect::rules::DEFAULT_RULES)?)],
        ..Default::default()
    }
    .load()?
    .updates();
    let dataflow = threatflow::dataflows::find(&args.dataflow).ok_or_else(|| anyhow!("unknown dataflow {}", args.dataflow))?;
    let (seconds, warmup, users) = (args.seconds, args.warmup, args.users);
    let result: Arc<Mutex<Option<Report>>> = Arc::default();
    let shared = Arc::clone(&result);
    let name = args.dataflow.clone();
    let guards = timely::execute(config, move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let probe = ProbeHandle::new();
        let start = Instant::now();
        let mut control_input = worker.dataflow::<Time, _, _>(|scope| {
            let (input, control_collection) = scope.new_collection();
            let events = scheduled(scope, index, peers, rate, seconds, users, start);
            let checkpoints = threatflow::checkpoint::operator::StateCheckpoints::none(scope);
            let inputs = threatflow::dataflows::SharedInputs::build(scope, events, control_collection, &checkpoints, Default::default(), Default::default());
            let decisions = threatflow::render::detections(&*dataflow, inputs, threatflow::detect::verdicts::DEFAULT_BLOCK_FOR, None);
            decisions.probe_with(&probe);
            input
        });
        if index == 0 {
            for (c, t, d) in control.iter().cloned() {
                control_input.update_at(((), c), t, d);
            }
        }
        control_input.close();

        // Worker 0 watches the output frontier and records each millisecond's latency.
        let mut histogram = Histogram::<u64>::new_with_bounds(1_000, 600_000_000_000, 3).expect("valid bounds");
        let mut timeline: Vec<(u64, Histogram<u64>)> = Vec::new();
        let mut passed = 0u64;
        let mut decided_after_warmup = 0u64;
        // When the output passed the end of the schedule.
        let mut finished_at = None;
        while !probe.done() {
            // Park when idle (up to 50 µs) instead of spinning: two spinning workers on two cores get
            // preempted for whole scheduler time slices whenever anything else runs.
            worker.step_or_park(Some(Duration::from_micros(50)));
            if index != 0 {
                continue;
            }
            let frontier = probe.with_frontier(|f| f.first().copied()).unwrap_or(seconds * 1000);
            if frontier <= passed {
                continue;
            }
            let now = start.elapsed().as_nanos() as u64;
            for ms in passed..frontier.min(seconds * 1000) {
                let count = due_in(ms, rate);
                // From the middle of the millisecond the events were due in.
                let latency = now.saturating_sub(ms * 1_000_000 + 500_000);
                let second = now / 1_000_000_000;
                if timeline.last().map(|(s, _)| *s) != Some(second) {
                    timeline.push((second, Histogram::new_from(&histogram)));
                }
                if let Some((_, h)) = timeline.last_mut() {
                    h.saturating_record(latency);
                }
                if ms >= warmup * 1000 && count > 0 {
                    decided_after_warmup += count;
                    let _ = histogram.record_n(latency, count);
                }
            }
            passed = frontier;
            if passed >= seconds * 1000 && finished_at.is_none() {
                finished_at = Some(start.elapsed());
            }
        }
        if index == 0 {
            let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1e6;
            // Achieved: the events due after the warm-up over the time from the first of them being
            // due to the last of them being decided.
            let finished = finished_at.unwrap_or_else(|| start.elapsed()).as_secs_f64();
            let measured = (finished - warmup as f64).max(1e-3);
            let report = Report {
                dataflow: name.clone(),
                workers: peers,
                offered_per_second: rate,
                achieved_per_second: decided_after_warmup as f64 / measured,
                latency_ms: Percentiles { p50: ms(0.5), p90: ms(0.9), p99: ms(0.99), p999: ms(0.999), max: histogram.max() as f64 / 1e6 },
                timeline: timeline.iter().map(|(s, h)| (*s, h.len(), h.value_at_quantile(0.99) as f64 / 1e6)).collect(),
                ccdf: histogram
                    .iter_quantiles(10)
                    .map(|v| (v.value_iterated_to() as f64 / 1e6, 1.0 - v.quantile_iterated_to()))
                    .collect(),
            };
            if let Ok(mut slot) = shared.lock() {
                *slot = Some(report);
            }
        }
    })
    .map_err(|e| anyhow!("starting timely: {e}"))?;
    guards.join().into_iter().collect::<Result<Vec<_>, _>>().map_err(|e| anyhow!("a worker failed: {e}"))?;
    let report = result.lock().map_err(|_| anyhow!("a worker panicked"))?.take();
    Ok(report)
}

/// This worker's share of the schedule: event `i` (with `i % peers == index`) is due at `i / rate`
/// seconds and stamped with that millisecond. The capability follows the clock.
fn scheduled<'s>(
    scope: Scope<'s, Time>,
    index: usize,
    peers: usize,
    rate: f64,
    seconds: u64,
    users: u64,
    start: Instant,
) -> StreamVec<'s, Time, Event> {
    let total = (rate * seconds as f64) as u64;
    let generator = GeneratorConfig { users, events: total, partitions: peers, ..GeneratorConfig::default() };
    let mut partition = GeneratorPartition::new(generator, index);
    let mut buffer: Vec<Item> = Vec::new();
    let mut next = index as u64;
    source(scope, "OpenLoopSource", move |capability, info| {
        let activator = scope.activator_for(info.address);
        let mut capability = Some(capability);
        move |output| {
            let Some(cap) = capability.as_mut() else { return };
            let now_ns = start.elapsed().as_nanos() as u64;
            let now_ms = now_ns / 1_000_000;
            {
                let mut session = output.session(&*cap);
                while next < total {
                    let due_ns = (next as f64 * 1e9 / rate) as u64;
                    if due_ns > now_ns {
                        break;
                    }
                    if buffer.is_empty() {
                        // The generator cannot fail; when it runs dry the schedule ends early.
                        let _ = partition.poll(1024, &mut buffer);
                        buffer.reverse();
                        if buffer.is_empty() {
                            next = total;
                            break;
                        }
                    }
                    if let Some(Item::Event(mut event)) = buffer.pop() {
                        event.ts = due_ns / 1_000_000;
                        event.time = event.ts;
                        session.give(event);
                        next += peers as u64;
                    }
                }
            }
            // Time keeps flowing for a second after the schedule, as it would in a job that goes
            // on, so that the last events are measured in steady state and not behind the
            // end-of-input teardown (every window's retractions at once).
            if next >= total && now_ms >= (seconds + 1) * 1000 {
                capability = None;
                return;
            }
            if *cap.time() < now_ms {
                cap.downgrade(&now_ms);
            }
            activator.activate_after(Duration::from_micros(200));
        }
    })
}
