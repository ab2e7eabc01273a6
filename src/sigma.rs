//! Sigma detection rules: parsed from YAML, compiled once, matched against providers' records.
//!
//! What the SigmaHQ cloud rules use is supported: field maps (all fields must match) and lists of
//! maps (any), value lists (any; every one with `|all`), nested dotted field names, the modifiers
//! `contains`, `startswith`, `endswith`, `all`, `re` (with `i`, `m`, `s`), `cidr`, `exists`,
//! `fieldref`, `cased`, `gt`/`gte`/`lt`/`lte`, and `expand` with configured placeholders;
//! `null`; keyword lists (any string value of the record contains the keyword); and conditions
//! with `and`, `or`, `not`, parentheses, `1 of`/`all of` with wildcards and `them`. Values match
//! case-insensitively (Sigma's rule) with `*` and `?` wildcards, unless `|cased`. A rule that uses
//! anything else (other modifiers, `| count()` aggregations) is refused with the reason.
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

/// A compiled Sigma detection rule. Compared, hashed and serialised by its source text, so it can
/// travel in the control collection; compiled once when parsed.
#[derive(Clone)]
pub struct SigmaRule {
    /// The rule's `id` (its title when it has none).
    pub id: String,
    /// The rule's `title`.
    pub title: String,
    /// The rule's `level`, when given.
    pub level: Option<String>,
    /// `logsource.product`.
    pub product: Option<String>,
    /// `logsource.service`.
    pub service: Option<String>,
    /// The rule's own `effective_from` (a top-level key threatflow reads, ms or RFC 3339; Sigma
    /// allows custom keys), when it has one.
    pub effective_from: Option<crate::event::Time>,
    text: Arc<str>,
    /// The placeholders it was compiled with (kept to compile it again when deserialised).
    placeholders: Arc<Placeholders>,
    detection: Arc<Detection>,
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
    level: Option<String>,
    #[serde(default)]
    logsource: LogSourceDoc,
    detection: serde_json::Map<String, Value>,
}

#[derive(Default, Deserialize)]
struct LogSourceDoc {
    #[serde(default)]
    product: Option<String>,
    #[serde(default)]
    service: Option<String>,
}

impl SigmaRule {
    /// Parses and compiles one rule (one YAML document). Placeholders used with `|expand` are
    /// replaced by their configured values; one that is not configured is an error.
    pub fn parse(text: &str, placeholders: &Placeholders) -> Result<SigmaRule> {
        let value: Value = serde_norway::from_str(text).context("not YAML")?;
        if value.get("correlation").is_some() {
            bail!("correlation rules are not supported yet");
        }
        let effective_from = effective_from(&value)?;
        let doc: RuleDoc = serde_json::from_value(value).context("not a Sigma rule")?;
        let detection = Detection::compile(&doc.detection, placeholders).with_context(|| format!("rule {:?}", doc.title))?;
        Ok(SigmaRule {
            id: doc.id.clone().unwrap_or_else(|| doc.title.clone()),
            title: doc.title,
            level: doc.level,
            product: doc.logsource.product.map(|p| p.to_lowercase()),
            service: doc.logsource.service.map(|s| s.to_lowercase()),
            effective_from,
            text: Arc::from(text),
            placeholders: Arc::new(placeholders.clone()),
            detection: Arc::new(detection),
        })
    }

    /// The rule's text.
    pub fn text(&self) -> &str {
        &self.text
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
    /// matches the event's record (`record` makes it, once per event).
    pub fn matches_event(&self, event: &crate::event::Event, record: &std::cell::OnceCell<Value>) -> bool {
        event.source.as_deref().is_some_and(|source| self.applies_to(source))
            && self.matches_record(record.get_or_init(|| record_of(event)))
    }

    /// Whether the rule's detection matches a record (its logsource is not checked here).
    pub fn matches_record(&self, record: &Value) -> bool {
        self.detection.matches(record)
    }
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

/// The rules of one file (`---` separates them), and for each one refused, `FILE:LINE: reason`.
pub fn read_file(path: &std::path::Path, placeholders: &Placeholders) -> (Vec<SigmaRule>, Vec<String>) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => return (Vec::new(), vec![format!("{}: {error}", path.display())]),
    };
    let (mut rules, mut refused) = (Vec::new(), Vec::new());
    for (line, doc) in documents(&text) {
        match SigmaRule::parse(doc, placeholders) {
            Ok(rule) => rules.push(rule),
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

/// Whether a text holds Sigma rules (a top-level `detection:` key) rather than threshold rules.
pub fn is_sigma(text: &str) -> bool {
    text.lines().any(|l| l.starts_with("detection:"))
}

/// The rule updates of a text of Sigma rules (from a rules topic: no placeholders), each from its
/// `effective_from` or 0; every document must parse.
pub fn parse_updates(text: &str) -> Result<Vec<crate::rules::RuleSpec>> {
    documents(text)
        .into_iter()
        .map(|(line, doc)| {
            let rule = SigmaRule::parse(doc, &Placeholders::new()).with_context(|| format!("Sigma rule at line {line}"))?;
            Ok(crate::rules::RuleSpec::from_sigma(rule))
        })
        .collect()
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
        assert!(err(&format!("{base}  s: {{a: x}}\n  condition: s | count() > 5")).contains("aggregations"));
        assert!(err(&format!("{base}  s: {{a: x}}\n  condition: t")).contains("names `t`"));
        assert!(err(&format!("{base}  s: {{a|expand: '%admins%'}}\n  condition: s")).contains("%admins% is not configured"));
        let placeholders = Placeholders::from([("admins".to_string(), vec!["ann".to_string(), "bob".to_string()])]);
        let expanded = SigmaRule::parse(&format!("{base}  s: {{a|expand: '%admins%'}}\n  condition: s"), &placeholders).unwrap();
        assert!(expanded.matches_record(&serde_json::json!({"a": "BOB"})));
        assert!(err("title: t\ncorrelation: {type: event_count}\n").contains("correlation rules are not supported yet"));
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
