//! Threat-intel indicators: addresses and networks, domains, user agents, autonomous systems, user
//! names and file hashes that a feed says are bad, each with its source, confidence and the event
//! times it is in force, and the index that finds the indicators an event's values match.
//!
//! An indicator is a value of one [`IndicatorKind`], normalised so that the spellings a feed and a
//! log use compare equal: addresses and networks canonical (`203.0.113.0/24`, host bits cleared),
//! domains, users and hashes lower case, ASNs as bare numbers (`AS13335` is `13335`); user agents
//! are compared exactly. A domain matches itself and its subdomains; a network every address in it.
//!
//! The index answers *as of a time*: it keeps each indicator's changes (`+1` when it comes into
//! force, `-1` when it expires or is removed), so that an event is matched against exactly the
//! indicators in force at its own time, whatever order updates and events arrive in.
//!
//! ```
//! use threatflow::enrich::intel::{Indicator, IndicatorKind, IntelIndex};
//! let bad_net = Indicator::new("feed:1", IndicatorKind::Ip, "203.0.113.77/24", "feed", 90, 1_000, Some(5_000))?;
//! assert_eq!(bad_net.value, "203.0.113.0/24");
//! let mut index = IntelIndex::default();
//! index.update(&bad_net, 1_000, 1);
//! index.update(&bad_net, 5_000, -1); // expires
//! let mut hits = Vec::new();
//! index.lookup(IndicatorKind::Ip, "203.0.113.9", 999, &mut hits);
//! assert!(hits.is_empty(), "not yet in force");
//! index.lookup(IndicatorKind::Ip, "203.0.113.9", 1_000, &mut hits);
//! assert_eq!((hits[0].indicator.as_str(), hits[0].matched.as_str()), ("feed:1", "203.0.113.9"));
//! hits.clear();
//! index.lookup(IndicatorKind::Ip, "203.0.113.9", 5_000, &mut hits);
//! assert!(hits.is_empty(), "expired");
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// What an indicator's value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndicatorKind {
    /// An IPv4 or IPv6 address or network (CIDR), matched against the event's `src_ip`.
    Ip,
    /// A domain name, matched against the event's domain fields and the host of a URL.
    Domain,
    /// A user agent, matched exactly against `user_agent`.
    UserAgent,
    /// An autonomous system number, matched against the enriched `asn`.
    Asn,
    /// A user name, matched against `user` (case-insensitively).
    User,
    /// A file hash (MD5, SHA-1, SHA-256…), matched against the event's hash fields.
    Hash,
}

impl IndicatorKind {
    /// Every kind.
    pub const ALL: [IndicatorKind; 6] =
        [IndicatorKind::Ip, IndicatorKind::Domain, IndicatorKind::UserAgent, IndicatorKind::Asn, IndicatorKind::User, IndicatorKind::Hash];

    /// The kind's name, as in decisions and files.
    pub fn as_str(self) -> &'static str {
        match self {
            IndicatorKind::Ip => "ip",
            IndicatorKind::Domain => "domain",
            IndicatorKind::UserAgent => "user_agent",
            IndicatorKind::Asn => "asn",
            IndicatorKind::User => "user",
            IndicatorKind::Hash => "hash",
        }
    }

    /// The kind a feed names (`ip`, `ipv4-addr`, `cidr`, `domain-name`, `user-agent`, `sha256`…).
    ///
    /// ```
    /// use threatflow::enrich::intel::IndicatorKind;
    /// assert_eq!(IndicatorKind::parse("ipv4-addr")?, IndicatorKind::Ip);
    /// assert_eq!(IndicatorKind::parse("SHA-256")?, IndicatorKind::Hash);
    /// assert!(IndicatorKind::parse("mutex").is_err());
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn parse(name: &str) -> Result<IndicatorKind> {
        Ok(match name.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "ip" | "ipv4" | "ipv6" | "ipv4-addr" | "ipv6-addr" | "cidr" | "network" | "ip-address" => IndicatorKind::Ip,
            "domain" | "domain-name" | "hostname" | "fqdn" => IndicatorKind::Domain,
            "user-agent" | "ua" | "useragent" => IndicatorKind::UserAgent,
            "asn" | "as" | "autonomous-system" => IndicatorKind::Asn,
            "user" | "username" | "user-account" | "email" | "account" => IndicatorKind::User,
            "hash" | "md5" | "sha1" | "sha-1" | "sha256" | "sha-256" | "sha512" | "sha-512" | "file" => IndicatorKind::Hash,
            other => bail!("unknown indicator type {other:?} (ip, domain, user_agent, asn, user, hash)"),
        })
    }
}

/// An indicator as it travels in the control collection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Indicator {
    /// Its id (a later update with the same id replaces or removes it).
    pub id: String,
    /// What its value is.
    pub kind: IndicatorKind,
    /// The value, normalised (module doc).
    pub value: String,
    /// The feed or analyst it comes from.
    pub source: String,
    /// How sure the source is, 0–100; decides a match's severity.
    pub confidence: u8,
    /// Event time (ms) from which it is in force.
    pub effective_from: u64,
    /// Event time (ms) from which it is no longer in force.
    pub expires: Option<u64>,
}

impl Indicator {
    /// An indicator with its value normalised; a value that is not of its kind is an error.
    pub fn new(id: &str, kind: IndicatorKind, value: &str, source: &str, confidence: u8, effective_from: u64, expires: Option<u64>) -> Result<Indicator> {
        ensure!(!id.is_empty(), "an indicator needs an id");
        ensure!(confidence <= 100, "confidence {confidence} is not within 0-100");
        if let Some(expires) = expires {
            ensure!(expires > effective_from, "indicator {id} expires ({expires}) before it is in force ({effective_from})");
        }
        let value = normalise(kind, value).with_context(|| format!("indicator {id}"))?;
        Ok(Indicator { id: id.to_string(), kind, value, source: source.to_string(), confidence, effective_from, expires })
    }
}

/// An update of the indicators: one comes into force (replacing the one with its id), or the
/// one with its id is removed, from `effective_from` on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndicatorUpdate {
    /// The indicator's id.
    pub id: String,
    /// Event time (ms) from which the update applies.
    pub effective_from: u64,
    /// The indicator, or `None` to remove the one with this id.
    pub indicator: Option<Indicator>,
}

/// An indicator an event matched, as decisions name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IntelHit {
    /// The indicator's id.
    pub indicator: String,
    /// Its kind.
    pub kind: IndicatorKind,
    /// Its value.
    pub value: String,
    /// The event's value that matched it (an address in a network, a subdomain).
    pub matched: String,
    /// Its source.
    pub source: String,
    /// Its confidence.
    pub confidence: u8,
}

impl IntelHit {
    /// The hit of `indicator` on an event's `matched` value.
    pub fn of(indicator: &Indicator, matched: &str) -> IntelHit {
        IntelHit {
            indicator: indicator.id.clone(),
            kind: indicator.kind,
            value: indicator.value.clone(),
            matched: matched.to_string(),
            source: indicator.source.clone(),
            confidence: indicator.confidence,
        }
    }
}

/// `value` as an indicator of `kind` stores it (module doc).
///
/// ```
/// use threatflow::enrich::intel::{normalise, IndicatorKind};
/// assert_eq!(normalise(IndicatorKind::Domain, "*.Evil.Example.")?, "evil.example");
/// assert_eq!(normalise(IndicatorKind::Asn, "AS13335")?, "13335");
/// assert_eq!(normalise(IndicatorKind::Ip, "2001:DB8::1/32")?, "2001:db8::/32");
/// assert_eq!(normalise(IndicatorKind::Ip, "198.51.100.7")?, "198.51.100.7");
/// assert!(normalise(IndicatorKind::Ip, "not an address").is_err());
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn normalise(kind: IndicatorKind, value: &str) -> Result<String> {
    let value = value.trim();
    ensure!(!value.is_empty(), "an empty {} value", kind.as_str());
    Ok(match kind {
        IndicatorKind::Ip => {
            let (network, prefix) = parse_network(value).with_context(|| format!("{value:?} is not an IP address or network"))?;
            let full = if network.is_ipv4() { 32 } else { 128 };
            if prefix == full {
                network.to_string()
            } else {
                format!("{network}/{prefix}")
            }
        }
        IndicatorKind::Domain => {
            let domain = value.trim_start_matches("*.").trim_end_matches('.').to_ascii_lowercase();
            ensure!(!domain.is_empty() && !domain.contains(['/', ' ', '@']), "{value:?} is not a domain name");
            domain
        }
        IndicatorKind::Asn => {
            let digits = value.trim_start_matches(['A', 'S', 'a', 's']);
            let number: u32 = digits.parse().with_context(|| format!("{value:?} is not an AS number"))?;
            number.to_string()
        }
        IndicatorKind::User | IndicatorKind::Hash => value.to_lowercase(),
        IndicatorKind::UserAgent => value.to_string(),
    })
}

/// An address or network: the network address (host bits cleared) and its prefix length.
fn parse_network(text: &str) -> Option<(IpAddr, u8)> {
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix.parse::<u8>().ok()?)),
        None => (text, None),
    };
    let address: IpAddr = address.trim_matches(['[', ']']).parse().ok()?;
    let full = if address.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(full);
    if prefix > full {
        return None;
    }
    let (bits, v6) = address_bits(address);
    Some((from_bits(mask(bits, prefix, v6), v6), prefix))
}

/// An address as 128 bits (IPv4 in the low 32) and whether it is IPv6.
pub fn address_bits(address: IpAddr) -> (u128, bool) {
    match address {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), false),
        IpAddr::V6(v6) => (u128::from(v6), true),
    }
}

/// The address of [`address_bits`]' bits.
pub fn from_bits(bits: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(bits.into())
    } else {
        // The low 32 bits of an IPv4 address's bits.
        IpAddr::V4(((bits & u128::from(u32::MAX)) as u32).into())
    }
}

/// `bits` with everything after the first `prefix` bits cleared.
pub fn mask(bits: u128, prefix: u8, v6: bool) -> u128 {
    let width = if v6 { 128 } else { 32 };
    let host = u32::from(width - prefix.min(width));
    if host >= 128 {
        0
    } else {
        (bits >> host) << host
    }
}

/// An address's text from its bits.
pub fn address_text(bits: u128, v6: bool) -> String {
    from_bits(bits, v6).to_string()
}

/// The network an indicator of kind [`IndicatorKind::Ip`] stands for: its bits, whether it is
/// IPv6, and its prefix length.
pub fn network_of(indicator: &Indicator) -> Option<(u128, bool, u8)> {
    let (network, prefix) = parse_network(&indicator.value)?;
    let (bits, v6) = address_bits(network);
    Some((bits, v6, prefix))
}

/// The address an event's `src_ip` text holds (brackets and a port allowed), if any.
pub fn parse_address(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(address) = text.parse() {
        return Some(address);
    }
    text.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()).or_else(|| text.trim_matches(['[', ']']).parse().ok())
}

/// The fingerprint of a normalised value of `kind`: how the index and the retro-matching history
/// find values (64-bit xxh3, seeded by the kind; the index confirms each candidate by its value).
pub fn value_hash(kind: IndicatorKind, normal: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(normal.as_bytes(), kind as u64)
}

/// The fingerprint of an address (as [`address_bits`] gives it): how the retro-matching history
/// finds an address without keeping its text.
pub fn address_hash(bits: u128, v6: bool) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(&bits.to_le_bytes(), IndicatorKind::Ip as u64 + u64::from(v6) * 64)
}

/// `value` normalised as an event's value of `kind` is compared (no allocation when it already
/// is): what [`value_hash`] is taken of; `None` when the value cannot be of that kind, and for
/// addresses, which are compared as bits ([`parse_address`], [`address_bits`]), not as text.
pub fn event_normal(kind: IndicatorKind, value: &str) -> Option<std::borrow::Cow<'_, str>> {
    use std::borrow::Cow;
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    Some(match kind {
        IndicatorKind::Ip => return None,
        IndicatorKind::Domain => {
            let value = value.trim_end_matches('.');
            match value.bytes().any(|b| b.is_ascii_uppercase()) {
                true => Cow::Owned(value.to_ascii_lowercase()),
                false => Cow::Borrowed(value),
            }
        }
        IndicatorKind::User | IndicatorKind::Hash => match value.chars().any(char::is_uppercase) {
            true => Cow::Owned(value.to_lowercase()),
            false => Cow::Borrowed(value),
        },
        IndicatorKind::Asn => match value.bytes().all(|b| b.is_ascii_digit()) {
            true => Cow::Borrowed(value),
            false => Cow::Owned(normalise(kind, value).ok()?),
        },
        IndicatorKind::UserAgent => Cow::Borrowed(value),
    })
}

/// A domain and each domain it is under (`a.b.example`, `b.example`, `example`).
pub fn domain_suffixes(domain: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(domain), |rest| rest.split_once('.').map(|(_, parent)| parent).filter(|p| !p.is_empty()))
}

/// One indicator and its changes (event time, `+1`/`-1`), in time order.
#[derive(Debug)]
struct Slot {
    indicator: Arc<Indicator>,
    changes: Vec<(u64, isize)>,
}

impl Slot {
    fn in_force_at(&self, at: u64) -> bool {
        self.changes.iter().take_while(|(time, _)| *time <= at).map(|(_, diff)| diff).sum::<isize>() > 0
    }
}

/// The indicators with their changes over event time, found by the values they match (module doc).
/// A value costs one hash lookup (a domain one per level); an address one per prefix length
/// present among the networks.
#[derive(Debug, Default)]
pub struct IntelIndex {
    /// Indicators other than addresses, by [`value_hash`] of their value.
    values: HashMap<u64, Vec<Slot>, foldhash::fast::FixedState>,
    /// Addresses and networks, by (IPv6, prefix length, network bits).
    networks: HashMap<(bool, u8, u128), Vec<Slot>, foldhash::fast::FixedState>,
    /// The prefix lengths present, per family (longest first).
    prefixes: [BTreeSet<std::cmp::Reverse<u8>>; 2],
    /// Which kinds have indicators (an event's values of other kinds are not looked at).
    kinds: [bool; 6],
    slots: usize,
}

impl IntelIndex {
    /// Applies a change of the indicators in force: `indicator` comes into force at `time`
    /// (`diff` 1) or leaves it (`diff` -1).
    pub fn update(&mut self, indicator: &Indicator, time: u64, diff: isize) {
        self.kinds[indicator.kind as usize] = true;
        let slots = match indicator.kind {
            IndicatorKind::Ip => {
                let Some((network, prefix)) = parse_network(&indicator.value) else { return };
                let (bits, v6) = address_bits(network);
                self.prefixes[usize::from(v6)].insert(std::cmp::Reverse(prefix));
                self.networks.entry((v6, prefix, bits)).or_default()
            }
            kind => self.values.entry(value_hash(kind, &indicator.value)).or_default(),
        };
        let slot = match slots.iter().position(|s| *s.indicator == *indicator) {
            Some(slot) => slot,
            None => {
                slots.push(Slot { indicator: Arc::new(indicator.clone()), changes: Vec::new() });
                self.slots += 1;
                slots.len() - 1
            }
        };
        let changes = &mut slots[slot].changes;
        let at = changes.partition_point(|(t, _)| *t <= time);
        changes.insert(at, (time, diff));
    }

    /// How many indicators the index holds (in force at some time it can still be asked about).
    pub fn len(&self) -> usize {
        self.slots
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.slots == 0
    }

    /// Whether it holds indicators of `kind`.
    pub fn has(&self, kind: IndicatorKind) -> bool {
        self.kinds[kind as usize]
    }

    /// Adds to `hits` the indicators of `kind` in force at `at` that `value` (an event's value, not
    /// yet normalised) matches.
    pub fn lookup(&self, kind: IndicatorKind, value: &str, at: u64, hits: &mut Vec<IntelHit>) {
        if !self.has(kind) {
            return;
        }
        match kind {
            IndicatorKind::Ip => {
                if let Some(address) = parse_address(value) {
                    let (bits, v6) = address_bits(address);
                    self.lookup_address(bits, v6, at, hits);
                }
            }
            kind => {
                if let Some(normal) = event_normal(kind, value) {
                    self.lookup_normal(kind, &normal, at, hits);
                }
            }
        }
    }

    /// The address and network indicators in force at `at` that an address (as [`address_bits`]
    /// gives it) is in.
    pub fn lookup_address(&self, bits: u128, v6: bool, at: u64, hits: &mut Vec<IntelHit>) {
        let mut text = None;
        for std::cmp::Reverse(prefix) in &self.prefixes[usize::from(v6)] {
            for slot in self.networks.get(&(v6, *prefix, mask(bits, *prefix, v6))).into_iter().flatten().filter(|s| s.in_force_at(at)) {
                let matched = text.get_or_insert_with(|| address_text(bits, v6));
                hits.push(IntelHit::of(&slot.indicator, matched));
            }
        }
    }

    /// As [`IntelIndex::lookup`], for a value other than an address already normalised by
    /// [`event_normal`].
    pub fn lookup_normal(&self, kind: IndicatorKind, normal: &str, at: u64, hits: &mut Vec<IntelHit>) {
        let mut found = |slots: Option<&Vec<Slot>>, value: &str| {
            for slot in slots.into_iter().flatten() {
                if slot.indicator.value == value && slot.in_force_at(at) {
                    hits.push(IntelHit::of(&slot.indicator, normal));
                }
            }
        };
        match kind {
            IndicatorKind::Ip => {}
            IndicatorKind::Domain => {
                for suffix in domain_suffixes(normal) {
                    found(self.values.get(&value_hash(kind, suffix)), suffix);
                }
            }
            _ => found(self.values.get(&value_hash(kind, normal)), normal),
        }
    }

    /// Whether an indicator with `indicator`'s kind and value is in force at `at`.
    pub fn value_in_force(&self, indicator: &Indicator, at: u64) -> bool {
        let slots = match indicator.kind {
            IndicatorKind::Ip => parse_network(&indicator.value).and_then(|(network, prefix)| {
                let (bits, v6) = address_bits(network);
                self.networks.get(&(v6, prefix, bits))
            }),
            kind => self.values.get(&value_hash(kind, &indicator.value)),
        };
        slots.into_iter().flatten().any(|s| s.indicator.kind == indicator.kind && s.indicator.value == indicator.value && s.in_force_at(at))
    }

    /// Forgets changes no lookup at `before` or later can tell apart: each indicator's changes up
    /// to `before` are summed into one, and indicators out of force from then on are dropped.
    pub fn compact(&mut self, before: u64) {
        let mut dropped = 0;
        let mut compact_slots = |slots: &mut Vec<Slot>| {
            for slot in slots.iter_mut() {
                let settled = slot.changes.partition_point(|(t, _)| *t <= before);
                if settled > 1 {
                    let sum: isize = slot.changes[..settled].iter().map(|(_, d)| d).sum();
                    slot.changes.splice(..settled, (sum != 0).then_some((before, sum)));
                }
            }
            let len = slots.len();
            slots.retain(|s| !s.changes.is_empty());
            dropped += len - slots.len();
            !slots.is_empty()
        };
        self.values.retain(|_, slots| compact_slots(slots));
        self.networks.retain(|_, slots| compact_slots(slots));
        self.slots -= dropped;
    }
}
