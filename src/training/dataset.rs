//! Training data: every event's standard features, computed by the serving dataflow's own
//! operators ([`SharedInputs::build`] and its feature lookup, [`crate::state::with_features`]), so that what a model is trained on is what
//! it is served (train/serve parity by construction), and the labels to learn.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use differential_dataflow::input::Input as _;
use serde::Deserialize;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::{Operator, Probe};
use timely::dataflow::ProbeHandle;

use crate::checkpoint::operator::StateCheckpoints;
use crate::dataflows::SharedInputs;
use crate::detect::control::Control;
use crate::event::Time;
use crate::state::features::{FeatureName, Features};
use crate::ingest::partition::{Decoding, ErrorSlot, SideRecord, SourceConfig};
use crate::ingest::source::partitioned_source;
use crate::job::SourceSpec;

/// One event's features, as served (ordered by time, then id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Example {
    /// The time the event is judged at.
    pub ts: Time,
    /// [`id_hash`] of the event id (ids themselves are kept only on request: 10 million of them
    /// would double the memory).
    pub id: u64,
    /// Its standard features.
    pub features: Features,
}

/// The 64-bit hash examples and labels are joined on.
pub fn id_hash(event_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(event_id.as_bytes())
}

/// What an event is, according to the labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truth {
    /// Malicious (a threat) or benign.
    pub malicious: bool,
    /// The attack scenario, when the labels name one.
    pub scenario: Option<String>,
}

/// Labels by [`id_hash`] of the event id; events without a label are benign.
pub type Labels = HashMap<u64, Truth>;

/// One line of a labels file: `{event_id, label}` (analyst verdicts: `label` is `1`/`0`,
/// `true`/`false` or `"malicious"`/`"benign"`, with an optional `scenario`), or a line of the
/// ground truth `threatflow generate --labels` writes (`{event_id, scenario, ...}`: malicious).
#[derive(Deserialize)]
struct LabelLine {
    event_id: String,
    #[serde(default)]
    label: Option<serde_json::Value>,
    #[serde(default)]
    scenario: Option<String>,
}

/// Reads a JSON-lines labels file (blank lines and `#` comments skipped).
pub fn read_labels(path: &Path) -> Result<Labels> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading labels {}", path.display()))?;
    let mut labels = Labels::new();
    for (number, line) in crate::ingest::lines::data_lines(&text) {
        let at = || format!("{}:{number}", path.display());
        let parsed: LabelLine = serde_json::from_str(line).with_context(|| format!("{}: not a label {{event_id, label}}", at()))?;
        let malicious = match &parsed.label {
            None if parsed.scenario.is_some() => true,
            None => bail!("{}: a label needs `label` (or the generator's `scenario`)", at()),
            Some(value) => match value {
                serde_json::Value::Bool(b) => *b,
                serde_json::Value::Number(n) if n.as_u64() == Some(1) => true,
                serde_json::Value::Number(n) if n.as_u64() == Some(0) => false,
                serde_json::Value::String(s) if s == "malicious" || s == "threat" => true,
                serde_json::Value::String(s) if s == "benign" => false,
                other => bail!("{}: label {other} is not 1/0, true/false, \"malicious\" or \"benign\"", at()),
            },
        };
        labels.insert(id_hash(&parsed.event_id), Truth { malicious, scenario: parsed.scenario.filter(|_| malicious) });
    }
    Ok(labels)
}

/// What to read features from.
#[derive(Clone, Debug)]
pub struct ExtractSpec {
    /// The events.
    pub source: SourceSpec,
    /// Allowed lateness (ms), as when serving.
    pub allowed_lateness: Time,
    /// How records become events.
    pub decoding: Decoding,
    /// Keep every example's event id (for `--features-out` and the parity test).
    pub keep_ids: bool,
    /// Show a progress bar, with this many events expected when known.
    pub progress: Option<Option<u64>>,
}

impl ExtractSpec {
    /// Reads `source` with the serving defaults.
    pub fn new(source: SourceSpec) -> Self {
        ExtractSpec { source, allowed_lateness: 5_000, decoding: Decoding::default(), keep_ids: false, progress: None }
    }
}

/// Every event's features, sorted by `(ts, id)` (the same order whatever the number of workers).
#[derive(Debug, Default)]
pub struct Extracted {
    /// One per valid event.
    pub examples: Vec<Example>,
    /// The event ids, in the order of `examples`, when asked for.
    pub ids: Option<Vec<String>>,
    /// The generator's ground truth (generated sources only).
    pub ground_truth: Labels,
    /// Records rejected (not valid events).
    pub rejected: u64,
    /// Time spent.
    pub elapsed: Duration,
}

/// What one worker gathered.
#[derive(Default)]
struct Gathered {
    examples: Vec<Example>,
    ids: Vec<String>,
    ground_truth: Labels,
    rejected: u64,
}

/// Runs the serving dataflow's source and feature operators over `spec.source` on `config`'s
/// workers (one process) and returns every event's features.
pub fn extract(config: timely::Config, mut spec: ExtractSpec) -> Result<Extracted> {
    spec.source.prepare()?;
    let started = Instant::now();
    let read = Arc::new(AtomicU64::new(0));
    let bar = spec.progress.map(crate::engine::progress_bar);
    let spec_keep_ids = spec.keep_ids;
    let spec = Arc::new(spec);
    let worker_read = Arc::clone(&read);
    let guards = timely::execute(config, move |worker| extract_worker(worker, &spec, &worker_read))
        .map_err(|e| anyhow!("starting the timely workers: {e}"))?;
    if let Some(bar) = &bar {
        // The workers run on their own threads: draw until they are done.
        while !guards.guards().iter().all(|g| g.is_finished()) {
            bar.set_position(read.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(100));
        }
        bar.finish_and_clear();
    }
    let mut all = Gathered::default();
    for result in guards.join() {
        let mut part = result.map_err(|e| anyhow!("a worker failed: {e}"))??;
        all.examples.append(&mut part.examples);
        all.ids.append(&mut part.ids);
        all.ground_truth.extend(part.ground_truth);
        all.rejected += part.rejected;
    }
    // One order whatever the workers: by time, then id.
    let (examples, ids) = if spec_keep_ids {
        let mut pairs: Vec<(Example, String)> = all.examples.into_iter().zip(all.ids).collect();
        pairs.sort_unstable();
        let (examples, ids) = pairs.into_iter().unzip();
        (examples, Some(ids))
    } else {
        let mut examples = all.examples;
        examples.sort_unstable();
        (examples, None)
    };
    Ok(Extracted { examples, ids, ground_truth: all.ground_truth, rejected: all.rejected, elapsed: started.elapsed() })
}

fn extract_worker(worker: &mut timely::worker::Worker, spec: &ExtractSpec, read: &Arc<AtomicU64>) -> Result<Gathered> {
    let partitions = spec.source.partitions(worker.index(), worker.peers(), &spec.decoding, None)?;
    let errors: ErrorSlot = Rc::new(RefCell::new(None));
    let gathered: Rc<RefCell<Gathered>> = Rc::default();
    let probe = ProbeHandle::new();
    let config = SourceConfig { allowed_lateness: spec.allowed_lateness, records_read: Arc::clone(read), ..SourceConfig::default() };
    let keep_ids = spec.keep_ids;
    worker.dataflow::<Time, _, _>(|scope| {
        let (events, side, _parts) = partitioned_source(scope, "Source", partitions, config, probe.clone(), Rc::clone(&errors), None);
        // No models or rules: features do not depend on them. The input closes at once.
        let (_, control) = scope.new_collection::<((), Control), isize>();
        let inputs = SharedInputs::build(scope, events, control, &StateCheckpoints::none(scope), Default::default(), Default::default());
        let rows = Rc::clone(&gathered);
        inputs.scored.probe_with(&probe).sink(Pipeline, "TrainingExamples", move |(input, _)| {
            let mut rows = rows.borrow_mut();
            input.for_each(|_, data| {
                for (event, features) in data.drain(..) {
                    rows.examples.push(Example { ts: event.time, id: id_hash(&event.event_id), features });
                    if keep_ids {
                        rows.ids.push(event.event_id.to_string());
                    }
                }
            });
        });
        let side_rows = Rc::clone(&gathered);
        side.probe_with(&probe).sink(Exchange::new(|_: &SideRecord| 0), "TrainingSide", move |(input, _)| {
            let mut rows = side_rows.borrow_mut();
            input.for_each(|_, data| {
                for record in data.drain(..) {
                    match record {
                        SideRecord::Label(l) => {
                            let truth = Truth { malicious: true, scenario: Some(l.scenario.as_str().to_string()) };
                            rows.ground_truth.insert(id_hash(&l.event_id), truth);
                        }
                        SideRecord::DeadLetter(d) => {
                            if rows.rejected == 0 {
                                tracing::warn!(position = ?d.position, "a record was rejected (counted, not trained on): {}", d.reason);
                            }
                            rows.rejected += 1;
                        }
                        SideRecord::Finished(_) => {}
                    }
                }
            });
        });
    });
    while !probe.done() {
        worker.step_or_park(Some(Duration::from_millis(10)));
        if errors.borrow().is_some() {
            break;
        }
    }
    if let Some(error) = errors.borrow_mut().take() {
        return Err(error);
    }
    Ok(gathered.take())
}

/// The model inputs of examples: `log1p` of each named feature, one row per example.
pub fn design_matrix(examples: &[Example], features: &[FeatureName]) -> ndarray::Array2<f64> {
    ndarray::Array2::from_shape_fn((examples.len(), features.len()), |(i, j)| (examples[i].features.get(features[j]) as f64).ln_1p())
}

/// Writes examples as JSON lines `{event_id, ts, features}` (the features the served decisions
/// carry), for inspection and the parity check.
pub fn write_features(path: &PathBuf, extracted: &Extracted) -> Result<()> {
    use std::io::Write as _;
    let ids = extracted.ids.as_ref().context("event ids were not kept")?;
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for (example, id) in extracted.examples.iter().zip(ids) {
        let line = serde_json::json!({"event_id": id, "ts": example.ts, "features": example.features});
        writeln!(out, "{line}").with_context(|| format!("writing {}", path.display()))?;
    }
    out.flush().with_context(|| format!("writing {}", path.display()))
}
