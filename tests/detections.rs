//! Oracles for new-terms rules and entity risk (issue 19; docs/semantics.md#new-terms-rules and
//! #entity-risk). Logs generated from seeds (few users and values, so that combinations repeat;
//! many events in one millisecond; events behind the watermark, judged at it) are replayed with
//! threshold rules that change mid-stream, and the decisions must be those of a brute-force
//! reading of the log written here from the documentation alone: judged times, the rules in force
//! at each, first sightings within each rule's history, each decision's risk score, and each
//! entity's risk decisions. On one and two workers (byte-identical), and after `kill -9` followed
//! by a restore from a checkpoint (byte-identical to the uninterrupted run). Hand-worked scenarios
//! pin the corner cases down independently of the oracle, and the oracle is checked against them
//! too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{checkpoint_files, lines, ok, random, threatflow};

/// Where the logs start (November 2023: far behind any `--max-future-skew` bound).
/// A combination: rule id, field names, values.
type Combination = (String, Vec<String>, Vec<String>);
/// A contribution to an entity's risk, with the contributing event's address.
type Contributed = (Contribution, Option<String>);
/// A hand-worked new-terms row: event id, judged time (offset), late, hit.
type NewTermsRow = (&'static str, u64, bool, bool);
/// A hand-worked risk row: entity, value, time, event, score, contributing events.
type RiskRow = (&'static str, &'static str, u64, &'static str, u64, Vec<&'static str>);
/// A risk decision as compared: entity, value, time, event, score, contributing events.
type RiskDecision = (String, String, u64, String, u64, Vec<String>);

const BASE: u64 = 1_700_000_000_000;
/// `--allowed-lateness 5s`.
const LATENESS: u64 = 5_000;
/// `--risk-window 10m`.
const RISK_WINDOW: u64 = 600_000;
/// `--risk-threshold` of the generated logs: an entity reaches it in about a third of the
/// ten-minute windows (see the counts the oracle test prints).
const RISK_THRESHOLD: u64 = 300;

// ------------------------------------------------------------------------------------------------
// Events and rules, and how they are written.
// ------------------------------------------------------------------------------------------------

/// A canonical event (docs/semantics.md#fields).
#[derive(Clone, Debug)]
struct Event {
    id: String,
    ts: u64,
    user: String,
    action: String,
    src_ip: Option<String>,
    country: Option<String>,
    user_agent: Option<String>,
    /// Write an absent `src_ip` or `user_agent` as `null` (the same as absent) instead of leaving it out.
    nulls: bool,
}

impl Event {
    fn new(id: &str, ts: u64, user: &str, action: &str) -> Event {
        Event {
            id: id.to_string(),
            ts,
            user: user.to_string(),
            action: action.to_string(),
            src_ip: None,
            country: None,
            user_agent: None,
            nulls: false,
        }
    }

    fn ip(mut self, ip: &str) -> Event {
        self.src_ip = Some(ip.to_string());
        self
    }

    fn country(mut self, country: &str) -> Event {
        self.country = Some(country.to_string());
        self
    }

    /// A field's text as rules read it.
    fn field(&self, name: &str) -> Option<&str> {
        match name {
            "event_id" => Some(&self.id),
            "user" => Some(&self.user),
            "action" => Some(&self.action),
            "src_ip" => self.src_ip.as_deref(),
            "country" => self.country.as_deref(),
            "user_agent" => self.user_agent.as_deref(),
            other => panic!("the oracle does not know the field {other}"),
        }
    }

    fn json(&self) -> String {
        let mut record = serde_json::Map::new();
        record.insert("event_id".into(), json!(self.id));
        record.insert("ts".into(), json!(self.ts));
        record.insert("user".into(), json!(self.user));
        record.insert("action".into(), json!(self.action));
        for (name, value) in [("src_ip", &self.src_ip), ("country", &self.country), ("user_agent", &self.user_agent)] {
            match value {
                Some(value) => {
                    record.insert(name.into(), json!(value));
                }
                None if self.nulls && name != "country" => {
                    record.insert(name.into(), Value::Null);
                }
                None => {}
            }
        }
        Value::Object(record).to_string()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Severity {
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    fn name(self) -> &'static str {
        ["informational", "low", "medium", "high", "critical"][self as usize]
    }

    /// What a detection of this severity adds to risk when its rule gives no `risk_score`.
    fn score(self) -> u64 {
        [5, 15, 25, 50, 90][self as usize]
    }
}

#[derive(Clone, Debug)]
struct NewTerms {
    fields: Vec<String>,
    history: u64,
    learning: u64,
}

/// A threshold-rule update (docs/semantics.md#threshold-rules), with the new keys.
#[derive(Clone, Debug)]
struct Rule {
    id: String,
    effective_from: u64,
    remove: bool,
    title: Option<String>,
    when: Vec<(String, Vec<String>)>,
    severity: Option<Severity>,
    risk_score: Option<u32>,
    new_terms: Option<NewTerms>,
    /// Write `history` and `learning` as durations (`20m`) rather than milliseconds.
    text_durations: bool,
}

impl Rule {
    fn new(id: &str, effective_from: u64) -> Rule {
        Rule {
            id: id.to_string(),
            effective_from,
            remove: false,
            title: None,
            when: Vec::new(),
            severity: None,
            risk_score: None,
            new_terms: None,
            text_durations: false,
        }
    }

    fn removal(id: &str, effective_from: u64) -> Rule {
        Rule { remove: true, ..Rule::new(id, effective_from) }
    }

    fn title(mut self, title: &str) -> Rule {
        self.title = Some(title.to_string());
        self
    }

    fn when(mut self, field: &str, values: &[&str]) -> Rule {
        self.when.push((field.to_string(), values.iter().map(|v| v.to_string()).collect()));
        self
    }

    fn severity(mut self, severity: Severity) -> Rule {
        self.severity = Some(severity);
        self
    }

    fn risk(mut self, score: u32) -> Rule {
        self.risk_score = Some(score);
        self
    }

    fn new_terms(mut self, fields: &[&str], history: u64, learning: u64) -> Rule {
        self.new_terms = Some(NewTerms { fields: fields.iter().map(|f| f.to_string()).collect(), history, learning });
        self
    }

    fn text_durations(mut self) -> Rule {
        self.text_durations = true;
        self
    }

    fn severity_or_default(&self) -> Severity {
        self.severity.unwrap_or(Severity::Medium)
    }

    /// What a match adds to risk.
    fn score(&self) -> u64 {
        self.risk_score.map_or(self.severity_or_default().score(), u64::from)
    }

    /// Whether the rule's `when` chooses the event (every listed field present with a listed value).
    fn chooses(&self, event: &Event) -> bool {
        self.when.iter().all(|(field, values)| event.field(field).is_some_and(|v| values.iter().any(|w| w == v)))
    }

    fn json(&self) -> String {
        let mut rule = serde_json::Map::new();
        rule.insert("id".into(), json!(self.id));
        if self.effective_from != 0 {
            rule.insert("effective_from".into(), json!(self.effective_from));
        }
        if self.remove {
            rule.insert("remove".into(), json!(true));
            return Value::Object(rule).to_string();
        }
        if let Some(title) = &self.title {
            rule.insert("title".into(), json!(title));
        }
        if !self.when.is_empty() {
            let when: serde_json::Map<String, Value> = self.when.iter().map(|(f, v)| (f.clone(), json!(v))).collect();
            rule.insert("when".into(), Value::Object(when));
        }
        if let Some(severity) = self.severity {
            rule.insert("severity".into(), json!(severity.name()));
        }
        if let Some(score) = self.risk_score {
            rule.insert("risk_score".into(), json!(score));
        }
        if let Some(new_terms) = &self.new_terms {
            let duration = |ms: u64| if self.text_durations { json!(duration_text(ms)) } else { json!(ms) };
            let mut block = serde_json::Map::new();
            block.insert("fields".into(), json!(new_terms.fields));
            block.insert("history".into(), duration(new_terms.history));
            if new_terms.learning != 0 {
                block.insert("learning".into(), duration(new_terms.learning));
            }
            rule.insert("new_terms".into(), Value::Object(block));
        }
        Value::Object(rule).to_string()
    }
}

/// `20m`, `1h`, `90s`: how a person writes a duration.
fn duration_text(ms: u64) -> String {
    match ms {
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

/// Writes the log (one file: one partition) and the rules (JSON lines, or a YAML list of flow
/// mappings); returns their paths.
fn write_inputs(dir: &Path, name: &str, events: &[Event], rules: &[Rule], yaml: bool) -> (PathBuf, PathBuf) {
    let input = dir.join(format!("{name}-events.jsonl"));
    std::fs::write(&input, events.iter().map(|e| e.json() + "\n").collect::<String>()).unwrap();
    let rules_file = dir.join(format!("{name}-rules.{}", if yaml { "yaml" } else { "jsonl" }));
    let prefix = if yaml { "- " } else { "" };
    std::fs::write(&rules_file, rules.iter().map(|r| format!("{prefix}{}\n", r.json())).collect::<String>()).unwrap();
    (input, rules_file)
}

// ------------------------------------------------------------------------------------------------
// Generated logs.
// ------------------------------------------------------------------------------------------------

/// `count` events of 8 users from `seed`: 40 % in the previous event's millisecond (half of them
/// by the same user), 45 % up to 20 s later, 6 % behind the greatest time read but within the
/// lateness, 2 % exactly at the watermark (on time), 7 % late by up to 20 minutes (judged at the
/// watermark). Each user mostly logs in from one country, address and user agent.
fn generate(seed: u64, count: usize) -> Vec<Event> {
    const COUNTRIES: [&str; 6] = ["US", "DE", "FR", "BR", "JP", "IN"];
    const AGENTS: [&str; 4] = ["Mozilla/5.0 (Windows NT 10.0; Win64; x64)", "Mozilla/5.0 (Macintosh)", "okhttp/4.12.0", "curl/8.4.0"];
    const ADDRESSES: [&str; 8] = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "198.51.100.7", "203.0.113.9"];
    const ACTIONS: [(&str, u64); 6] = [("login", 35), ("login_failed", 10), ("download", 20), ("delete", 8), ("share_external", 12), ("upload", 15)];
    let mut rng = random(seed);
    let mut next = move |n: u64| rng.next().unwrap() % n;
    // The greatest time read so far (every event that moves it is on time).
    let mut clock = BASE;
    let mut previous_user = 0;
    let mut events = Vec::with_capacity(count);
    for i in 0..count {
        let kind = if i == 0 { 50 } else { next(100) };
        let ts = match kind {
            0..=39 => clock,
            40..=84 => {
                clock += 1 + next(20_000);
                clock
            }
            85..=90 => clock - next(LATENESS),
            91..=92 => clock - LATENESS,
            _ => clock - LATENESS - 1 - next(1_200_000),
        };
        let user = if kind < 40 && next(2) == 0 { previous_user } else { next(8) as usize };
        previous_user = user;
        let mut pick = next(100);
        let mut action = ACTIONS[0].0;
        for (name, weight) in ACTIONS {
            if pick < weight {
                action = name;
                break;
            }
            pick -= weight;
        }
        let mut event = Event::new(&format!("e{:03x}-{i:05}", next(4096)), ts, &format!("user{user}@example.com"), action);
        event.country = match next(100) {
            0..=3 => None,
            4..=79 => Some(COUNTRIES[user % 4].to_string()),
            _ => Some(COUNTRIES[next(6) as usize].to_string()),
        };
        event.user_agent = match next(100) {
            0..=3 => None,
            4..=87 => Some(AGENTS[user % 3].to_string()),
            _ => Some(AGENTS[next(4) as usize].to_string()),
        };
        event.src_ip = match next(100) {
            0..=9 => None,
            10..=77 => Some(ADDRESSES[user % 6].to_string()),
            _ => Some(ADDRESSES[next(8) as usize].to_string()),
        };
        event.nulls = next(2) == 0;
        events.push(event);
    }
    events
}

/// The rules of a generated log: new-terms rules whose history, filter, fields, scores change
/// mid-stream or that are removed; threshold rules that add risk, replaced, added and removed.
fn rules_for(events: &[Event]) -> Vec<Rule> {
    use Severity::*;
    let end = events.iter().map(|e| e.ts).max().unwrap();
    let at = |fraction: f64| BASE + ((end - BASE) as f64 * fraction) as u64;
    let movements = ["download", "share_external", "upload"];
    vec![
        Rule::new("nt-country", BASE)
            .title("First login from this country for this user")
            .when("action", &["login", "login_failed"])
            .new_terms(&["user", "country"], 1_200_000, 120_000)
            .severity(Low)
            .text_durations(),
        // The same fields: the remembered combinations stay; a shorter history, a narrower filter,
        // another severity and score.
        Rule::new("nt-country", at(0.3)).when("action", &["login"]).new_terms(&["user", "country"], 600_000, 0).severity(Medium).risk(12),
        Rule::removal("nt-country", at(0.75)),
        // From time 0 (`effective_from` left out), every event.
        Rule::new("nt-agent", 0).new_terms(&["user", "user_agent"], 600_000, 0).risk(7),
        // Other fields: a fresh history (its learning counts from the id's first observation, long past).
        Rule::new("nt-agent", at(0.5)).new_terms(&["user", "src_ip"], 900_000, 60_000).severity(Low).risk(9).text_durations(),
        Rule::new("nt-movement", BASE).when("action", &movements).new_terms(&["src_ip", "country", "action"], 300_000, 0).severity(High).text_durations(),
        // A longer history from here on (earlier observations keep theirs).
        Rule::new("nt-movement", at(0.4)).when("action", &movements).new_terms(&["src_ip", "country", "action"], 3_600_000, 0).severity(High),
        Rule::new("delete", 0).when("action", &["delete"]).risk(30),
        Rule::new("share-jp", 0).title("External share from Japan").when("action", &["share_external"]).when("country", &["JP"]).severity(High),
        Rule::new("failed", 0).when("action", &["login_failed"]).severity(Informational),
        Rule::new("failed", at(0.5)).when("action", &["login_failed"]).when("country", &["BR", "JP"]),
        Rule::new("curl", at(0.25)).when("user_agent", &["curl/8.4.0"]).severity(Critical),
        Rule::removal("curl", at(0.8)),
    ]
}

// ------------------------------------------------------------------------------------------------
// The oracle: a brute-force reading of docs/semantics.md.
// ------------------------------------------------------------------------------------------------

/// A `threat` decision, as far as these tests compare it.
#[derive(Clone, Debug, PartialEq)]
struct Threat {
    decision_id: String,
    event_id: String,
    user: String,
    src_ip: Option<String>,
    ts: u64,
    late: bool,
    event_ts: Option<u64>,
    rules: Vec<String>,
    groups: Vec<(String, String)>,
    severity: String,
    risk_score: u64,
}

/// One detection in a risk decision.
#[derive(Clone, Debug, PartialEq)]
struct Contribution {
    decision_id: String,
    event_id: String,
    user: String,
    ts: u64,
    rules: Vec<String>,
    score: u64,
}

/// A `risk` decision.
#[derive(Clone, Debug, PartialEq)]
struct Risk {
    decision_id: String,
    entity: String,
    value: String,
    ts: u64,
    event_id: String,
    user: String,
    src_ip: Option<String>,
    score: u64,
    threshold: u64,
    window: u64,
    contributions: Vec<Contribution>,
}

/// What the generated logs exercised (so that a passing test shows something).
#[derive(Debug, Default)]
struct Stats {
    events: usize,
    late_events: usize,
    threats: usize,
    late_threats: usize,
    /// Hits per rule id and fields.
    hits: BTreeMap<String, usize>,
    late_hits: usize,
    /// Hits of a combination observed by several events in its millisecond.
    tied_hits: usize,
    /// ... where the hitting event (the smallest id) was not the first of them in the file.
    tied_hits_not_first_read: usize,
    /// First sightings in a learning period (observed, no hit).
    learning_silenced: usize,
    /// Observations of a combination already remembered (no hit).
    remembered: usize,
    /// Risk decisions per entity.
    risk: BTreeMap<String, usize>,
    /// Times an entity's risk reached the threshold within a window of its previous risk decision.
    risk_suppressed: usize,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        self.events += other.events;
        self.late_events += other.late_events;
        self.threats += other.threats;
        self.late_threats += other.late_threats;
        for (k, v) in &other.hits {
            *self.hits.entry(k.clone()).or_default() += v;
        }
        self.late_hits += other.late_hits;
        self.tied_hits += other.tied_hits;
        self.tied_hits_not_first_read += other.tied_hits_not_first_read;
        self.learning_silenced += other.learning_silenced;
        self.remembered += other.remembered;
        for (k, v) in &other.risk {
            *self.risk.entry(k.clone()).or_default() += v;
        }
        self.risk_suppressed += other.risk_suppressed;
    }
}

struct Expected {
    threats: Vec<Threat>,
    risks: Vec<Risk>,
    stats: Stats,
}

/// Lowercase hex of xxh3-128 over the parts joined by 0x00 (docs/semantics.md#decision-record).
fn xxh3_hex(parts: &[&[u8]]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&parts.join(&0u8)))
}

/// Each event's judged time and lateness, in file order: the partition's watermark is the
/// greatest `ts` of the on-time events read before it minus the lateness (0 before any event);
/// an event below it is late and judged at it (docs/semantics.md#watermarks-and-lateness).
fn judged_times(events: &[Event]) -> Vec<(u64, bool)> {
    let mut max_ts: Option<u64> = None;
    events
        .iter()
        .map(|event| {
            let watermark = max_ts.map_or(0, |m| m.saturating_sub(LATENESS));
            if event.ts < watermark {
                (watermark, true)
            } else {
                max_ts = Some(max_ts.map_or(event.ts, |m| m.max(event.ts)));
                (event.ts, false)
            }
        })
        .collect()
}

/// The rules in force at `t`: per id, the update with the greatest `effective_from <= t` (the
/// later line on a tie), unless it is a removal.
fn rules_in_force(rules: &[Rule], t: u64) -> Vec<&Rule> {
    let mut latest: BTreeMap<&str, &Rule> = BTreeMap::new();
    for rule in rules.iter().filter(|r| r.effective_from <= t) {
        if latest.get(rule.id.as_str()).is_none_or(|seen| seen.effective_from <= rule.effective_from) {
            latest.insert(&rule.id, rule);
        }
    }
    latest.into_values().filter(|r| !r.remove).collect()
}

/// The decisions of `events` under `rules`, with `--risk-threshold threshold` (0: off) and
/// `--risk-window 10m` over users and addresses.
fn oracle(events: &[Event], rules: &[Rule], threshold: u64) -> Expected {
    let mut stats = Stats { events: events.len(), ..Stats::default() };
    let judged = judged_times(events);
    stats.late_events = judged.iter().filter(|(_, late)| *late).count();
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by(|&a, &b| (judged[a].0, &events[a].id).cmp(&(judged[b].0, &events[b].id)));

    // Every millisecond a combination (rule id, fields, values) was observed at, and until when
    // that observation is remembered (exclusive).
    let mut observed: BTreeMap<Combination, Vec<(u64, u64)>> = BTreeMap::new();
    // Per rule id, the judged time of its first observation (under any version): learning counts
    // from it.
    let mut first_observed: BTreeMap<String, u64> = BTreeMap::new();
    let mut threats = Vec::new();
    for millisecond in order.chunk_by(|&a, &b| judged[a].0 == judged[b].0) {
        let t = judged[millisecond[0]].0;
        // Per event of this millisecond: the rules it matched, with a new-terms hit's group.
        let mut matched: BTreeMap<usize, Vec<(&Rule, Option<String>)>> = BTreeMap::new();
        for rule in rules_in_force(rules, t) {
            let Some(new_terms) = &rule.new_terms else {
                for &i in millisecond.iter().filter(|&&i| rule.chooses(&events[i])) {
                    matched.entry(i).or_default().push((rule, None));
                }
                continue;
            };
            let mut combinations: BTreeMap<Vec<String>, Vec<usize>> = BTreeMap::new();
            for &i in millisecond.iter().filter(|&&i| rule.chooses(&events[i])) {
                let values: Option<Vec<String>> = new_terms.fields.iter().map(|f| events[i].field(f).map(str::to_string)).collect();
                if let Some(values) = values {
                    combinations.entry(values).or_default().push(i);
                }
            }
            if !combinations.is_empty() {
                first_observed.entry(rule.id.clone()).or_insert(t);
            }
            for (values, observers) in combinations {
                let history = observed.entry((rule.id.clone(), new_terms.fields.clone(), values.clone())).or_default();
                let remembered = history.iter().rev().any(|&(at, until)| at < t && t < until);
                if remembered {
                    stats.remembered += 1;
                } else if t < first_observed[&rule.id] + new_terms.learning {
                    stats.learning_silenced += 1;
                } else {
                    let first = *observers.iter().min_by_key(|&&i| &events[i].id).unwrap();
                    let group = new_terms.fields.iter().zip(&values).map(|(f, v)| format!("{f}={v}")).collect::<Vec<_>>().join(", ");
                    matched.entry(first).or_default().push((rule, Some(group)));
                    *stats.hits.entry(format!("{}{:?}", rule.id, new_terms.fields)).or_default() += 1;
                    stats.late_hits += usize::from(judged[first].1);
                    if observers.len() > 1 {
                        stats.tied_hits += 1;
                        stats.tied_hits_not_first_read += usize::from(first != *observers.iter().min().unwrap());
                    }
                }
                history.push((t, t + new_terms.history));
            }
        }
        for (i, matches) in matched {
            let event = &events[i];
            let (time, late) = judged[i];
            let mut ids: Vec<String> = matches.iter().map(|(r, _)| r.id.clone()).collect();
            ids.sort();
            ids.dedup();
            let mut groups: Vec<(String, String)> = matches.iter().filter_map(|(r, g)| Some((r.id.clone(), g.clone()?))).collect();
            groups.sort();
            stats.late_threats += usize::from(late);
            threats.push(Threat {
                decision_id: xxh3_hex(&[event.id.as_bytes(), b"threat"]),
                event_id: event.id.clone(),
                user: event.user.clone(),
                src_ip: event.src_ip.clone(),
                ts: time,
                late,
                event_ts: late.then_some(event.ts),
                rules: ids,
                groups,
                severity: matches.iter().map(|(r, _)| r.severity_or_default()).max().unwrap().name().to_string(),
                risk_score: matches.iter().map(|(r, _)| r.score()).sum(),
            });
        }
    }
    stats.threats = threats.len();

    // Entity risk: each threat with a score contributes it to its user and its address at its time.
    let mut risks = Vec::new();
    if threshold > 0 {
        let mut by_entity: BTreeMap<(&str, &str), Vec<Contributed>> = BTreeMap::new();
        for threat in threats.iter().filter(|t| t.risk_score > 0) {
            let contribution = Contribution {
                decision_id: threat.decision_id.clone(),
                event_id: threat.event_id.clone(),
                user: threat.user.clone(),
                ts: threat.ts,
                rules: threat.rules.clone(),
                score: threat.risk_score,
            };
            by_entity.entry(("user", &threat.user)).or_default().push((contribution.clone(), threat.src_ip.clone()));
            if let Some(ip) = &threat.src_ip {
                by_entity.entry(("src_ip", ip)).or_default().push((contribution, threat.src_ip.clone()));
            }
        }
        for ((entity, value), mut contributions) in by_entity {
            contributions.sort_by(|(a, _), (b, _)| (a.ts, &a.decision_id).cmp(&(b.ts, &b.decision_id)));
            let times: BTreeSet<u64> = contributions.iter().map(|(c, _)| c.ts).collect();
            let mut last_raised: Option<u64> = None;
            for t in times {
                // risk(X, t): the contributions at times in (t - window, t].
                let window: Vec<&(Contribution, Option<String>)> = contributions.iter().filter(|(c, _)| c.ts <= t && c.ts + RISK_WINDOW > t).collect();
                let score: u64 = window.iter().map(|(c, _)| c.score).sum();
                if score < threshold {
                    continue;
                }
                // At most one per window: none raised in (t - window, t).
                if last_raised.is_some_and(|l| l + RISK_WINDOW > t) {
                    stats.risk_suppressed += 1;
                    continue;
                }
                last_raised = Some(t);
                let (first, src_ip) = window.iter().filter(|(c, _)| c.ts == t).min_by_key(|entry| entry.0.event_id.clone()).unwrap();
                *stats.risk.entry(entity.to_string()).or_default() += 1;
                risks.push(Risk {
                    decision_id: xxh3_hex(&[entity.as_bytes(), value.as_bytes(), t.to_string().as_bytes(), b"risk"]),
                    entity: entity.to_string(),
                    value: value.to_string(),
                    ts: t,
                    event_id: first.event_id.clone(),
                    user: first.user.clone(),
                    src_ip: src_ip.clone(),
                    score,
                    threshold,
                    window: RISK_WINDOW,
                    contributions: window.iter().map(|(c, _)| c.clone()).collect(),
                });
            }
        }
    }
    Expected { threats, risks, stats }
}

// ------------------------------------------------------------------------------------------------
// Reading the engine's decisions and comparing them with the oracle's.
// ------------------------------------------------------------------------------------------------

fn text(value: &Value, key: &str) -> String {
    value[key].as_str().unwrap_or_else(|| panic!("no string `{key}` in {value}")).to_string()
}

fn number(value: &Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or_else(|| panic!("no number `{key}` in {value}"))
}

fn texts(value: &Value, key: &str) -> Vec<String> {
    let list = value[key].as_array().unwrap_or_else(|| panic!("no list `{key}` in {value}"));
    list.iter().map(|v| v.as_str().unwrap_or_else(|| panic!("`{key}` holds {v} in {value}")).to_string()).collect()
}

fn optional_text(value: &Value, key: &str) -> Option<String> {
    match &value[key] {
        Value::Null => None,
        other => Some(other.as_str().unwrap_or_else(|| panic!("`{key}` is {other} in {value}")).to_string()),
    }
}

/// The threat and risk decisions of an output, and whatever else it holds (problems).
fn parse_decisions(decisions: &[Value]) -> (Vec<Threat>, Vec<Risk>, Vec<String>) {
    let (mut threats, mut risks, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    for d in decisions {
        match d["verdict"].as_str() {
            Some("threat") => threats.push(Threat {
                decision_id: text(d, "decision_id"),
                event_id: text(d, "event_id"),
                user: text(d, "user"),
                src_ip: optional_text(d, "src_ip"),
                ts: number(d, "ts"),
                late: d["late"].as_bool().unwrap_or_else(|| panic!("no `late` in {d}")),
                event_ts: d["event_ts"].as_u64(),
                rules: texts(d, "rules"),
                groups: d["correlation_groups"]
                    .as_array()
                    .unwrap_or_else(|| panic!("no list `correlation_groups` in {d}"))
                    .iter()
                    .map(|g| match g.as_array().map(Vec::as_slice) {
                        Some([rule, group]) => (rule.as_str().unwrap_or_default().to_string(), group.as_str().unwrap_or_default().to_string()),
                        _ => panic!("a correlation group is [rule, group], not {g}, in {d}"),
                    })
                    .collect(),
                severity: text(d, "severity"),
                risk_score: number(d, "risk_score"),
            }),
            Some("risk") => {
                let risk = &d["risk"];
                assert!(risk.is_object(), "a risk decision without `risk`: {d}");
                let contributions = risk["contributions"].as_array().unwrap_or_else(|| panic!("no contributions in {d}"));
                risks.push(Risk {
                    decision_id: text(d, "decision_id"),
                    entity: text(risk, "entity"),
                    value: text(risk, "value"),
                    ts: number(d, "ts"),
                    event_id: text(d, "event_id"),
                    user: text(d, "user"),
                    src_ip: optional_text(d, "src_ip"),
                    score: number(risk, "score"),
                    threshold: number(risk, "threshold"),
                    window: number(risk, "window"),
                    contributions: contributions
                        .iter()
                        .map(|c| Contribution {
                            decision_id: text(c, "decision_id"),
                            event_id: text(c, "event_id"),
                            user: text(c, "user"),
                            ts: number(c, "ts"),
                            rules: texts(c, "rules"),
                            score: number(c, "score"),
                        })
                        .collect(),
                });
                if number(d, "risk_score") != 0 || !d["rules"].as_array().is_none_or(Vec::is_empty) {
                    problems.push(format!("a risk decision has rules or a risk score: {d}"));
                }
            }
            _ => problems.push(format!("a decision the oracle knows nothing of: {d}")),
        }
    }
    (threats, risks, problems)
}

/// A decision as (identity, its fields as `name=value`).
type Row = (String, Vec<String>);

fn threat_row(t: &Threat) -> Row {
    let fields = vec![
        format!("ts={}", t.ts),
        format!("late={}", t.late),
        format!("event_ts={:?}", t.event_ts),
        format!("user={}", t.user),
        format!("src_ip={:?}", t.src_ip),
        format!("rules={:?}", t.rules),
        format!("correlation_groups={:?}", t.groups),
        format!("severity={}", t.severity),
        format!("risk_score={}", t.risk_score),
        format!("decision_id={}", t.decision_id),
    ];
    (format!("threat {}", t.event_id), fields)
}

fn risk_row(r: &Risk) -> Row {
    let contributions: Vec<String> =
        r.contributions.iter().map(|c| format!("(ts={} {} {} score={} {:?} {})", c.ts, c.event_id, c.user, c.score, c.rules, c.decision_id)).collect();
    let fields = vec![
        format!("event_id={}", r.event_id),
        format!("user={}", r.user),
        format!("src_ip={:?}", r.src_ip),
        format!("score={}", r.score),
        format!("threshold={}", r.threshold),
        format!("window={}", r.window),
        format!("decision_id={}", r.decision_id),
        format!("contributions=[{}]", contributions.join(", ")),
    ];
    (format!("risk {}={} at {}", r.entity, r.value, r.ts), fields)
}

/// Asserts that `decisions` (an output, in file order) are the oracle's, in time and then
/// decision-id order; shows the first differences.
fn compare(what: &str, expected: &Expected, decisions: &[Value]) {
    let (threats, risks, mut problems) = parse_decisions(decisions);
    let want: BTreeMap<String, Vec<String>> = expected.threats.iter().map(threat_row).chain(expected.risks.iter().map(risk_row)).collect();
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, row) in threats.iter().map(threat_row).chain(risks.iter().map(risk_row)) {
        if let Some(before) = got.insert(key.clone(), row) {
            problems.push(format!("{key}: written twice (once as {})", before.join(" ")));
        }
    }
    let keys: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    for key in keys {
        match (want.get(key), got.get(key)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => {
                // Only the fields that differ, then the whole decision.
                let differing: Vec<String> =
                    a.iter().zip(b).filter(|(x, y)| x != y).map(|(x, y)| format!("\n    oracle: {x}\n    engine: {y}")).collect();
                problems.push(format!("{key}:{}\n    (oracle's decision: {})", differing.concat(), a.join(" ")));
            }
            (Some(a), None) => problems.push(format!("{key}: missing\n    oracle: {}", a.join(" "))),
            (None, Some(b)) => problems.push(format!("{key}: not expected\n    engine: {}", b.join(" "))),
            (None, None) => unreachable!(),
        }
    }
    let order: Vec<(u64, String)> =
        decisions.iter().map(|d| (d["ts"].as_u64().unwrap_or_default(), d["decision_id"].as_str().unwrap_or_default().to_string())).collect();
    if let Some(at) = order.windows(2).position(|w| w[0] > w[1]) {
        problems.push(format!("decisions out of (ts, decision_id) order at line {}: {:?} after {:?}", at + 2, order[at + 1], order[at]));
    }
    assert!(
        problems.is_empty(),
        "{what}: {} differences from the oracle ({} decisions expected: {} threat, {} risk; {} written); the first ones:\n{}",
        problems.len(),
        want.len(),
        expected.threats.len(),
        expected.risks.len(),
        decisions.len(),
        problems.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
}

// ------------------------------------------------------------------------------------------------
// Running the engine.
// ------------------------------------------------------------------------------------------------

/// `threatflow replay` of one input with the rules, lateness 5 s, and risk (off with threshold 0)
/// over users and addresses in ten-minute windows.
fn replay(input: &Path, rules: &Path, output: &Path, threshold: u64, extra: &[&str]) -> Command {
    let mut command = threatflow();
    command
        .arg("replay")
        .arg("--input")
        .arg(input)
        .arg("--rules")
        .arg(rules)
        .arg("--output")
        .arg(output)
        .arg("--dead-letters")
        .arg(output.with_extension("dead.jsonl"))
        .args(["--allowed-lateness", "5s", "--risk-window", "10m", "--risk-entities", "user,src_ip"])
        .args(["--risk-threshold", &threshold.to_string()])
        .args(extra);
    command
}

/// Runs a replay to completion; returns its decisions' bytes (and checks it rejected nothing).
fn decide(input: &Path, rules: &Path, output: &Path, threshold: u64, extra: &[&str]) -> Vec<u8> {
    ok(common::output_within(&mut replay(input, rules, output, threshold, extra), Duration::from_secs(120)));
    let dead = std::fs::read_to_string(output.with_extension("dead.jsonl")).unwrap_or_default();
    assert!(dead.trim().is_empty(), "the generated records are all valid, but: {dead}");
    std::fs::read(output).unwrap()
}

/// Starts the command and kills it (SIGKILL) once `delay` has passed and `checkpoints` holds at
/// least `at_least` checkpoints; returns whether it was killed (false: it finished first).
fn kill_9_after(command: &mut Command, checkpoints: &Path, at_least: usize, delay: Duration) -> bool {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return false;
        }
        let elapsed = started.elapsed();
        if elapsed >= delay && checkpoint_files(checkpoints).len() >= at_least {
            child.kill().expect("kill -9");
            let _ = child.wait();
            return true;
        }
        if elapsed > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the replay neither finished nor wrote {at_least} checkpoints in 60 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ------------------------------------------------------------------------------------------------
// The tests.
// ------------------------------------------------------------------------------------------------

/// Four seeds of 3,000 events (about four hours each, a fifth of them in a millisecond shared
/// with another event of the same user, 7 % late), rules that change mid-stream: the decisions
/// on one worker and on two are byte-identical and are the oracle's, new-terms hits, risk scores
/// and risk decisions included.
#[test]
fn new_terms_and_risk_match_a_brute_force_oracle_on_one_and_two_workers() {
    let dir = tempfile::tempdir().unwrap();
    let mut total = Stats::default();
    for seed in [1u64, 2, 3, 4] {
        let events = generate(seed, 3_000);
        let rules = rules_for(&events);
        let name = format!("seed-{seed}");
        let (input, rules_file) = write_inputs(dir.path(), &name, &events, &rules, false);
        let expected = oracle(&events, &rules, RISK_THRESHOLD);
        let mut outputs = Vec::new();
        for workers in ["1", "2"] {
            let output = dir.path().join(format!("{name}-w{workers}.jsonl"));
            outputs.push(decide(&input, &rules_file, &output, RISK_THRESHOLD, &["-w", workers]));
            compare(&format!("seed {seed}, {workers} worker(s)"), &expected, &lines(&output));
        }
        assert!(outputs[0] == outputs[1], "seed {seed}: one and two workers wrote different decisions");
        eprintln!("seed {seed}: {:?}", expected.stats);
        total.add(&expected.stats);
    }
    // The logs exercised what they are meant to.
    eprintln!("all seeds: {total:?}");
    for rule in ["nt-country[\"user\", \"country\"]", "nt-agent[\"user\", \"user_agent\"]", "nt-agent[\"user\", \"src_ip\"]", "nt-movement[\"src_ip\", \"country\", \"action\"]"] {
        assert!(total.hits.get(rule).is_some_and(|n| *n >= 10), "few hits of {rule}: {:?}", total.hits);
    }
    assert!(total.late_events >= 500 && total.late_threats >= 100 && total.late_hits >= 5, "{total:?}");
    assert!(total.tied_hits >= 5 && total.tied_hits_not_first_read >= 1, "{total:?}");
    assert!(total.learning_silenced >= 5 && total.remembered >= 1_000, "{total:?}");
    assert!(total.risk.get("user").is_some_and(|n| *n >= 20) && total.risk.get("src_ip").is_some_and(|n| *n >= 20), "{total:?}");
    assert!(total.risk_suppressed >= 100, "{total:?}");
    assert!(total.threats < total.events, "not every event is a threat: {total:?}");
}

/// A 40,000-event log read 64 records at a time, killed with `kill -9` up to three times at
/// random moments (the first kill after a checkpoint at least) while checkpointing every 100 ms,
/// on one and two workers, then run to the end: the decisions are the uninterrupted run's, byte
/// for byte (the new-terms history and the entities' risk are restored, not rebuilt), and the
/// oracle's.
#[test]
fn kill_9_at_random_moments_changes_no_decision() {
    let dir = tempfile::tempdir().unwrap();
    let events = generate(11, 40_000);
    let rules = rules_for(&events);
    let (input, rules_file) = write_inputs(dir.path(), "kill", &events, &rules, false);
    let slow = ["--read-batch", "64"];
    let reference = dir.path().join("reference.jsonl");
    let started = Instant::now();
    let expected_bytes = decide(&input, &rules_file, &reference, RISK_THRESHOLD, &[slow[0], slow[1], "-w", "1"]);
    let took = started.elapsed();
    let expected = oracle(&events, &rules, RISK_THRESHOLD);
    compare("the uninterrupted run", &expected, &lines(&reference));
    eprintln!("uninterrupted: {took:?}, {:?}", expected.stats);

    for scenario in 0..3u64 {
        let output = dir.path().join(format!("killed-{scenario}.jsonl"));
        let checkpoints = dir.path().join(format!("checkpoints-{scenario}"));
        let checkpoint_dir = checkpoints.to_str().unwrap();
        let mut rng = random(100 + scenario);
        let mut killed = 0;
        for attempt in 0..3u64 {
            let workers = if (scenario + attempt) % 2 == 0 { "1" } else { "2" };
            let extra = [slow[0], slow[1], "--checkpoint-dir", checkpoint_dir, "--checkpoint-interval", "100ms", "-w", workers];
            let delay = took.mul_f64(0.15 + (rng.next().unwrap() % 700) as f64 / 1_000.0);
            let mut command = replay(&input, &rules_file, &output, RISK_THRESHOLD, &extra);
            if !kill_9_after(&mut command, &checkpoints, usize::from(attempt == 0), delay) {
                assert!(attempt > 0, "scenario {scenario}: the replay ended before its first checkpoint ({took:?} uninterrupted): make the log longer");
                break;
            }
            killed += 1;
        }
        let workers = if scenario % 2 == 0 { "2" } else { "1" };
        let extra = [slow[0], slow[1], "--checkpoint-dir", checkpoint_dir, "--checkpoint-interval", "100ms", "-w", workers];
        let mut command = replay(&input, &rules_file, &output, RISK_THRESHOLD, &extra);
        let run = ok(common::output_within(command.env("NO_COLOR", "1").env("RUST_LOG", "info"), Duration::from_secs(120)));
        assert!(String::from_utf8_lossy(&run.stderr).contains("resuming from a checkpoint"), "scenario {scenario}: the last run resumed from a checkpoint");
        let written = std::fs::read(&output).unwrap();
        if written != expected_bytes {
            compare(&format!("scenario {scenario}, after {killed} kills"), &expected, &lines(&output));
            panic!("scenario {scenario}: after {killed} kills the decisions are the oracle's but not byte-identical to the uninterrupted run's");
        }
        eprintln!("scenario {scenario}: {killed} kills, decisions identical");
    }
}

/// Hand-worked new-terms cases (`nt`: first login of a user from a country within an hour, with a
/// minute of learning; `seen`: every login, so that each event has a decision to look at).
/// Per event: its id, `ts` (offset from BASE), user, country, judged time (offset), late, and
/// whether `nt` hits.
fn new_terms_scenario() -> (Vec<Event>, Vec<Rule>, Vec<NewTermsRow>) {
    let rows: [(&str, u64, &str, &str, u64, bool, bool); 16] = [
        // The learning period: observed, no hit, and remembered (a2).
        ("a1", 0, "alice", "US", 0, false, false),
        ("e-learn", 59_999, "eve", "DE", 59_999, false, false),
        // The first millisecond after it.
        ("e-first", 60_000, "eve", "US", 60_000, false, true),
        ("a2", 70_000, "alice", "US", 70_000, false, false),
        ("a3", 70_000, "alice", "FR", 70_000, false, true),
        // Three sightings of a new combination in one millisecond: the smallest id hits ("b-1" <
        // "b-10" < "b-2"), whatever the order they are read in.
        ("b-2", 80_000, "bob", "DE", 80_000, false, false),
        ("b-10", 80_000, "bob", "DE", 80_000, false, false),
        ("b-1", 80_000, "bob", "DE", 80_000, false, true),
        ("c1", 100_000, "carol", "JP", 100_000, false, true),
        ("d1", 200_000, "dave", "US", 200_000, false, true),
        // Late (watermark 195,000): older than carol's reported first sighting from JP (c1), so
        // no hit, and c1's stays; remembered from 195,000.
        ("c-late", 90_000, "carol", "JP", 195_000, true, false),
        // Late and new: a hit at the watermark.
        ("c-late-br", 150_000, "carol", "BR", 195_000, true, true),
        // bob/DE is remembered until 80,000 + 1 h, exclusive.
        ("b3", 3_679_999, "bob", "DE", 3_679_999, false, false),
        // c1 is forgotten at 100,000 + 1 h, but the late sighting is remembered until 195,000 + 1 h.
        ("c2", 3_700_000, "carol", "JP", 3_700_000, false, false),
        // dave/US is forgotten at 200,000 + 1 h: new again.
        ("d2", 3_800_000, "dave", "US", 3_800_000, false, true),
        // Not chosen by `nt` (not a login), and no decision at all.
        ("f1", 3_800_001, "frank", "NZ", 3_800_001, false, false),
    ];
    let events = rows
        .iter()
        .map(|(id, ts, user, country, ..)| Event::new(id, BASE + ts, user, if *id == "f1" { "download" } else { "login" }).country(country))
        .collect();
    let rules = vec![
        Rule::new("nt", BASE)
            .title("new country")
            .when("action", &["login"])
            .new_terms(&["user", "country"], 3_600_000, 60_000)
            .severity(Severity::Low)
            .text_durations(),
        Rule::new("seen", 0).when("action", &["login"]).severity(Severity::Informational),
    ];
    let expected = rows.iter().filter(|r| r.0 != "f1").map(|(id, _, _, _, judged, late, hit)| (*id, *judged, *late, *hit)).collect();
    (events, rules, expected)
}

/// Hand-worked risk cases (`--risk-threshold 40`, ten-minute window): `dl` adds 20 per download,
/// `del` 50 per delete (severity high). Per risk decision: entity, value, time (offset), event,
/// score, and the contributing events.
fn risk_scenario() -> (Vec<Event>, Vec<Rule>, Vec<RiskRow>) {
    let events = vec![
        Event::new("r1", BASE, "eve", "download").ip("10.0.0.1"),
        Event::new("r2", BASE + 1_000, "eve", "download").ip("10.0.0.1"),
        // Over the threshold again, within the window of the decisions at 1,000: none.
        Event::new("r3", BASE + 2_000, "eve", "download").ip("10.0.0.1"),
        // (1,000, 601,000]: r3 and r4; the decision at 1,000 is just out of the window.
        Event::new("r4", BASE + 601_000, "eve", "download").ip("10.0.0.2"),
        Event::new("r5", BASE + 602_000, "eve", "download"),
        // Benign: adds nothing.
        Event::new("w1", BASE + 1_000_000, "walt", "login").ip("10.0.0.9"),
        // Two users from one address in one millisecond: the decision names the smallest event id.
        Event::new("z-b", BASE + 2_000_000, "frank", "download").ip("10.0.0.9"),
        Event::new("z-a", BASE + 2_000_000, "gina", "download").ip("10.0.0.9"),
        // Late: contributes at the watermark (1,995,000), inside the address's window.
        Event::new("r-late", BASE + 500, "hank", "download").ip("10.0.0.9"),
        Event::new("k1", BASE + 3_000_000, "ivan", "delete").ip("10.0.0.5"),
    ];
    let rules = vec![
        Rule::new("dl", 0).when("action", &["download"]).risk(20),
        Rule::new("del", 0).title("a delete").when("action", &["delete"]).severity(Severity::High),
    ];
    let expected = vec![
        ("user", "eve", 1_000, "r2", 40, vec!["r1", "r2"]),
        ("src_ip", "10.0.0.1", 1_000, "r2", 40, vec!["r1", "r2"]),
        ("user", "eve", 601_000, "r4", 40, vec!["r3", "r4"]),
        ("src_ip", "10.0.0.9", 2_000_000, "z-a", 60, vec!["r-late", "z-a", "z-b"]),
        ("user", "ivan", 3_000_000, "k1", 50, vec!["k1"]),
        ("src_ip", "10.0.0.5", 3_000_000, "k1", 50, vec!["k1"]),
    ];
    (events, rules, expected)
}

/// The new-terms view of threat decisions: (event id, judged time offset, late, `nt` hit), and
/// the checks every decision of the scenario passes.
fn new_terms_view(threats: &[Threat]) -> Vec<(String, u64, bool, bool)> {
    let mut view: Vec<_> = threats
        .iter()
        .map(|t| {
            let hit = t.rules.iter().any(|r| r == "nt");
            assert_eq!(t.rules, if hit { vec!["nt", "seen"] } else { vec!["seen"] }, "{t:?}");
            assert_eq!(t.groups.len(), usize::from(hit), "{t:?}");
            assert_eq!((t.risk_score, t.severity.as_str()), if hit { (20, "low") } else { (5, "informational") }, "{t:?}");
            assert_eq!(t.event_ts.is_some(), t.late, "{t:?}");
            (t.event_id.clone(), t.ts - BASE, t.late, hit)
        })
        .collect();
    view.sort();
    view
}

fn sorted_new_terms_expectation(expected: &[(&str, u64, bool, bool)]) -> Vec<(String, u64, bool, bool)> {
    let mut rows: Vec<_> = expected.iter().map(|(id, t, late, hit)| (id.to_string(), *t, *late, *hit)).collect();
    rows.sort();
    rows
}

/// The risk view of risk decisions: (entity, value, time offset, event id, score, contributing
/// events in (ts, decision_id) order).
fn risk_view(risks: &[Risk]) -> Vec<(String, String, u64, String, u64, Vec<String>)> {
    let mut view: Vec<_> = risks
        .iter()
        .map(|r| {
            assert_eq!((r.threshold, r.window), (40, RISK_WINDOW), "{r:?}");
            (r.entity.clone(), r.value.clone(), r.ts - BASE, r.event_id.clone(), r.score, r.contributions.iter().map(|c| c.event_id.clone()).collect())
        })
        .collect();
    view.sort();
    view
}

/// The hand-worked risk expectations, contributions put in (ts, decision_id) order.
fn sorted_risk_expectation(events: &[Event], expected: &[RiskRow]) -> Vec<RiskDecision> {
    let judged = judged_times(events);
    let time_of = |id: &str| judged[events.iter().position(|e| e.id == id).unwrap()].0;
    let mut rows: Vec<_> = expected
        .iter()
        .map(|(entity, value, t, event, score, contributions)| {
            let mut contributions: Vec<(u64, String, String)> =
                contributions.iter().map(|id| (time_of(id), xxh3_hex(&[id.as_bytes(), b"threat"]), id.to_string())).collect();
            contributions.sort();
            (entity.to_string(), value.to_string(), *t, event.to_string(), *score, contributions.into_iter().map(|(_, _, id)| id).collect())
        })
        .collect();
    rows.sort();
    rows
}

/// The oracle itself reproduces the hand-worked cases (no engine involved): were it wrong, the
/// oracle tests above would test nothing.
#[test]
fn the_oracle_reproduces_the_hand_worked_cases() {
    let (events, rules, expected) = new_terms_scenario();
    let decided = oracle(&events, &rules, 0);
    assert!(decided.risks.is_empty());
    assert_eq!(new_terms_view(&decided.threats), sorted_new_terms_expectation(&expected));
    for t in &decided.threats {
        if t.rules.contains(&"nt".to_string()) {
            let country = &events.iter().find(|e| e.id == t.event_id).unwrap().country;
            assert_eq!(t.groups, vec![("nt".to_string(), format!("user={}, country={}", t.user, country.as_deref().unwrap()))]);
        }
    }

    let (events, rules, expected) = risk_scenario();
    let decided = oracle(&events, &rules, 40);
    assert_eq!(risk_view(&decided.risks), sorted_risk_expectation(&events, &expected));
    let scores: BTreeMap<&str, u64> = decided.threats.iter().map(|t| (t.event_id.as_str(), t.risk_score)).collect();
    let want: BTreeMap<&str, u64> =
        [("r1", 20), ("r2", 20), ("r3", 20), ("r4", 20), ("r5", 20), ("z-a", 20), ("z-b", 20), ("r-late", 20), ("k1", 50)].into_iter().collect();
    assert_eq!(scores, want);
    let late = decided.risks.iter().find(|r| r.value == "10.0.0.9").unwrap();
    assert_eq!((late.user.as_str(), late.src_ip.as_deref()), ("gina", Some("10.0.0.9")));
    assert_eq!(late.contributions[0].ts, BASE + 1_995_000, "the late download contributes at the watermark");
}

/// New-terms corner cases by hand, on one and two workers: a late event older than a reported
/// first sighting does not hit and the earlier hit stays (and it is remembered from the
/// watermark); of several sightings of a new combination in one millisecond only the smallest
/// event id hits; the learning period records history without hits; history ends exclusively.
/// The rules are written as YAML, with durations as text (`1h`, `1m`).
#[test]
fn new_terms_hand_worked_cases() {
    let dir = tempfile::tempdir().unwrap();
    let (events, rules, expected) = new_terms_scenario();
    let (input, rules_file) = write_inputs(dir.path(), "new-terms", &events, &rules, true);
    let mut outputs = Vec::new();
    for workers in ["1", "2"] {
        let output = dir.path().join(format!("decisions-w{workers}.jsonl"));
        outputs.push(decide(&input, &rules_file, &output, 0, &["-w", workers]));
        let decisions = lines(&output);
        let (threats, risks, problems) = parse_decisions(&decisions);
        assert!(problems.is_empty() && risks.is_empty(), "{problems:#?} {risks:#?}");
        assert_eq!(new_terms_view(&threats), sorted_new_terms_expectation(&expected), "{workers} worker(s)");
        for t in threats.iter().filter(|t| t.rules.contains(&"nt".to_string())) {
            let country = events.iter().find(|e| e.id == t.event_id).unwrap().country.clone().unwrap();
            assert_eq!(t.groups, vec![("nt".to_string(), format!("user={}, country={country}", t.user))], "{t:?}");
        }
        let late = threats.iter().find(|t| t.event_id == "c-late").unwrap();
        assert_eq!((late.ts, late.late, late.event_ts), (BASE + 195_000, true, Some(BASE + 90_000)));
        compare(&format!("new-terms cases, {workers} worker(s)"), &oracle(&events, &rules, 0), &decisions);
    }
    assert!(outputs[0] == outputs[1], "one and two workers wrote different decisions");
}

/// Entity risk by hand (`--risk-threshold 40`, `--risk-window 10m`, `--risk-only-below high`):
/// the risk decisions are exactly the hand-worked ones (window bounds, once per window, the
/// smallest event id of the millisecond, a late detection at its watermark), the downloads below
/// `high` are still decisions that add risk but raise no alert, and the risk decisions alert.
#[test]
fn risk_hand_worked_cases() {
    let dir = tempfile::tempdir().unwrap();
    let (events, rules, expected) = risk_scenario();
    let (input, rules_file) = write_inputs(dir.path(), "risk", &events, &rules, false);
    let mut outputs = Vec::new();
    for workers in ["1", "2"] {
        let output = dir.path().join(format!("decisions-w{workers}.jsonl"));
        let alerts = dir.path().join(format!("alerts-w{workers}.jsonl"));
        let alerts_arg = alerts.to_str().unwrap();
        outputs.push(decide(&input, &rules_file, &output, 40, &["--risk-only-below", "high", "--alerts", alerts_arg, "-w", workers]));
        let decisions = lines(&output);
        let (threats, risks, problems) = parse_decisions(&decisions);
        assert!(problems.is_empty(), "{problems:#?}");
        assert_eq!(risk_view(&risks), sorted_risk_expectation(&events, &expected), "{workers} worker(s)");
        assert_eq!(threats.len(), 9, "every download and the delete are decisions: {threats:#?}");
        compare(&format!("risk cases, {workers} worker(s)"), &oracle(&events, &rules, 40), &decisions);
        // Alerts: the risk decisions and the delete (high); not the downloads (medium, below high).
        let alert_lines = lines(&alerts);
        let alerted: BTreeSet<String> = alert_lines.iter().map(|a| text(a, "decision_id")).collect();
        assert_eq!(alert_lines.len(), alerted.len(), "one alert per decision: {alert_lines:#?}");
        let want: BTreeSet<String> = risks
            .iter()
            .map(|r| r.decision_id.clone())
            .chain(threats.iter().filter(|t| t.event_id == "k1").map(|t| t.decision_id.clone()))
            .collect();
        assert_eq!(alerted, want, "{workers} worker(s): the alerts are the risk decisions and the delete's");
    }
    assert!(outputs[0] == outputs[1], "one and two workers wrote different decisions");
}
