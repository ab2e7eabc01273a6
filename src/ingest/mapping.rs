//! Raw provider logs to canonical events, by declarative per-source mappings.
//!
//! Security engineers send their providers' own records (CloudTrail, Okta System Log, Google
//! Workspace, Azure/Entra, Microsoft 365, GitHub audit, Azure Monitor activity, GCP audit, Slack
//! audit, OneLogin, Duo administrator and authentication, Zoom operation, Box events, Microsoft 365
//! Defender advanced hunting; VPC flow logs and S3 server access logs, which are text lines: see
//! `text` below). A mapping, one YAML file per source (`mappings/*.yaml`, shipped in the binary;
//! more with `--mappings-dir`), says how to recognise a record of that source and where each
//! canonical field comes from:
//!
//! ```yaml
//! name: aws.cloudtrail            # the source name (events' `source`, dead letters)
//! detect:                         # a record is of this source when all of these hold
//!   all: [eventSource, eventName] # these fields are present
//!   any: [eventTime, "@timestamp"]  # at least one of these is
//!   equals: {kind: "admin#reports#*"}  # these fields match (case-insensitive, `*` wildcards)
//! event_id: [eventID]             # each canonical field: the first of these paths present
//! ts: [eventTime, "@timestamp"]   # RFC 3339, "YYYY-MM-DD hh:mm:ss[.f]" (UTC), epoch s or ms
//! user: [userIdentity.arn, userIdentity.userName]
//! action_name: [eventName]        # the provider's action: the action when no category fits
//! actions:                        # the canonical action category: the first rule that matches
//!   - {category: login_failed, when: {eventName: ConsoleLogin, responseElements.ConsoleLogin: Failure}}
//!   - {category: delete, when: {eventName: ["Delete*", "Terminate*"]}}
//! app: [eventSource]
//! resource: [requestParameters.bucketName, "resources.0.ARN"]
//! src_ip: [sourceIPAddress]       # kept as sent (anonymised logs carry invalid addresses)
//! country: []
//! bytes: [additionalEventData.bytesTransferredOut]
//! user_agent: [userAgent]
//! text:                           # only for sources that write text lines, not JSON:
//!   fields: [version, account_id] # the fields' names in order (space-separated, `"…"`/`[…]` one
//!   min_fields: 2                 # field each, `-` for none); fewer fields: not this source
//!   header: version account-id    # a header line, read and skipped
//! ```
//!
//! Paths are dotted (`userIdentity.sessionContext.sessionIssuer.type`; a number indexes an array);
//! a segment that is not found exactly is looked up ignoring case (normalised exports lower-case
//! their keys). A record keeps every one of its own top-level fields for rules. A record without an
//! id gets one derived from its content (`SOURCE:xxh3-128`), so it is the same on every run. A
//! record holding `Records: [...]` (a CloudTrail file) or a JSON array is its elements.
//!
//! ```
//! use threatflow::ingest::mapping::Mappings;
//! let mappings = Mappings::shipped()?;
//! let record = sonic_rs::json!({
//!     "eventVersion": "1.08", "eventSource": "signin.amazonaws.com", "eventName": "ConsoleLogin",
//!     "eventTime": "2024-07-30T21:31:11Z", "eventID": "e-1", "sourceIPAddress": "08.1.250.216",
//!     "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::1:user/ann"},
//!     "responseElements": {"ConsoleLogin": "Failure"}
//! });
//! let event = mappings.auto(record)?;
//! assert_eq!((event.source.as_deref(), event.action.as_str()), (Some("aws.cloudtrail"), "login_failed"));
//! assert_eq!((event.user.as_str(), event.ts), ("arn:aws:iam::1:user/ann", 1_722_375_071_000));
//! assert_eq!(event.src_ip.as_deref(), Some("08.1.250.216"));
//! assert_eq!(event.field("eventName").as_deref(), Some("ConsoleLogin"));
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sonic_rs::{JsonContainerTrait, JsonValueTrait};

use crate::event::{event_from_value, Event, Fields, Record, RejectReason, Time, MAX_TIME};

/// The mappings shipped with threatflow.
const SHIPPED: [(&str, &str); 18] = [
    ("aws_cloudtrail.yaml", include_str!("../../mappings/aws_cloudtrail.yaml")),
    ("okta_system_log.yaml", include_str!("../../mappings/okta_system_log.yaml")),
    ("google_workspace.yaml", include_str!("../../mappings/google_workspace.yaml")),
    ("azure_audit.yaml", include_str!("../../mappings/azure_audit.yaml")),
    ("azure_signin.yaml", include_str!("../../mappings/azure_signin.yaml")),
    ("m365_audit.yaml", include_str!("../../mappings/m365_audit.yaml")),
    ("github_audit.yaml", include_str!("../../mappings/github_audit.yaml")),
    ("azure_activity.yaml", include_str!("../../mappings/azure_activity.yaml")),
    ("gcp_audit.yaml", include_str!("../../mappings/gcp_audit.yaml")),
    ("slack_audit.yaml", include_str!("../../mappings/slack_audit.yaml")),
    ("onelogin_events.yaml", include_str!("../../mappings/onelogin_events.yaml")),
    ("duo_administrator.yaml", include_str!("../../mappings/duo_administrator.yaml")),
    ("duo_authentication.yaml", include_str!("../../mappings/duo_authentication.yaml")),
    ("zoom_operation.yaml", include_str!("../../mappings/zoom_operation.yaml")),
    ("box_events.yaml", include_str!("../../mappings/box_events.yaml")),
    ("m365_defender.yaml", include_str!("../../mappings/m365_defender.yaml")),
    ("aws_vpc_flow.yaml", include_str!("../../mappings/aws_vpc_flow.yaml")),
    ("aws_s3_access.yaml", include_str!("../../mappings/aws_s3_access.yaml")),
];

/// One mapping file, as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingSpec {
    name: String,
    #[serde(default)]
    description: Option<String>,
    detect: DetectSpec,
    #[serde(default)]
    event_id: Vec<String>,
    ts: Vec<String>,
    user: Vec<String>,
    action_name: Vec<String>,
    #[serde(default)]
    actions: Vec<ActionRule>,
    #[serde(default)]
    app: Vec<String>,
    #[serde(default)]
    resource: Vec<String>,
    #[serde(default)]
    src_ip: Vec<String>,
    #[serde(default)]
    country: Vec<String>,
    #[serde(default)]
    bytes: Vec<String>,
    #[serde(default)]
    user_agent: Vec<String>,
    #[serde(default)]
    text: Option<TextSpec>,
}

/// How a source that writes text lines rather than JSON is read (VPC flow logs, S3 server access
/// logs): fields separated by spaces, a `"…"` or `[…]` being one field, `-` for none. A line
/// becomes the object of the fields' names and texts, which the rest of the mapping reads.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TextSpec {
    /// The fields' names, in order.
    fields: Vec<String>,
    /// Lines with fewer fields are not of this source (default: every field; formats that grew
    /// fields at the end over the years name the first version's count).
    #[serde(default)]
    min_fields: Option<usize>,
    /// The header line the source writes at the top of a file: read, and not a record.
    #[serde(default)]
    header: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetectSpec {
    #[serde(default)]
    all: Vec<String>,
    #[serde(default)]
    any: Vec<String>,
    #[serde(default)]
    equals: BTreeMap<String, OneOrMany>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionRule {
    category: String,
    when: BTreeMap<String, OneOrMany>,
}

/// A value or a list of values (`*` wildcards, case-insensitive).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn patterns(&self) -> Vec<Glob> {
        match self {
            OneOrMany::One(p) => vec![Glob::new(&p.to_lowercase())],
            OneOrMany::Many(ps) => ps.iter().map(|p| Glob::new(&p.to_lowercase())).collect(),
        }
    }
}

/// A dotted path, split.
type FieldPath = Vec<String>;

/// Field conditions: every path's text must match one of its patterns.
type Conditions = Vec<(FieldPath, Vec<Glob>)>;

/// A compiled mapping.
#[derive(Clone, Debug)]
pub struct Mapping {
    /// The source name.
    pub name: String,
    /// What it maps, for people.
    pub description: Option<String>,
    all: Vec<FieldPath>,
    any: Vec<FieldPath>,
    equals: Conditions,
    event_id: Vec<FieldPath>,
    ts: Vec<FieldPath>,
    user: Vec<FieldPath>,
    action_name: Vec<FieldPath>,
    actions: Vec<(String, Conditions)>,
    app: Vec<FieldPath>,
    resource: Vec<FieldPath>,
    src_ip: Vec<FieldPath>,
    country: Vec<FieldPath>,
    bytes: Vec<FieldPath>,
    user_agent: Vec<FieldPath>,
    text: Option<TextSpec>,
}

fn paths(list: &[String]) -> Vec<FieldPath> {
    list.iter().map(|p| p.split('.').map(str::to_string).collect()).collect()
}

fn conditions(map: &BTreeMap<String, OneOrMany>) -> Conditions {
    map.iter().map(|(path, values)| (path.split('.').map(str::to_string).collect(), values.patterns())).collect()
}

impl Mapping {
    /// Parses a mapping file's text.
    pub fn parse(text: &str) -> Result<Mapping> {
        let spec: MappingSpec = serde_norway::from_str(text).context("not a mapping")?;
        if spec.detect.all.is_empty() && spec.detect.any.is_empty() && spec.detect.equals.is_empty() {
            bail!("mapping {}: `detect` needs at least one condition", spec.name);
        }
        for (field, list) in [("ts", &spec.ts), ("user", &spec.user), ("action_name", &spec.action_name)] {
            if list.is_empty() {
                bail!("mapping {}: `{field}` needs at least one path", spec.name);
            }
        }
        Ok(Mapping {
            all: paths(&spec.detect.all),
            any: paths(&spec.detect.any),
            equals: conditions(&spec.detect.equals),
            event_id: paths(&spec.event_id),
            ts: paths(&spec.ts),
            user: paths(&spec.user),
            action_name: paths(&spec.action_name),
            actions: spec.actions.iter().map(|rule| (rule.category.clone(), conditions(&rule.when))).collect(),
            app: paths(&spec.app),
            resource: paths(&spec.resource),
            src_ip: paths(&spec.src_ip),
            country: paths(&spec.country),
            bytes: paths(&spec.bytes),
            user_agent: paths(&spec.user_agent),
            text: spec.text,
            name: spec.name,
            description: spec.description,
        })
    }

    /// Whether `record` is of this source.
    pub fn detects(&self, record: &Record) -> bool {
        // A few paths per mapping: not worth indexing the keys.
        let record = Keyed::unindexed(record);
        self.all.iter().all(|p| present(&record, p))
            && (self.any.is_empty() || self.any.iter().any(|p| present(&record, p)))
            && holds(&mut FoldedTexts::new(&record), &self.equals)
    }

    /// The record a text line's `fields` make for this source, when it writes text and they are
    /// of it; `Some(None)` for its header line.
    fn text_record(&self, fields: &[&str]) -> Option<Option<Record>> {
        let spec = self.text.as_ref()?;
        if spec.header.as_deref().is_some_and(|header| header.split_whitespace().eq(fields.iter().copied())) {
            return Some(None);
        }
        if fields.len() < spec.min_fields.unwrap_or(spec.fields.len()) {
            return None;
        }
        let named = spec.fields.iter().zip(fields).filter(|(_, text)| **text != "-");
        let mut record = sonic_rs::Object::new();
        for (name, text) in named {
            record.insert(name, *text);
        }
        let record = record.into_value();
        self.detects(&record).then_some(Some(record))
    }

    /// The canonical event of a record of this source; the record becomes the event's other
    /// fields, without being copied.
    pub fn map(&self, owned: Record) -> Result<Event, RejectReason> {
        if !owned.is_object() {
            return self.map_keyed(&Keyed::unindexed(&owned), Fields::default());
        }
        let extra = Fields::of_record(owned);
        self.map_keyed(&Keyed::new(&extra), extra.clone())
    }

    /// The event of a record read through `record`, whose fields are `extra`.
    fn map_keyed(&self, record: &Keyed<'_>, extra: Fields) -> Result<Event, RejectReason> {
        let invalid = |what: String| RejectReason::Invalid(format!("{} record: {what}", self.name));
        let missing = |field: &str, tried: &[FieldPath]| {
            let tried: Vec<String> = tried.iter().map(|p| p.join(".")).collect();
            invalid(format!("no `{field}` (looked at {})", tried.join(", ")))
        };
        let text_of = |paths: &[FieldPath]| first_text(record, paths).map(|text| crate::event::Text::from(text.as_ref()));
        let user = text_of(&self.user).ok_or_else(|| missing("user", &self.user))?;
        let ts_value = first(record, &self.ts).ok_or_else(|| missing("ts", &self.ts))?;
        let ts = parse_time(&ts_value).map_err(|e| invalid(format!("ts: {e}")))?;
        let action_name = first_text(record, &self.action_name).ok_or_else(|| missing("action", &self.action_name))?;
        let mut folded = FoldedTexts::new(record);
        let action: crate::event::Text = self
            .actions
            .iter()
            .find(|(_, when)| holds(&mut folded, when))
            .map_or_else(|| action_name.as_ref().into(), |(category, _)| category.as_str().into());
        let event_id = match first_text(record, &self.event_id) {
            Some(id) => id.as_ref().into(),
            None => {
                let bytes = sonic_rs::to_vec(record.record).unwrap_or_default();
                crate::event::Text::from(format!("{}:{:032x}", self.name, xxhash_rust::xxh3::xxh3_128(&bytes)))
            }
        };
        let country = first_text(record, &self.country)
            .filter(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()))
            .map(|c| c.to_ascii_uppercase());
        let bytes = first(record, &self.bytes).and_then(|v| match v.as_str() {
            Some(s) => s.trim().parse().ok(),
            None => v.as_u64(),
        });
        let (app, resource, src_ip, user_agent) = (text_of(&self.app), text_of(&self.resource), text_of(&self.src_ip), text_of(&self.user_agent));
        let key = crate::event::user_key(&user);
        Ok(Event {
            event_id,
            ts,
            user,
            action,
            app,
            resource,
            src_ip,
            country: country.map(Into::into),
            bytes,
            user_agent,
            extra,
            source: Some(self.name.as_str().into()),
            enrichment: None,
            intel: None,
            key,
            time: ts,
            late: false,
            position: None,
        })
    }
}

/// How records are read.
#[derive(Clone, Debug, Default)]
pub enum RecordFormat {
    /// Canonical events (docs/semantics.md#events), the fast path.
    #[default]
    Canonical,
    /// Each record's source is detected: canonical events, or any mapping's records.
    Auto(Arc<Mappings>),
    /// Every record is of the named mapping's source.
    Source(Arc<Mappings>, usize),
}

impl RecordFormat {
    /// `canonical`, `auto`, or a mapping's name, with the shipped mappings and those in `dir`.
    pub fn parse(name: &str, dir: Option<&Path>) -> Result<RecordFormat> {
        if name == "canonical" {
            return Ok(RecordFormat::Canonical);
        }
        let mut mappings = Mappings::shipped()?;
        if let Some(dir) = dir {
            mappings.add_dir(dir)?;
        }
        let mappings = Arc::new(mappings);
        if name == "auto" {
            return Ok(RecordFormat::Auto(mappings));
        }
        match mappings.all.iter().position(|m| m.name == name) {
            Some(index) => Ok(RecordFormat::Source(mappings, index)),
            None => bail!("unknown format {name:?}: canonical, auto, or one of {}", mappings.names().join(", ")),
        }
    }

    /// `canonical`, `auto`, or the mapping's name (what [`RecordFormat::parse`] takes).
    pub fn name(&self) -> &str {
        match self {
            RecordFormat::Canonical => "canonical",
            RecordFormat::Auto(_) => "auto",
            RecordFormat::Source(mappings, index) => &mappings.all[*index].name,
        }
    }

    /// Whether records are canonical events only.
    pub fn is_canonical(&self) -> bool {
        matches!(self, RecordFormat::Canonical)
    }

    /// The events of one parsed record (several for a `Records` list or an array), each an event
    /// or the reason it is not, with the element's JSON text when it is part of a list.
    pub fn decode(&self, record: Record, out: &mut Vec<(Result<Event, RejectReason>, Option<String>)>) {
        let list = |record: &Record| record.as_object().filter(|o| o.len() == 1).and_then(|o| o.get(&"Records")).is_some_and(|r| r.is_array());
        let items = if record.is_array() {
            record.into_array()
        } else if list(&record) {
            record.into_object().and_then(|mut o| o.remove(&"Records")).and_then(Record::into_array)
        } else {
            return out.push((self.decode_one(record), None));
        };
        for item in items.into_iter().flatten() {
            let text = item.to_string();
            out.push((self.decode_one(item), Some(text)));
        }
    }

    /// Reads a line that is not JSON with the mappings of sources that write text (only the
    /// named one's for a single source): pushes its event to `out` and returns `true` when one
    /// takes it (a header line pushes nothing), `false` when none does.
    pub fn decode_text(&self, line: &str, out: &mut Vec<(Result<Event, RejectReason>, Option<String>)>) -> bool {
        let (mappings, only) = match self {
            RecordFormat::Canonical => return false,
            RecordFormat::Auto(mappings) => (mappings, None),
            RecordFormat::Source(mappings, index) => (mappings, Some(*index)),
        };
        let fields = text_fields(line);
        let mut candidates = mappings.all.iter().enumerate().filter(|(index, _)| only.is_none_or(|o| o == *index));
        match candidates.find_map(|(_, mapping)| Some((mapping, mapping.text_record(&fields)?))) {
            Some((mapping, Some(record))) => out.push((mapping.map(record), None)),
            Some((_, None)) => {}
            None => return false,
        }
        true
    }

    fn decode_one(&self, record: Record) -> Result<Event, RejectReason> {
        match self {
            RecordFormat::Canonical => canonical(&record),
            RecordFormat::Source(mappings, index) => mappings.all[*index].map(record),
            RecordFormat::Auto(mappings) => mappings.auto(record),
        }
    }
}

/// A text line's fields: separated by spaces, a `"…"` or `[…]` being one field (without its
/// quotes or brackets).
///
/// ```
/// use threatflow::ingest::mapping::text_fields;
/// let line = r#"owner bucket [06/Feb/2019:00:00:38 +0000] 192.0.2.3 - "GET /b?versioning HTTP/1.1" 200"#;
/// assert_eq!(text_fields(line), ["owner", "bucket", "06/Feb/2019:00:00:38 +0000", "192.0.2.3", "-", "GET /b?versioning HTTP/1.1", "200"]);
/// ```
pub fn text_fields(line: &str) -> Vec<&str> {
    let mut fields = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let (field, after) = match rest.as_bytes()[0] {
            b'"' => rest[1..].split_once('"').unwrap_or((&rest[1..], "")),
            b'[' => rest[1..].split_once(']').unwrap_or((&rest[1..], "")),
            _ => rest.split_once(' ').unwrap_or((rest, "")),
        };
        fields.push(field);
        rest = after.trim_start();
    }
    fields
}

/// The top-level keys of a record, for a reason that says what it looked like.
fn describe(record: &Record) -> String {
    if let Some(object) = record.as_object() {
        let keys: Vec<&str> = object.iter().map(|(key, _)| key).take(12).collect();
        return format!("fields {}{}", keys.join(", "), if object.len() > 12 { ", ..." } else { "" });
    }
    if record.is_null() {
        "null".into()
    } else if record.is_array() {
        "a nested array".into()
    } else {
        "not a JSON object".into()
    }
}

/// A canonical event given as a parsed record (`--format auto`).
fn canonical(record: &Record) -> Result<Event, RejectReason> {
    let value: serde_json::Value = sonic_rs::from_value(record).map_err(|e| RejectReason::Invalid(e.to_string()))?;
    event_from_value(value)
}

/// Every mapping a job knows.
#[derive(Clone, Debug, Default)]
pub struct Mappings {
    all: Vec<Mapping>,
}

impl Mappings {
    /// The mappings shipped in `mappings/`.
    pub fn shipped() -> Result<Mappings> {
        let mut mappings = Mappings::default();
        for (file, text) in SHIPPED {
            mappings.add(Mapping::parse(text).with_context(|| format!("shipped mapping {file}"))?);
        }
        Ok(mappings)
    }

    /// Adds every `*.yaml`/`*.yml` file of `dir`; a mapping with a known name replaces it.
    pub fn add_dir(&mut self, dir: &Path) -> Result<()> {
        let entries = std::fs::read_dir(dir).with_context(|| format!("reading mappings in {}", dir.display()))?;
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            self.add(Mapping::parse(&text).with_context(|| format!("mapping {}", path.display()))?);
        }
        Ok(())
    }

    fn add(&mut self, mapping: Mapping) {
        match self.all.iter_mut().find(|m| m.name == mapping.name) {
            Some(known) => *known = mapping,
            None => self.all.push(mapping),
        }
    }

    /// The mappings' names, in detection order.
    pub fn names(&self) -> Vec<&str> {
        self.all.iter().map(|m| m.name.as_str()).collect()
    }

    /// A record's event: canonical when it has the canonical fields, else by the first mapping
    /// that detects it; a record that fits none is refused with its fields.
    pub fn auto(&self, record: Record) -> Result<Event, RejectReason> {
        if ["event_id", "ts", "user", "action"].iter().all(|k| record.get(k).is_some()) {
            return canonical(&record);
        }
        match self.all.iter().find(|m| m.detects(&record)) {
            Some(mapping) => mapping.map(record),
            None => Err(RejectReason::Invalid(format!(
                "the record fits no mapping (canonical, {}): {}",
                self.names().join(", "),
                describe(&record)
            ))),
        }
    }
}

/// A record being mapped: through its [`Fields`], whose top-level keys are tagged for lookups (a
/// mapping looks up a dozen or more paths per record, most of them at the top level), or as it is.
struct Keyed<'v> {
    record: &'v Record,
    fields: Option<&'v Fields>,
}

impl<'v> Keyed<'v> {
    fn new(fields: &'v Fields) -> Self {
        Keyed { record: fields.record(), fields: Some(fields) }
    }

    fn unindexed(record: &'v Record) -> Self {
        Keyed { record, fields: None }
    }

    /// The value at a path, as [`lookup`] finds it.
    fn lookup(&self, path: &[String]) -> Option<Cow<'v, Record>> {
        let (Some(fields), Some((head, rest))) = (self.fields, path.split_first()) else { return lookup(self.record, path) };
        let top = fields.get(head).or_else(|| fields.get_ignoring_case(head))?;
        lookup(top, rest)
    }
}

/// The value at a path: exact keys first, then ignoring case; numbers index arrays; a string
/// holding JSON (as log-analytics exports nest objects) is looked into when the path goes on.
fn lookup<'v>(record: &'v Record, path: &[String]) -> Option<Cow<'v, Record>> {
    let mut value = Cow::Borrowed(record);
    for segment in path {
        if let Some(s) = value.as_str() {
            if s.starts_with('{') || s.starts_with('[') {
                value = Cow::Owned(sonic_rs::from_str(s).ok()?);
            }
        }
        value = match value {
            Cow::Borrowed(v) => Cow::Borrowed(child(v, segment)?),
            Cow::Owned(v) => Cow::Owned(child(&v, segment)?.clone()),
        };
    }
    Some(value)
}

/// One step of a path.
fn child<'v>(value: &'v Record, segment: &str) -> Option<&'v Record> {
    if let Some(object) = value.as_object() {
        return object.get(&segment).or_else(|| object.iter().find(|(k, _)| k.eq_ignore_ascii_case(segment)).map(|(_, v)| v));
    }
    value.as_array()?.get(segment.parse::<usize>().ok()?)
}

/// The value at a path when it is present: not null, not an empty string.
fn present_value<'v>(record: &Keyed<'v>, path: &[String]) -> Option<Cow<'v, Record>> {
    record.lookup(path).filter(|v| !v.is_null() && v.as_str() != Some(""))
}

fn present(record: &Keyed<'_>, path: &[String]) -> bool {
    present_value(record, path).is_some()
}

/// The first present value among `paths`.
fn first<'v>(record: &Keyed<'v>, paths: &[FieldPath]) -> Option<Cow<'v, Record>> {
    paths.iter().find_map(|p| present_value(record, p))
}

/// A value as text: strings as they are, numbers and booleans as JSON; objects and arrays are not text.
fn text<'v>(value: &Cow<'v, Record>) -> Option<Cow<'v, str>> {
    if let Cow::Borrowed(borrowed) = value {
        let borrowed: &'v Record = borrowed;
        if let Some(s) = borrowed.as_str() {
            return Some(Cow::Borrowed(s));
        }
    } else if let Some(s) = value.as_str() {
        return Some(Cow::Owned(s.to_string()));
    }
    (value.is_number() || value.is_boolean()).then(|| Cow::Owned(value.to_string()))
}

/// The first present value among `paths` that is text.
fn first_text<'v>(record: &Keyed<'v>, paths: &[FieldPath]) -> Option<Cow<'v, str>> {
    paths.iter().filter_map(|p| present_value(record, p)).find_map(|v| text(&v))
}

/// Whether every condition holds.
fn holds<'m>(record: &mut FoldedTexts<'m, '_, '_>, conditions: &'m Conditions) -> bool {
    conditions.iter().all(|(path, patterns)| record.text(path).is_some_and(|t| patterns.iter().any(|p| p.matches(t))))
}

/// A path a condition tests and the record's text there, lower-cased.
type FoldedText<'m, 'v> = (&'m [String], Option<Cow<'v, str>>);

/// A record's texts at the paths conditions test, each looked up and folded to lower case once
/// per record however many conditions test it (CloudTrail's action categories test `eventName`
/// up to nine times).
struct FoldedTexts<'m, 'r, 'v> {
    record: &'r Keyed<'v>,
    found: smallvec::SmallVec<[FoldedText<'m, 'v>; 4]>,
}

impl<'m, 'r, 'v> FoldedTexts<'m, 'r, 'v> {
    fn new(record: &'r Keyed<'v>) -> Self {
        FoldedTexts { record, found: smallvec::SmallVec::new() }
    }

    /// The text at `path`, lower-cased.
    fn text(&mut self, path: &'m [String]) -> Option<&str> {
        let index = match self.found.iter().position(|(known, _)| *known == path) {
            Some(index) => index,
            None => {
                let folded = self.record.lookup(path).and_then(|v| text(&v)).map(crate::event::lower_case);
                self.found.push((path, folded));
                self.found.len() - 1
            }
        };
        self.found[index].1.as_deref()
    }
}

/// A `*`-wildcard pattern of lower-cased text, split at its stars once, when the mapping is read.
#[derive(Clone, Debug)]
struct Glob {
    head: String,
    /// The texts between the inner stars, in order.
    middles: Vec<String>,
    /// The text after the last star; `None` for a pattern without stars.
    tail: Option<String>,
}

impl Glob {
    fn new(pattern: &str) -> Glob {
        let Some((head, after_head)) = pattern.split_once('*') else {
            return Glob { head: pattern.to_string(), middles: Vec::new(), tail: None };
        };
        let (middles, tail) = after_head.rsplit_once('*').unwrap_or(("", after_head));
        let middles = middles.split('*').filter(|m| !m.is_empty()).map(str::to_string).collect();
        Glob { head: head.to_string(), middles, tail: Some(tail.to_string()) }
    }

    fn matches(&self, text: &str) -> bool {
        let Some(tail) = &self.tail else { return self.head == text };
        if text.len() < self.head.len() + tail.len() || !text.starts_with(self.head.as_str()) || !text.ends_with(tail.as_str()) {
            return false;
        }
        let mut rest = &text[self.head.len()..text.len() - tail.len()];
        for middle in &self.middles {
            match rest.find(middle.as_str()) {
                Some(i) => rest = &rest[i + middle.len()..],
                None => return false,
            }
        }
        true
    }
}

/// A timestamp: RFC 3339; `YYYY-MM-DD[T ]hh:mm:ss[.fraction]` without a zone, as UTC; or a number
/// of seconds (below 10^11) or milliseconds since the epoch. Times after the year 9999
/// ([`MAX_TIME`]) are errors.
pub fn parse_time(value: &Record) -> Result<Time, String> {
    let time = parse_any_time(value)?;
    if time > MAX_TIME {
        return Err(format!("timestamp {value} is after the year 9999"));
    }
    Ok(time)
}

fn parse_any_time(value: &Record) -> Result<Time, String> {
    let epoch = |x: f64, written: &dyn std::fmt::Display| {
        if !(0.0..1e15).contains(&x) {
            return Err(format!("timestamp {written} out of range"));
        }
        Ok(if x < 1e11 { (x * 1000.0).round() as Time } else { x.round() as Time })
    };
    match value.as_str() {
        None if value.is_number() => epoch(value.as_f64().ok_or_else(|| format!("bad number {value}"))?, value),
        Some(s) => {
            let s = s.trim();
            if let Ok(ms) = crate::event::parse_rfc3339_ms(s) {
                return Ok(ms);
            }
            if let Ok(n) = s.parse::<f64>() {
                return epoch(n, &n);
            }
            // S3 server access logs: `06/Feb/2019:00:00:38 +0000`.
            if let Ok(t) = chrono::DateTime::parse_from_str(s, "%d/%b/%Y:%H:%M:%S %z") {
                return u64::try_from(t.timestamp_millis()).map_err(|_| format!("timestamp {s:?} before 1970"));
            }
            let normal = s.replacen(' ', "T", 1);
            for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S"] {
                if let Ok(t) = chrono::NaiveDateTime::parse_from_str(&normal, format) {
                    return u64::try_from(t.and_utc().timestamp_millis()).map_err(|_| format!("timestamp {s:?} before 1970"));
                }
            }
            Err(format!("unrecognised timestamp {s:?}"))
        }
        None => Err(format!("timestamp is not a string or number: {value}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_every_shape() {
        let ms = 1_671_835_364_467;
        for v in [
            Record::from("2022-12-23T22:42:44.467Z"),
            Record::from("2022-12-23 22:42:44.467000000"),
            Record::from("2022-12-23T22:42:44.467"),
            Record::from(ms),
            sonic_rs::json!(1_671_835_364.467),
            Record::from("1671835364467"),
        ] {
            assert_eq!(parse_time(&v), Ok(ms), "{v}");
        }
        assert_eq!(parse_time(&Record::from("2022-12-23 22:42:44")), Ok(1_671_835_364_000));
        assert!(parse_time(&Record::from("yesterday")).is_err());
        assert!(parse_time(&sonic_rs::json!(null)).is_err());
    }

    #[test]
    fn globs_and_paths() {
        let glob = |pattern: &str, text: &str| Glob::new(pattern).matches(text);
        assert!(glob("delete*", "deletebucket") && glob("*policy", "putuserpolicy") && glob("a*b*c", "axxbyyc") && glob("a**b", "ab"));
        assert!(glob("getobject", "getobject") && !glob("getobject", "getobjects"));
        assert!(!glob("delete*", "undelete") && !glob("a*b*c", "acb") && !glob("ab*ba", "aba"));
        let record = sonic_rs::json!({"A": {"b": [{"C": 1}]}, "e": null});
        let fields = Fields::of_record(record.clone());
        let path = |p: &str| p.split('.').map(str::to_string).collect::<Vec<_>>();
        // Indexed or not, the same values: exact keys first, then ignoring case.
        for keyed in [Keyed::new(&fields), Keyed::unindexed(&record)] {
            assert_eq!(keyed.lookup(&path("a.B.0.c")).as_deref(), Some(&Record::from(1)));
            assert_eq!(keyed.lookup(&path("A.b.0.C")).as_deref(), Some(&Record::from(1)));
            assert!(!present(&keyed, &path("e")) && !present(&keyed, &path("a.b.1")) && !present(&keyed, &path("x")));
        }
        let duplicated: Record = sonic_rs::from_str(r#"{"eventName": "GetObject", "eventName": "PutObject", "eventNames": 1}"#).unwrap();
        let keys = Fields::of_record(duplicated);
        assert_eq!(keys.get("eventName").and_then(|v| v.as_str()), Some("GetObject"));
        assert_eq!(keys.get("eventNames").and_then(|v| v.as_u64()), Some(1));
        assert!(keys.get("eventNam").is_none() && keys.get("").is_none());
        let nested = sonic_rs::json!({"InitiatedBy": "{\"user\":{\"userPrincipalName\":\"ann@x\"}}"});
        assert_eq!(Keyed::new(&Fields::of_record(nested)).lookup(&path("InitiatedBy.user.userPrincipalName")).as_deref(), Some(&Record::from("ann@x")));
    }

    #[test]
    fn shipped_mappings_parse_and_bad_ones_are_clear_errors() {
        let mappings = Mappings::shipped().unwrap();
        assert_eq!(mappings.names().len(), SHIPPED.len());
        let err = format!("{:#}", Mapping::parse("name: x\ndetect: {}\nts: [t]\nuser: [u]\naction_name: [a]\n").unwrap_err());
        assert!(err.contains("`detect` needs at least one condition"), "{err}");
        let err = format!("{:#}", Mapping::parse("name: x\ndetect: {all: [a]}\nts: [t]\nuser: [u]\naction_name: [a]\nusr: [b]\n").unwrap_err());
        assert!(err.contains("unknown field `usr`"), "{err}");
    }

    #[test]
    fn records_lists_and_arrays_expand() {
        let format = RecordFormat::parse("auto", None).unwrap();
        let ct = |id: &str| {
            sonic_rs::json!({"eventVersion": "1", "eventSource": "s3.amazonaws.com", "eventName": "GetObject", "eventID": id,
                "eventTime": "2024-01-01T00:00:00Z", "userIdentity": {"arn": "arn:u"}})
        };
        let mut out = Vec::new();
        format.decode(sonic_rs::json!({"Records": [ct("a"), ct("b"), {"x": 1}]}), &mut out);
        format.decode(sonic_rs::json!([ct("c")]), &mut out);
        let ids: Vec<String> = out.iter().map(|(e, _)| e.as_ref().map(|e| e.event_id.to_string()).unwrap_or_else(|r| r.to_string())).collect();
        assert_eq!(ids[0], "a");
        assert_eq!(ids[1], "b");
        assert!(ids[2].contains("fits no mapping") && ids[2].contains("fields x"), "{}", ids[2]);
        assert_eq!(ids[3], "c");
        assert_eq!(out[0].0.as_ref().unwrap().action, "download");
    }
}
