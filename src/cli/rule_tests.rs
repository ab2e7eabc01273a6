//! `threatflow test RULES_DIR`: detection rules tested as code. Every test case runs its records
//! through a real job, the one `threatflow replay --format F --rules-dir RULES_DIR` would run (in
//! memory, one worker), and compares what its rule detected with what the case expects. A rule
//! change that loses a true positive, or starts flagging a near miss, fails CI before it ships, and
//! `--junit FILE` gives the CI's test report.
//!
//! **Where cases are written.** Two places, both under `RULES_DIR`:
//!
//! - a `tests:` key in a Sigma rule document (Sigma ignores keys it does not know; threatflow's
//!   parser reads only the keys it knows): the list of that rule's cases (the rule being its `id`,
//!   else its `title`);
//! - a file `NAME.tests.yml` (or `NAME.tests.yaml`), usually beside the rule file `NAME.yml`: a map
//!   of rule id to the list of that rule's cases. These files are never loaded as rules (see
//!   [`crate::detect::sigma::rule_files`]), and their rule may be any rule the job loads: a Sigma
//!   rule of the directory, or a threshold rule of a `--rules` file.
//!
//! **A case** (unknown keys are an error):
//!
//! ```yaml
//! name: console login without MFA fires        # required
//! format: aws.cloudtrail        # a mapping's name, `canonical` or `auto` (the default)
//! events:                       # the records, in this order: maps (canonical events or providers'
//!   - {eventName: ConsoleLogin, eventTime: "2024-08-02T08:53:24Z", ...}   #  records), or strings
//! # file: trail.jsonl           # instead of `events`: JSON lines, relative to this file
//! expect:                       # every detection of THIS rule, and nothing more; `[]`: it must not fire
//!   - event: 0                  # the record's 0-based index in `events` (its line in `file`), or its id
//!     ts: 2024-08-02T08:53:24Z  # optional: the time it is judged at (ms or RFC 3339)
//!   - 2                         # short for `{event: 2}`
//! allowed_lateness: 5s          # optional (5s by default)
//! risk: {threshold: 100, window: 24h, entities: [user], only_below: high}   # optional: entity risk on
//! expect_risk:                  # optional (needs `risk`): every risk decision
//!   - {entity: user, value: "arn:aws:iam::1:user/ann", ts: 2024-08-02T09:00:00Z}
//! ```
//!
//! A case needs `expect` or `expect_risk`; each one it has must match exactly. Every case runs
//! with the whole directory (and the `--rules` files) loaded, and all its records go through one
//! job in their order, so stateful rules are tested as they run: a correlation finds the rules it
//! refers to, and its windows see the records' times. Detections of other rules are ignored. A
//! record the job rejects (a dead letter) fails the case: it is almost always a mistake in the
//! test. A case whose rule is not loaded (refused by the parser, or a wrong id) fails, with the
//! parser's reasons.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::{Args, Parser};
use serde::Deserialize;
use serde_json::Value;

use super::options::{parse_time, read_placeholders, rfc3339, JobArgs};
use crate::control::{ControlSpec, RulesSource};
use crate::detect::rules::RuleSpec;
use crate::detect::decision::{Decision, Verdict};
use crate::event::{Position, Time};
use crate::job::SourceSpec;
use crate::output::sinks::JobReport;

/// `threatflow test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The rules directory: every rule under it is loaded for every case, and the cases are read
    /// from its rules' `tests:` keys and its `*.tests.yml` files.
    pub rules_dir: PathBuf,
    /// Also write the results as JUnit XML here (a test suite per rule file).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// More mappings (`*.yaml`) for the cases' records.
    #[arg(long)]
    pub mappings_dir: Option<PathBuf>,
    /// Threshold rule files loaded with the directory (their rules can be tested too).
    #[arg(long)]
    pub rules: Vec<PathBuf>,
    /// Placeholder values for Sigma's `|expand` (a YAML map of name to values).
    #[arg(long)]
    pub sigma_placeholders: Option<PathBuf>,
    /// Run only the cases whose `RULE ID: CASE NAME` contains this text.
    #[arg(long)]
    pub filter: Option<String>,
}

/// Runs every case under the directory, prints a line per case and a summary, writes the JUnit
/// report when asked; fails when a case fails.
pub(super) fn test_rules(args: TestArgs) -> Result<()> {
    let started = Instant::now();
    let mut discovered = discover(&args.rules_dir)?;
    if let Some(filter) = &args.filter {
        discovered.retain(|d| d.label().contains(filter.as_str()));
    }
    ensure!(
        !discovered.is_empty(),
        "no rule tests under {} (a `tests:` key in a rule, or a `*.tests.yml` file){}",
        args.rules_dir.display(),
        args.filter.as_ref().map_or(String::new(), |f| format!(" whose name contains {f:?}"))
    );
    let loaded = LoadedRules::load(&args)?;
    let mut results = Vec::with_capacity(discovered.len());
    for item in discovered {
        let result = match item {
            Discovered::Case(case) => run_case(&case, &args, &loaded),
            Discovered::Broken(broken) => broken,
        };
        print_result(&result);
        results.push(result);
    }
    let failed = results.iter().filter(|r| !r.outcome.passed()).count();
    println!();
    println!("{} passed, {failed} failed", results.len() - failed);
    if let Some(path) = &args.junit {
        std::fs::write(path, junit_xml(&results, started.elapsed())).with_context(|| format!("writing the JUnit report {}", path.display()))?;
    }
    ensure!(failed == 0, "{failed} of {} rule test(s) failed", results.len());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Test cases: as written, and ready to run.

/// A test case as written (see the module doc).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseDoc {
    name: String,
    format: Option<String>,
    events: Option<Vec<Value>>,
    file: Option<PathBuf>,
    allowed_lateness: Option<String>,
    risk: Option<RiskSettings>,
    expect: Option<Vec<Value>>,
    expect_risk: Option<Vec<Value>>,
}

/// Entity risk for a case: the job's `--risk-threshold`, `--risk-window`, `--risk-entities` and
/// `--risk-only-below`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RiskSettings {
    threshold: u64,
    window: Option<String>,
    entities: Option<Vec<String>>,
    only_below: Option<String>,
}

/// A test case of one rule, ready to run.
#[derive(Clone, Debug, PartialEq)]
struct TestCase {
    /// The id of the rule under test.
    rule: String,
    /// The case's name.
    name: String,
    /// The rule's file (the file holding the case when no rule file is beside it): the JUnit suite.
    suite: PathBuf,
    /// The file the case is written in (its `file:` is relative to it).
    origin: PathBuf,
    format: String,
    input: CaseInput,
    allowed_lateness: Option<String>,
    risk: Option<RiskSettings>,
    expect: Option<Vec<ExpectedHit>>,
    expect_risk: Option<Vec<ExpectedRisk>>,
}

/// Where a case's records are.
#[derive(Clone, Debug, PartialEq)]
enum CaseInput {
    /// Written in the case.
    Events(Vec<Value>),
    /// A JSON-lines file (relative to the file holding the case).
    File(PathBuf),
}

/// An event, as an expectation names it.
#[derive(Clone, Debug, PartialEq)]
enum EventRef {
    /// Its 0-based index among the case's records (its line).
    Index(usize),
    /// Its `event_id`.
    Id(String),
}

/// A detection the case expects of its rule.
#[derive(Clone, Debug, PartialEq)]
struct ExpectedHit {
    event: EventRef,
    /// The time it is judged at, when the case says.
    ts: Option<Time>,
}

/// A risk decision the case expects.
#[derive(Clone, Debug, PartialEq)]
struct ExpectedRisk {
    entity: String,
    value: String,
    ts: Option<Time>,
}

/// Parses one case of `rule`, written in `origin`, whose rule is in `suite`.
fn parse_case(rule: &str, value: &Value, origin: &Path, suite: &Path) -> Result<TestCase> {
    let doc = CaseDoc::deserialize(value).context("not a test case")?;
    let input = match (doc.events, doc.file) {
        (Some(events), None) => CaseInput::Events(events),
        (None, Some(file)) => CaseInput::File(file),
        (Some(_), Some(_)) => bail!("a case has `events` or `file`, not both"),
        (None, None) => bail!("a case needs `events` (its records) or `file` (a JSON-lines file)"),
    };
    ensure!(
        doc.expect.is_some() || doc.expect_risk.is_some(),
        "a case needs `expect` (the rule's detections; `[]`: none) or `expect_risk`"
    );
    ensure!(doc.expect_risk.is_none() || doc.risk.is_some(), "`expect_risk` needs `risk` (at least its `threshold`)");
    let expect = doc.expect.as_deref().map(|list| parse_list(list, "expect", expected_hit)).transpose()?;
    let expect_risk = doc.expect_risk.as_deref().map(|list| parse_list(list, "expect_risk", expected_risk)).transpose()?;
    if let (CaseInput::Events(events), Some(expect)) = (&input, &expect) {
        for (i, hit) in expect.iter().enumerate() {
            if let EventRef::Index(index) = hit.event {
                ensure!(index < events.len(), "expect[{i}]: event {index} is past the case's {} event(s) (indexes start at 0)", events.len());
            }
        }
    }
    Ok(TestCase {
        rule: rule.to_string(),
        name: doc.name,
        suite: suite.to_path_buf(),
        origin: origin.to_path_buf(),
        format: doc.format.unwrap_or_else(|| "auto".to_string()),
        input,
        allowed_lateness: doc.allowed_lateness,
        risk: doc.risk,
        expect,
        expect_risk,
    })
}

/// Parses each item of a list with `parse`, naming the item that does not parse.
fn parse_list<T>(list: &[Value], key: &str, parse: fn(&Value) -> Result<T>) -> Result<Vec<T>> {
    list.iter().enumerate().map(|(i, item)| parse(item).with_context(|| format!("{key}[{i}]"))).collect()
}

/// An expected detection: `{event, ts}`, or just the event (an index or an id).
fn expected_hit(value: &Value) -> Result<ExpectedHit> {
    let Value::Object(map) = value else { return Ok(ExpectedHit { event: event_ref(value)?, ts: None }) };
    refuse_unknown_keys(map, &["event", "ts"])?;
    let event = map.get("event").context("`event` is missing (an index into the events, or an event id)")?;
    Ok(ExpectedHit { event: event_ref(event)?, ts: map.get("ts").map(time_of).transpose()? })
}

/// An expected risk decision: `{entity, value, ts}`.
fn expected_risk(value: &Value) -> Result<ExpectedRisk> {
    let map = value.as_object().context("an expected risk decision is a map `{entity, value, ts}`")?;
    refuse_unknown_keys(map, &["entity", "value", "ts"])?;
    let text = |key: &str| map.get(key).filter(|v| !v.is_null()).map(text_of).with_context(|| format!("`{key}` is missing"));
    Ok(ExpectedRisk { entity: text("entity")?, value: text("value")?, ts: map.get("ts").map(time_of).transpose()? })
}

/// Fails on a key not in `known` (a misspelt key would otherwise be ignored).
fn refuse_unknown_keys(map: &serde_json::Map<String, Value>, known: &[&str]) -> Result<()> {
    match map.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => bail!("unknown key `{key}` (expected {})", known.join(", ")),
        None => Ok(()),
    }
}

/// An event named by its index (a number) or its id (a string).
fn event_ref(value: &Value) -> Result<EventRef> {
    match value {
        Value::Number(n) => n.as_u64().and_then(|i| usize::try_from(i).ok()).map(EventRef::Index).with_context(|| format!("event {n} is not an index (0, 1, ...)")),
        Value::String(id) => Ok(EventRef::Id(id.clone())),
        other => bail!("event {other} is neither an index nor an event id"),
    }
}

/// A time: ms since the epoch, or RFC 3339.
fn time_of(value: &Value) -> Result<Time> {
    match value {
        Value::Number(n) => n.as_u64().with_context(|| format!("ts {n} is not a time in ms")),
        Value::String(text) => parse_time(text).map_err(|e| anyhow!("ts: {e}")),
        other => bail!("ts {other} is not a time (ms or RFC 3339)"),
    }
}

/// A JSON value as text: a string as it is, anything else (a number) as JSON.
fn text_of(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_string)
}

// ---------------------------------------------------------------------------------------------
// Finding the cases.

/// A case found under the directory, or one that could not be read (reported as a failed case).
enum Discovered {
    Case(TestCase),
    Broken(CaseResult),
}

impl Discovered {
    /// `RULE ID: CASE NAME`, as `--filter` matches it.
    fn label(&self) -> String {
        match self {
            Discovered::Case(case) => format!("{}: {}", case.rule, case.name),
            Discovered::Broken(result) => format!("{}: {}", result.rule, result.name),
        }
    }
}

/// Every case under `dir`: the rules' `tests:` keys and the `*.tests.yml` files, in file order.
fn discover(dir: &Path) -> Result<Vec<Discovered>> {
    ensure!(dir.is_dir(), "{} is not a directory of rules", dir.display());
    let mut found = Vec::new();
    for path in crate::detect::sigma::yaml_files(dir) {
        let cases = if crate::detect::sigma::is_tests_file(&path) { tests_file_cases(&path) } else { inline_cases(&path) };
        match cases {
            Ok(cases) => found.extend(cases),
            Err(error) => found.push(Discovered::Broken(CaseResult::broken(&path, &path, "(tests)", "reading the tests", format!("{error:#}")))),
        }
    }
    Ok(found)
}

/// The cases of a rule file: each document's `tests:` key.
fn inline_cases(path: &Path) -> Result<Vec<Discovered>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // Most rule files have no tests: they are not parsed twice.
    if !text.lines().any(|line| line.starts_with("tests:")) {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for document in serde_norway::Deserializer::from_str(&text) {
        let doc = Value::deserialize(document).with_context(|| format!("{}: not YAML", path.display()))?;
        let Some(tests) = doc.get("tests") else { continue };
        let rule = ["id", "title"]
            .iter()
            .find_map(|key| doc.get(*key).and_then(Value::as_str))
            .with_context(|| format!("{}: a rule with `tests` has neither `id` nor `title`", path.display()))?;
        found.extend(cases_of_rule(rule, tests, path, path));
    }
    Ok(found)
}

/// The cases of a `*.tests.yml` file: a map of rule id to its cases.
fn tests_file_cases(path: &Path) -> Result<Vec<Discovered>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: Value = serde_norway::from_str(&text).with_context(|| format!("{}: not YAML", path.display()))?;
    let rules = match doc {
        Value::Null => return Ok(Vec::new()),
        Value::Object(rules) => rules,
        _ => bail!("{}: not a map of rule id to a list of test cases", path.display()),
    };
    let suite = rule_file_beside(path).unwrap_or_else(|| path.to_path_buf());
    Ok(rules.iter().flat_map(|(rule, cases)| cases_of_rule(rule, cases, path, &suite)).collect())
}

/// The rule file a tests file is beside: `NAME.yml` (or `.yaml`) for `NAME.tests.yml`.
fn rule_file_beside(tests_file: &Path) -> Option<PathBuf> {
    let name = tests_file.file_name()?.to_str()?;
    let stem = name.strip_suffix(".tests.yml").or_else(|| name.strip_suffix(".tests.yaml"))?;
    [format!("{stem}.yml"), format!("{stem}.yaml")].into_iter().map(|n| tests_file.with_file_name(n)).find(|p| p.is_file())
}

/// The cases of one rule (a list); a case that does not parse is a failed case.
fn cases_of_rule(rule: &str, cases: &Value, origin: &Path, suite: &Path) -> Vec<Discovered> {
    let Some(list) = cases.as_array() else {
        let why = format!("{}: the tests of {rule:?} are not a list of cases", origin.display());
        return vec![Discovered::Broken(CaseResult::broken(origin, suite, rule, "(tests)", why))];
    };
    list.iter()
        .enumerate()
        .map(|(i, value)| match parse_case(rule, value, origin, suite) {
            Ok(case) => Discovered::Case(case),
            Err(error) => {
                let name = value.get("name").and_then(Value::as_str).map_or_else(|| format!("case {i}"), str::to_string);
                Discovered::Broken(CaseResult::broken(origin, suite, rule, &name, format!("{}: {error:#}", origin.display())))
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Running a case.

/// The rules every case runs with, read once: the `--rules` files' updates, then the directory's
/// Sigma rules (the order a job loads them in), their ids, and the rules refused
/// (`FILE:LINE: reason`).
struct LoadedRules {
    specs: Vec<RuleSpec>,
    ids: BTreeSet<String>,
    refused: Vec<String>,
}

impl LoadedRules {
    fn load(args: &TestArgs) -> Result<LoadedRules> {
        let mut specs = Vec::new();
        for file in &args.rules {
            specs.extend(crate::detect::rules::read_rules(file)?);
        }
        let placeholders = read_placeholders(args.sigma_placeholders.as_deref())?;
        let (rules, refused) = crate::detect::sigma::read_dir(&args.rules_dir, &placeholders)?;
        specs.extend(rules.into_iter().map(RuleSpec::from_sigma));
        let ids = specs.iter().filter(|spec| !spec.remove).map(|spec| spec.id.clone()).collect();
        Ok(LoadedRules { specs, ids, refused })
    }

    /// Why `rule` cannot be tested, when it is not loaded: the refusals of its file, if any.
    fn why_missing(&self, rule: &str, suite: &Path) -> Option<String> {
        if self.ids.contains(rule) {
            return None;
        }
        let prefix = format!("{}:", suite.display());
        let reasons: Vec<&str> = self.refused.iter().filter(|r| r.starts_with(&prefix)).map(String::as_str).collect();
        if reasons.is_empty() {
            Some(format!("no rule with the id {rule:?} is loaded"))
        } else {
            Some(format!("no rule with the id {rule:?} is loaded; refused:\n{}", reasons.join("\n")))
        }
    }
}

/// Runs a case and judges it.
fn run_case(case: &TestCase, args: &TestArgs, loaded: &LoadedRules) -> CaseResult {
    let started = Instant::now();
    let outcome = match loaded.why_missing(&case.rule, &case.suite) {
        Some(why) => Outcome::Error(why),
        None => match run_and_compare(case, args, loaded) {
            Ok(problems) if problems.is_empty() => Outcome::Passed,
            Ok(problems) => Outcome::Failed(problems),
            Err(error) => Outcome::Error(format!("{error:#}")),
        },
    };
    CaseResult {
        suite: case.suite.clone(),
        origin: case.origin.clone(),
        rule: case.rule.clone(),
        name: case.name.clone(),
        elapsed: started.elapsed(),
        outcome,
    }
}

/// Runs the case's job; returns what differs from the expectations, a line each (none: passed).
fn run_and_compare(case: &TestCase, args: &TestArgs, loaded: &LoadedRules) -> Result<Vec<String>> {
    let report = run_case_job(case, args, loaded)?;
    let mut problems: Vec<String> = report
        .collected_dead_letters
        .iter()
        .map(|dead| format!("rejected: {} ({})", describe_record(Some(&dead.position)), dead.reason))
        .collect();
    if let Some(expected) = &case.expect {
        let actual = hits_of(&report.collected_decisions, &case.rule);
        problems.extend(differences(expected, &actual, ExpectedHit::matches, |e| e.ts.is_some(), "the rule's detections"));
    }
    if let Some(expected) = &case.expect_risk {
        let actual = risk_hits(&report.collected_decisions);
        problems.extend(differences(expected, &actual, ExpectedRisk::matches, |e| e.ts.is_some(), "the risk decisions"));
    }
    Ok(problems)
}

/// A job's options as `replay` reads them: a case's job is built the way `replay` builds its own.
#[derive(Debug, Parser)]
#[command(name = "threatflow-test")]
struct CaseJobOptions {
    #[command(flatten)]
    job: JobArgs,
}

/// The options of a case's job: the format, the mappings, its lateness and risk (the rules are
/// the ones read once, [`LoadedRules`]).
fn job_arguments(case: &TestCase, args: &TestArgs) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec!["threatflow-test".into(), "--format".into(), case.format.clone().into()];
    if let Some(dir) = &args.mappings_dir {
        argv.extend(["--mappings-dir".into(), dir.clone().into_os_string()]);
    }
    if let Some(lateness) = &case.allowed_lateness {
        argv.extend(["--allowed-lateness".into(), lateness.clone().into()]);
    }
    if let Some(risk) = &case.risk {
        argv.extend(["--risk-threshold".into(), risk.threshold.to_string().into()]);
        if let Some(window) = &risk.window {
            argv.extend(["--risk-window".into(), window.clone().into()]);
        }
        if let Some(entities) = &risk.entities {
            argv.extend(["--risk-entities".into(), entities.join(",").into()]);
        }
        if let Some(severity) = &risk.only_below {
            argv.extend(["--risk-only-below".into(), severity.clone().into()]);
        }
    }
    argv
}

/// Runs the case's records through its job, collecting the decisions and dead letters.
fn run_case_job(case: &TestCase, args: &TestArgs, loaded: &LoadedRules) -> Result<JobReport> {
    let records = case_records(case)?;
    let options = CaseJobOptions::try_parse_from(job_arguments(case, args)).map_err(|e| anyhow!("the case's job options: {e}"))?;
    // Nothing is followed while a case runs.
    let rules = vec![RulesSource::Specs(loaded.specs.clone())];
    let control = ControlSpec { follow: false, rules, ..options.job.control(false, false)? };
    let mut job = options.job.job(SourceSpec::Memory(vec![records]), control)?;
    job.collect = true;
    crate::engine::run(timely::Config::thread(), job)
}

/// The case's records as JSON lines.
fn case_records(case: &TestCase) -> Result<Vec<u8>> {
    match &case.input {
        CaseInput::Events(events) => events_as_lines(events),
        CaseInput::File(file) => {
            // Relative to the file the case is written in (an absolute path stays as it is).
            let path = case.origin.parent().unwrap_or(Path::new("")).join(file);
            std::fs::read(&path).with_context(|| format!("reading the case's records {}", path.display()))
        }
    }
}

/// Records as JSON lines, one a line: a map as JSON, a string as it is (a text line, such as a
/// VPC flow log's), so that a record's index is its line.
fn events_as_lines(events: &[Value]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let line = match event {
            Value::String(text) => {
                ensure!(!text.contains('\n'), "event {i}: a text record holds a line break");
                text.clone()
            }
            other => serde_json::to_string(other).with_context(|| format!("event {i} as JSON"))?,
        };
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// Comparing.

/// A detection of the rule under test: the time it was judged at, and the event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Hit {
    ts: Time,
    /// The record's index (its line, from 0), from the decision's position.
    index: Option<usize>,
    event_id: String,
}

/// A risk decision: when, the entity and its value, and the event it names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RiskHit {
    ts: Time,
    entity: String,
    value: String,
    event_id: String,
}

/// The `threat` decisions naming `rule`, in time order.
fn hits_of(decisions: &[Decision], rule: &str) -> Vec<Hit> {
    let mut hits: Vec<Hit> = decisions
        .iter()
        .filter(|d| d.verdict == Verdict::Threat && d.rules.iter().any(|r| r == rule))
        .map(|d| Hit { ts: d.ts, index: record_index(d.position.as_ref()), event_id: d.event_id.clone() })
        .collect();
    hits.sort();
    hits
}

/// The `risk` decisions, in time order.
fn risk_hits(decisions: &[Decision]) -> Vec<RiskHit> {
    let mut hits: Vec<RiskHit> = decisions
        .iter()
        .filter(|d| d.verdict == Verdict::Risk)
        .filter_map(|d| {
            let risk = d.risk.as_ref()?;
            Some(RiskHit { ts: d.ts, entity: risk.entity.clone(), value: risk.value.clone(), event_id: d.event_id.clone() })
        })
        .collect();
    hits.sort();
    hits
}

/// A record's 0-based index in a case's input: its line (positions count lines from 1).
fn record_index(position: Option<&Position>) -> Option<usize> {
    position.and_then(|p| usize::try_from(p.record.checked_sub(1)?).ok())
}

/// `event N` for a record's position.
fn describe_record(position: Option<&Position>) -> String {
    match record_index(position) {
        Some(index) => format!("event {index}"),
        None => "an event".to_string(),
    }
}

/// A time as RFC 3339 and as ms.
fn show_time(ts: Time) -> String {
    format!("{} ({ts})", rfc3339(ts))
}

/// ` at TIME` for an expectation with a time, ` (at any time)` for one without.
fn expected_time(ts: Option<Time>) -> String {
    ts.map_or_else(|| " (at any time)".to_string(), |ts| format!(" at {}", show_time(ts)))
}

impl ExpectedHit {
    fn matches(&self, hit: &Hit) -> bool {
        let event = match &self.event {
            EventRef::Index(index) => hit.index == Some(*index),
            EventRef::Id(id) => hit.event_id == *id,
        };
        event && self.ts.is_none_or(|ts| ts == hit.ts)
    }
}

impl ExpectedRisk {
    fn matches(&self, hit: &RiskHit) -> bool {
        self.entity == hit.entity && self.value == hit.value && self.ts.is_none_or(|ts| ts == hit.ts)
    }
}

impl fmt::Display for ExpectedHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.event {
            EventRef::Index(index) => write!(f, "event {index}{}", expected_time(self.ts)),
            EventRef::Id(id) => write!(f, "event {id:?}{}", expected_time(self.ts)),
        }
    }
}

impl fmt::Display for Hit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(index) => write!(f, "event {index} (id {:?}) at {}", self.event_id, show_time(self.ts)),
            None => write!(f, "event {:?} at {}", self.event_id, show_time(self.ts)),
        }
    }
}

impl fmt::Display for ExpectedRisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}{}", self.entity, self.value, expected_time(self.ts))
    }
}

impl fmt::Display for RiskHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} at {} (event {:?})", self.entity, self.value, show_time(self.ts), self.event_id)
    }
}

/// What differs between the expected and the actual, a line each: `missing: ...` for an
/// expectation nothing meets, `unexpected: ...` for what no expectation names, and then what
/// happened. Nothing when they agree.
fn differences<E: fmt::Display, A: fmt::Display>(
    expected: &[E],
    actual: &[A],
    matches: impl Fn(&E, &A) -> bool,
    timed: impl Fn(&E) -> bool,
    what: &str,
) -> Vec<String> {
    let (missing, unexpected) = pair_up(expected, actual, matches, timed);
    if missing.is_empty() && unexpected.is_empty() {
        return Vec::new();
    }
    let mut lines: Vec<String> = missing.iter().map(|e| format!("missing:    {e}")).collect();
    lines.extend(unexpected.iter().map(|a| format!("unexpected: {a}")));
    let happened: Vec<String> = actual.iter().map(ToString::to_string).collect();
    lines.push(format!("{what}: {}", if happened.is_empty() { "none".to_string() } else { happened.join("; ") }));
    lines
}

/// Pairs each expectation with an actual one it matches, each actual one used once (the
/// expectations with a time first, being the more specific); returns the expectations left
/// unmet and the actual ones left unnamed.
fn pair_up<'a, E, A>(expected: &'a [E], actual: &'a [A], matches: impl Fn(&E, &A) -> bool, timed: impl Fn(&E) -> bool) -> (Vec<&'a E>, Vec<&'a A>) {
    let mut taken = vec![false; actual.len()];
    let mut missing = Vec::new();
    let in_order = expected.iter().filter(|e| timed(*e)).chain(expected.iter().filter(|e| !timed(*e)));
    for e in in_order {
        match (0..actual.len()).find(|&i| !taken[i] && matches(e, &actual[i])) {
            Some(i) => taken[i] = true,
            None => missing.push(e),
        }
    }
    let unexpected = actual.iter().zip(&taken).filter(|(_, taken)| !**taken).map(|(a, _)| a).collect();
    (missing, unexpected)
}

// ---------------------------------------------------------------------------------------------
// Reporting.

/// How a case ended.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Passed,
    /// It ran, and what it detected differs from what it expects (a line each).
    Failed(Vec<String>),
    /// It could not run: the case does not parse, its rule is not loaded, its job failed.
    Error(String),
}

impl Outcome {
    fn passed(&self) -> bool {
        *self == Outcome::Passed
    }
}

/// A case's result.
#[derive(Clone, Debug)]
struct CaseResult {
    suite: PathBuf,
    origin: PathBuf,
    rule: String,
    name: String,
    elapsed: Duration,
    outcome: Outcome,
}

impl CaseResult {
    /// A case that could not be read.
    fn broken(origin: &Path, suite: &Path, rule: &str, name: &str, why: String) -> CaseResult {
        CaseResult {
            suite: suite.to_path_buf(),
            origin: origin.to_path_buf(),
            rule: rule.to_string(),
            name: name.to_string(),
            elapsed: Duration::ZERO,
            outcome: Outcome::Error(why),
        }
    }

    /// One line for the failure (the JUnit message).
    fn summary(&self) -> String {
        match &self.outcome {
            Outcome::Passed => String::new(),
            Outcome::Failed(problems) => {
                let count = |prefix: &str| problems.iter().filter(|p| p.starts_with(prefix)).count();
                format!("{} missing, {} unexpected, {} rejected", count("missing:"), count("unexpected:"), count("rejected:"))
            }
            Outcome::Error(why) => why.lines().next().unwrap_or_default().to_string(),
        }
    }

    /// The whole story of a failure.
    fn detail(&self) -> String {
        match &self.outcome {
            Outcome::Passed => String::new(),
            Outcome::Failed(problems) => problems.join("\n"),
            Outcome::Error(why) => why.clone(),
        }
    }
}

/// `ok` or `FAILED`, the rule and the case; for a failure, where it is written and what differs.
fn print_result(result: &CaseResult) {
    if result.outcome.passed() {
        println!("ok      {}: {}", result.rule, result.name);
        return;
    }
    println!("FAILED  {}: {}  ({})", result.rule, result.name, result.origin.display());
    for line in result.detail().lines() {
        println!("          {line}");
    }
}

/// The results as JUnit XML: a `testsuite` per rule file, a `testcase` per case (named `RULE ID:
/// CASE NAME`, its class the rule file), with a `failure` (the differences) or an `error` (it
/// could not run).
fn junit_xml(results: &[CaseResult], elapsed: Duration) -> String {
    let mut suites: BTreeMap<&Path, Vec<&CaseResult>> = BTreeMap::new();
    for result in results {
        suites.entry(result.suite.as_path()).or_default().push(result);
    }
    let all: Vec<&CaseResult> = results.iter().collect();
    let (failures, errors) = failures_and_errors(&all);
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    xml.push_str(&format!(
        "<testsuites name=\"threatflow test\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{:.3}\">\n",
        all.len(),
        elapsed.as_secs_f64()
    ));
    for (suite, cases) in &suites {
        let suite = xml_attribute(&suite.display().to_string());
        let time: f64 = cases.iter().map(|c| c.elapsed.as_secs_f64()).sum();
        let (failures, errors) = failures_and_errors(cases);
        xml.push_str(&format!(
            "  <testsuite name=\"{suite}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{time:.3}\">\n",
            cases.len()
        ));
        for case in cases {
            xml.push_str(&testcase_xml(case, &suite));
        }
        xml.push_str("  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}

/// A case's `testcase` element (named `RULE ID: CASE NAME`, its class `suite`, already escaped),
/// with a `failure` or an `error` when it did not pass.
fn testcase_xml(case: &CaseResult, suite: &str) -> String {
    let name = xml_attribute(&format!("{}: {}", case.rule, case.name));
    let head = format!("    <testcase name=\"{name}\" classname=\"{suite}\" time=\"{:.3}\"", case.elapsed.as_secs_f64());
    let element = match &case.outcome {
        Outcome::Passed => return format!("{head}/>\n"),
        Outcome::Failed(_) => "failure",
        Outcome::Error(_) => "error",
    };
    format!(
        "{head}>\n      <{element} message=\"{}\">{}</{element}>\n    </testcase>\n",
        xml_attribute(&case.summary()),
        xml_text(&format!("{}\n{}", case.origin.display(), case.detail()))
    )
}

/// How many cases failed (ran, and differ) and how many could not run.
fn failures_and_errors(cases: &[&CaseResult]) -> (usize, usize) {
    let failures = cases.iter().filter(|c| matches!(c.outcome, Outcome::Failed(_))).count();
    let errors = cases.iter().filter(|c| matches!(c.outcome, Outcome::Error(_))).count();
    (failures, errors)
}

/// Text escaped for XML 1.0 content: the markup characters as entities, and the characters XML 1.0
/// cannot hold at all (control characters but tab, line feed, carriage return) as U+FFFD.
///
/// ```
/// use threatflow::cli::rule_tests::xml_text;
/// assert_eq!(xml_text("a < b && \"c\"\u{1}"), "a &lt; b &amp;&amp; &quot;c&quot;\u{FFFD}");
/// ```
pub fn xml_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Text escaped for an XML attribute: as [`xml_text`], with tab and line breaks as character
/// references (a parser would turn them into spaces).
pub fn xml_attribute(text: &str) -> String {
    xml_text(text).replace('\t', "&#9;").replace('\n', "&#10;").replace('\r', "&#13;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::sigma::Placeholders;

    fn case(yaml: &str) -> Result<TestCase> {
        let value: Value = serde_norway::from_str(yaml)?;
        parse_case("r1", &value, Path::new("rules/r.tests.yml"), Path::new("rules/r.yml"))
    }

    fn hit(ts: Time, index: usize, id: &str) -> Hit {
        Hit { ts, index: Some(index), event_id: id.to_string() }
    }

    #[test]
    fn a_case_parses_with_its_defaults_and_short_forms() {
        let parsed = case(
            "name: fires\nevents:\n  - {eventName: ConsoleLogin}\n  - {eventName: ConsoleLogin, eventID: e-2}\n\
             expect:\n  - 0\n  - e-2\n  - {event: 1, ts: 2024-08-02T08:53:24Z}\n  - {event: 0, ts: 1722588804000}\n",
        )
        .unwrap();
        assert_eq!((parsed.rule.as_str(), parsed.name.as_str(), parsed.format.as_str()), ("r1", "fires", "auto"));
        assert_eq!(parsed.suite, Path::new("rules/r.yml"));
        let expect = parsed.expect.unwrap();
        assert_eq!(
            expect,
            [
                ExpectedHit { event: EventRef::Index(0), ts: None },
                ExpectedHit { event: EventRef::Id("e-2".into()), ts: None },
                ExpectedHit { event: EventRef::Index(1), ts: Some(1_722_588_804_000) },
                ExpectedHit { event: EventRef::Index(0), ts: Some(1_722_588_804_000) },
            ]
        );
        assert_eq!(parsed.expect_risk, None);
        let with_risk = case("name: r\nformat: aws.cloudtrail\nfile: t.jsonl\nrisk: {threshold: 100, window: 1h, entities: [user]}\nexpect_risk: [{entity: user, value: ann}]\n").unwrap();
        assert_eq!(with_risk.input, CaseInput::File("t.jsonl".into()));
        assert_eq!(with_risk.risk.unwrap().entities.unwrap(), ["user"]);
        assert_eq!(with_risk.expect_risk.unwrap(), [ExpectedRisk { entity: "user".into(), value: "ann".into(), ts: None }]);
    }

    #[test]
    fn a_bad_case_says_why() {
        let why = |yaml: &str| format!("{:#}", case(yaml).unwrap_err());
        assert!(why("name: x\nevents: []\nexpcet: []\n").contains("unknown field `expcet`"));
        assert!(why("name: x\nevents: []\n").contains("needs `expect`"));
        assert!(why("name: x\nexpect: []\n").contains("needs `events`"));
        assert!(why("name: x\nevents: []\nfile: f\nexpect: []\n").contains("not both"));
        assert!(why("name: x\nevents: [{a: 1}]\nexpect: [3]\n").contains("event 3 is past the case's 1 event(s)"));
        assert!(why("name: x\nevents: [{a: 1}]\nexpect: [{event: 0, at: 5}]\n").contains("unknown key `at`"));
        assert!(why("name: x\nevents: [{a: 1}]\nexpect: [{event: 0, ts: yesterday}]\n").contains("expect[0]"));
        assert!(why("name: x\nevents: [{a: 1}]\nexpect_risk: []\n").contains("needs `risk`"));
    }

    #[test]
    fn differences_name_what_is_missing_and_what_is_unexpected() {
        let expected = [
            ExpectedHit { event: EventRef::Index(3), ts: Some(2_000) },
            ExpectedHit { event: EventRef::Id("b".into()), ts: None },
            ExpectedHit { event: EventRef::Index(5), ts: None },
        ];
        let actual = [hit(1_000, 1, "b"), hit(2_000, 3, "c"), hit(4_000, 4, "d")];
        let lines = differences(&expected, &actual, ExpectedHit::matches, |e| e.ts.is_some(), "detections");
        assert_eq!(lines[0], "missing:    event 5 (at any time)");
        assert_eq!(lines[1], "unexpected: event 4 (id \"d\") at 1970-01-01T00:00:04.000Z (4000)");
        assert!(lines[2].starts_with("detections: event 1 (id \"b\")"), "{lines:?}");
        assert_eq!(lines.len(), 3);
        // The same detections in another order, and a time that pins one of two: no difference.
        let two = [hit(1_000, 0, "a"), hit(2_000, 0, "a")];
        let expected = [ExpectedHit { event: EventRef::Index(0), ts: None }, ExpectedHit { event: EventRef::Index(0), ts: Some(1_000) }];
        assert!(differences(&expected, &two, ExpectedHit::matches, |e| e.ts.is_some(), "d").is_empty());
        // Nothing expected and nothing found: no difference; something found: unexpected.
        assert!(differences::<ExpectedHit, Hit>(&[], &[], ExpectedHit::matches, |e| e.ts.is_some(), "d").is_empty());
        assert_eq!(differences(&[], &two[..1], ExpectedHit::matches, |e| e.ts.is_some(), "d").len(), 2);
    }

    #[test]
    fn records_become_one_line_each() {
        let events: Vec<Value> = serde_norway::from_str("- {a: 1, b: [x]}\n- '2 123 eni-1 ACCEPT OK'\n").unwrap();
        assert_eq!(String::from_utf8(events_as_lines(&events).unwrap()).unwrap(), "{\"a\":1,\"b\":[\"x\"]}\n2 123 eni-1 ACCEPT OK\n");
        assert!(events_as_lines(&[Value::String("a\nb".into())]).is_err());
        let position = Position { source: "memory:0".into(), record: 3, offset: 40 };
        assert_eq!(record_index(Some(&position)), Some(2));
    }

    #[test]
    fn junit_counts_and_escapes() {
        let result = |rule: &str, outcome: Outcome| CaseResult {
            suite: PathBuf::from("rules/a&b.yml"),
            origin: PathBuf::from("rules/a&b.yml"),
            rule: rule.to_string(),
            name: "case <1>".to_string(),
            elapsed: Duration::from_millis(5),
            outcome,
        };
        let results = [
            result("r1", Outcome::Passed),
            result("r2", Outcome::Failed(vec!["missing:    event 0 (at any time)".into(), "the rule's detections: none".into()])),
            result("r3", Outcome::Error("no rule with the id \"r3\" is loaded".into())),
        ];
        let xml = junit_xml(&results, Duration::from_secs(1));
        assert!(xml.contains("<testsuites name=\"threatflow test\" tests=\"3\" failures=\"1\" errors=\"1\" time=\"1.000\">"), "{xml}");
        assert!(xml.contains("<testsuite name=\"rules/a&amp;b.yml\" tests=\"3\" failures=\"1\" errors=\"1\""), "{xml}");
        assert!(xml.contains("<testcase name=\"r1: case &lt;1&gt;\" classname=\"rules/a&amp;b.yml\" time=\"0.005\"/>"), "{xml}");
        assert!(xml.contains("<failure message=\"1 missing, 0 unexpected, 0 rejected\">rules/a&amp;b.yml\nmissing:    event 0"), "{xml}");
        assert!(xml.contains("<error message=\"no rule with the id &quot;r3&quot; is loaded\">"), "{xml}");
        assert_eq!(xml_attribute("a\nb\t"), "a&#10;b&#9;");
    }

    #[test]
    fn tests_files_are_found_beside_their_rules() {
        let dir = tempfile::tempdir().unwrap();
        let rule = "title: t\nid: r1\nlogsource: {product: aws}\ndetection:\n  s: {a: 1}\n  condition: s\n";
        std::fs::write(dir.path().join("r.yml"), format!("{rule}tests:\n  - {{name: inline, events: [{{a: 1}}], expect: [0]}}\n")).unwrap();
        std::fs::write(dir.path().join("r.tests.yml"), "r1:\n  - {name: beside, events: [{a: 2}], expect: []}\n  - {name: broken, events: []}\n").unwrap();
        std::fs::write(dir.path().join("other.tests.yaml"), "r2: [{name: alone, events: [], expect: []}]\n").unwrap();
        let found = discover(dir.path()).unwrap();
        let labels: Vec<(String, PathBuf)> = found
            .iter()
            .map(|d| match d {
                Discovered::Case(c) => (d.label(), c.suite.strip_prefix(dir.path()).unwrap().to_path_buf()),
                Discovered::Broken(b) => (format!("broken {}", d.label()), b.suite.strip_prefix(dir.path()).unwrap().to_path_buf()),
            })
            .collect();
        assert_eq!(
            labels,
            [
                ("r2: alone".to_string(), PathBuf::from("other.tests.yaml")),
                ("r1: beside".to_string(), PathBuf::from("r.yml")),
                ("broken r1: broken".to_string(), PathBuf::from("r.yml")),
                ("r1: inline".to_string(), PathBuf::from("r.yml")),
            ]
        );
        // The tests files are not rules; the rule with a `tests:` key still parses.
        let (rules, refused) = crate::detect::sigma::read_dir(dir.path(), &Placeholders::new()).unwrap();
        assert_eq!((rules.len(), refused.len()), (1, 0), "{refused:?}");
    }
}
