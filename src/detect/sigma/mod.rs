//! Sigma detection rules: parsed from YAML, compiled once, matched against providers' records.
//!
//! What the SigmaHQ cloud rules use is supported: field maps (all fields must match) and lists of
//! maps (any), value lists (any; every one with `|all`), nested dotted field names, the modifiers
//! `contains`, `startswith`, `endswith`, `all`, `re` (with `i`, `m`, `s`), `cidr`, `exists`,
//! `fieldref`, `cased`, `gt`/`gte`/`lt`/`lte`, and `expand` with configured placeholders;
//! `null`; keyword lists (any string value of the record contains the keyword); and conditions
//! with `and`, `or`, `not`, parentheses, `1 of`/`all of` with wildcards and `them`. Values match
//! case-insensitively (Sigma's rule) with `*` and `?` wildcards, unless `|cased`. A rule that uses
//! anything else (other modifiers, other aggregations) is refused with the reason.
//!
//! Sigma correlation (meta) rules are parsed here too ([`Correlation`]): the types `event_count`,
//! `value_count`, `temporal` and `temporal_ordered`, over the rules they refer to (by `id` or
//! `name`), with `group-by` (through field-name `aliases`), `timespan` and the count `condition`,
//! and `generate`; they are evaluated by `crate::detect::correlation`. Legacy aggregations in a detection
//! (`SEARCH | count() by FIELD > N` and `A | near B` with a `timeframe`) are rewritten by
//! [`parse_all`] to base detection rules and a correlation rule over them.
//!
//! A rule applies to the records of its `logsource`: `product` is the first part of a record's
//! source (a mapping's name, `aws.cloudtrail`), and `service` the rest, or a sub-service of it
//! (`google_workspace.admin` applies to `gcp.google_workspace`).
//!
//! ```
//! use threatflow::detect::sigma::SigmaRule;
//! let rule = SigmaRule::parse(r#"
//! title: Console login without MFA
//! id: 6d8e0b5a-0000-4000-8000-000000000001
//! logsource: {product: aws, service: cloudtrail}
//! detection:
//!   selection:
//!     eventName: ConsoleLogin
//!     additionalEventData.MFAUsed: 'NO'
//!   filter: {userIdentity.type: Root}
//!   condition: selection and not filter
//! "#, &Default::default())?;
//! let record = sonic_rs::json!({"eventName": "ConsoleLogin", "additionalEventData": {"MFAUsed": "No"},
//!     "userIdentity": {"type": "IAMUser"}});
//! assert!(rule.matches_record(&record));
//! assert!(rule.applies_to("aws.cloudtrail") && !rule.applies_to("okta.okta"));
//! # Ok::<(), anyhow::Error>(())
//! ```

mod condition;
pub mod correlation;
mod detection;
mod legacy;

use std::sync::Arc;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;


use self::correlation::Correlation;
pub use self::detection::Placeholders;
use self::detection::Detection;
pub use self::detection::{FieldName, RecordView, Requirement};
use self::legacy::{is_legacy_aggregation, legacy_rules};

/// A compiled Sigma rule: a detection rule or a correlation rule. Compared, hashed and serialised
/// by its source text, so it can travel in the control collection; compiled once when parsed.
#[derive(Clone)]
pub struct SigmaRule {
    /// The rule's `id` (its title when it has none).
    pub id: String,
    /// The rule's `title`.
    pub title: String,
    /// The rule's `name` (how correlation rules may refer to it), when given.
    pub name: Option<String>,
    /// The rule's `level`, when given.
    pub level: Option<String>,
    /// `logsource.product`.
    pub product: Option<String>,
    /// `logsource.service`.
    pub service: Option<String>,
    /// The rule's own `effective_from` (a top-level key threatflow reads, ms or RFC 3339; Sigma
    /// allows custom keys), when it has one.
    pub effective_from: Option<crate::event::Time>,
    /// The threat actions of its matches (a top-level `actions` key threatflow reads: `alert`,
    /// `revert`, `block`), when it has one; alert otherwise.
    pub actions: Option<Vec<crate::detect::action::ThreatAction>>,
    /// A top-level `new_terms` key threatflow reads: the rule is then a new-terms rule over the
    /// records its detection matches (docs/semantics.md#new-terms-rules).
    pub new_terms: Option<crate::detect::new_terms_spec::NewTerms>,
    /// A top-level `risk_score` key threatflow reads: what a match adds to its entities' risk.
    pub risk_score: Option<u32>,
    text: Arc<str>,
    /// The placeholders it was compiled with (kept to compile it again when deserialised).
    placeholders: Arc<Placeholders>,
    body: Body,
}

/// What a rule compiles to.
#[derive(Clone, Debug)]
enum Body {
    /// A detection, matched against each record.
    Detection(Arc<Detection>),
    /// A correlation over other rules' matches (evaluated by `crate::detect::correlation`).
    Correlation(Arc<Correlation>),
}

impl std::fmt::Debug for SigmaRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigmaRule").field("id", &self.id).field("title", &self.title).finish()
    }
}

impl PartialEq for SigmaRule {
    fn eq(&self, other: &Self) -> bool {
        (&self.text, &self.placeholders) == (&other.text, &other.placeholders)
    }
}
impl Eq for SigmaRule {}
impl PartialOrd for SigmaRule {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SigmaRule {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.text, &self.placeholders).cmp(&(&other.text, &other.placeholders))
    }
}
impl std::hash::Hash for SigmaRule {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
        self.placeholders.hash(state);
    }
}

/// Serialised as its text and the placeholders it was compiled with.
impl Serialize for SigmaRule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (&*self.text, &*self.placeholders).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SigmaRule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (text, placeholders) = <(String, Placeholders)>::deserialize(deserializer)?;
        SigmaRule::parse(&text, &placeholders).map_err(serde::de::Error::custom)
    }
}

/// The rule as written (the parts read; Sigma's other keys are metadata).
#[derive(Deserialize)]
struct RuleDoc {
    title: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    logsource: LogSourceDoc,
    #[serde(default)]
    detection: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    correlation: Option<Value>,
}

#[derive(Default, Deserialize)]
struct LogSourceDoc {
    #[serde(default)]
    product: Option<String>,
    #[serde(default)]
    service: Option<String>,
}

impl SigmaRule {
    /// Parses and compiles one rule (one YAML document): a detection rule or a correlation rule.
    /// Placeholders used with `|expand` are replaced by their configured values; one that is not
    /// configured is an error. A legacy aggregation (`timeframe`, `| count()`, `| near`) makes
    /// several rules: it is refused here, and read by [`parse_all`].
    pub fn parse(text: &str, placeholders: &Placeholders) -> Result<SigmaRule> {
        let value: Value = serde_norway::from_str(text).context("not YAML")?;
        ensure!(
            !is_legacy_aggregation(&value),
            "a legacy aggregation (`| count()`, `| near`, `timeframe`) makes several rules: read it with `parse_all`"
        );
        SigmaRule::compile(text, &value, placeholders)
    }

    /// The rules of one YAML document: see [`parse_all`].
    pub fn parse_all(text: &str, placeholders: &Placeholders) -> Result<Vec<SigmaRule>> {
        parse_all(text, placeholders)
    }

    /// Compiles a rule document (`value`, parsed from `text`).
    fn compile(text: &str, value: &Value, placeholders: &Placeholders) -> Result<SigmaRule> {
        let effective_from = effective_from(value)?;
        let actions = value
            .get("actions")
            .map(|a| serde_json::from_value(a.clone()).context("`actions` is not a list of alert, revert, block"))
            .transpose()?;
        let new_terms: Option<crate::detect::new_terms_spec::NewTerms> = value
            .get("new_terms")
            .map(|n| serde_json::from_value(n.clone()).context("`new_terms` is not {fields, history, learning}"))
            .transpose()?;
        if let Some(new_terms) = &new_terms {
            new_terms.validate()?;
        }
        let risk_score = value
            .get("risk_score")
            .map(|r| r.as_u64().and_then(|r| u32::try_from(r).ok()).context("`risk_score` is not a whole number"))
            .transpose()?;
        let doc = RuleDoc::deserialize(value).context("not a Sigma rule")?;
        let body = match (&doc.detection, &doc.correlation) {
            (Some(_), Some(_)) => bail!("rule {:?} has both `detection` and `correlation`", doc.title),
            (Some(detection), None) => {
                let detection = Detection::compile(detection, placeholders).with_context(|| format!("rule {:?}", doc.title))?;
                Body::Detection(Arc::new(detection))
            }
            (None, Some(_)) => {
                let correlation = Correlation::parse(value).with_context(|| format!("correlation rule {:?}", doc.title))?;
                Body::Correlation(Arc::new(correlation))
            }
            (None, None) => bail!("rule {:?} has neither `detection` nor `correlation`", doc.title),
        };
        Ok(SigmaRule {
            id: doc.id.clone().unwrap_or_else(|| doc.title.clone()),
            title: doc.title,
            name: doc.name,
            level: doc.level,
            product: doc.logsource.product.map(|p| p.to_lowercase()),
            service: doc.logsource.service.map(|s| s.to_lowercase()),
            effective_from,
            actions,
            new_terms,
            risk_score,
            text: Arc::from(text),
            placeholders: Arc::new(placeholders.clone()),
            body,
        })
    }

    /// The rule's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The rule's correlation, when it is a correlation rule.
    pub fn correlation(&self) -> Option<&Correlation> {
        match &self.body {
            Body::Correlation(correlation) => Some(&**correlation),
            Body::Detection(_) => None,
        }
    }

    /// Whether the rule applies to records of `source` (a mapping's name, `product.service`).
    pub fn applies_to(&self, source: &str) -> bool {
        let (product, service) = source.split_once('.').unwrap_or((source, ""));
        let product_ok = self.product.as_deref().is_none_or(|p| p.eq_ignore_ascii_case(product));
        let service_ok = self.service.as_deref().is_none_or(|s| {
            s.eq_ignore_ascii_case(service) || (s.len() > service.len() && s[..service.len()].eq_ignore_ascii_case(service) && s.as_bytes()[service.len()] == b'.')
        });
        product_ok && service_ok
    }

    /// Whether the rule matches an event: it applies to the event's source, and its detection
    /// matches the event's record. Never for a correlation rule (see
    /// `crate::detect::correlation`).
    pub fn matches_event(&self, event: &crate::event::Event) -> bool {
        self.matches_viewed(event, &RecordView::of_fields(&event.extra))
    }

    /// [`SigmaRule::matches_event`] with the event's record read through `view`, which other
    /// rules share: each field is found and case-folded once per event.
    pub fn matches_viewed<'v>(&'v self, event: &crate::event::Event, view: &RecordView<'v>) -> bool {
        event.source.as_deref().is_some_and(|source| self.applies_to(source)) && self.matches_detection(view)
    }

    /// Whether the rule's detection matches the record `view` reads (its logsource is not
    /// checked here); never for a correlation rule.
    pub fn matches_detection<'v>(&'v self, view: &RecordView<'v>) -> bool {
        match &self.body {
            Body::Detection(detection) => detection.matches(view),
            Body::Correlation(_) => false,
        }
    }

    /// The fields the rule needs to hold one of a few exact (lower-cased) texts to match, each
    /// alone necessary: rules are indexed by one of them (see [`crate::detect::sigma_set`]). None
    /// for a correlation rule, which matches no record.
    pub fn requirements(&self) -> &[Requirement] {
        match &self.body {
            Body::Detection(detection) => detection.requirements(),
            Body::Correlation(_) => &[],
        }
    }

    /// Whether the rule's detection matches a record (its logsource is not checked here); never
    /// for a correlation rule.
    pub fn matches_record(&self, record: &crate::event::Record) -> bool {
        self.matches_detection(&RecordView::new(record))
    }
}

/// The rules of one YAML document: usually one (see [`SigmaRule::parse`]). A legacy aggregation
/// in a detection becomes several rules, each with generated YAML as its text (so that
/// [`SigmaRule::parse`] of it makes the rule again):
/// - `SEARCH | count() > N` (`>=`, `<`, `<=`, `==` too; `count(FIELD)`; `by FIELD, ...`) with a
///   `timeframe`: a detection rule `ID:base` (named so too) with the condition `SEARCH`, and a
///   correlation rule with the original `id`, `title` and `level`, of type `event_count`
///   (`value_count` of `FIELD` with `count(FIELD)`) over it, with the `group-by` fields;
/// - `A | near B and C` with a `timeframe`: a detection rule per search (`ID:A`, condition `A`,
///   ...) and a `temporal` correlation rule over them with the original `id`, `title`, `level`;
///
/// where `ID` is the rule's `id`, or its title. Any other aggregation, one without `timeframe`, and
/// `timeframe` without an aggregation, are refused.
pub fn parse_all(text: &str, placeholders: &Placeholders) -> Result<Vec<SigmaRule>> {
    let value: Value = serde_norway::from_str(text).context("not YAML")?;
    if !is_legacy_aggregation(&value) {
        return Ok(vec![SigmaRule::compile(text, &value, placeholders)?]);
    }
    legacy_rules(&value)?
        .iter()
        .map(|doc| {
            let text = serde_norway::to_string(doc).context("cannot write a rewritten rule as YAML")?;
            SigmaRule::parse(&text, placeholders).with_context(|| format!("the rule rewritten from a legacy aggregation:\n{text}"))
        })
        .collect()
}

/// Every rule file under `dir` (`*.yml`, `*.yaml`, recursively), sorted; rule test files
/// (`*.tests.yml`, `*.tests.yaml`: see [`is_tests_file`]) are not rules.
pub fn rule_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    yaml_files(dir).into_iter().filter(|path| !is_tests_file(path)).collect()
}

/// Every YAML file under `dir` (`*.yml`, `*.yaml`, recursively), sorted: rule files and rule
/// test files.
pub fn yaml_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            // (The entry's type comes with the directory listing: no `stat` per file, which a
            // followed directory of hundreds of rules would pay every scan. Links are followed.)
            let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir() || (kind.is_symlink() && path.is_dir()));
            if is_dir {
                pending.push(path);
            } else if path.extension().is_some_and(|x| x == "yml" || x == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Whether a file holds rule tests (`threatflow test`) rather than rules: its name ends in
/// `.tests.yml` or `.tests.yaml`.
///
/// ```
/// use threatflow::detect::sigma::is_tests_file;
/// assert!(is_tests_file("rules/aws_login.tests.yml".as_ref()));
/// assert!(!is_tests_file("rules/aws_login.yml".as_ref()) && !is_tests_file("rules/tests.yml".as_ref()));
/// ```
pub fn is_tests_file(path: &std::path::Path) -> bool {
    path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.ends_with(".tests.yml") || name.ends_with(".tests.yaml"))
}

/// The rules of one file (`---` separates documents; see [`parse_all`]), and for each document
/// refused, `FILE:LINE: reason`.
pub fn read_file(path: &std::path::Path, placeholders: &Placeholders) -> (Vec<SigmaRule>, Vec<String>) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => return (Vec::new(), vec![format!("{}: {error}", path.display())]),
    };
    let (mut rules, mut refused) = (Vec::new(), Vec::new());
    for (line, doc) in documents(&text) {
        match parse_all(doc, placeholders) {
            Ok(parsed) => rules.extend(parsed),
            Err(error) => refused.push(format!("{}:{line}: {error:#}", path.display())),
        }
    }
    (rules, refused)
}

/// A rule's own `effective_from`.
fn effective_from(rule: &Value) -> Result<Option<crate::event::Time>> {
    match rule.get("effective_from") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).context("`effective_from` is not a time in ms"),
        Some(Value::String(s)) => crate::event::parse_rfc3339_ms(s).map(Some).map_err(|e| anyhow!("`effective_from`: {e}")),
        Some(other) => bail!("`effective_from` {other} is not a time"),
    }
}

/// Whether a text holds Sigma rules (a top-level `detection:` or `correlation:` key) rather than
/// threshold rules.
pub fn is_sigma(text: &str) -> bool {
    text.lines().any(|l| l.starts_with("detection:") || l.starts_with("correlation:"))
}

/// The rules of a text of Sigma rules (from a rules topic: no placeholders); every document must
/// parse (one may make several rules: see [`parse_all`]).
pub fn parse_documents(text: &str) -> Result<Vec<SigmaRule>> {
    let mut rules = Vec::new();
    for (line, doc) in documents(text) {
        rules.extend(parse_all(doc, &Placeholders::new()).with_context(|| format!("Sigma rule at line {line}"))?);
    }
    Ok(rules)
}

/// Reads every Sigma rule under `dir` (see [`rule_files`]). Returns the rules, and for each one
/// refused, `FILE:LINE: reason`.
pub fn read_dir(dir: &std::path::Path, placeholders: &Placeholders) -> Result<(Vec<SigmaRule>, Vec<String>)> {
    ensure!(dir.is_dir(), "{} is not a directory of rules", dir.display());
    let (mut rules, mut refused) = (Vec::new(), Vec::new());
    for path in rule_files(dir) {
        let (loaded, not) = read_file(&path, placeholders);
        rules.extend(loaded);
        refused.extend(not);
    }
    Ok((rules, refused))
}

/// The YAML documents of a text, each with the line it starts on (1-based).
fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 1, 0);
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_end() == "---" {
            if !text[start..offset].trim().is_empty() {
                docs.push((start_line, &text[start..offset]));
            }
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    if !text[start..].trim().is_empty() {
        docs.push((start_line, &text[start..]));
    }
    docs
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::correlation::{CorrelationKind, CountCondition};
    use super::*;

    fn rule(detection: &str) -> SigmaRule {
        SigmaRule::parse(&format!("title: t\nlogsource: {{product: aws, service: cloudtrail}}\ndetection:\n{detection}"), &Placeholders::new())
            .unwrap()
    }

    #[test]
    fn values_modifiers_and_conditions() {
        let record = sonic_rs::json!({"eventName": "PutBucketPolicy", "src": "10.1.2.3", "n": 42, "tags": ["a", "B"],
            "nested": {"Type": "AssumedRole"}, "empty": null, "same1": "x", "same2": "X", "msg": "User ROOT did it"});
        let yes = |d: &str| assert!(rule(d).matches_record(&record), "{d}");
        let no = |d: &str| assert!(!rule(d).matches_record(&record), "{d}");
        yes("  s: {eventName: putbucketpolicy}\n  condition: s");
        yes("  s: {eventName: ['x', 'Put*Policy']}\n  condition: s");
        yes("  s: {eventName|startswith: put, eventName|endswith: POLICY}\n  condition: s");
        no("  s: {eventName|contains|all: [bucket, object]}\n  condition: s");
        yes("  s: {eventName|contains|all: [bucket, policy]}\n  condition: s");
        yes("  s: {eventName|re: '^Put[A-Z]'}\n  condition: s");
        no("  s: {eventName|re: '^put'}\n  condition: s");
        yes("  s: {eventName|re|i: '^put'}\n  condition: s");
        // Lists: one automaton for `contains` texts, one set for regular expressions, beside the
        // other values of the list.
        yes("  s: {eventName|contains: [nothing, BUCKETP, zzz]}\n  condition: s");
        no("  s: {eventName|contains: [nothing, zzz]}\n  condition: s");
        yes("  s: {eventName|contains: [nothing, 'Put*olicy', zzz]}\n  condition: s");
        no("  s: {eventName|contains|cased: [nothing, BUCKETP]}\n  condition: s");
        yes("  s: {eventName|contains|cased: [nothing, BucketP]}\n  condition: s");
        yes("  s: {tags|contains: [zz, b]}\n  condition: s");
        yes("  s: {eventName|re: ['^x', 'Bucket', '^y']}\n  condition: s");
        no("  s: {eventName|re: ['^x', 'bucket', '^y']}\n  condition: s");
        yes("  s: {eventName|re|i: ['^x', 'bucket']}\n  condition: s");
        yes("  s: {src|cidr: 10.0.0.0/8}\n  condition: s");
        no("  s: {src|cidr: 192.168.0.0/16}\n  condition: s");
        yes("  s: {nested.Type: assumedrole, n: 42, tags: b}\n  condition: s");
        yes("  s: {empty: null, missing: null}\n  condition: s");
        no("  s: {eventName: null}\n  condition: s");
        yes("  s: {missing|exists: false, eventName|exists: true}\n  condition: s");
        yes("  s: {same1|fieldref: same2}\n  condition: s");
        yes("  s: {n|gte: 42, n|lt: 43}\n  condition: s");
        no("  s: {eventName|cased: putbucketpolicy}\n  condition: s");
        yes("  k: [root]\n  condition: k");
        no("  k: [admin]\n  condition: k");
        yes("  a: {eventName: x}\n  b: {n: 42}\n  condition: a or b");
        no("  a: {eventName: x}\n  b: {n: 42}\n  condition: a and b");
        yes("  a: {eventName: x}\n  b: {n: 42}\n  condition: not a and b");
        yes("  sel_a: {eventName: x}\n  sel_b: {n: 42}\n  condition: 1 of sel_*");
        no("  sel_a: {eventName: x}\n  sel_b: {n: 42}\n  condition: all of sel_*");
        yes("  s1: {n: 42}\n  _f: {n: 1}\n  condition: all of them");
        yes("  s: [{eventName: x}, {n: 42}]\n  condition: s");
        yes("  a: {n: 1}\n  b: {n: 42}\n  condition: [a, b]");
        yes("  a: {n: 1}\n  b: {n: 42}\n  c: {n: 42}\n  condition: (a or b) and c");
        no("  s: {eventName: 'Put?ucket'}\n  condition: s");
        yes("  s: {eventName: 'Put?ucket*'}\n  condition: s");
    }

    #[test]
    fn refused_rules_say_why() {
        let err = |text: &str| format!("{:#}", SigmaRule::parse(text, &Placeholders::new()).unwrap_err());
        let base = "title: t\nlogsource: {product: aws}\ndetection:\n";
        assert!(err(&format!("{base}  s: {{a|base64offset: x}}\n  condition: s")).contains("modifier `base64offset`"));
        assert!(err(&format!("{base}  s: {{a: x}}\n  timeframe: 5m\n  condition: s | count() > 5")).contains("parse_all"));
        let all_err = |text: &str| format!("{:#}", parse_all(text, &Placeholders::new()).unwrap_err());
        assert!(all_err(&format!("{base}  s: {{a: x}}\n  condition: s | count() > 5")).contains("aggregation without `timeframe`"));
        assert!(err(&format!("{base}  s: {{a: x}}\n  condition: t")).contains("names `t`"));
        assert!(err(&format!("{base}  s: {{a|expand: '%admins%'}}\n  condition: s")).contains("%admins% is not configured"));
        let placeholders = Placeholders::from([("admins".to_string(), vec!["ann".to_string(), "bob".to_string()])]);
        let expanded = SigmaRule::parse(&format!("{base}  s: {{a|expand: '%admins%'}}\n  condition: s"), &placeholders).unwrap();
        assert!(expanded.matches_record(&sonic_rs::json!({"a": "BOB"})));
        assert!(err("title: t\ncorrelation: {type: event_count}\n").contains("`correlation.rules` is missing"));
    }

    const SPEC_EVENT_COUNT: &str = "
title: Many failed logins
id: 0e95725d-7320-415d-80f7-004da920fc11
correlation:
    type: event_count
    rules:
        - 5638f7c0-ac70-491d-8465-2a65075e0d86
    group-by:
        - ComputerName
    timespan: 1h
    condition:
        gte: 100
";

    const SPEC_ALIASES: &str = "
title: internal error then connection
correlation:
    type: temporal
    rules:
        - internal_error
        - new_network_connection
    group-by:
        - internal_ip
        - remote_ip
    timespan: 10s
    aliases:
        internal_ip:
            internal_error: destination.ip
            new_network_connection: source.ip
        remote_ip:
            internal_error: source.ip
            new_network_connection: destination.ip
";

    #[test]
    fn correlation_rules_parse() {
        let rule = SigmaRule::parse(SPEC_EVENT_COUNT, &Placeholders::new()).unwrap();
        assert_eq!(rule.id, "0e95725d-7320-415d-80f7-004da920fc11");
        assert_eq!(rule.title, "Many failed logins");
        let expected = Correlation {
            kind: CorrelationKind::EventCount,
            rules: vec!["5638f7c0-ac70-491d-8465-2a65075e0d86".to_string()],
            group_by: vec!["ComputerName".to_string()],
            aliases: BTreeMap::new(),
            timespan: 3_600_000,
            condition: CountCondition { gte: Some(100), ..CountCondition::default() },
            field: None,
            generate: false,
        };
        assert_eq!(rule.correlation(), Some(&expected));
        assert!(!rule.matches_record(&sonic_rs::json!({"ComputerName": "x"})));
        let again: SigmaRule = serde_json::from_str(&serde_json::to_string(&rule).unwrap()).unwrap();
        assert_eq!(again.correlation(), Some(&expected));

        let generated = SigmaRule::parse(
            "title: g\nname: g_name\ngenerate: true\ncorrelation: {type: temporal_ordered, rules: [a, b, c], timeframe: 1w, condition: {gt: 1, lte: 3}}\n",
            &Placeholders::new(),
        )
        .unwrap();
        let c = generated.correlation().unwrap();
        assert_eq!(generated.name.as_deref(), Some("g_name"));
        assert_eq!((c.kind, c.timespan, c.generate), (CorrelationKind::TemporalOrdered, 7 * 86_400_000, true));
        assert_eq!(c.condition, CountCondition { gt: Some(1), lte: Some(3), ..CountCondition::default() });
        assert!(c.group_by.is_empty());
    }

    #[test]
    fn bad_correlation_rules_say_why() {
        let err = |correlation: &str| format!("{:#}", SigmaRule::parse(&format!("title: t\ncorrelation: {correlation}\n"), &Placeholders::new()).unwrap_err());
        assert!(err("{type: value_count, rules: [a], group-by: [u], timespan: 1d, condition: {gte: 100}}").contains("`condition.field`"));
        let value_count =
            SigmaRule::parse("title: t\ncorrelation: {type: value_count, rules: a, group-by: u, timespan: 1d, condition: {field: User, gte: 100}}\n", &Placeholders::new())
                .unwrap();
        let c = value_count.correlation().unwrap();
        assert_eq!((c.kind, c.field.as_deref(), &c.rules[..], &c.group_by[..]), (CorrelationKind::ValueCount, Some("User"), &["a".to_string()][..], &["u".to_string()][..]));
        assert!(err("{type: value_sum, rules: [a], timespan: 1h, condition: {field: bytes, gt: 1}}").contains("not supported"));
        assert!(err("{type: nonsense, rules: [a], timespan: 1h, condition: {gt: 1}}").contains("unknown correlation type"));
        assert!(err("{type: event_count, rules: [a], timespan: 0s, condition: {gt: 1}}").contains("not more than 0"));
        assert!(err("{type: event_count, rules: [a], timespan: 10y, condition: {gt: 1}}").contains("unit"));
        assert!(err("{type: event_count, rules: [a], condition: {gt: 1}}").contains("`correlation.timespan` is missing"));
        assert!(err("{type: event_count, rules: [a], timespan: 1h}").contains("`correlation.condition` is missing"));
        assert!(err("{type: event_count, timespan: 1h, condition: {gt: 1}}").contains("`correlation.rules` is missing"));
        assert!(err("{type: event_count, rules: [a], timespan: 1h, condition: {above: 1}}").contains("not one of gt, gte, lt, lte, eq, neq"));
        assert!(err("{type: event_count, rules: [a], timespan: 1h, condition: {}}").contains("no bound"));
    }

    #[test]
    fn temporal_aliases_resolve_per_member() {
        let rule = SigmaRule::parse(SPEC_ALIASES, &Placeholders::new()).unwrap();
        assert_eq!(rule.id, "internal error then connection");
        let c = rule.correlation().unwrap();
        assert_eq!(c.kind, CorrelationKind::Temporal);
        assert_eq!(c.condition, CountCondition { gte: Some(2), ..CountCondition::default() });
        assert_eq!(c.timespan, 10_000);
        assert_eq!(c.group_by, ["internal_ip", "remote_ip"]);
        assert_eq!(c.aliases["internal_ip"]["internal_error"], "destination.ip");
        assert_eq!(c.group_field("internal_ip", 0), "destination.ip");
        assert_eq!(c.group_field("internal_ip", 1), "source.ip");
        assert_eq!(c.group_field("remote_ip", 0), "source.ip");
        assert_eq!(c.group_field("remote_ip", 1), "destination.ip");
        assert_eq!(c.group_field("User", 1), "User");
        assert_eq!(c.group_field("internal_ip", 7), "internal_ip");
        let bad = SPEC_ALIASES.replace("new_network_connection: source.ip", "other_rule: source.ip");
        assert!(format!("{:#}", SigmaRule::parse(&bad, &Placeholders::new()).unwrap_err()).contains("`other_rule`"));
    }

    /// Every rule `parse_all` made is made again, the same, from its text.
    fn round_trips(rules: &[SigmaRule]) {
        for rule in rules {
            let again = SigmaRule::parse(rule.text(), &Placeholders::new()).unwrap();
            assert_eq!(&again, rule);
            assert_eq!((&again.id, &again.title, &again.name, &again.level), (&rule.id, &rule.title, &rule.name, &rule.level));
            assert_eq!(again.correlation(), rule.correlation());
            let record = sonic_rs::json!({"eventSource": "ec2.amazonaws.com", "eventName": "DescribeDhcpOptions", "x": 1});
            assert_eq!(again.matches_record(&record), rule.matches_record(&record));
        }
    }

    #[test]
    fn legacy_count_becomes_a_correlation() {
        let text = include_str!("../../../tests/data/sigmahq-cloud-rules/unsupported/cloud/aws_enum_network.yml");
        let id = "c3d53999-4b14-4ddd-9d9b-e618c366b54d";
        assert!(format!("{:#}", SigmaRule::parse(text, &Placeholders::new()).unwrap_err()).contains("parse_all"));
        let rules = parse_all(text, &Placeholders::new()).unwrap();
        assert_eq!(rules.len(), 2);
        let (base, correlation) = (&rules[0], &rules[1]);
        assert_eq!(base.id, format!("{id}:base"));
        assert_eq!(base.name.as_deref(), Some(format!("{id}:base").as_str()));
        assert_eq!(base.title, "Potential Network Enumeration on AWS");
        assert_eq!(base.correlation(), None);
        assert!(base.applies_to("aws.cloudtrail"));
        assert!(base.matches_record(&sonic_rs::json!({"eventSource": "ec2.amazonaws.com", "eventName": "DescribeDhcpOptions"})));
        assert!(!base.matches_record(&sonic_rs::json!({"eventSource": "ec2.amazonaws.com", "eventName": "RunInstances"})));
        assert_eq!(correlation.id, id);
        assert_eq!(correlation.title, "Potential Network Enumeration on AWS");
        assert_eq!(correlation.level.as_deref(), Some("low"));
        let c = correlation.correlation().unwrap();
        assert_eq!(c.kind, CorrelationKind::EventCount);
        assert_eq!(c.rules, [format!("{id}:base")]);
        assert!(c.group_by.is_empty());
        assert_eq!(c.timespan, 600_000);
        assert_eq!(c.condition, CountCondition { gt: Some(5), ..CountCondition::default() });
        assert_eq!((c.field.as_ref(), c.generate), (None, false));
        round_trips(&rules);
        assert_eq!(SigmaRule::parse_all(text, &Placeholders::new()).unwrap(), rules);
        // Read from a file and from a rules topic, each document makes its rules.
        let specs = crate::detect::rules::parse_sigma_updates(&format!("{text}\n---\ntitle: b\nlogsource: {{product: aws}}\ndetection:\n  s: {{x: 2}}\n  condition: s\n")).unwrap();
        let ids: Vec<&str> = specs.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, [format!("{id}:base").as_str(), id, "b"]);
    }

    #[test]
    fn legacy_group_by_value_count_and_near() {
        let legacy = |detection: &str| parse_all(&format!("title: T\nid: r\nlevel: high\nlogsource: {{product: aws, service: cloudtrail}}\ndetection:\n{detection}"), &Placeholders::new());
        let rules = legacy("  selection: {eventSource: macie.amazonaws.com}\n  timeframe: 10m\n  condition: selection | count() by sourceIPAddress > 5\n").unwrap();
        assert_eq!(rules.len(), 2);
        let c = rules[1].correlation().unwrap();
        assert_eq!((c.kind, &c.group_by[..]), (CorrelationKind::EventCount, &["sourceIPAddress".to_string()][..]));
        round_trips(&rules);

        let rules = legacy("  s: {a: 1}\n  f: {b: 2}\n  timeframe: 1h\n  condition: s and not f | count(userName) by ip, host >= 3\n").unwrap();
        assert_eq!(rules[0].id, "r:base");
        assert!(rules[0].matches_record(&sonic_rs::json!({"a": 1})) && !rules[0].matches_record(&sonic_rs::json!({"a": 1, "b": 2})));
        let c = rules[1].correlation().unwrap();
        assert_eq!((c.kind, c.field.as_deref(), c.group_by.clone()), (CorrelationKind::ValueCount, Some("userName"), vec!["ip".to_string(), "host".to_string()]));
        assert_eq!(c.condition, CountCondition { gte: Some(3), ..CountCondition::default() });
        round_trips(&rules);

        let rules = legacy("  a: {x: 1}\n  b: {y: 2}\n  timeframe: 5m\n  condition: a | near b\n").unwrap();
        let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["r:a", "r:b", "r"]);
        assert!(rules[0].matches_record(&sonic_rs::json!({"x": 1})) && !rules[0].matches_record(&sonic_rs::json!({"y": 2})));
        assert!(rules[1].matches_record(&sonic_rs::json!({"y": 2})));
        let c = rules[2].correlation().unwrap();
        assert_eq!((c.kind, &c.rules[..], c.timespan), (CorrelationKind::Temporal, &["r:a".to_string(), "r:b".to_string()][..], 300_000));
        assert_eq!((c.condition.gte, c.group_by.is_empty()), (Some(2), true));
        assert_eq!(rules[2].level.as_deref(), Some("high"));
        round_trips(&rules);
        assert_eq!(legacy("  a: {x: 1}\n  b: {y: 2}\n  c: {z: 3}\n  timeframe: 5m\n  condition: a | near b and c\n").unwrap().len(), 4);

        let err = |detection: &str| format!("{:#}", legacy(detection).unwrap_err());
        assert!(err("  a: {x: 1}\n  b: {y: 2}\n  condition: a | near b\n").contains("aggregation without `timeframe`"));
        assert!(err("  a: {x: 1}\n  timeframe: 5m\n  condition: a | max(x) > 3\n").contains("not supported"));
        assert!(err("  a: {x: 1}\n  b: {y: 2}\n  timeframe: 5m\n  condition: a and b\n").contains("`timeframe` without an aggregation"));
        assert!(err("  a: {x: 1}\n  b: {y: 2}\n  timeframe: 5m\n  condition: a | near b or c\n").contains("near"));
        assert!(err("  a: {x: 1}\n  timeframe: 5m\n  condition: a | count() > many\n").contains("not a count"));
    }

    #[test]
    fn count_conditions_hold() {
        fn c(set: fn(&mut CountCondition)) -> CountCondition {
            let mut condition = CountCondition::default();
            set(&mut condition);
            condition
        }
        let table: [(CountCondition, u64, bool); 17] = [
            (c(|c| c.gt = Some(5)), 5, false),
            (c(|c| c.gt = Some(5)), 6, true),
            (c(|c| c.gte = Some(5)), 4, false),
            (c(|c| c.gte = Some(5)), 5, true),
            (c(|c| c.lt = Some(5)), 5, false),
            (c(|c| c.lt = Some(5)), 4, true),
            (c(|c| c.lte = Some(5)), 6, false),
            (c(|c| c.lte = Some(5)), 5, true),
            (c(|c| c.eq = Some(5)), 5, true),
            (c(|c| c.eq = Some(5)), 6, false),
            (c(|c| c.neq = Some(5)), 5, false),
            (c(|c| c.neq = Some(5)), 0, true),
            (CountCondition { gt: Some(100), lte: Some(200), ..CountCondition::default() }, 100, false),
            (CountCondition { gt: Some(100), lte: Some(200), ..CountCondition::default() }, 101, true),
            (CountCondition { gt: Some(100), lte: Some(200), ..CountCondition::default() }, 200, true),
            (CountCondition { gt: Some(100), lte: Some(200), ..CountCondition::default() }, 201, false),
            (CountCondition::default(), 1, false),
        ];
        for (condition, n, holds) in table {
            assert_eq!(condition.holds(n), holds, "{condition:?} at {n}");
        }
        assert!((0..1000).all(|n| !CountCondition::default().holds(n)));
    }

    #[test]
    fn updates_from_a_rules_topic() {
        let text = "title: a\nid: a\neffective_from: 5000\nlogsource: {product: aws}\ndetection:\n  s: {x: 1}\n  condition: s\n---\n\
                    title: b\nlogsource: {product: aws}\ndetection:\n  s: {x: 2}\n  condition: s\n";
        assert!(is_sigma(text) && !is_sigma(r#"[{"id": "r", "features": {}}]"#));
        let specs = crate::detect::rules::parse_sigma_updates(text).unwrap();
        let got: Vec<(&str, u64, Option<&str>)> = specs.iter().map(|s| (s.id.as_str(), s.effective_from, s.title.as_deref())).collect();
        assert_eq!(got, [("a", 5000, Some("a")), ("b", 0, Some("b"))]);
        assert!(crate::detect::rules::parse_sigma_updates("title: c\ndetection:\n  condition: s\n").is_err());
    }

    #[test]
    fn logsource_routing() {
        let r = |product: &str, service: &str| {
            SigmaRule::parse(&format!("title: t\nlogsource: {{product: {product}, service: {service}}}\ndetection:\n  s: {{a: 1}}\n  condition: s"), &Placeholders::new()).unwrap()
        };
        assert!(r("gcp", "google_workspace.admin").applies_to("gcp.google_workspace"));
        assert!(!r("gcp", "gcp.audit").applies_to("gcp.google_workspace"));
        assert!(r("azure", "signinlogs").applies_to("azure.signinlogs") && !r("azure", "signinlogs").applies_to("azure.auditlogs"));
    }
}
