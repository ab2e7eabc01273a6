//! Threat-intel indicator files: JSON lines, STIX 2.1 bundles and CSV lists, read once or followed
//! as a directory while the job runs (see [`crate::enrich::intel`] for what an indicator is).
//!
//! - **JSON lines**: `{"type": "ip", "value": "203.0.113.0/24", "source": "feed", "confidence": 80,
//!   "effective_from": 0, "expires": "2026-12-31T00:00:00Z"}`; `id` defaults to
//!   `SOURCE:TYPE:VALUE`, `source` to the file's name, `confidence` to 50, `effective_from` to 0;
//!   `{"id": ..., "remove": true, "effective_from": ...}` removes one. Times are milliseconds or
//!   RFC 3339.
//! - **STIX 2.1**: a bundle (or a single object) whose `indicator` objects have `pattern_type`
//!   `stix` and a pattern of equality comparisons joined by `OR` (`ISSUBSET` for networks) on
//!   `ipv4-addr:value`, `ipv6-addr:value`, `domain-name:value`, `email-addr:value`,
//!   `user-account:user_id` or `:account_login`, `autonomous-system:number`, `file:hashes.*` and
//!   `network-traffic:extensions.'http-request-ext'.request_header.'User-Agent'`; `valid_from`,
//!   `valid_until`, `confidence`, `revoked`, and the source from `created_by_ref` (the identity's
//!   name when the bundle holds it). Other patterns are refused with the reason.
//! - **CSV**: a header naming `type` and `value` (also `indicator`), and optionally `id`, `source`,
//!   `confidence`, `effective_from`, `expires`, `remove`.
//!
//! A record that does not parse is reported with its file and line and skipped; the others load.
//!
//! ```
//! use threatflow::control::intel::parse_indicators;
//! let stix = r#"{"type": "bundle", "id": "bundle--1", "objects": [
//!   {"type": "identity", "id": "identity--a", "name": "ACME CERT"},
//!   {"type": "indicator", "id": "indicator--1", "created_by_ref": "identity--a", "confidence": 90,
//!    "pattern_type": "stix", "valid_from": "2026-01-01T00:00:00Z",
//!    "pattern": "[ipv4-addr:value = '198.51.100.7'] OR [domain-name:value = 'evil.example']"}]}"#;
//! let (updates, refused) = parse_indicators(stix, "feed.json");
//! assert!(refused.is_empty());
//! let values: Vec<_> = updates.iter().map(|u| u.indicator.as_ref().map(|i| (i.value.as_str(), i.source.as_str(), i.confidence))).collect();
//! assert_eq!(values, [Some(("198.51.100.7", "ACME CERT", 90)), Some(("evil.example", "ACME CERT", 90))]);
//! assert_eq!(updates[0].effective_from, 1_767_225_600_000);
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

use crate::enrich::intel::{Indicator, IndicatorKind, IndicatorUpdate};

/// The confidence of an indicator that states none.
pub const DEFAULT_CONFIDENCE: u8 = 50;

/// The indicators of a file's text (`origin` names it in errors and is the default source), and
/// why each record that was skipped was refused.
pub fn parse_indicators(text: &str, origin: &str) -> (Vec<IndicatorUpdate>, Vec<String>) {
    let source = Path::new(origin).file_stem().map_or_else(|| origin.to_string(), |s| s.to_string_lossy().into_owned());
    let first_line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or_default();
    let mut updates = Vec::new();
    let mut refused = Vec::new();
    if first_line.starts_with('{') {
        // One JSON document (a STIX bundle, possibly over many lines), or JSON lines.
        if let Ok(document) = serde_json::from_str::<Value>(text) {
            if document.get("type").and_then(Value::as_str).is_some_and(|t| t == "bundle" || t == "indicator") {
                stix(&document, &source, origin, &mut updates, &mut refused);
                return (updates, refused);
            }
        }
        for (number, line) in crate::ingest::lines::data_lines(text) {
            let parsed = serde_json::from_str::<Value>(line).map_err(anyhow::Error::from).and_then(|record| {
                if record.get("type").and_then(Value::as_str) == Some("indicator") {
                    let mut refused_here = Vec::new();
                    stix(&record, &source, origin, &mut updates, &mut refused_here);
                    return refused_here.into_iter().next().map_or(Ok(()), |why| Err(anyhow!(why)));
                }
                updates.push(json_record(&record, &source)?);
                Ok(())
            });
            if let Err(error) = parsed {
                refused.push(format!("{origin}:{number}: {error:#}"));
            }
        }
    } else {
        csv_records(text, &source, origin, &mut updates, &mut refused);
    }
    (updates, refused)
}

/// A time given as milliseconds or RFC 3339.
fn time_of(value: &Value) -> Result<u64> {
    match value {
        Value::Number(n) => n.as_u64().ok_or_else(|| anyhow!("time {n} is not a whole number of milliseconds")),
        Value::String(s) => match s.parse::<u64>() {
            Ok(ms) => Ok(ms),
            Err(_) => crate::event::parse_rfc3339_ms(s).map_err(|e| anyhow!(e)),
        },
        other => bail!("time {other} is neither milliseconds nor RFC 3339"),
    }
}

fn optional_time(record: &Value, names: &[&str]) -> Result<Option<u64>> {
    match names.iter().find_map(|n| record.get(*n).filter(|v| !v.is_null())) {
        Some(value) => time_of(value).map(Some).with_context(|| format!("`{}`", names[0])),
        None => Ok(None),
    }
}

fn confidence_of(value: Option<&Value>) -> Result<u8> {
    match value {
        None | Some(Value::Null) => Ok(DEFAULT_CONFIDENCE),
        Some(Value::Number(n)) => n.as_u64().filter(|c| *c <= 100).map(|c| c as u8).ok_or_else(|| anyhow!("confidence {n} is not within 0-100")),
        Some(Value::String(s)) => s.trim().parse::<u8>().ok().filter(|c| *c <= 100).ok_or_else(|| anyhow!("confidence {s:?} is not within 0-100")),
        Some(other) => bail!("confidence {other} is not a number"),
    }
}

/// One JSON-lines record.
fn json_record(record: &Value, default_source: &str) -> Result<IndicatorUpdate> {
    let text = |name: &str| record.get(name).and_then(Value::as_str);
    let effective_from = optional_time(record, &["effective_from", "valid_from"])?.unwrap_or(0);
    if record.get("remove").and_then(Value::as_bool) == Some(true) {
        let id = text("id").ok_or_else(|| anyhow!("a removal needs the `id` of the indicator it removes"))?;
        return Ok(IndicatorUpdate { id: id.to_string(), effective_from, indicator: None });
    }
    let kind = IndicatorKind::parse(text("type").or_else(|| text("kind")).ok_or_else(|| anyhow!("no `type`"))?)?;
    let value = match record.get("value").or_else(|| record.get("indicator")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => bail!("no `value`"),
    };
    let source = text("source").unwrap_or(default_source);
    let id = text("id").map_or_else(|| format!("{source}:{}:{value}", kind.as_str()), str::to_string);
    let expires = optional_time(record, &["expires", "valid_until"])?;
    let indicator = Indicator::new(&id, kind, &value, source, confidence_of(record.get("confidence"))?, effective_from, expires)?;
    Ok(IndicatorUpdate { id, effective_from, indicator: Some(indicator) })
}

/// The indicators of CSV text with a header row.
fn csv_records(text: &str, default_source: &str, origin: &str, updates: &mut Vec<IndicatorUpdate>, refused: &mut Vec<String>) {
    let mut reader = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).comment(Some(b'#')).from_reader(text.as_bytes());
    let headers: Vec<String> = match reader.headers() {
        Ok(headers) => headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
        Err(error) => {
            refused.push(format!("{origin}: no CSV header: {error}"));
            return;
        }
    };
    if !headers.iter().any(|h| h == "type" || h == "kind") || !headers.iter().any(|h| h == "value" || h == "indicator") {
        refused.push(format!("{origin}: the CSV header must name `type` and `value` columns, not {headers:?}"));
        return;
    }
    for row in reader.records() {
        let (line, parsed) = match row {
            Ok(row) => {
                let line = row.position().map_or(0, |p| p.line());
                // As a JSON record: the same defaults and checks.
                let record: serde_json::Map<String, Value> = headers
                    .iter()
                    .zip(row.iter())
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(h, v)| {
                        let value = match h.as_str() {
                            "remove" => Value::Bool(matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes")),
                            _ => Value::String(v.to_string()),
                        };
                        (h.clone(), value)
                    })
                    .collect();
                (line, json_record(&Value::Object(record), default_source))
            }
            Err(error) => (error.position().map_or(0, |p| p.line()), Err(error.into())),
        };
        match parsed {
            Ok(update) => updates.push(update),
            Err(error) => refused.push(format!("{origin}:{line}: {error:#}")),
        }
    }
}

/// The indicators of a STIX 2.1 bundle or indicator object.
fn stix(document: &Value, default_source: &str, origin: &str, updates: &mut Vec<IndicatorUpdate>, refused: &mut Vec<String>) {
    let objects: Vec<&Value> = match document.get("objects").and_then(Value::as_array) {
        Some(objects) => objects.iter().collect(),
        None => vec![document],
    };
    let identities: HashMap<&str, &str> = objects
        .iter()
        .filter(|o| o.get("type").and_then(Value::as_str) == Some("identity"))
        .filter_map(|o| Some((o.get("id")?.as_str()?, o.get("name")?.as_str()?)))
        .collect();
    for object in objects.iter().filter(|o| o.get("type").and_then(Value::as_str) == Some("indicator")) {
        let id = object.get("id").and_then(Value::as_str).unwrap_or("indicator");
        if let Err(error) = stix_indicator(object, &identities, default_source, updates) {
            refused.push(format!("{origin}: {id}: {error:#}"));
        }
    }
}

fn stix_indicator(object: &Value, identities: &HashMap<&str, &str>, default_source: &str, updates: &mut Vec<IndicatorUpdate>) -> Result<()> {
    let id = object.get("id").and_then(Value::as_str).ok_or_else(|| anyhow!("an indicator without an `id`"))?;
    let pattern_type = object.get("pattern_type").and_then(Value::as_str).unwrap_or("stix");
    ensure!(pattern_type == "stix", "pattern_type {pattern_type:?}: only STIX patterns are read");
    let pattern = object.get("pattern").and_then(Value::as_str).ok_or_else(|| anyhow!("no `pattern`"))?;
    let comparisons = stix_comparisons(pattern)?;
    let effective_from = optional_time(object, &["valid_from"])?.ok_or_else(|| anyhow!("no `valid_from`"))?;
    let expires = optional_time(object, &["valid_until"])?;
    let source = match object.get("created_by_ref").and_then(Value::as_str) {
        Some(creator) => identities.get(creator).copied().unwrap_or(creator),
        None => default_source,
    };
    let confidence = confidence_of(object.get("confidence"))?;
    let revoked = object.get("revoked").and_then(Value::as_bool) == Some(true);
    let several = comparisons.len() > 1;
    for (n, (kind, value)) in comparisons.into_iter().enumerate() {
        let id = if several { format!("{id}#{n}") } else { id.to_string() };
        let indicator = match revoked {
            true => None,
            false => Some(Indicator::new(&id, kind, &value, source, confidence, effective_from, expires)?),
        };
        updates.push(IndicatorUpdate { id, effective_from, indicator });
    }
    Ok(())
}

/// The `(kind, value)` comparisons of a STIX pattern made only of equality (or `ISSUBSET`)
/// comparisons joined by `OR`.
///
/// ```
/// use threatflow::control::intel::stix_comparisons;
/// use threatflow::enrich::intel::IndicatorKind;
/// let found = stix_comparisons("[file:hashes.'SHA-256' = 'AB12' OR ipv4-addr:value ISSUBSET '10.0.0.0/8']")?;
/// assert_eq!(found, [(IndicatorKind::Hash, "AB12".to_string()), (IndicatorKind::Ip, "10.0.0.0/8".to_string())]);
/// assert!(stix_comparisons("[ipv4-addr:value = '1.2.3.4' AND domain-name:value = 'x.example']").is_err());
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn stix_comparisons(pattern: &str) -> Result<Vec<(IndicatorKind, String)>> {
    static COMPARISON: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"([a-z0-9-]+):([A-Za-z0-9_.'\-]+)\s*(=|ISSUBSET)\s*'((?:[^'\\]|\\.)*)'").expect("a valid regex")
    });
    let mut found = Vec::new();
    for comparison in COMPARISON.captures_iter(pattern) {
        let (object, path, value) = (&comparison[1], &comparison[2], comparison[4].replace("\\'", "'").replace("\\\\", "\\"));
        let kind = match (object, path) {
            ("ipv4-addr" | "ipv6-addr", "value") => IndicatorKind::Ip,
            ("domain-name", "value") => IndicatorKind::Domain,
            ("email-addr", "value") | ("user-account", "user_id" | "account_login") => IndicatorKind::User,
            ("autonomous-system", "number") => IndicatorKind::Asn,
            ("file", path) if path.starts_with("hashes.") => IndicatorKind::Hash,
            ("network-traffic", path) if path.to_ascii_lowercase().ends_with("request_header.'user-agent'") => IndicatorKind::UserAgent,
            (object, path) => bail!("{object}:{path} is not an indicator type threatflow matches"),
        };
        found.push((kind, value));
    }
    let rest = COMPARISON.replace_all(pattern, "");
    let connectors: BTreeSet<&str> = rest.split(|c: char| c.is_whitespace() || c == '[' || c == ']').filter(|w| !w.is_empty()).collect();
    ensure!(!found.is_empty(), "no comparison in the pattern {pattern:?}");
    ensure!(connectors.iter().all(|w| *w == "OR"), "only comparisons joined by OR are read, not {:?} in {pattern:?}", connectors);
    Ok(found)
}

/// The indicator files of a directory (`.jsonl`, `.json`, `.ndjson`, `.stix`, `.csv`), sorted;
/// a file is itself.
pub fn indicator_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
        let file = entry.with_context(|| format!("reading {}", path.display()))?.path();
        let known = file.extension().and_then(|e| e.to_str()).is_some_and(|e| ["jsonl", "json", "ndjson", "stix", "csv"].contains(&e));
        if known && file.is_file() {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

/// The indicators of one file, and why each record skipped was refused.
pub fn read_file(file: &Path) -> Result<(Vec<IndicatorUpdate>, Vec<String>)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading indicators {}", file.display()))?;
    Ok(parse_indicators(&text, &file.display().to_string()))
}

/// Reads the indicators of a file or directory once; what was refused is logged and skipped.
pub fn read_indicators(path: &Path) -> Result<Vec<IndicatorUpdate>> {
    let mut updates = Vec::new();
    for file in indicator_files(path)? {
        let (read, refused) = read_file(&file)?;
        for why in &refused {
            tracing::error!("indicator refused, skipped: {why}");
        }
        tracing::info!(indicators = read.len(), refused = refused.len(), file = %file.display(), "indicators read");
        updates.extend(read);
    }
    Ok(updates)
}

/// A followed directory (or file) of indicators, scanned each round: the first scan puts every
/// indicator in force from its `effective_from`; later, a new or changed file's indicators are
/// (re)applied and the ones gone from it removed, and a deleted file's are removed, all from the
/// current frontier at the earliest (see [`crate::control::feed`]).
pub struct IndicatorDir {
    path: PathBuf,
    /// Each file's modification time and length, and its indicators' ids.
    files: BTreeMap<PathBuf, (Option<std::time::SystemTime>, u64, Vec<String>)>,
}

impl IndicatorDir {
    /// Follows `path`.
    pub fn new(path: PathBuf) -> Self {
        IndicatorDir { path, files: BTreeMap::new() }
    }

    /// The updates since the last scan (none when nothing changed).
    pub fn scan(&mut self) -> Vec<IndicatorUpdate> {
        let files = match indicator_files(&self.path) {
            Ok(files) => files,
            Err(error) => {
                tracing::warn!("indicators: {error:#}");
                return Vec::new();
            }
        };
        let mut updates = Vec::new();
        let mut seen = BTreeSet::new();
        for file in files {
            let Ok(meta) = std::fs::metadata(&file) else { continue };
            let stamp = (meta.modified().ok(), meta.len());
            seen.insert(file.clone());
            if self.files.get(&file).is_some_and(|(modified, len, _)| (*modified, *len) == stamp) {
                continue;
            }
            // Unreadable for now (being replaced, say): tried again on the next scan.
            let Ok((read, refused)) = read_file(&file) else { continue };
            for why in &refused {
                tracing::error!("indicator refused, skipped: {why}");
            }
            let ids: Vec<String> = read.iter().map(|u| u.id.clone()).collect();
            let before = self.files.insert(file, (stamp.0, stamp.1, ids.clone())).map(|(_, _, ids)| ids).unwrap_or_default();
            let from = read.iter().map(|u| u.effective_from).min().unwrap_or(0);
            updates.extend(read);
            updates.extend(before.into_iter().filter(|id| !ids.contains(id)).map(|id| IndicatorUpdate { id, effective_from: from, indicator: None }));
        }
        let deleted: Vec<PathBuf> = self.files.keys().filter(|p| !seen.contains(*p)).cloned().collect();
        for file in deleted {
            if let Some((_, _, ids)) = self.files.remove(&file) {
                updates.extend(ids.into_iter().map(|id| IndicatorUpdate { id, effective_from: 0, indicator: None }));
            }
        }
        updates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_and_csv_read_with_their_defaults_and_refusals() {
        let jsonl = "# a comment\n{\"type\": \"ASN\", \"value\": \"AS64500\"}\n{\"type\": \"domain\", \"value\": \"Evil.example\", \"source\": \"cert\", \"confidence\": 90, \"effective_from\": \"2026-01-01T00:00:00Z\", \"expires\": 1767225600001}\n{\"id\": \"x\", \"remove\": true, \"effective_from\": 5}\nnot json\n{\"type\": \"ip\", \"value\": \"300.1.1.1\"}\n";
        let (updates, refused) = parse_indicators(jsonl, "/feeds/team.jsonl");
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].starts_with("/feeds/team.jsonl:5:") && refused[1].contains("300.1.1.1"), "{refused:?}");
        let asn = updates[0].indicator.as_ref().unwrap();
        assert_eq!((asn.id.as_str(), asn.value.as_str(), asn.source.as_str(), asn.confidence, asn.effective_from), ("team:asn:AS64500", "64500", "team", 50, 0));
        let domain = updates[1].indicator.as_ref().unwrap();
        assert_eq!((domain.value.as_str(), domain.effective_from, domain.expires), ("evil.example", 1_767_225_600_000, Some(1_767_225_600_001)));
        assert_eq!((updates[2].id.as_str(), updates[2].effective_from, updates[2].indicator.is_none()), ("x", 5, true));

        let csv = "Type,Value,Confidence,Source\nuser_agent,\"Mozilla/5.0 (X11, Linux)\",30,ua-feed\nsha256,ABCDEF,101,h\n";
        let (updates, refused) = parse_indicators(csv, "list.csv");
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].indicator.as_ref().unwrap().value, "Mozilla/5.0 (X11, Linux)");
        assert!(refused.len() == 1 && refused[0].contains("list.csv:3") && refused[0].contains("101"), "{refused:?}");
        let (_, refused) = parse_indicators("ip,value\n1.2.3.4,x\n", "bad.csv");
        assert!(refused[0].contains("`type` and `value`"), "{refused:?}");
    }
}
