//! `threatflow backtest`: a changed rule set against the one in force, on the same history. The
//! history (files, or a Kafka topic up to its end) goes through the same engine twice, once with
//! each rule set, and the detections are compared per rule: hits, alerts per day, and the events
//! only one side flags, so a reviewer sees what a rule change adds and what it loses before it
//! ships.
//!
//! A hit of a rule is a `threat` decision naming it, judged in `[--from, --to]`; an event counts
//! once per rule. Alerts per day divide the hits by the days the comparison covers: `[--from,
//! --to]` when both are given, else the span of the flagged events' times (a given bound in place
//! of theirs), and at least one day.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use clap::Args;
use serde::Serialize;

use super::options::{ms, parse_time, read_placeholders, rfc3339, KafkaArgs};
use crate::control::{ControlSpec, RulesSource};
use crate::detect::decision::{Decision, Verdict};
use crate::detect::sigma::Placeholders;
use crate::event::{Time, DAY};
use crate::ingest::mapping::RecordFormat;
use crate::ingest::partition::Decoding;
use crate::job::{JobSpec, SourceSpec};
use crate::kafka::source::KafkaSource;

/// `threatflow backtest`.
#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// The rule set under test: a directory of Sigma rules.
    #[arg(long)]
    pub rules_dir: PathBuf,
    /// The rule set it is compared with (the one in force): a directory of Sigma rules.
    #[arg(long)]
    pub baseline_rules_dir: PathBuf,
    /// Threshold rule files loaded with both sets.
    #[arg(long)]
    pub rules: Vec<PathBuf>,
    /// Placeholder values for Sigma's `|expand` (a YAML map of name to values), for both sets.
    #[arg(long)]
    pub sigma_placeholders: Option<PathBuf>,
    /// The history: JSON-lines files, one partition each.
    #[arg(long, required_unless_present = "kafka", conflicts_with = "kafka")]
    pub input: Vec<PathBuf>,
    /// Kafka: the history is the activity topic, from its start to the end offsets it has when
    /// each run starts (give `--to` so that both runs compare the same span of a live topic).
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// A topic name for a role, `ROLE=NAME` (here: `activity=NAME`).
    #[arg(long = "topic", value_name = "ROLE=NAME", requires = "kafka")]
    pub topics: Vec<String>,
    /// Count detections judged at or after this time (ms or RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub from: Option<Time>,
    /// Count detections judged at or before this time (ms or RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub to: Option<Time>,
    /// Record format: `canonical`, `auto` or a mapping's name.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// More mappings (`*.yaml`).
    #[arg(long)]
    pub mappings_dir: Option<PathBuf>,
    /// Allowed lateness, as when serving.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub allowed_lateness: Duration,
    /// Worker threads.
    #[arg(short = 'w', long = "workers", default_value_t = 1)]
    pub workers: usize,
    /// Event ids listed, at most, per rule for the events only one side flags.
    #[arg(long, default_value_t = 5)]
    pub examples: usize,
    /// Print the comparison as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the history with both rule sets and prints the comparison.
pub(super) fn backtest(args: BacktestArgs) -> Result<()> {
    if let (Some(from), Some(to)) = (args.from, args.to) {
        ensure!(from <= to, "--from ({from}) is after --to ({to})");
    }
    let placeholders = read_placeholders(args.sigma_placeholders.as_deref())?;
    let new = detections(&args, &args.rules_dir, &placeholders).with_context(|| format!("running the rules of {}", args.rules_dir.display()))?;
    let baseline = detections(&args, &args.baseline_rules_dir, &placeholders)
        .with_context(|| format!("running the baseline rules of {}", args.baseline_rules_dir.display()))?;
    let comparison = Comparison::of(&new, &baseline, args.from, args.to, args.examples);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&comparison).context("the comparison as JSON")?);
    } else {
        print!("{}", comparison.table(&args.rules_dir, &args.baseline_rules_dir));
    }
    Ok(())
}

/// Runs the history with one rule set; returns what it flagged in the window.
fn detections(args: &BacktestArgs, rules_dir: &Path, placeholders: &Placeholders) -> Result<Detections> {
    let job = job_for(args, rules_dir, placeholders)?;
    let report = crate::engine::run(timely::Config::process(args.workers.max(1)), job)?;
    tracing::info!(
        rules_dir = %rules_dir.display(),
        events = report.events,
        rejected = report.rejected,
        decisions = report.decisions,
        seconds = report.elapsed.as_secs_f64(),
        "backtest run done"
    );
    Ok(Detections::of(&report.collected_decisions, args.from, args.to))
}

/// The job over the history with the rules of `rules_dir` (and `--rules`), collecting decisions
/// and writing nothing.
fn job_for(args: &BacktestArgs, rules_dir: &Path, placeholders: &Placeholders) -> Result<JobSpec> {
    let source = match args.kafka.config()? {
        Some(kafka) => SourceSpec::Kafka(KafkaSource::new(kafka.with_topics(&args.topics)?, true)),
        None => SourceSpec::Files(args.input.clone()),
    };
    let mut rules: Vec<RulesSource> = args.rules.iter().cloned().map(RulesSource::File).collect();
    rules.push(RulesSource::SigmaDir(rules_dir.to_path_buf(), placeholders.clone()));
    let mut job = JobSpec::new("threat", source);
    job.control = ControlSpec { rules, ..ControlSpec::default() };
    job.decoding = Decoding { format: RecordFormat::parse(&args.format, args.mappings_dir.as_deref())?, ..Decoding::default() };
    job.allowed_lateness = ms(args.allowed_lateness);
    job.collect = true;
    Ok(job)
}

/// Whether `ts` is in `[from, to]`.
fn in_window(ts: Time, from: Option<Time>, to: Option<Time>) -> bool {
    from.is_none_or(|from| ts >= from) && to.is_none_or(|to| ts <= to)
}

/// What one rule set flagged in the window: per rule, its events (id → judged time); every
/// flagged event; each rule's title.
#[derive(Debug, Default)]
struct Detections {
    by_rule: BTreeMap<String, BTreeMap<String, Time>>,
    events: BTreeMap<String, Time>,
    titles: BTreeMap<String, String>,
}

impl Detections {
    fn of(decisions: &[Decision], from: Option<Time>, to: Option<Time>) -> Detections {
        let mut detections = Detections::default();
        for decision in decisions.iter().filter(|d| d.verdict == Verdict::Threat && in_window(d.ts, from, to)) {
            detections.events.insert(decision.event_id.clone(), decision.ts);
            for (i, rule) in decision.rules.iter().enumerate() {
                detections.by_rule.entry(rule.clone()).or_default().insert(decision.event_id.clone(), decision.ts);
                if let Some(title) = decision.rule_titles.get(i) {
                    detections.titles.entry(rule.clone()).or_insert_with(|| title.clone());
                }
            }
        }
        detections
    }
}

/// One side of a comparison: its hits, alerts per day, and the events only it flags.
#[derive(Debug, PartialEq, Serialize)]
struct Side {
    hits: usize,
    per_day: f64,
    only_here: usize,
    /// The first of them, by time.
    only_here_first: Vec<String>,
}

impl Side {
    /// The side flagging `here`, against the other side flagging `there`.
    fn of(here: &BTreeMap<String, Time>, there: &BTreeMap<String, Time>, days: f64, examples: usize) -> Side {
        let mut only: Vec<(Time, &String)> = here.iter().filter(|(id, _)| !there.contains_key(*id)).map(|(id, ts)| (*ts, id)).collect();
        only.sort();
        Side {
            hits: here.len(),
            per_day: here.len() as f64 / days,
            only_here: only.len(),
            only_here_first: only.iter().take(examples).map(|(_, id)| (*id).clone()).collect(),
        }
    }
}

/// A rule (or all of them) in both runs.
#[derive(Debug, PartialEq, Serialize)]
struct RuleComparison {
    rule: String,
    title: String,
    new: Side,
    baseline: Side,
}

/// The whole comparison.
#[derive(Debug, Serialize)]
struct Comparison {
    from: Option<Time>,
    to: Option<Time>,
    days: f64,
    /// Every rule either run flagged something with, by id.
    rules: Vec<RuleComparison>,
    /// The events flagged by any rule.
    total: RuleComparison,
}

impl Comparison {
    fn of(new: &Detections, baseline: &Detections, from: Option<Time>, to: Option<Time>, examples: usize) -> Comparison {
        let times = new.events.values().chain(baseline.events.values()).copied();
        let days = days_spanned(from, to, times);
        let empty = BTreeMap::new();
        let ids: BTreeSet<&String> = new.by_rule.keys().chain(baseline.by_rule.keys()).collect();
        let rules = ids
            .into_iter()
            .map(|id| {
                let (mine, theirs) = (new.by_rule.get(id).unwrap_or(&empty), baseline.by_rule.get(id).unwrap_or(&empty));
                let title = new.titles.get(id).or_else(|| baseline.titles.get(id)).unwrap_or(id);
                RuleComparison {
                    rule: id.clone(),
                    title: title.clone(),
                    new: Side::of(mine, theirs, days, examples),
                    baseline: Side::of(theirs, mine, days, examples),
                }
            })
            .collect();
        let total = RuleComparison {
            rule: "(all rules)".to_string(),
            title: "events flagged by any rule".to_string(),
            new: Side::of(&new.events, &baseline.events, days, examples),
            baseline: Side::of(&baseline.events, &new.events, days, examples),
        };
        Comparison { from, to, days, rules, total }
    }

    /// The comparison as a table, with the events only one side flags listed below it.
    fn table(&self, new_dir: &Path, baseline_dir: &Path) -> String {
        let span = match (self.from, self.to) {
            (None, None) => "the flagged events' times".to_string(),
            (from, to) => format!("{} to {}", from.map_or("the first flagged event".to_string(), rfc3339), to.map_or("the last flagged event".to_string(), rfc3339)),
        };
        let mut out = format!("new: {}, baseline: {}; {span}, {:.2} day(s)\n\n", new_dir.display(), baseline_dir.display(), self.days);
        let width = self.rules.iter().map(|r| r.rule.len()).chain([self.total.rule.len(), 4]).max().unwrap_or(4);
        out.push_str(&format!(
            "{:<width$}  {:>8}  {:>8}  {:>8}  {:>12}  {:>8}  {:>13}  title\n",
            "rule", "new", "baseline", "new/day", "baseline/day", "only new", "only baseline"
        ));
        for row in self.rules.iter().chain([&self.total]) {
            out.push_str(&format!(
                "{:<width$}  {:>8}  {:>8}  {:>8.2}  {:>12.2}  {:>8}  {:>13}  {}\n",
                row.rule, row.new.hits, row.baseline.hits, row.new.per_day, row.baseline.per_day, row.new.only_here, row.baseline.only_here, row.title
            ));
        }
        let listed = self.only_one_side();
        if !listed.is_empty() {
            out.push('\n');
            out.push_str(&listed);
        }
        out
    }

    /// A line per rule and side that flags events the other does not: the first of them, and how
    /// many more.
    fn only_one_side(&self) -> String {
        let mut listed = String::new();
        for row in self.rules.iter().chain([&self.total]) {
            for (side, name) in [(&row.new, "only new"), (&row.baseline, "only baseline")] {
                if side.only_here > 0 {
                    let more = side.only_here - side.only_here_first.len();
                    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
                    listed.push_str(&format!("{name:<13}  {}: {}{more}\n", row.rule, side.only_here_first.join(", ")));
                }
            }
        }
        listed
    }
}

/// The days the comparison covers: `[from, to]`, a bound not given taken from the flagged events'
/// times; at least one day.
fn days_spanned(from: Option<Time>, to: Option<Time>, times: impl Iterator<Item = Time>) -> f64 {
    let (first, last) = times.fold((None::<Time>, None::<Time>), |(first, last), t| {
        (Some(first.map_or(t, |f| f.min(t))), Some(last.map_or(t, |l| l.max(t))))
    });
    match (from.or(first), to.or(last)) {
        (Some(start), Some(end)) if end > start => ((end - start) as f64 / DAY as f64).max(1.0),
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flagged(pairs: &[(&str, &str, Time)]) -> Detections {
        let mut d = Detections::default();
        for (rule, event, ts) in pairs {
            d.by_rule.entry(rule.to_string()).or_default().insert(event.to_string(), *ts);
            d.events.insert(event.to_string(), *ts);
            d.titles.insert(rule.to_string(), format!("title of {rule}"));
        }
        d
    }

    #[test]
    fn sides_count_hits_and_what_only_they_flag() {
        let new = flagged(&[("a", "e1", 1), ("a", "e2", 2), ("a", "e3", 3), ("b", "e4", DAY)]);
        let baseline = flagged(&[("a", "e2", 2), ("a", "e9", 9), ("c", "e5", 5)]);
        let c = Comparison::of(&new, &baseline, Some(0), Some(2 * DAY), 1);
        assert_eq!(c.days, 2.0);
        let ids: Vec<&str> = c.rules.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let a = &c.rules[0];
        assert_eq!(a.new, Side { hits: 3, per_day: 1.5, only_here: 2, only_here_first: vec!["e1".into()] });
        assert_eq!(a.baseline, Side { hits: 2, per_day: 1.0, only_here: 1, only_here_first: vec!["e9".into()] });
        assert_eq!((c.rules[1].new.hits, c.rules[1].baseline.hits, c.rules[2].new.hits), (1, 0, 0));
        assert_eq!((c.total.new.hits, c.total.baseline.hits, c.total.new.only_here, c.total.baseline.only_here), (4, 3, 3, 2));
        let table = c.table(Path::new("new"), Path::new("old"));
        assert!(table.contains("only new       a: e1 and 1 more"), "{table}");
        assert!(table.contains("only baseline  c: e5"), "{table}");
    }

    #[test]
    fn the_span_is_the_window_or_the_events_and_at_least_a_day() {
        assert_eq!(days_spanned(Some(0), Some(3 * DAY), [5].into_iter()), 3.0);
        assert_eq!(days_spanned(None, None, [DAY, 5 * DAY, 2 * DAY].into_iter()), 4.0);
        assert_eq!(days_spanned(Some(0), None, [2 * DAY].into_iter()), 2.0);
        assert_eq!(days_spanned(None, None, [7].into_iter()), 1.0);
        assert_eq!(days_spanned(None, None, std::iter::empty()), 1.0);
        assert!(in_window(5, Some(5), Some(5)) && !in_window(4, Some(5), None) && !in_window(6, None, Some(5)));
    }
}
