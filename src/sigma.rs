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
//! and `generate`; they are evaluated by `crate::correlation`. Legacy aggregations in a detection
//! (`SEARCH | count() by FIELD > N` and `A | near B` with a `timeframe`) are rewritten by
//! [`parse_all`] to base detection rules and a correlation rule over them.
//!
//! A rule applies to the records of its `logsource`: `product` is the first part of a record's
//! source (a mapping's name, `aws.cloudtrail`), and `service` the rest, or a sub-service of it
//! (`google_workspace.admin` applies to `gcp.google_workspace`).
//!
//! ```
//! use threatflow::sigma::SigmaRule;
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
//! let record = serde_json::json!({"eventName": "ConsoleLogin", "additionalEventData": {"MFAUsed": "No"},
//!     "userIdentity": {"type": "IAMUser"}});
//! assert!(rule.matches_record(&record));
//! assert!(rule.applies_to("aws.cloudtrail") && !rule.applies_to("okta.okta"));
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Placeholder values for `|expand` (`%name%` to its values).
pub type Placeholders = BTreeMap<String, Vec<String>>;

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
    pub actions: Option<Vec<crate::rules::ThreatAction>>,
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
    /// A correlation over other rules' matches (evaluated by `crate::correlation`).
    Correlation(Arc<Correlation>),
}

/// A Sigma correlation (meta) rule: the `correlation` section of a rule document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Correlation {
    /// The correlation type.
    pub kind: CorrelationKind,
    /// Referenced rules, by `id` or `name`, in the order written.
    pub rules: Vec<String>,
    /// `group-by` field names (or alias names), possibly empty.
    pub group_by: Vec<String>,
    /// alias name -> (referenced rule name or id -> field name in that rule's events).
    pub aliases: BTreeMap<String, BTreeMap<String, String>>,
    /// `timespan` in ms (`30s`, `10m`, `1h`, `2d`, `1w`); more than 0.
    pub timespan: crate::event::Time,
    /// The count condition. For `temporal`/`temporal_ordered` without a condition: `gte` the
    /// number of referenced rules.
    pub condition: CountCondition,
    /// `condition.field` of a `value_count` (the field whose distinct values are counted); `None`
    /// for the other types.
    pub field: Option<String>,
    /// `generate: true` keeps the referenced rules deciding on their own (default false).
    pub generate: bool,
}

/// The type of a correlation rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrelationKind {
    /// `event_count`: the number of events of the referenced rules in a group.
    EventCount,
    /// `value_count`: the number of distinct values of `field` in a group.
    ValueCount,
    /// `temporal`: the number of different referenced rules matched in a group, in any order.
    Temporal,
    /// `temporal_ordered`: as `temporal`, the rules matching in the order written.
    TemporalOrdered,
}

impl CorrelationKind {
    /// The name Sigma gives the type (`event_count`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            CorrelationKind::EventCount => "event_count",
            CorrelationKind::ValueCount => "value_count",
            CorrelationKind::Temporal => "temporal",
            CorrelationKind::TemporalOrdered => "temporal_ordered",
        }
    }
}

/// A correlation's count condition: every bound given must hold (`gt: 100, lte: 200` is a range).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct CountCondition {
    /// The count must be greater than this.
    pub gt: Option<u64>,
    /// The count must be greater than or equal to this.
    pub gte: Option<u64>,
    /// The count must be less than this.
    pub lt: Option<u64>,
    /// The count must be less than or equal to this.
    pub lte: Option<u64>,
    /// The count must be equal to this.
    pub eq: Option<u64>,
    /// The count must be different from this.
    pub neq: Option<u64>,
}

impl CountCondition {
    /// Whether every bound given holds for `n` (an empty condition never holds).
    pub fn holds(&self, n: u64) -> bool {
        let any = [self.gt, self.gte, self.lt, self.lte, self.eq, self.neq].iter().any(Option::is_some);
        any && self.gt.is_none_or(|b| n > b)
            && self.gte.is_none_or(|b| n >= b)
            && self.lt.is_none_or(|b| n < b)
            && self.lte.is_none_or(|b| n <= b)
            && self.eq.is_none_or(|b| n == b)
            && self.neq.is_none_or(|b| n != b)
    }

    /// Reads a `condition` map (its `field` key apart): the six bounds, and `field` when given.
    fn parse(map: &serde_json::Map<String, Value>) -> Result<(CountCondition, Option<String>)> {
        let mut condition = CountCondition::default();
        let mut field = None;
        for (key, value) in map {
            let slot = match key.as_str() {
                "field" => {
                    field = Some(match value {
                        Value::String(s) => s.clone(),
                        Value::Array(items) if items.len() == 1 => {
                            items.first().and_then(Value::as_str).context("`condition.field` is not a field name")?.to_string()
                        }
                        Value::Array(_) => bail!("several fields in `condition.field` are not supported"),
                        other => bail!("`condition.field` {other} is not a field name"),
                    });
                    continue;
                }
                "gt" => &mut condition.gt,
                "gte" => &mut condition.gte,
                "lt" => &mut condition.lt,
                "lte" => &mut condition.lte,
                "eq" => &mut condition.eq,
                "neq" => &mut condition.neq,
                other => bail!("`condition.{other}` is not one of gt, gte, lt, lte, eq, neq (or `field`)"),
            };
            let count = match value {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.trim().parse::<u64>().ok(),
                _ => None,
            };
            *slot = Some(count.with_context(|| format!("`condition.{key}` {value} is not a count (a whole number)"))?);
        }
        let bounded = [condition.gt, condition.gte, condition.lt, condition.lte, condition.eq, condition.neq].iter().any(Option::is_some);
        ensure!(bounded, "the condition has no bound (gt, gte, lt, lte, eq or neq)");
        Ok((condition, field))
    }
}

impl Correlation {
    /// The field a `group-by` entry names in the events of referenced rule `member` (its index in
    /// `rules`), through `aliases` (looked up by the referenced string itself, `rules[member]`);
    /// the entry itself when no alias applies.
    pub fn group_field<'a>(&'a self, group_by: &'a str, member: usize) -> &'a str {
        self.rules
            .get(member)
            .and_then(|rule| self.aliases.get(group_by)?.get(rule))
            .map_or(group_by, String::as_str)
    }

    /// Reads the `correlation` section of a rule document (and its top-level `generate`).
    fn parse(rule: &Value) -> Result<Correlation> {
        let section = rule.get("correlation").and_then(Value::as_object).context("`correlation` is not a map")?;
        let kind = match section.get("type") {
            Some(Value::String(kind)) => match kind.as_str() {
                "event_count" => CorrelationKind::EventCount,
                "value_count" => CorrelationKind::ValueCount,
                "temporal" => CorrelationKind::Temporal,
                "temporal_ordered" => CorrelationKind::TemporalOrdered,
                other @ ("value_sum" | "value_avg" | "value_percentile") => bail!("the correlation type `{other}` is not supported"),
                other => bail!("unknown correlation type `{other}`"),
            },
            None | Some(Value::Null) => bail!("`correlation.type` is missing"),
            Some(other) => bail!("`correlation.type` {other} is not text"),
        };
        let rules = strings(section.get("rules"), "correlation.rules")?;
        ensure!(!rules.is_empty(), "`correlation.rules` is missing");
        let group_by = strings(section.get("group-by"), "correlation.group-by")?;
        let timespan = match section.get("timespan").filter(|v| !v.is_null()).or_else(|| section.get("timeframe").filter(|v| !v.is_null())) {
            Some(value) => parse_timespan(value).context("`correlation.timespan`")?,
            None => bail!("`correlation.timespan` is missing"),
        };
        let (condition, field) = match section.get("condition") {
            None | Some(Value::Null) => match kind {
                CorrelationKind::Temporal | CorrelationKind::TemporalOrdered => {
                    (CountCondition { gte: Some(rules.len() as u64), ..CountCondition::default() }, None)
                }
                _ => bail!("`correlation.condition` is missing (the type {} needs one)", kind.as_str()),
            },
            Some(Value::Object(map)) => CountCondition::parse(map).context("`correlation.condition`")?,
            Some(other) => bail!("`correlation.condition` {other} is not a map (gt, gte, lt, lte, eq, neq)"),
        };
        let field = if kind == CorrelationKind::ValueCount {
            Some(field.context("a value_count correlation needs `condition.field` (the field whose values it counts)")?)
        } else {
            None
        };
        let mut aliases = BTreeMap::new();
        match section.get("aliases") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (alias, per_rule) in map {
                    let per_rule = per_rule.as_object().with_context(|| format!("alias `{alias}` is not a map of rule to field"))?;
                    let mut fields = BTreeMap::new();
                    for (referenced, target) in per_rule {
                        ensure!(rules.contains(referenced), "alias `{alias}` names the rule `{referenced}`, which `correlation.rules` does not list");
                        let target = target.as_str().with_context(|| format!("alias `{alias}`: the field for `{referenced}` is not text"))?;
                        fields.insert(referenced.clone(), target.to_string());
                    }
                    aliases.insert(alias.clone(), fields);
                }
            }
            Some(other) => bail!("`correlation.aliases` {other} is not a map"),
        }
        let generate = match rule.get("generate").filter(|v| !v.is_null()).or_else(|| section.get("generate")) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(generate)) => *generate,
            Some(other) => bail!("`generate` {other} is not true or false"),
        };
        Ok(Correlation { kind, rules, group_by, aliases, timespan, condition, field, generate })
    }
}

/// A string or a list of strings (absent: none).
fn strings(value: Option<&Value>, key: &str) -> Result<Vec<String>> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string).with_context(|| format!("`{key}`: {item} is not text")))
            .collect(),
        Some(other) => bail!("`{key}` {other} is not text or a list of text"),
    }
}

/// A Sigma time span, a number and a unit: `30s`, `10m`, `1h`, `2d` (and `1w`), in ms (more than 0).
fn parse_timespan(value: &Value) -> Result<crate::event::Time> {
    let text = value.as_str().with_context(|| format!("{value} is not a time span like `10m`"))?.trim();
    let Some((at, unit)) = text.char_indices().last() else { bail!("an empty time span") };
    let digits = &text[..at];
    ensure!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()), "{text:?} is not a time span like `10m`");
    let unit_ms: u64 = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 7 * 86_400_000,
        _ => bail!("{text:?}: the unit is not one of s, m, h, d, w"),
    };
    let n: u64 = digits.parse().with_context(|| format!("{text:?} is too long"))?;
    let ms = n.checked_mul(unit_ms).with_context(|| format!("{text:?} is too long"))?;
    ensure!(ms > 0, "the time span {text:?} is not more than 0");
    Ok(ms)
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
    /// matches the event's record (`record` makes it, once per event). Never for a correlation
    /// rule (see `crate::correlation`).
    pub fn matches_event(&self, event: &crate::event::Event, record: &std::cell::OnceCell<Value>) -> bool {
        event.source.as_deref().is_some_and(|source| self.applies_to(source))
            && self.matches_record(record.get_or_init(|| record_of(event)))
    }

    /// Whether the rule's detection matches a record (its logsource is not checked here); never
    /// for a correlation rule.
    pub fn matches_record(&self, record: &Value) -> bool {
        match &self.body {
            Body::Detection(detection) => detection.matches(record),
            Body::Correlation(_) => false,
        }
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

/// The condition texts of a `detection` (one, or a list; what is not text is left out).
fn condition_texts(detection: &serde_json::Map<String, Value>) -> Vec<&str> {
    match detection.get("condition") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Whether a rule document is a legacy aggregation: its detection has a `timeframe`, or a
/// condition with `|`.
fn is_legacy_aggregation(rule: &Value) -> bool {
    let Some(detection) = rule.get("detection").and_then(Value::as_object) else { return false };
    detection.contains_key("timeframe") || condition_texts(detection).iter().any(|c| c.contains('|'))
}

/// `text` without `prefix` (in any case), when it starts with it.
fn strip_prefix_ci<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// Whether a condition token can name one search (no operator, parenthesis or wildcard).
fn is_search_name(token: &str) -> bool {
    !token.is_empty()
        && !token.contains(['(', ')', '*', '|'])
        && !["and", "or", "not", "of", "all", "them", "near", "by"].iter().any(|k| token.eq_ignore_ascii_case(k))
}

/// The documents a legacy aggregation rule becomes (see [`parse_all`]).
fn legacy_rules(rule: &Value) -> Result<Vec<Value>> {
    let title = rule.get("title").and_then(Value::as_str).context("not a Sigma rule: no `title`")?;
    let id = match rule.get("id") {
        None | Some(Value::Null) => title.to_string(),
        Some(Value::String(id)) => id.clone(),
        Some(other) => bail!("`id` {other} is not text"),
    };
    let detection = rule.get("detection").and_then(Value::as_object).context("`detection` is not a map")?;
    let condition = match detection.get("condition") {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Array(items)) if items.len() == 1 => items.first().and_then(Value::as_str).context("a condition is not text")?,
        Some(Value::Array(_)) => bail!("an aggregation (or `timeframe`) with a list of conditions is not supported"),
        _ => bail!("no `condition`"),
    };
    let Some((search, aggregation)) = condition.split_once('|') else {
        bail!("`timeframe` without an aggregation (`| count()`, `| near`) is not supported (write a correlation rule)");
    };
    let (search, aggregation) = (search.trim(), aggregation.trim());
    let timeframe = detection
        .get("timeframe")
        .filter(|t| !t.is_null())
        .with_context(|| format!("an aggregation without `timeframe` is not supported (condition {condition:?})"))?;
    ensure!(!search.is_empty(), "condition {condition:?}: no search before `|`");

    let mut docs = Vec::new();
    let correlation = if let Some(rest) = strip_prefix_ci(aggregation, "near").filter(|r| r.starts_with(char::is_whitespace)) {
        // `A | near B and C`: names at even places, `and` between.
        ensure!(is_search_name(search), "condition {condition:?}: only `SEARCH | near SEARCH and SEARCH ...` is supported");
        let tokens: Vec<&str> = rest.split_whitespace().collect();
        let mut members = vec![search];
        for (i, token) in tokens.iter().enumerate() {
            if i % 2 == 1 {
                ensure!(token.eq_ignore_ascii_case("and"), "condition {condition:?}: only `and` may join the searches of `near`");
            } else {
                ensure!(is_search_name(token), "condition {condition:?}: only `SEARCH | near SEARCH and SEARCH ...` is supported");
                ensure!(!members.contains(token), "condition {condition:?}: `{token}` is named twice");
                members.push(*token);
            }
        }
        ensure!(tokens.len() % 2 == 1, "condition {condition:?}: `near` needs a search after each `and`");
        let mut rules = Vec::new();
        for member in members {
            let member_id = format!("{id}:{member}");
            docs.push(base_rule(rule, &member_id, member));
            rules.push(Value::String(member_id));
        }
        serde_json::json!({"type": "temporal", "rules": rules, "group-by": [], "timespan": timeframe.clone()})
    } else if let Some(rest) = strip_prefix_ci(aggregation, "count") {
        let (field, group_by, bound, count) = parse_count(rest.trim_start()).with_context(|| format!("condition {condition:?}"))?;
        let base_id = format!("{id}:base");
        docs.push(base_rule(rule, &base_id, search));
        let mut bounds = serde_json::Map::new();
        bounds.insert(bound.to_string(), Value::from(count));
        let kind = match field {
            Some(field) => {
                bounds.insert("field".to_string(), Value::String(field));
                "value_count"
            }
            None => "event_count",
        };
        serde_json::json!({"type": kind, "rules": [base_id], "group-by": group_by, "timespan": timeframe.clone(), "condition": bounds})
    } else {
        bail!("condition {condition:?}: the aggregation `{aggregation}` is not supported (only `count()` and `near`; write a correlation rule)");
    };

    let mut doc = serde_json::Map::new();
    doc.insert("title".to_string(), Value::String(title.to_string()));
    doc.insert("id".to_string(), Value::String(id));
    for key in ["name", "description", "references", "author", "date", "modified", "tags", "falsepositives", "level", "effective_from", "actions"] {
        if let Some(value) = rule.get(key).filter(|v| !v.is_null()) {
            doc.insert(key.to_string(), value.clone());
        }
    }
    doc.insert("correlation".to_string(), correlation);
    docs.push(Value::Object(doc));
    Ok(docs)
}

/// A legacy rule's detection alone: `id` and `name` set to `id`, the condition `condition`, and
/// no `timeframe`.
fn base_rule(rule: &Value, id: &str, condition: &str) -> Value {
    let mut doc = rule.clone();
    if let Some(map) = doc.as_object_mut() {
        map.insert("id".to_string(), Value::String(id.to_string()));
        map.insert("name".to_string(), Value::String(id.to_string()));
        if let Some(Value::Object(detection)) = map.get_mut("detection") {
            detection.remove("timeframe");
            detection.insert("condition".to_string(), Value::String(condition.to_string()));
        }
    }
    doc
}

/// What follows `count` in a legacy aggregation: `(FIELD) by GROUP, ... > N`. Returns the counted
/// field, the group-by fields, the bound (`gt`, ...) and `N`.
fn parse_count(text: &str) -> Result<(Option<String>, Vec<String>, &'static str, u64)> {
    let text = text.strip_prefix('(').context("expected `count(`")?;
    let (field, rest) = text.split_once(')').context("no `)` after `count(`")?;
    let field = field.trim();
    ensure!(!field.contains(char::is_whitespace) && !field.contains(','), "`count({field})`: only one field may be counted");
    let field = (!field.is_empty()).then(|| field.to_string());
    let at = rest.find(['<', '>', '=', '!']).context("no comparison (like `> 5`)")?;
    let (group, comparison) = rest.split_at(at);
    let group = group.trim();
    let group_by = if group.is_empty() {
        Vec::new()
    } else {
        let fields = strip_prefix_ci(group, "by")
            .filter(|r| r.starts_with(char::is_whitespace))
            .with_context(|| format!("expected `by FIELD` or a comparison, not {group:?}"))?;
        fields
            .split(',')
            .map(str::trim)
            .map(|f| {
                ensure!(!f.is_empty() && !f.contains(char::is_whitespace), "bad `by` field {f:?}");
                Ok(f.to_string())
            })
            .collect::<Result<Vec<_>>>()?
    };
    let (bound, number) = [(">=", "gte"), ("<=", "lte"), ("==", "eq"), ("!=", "neq"), (">", "gt"), ("<", "lt"), ("=", "eq")]
        .into_iter()
        .find_map(|(symbol, bound)| comparison.strip_prefix(symbol).map(|n| (bound, n.trim())))
        .with_context(|| format!("bad comparison {comparison:?}"))?;
    let count = number.parse::<u64>().with_context(|| format!("{number:?} is not a count"))?;
    Ok((field, group_by, bound, count))
}

/// The record an event came from: its own top-level fields (see [`crate::mapping`]).
pub fn record_of(event: &crate::event::Event) -> Value {
    let map = event.extra.iter().map(|(k, v)| (k.clone(), serde_json::from_str(v).unwrap_or(Value::Null))).collect();
    Value::Object(map)
}

/// Every rule file under `dir` (`*.yml`, `*.yaml`, recursively), sorted.
pub fn rule_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|x| x == "yml" || x == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
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

/// The rule updates of a text of Sigma rules (from a rules topic: no placeholders), each from its
/// `effective_from` or 0; every document must parse (one may make several rules: see
/// [`parse_all`]).
pub fn parse_updates(text: &str) -> Result<Vec<crate::rules::RuleSpec>> {
    let mut specs = Vec::new();
    for (line, doc) in documents(text) {
        let rules = parse_all(doc, &Placeholders::new()).with_context(|| format!("Sigma rule at line {line}"))?;
        specs.extend(rules.into_iter().map(crate::rules::RuleSpec::from_sigma));
    }
    Ok(specs)
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

/// A compiled `detection`.
#[derive(Debug)]
struct Detection {
    searches: BTreeMap<String, Search>,
    /// Any of these (a condition list is an `or`).
    conditions: Vec<Condition>,
}

#[derive(Debug)]
enum Search {
    /// Any of these groups; in a group, every field matcher.
    Maps(Vec<Vec<FieldMatcher>>),
    /// Any of these values anywhere in the record.
    Keywords(Vec<Pattern>),
}

#[derive(Debug)]
struct FieldMatcher {
    field: String,
    /// Every value must match (`|all`), or any.
    all: bool,
    values: Vec<ValueMatcher>,
}

#[derive(Debug)]
enum ValueMatcher {
    /// The field is absent or null.
    Null,
    /// The field is present (`true`) or absent (`false`).
    Exists(bool),
    Pattern(Pattern),
    Regex(regex::Regex),
    Cidr(IpAddr, u8),
    /// Numeric comparison: `(ordering wanted, or-equal)`.
    Compare(std::cmp::Ordering, bool, f64),
    /// Equal to another field's value.
    FieldRef(String),
}

/// A wildcard pattern over text (lower-cased unless cased).
#[derive(Debug)]
struct Pattern {
    tokens: Vec<Token>,
    cased: bool,
}

#[derive(Debug, PartialEq)]
enum Token {
    Text(String),
    /// `*`: any run.
    Any,
    /// `?`: one character.
    One,
}

impl Pattern {
    /// A Sigma string value (`*`, `?` wildcards; `\*`, `\?`, `\\` escapes), with `*` added before
    /// and after as `contains`/`startswith`/`endswith` ask.
    fn new(value: &str, lead: bool, trail: bool, cased: bool) -> Pattern {
        let mut tokens = Vec::new();
        let mut text = String::new();
        let flush = |text: &mut String, tokens: &mut Vec<Token>| {
            if !text.is_empty() {
                tokens.push(Token::Text(std::mem::take(text)));
            }
        };
        if lead {
            tokens.push(Token::Any);
        }
        let mut chars = value.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if matches!(chars.peek(), Some('*' | '?' | '\\')) => text.push(chars.next().unwrap_or('\\')),
                '*' => {
                    flush(&mut text, &mut tokens);
                    tokens.push(Token::Any);
                }
                '?' => {
                    flush(&mut text, &mut tokens);
                    tokens.push(Token::One);
                }
                c => text.push(c),
            }
        }
        flush(&mut text, &mut tokens);
        if trail {
            tokens.push(Token::Any);
        }
        if !cased {
            for t in &mut tokens {
                if let Token::Text(s) = t {
                    *s = s.to_lowercase();
                }
            }
        }
        Pattern { tokens, cased }
    }

    fn matches(&self, text: &str) -> bool {
        let lowered;
        let text = if self.cased {
            text
        } else {
            lowered = text.to_lowercase();
            &lowered
        };
        matches_tokens(&self.tokens, text)
    }
}

/// Wildcard matching with backtracking on the last `*`.
fn matches_tokens(tokens: &[Token], text: &str) -> bool {
    match tokens.split_first() {
        None => text.is_empty(),
        Some((Token::Text(t), rest)) => text.strip_prefix(t.as_str()).is_some_and(|r| matches_tokens(rest, r)),
        Some((Token::One, rest)) => {
            let mut chars = text.chars();
            chars.next().is_some() && matches_tokens(rest, chars.as_str())
        }
        Some((Token::Any, rest)) => {
            if rest.is_empty() {
                return true;
            }
            text.char_indices().map(|(i, _)| i).chain(std::iter::once(text.len())).any(|i| matches_tokens(rest, &text[i..]))
        }
    }
}

#[derive(Debug)]
enum Condition {
    Search(String),
    Not(Box<Condition>),
    And(Vec<Condition>),
    Or(Vec<Condition>),
    /// At least `n` (all when `None`) of the searches whose names match the pattern.
    Of(Option<usize>, Vec<String>),
}

impl Detection {
    fn compile(detection: &serde_json::Map<String, Value>, placeholders: &Placeholders) -> Result<Detection> {
        let mut searches = BTreeMap::new();
        let mut conditions = Vec::new();
        for (name, value) in detection {
            if name == "condition" {
                let texts: Vec<&str> = match value {
                    Value::String(s) => vec![s.as_str()],
                    Value::Array(list) => list.iter().map(|v| v.as_str().ok_or_else(|| anyhow!("a condition is not text"))).collect::<Result<_>>()?,
                    _ => bail!("`condition` is not text"),
                };
                for text in texts {
                    conditions.push(parse_condition(text).with_context(|| format!("condition {text:?}"))?);
                }
            } else if name == "timeframe" {
                bail!("`timeframe` is not supported (write a correlation rule)");
            } else {
                searches.insert(name.clone(), compile_search(value, placeholders).with_context(|| format!("search `{name}`"))?);
            }
        }
        ensure!(!conditions.is_empty(), "no `condition`");
        let detection = Detection { searches, conditions };
        for c in &detection.conditions {
            detection.check(c)?;
        }
        Ok(detection)
    }

    /// Every search a condition names exists.
    fn check(&self, condition: &Condition) -> Result<()> {
        match condition {
            Condition::Search(name) => ensure!(self.searches.contains_key(name), "the condition names `{name}`, which is not defined"),
            Condition::Not(c) => self.check(c)?,
            Condition::And(cs) | Condition::Or(cs) => cs.iter().try_for_each(|c| self.check(c))?,
            Condition::Of(_, pattern) => ensure!(self.named(pattern).next().is_some(), "no search matches `{}`", pattern.concat()),
        }
        Ok(())
    }

    fn named<'a>(&'a self, pattern: &'a [String]) -> impl Iterator<Item = &'a Search> + 'a {
        self.searches.iter().filter(move |(name, _)| of_matches(pattern, name)).map(|(_, s)| s)
    }

    fn matches(&self, record: &Value) -> bool {
        self.conditions.iter().any(|c| self.eval(c, record))
    }

    fn eval(&self, condition: &Condition, record: &Value) -> bool {
        match condition {
            Condition::Search(name) => self.searches.get(name).is_some_and(|s| s.matches(record)),
            Condition::Not(c) => !self.eval(c, record),
            Condition::And(cs) => cs.iter().all(|c| self.eval(c, record)),
            Condition::Or(cs) => cs.iter().any(|c| self.eval(c, record)),
            Condition::Of(n, pattern) => match n {
                None => self.named(pattern).all(|s| s.matches(record)),
                Some(n) => self.named(pattern).filter(|s| s.matches(record)).count() >= *n,
            },
        }
    }
}

/// `them` (every search not starting with `_`) or a name pattern with `*`.
fn of_matches(pattern: &[String], name: &str) -> bool {
    if pattern == ["them"] {
        return !name.starts_with('_');
    }
    let tokens: Vec<Token> = pattern.iter().map(|p| if p == "*" { Token::Any } else { Token::Text(p.clone()) }).collect();
    matches_tokens(&tokens, name)
}

fn compile_search(value: &Value, placeholders: &Placeholders) -> Result<Search> {
    match value {
        Value::Object(map) => Ok(Search::Maps(vec![compile_map(map, placeholders)?])),
        Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
            let groups = items.iter().filter_map(Value::as_object).map(|m| compile_map(m, placeholders)).collect::<Result<_>>()?;
            Ok(Search::Maps(groups))
        }
        Value::Array(items) => Ok(Search::Keywords(items.iter().map(keyword).collect::<Result<_>>()?)),
        other => Ok(Search::Keywords(vec![keyword(other)?])),
    }
}

fn keyword(value: &Value) -> Result<Pattern> {
    match value {
        Value::String(s) => Ok(Pattern::new(s, true, true, false)),
        Value::Number(n) => Ok(Pattern::new(&n.to_string(), true, true, false)),
        other => bail!("keyword {other} is not text"),
    }
}

fn compile_map(map: &serde_json::Map<String, Value>, placeholders: &Placeholders) -> Result<Vec<FieldMatcher>> {
    map.iter().map(|(key, value)| compile_field(key, value, placeholders)).collect()
}

fn compile_field(key: &str, value: &Value, placeholders: &Placeholders) -> Result<FieldMatcher> {
    let mut parts = key.split('|');
    let field = parts.next().unwrap_or_default().to_string();
    let modifiers: Vec<&str> = parts.collect();
    let has = |m: &str| modifiers.contains(&m);
    for m in &modifiers {
        let known = ["contains", "startswith", "endswith", "all", "re", "i", "m", "s", "cidr", "exists", "fieldref", "cased", "expand", "gt", "gte", "lt", "lte"];
        ensure!(known.contains(m), "field `{field}`: the modifier `{m}` is not supported");
    }
    let raw: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    let mut texts: Vec<Option<String>> = Vec::new();
    for v in raw {
        match v {
            Value::Null => texts.push(None),
            Value::String(s) if has("expand") => texts.extend(expand(s, placeholders)?.into_iter().map(Some)),
            Value::String(s) => texts.push(Some(s.clone())),
            Value::Number(n) => texts.push(Some(n.to_string())),
            Value::Bool(b) => texts.push(Some(b.to_string())),
            other => bail!("field `{field}`: value {other} is not text"),
        }
    }
    let cased = has("cased");
    let values = texts
        .into_iter()
        .map(|text| {
            let Some(text) = text else { return Ok(ValueMatcher::Null) };
            Ok(if has("exists") {
                ValueMatcher::Exists(text.eq_ignore_ascii_case("true"))
            } else if has("re") {
                let regex = regex::RegexBuilder::new(&text)
                    .case_insensitive(has("i"))
                    .multi_line(has("m"))
                    .dot_matches_new_line(has("s"))
                    .build()
                    .with_context(|| format!("field `{field}`: bad regular expression"))?;
                ValueMatcher::Regex(regex)
            } else if has("cidr") {
                let (ip, bits) = parse_cidr(&text).with_context(|| format!("field `{field}`: bad CIDR {text:?}"))?;
                ValueMatcher::Cidr(ip, bits)
            } else if has("fieldref") {
                ValueMatcher::FieldRef(text)
            } else if let Some((ordering, equal)) = comparison(&has) {
                let number = text.parse::<f64>().with_context(|| format!("field `{field}`: {text:?} is not a number"))?;
                ValueMatcher::Compare(ordering, equal, number)
            } else {
                ValueMatcher::Pattern(Pattern::new(&text, has("contains") || has("endswith"), has("contains") || has("startswith"), cased))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(FieldMatcher { field, all: has("all"), values })
}

fn comparison(has: &dyn Fn(&str) -> bool) -> Option<(std::cmp::Ordering, bool)> {
    use std::cmp::Ordering::{Greater, Less};
    [("gt", Greater, false), ("gte", Greater, true), ("lt", Less, false), ("lte", Less, true)]
        .into_iter()
        .find(|(m, ..)| has(m))
        .map(|(_, o, e)| (o, e))
}

/// Replaces `%name%` placeholders by their configured values (one value each combination).
fn expand(text: &str, placeholders: &Placeholders) -> Result<Vec<String>> {
    let Some(start) = text.find('%') else { return Ok(vec![text.to_string()]) };
    let Some(len) = text[start + 1..].find('%') else { return Ok(vec![text.to_string()]) };
    let name = &text[start + 1..start + 1 + len];
    let values = placeholders.get(name).with_context(|| format!("the placeholder %{name}% is not configured"))?;
    let mut out = Vec::new();
    for value in values {
        let replaced = format!("{}{}{}", &text[..start], value, &text[start + 2 + len..]);
        out.extend(expand(&replaced, placeholders)?);
    }
    Ok(out)
}

fn parse_cidr(text: &str) -> Result<(IpAddr, u8)> {
    let (ip, bits) = text.split_once('/').unwrap_or((text, ""));
    let ip: IpAddr = ip.trim().parse()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = if bits.is_empty() { max } else { bits.trim().parse()? };
    ensure!(bits <= max, "prefix /{bits} is too long");
    Ok((ip, bits))
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits)) };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - u32::from(bits)) };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

impl Search {
    fn matches(&self, record: &Value) -> bool {
        match self {
            Search::Maps(groups) => groups.iter().any(|group| group.iter().all(|m| m.matches(record))),
            Search::Keywords(patterns) => patterns.iter().any(|p| any_string(record, &|s| p.matches(s))),
        }
    }
}

/// Whether any string (or number) in the record satisfies `test`.
fn any_string(value: &Value, test: &dyn Fn(&str) -> bool) -> bool {
    match value {
        Value::String(s) => test(s),
        Value::Number(n) => test(&n.to_string()),
        Value::Array(items) => items.iter().any(|v| any_string(v, test)),
        Value::Object(map) => map.values().any(|v| any_string(v, test)),
        _ => false,
    }
}

impl FieldMatcher {
    fn matches(&self, record: &Value) -> bool {
        let found = field(record, &self.field);
        let test = |m: &ValueMatcher| value_matches(m, &found, record);
        if self.all {
            self.values.iter().all(test)
        } else {
            self.values.iter().any(test)
        }
    }
}

fn value_matches(matcher: &ValueMatcher, found: &[&Value], record: &Value) -> bool {
    let present = found.iter().any(|v| !v.is_null());
    match matcher {
        ValueMatcher::Null => !present,
        ValueMatcher::Exists(wanted) => present == *wanted,
        ValueMatcher::FieldRef(other) => {
            let theirs: Vec<String> = field(record, other).into_iter().flat_map(scalars).collect();
            found.iter().flat_map(|v| scalars(v)).any(|x| theirs.iter().any(|y| x.eq_ignore_ascii_case(y)))
        }
        _ => found.iter().flat_map(|v| scalars(v)).any(|text| match matcher {
            ValueMatcher::Pattern(p) => p.matches(&text),
            ValueMatcher::Regex(r) => r.is_match(&text),
            ValueMatcher::Cidr(net, bits) => text.parse::<IpAddr>().is_ok_and(|ip| in_cidr(ip, *net, *bits)),
            ValueMatcher::Compare(ordering, equal, n) => text
                .parse::<f64>()
                .is_ok_and(|x| x.partial_cmp(n).is_some_and(|o| o == *ordering || (*equal && o == std::cmp::Ordering::Equal))),
            _ => false,
        }),
    }
}

/// A value's texts: itself, or each element of an array.
fn scalars(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Number(n) => vec![n.to_string()],
        Value::Bool(b) => vec![b.to_string()],
        Value::Array(items) => items.iter().flat_map(scalars).collect(),
        _ => Vec::new(),
    }
}

/// A field's values by its Sigma name: a top-level key with that exact name, or the dotted path,
/// where a segment that meets an array follows every element (a number indexes it).
fn field<'v>(record: &'v Value, name: &str) -> Vec<&'v Value> {
    if let Some(v) = record.get(name) {
        return vec![v];
    }
    let mut values = vec![record];
    for segment in name.split('.') {
        let mut next = Vec::new();
        for value in values {
            step(value, segment, &mut next);
        }
        values = next;
    }
    values
}

fn step<'v>(value: &'v Value, segment: &str, out: &mut Vec<&'v Value>) {
    match value {
        Value::Object(map) => out.extend(map.get(segment)),
        Value::Array(items) => match segment.parse::<usize>() {
            Ok(i) => out.extend(items.get(i)),
            Err(_) => items.iter().for_each(|item| step(item, segment, out)),
        },
        _ => {}
    }
}

/// Parses a condition: `or` < `and` < `not` < atoms (`( ... )`, `N of X`, `all of X`, a name).
fn parse_condition(text: &str) -> Result<Condition> {
    ensure!(!text.contains('|'), "aggregations (`| count()`, `| near`) are not supported (write a correlation rule)");
    let tokens: Vec<String> = text.replace('(', " ( ").replace(')', " ) ").split_whitespace().map(str::to_string).collect();
    let mut parser = ConditionParser { tokens, at: 0 };
    let condition = parser.or()?;
    ensure!(parser.at == parser.tokens.len(), "unexpected `{}`", parser.tokens[parser.at]);
    Ok(condition)
}

struct ConditionParser {
    tokens: Vec<String>,
    at: usize,
}

impl ConditionParser {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.at).map(String::as_str)
    }

    fn next(&mut self) -> Result<String> {
        let token = self.tokens.get(self.at).cloned().context("the condition ends too early")?;
        self.at += 1;
        Ok(token)
    }

    fn or(&mut self) -> Result<Condition> {
        let mut items = vec![self.and()?];
        while self.peek().is_some_and(|t| t.eq_ignore_ascii_case("or")) {
            self.at += 1;
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Condition::Or(items) })
    }

    fn and(&mut self) -> Result<Condition> {
        let mut items = vec![self.not()?];
        while self.peek().is_some_and(|t| t.eq_ignore_ascii_case("and")) {
            self.at += 1;
            items.push(self.not()?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Condition::And(items) })
    }

    fn not(&mut self) -> Result<Condition> {
        if self.peek().is_some_and(|t| t.eq_ignore_ascii_case("not")) {
            self.at += 1;
            return Ok(Condition::Not(Box::new(self.not()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Condition> {
        let token = self.next()?;
        if token == "(" {
            let inner = self.or()?;
            ensure!(self.next()? == ")", "missing `)`");
            return Ok(inner);
        }
        if self.peek().is_some_and(|t| t.eq_ignore_ascii_case("of")) {
            self.at += 1;
            let count = if token.eq_ignore_ascii_case("all") {
                None
            } else {
                Some(token.parse::<usize>().with_context(|| format!("`{token} of`: expected a number or `all`"))?)
            };
            let target = self.next()?;
            // `selection_*` as its literal parts and wildcards.
            let mut pattern = Vec::new();
            for (i, part) in target.split('*').enumerate() {
                if i > 0 {
                    pattern.push("*".to_string());
                }
                if !part.is_empty() {
                    pattern.push(part.to_string());
                }
            }
            return Ok(Condition::Of(count, pattern));
        }
        ensure!(!["and", "or", ")"].iter().any(|k| token.eq_ignore_ascii_case(k)), "unexpected `{token}`");
        Ok(Condition::Search(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(detection: &str) -> SigmaRule {
        SigmaRule::parse(&format!("title: t\nlogsource: {{product: aws, service: cloudtrail}}\ndetection:\n{detection}"), &Placeholders::new())
            .unwrap()
    }

    #[test]
    fn values_modifiers_and_conditions() {
        let record = serde_json::json!({"eventName": "PutBucketPolicy", "src": "10.1.2.3", "n": 42, "tags": ["a", "B"],
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
        assert!(expanded.matches_record(&serde_json::json!({"a": "BOB"})));
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
        assert!(!rule.matches_record(&serde_json::json!({"ComputerName": "x"})));
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
            let record = serde_json::json!({"eventSource": "ec2.amazonaws.com", "eventName": "DescribeDhcpOptions", "x": 1});
            assert_eq!(again.matches_record(&record), rule.matches_record(&record));
        }
    }

    #[test]
    fn legacy_count_becomes_a_correlation() {
        let text = include_str!("../tests/data/sigmahq-cloud-rules/unsupported/cloud/aws_enum_network.yml");
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
        assert!(base.matches_record(&serde_json::json!({"eventSource": "ec2.amazonaws.com", "eventName": "DescribeDhcpOptions"})));
        assert!(!base.matches_record(&serde_json::json!({"eventSource": "ec2.amazonaws.com", "eventName": "RunInstances"})));
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
        let specs = parse_updates(&format!("{text}\n---\ntitle: b\nlogsource: {{product: aws}}\ndetection:\n  s: {{x: 2}}\n  condition: s\n")).unwrap();
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
        assert!(rules[0].matches_record(&serde_json::json!({"a": 1})) && !rules[0].matches_record(&serde_json::json!({"a": 1, "b": 2})));
        let c = rules[1].correlation().unwrap();
        assert_eq!((c.kind, c.field.as_deref(), c.group_by.clone()), (CorrelationKind::ValueCount, Some("userName"), vec!["ip".to_string(), "host".to_string()]));
        assert_eq!(c.condition, CountCondition { gte: Some(3), ..CountCondition::default() });
        round_trips(&rules);

        let rules = legacy("  a: {x: 1}\n  b: {y: 2}\n  timeframe: 5m\n  condition: a | near b\n").unwrap();
        let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["r:a", "r:b", "r"]);
        assert!(rules[0].matches_record(&serde_json::json!({"x": 1})) && !rules[0].matches_record(&serde_json::json!({"y": 2})));
        assert!(rules[1].matches_record(&serde_json::json!({"y": 2})));
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
        let specs = parse_updates(text).unwrap();
        let got: Vec<(&str, u64, Option<&str>)> = specs.iter().map(|s| (s.id.as_str(), s.effective_from, s.title.as_deref())).collect();
        assert_eq!(got, [("a", 5000, Some("a")), ("b", 0, Some("b"))]);
        assert!(parse_updates("title: c\ndetection:\n  condition: s\n").is_err());
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
