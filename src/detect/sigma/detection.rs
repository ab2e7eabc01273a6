//! A rule's `detection` compiled: searches (field maps, lists, keywords), value matchers with
//! their modifiers, wildcard patterns, and how a record's fields are found by Sigma name.
//!
//! A field's list of `contains` values is one Aho-Corasick automaton and its list of `re` values one
//! `RegexSet`, so a record's text is scanned once per list, not once per value; and a record is
//! read through a [`RecordView`], which finds and case-folds each field once however many rules and
//! values ask for it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use aho_corasick::AhoCorasick;
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use smallvec::SmallVec;
use sonic_rs::{JsonContainerTrait, JsonValueTrait};

use crate::event::{Fields, Record};

use super::condition::{parse_condition, Condition};

/// Placeholder values for `|expand` (`%name%` to its values).
pub type Placeholders = BTreeMap<String, Vec<String>>;

/// A compiled `detection`.
#[derive(Debug)]
pub(super) struct Detection {
    searches: BTreeMap<String, Search>,
    /// Any of these (a condition list is an `or`).
    conditions: Vec<Condition>,
    /// Its [`Requirement`]s, found when compiled.
    requirements: Vec<Requirement>,
}

#[derive(Debug)]
pub(super) enum Search {
    /// Any of these groups; in a group, every field matcher.
    Maps(Vec<Vec<FieldMatcher>>),
    /// Any of these values anywhere in the record.
    Keywords(Vec<Pattern>),
}

#[derive(Debug)]
pub(super) struct FieldMatcher {
    field: FieldName,
    /// Every value must match (`|all`), or any.
    all: bool,
    values: Vec<ValueMatcher>,
}

#[derive(Debug)]
pub(super) enum ValueMatcher {
    /// The field is absent or null.
    Null,
    /// The field is present (`true`) or absent (`false`).
    Exists(bool),
    Pattern(Pattern),
    /// Any of several texts (a `contains` list, without other wildcards), in one automaton over
    /// the lower-cased texts unless `cased`.
    ContainsAny { automaton: AhoCorasick, cased: bool },
    Regex(regex::Regex),
    /// Any of several regular expressions (an `re` list).
    RegexAny(regex::RegexSet),
    Cidr(IpAddr, u8),
    /// Numeric comparison: `(ordering wanted, or-equal)`.
    Compare(std::cmp::Ordering, bool, f64),
    /// Equal to another field's value.
    FieldRef(FieldName),
}

/// A wildcard pattern over text (lower-cased unless cased).
#[derive(Debug)]
pub(super) struct Pattern {
    tokens: Vec<Token>,
    cased: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Token {
    Text(String),
    /// `*`: any run.
    Any,
    /// `?`: one character.
    One,
}

impl Pattern {
    /// A Sigma string value (`*`, `?` wildcards; `\*`, `\?`, `\\` escapes), with `*` added before
    /// and after as `contains`/`startswith`/`endswith` ask.
    pub(super) fn new(value: &str, lead: bool, trail: bool, cased: bool) -> Pattern {
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

    pub(super) fn matches(&self, text: &str) -> bool {
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

/// Wildcard matching without backtracking. The pieces between stars must appear in order, the
/// first at the start and the last at the end; taking each middle piece's leftmost occurrence is
/// always right (a later one only leaves less text for the rest). Pieces of plain text are found
/// with [`str::find`], in linear time; a piece with `?` is tried at each position, so its cost is
/// its length times the text's, never exponential in the number of stars.
pub(super) fn matches_tokens(tokens: &[Token], text: &str) -> bool {
    let mut pieces = tokens.split(|token| *token == Token::Any);
    let first = pieces.next().unwrap_or_default();
    let Some(mut rest) = strip_piece(first, text) else { return false };
    let middle: Vec<&[Token]> = pieces.collect();
    let Some((last, middle)) = middle.split_last() else { return rest.is_empty() };
    for piece in middle {
        match find_piece(piece, rest) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    // The last piece ends the text: it starts as many characters before the end as it is long.
    let length: usize = last.iter().map(|token| if let Token::Text(t) = token { t.chars().count() } else { 1 }).sum();
    let Some((start, _)) = rest.char_indices().rev().nth(length.wrapping_sub(1)) else { return length == 0 };
    strip_piece(last, &rest[start..]) == Some("")
}

/// The text after `piece` (text and `?`, no `*`) when it starts `text`.
fn strip_piece<'a>(piece: &[Token], mut text: &'a str) -> Option<&'a str> {
    for token in piece {
        text = match token {
            Token::Text(t) => text.strip_prefix(t.as_str())?,
            Token::One => {
                let mut chars = text.chars();
                chars.next()?;
                chars.as_str()
            }
            Token::Any => unreachable!("pieces are split at stars"),
        };
    }
    Some(text)
}

/// The text after the leftmost occurrence of `piece` in `text`.
fn find_piece<'a>(piece: &[Token], text: &'a str) -> Option<&'a str> {
    match piece {
        [] => Some(text),
        [Token::Text(t)] => text.find(t.as_str()).map(|i| &text[i + t.len()..]),
        _ => text.char_indices().map(|(i, _)| i).find_map(|i| strip_piece(piece, &text[i..])),
    }
}

impl Detection {
    pub(super) fn compile(detection: &serde_json::Map<String, Value>, placeholders: &Placeholders) -> Result<Detection> {
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
        let mut detection = Detection { searches, conditions, requirements: Vec::new() };
        for c in &detection.conditions {
            detection.check(c)?;
        }
        detection.requirements = any_of(detection.conditions.iter().map(|c| detection.required(c)));
        Ok(detection)
    }

    /// Every search a condition names exists.
    pub(super) fn check(&self, condition: &Condition) -> Result<()> {
        match condition {
            Condition::Search(name) => ensure!(self.searches.contains_key(name), "the condition names `{name}`, which is not defined"),
            Condition::Not(c) => self.check(c)?,
            Condition::And(cs) | Condition::Or(cs) => cs.iter().try_for_each(|c| self.check(c))?,
            Condition::Of(_, pattern) => ensure!(self.named(pattern).next().is_some(), "no search matches `{}`", pattern.concat()),
        }
        Ok(())
    }

    pub(super) fn named<'a>(&'a self, pattern: &'a [String]) -> impl Iterator<Item = &'a Search> + 'a {
        self.searches.iter().filter(move |(name, _)| of_matches(pattern, name)).map(|(_, s)| s)
    }

    pub(super) fn matches<'v>(&'v self, record: &RecordView<'v>) -> bool {
        self.conditions.iter().any(|c| self.eval(c, record))
    }

    /// The fields the detection needs to hold one of a few exact values for a match, each with
    /// its values (see [`Requirement`]); each alone is necessary.
    pub(super) fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    fn required(&self, condition: &Condition) -> Vec<Requirement> {
        match condition {
            Condition::Search(name) => self.searches.get(name).map(Search::requirements).unwrap_or_default(),
            Condition::Not(_) => Vec::new(),
            // Each part is needed: every part's requirements are the whole's.
            Condition::And(cs) => all_of(cs.iter().map(|c| self.required(c))),
            Condition::Of(None, pattern) => all_of(self.named(pattern).map(Search::requirements)),
            // One part is enough: a field every part requires, with all their values.
            Condition::Or(cs) => any_of(cs.iter().map(|c| self.required(c))),
            Condition::Of(Some(n), pattern) if *n >= 1 => any_of(self.named(pattern).map(Search::requirements)),
            Condition::Of(Some(_), _) => Vec::new(),
        }
    }

    pub(super) fn eval<'v>(&'v self, condition: &'v Condition, record: &RecordView<'v>) -> bool {
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
pub(super) fn of_matches(pattern: &[String], name: &str) -> bool {
    if pattern == ["them"] {
        return !name.starts_with('_');
    }
    let tokens: Vec<Token> = pattern.iter().map(|p| if p == "*" { Token::Any } else { Token::Text(p.clone()) }).collect();
    matches_tokens(&tokens, name)
}

pub(super) fn compile_search(value: &Value, placeholders: &Placeholders) -> Result<Search> {
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

pub(super) fn keyword(value: &Value) -> Result<Pattern> {
    match value {
        Value::String(s) => Ok(Pattern::new(s, true, true, false)),
        Value::Number(n) => Ok(Pattern::new(&n.to_string(), true, true, false)),
        other => bail!("keyword {other} is not text"),
    }
}

pub(super) fn compile_map(map: &serde_json::Map<String, Value>, placeholders: &Placeholders) -> Result<Vec<FieldMatcher>> {
    map.iter().map(|(key, value)| compile_field(key, value, placeholders)).collect()
}

pub(super) fn compile_field(key: &str, value: &Value, placeholders: &Placeholders) -> Result<FieldMatcher> {
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
                ValueMatcher::FieldRef(FieldName::new(&text))
            } else if let Some((ordering, equal)) = comparison(&has) {
                let number = text.parse::<f64>().with_context(|| format!("field `{field}`: {text:?} is not a number"))?;
                ValueMatcher::Compare(ordering, equal, number)
            } else {
                ValueMatcher::Pattern(Pattern::new(&text, has("contains") || has("endswith"), has("contains") || has("startswith"), cased))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let all = has("all");
    let values = if all { values } else { combined(values, cased, &has).with_context(|| format!("field `{field}`"))? };
    Ok(FieldMatcher { field: FieldName::new(&field), all, values })
}

/// Any-of values with several `contains` texts (no other wildcard) joined in one Aho-Corasick
/// automaton, and several regular expressions in one `RegexSet`; the other values as they are.
fn combined(values: Vec<ValueMatcher>, cased: bool, has: &dyn Fn(&str) -> bool) -> Result<Vec<ValueMatcher>> {
    let contained = |value: &ValueMatcher| match value {
        ValueMatcher::Pattern(Pattern { tokens, .. }) => match tokens.as_slice() {
            [Token::Any, Token::Text(text), Token::Any] => Some(text.clone()),
            _ => None,
        },
        _ => None,
    };
    let needles: Vec<String> = values.iter().filter_map(contained).collect();
    let regexes: Vec<String> = values.iter().filter_map(|v| if let ValueMatcher::Regex(r) = v { Some(r.as_str().to_string()) } else { None }).collect();
    if needles.len() < 2 && regexes.len() < 2 {
        return Ok(values);
    }
    let joined = |v: &ValueMatcher| (needles.len() >= 2 && contained(v).is_some()) || (regexes.len() >= 2 && matches!(v, ValueMatcher::Regex(_)));
    let mut kept: Vec<ValueMatcher> = values.into_iter().filter(|v| !joined(v)).collect();
    if needles.len() >= 2 {
        kept.push(ValueMatcher::ContainsAny { automaton: AhoCorasick::new(&needles).context("too many `contains` values")?, cased });
    }
    if regexes.len() >= 2 {
        let set = regex::RegexSetBuilder::new(&regexes).case_insensitive(has("i")).multi_line(has("m")).dot_matches_new_line(has("s")).build();
        kept.push(ValueMatcher::RegexAny(set.context("bad regular expressions")?));
    }
    Ok(kept)
}

pub(super) fn comparison(has: &dyn Fn(&str) -> bool) -> Option<(std::cmp::Ordering, bool)> {
    use std::cmp::Ordering::{Greater, Less};
    [("gt", Greater, false), ("gte", Greater, true), ("lt", Less, false), ("lte", Less, true)]
        .into_iter()
        .find(|(m, ..)| has(m))
        .map(|(_, o, e)| (o, e))
}

/// Replaces `%name%` placeholders by their configured values (one value each combination).
pub(super) fn expand(text: &str, placeholders: &Placeholders) -> Result<Vec<String>> {
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

pub(super) fn parse_cidr(text: &str) -> Result<(IpAddr, u8)> {
    let (ip, bits) = text.split_once('/').unwrap_or((text, ""));
    let ip: IpAddr = ip.trim().parse()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = if bits.is_empty() { max } else { bits.trim().parse()? };
    ensure!(bits <= max, "prefix /{bits} is too long");
    Ok((ip, bits))
}

pub(super) fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
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

/// A field and the lower-cased texts one of which it must hold for a detection to match: a
/// necessary condition, so that rules can be indexed by it (most cloud rules pin `eventName`,
/// `eventType` or `operationName` to a few exact values). A field holding a list satisfies it
/// when one of its elements does.
pub type Requirement = (FieldName, BTreeSet<String>);

/// The requirements of an `and`: each part's (one per field: the first part's that names it).
fn all_of(parts: impl Iterator<Item = Vec<Requirement>>) -> Vec<Requirement> {
    let mut all: Vec<Requirement> = Vec::new();
    for requirement in parts.flatten() {
        if !all.iter().any(|(field, _)| *field == requirement.0) {
            all.push(requirement);
        }
    }
    all
}

/// The requirements of an `or`: the fields every part requires, each with all the parts' values
/// (in the first part's order).
fn any_of(mut parts: impl Iterator<Item = Vec<Requirement>>) -> Vec<Requirement> {
    let mut joined = parts.next().unwrap_or_default();
    for part in parts {
        joined.retain_mut(|(field, values)| match part.iter().find(|(f, _)| f == field) {
            Some((_, more)) => {
                values.extend(more.iter().cloned());
                true
            }
            None => false,
        });
    }
    joined
}

impl Search {
    /// The fields every group (one is enough for a match) pins to exact values, each with the
    /// values of all groups.
    fn requirements(&self) -> Vec<Requirement> {
        let Search::Maps(groups) = self else { return Vec::new() };
        any_of(groups.iter().map(|group| all_of(group.iter().filter_map(FieldMatcher::requirement).map(|r| vec![r]))))
    }

    pub(super) fn matches<'v>(&'v self, record: &RecordView<'v>) -> bool {
        match self {
            Search::Maps(groups) => groups.iter().any(|group| group.iter().all(|m| m.matches(record))),
            Search::Keywords(patterns) => patterns.iter().any(|p| any_string(record.record(), &|s| p.matches(s))),
        }
    }
}

/// Whether any string (or number) in the record satisfies `test`.
pub(super) fn any_string(value: &Record, test: &dyn Fn(&str) -> bool) -> bool {
    if let Some(s) = value.as_str() {
        test(s)
    } else if value.is_number() {
        test(&value.to_string())
    } else if let Some(items) = value.as_array() {
        items.iter().any(|v| any_string(v, test))
    } else if let Some(object) = value.as_object() {
        object.iter().any(|(_, v)| any_string(v, test))
    } else {
        false
    }
}

impl FieldMatcher {
    /// Its field and values, when every value is an exact text (no wildcard, no other matcher).
    fn requirement(&self) -> Option<Requirement> {
        let exact = |matcher: &ValueMatcher| match matcher {
            ValueMatcher::Pattern(Pattern { tokens, .. }) => match tokens.as_slice() {
                [Token::Text(text)] => Some(text.to_lowercase()),
                _ => None,
            },
            _ => None,
        };
        let values = self.values.iter().map(exact).collect::<Option<BTreeSet<String>>>()?;
        (!values.is_empty()).then_some((self.field, values))
    }

    pub(super) fn matches<'v>(&'v self, record: &RecordView<'v>) -> bool {
        // Every field the values read is found before the found ones are borrowed.
        for value in &self.values {
            if let ValueMatcher::FieldRef(other) = value {
                record.load(*other);
            }
        }
        let index = record.load(self.field);
        let found = record.found.borrow();
        let test = |m: &'v ValueMatcher| value_matches(m, &found[index].1, &found);
        if self.all {
            self.values.iter().all(test)
        } else {
            self.values.iter().any(test)
        }
    }
}

/// Whether the texts `found` of a field satisfy `matcher`; a field reference reads the other
/// field in `all`, the record's fields found so far.
pub(super) fn value_matches<'v>(matcher: &'v ValueMatcher, found: &FieldTexts<'v>, all: &[(FieldName, FieldTexts<'v>)]) -> bool {
    match matcher {
        ValueMatcher::Null => !found.present,
        ValueMatcher::Exists(wanted) => found.present == *wanted,
        ValueMatcher::FieldRef(other) => {
            let theirs = all.iter().find(|(name, _)| name == other).map(|(_, texts)| texts.texts.as_slice()).unwrap_or_default();
            found.texts.iter().any(|x| theirs.iter().any(|y| x.eq_ignore_ascii_case(y)))
        }
        ValueMatcher::Pattern(p) if !p.cased => found.folded().iter().any(|text| matches_tokens(&p.tokens, text)),
        ValueMatcher::ContainsAny { automaton, cased: false } => found.folded().iter().any(|text| automaton.is_match(text.as_ref())),
        _ => found.texts.iter().any(|text| match matcher {
            ValueMatcher::Pattern(p) => matches_tokens(&p.tokens, text),
            ValueMatcher::ContainsAny { automaton, .. } => automaton.is_match(text.as_ref()),
            ValueMatcher::Regex(r) => r.is_match(text),
            ValueMatcher::RegexAny(set) => set.is_match(text),
            ValueMatcher::Cidr(net, bits) => text.parse::<IpAddr>().is_ok_and(|ip| in_cidr(ip, *net, *bits)),
            ValueMatcher::Compare(ordering, equal, n) => text
                .parse::<f64>()
                .is_ok_and(|x| x.partial_cmp(n).is_some_and(|o| o == *ordering || (*equal && o == std::cmp::Ordering::Equal))),
            _ => false,
        }),
    }
}

/// A field's Sigma name (a top-level key with that exact name, or a dotted path: see
/// [`RecordView`]), interned: equal names are one allocation, so that a
/// [`RecordView`] finds a field it has looked up already by comparing addresses, and a dotted name
/// is split once, when its rule is compiled rather than for every record. The distinct names of
/// every rule ever loaded are kept for the life of the process: a few hundred for SigmaHQ.
///
/// ```
/// use threatflow::detect::sigma::FieldName;
/// assert_eq!(FieldName::new("userIdentity.arn"), FieldName::new("userIdentity.arn"));
/// assert_ne!(FieldName::new("userIdentity.arn"), FieldName::new("userIdentity.ARN"));
/// assert_eq!(FieldName::new("userIdentity.arn").as_str(), "userIdentity.arn");
/// ```
#[derive(Clone, Copy)]
pub struct FieldName(&'static FieldPath);

/// A field's name and, when it is dotted, its first segment and the others.
struct FieldPath {
    name: String,
    dotted: Option<(String, Vec<String>)>,
}

impl FieldName {
    /// The interned name.
    pub fn new(name: &str) -> FieldName {
        static NAMES: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, &'static FieldPath>>> = std::sync::LazyLock::new(Default::default);
        // A panic elsewhere while the names were locked leaves them whole: each insertion is one step.
        let mut names = NAMES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let path = *names.entry(name.to_string()).or_insert_with(|| {
            let dotted = name.split_once('.').map(|(first, rest)| (first.to_string(), rest.split('.').map(str::to_string).collect()));
            Box::leak(Box::new(FieldPath { name: name.to_string(), dotted }))
        });
        FieldName(path)
    }

    /// The name as written.
    pub fn as_str(&self) -> &'static str {
        &self.0.name
    }
}

impl PartialEq for FieldName {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl Eq for FieldName {}

impl std::fmt::Debug for FieldName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A record as rules read it: each field is found (a dotted path walked, an array's elements
/// gathered) and case-folded the first time a rule asks for it, and kept for every other rule and
/// value that asks for the same field of the same record.
///
/// ```
/// use threatflow::detect::sigma::{FieldName, RecordView};
/// let record = sonic_rs::json!({"eventName": "ConsoleLogin", "tags": ["A", "b"]});
/// let view = RecordView::new(&record);
/// let texts = |name| {
///     let mut texts = Vec::new();
///     view.each_text(FieldName::new(name), |text| texts.push(text.to_string()));
///     texts
/// };
/// assert_eq!(texts("eventName"), ["ConsoleLogin"]);
/// assert_eq!(texts("tags"), ["A", "b"]);
/// assert!(texts("absent").is_empty());
/// ```
pub struct RecordView<'v> {
    held: Held<'v>,
    /// The fields asked for so far (a few per record: a list beats hashing, and eight are kept
    /// without allocating).
    found: RefCell<SmallVec<[(FieldName, FieldTexts<'v>); 8]>>,
}

/// What a view reads.
#[derive(Clone, Copy)]
enum Held<'v> {
    /// A record.
    Record(&'v Record),
    /// An event's fields: top-level keys are found through their tags, and a settled record is
    /// parsed again only when a field is read (see [`Fields`]).
    Fields(&'v Fields),
}

impl<'v> RecordView<'v> {
    /// A view of `record`; nothing is looked up yet.
    pub fn new(record: &'v Record) -> RecordView<'v> {
        RecordView { held: Held::Record(record), found: RefCell::default() }
    }

    /// A view of an event's fields (see [`Fields`]).
    pub fn of_fields(fields: &'v Fields) -> RecordView<'v> {
        RecordView { held: Held::Fields(fields), found: RefCell::default() }
    }

    /// The whole record.
    fn record(&self) -> &'v Record {
        match self.held {
            Held::Record(record) => record,
            Held::Fields(fields) => fields.record(),
        }
    }

    /// Where the field's texts (by its Sigma name: see [`field_with`]) are in `found`, finding them
    /// the first time.
    fn load(&self, name: FieldName) -> usize {
        if let Some(index) = self.found.borrow().iter().position(|(known, _)| *known == name) {
            return index;
        }
        let record = self.record();
        let found = match self.held {
            Held::Fields(fields) => field_with(record, |key| fields.get(key), name.0),
            Held::Record(_) => field_with(record, |key| record.as_object().and_then(|object| object.get(&key)), name.0),
        };
        let texts = FieldTexts::of(&found);
        let mut found = self.found.borrow_mut();
        found.push((name, texts));
        found.len() - 1
    }

    /// Calls `each` with every text of the field (by its Sigma name), as written: what a
    /// [`Requirement`] is checked against, ignoring case.
    pub fn each_text(&self, name: FieldName, mut each: impl FnMut(&str)) {
        let index = self.load(name);
        self.found.borrow()[index].1.texts.iter().for_each(|text| each(text));
    }
}

/// A field's texts for all of a matcher's values: each string borrowed from the record (an
/// array's elements, numbers and booleans as written), and folded to lower case once, when a
/// value that ignores case first asks, rather than once per value compared.
pub(super) struct FieldTexts<'v> {
    /// Whether the field holds anything but `null`.
    present: bool,
    texts: Texts<'v>,
    folded: std::cell::OnceCell<Texts<'v>>,
}

/// A field's texts: most fields hold one, kept without allocating.
type Texts<'v> = SmallVec<[Cow<'v, str>; 1]>;

impl<'v> FieldTexts<'v> {
    pub(super) fn of(found: &[&'v Record]) -> FieldTexts<'v> {
        let mut texts = Texts::new();
        found.iter().for_each(|v| push_texts(v, &mut texts));
        FieldTexts { present: found.iter().any(|v| !v.is_null()), texts, folded: std::cell::OnceCell::new() }
    }

    fn folded(&self) -> &[Cow<'v, str>] {
        self.folded.get_or_init(|| self.texts.iter().cloned().map(crate::event::lower_case).collect())
    }
}

/// A value's texts: itself, or each element of an array.
fn push_texts<'v>(value: &'v Record, out: &mut Texts<'v>) {
    if let Some(s) = value.as_str() {
        out.push(Cow::Borrowed(s));
    } else if value.is_number() || value.is_boolean() {
        out.push(Cow::Owned(value.to_string()));
    } else if let Some(items) = value.as_array() {
        items.iter().for_each(|v| push_texts(v, out));
    }
}

/// A field's values by its Sigma name, with `top` finding the record's top-level keys: a top-level
/// key with that exact name, or the dotted path, where a segment that meets an array follows every
/// element (a number indexes it).
fn field_with<'v>(record: &'v Record, top: impl Fn(&str) -> Option<&'v Record>, path: &FieldPath) -> Found<'v> {
    if let Some(v) = top(&path.name) {
        return smallvec::smallvec![v];
    }
    let (first, rest): (&str, &[String]) = match &path.dotted {
        Some((first, rest)) => (first, rest),
        None => (&path.name, &[]),
    };
    let mut values = Found::new();
    match record.is_object() {
        // The first segment is a top-level key (the whole name, looked up above, was not).
        true if path.dotted.is_some() => values.extend(top(first)),
        true => {}
        false => step(record, first, &mut values),
    }
    for segment in rest {
        let mut next = Found::new();
        for value in values {
            step(value, segment, &mut next);
        }
        values = next;
    }
    values
}

/// A field's values in a record: most fields have one, kept without allocating.
pub(super) type Found<'v> = SmallVec<[&'v Record; 2]>;

pub(super) fn step<'v>(value: &'v Record, segment: &str, out: &mut Found<'v>) {
    if let Some(object) = value.as_object() {
        out.extend(object.get(&segment));
    } else if let Some(items) = value.as_array() {
        match segment.parse::<usize>() {
            Ok(i) => out.extend(items.get(i)),
            Err(_) => items.iter().for_each(|item| step(item, segment, out)),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The same wildcards as a regular expression: an independent oracle.
    fn oracle(tokens: &[Token], text: &str) -> bool {
        let body: String = tokens
            .iter()
            .map(|token| match token {
                Token::Text(t) => regex::escape(t),
                Token::Any => "(?s:.*)".to_string(),
                Token::One => "(?s:.)".to_string(),
            })
            .collect();
        regex::Regex::new(&format!("^{body}$")).is_ok_and(|re| re.is_match(text))
    }

    fn token() -> impl Strategy<Value = Token> {
        prop_oneof![
            "[abé]{1,3}".prop_map(Token::Text),
            Just(Token::Any),
            Just(Token::One),
        ]
    }

    proptest! {
        #[test]
        fn wildcards_match_as_the_regex_oracle(tokens in proptest::collection::vec(token(), 0..7), text in "[abé]{0,12}") {
            prop_assert_eq!(matches_tokens(&tokens, &text), oracle(&tokens, &text), "{:?} on {:?}", tokens, text);
        }
    }

    /// Ten stars over a megabyte: backtracking on every star never finishes on this.
    #[test]
    fn many_stars_on_a_long_field_end() {
        let pattern = Pattern::new(&format!("{}b", "*a?".repeat(10)), false, false, true);
        let mut text = "a".repeat(1 << 20);
        assert!(!pattern.matches(&text));
        text.push('b');
        assert!(pattern.matches(&text));
        let wildcard_free = Pattern::new(&format!("{}b", "*a".repeat(10)), false, false, true);
        assert!(wildcard_free.matches(&text) && !wildcard_free.matches(&text[..text.len() - 1]));
    }
}
