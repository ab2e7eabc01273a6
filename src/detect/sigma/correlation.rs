//! Sigma correlation (meta) rules as parsed: the type, the rules they count, `group-by`,
//! `timespan` and the count condition. `crate::detect::correlation` evaluates them.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;


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
    pub(super) fn parse(map: &serde_json::Map<String, Value>) -> Result<(CountCondition, Option<String>)> {
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
    pub(super) fn parse(rule: &Value) -> Result<Correlation> {
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
pub(super) fn strings(value: Option<&Value>, key: &str) -> Result<Vec<String>> {
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
pub(super) fn parse_timespan(value: &Value) -> Result<crate::event::Time> {
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
