//! Legacy aggregations in a detection (`SEARCH | count() by FIELD > N`, `A | near B`) rewritten
//! to base detection rules and a correlation rule over them (see [`super::parse_all`]).


use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;


/// The condition texts of a `detection` (one, or a list; what is not text is left out).
pub(super) fn condition_texts(detection: &serde_json::Map<String, Value>) -> Vec<&str> {
    match detection.get("condition") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Whether a rule document is a legacy aggregation: its detection has a `timeframe`, or a
/// condition with `|`.
pub(super) fn is_legacy_aggregation(rule: &Value) -> bool {
    let Some(detection) = rule.get("detection").and_then(Value::as_object) else { return false };
    detection.contains_key("timeframe") || condition_texts(detection).iter().any(|c| c.contains('|'))
}

/// `text` without `prefix` (in any case), when it starts with it.
pub(super) fn strip_prefix_ci<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// Whether a condition token can name one search (no operator, parenthesis or wildcard).
pub(super) fn is_search_name(token: &str) -> bool {
    !token.is_empty()
        && !token.contains(['(', ')', '*', '|'])
        && !["and", "or", "not", "of", "all", "them", "near", "by"].iter().any(|k| token.eq_ignore_ascii_case(k))
}

/// The documents a legacy aggregation rule becomes (see [`parse_all`]).
pub(super) fn legacy_rules(rule: &Value) -> Result<Vec<Value>> {
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
pub(super) fn base_rule(rule: &Value, id: &str, condition: &str) -> Value {
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
pub(super) fn parse_count(text: &str) -> Result<(Option<String>, Vec<String>, &'static str, u64)> {
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
