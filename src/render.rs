//! The whole pipeline of a job, top to bottom, as each worker builds it.
//!
//! ```text
//! source ─events─► (enrichment) ─► (intel) ─► feature windows ─► the chosen dataflow ─┐
//!    │                                  │            │  scored ───► correlation ─────────┼─► verdicts ─┬─(risk)─► decision sink
//!    │                                  │            │  scored ───► new terms ───────────┤      ▲      │
//!    │                                  │            └─ scored ──────────────────────────┘      │      │
//!    │                                  │    control (models, rules, marks, databases) ─────────┘      │
//!    │                                  └─ retro decisions (indicators matched to past events) ───────┘
//!    └─side records (dead letters, labels, counts)────────────────────────────────────────► side sink
//! ```
//!
//! Every operator that keeps state does so through the checkpoint layer
//! ([`crate::checkpoint::operator`]): the barriers from worker 0 and a restored checkpoint's
//! parts reach each of them, and their exported parts, with the source partitions' positions,
//! are gathered on worker 0 for [`crate::checkpoint::coordinator`]. The worker loop that drives
//! the built dataflow is [`crate::engine`].

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use differential_dataflow::input::{Input as _, InputSession};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Concat, Input, Operator, Probe};
use timely::dataflow::InputHandle;
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use crate::checkpoint::coordinator::Gathered;
use crate::checkpoint::operator::{StateCheckpoints, StatePart};
use crate::checkpoint::Checkpoint;
use crate::dataflows::{Dataflow, SharedInputs};
use crate::detect::control::Control;
use crate::detect::correlation::correlate;
use crate::detect::decision::Decision;
use crate::detect::enrichment::EnrichmentMode;
use crate::detect::intel::IntelOptions;
use crate::detect::new_terms::new_terms;
use crate::detect::observe::observe_stateful_rules;
use crate::detect::risk::{risk_decisions, RiskOptions};
use crate::detect::sigma_set::LatestSigmaSet;
use crate::detect::verdicts::verdicts;
use crate::event::Time;
use crate::ingest::partition::{ErrorSlot, Partition, SourceConfig};
use crate::ingest::source::{partitioned_source, PartitionPart, SourceCheckpoints};
use crate::job::JobSpec;
use crate::output::sinks::{decision_sink, side_sink, Sinks};
use crate::output::AlertGate;

/// The handles of a rendered pipeline the worker loop drives.
pub struct Rendered {
    /// The control collection (fed by worker 0).
    pub control: InputSession<Time, ((), Control), isize>,
    /// Checkpoint barriers (sent by worker 0's coordinator).
    pub barriers: InputHandle<Time, CapacityContainerBuilder<Vec<Time>>>,
    /// The state parts the pipeline's operators declared, `(name, version)`.
    pub declared: Vec<(&'static str, u32)>,
    /// Arrangements the dataflow made that the checkpoints do not keep.
    pub unkept: Vec<String>,
}

/// What a worker renders the pipeline with.
pub struct Parts<'a> {
    /// The job.
    pub job: &'a JobSpec,
    /// Its dataflow.
    pub dataflow: &'a dyn Dataflow,
    /// This worker's share of the source's partitions.
    pub partitions: Vec<Box<dyn Partition>>,
    /// How the source paces itself.
    pub source: SourceConfig,
    /// The checkpoint the job resumes from, if any.
    pub restored: Option<Arc<Checkpoint>>,
    /// The sinks (worker 0's outputs).
    pub sinks: &'a Sinks,
    /// Passed by the outputs: bounds the source's batches in flight.
    pub output_probe: ProbeHandle<Time>,
    /// Passed by the source's events.
    pub events_probe: ProbeHandle<Time>,
    /// Where worker 0 gathers checkpoint parts.
    pub gathered: Rc<RefCell<Gathered>>,
    /// Where the source and the sinks leave the first error.
    pub errors: ErrorSlot,
    /// How the events are enriched.
    pub enrichment: EnrichmentMode,
    /// How they are matched against threat-intel indicators.
    pub intel: IntelOptions,
    /// Where the decision step publishes the Sigma rules in force, when the source's decoders
    /// match records against them early (see [`crate::detect::sigma_set`]).
    pub latest_sigma: Option<Arc<LatestSigmaSet>>,
}

/// Builds the job's pipeline in `scope` (see the module doc).
pub fn render<'s>(scope: Scope<'s, Time>, parts: Parts<'_>) -> Rendered {
    let Parts { job, dataflow, partitions, source, restored, sinks, output_probe, events_probe, gathered, errors, enrichment, intel, latest_sigma } = parts;
    let (control_input, control) = scope.new_collection();
    let (barrier_input, barriers) = scope.new_input::<Vec<Time>>();
    let barriers = barriers.broadcast();
    let checkpoints = StateCheckpoints::new(barriers.clone(), restored_state(scope, restored.as_deref()));

    // 1. The source: this worker's partitions, with per-partition watermarks.
    let source_checkpoints = job.checkpoints.is_some().then(|| SourceCheckpoints { barriers, restore: restored.clone() });
    let (events, side, positions) = partitioned_source(scope, "Source", partitions, source, output_probe.clone(), errors, source_checkpoints);
    let events = events.probe_with(&events_probe);

    // 2. The control arrangement, enrichment (when the job has databases), threat-intel
    //    matching (when it has indicators) and the feature windows: what every dataflow reads.
    let inputs = SharedInputs::build(scope, events, control, &checkpoints, enrichment, intel).with_early_matching(latest_sigma);
    let unkept = inputs.clone();

    // 3-5. The chosen dataflow, the correlation and new-terms rules, the verdicts (and the retro
    //      decisions), entity risk.
    let decisions = detections(dataflow, inputs, job.block_for, job.risk.clone());

    // 6. The sinks, on worker 0.
    let gate = AlertGate::new(job.alert_suppression, &[]).quiet_below(job.quiet_below);
    decision_sink(decisions.probe_with(&output_probe), sinks, gate, &checkpoints);
    side_sink(side.probe_with(&output_probe), sinks, &checkpoints);

    // The checkpoint parts, gathered on worker 0.
    gather(positions, checkpoints.exported(scope), gathered);
    Rendered { control: control_input, barriers: barrier_input, declared: checkpoints.declared(), unkept: unkept.unkept_state() }
}

/// A dataflow's decisions taken through the correlation and new-terms rules and the verdict step
/// (matches added, blocks applied), with the entities' risk decisions when `risk` is on: the job's
/// decisions.
pub fn detections<'s>(dataflow: &dyn Dataflow, inputs: SharedInputs<'s>, block_for: Time, risk: Option<RiskOptions>) -> StreamVec<'s, Time, Decision> {
    let decided = dataflow.build(inputs.clone());
    let (correlation_observations, new_terms_observations) = observe_stateful_rules(inputs.scored.clone(), inputs.control.clone());
    let correlated = correlate(correlation_observations, &inputs.checkpoints);
    let first_seen = new_terms(new_terms_observations, &inputs.checkpoints);
    let hits = correlated.concat(first_seen);
    let unblocks = inputs
        .control
        .flat_map_ref(|_, control: &Control| match control {
            Control::Unblock(unblock) => Some(unblock.clone()),
            _ => None,
        })
        .inner;
    let decisions = verdicts(inputs.scored, decided, hits, unblocks, block_for, &inputs.checkpoints).concat(inputs.retro);
    match risk {
        Some(options) => {
            let raised = risk_decisions(decisions.clone(), options, &inputs.checkpoints);
            decisions.concat(raised)
        }
        None => decisions,
    }
}

/// The state parts of a restored checkpoint, given at its frontier by worker 0 (nothing elsewhere).
fn restored_state<'s>(scope: Scope<'s, Time>, restored: Option<&Checkpoint>) -> StreamVec<'s, Time, StatePart> {
    let mut parts = restored.filter(|_| scope.index() == 0).map(|c| (c.frontier, c.state.clone()));
    timely::dataflow::operators::generic::operator::source(scope, "RestoredState", move |capability, _info| {
        let mut capability = Some(capability);
        move |output| {
            if let Some(cap) = capability.take() {
                if let Some((frontier, parts)) = parts.take() {
                    let cap = cap.delayed(&frontier);
                    output.session(&cap).give_iterator(parts.into_iter());
                }
            }
        }
    })
}

/// Hands the partitions' positions and the operators' state parts to worker 0's coordinator.
fn gather<'s>(positions: StreamVec<'s, Time, PartitionPart>, state: StreamVec<'s, Time, (Time, StatePart)>, gathered: Rc<RefCell<Gathered>>) {
    let positions_gathered = Rc::clone(&gathered);
    positions.sink(Pipeline, "CheckpointPositions", move |(input, frontier)| {
        let mut gathered = positions_gathered.borrow_mut();
        input.for_each(|_, data| {
            for (at, name, part) in data.drain(..) {
                gathered.add_partition(at, name, part);
            }
        });
        gathered.complete_before(frontier.frontier().first().copied(), false);
    });
    state.sink(Pipeline, "CheckpointState", move |(input, frontier)| {
        let mut gathered = gathered.borrow_mut();
        input.for_each(|_, data| {
            for (at, part) in data.drain(..) {
                gathered.add_state(at, part);
            }
        });
        gathered.complete_before(frontier.frontier().first().copied(), true);
    });
}
