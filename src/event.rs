//! The canonical activity event: parsing, validation and the dead-letter record for what fails.
//!
//! Parsing never panics: every record either becomes an [`Event`] or a [`DeadLetter`] that keeps the
//! original bytes, the reason and the record's position in its source.

use std::fmt;

use base64::Engine as _;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use sonic_rs::{JsonContainerTrait, JsonValueMutTrait, JsonValueTrait};

/// A user's key: a 128-bit fingerprint of the user name (xxh3), so that keys are small and
/// fixed-size; two of a million users collide with probability about 1e-27.
pub type UserKey = u128;

/// The user key of a user name.
pub fn user_key(user: &str) -> UserKey {
    xxhash_rust::xxh3::xxh3_128(user.as_bytes())
}

/// The worker-routing hash of a user key, used by every operator keyed by user.
pub fn route(key: &UserKey) -> u64 {
    *key as u64
}

/// Event time in milliseconds since the Unix epoch; also the timely timestamp.
pub type Time = u64;

/// One minute in milliseconds.
pub const MINUTE: Time = 60_000;
/// One hour in milliseconds.
pub const HOUR: Time = 60 * MINUTE;
/// One day in milliseconds.
pub const DAY: Time = 24 * HOUR;
/// The latest event time accepted (9999-12-31T23:59:59.999Z): far from `u64::MAX`, so that window
/// arithmetic on any accepted time stays exact.
pub const MAX_TIME: Time = 253_402_300_799_999;

/// The text of an event field: inline up to 24 bytes, a static string by reference, otherwise on
/// the heap (see [`compact_str::CompactString`]).
pub type Text = compact_str::CompactString;

/// Records longer than this are rejected without being parsed (the dead letter keeps a prefix).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;

/// A canonical activity event (docs/semantics.md#events), plus the time the engine judges it at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    /// Unique id of the event.
    pub event_id: Text,
    /// Event time (ms since epoch) as the record states it.
    pub ts: Time,
    /// Acting user.
    pub user: Text,
    /// Action name (`login`, `download`, ... or any other string).
    pub action: Text,
    /// Application the event happened in.
    pub app: Option<Text>,
    /// Resource acted on.
    pub resource: Option<Text>,
    /// Source IP address, as sent (not validated: real logs carry anonymised, invalid addresses).
    pub src_ip: Option<Text>,
    /// ISO 3166 alpha-2 country code, upper case.
    pub country: Option<Text>,
    /// Bytes transferred.
    pub bytes: Option<u64>,
    /// User agent string.
    pub user_agent: Option<Text>,
    /// Every other field of the record, parsed once and kept for rules. For a provider's record
    /// (see [`crate::ingest::mapping`]) these are all of its own top-level fields.
    pub extra: Fields,
    /// The provider log the record came from (a mapping's name), `None` for canonical events.
    pub source: Option<Text>,
    /// What the GeoIP/ASN databases in force at the event's time say about `src_ip` (`None`
    /// when the job enriches nothing or the event has no `src_ip`; see [`crate::enrich`]).
    pub enrichment: Option<std::sync::Arc<crate::enrich::Enrichment>>,
    /// The threat-intel indicators in force at the event's time that its values match (`None` when
    /// none does or the job has no indicators; see [`crate::detect::intel`]).
    pub intel: Option<std::sync::Arc<Vec<crate::enrich::intel::IntelHit>>>,
    /// The user's key ([`user_key`] of `user`), computed once when the event is read.
    pub key: UserKey,
    /// The time the engine judges the event at: `ts`, or the partition watermark when the event was late.
    pub time: Time,
    /// Whether the event arrived behind its partition's watermark.
    pub late: bool,
    /// Where the event was read (files and Kafka; `None` for generated events), so that a `revert`
    /// command can name it.
    pub position: Option<Position>,
}

/// The standard action kinds the features look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActionKind {
    /// `login`
    Login,
    /// `login_failed`
    LoginFailed,
    /// `download`
    Download,
    /// `upload`
    Upload,
    /// `share_external`
    ShareExternal,
    /// `delete`
    Delete,
    /// `permission_change`
    PermissionChange,
    /// `admin_action`
    AdminAction,
    /// any other action
    Other,
}

impl ActionKind {
    /// Classifies an action name.
    pub fn of(action: &str) -> Self {
        match action {
            "login" => ActionKind::Login,
            "login_failed" => ActionKind::LoginFailed,
            "download" => ActionKind::Download,
            "upload" => ActionKind::Upload,
            "share_external" => ActionKind::ShareExternal,
            "delete" => ActionKind::Delete,
            "permission_change" => ActionKind::PermissionChange,
            "admin_action" => ActionKind::AdminAction,
            _ => ActionKind::Other,
        }
    }
}

/// A provider's record as parsed: sonic-rs's document, which keeps a record's nodes in one arena
/// and parses CloudTrail records about five times as fast as into a `serde_json::Value`
/// (`cargo bench --bench hot_paths -- raw_logs/parse`). The mapping reads it, the rules read it,
/// and the event keeps it.
pub type Record = sonic_rs::Value;

/// A record's text in lower case, as rules and mappings compare it: borrowed when it already is
/// (most values are lower-case ASCII).
///
/// ```
/// use std::borrow::Cow;
/// use threatflow::event::lower_case;
/// assert!(matches!(lower_case(Cow::Borrowed("get")), Cow::Borrowed("get")));
/// assert_eq!(lower_case(Cow::Borrowed("GetObject")), "getobject");
/// assert_eq!(lower_case(Cow::Borrowed("ÉTÉ")), "été");
/// ```
pub fn lower_case(text: std::borrow::Cow<'_, str>) -> std::borrow::Cow<'_, str> {
    match text.is_ascii() {
        true if !text.bytes().any(|b| b.is_ascii_uppercase()) => text,
        // (The same as `to_lowercase` on ASCII, without its per-character Unicode tables.)
        true => std::borrow::Cow::Owned(text.to_ascii_lowercase()),
        false => std::borrow::Cow::Owned(text.to_lowercase()),
    }
}

/// A record's fields beyond the canonical ones, parsed once: rules read them as a JSON object
/// (Sigma's record) without parsing them again, and clones of an event share them.
///
/// A provider's record whose Sigma rules were matched when it was decoded ([`Fields::settle`])
/// keeps its text instead of its parsed form, and the [`EarlyMatches`]: the parsed form, several
/// times larger, is freed while still in the caches, and made again from the text only when
/// something reads a field later (a rule set that changed since, a threshold rule on a raw field,
/// a checkpoint).
///
/// Compared, hashed and serialised as the `(name, JSON text)` pairs in name order, so that the
/// order of events and their checkpointed form do not depend on how the fields are held.
///
/// ```
/// use sonic_rs::JsonValueTrait;
/// use threatflow::event::Fields;
/// let fields = Fields::of_record(sonic_rs::from_str(r#"{"risk": {"a": 1}, "note": "x"}"#)?);
/// assert_eq!(fields.get("note").and_then(|v| v.as_str()), Some("x"));
/// assert_eq!(fields.pairs(), [("note", "\"x\"".to_string()), ("risk", r#"{"a":1}"#.to_string())]);
/// assert_eq!(fields.record().pointer(["risk", "a"]).and_then(|v| v.as_u64()), Some(1));
/// # Ok::<(), sonic_rs::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Fields(Option<std::sync::Arc<HeldRecord>>);

/// A record as an event holds it: parsed, or its text (parsed again on first read).
#[derive(Debug)]
struct HeldRecord {
    /// The record's text, when it was settled ([`Fields::settle`]).
    text: Option<Box<str>>,
    parsed: std::sync::OnceLock<TaggedRecord>,
    /// The Sigma rules it matched when decoded.
    early: Option<EarlyMatches>,
}

impl HeldRecord {
    fn parsed(record: TaggedRecord) -> HeldRecord {
        HeldRecord { text: None, parsed: std::sync::OnceLock::from(record), early: None }
    }

    /// The parsed record: kept, or made from the text.
    fn tagged(&self) -> &TaggedRecord {
        self.parsed.get_or_init(|| TaggedRecord::of(reparsed(self.text.as_deref())))
    }

    /// The record itself: kept, or made from the text.
    fn into_record(self) -> Record {
        match self.parsed.into_inner() {
            Some(tagged) => tagged.into_owner(),
            None => reparsed(self.text.as_deref()),
        }
    }
}

/// A settled record's text parsed again: it parsed into an object when the record was decoded,
/// and so does again.
fn reparsed(text: Option<&str>) -> Record {
    sonic_rs::from_str(text.unwrap_or("{}")).unwrap_or_default()
}

/// The Sigma rules a provider's record matched when it was decoded, while it was still in the
/// caches (see `crate::detect::sigma_set`): which rule set (a fingerprint of its rules, in order) and
/// the positions in it of the rules whose detections matched. The decision step uses them when
/// the same rule set is in force at the event's time, and matches the record itself otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EarlyMatches {
    /// The fingerprint of the rule set the record was matched against (the rules of the
    /// event's source).
    pub rules: u128,
    /// The positions of the matching rules in the set, ascending.
    pub matched: smallvec::SmallVec<[u32; 4]>,
}

self_cell::self_cell!(
    /// A record with an index of its top-level keys, made once when the record is read.
    /// `sonic_rs` finds a key by comparing it with each key in turn; the mapping and the rules
    /// look up dozens of fields per record, and a lookup here compares one-word tags (see
    /// [`key_tag`]), the texts only when they agree.
    struct TaggedRecord {
        owner: Record,
        #[covariant]
        dependent: KeyIndex,
    }
    impl {Debug}
);

/// A record's top-level keys in its order: each key's tag (see [`key_tag`]), and apart from the
/// tags the key and its value. A lookup scans the tags, which sit beside the record in one
/// allocation and take a few cache lines (a record is cold by the time its rules read it), and
/// touches the entry whose tag agrees.
#[derive(Debug)]
struct KeyIndex<'r> {
    tags: smallvec::SmallVec<[u64; 32]>,
    entries: Vec<(&'r str, &'r Record)>,
}

impl TaggedRecord {
    fn of(record: Record) -> TaggedRecord {
        TaggedRecord::new(record, |record| {
            let Some(object) = record.as_object() else { return KeyIndex { tags: smallvec::SmallVec::new(), entries: Vec::new() } };
            let mut index = KeyIndex { tags: smallvec::SmallVec::with_capacity(object.len()), entries: Vec::with_capacity(object.len()) };
            for (key, value) in object.iter() {
                index.tags.push(key_tag(key));
                index.entries.push((key, value));
            }
            index
        })
    }

    /// The value of the first key equal to `key`, as `sonic_rs` finds it.
    fn get(&self, key: &str) -> Option<&Record> {
        let tag = key_tag(key);
        let index = self.borrow_dependent();
        index.tags.iter().zip(&index.entries).find(|(t, (known, _))| **t == tag && *known == key).map(|(_, (_, value))| *value)
    }

    /// The value of the first key equal to `key` ignoring ASCII case.
    fn get_ignoring_case(&self, key: &str) -> Option<&Record> {
        self.borrow_dependent().entries.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, value)| *value)
    }
}

/// A key's length, first four and last three bytes, in one word (read with loads of fixed
/// width: a copy of variable length would call `memcpy`, dearer than the rest).
fn key_tag(key: &str) -> u64 {
    let bytes = key.as_bytes();
    let n = bytes.len();
    let at = |i: usize| u64::from(bytes[i]);
    let head = match n {
        0 => 0,
        1 => at(0),
        2 => at(0) | at(1) << 8,
        3 => at(0) | at(1) << 8 | at(2) << 16,
        _ => at(0) | at(1) << 8 | at(2) << 16 | at(3) << 24,
    };
    let tail = match n {
        0..=4 => 0,
        5 => at(n - 1),
        6 => at(n - 2) | at(n - 1) << 8,
        _ => at(n - 3) | at(n - 2) << 8 | at(n - 1) << 16,
    };
    head | tail << 32 | u64::from(n as u8) << 56
}

/// The record of an event without other fields: nothing a rule looks up is in it.
static NO_FIELDS: std::sync::LazyLock<Record> = std::sync::LazyLock::new(Record::default);

impl Fields {
    /// The fields of a parsed record (an object; anything else holds no fields).
    pub fn of_record(record: Record) -> Fields {
        match record.as_object() {
            Some(object) if !object.is_empty() => Fields(Some(std::sync::Arc::new(HeldRecord::parsed(TaggedRecord::of(record))))),
            _ => Fields::default(),
        }
    }

    /// The fields of a `serde_json` object (a canonical event's extra fields).
    pub fn of_json(map: &serde_json::Map<String, serde_json::Value>) -> Fields {
        if map.is_empty() {
            return Fields::default();
        }
        Fields::of_record(sonic_rs::to_value(map).unwrap_or_default())
    }

    /// A top-level field's value (the first of duplicate keys).
    pub fn get(&self, name: &str) -> Option<&Record> {
        self.0.as_deref()?.tagged().get(name)
    }

    /// A top-level field's value by its name ignoring ASCII case (the first that fits), as
    /// mappings find a key that is not there as they spell it.
    pub fn get_ignoring_case(&self, name: &str) -> Option<&Record> {
        self.0.as_deref()?.tagged().get_ignoring_case(name)
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The fields in the record's order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Record)> {
        self.record().as_object().into_iter().flat_map(|object| object.iter())
    }

    /// Sets a field (the enrichment step adds `enrichment` to a provider's record), replacing one
    /// of the same name; the record is copied only when another event still shares it.
    pub fn insert(&mut self, name: &str, value: Record) {
        let mut record = match self.0.take() {
            Some(held) => std::sync::Arc::try_unwrap(held).map_or_else(|shared| shared.tagged().borrow_owner().clone(), HeldRecord::into_record),
            None => sonic_rs::Object::new().into_value(),
        };
        if let Some(object) = record.as_object_mut() {
            object.insert(name, value);
        }
        // (A changed record is matched again: its early matches are not kept.)
        self.0 = Some(std::sync::Arc::new(HeldRecord::parsed(TaggedRecord::of(record))));
    }

    /// Keeps the Sigma rules the record matched when decoded, and `text` instead of the parsed
    /// record (freed now: see [`Fields`]). `text` must be what the record was parsed from; fields
    /// shared with another event are left as they are.
    pub fn settle(&mut self, text: &str, early: EarlyMatches) {
        if let Some(held) = self.0.as_mut().and_then(std::sync::Arc::get_mut) {
            held.text = Some(text.into());
            held.early = Some(early);
            drop(held.parsed.take());
        }
    }

    /// The Sigma rules the record matched when decoded ([`Fields::settle`]), if it was.
    pub fn early_matches(&self) -> Option<&EarlyMatches> {
        self.0.as_deref()?.early.as_ref()
    }

    /// The fields as a JSON object (`null` when there are none), for rules to read.
    pub fn record(&self) -> &Record {
        self.0.as_deref().map_or(&NO_FIELDS, |held| held.tagged().borrow_owner())
    }

    /// The `(name, JSON text)` pairs in name order: how the fields compare and serialise.
    pub fn pairs(&self) -> Vec<(&str, String)> {
        let mut pairs: Vec<(&str, String)> = self.iter().map(|(name, value)| (name, value.to_string())).collect();
        pairs.sort();
        pairs
    }
}

impl PartialEq for Fields {
    fn eq(&self, other: &Fields) -> bool {
        self.record() == other.record()
    }
}

impl Eq for Fields {}

impl PartialOrd for Fields {
    fn partial_cmp(&self, other: &Fields) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Fields {
    fn cmp(&self, other: &Fields) -> std::cmp::Ordering {
        self.pairs().cmp(&other.pairs())
    }
}

impl std::hash::Hash for Fields {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.pairs().hash(state)
    }
}

impl Serialize for Fields {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.pairs().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Fields, D::Error> {
        let pairs = Vec::<(String, String)>::deserialize(deserializer)?;
        let mut object = sonic_rs::Object::with_capacity(pairs.len());
        for (name, text) in pairs {
            object.insert(&name, sonic_rs::from_str::<Record>(&text).map_err(de::Error::custom)?);
        }
        Ok(Fields::of_record(object.into_value()))
    }
}

impl Event {
    /// The action's kind.
    pub fn kind(&self) -> ActionKind {
        ActionKind::of(&self.action)
    }

    /// The value of a field by name, as text (canonical fields first, then the kept extra fields).
    /// JSON strings among the extra fields are unquoted; other JSON values are their JSON text.
    pub fn field(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        match name {
            "event_id" => Some(Cow::Borrowed(&self.event_id)),
            "user" => Some(Cow::Borrowed(&self.user)),
            "action" => Some(Cow::Borrowed(&self.action)),
            "ts" => Some(Cow::Owned(self.ts.to_string())),
            "app" => self.app.as_deref().map(Cow::Borrowed),
            "resource" => self.resource.as_deref().map(Cow::Borrowed),
            "src_ip" => self.src_ip.as_deref().map(Cow::Borrowed),
            "country" => self.country.as_deref().map(Cow::Borrowed),
            "user_agent" => self.user_agent.as_deref().map(Cow::Borrowed),
            "bytes" => self.bytes.map(|b| Cow::Owned(b.to_string())),
            "ip_class" | "city" | "latitude" | "longitude" | "asn" | "as_org" => self.enrichment.as_ref()?.field(name).map(Cow::Owned),
            _ => {
                let value = self.extra.get(name)?;
                match value.as_str() {
                    Some(s) => Some(Cow::Borrowed(s)),
                    None => Some(Cow::Owned(value.to_string())),
                }
            }
        }
    }

    /// Serializes the event back to its canonical JSON form (one line, no engine fields).
    pub fn to_json(&self) -> String {
        let mut map = serde_json::Map::new();
        map.insert("event_id".into(), self.event_id.as_str().into());
        map.insert("ts".into(), self.ts.into());
        map.insert("user".into(), self.user.as_str().into());
        map.insert("action".into(), self.action.as_str().into());
        let optional = [
            ("app", &self.app),
            ("resource", &self.resource),
            ("src_ip", &self.src_ip),
            ("country", &self.country),
            ("user_agent", &self.user_agent),
        ];
        for (name, value) in optional {
            if let Some(v) = value {
                map.insert(name.into(), v.as_str().into());
            }
        }
        if let Some(b) = self.bytes {
            map.insert("bytes".into(), b.into());
        }
        for (k, v) in self.extra.iter() {
            map.insert(k.to_string(), serde_json::to_value(v).unwrap_or_default());
        }
        serde_json::Value::Object(map).to_string()
    }
}

/// Why a record was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// The record exceeds the size limit.
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the record.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The record is not valid UTF-8.
    #[error("record is not valid UTF-8: {0}")]
    InvalidUtf8(String),
    /// The record is not a JSON object, lacks a field or has a wrong type.
    #[error("invalid event: {0}")]
    Invalid(String),
    /// Records a checkpoint says are still to be read were deleted by the broker (retention)
    /// before a restored job could read them: a dead letter without an original says so.
    #[error("offsets {from} to {to} ({} records) were deleted by the broker (retention) before they were read: lost", to - from)]
    Lost {
        /// The first offset lost.
        from: i64,
        /// The first offset still there.
        to: i64,
    },
    /// The event's time is further ahead of the time its record was written than a clock can be
    /// wrong (see [`crate::ingest::partition::Decoding::max_future_skew`]).
    #[error("event time {ts} is more than {skew} ms after its record was written ({written}): implausibly far in the future")]
    AheadOfWriting {
        /// The event's time.
        ts: Time,
        /// When its record was written (a Kafka message's timestamp, an input file's modification time).
        written: Time,
        /// The allowed skew.
        skew: Time,
    },
}

impl RejectReason {
    /// The reason's kind, a short fixed name (the `reason` label of the rejected-records metric).
    pub fn class(&self) -> &'static str {
        match self {
            RejectReason::TooLarge { .. } => "too_large",
            RejectReason::InvalidUtf8(_) => "invalid_utf8",
            RejectReason::Invalid(_) => "invalid",
            RejectReason::Lost { .. } => "lost",
            RejectReason::AheadOfWriting { .. } => "ahead_of_writing",
        }
    }
}

/// Parses one record (a line or a message payload) into an event.
///
/// The engine fields `time` and `late` are set to `ts` and `false`; the source adjusts them.
pub fn parse_event(bytes: &[u8], max_bytes: usize) -> Result<Event, RejectReason> {
    if bytes.len() > max_bytes {
        return Err(RejectReason::TooLarge { size: bytes.len(), limit: max_bytes });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| RejectReason::InvalidUtf8(e.to_string()))?;
    let raw: RawEvent = serde_json::from_str(text).map_err(|e| RejectReason::Invalid(e.to_string()))?;
    raw.validate().map_err(RejectReason::Invalid)
}

/// A canonical event from a parsed JSON record.
pub fn event_from_value(value: serde_json::Value) -> Result<Event, RejectReason> {
    let raw: RawEvent = serde_json::from_value(value).map_err(|e| RejectReason::Invalid(e.to_string()))?;
    raw.validate().map_err(RejectReason::Invalid)
}

/// The record as deserialized, before validation.
#[derive(Default)]
struct RawEvent {
    event_id: Option<Text>,
    ts: Option<Time>,
    user: Option<Text>,
    action: Option<Text>,
    app: Option<Text>,
    resource: Option<Text>,
    src_ip: Option<Text>,
    country: Option<Text>,
    bytes: Option<u64>,
    user_agent: Option<Text>,
    extra: serde_json::Map<String, serde_json::Value>,
}

impl RawEvent {
    fn validate(self) -> Result<Event, String> {
        fn required(value: Option<Text>, name: &str) -> Result<Text, String> {
            match value {
                Some(v) if !v.is_empty() => Ok(v),
                Some(_) => Err(format!("field `{name}` is empty")),
                None => Err(format!("missing field `{name}`")),
            }
        }
        let event_id = required(self.event_id, "event_id")?;
        let user = required(self.user, "user")?;
        let action = required(self.action, "action")?;
        let ts = self.ts.ok_or_else(|| "missing field `ts`".to_string())?;
        if ts > MAX_TIME {
            return Err(format!("field `ts` {ts} is after the year 9999"));
        }
        let country = match self.country {
            Some(c) => {
                if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(format!("field `country` is not an ISO 3166 alpha-2 code: {c:?}"));
                }
                Some(Text::from(c.to_ascii_uppercase()))
            }
            None => None,
        };
        let extra = Fields::of_json(&self.extra);
        let key = user_key(&user);
        Ok(Event {
            event_id,
            ts,
            user,
            action,
            app: self.app,
            resource: self.resource,
            src_ip: self.src_ip,
            country,
            bytes: self.bytes,
            user_agent: self.user_agent,
            extra,
            source: None,
            enrichment: None,
            intel: None,
            key,
            time: ts,
            late: false,
            position: None,
        })
    }
}

/// `ts` is either milliseconds since the epoch or an RFC 3339 string.
struct TsValue(Time);

impl<'de> Deserialize<'de> for TsValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TsVisitor;
        impl Visitor<'_> for TsVisitor {
            type Value = TsValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("milliseconds since the epoch or an RFC 3339 timestamp")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TsValue, E> {
                Ok(TsValue(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TsValue, E> {
                u64::try_from(v).map(TsValue).map_err(|_| E::custom(format!("negative timestamp {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TsValue, E> {
                parse_rfc3339_ms(v).map(TsValue).map_err(E::custom)
            }
        }
        d.deserialize_any(TsVisitor)
    }
}

/// Parses an RFC 3339 timestamp to milliseconds since the epoch.
pub fn parse_rfc3339_ms(text: &str) -> Result<Time, String> {
    let dt = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| format!("bad RFC 3339 timestamp {text:?}: {e}"))?;
    u64::try_from(dt.timestamp_millis()).map_err(|_| format!("timestamp before the epoch: {text:?}"))
}

/// An optional string field: `null` and absent are the same; anything but a string is an error.
struct OptString(Option<Text>);

impl<'de> Deserialize<'de> for OptString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<Text>::deserialize(d).map(OptString)
    }
}

/// A field name: one of the canonical fields (read without allocating), or another one.
enum FieldKey {
    Known(usize),
    Other(String),
}

/// The canonical fields, in the order of the bits that track which were seen.
const FIELDS: [&str; 10] = ["event_id", "ts", "user", "action", "app", "resource", "src_ip", "country", "bytes", "user_agent"];

impl<'de> Deserialize<'de> for FieldKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = FieldKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldKey, E> {
                Ok(match FIELDS.iter().position(|f| *f == v) {
                    Some(i) => FieldKey::Known(i),
                    None => FieldKey::Other(v.to_string()),
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for RawEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EventVisitor;
        impl<'de> Visitor<'de> for EventVisitor {
            type Value = RawEvent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEvent, A::Error> {
                let mut raw = RawEvent::default();
                let mut seen = 0u16;
                let field_error = |name: &str, e: A::Error| de::Error::custom(format!("field `{name}`: {e}"));
                while let Some(key) = map.next_key::<FieldKey>()? {
                    let index = match key {
                        FieldKey::Known(index) => index,
                        FieldKey::Other(name) => {
                            if raw.extra.contains_key(&name) {
                                return Err(de::Error::custom(format!("duplicate field `{name}`")));
                            }
                            let value: serde_json::Value = map.next_value()?;
                            raw.extra.insert(name, value);
                            continue;
                        }
                    };
                    let name = FIELDS[index];
                    if seen & (1 << index) != 0 {
                        return Err(de::Error::custom(format!("duplicate field `{name}`")));
                    }
                    seen |= 1 << index;
                    match name {
                        "ts" => raw.ts = Some(map.next_value::<TsValue>().map_err(|e| field_error(name, e))?.0),
                        "bytes" => raw.bytes = map.next_value::<Option<u64>>().map_err(|e| field_error(name, e))?,
                        _ => {
                            let value = map.next_value::<OptString>().map_err(|e| field_error(name, e))?.0;
                            match name {
                                "event_id" => raw.event_id = value,
                                "user" => raw.user = value,
                                "action" => raw.action = value,
                                "app" => raw.app = value,
                                "resource" => raw.resource = value,
                                "src_ip" => raw.src_ip = value,
                                "country" => raw.country = value,
                                _ => raw.user_agent = value,
                            }
                        }
                    }
                }
                Ok(raw)
            }
        }
        d.deserialize_map(EventVisitor)
    }
}

/// Where a record came from: its source and its position there.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Source name, e.g. `file:events.jsonl` or `memory:0`.
    pub source: std::sync::Arc<str>,
    /// 1-based line number (files) or record index.
    pub record: u64,
    /// Byte offset of the record in its source.
    pub offset: u64,
}

/// The most a dead letter keeps of its record's original bytes, counted as written (JSON-escaped
/// or base64): 256 KiB, so that every dead letter fits a Kafka message (1 MB by default) however
/// hostile the record (control characters grow six-fold when escaped, binary by a third in base64).
pub const DEAD_LETTER_ORIGINAL_BYTES: usize = 256 * 1024;

/// A rejected record: the reason, its position and its original bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Why it was rejected.
    pub reason: String,
    /// Where it came from.
    pub position: Position,
    /// The original bytes when they are valid UTF-8.
    pub original: Option<String>,
    /// The original bytes, base64, when they are not valid UTF-8.
    pub original_base64: Option<String>,
    /// Whether the original holds only a prefix of the record (records over the size limit, or
    /// whose written form would exceed [`DEAD_LETTER_ORIGINAL_BYTES`]).
    pub truncated: bool,
    /// The record's full size in bytes.
    pub size: u64,
    /// The SHA-256 of the whole record, hex, when it was read whole (not for records over the
    /// size limit, which are skipped unread): with `size` and the position, it identifies a
    /// truncated record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl DeadLetter {
    /// Builds a dead letter; `bytes` may be a prefix of a record of `size` bytes.
    pub fn new(reason: &RejectReason, position: Position, bytes: &[u8], size: usize) -> Self {
        use sha2::Digest;
        let sha256 = (size > 0 && bytes.len() == size).then(|| hex::encode(sha2::Sha256::digest(bytes)));
        let (original, original_base64, kept) = match std::str::from_utf8(bytes) {
            Ok(text) => {
                let kept = escaped_prefix(text, DEAD_LETTER_ORIGINAL_BYTES);
                (Some(kept.to_string()), None, kept.len())
            }
            Err(_) => {
                let kept = &bytes[..bytes.len().min(DEAD_LETTER_ORIGINAL_BYTES / 4 * 3)];
                (None, Some(base64::engine::general_purpose::STANDARD.encode(kept)), kept.len())
            }
        };
        DeadLetter { reason: reason.to_string(), position, original, original_base64, truncated: kept < size, size: size as u64, sha256 }
    }

    /// A dead letter standing for `bytes` bytes of records not kept one by one (see
    /// [`crate::ingest::dead_letter_burst`]): no original, `truncated`.
    pub fn summary(reason: String, position: Position, bytes: u64) -> Self {
        DeadLetter { reason, position, original: None, original_base64: None, truncated: true, size: bytes, sha256: None }
    }

    /// The original bytes (or the kept prefix).
    pub fn original_bytes(&self) -> Vec<u8> {
        match (&self.original, &self.original_base64) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }
}

/// The longest prefix of `text` (whole characters) whose JSON-escaped form has at most `limit` bytes.
fn escaped_prefix(text: &str, limit: usize) -> &str {
    let mut written = 0;
    for (i, c) in text.char_indices() {
        written += match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        };
        if written > limit {
            return &text[..i];
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The tag is the key's length, first four and last three bytes, as a byte array says it;
        /// a lookup finds the first key equal to the one asked, whatever tags collide.
        #[test]
        fn key_tags_and_lookups(keys in proptest::collection::vec("[ab]{0,9}", 1..40), asked in "[ab]{0,9}") {
            for key in keys.iter().chain([&asked]) {
                let bytes = key.as_bytes();
                let mut tag = [0u8; 8];
                let head = bytes.len().min(4);
                tag[..head].copy_from_slice(&bytes[..head]);
                let tail = bytes.len().saturating_sub(4).min(3);
                tag[4..4 + tail].copy_from_slice(&bytes[bytes.len() - tail..]);
                tag[7] = bytes.len() as u8;
                proptest::prop_assert_eq!(key_tag(key), u64::from_le_bytes(tag));
            }
            let text = format!("{{{}}}", keys.iter().enumerate().map(|(i, k)| format!("{k:?}: {i}")).collect::<Vec<_>>().join(", "));
            let fields = Fields::of_record(sonic_rs::from_str(&text).unwrap());
            let expected = keys.iter().position(|k| *k == asked);
            proptest::prop_assert_eq!(fields.get(&asked).and_then(|v| v.as_u64()), expected.map(|i| i as u64));
        }
    }

    #[test]
    fn parses_a_full_event_and_keeps_unknown_fields() {
        let line = br#"{"event_id":"e1","ts":"2026-01-05T10:00:00.250Z","user":"ann","action":"download","bytes":42,"country":"de","risk":{"a":1},"note":"x"}"#;
        let e = parse_event(line, DEFAULT_MAX_RECORD_BYTES).unwrap();
        assert_eq!(e.ts, 1_767_607_200_250);
        assert_eq!(e.country.as_deref(), Some("DE"));
        assert_eq!(e.bytes, Some(42));
        let pairs: Vec<(String, String)> = e.extra.pairs().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(pairs, vec![("note".into(), "\"x\"".into()), ("risk".into(), "{\"a\":1}".into())]);
        // Checkpoints and other processes get the fields as `(name, JSON text)` pairs.
        let bytes = bincode::serialize(&e).unwrap();
        assert_eq!(bincode::deserialize::<Event>(&bytes).unwrap(), e);
        assert_eq!(bincode::serialize(&e.extra).unwrap(), bincode::serialize(&pairs).unwrap());
        assert_eq!(e.field("note").as_deref(), Some("x"));
        assert_eq!(e.field("risk").as_deref(), Some("{\"a\":1}"));
        let again = parse_event(e.to_json().as_bytes(), DEFAULT_MAX_RECORD_BYTES).unwrap();
        assert_eq!(again, e);
    }

    /// A settled record keeps its early matches and reads as before from its text; a field
    /// inserted (enrichment) keeps the others and drops the matches, made for the record before.
    #[test]
    fn settled_fields_read_and_change_as_parsed_ones() {
        let text = r#"{"eventName":"GetObject","n":1}"#;
        let parsed = || Fields::of_record(sonic_rs::from_str(text).unwrap());
        let early = EarlyMatches { rules: 7, matched: smallvec::smallvec![2] };
        let mut settled = parsed();
        settled.settle(text, early.clone());
        assert_eq!(settled.early_matches(), Some(&early));
        assert_eq!(settled.pairs(), parsed().pairs());
        assert_eq!(settled.get("n").and_then(|v| v.as_u64()), Some(1));
        let mut unread = parsed();
        unread.settle(text, early);
        for fields in [&mut settled, &mut unread] {
            fields.insert("enrichment", sonic_rs::json!({"asn": 3}));
            assert_eq!(fields.early_matches(), None);
            assert_eq!(fields.pairs(), [("enrichment", r#"{"asn":3}"#.to_string()), ("eventName", "\"GetObject\"".to_string()), ("n", "1".to_string())]);
        }
    }

    #[test]
    fn dead_letters_of_hostile_records_stay_small() {
        use sha2::Digest;
        let position = Position { source: "kafka:t/0".into(), record: 0, offset: 7 };
        let reason = RejectReason::Invalid("x".into());
        let control = vec![1u8; 170_000];
        let mut binary = vec![0xffu8; 900_000];
        binary[0] = b'{';
        for record in [&control, &binary] {
            let dead = DeadLetter::new(&reason, position.clone(), record, record.len());
            let written = serde_json::to_vec(&dead).unwrap();
            assert!(written.len() <= DEAD_LETTER_ORIGINAL_BYTES + 400, "{} bytes", written.len());
            assert!(dead.truncated && dead.size == record.len() as u64);
            assert_eq!(dead.sha256, Some(hex::encode(sha2::Sha256::digest(record))));
            let kept = dead.original_bytes();
            assert!(!kept.is_empty() && record.starts_with(&kept));
        }
        let text = b"a \"quoted\" record";
        let whole = DeadLetter::new(&reason, position, text, text.len());
        assert!(!whole.truncated && whole.original.as_deref() == Some("a \"quoted\" record"));
    }

    #[test]
    fn rejects_with_reasons() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "invalid event"),
            (br#"{"event_id":"e","ts":1,"user":"u"}"#, "missing field `action`"),
            (br#"{"event_id":"e","ts":"yesterday","user":"u","action":"a"}"#, "field `ts`"),
            (br#"{"event_id":"e","ts":1,"user":"u","action":"a","bytes":-3}"#, "field `bytes`"),
            (br#"{"event_id":"e","ts":1,"user":7,"action":"a"}"#, "field `user`"),
            (br#"{"event_id":"e","ts":1,"user":"u","action":"a","country":"Germany"}"#, "country"),
            (br#"{"event_id":"e","ts":1,"user":"u","user":"v","action":"a"}"#, "duplicate field"),
            (br#"[1,2]"#, "a JSON object"),
            (b"{\"event_id\":\"\xff\"}", "UTF-8"),
        ];
        for (bytes, reason) in cases {
            let err = parse_event(bytes, DEFAULT_MAX_RECORD_BYTES).unwrap_err().to_string();
            assert!(err.contains(reason), "{:?}: {err}", String::from_utf8_lossy(bytes));
        }
        let big = vec![b' '; 100];
        assert!(matches!(parse_event(&big, 10), Err(RejectReason::TooLarge { size: 100, limit: 10 })));
    }
}
