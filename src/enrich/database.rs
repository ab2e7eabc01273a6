//! GeoIP and ASN databases: MaxMind-format files (`.mmdb`: GeoLite2 Country/City/ASN, the
//! ip-location-db `*-mmdb` packages, DB-IP lite) read with the `maxminddb` crate, and the
//! `start,end,asn,organisation` CSV ranges of ip-location-db's `asn` package.
//!
//! A [`Database`] is identified by its kind and the sha256 of its bytes, and serialised as its
//! location and digest only (the control collection, its checkpoints and the messages between
//! processes stay small): deserialising loads the bytes again and refuses them if they changed.
//! A process keeps each distinct database once, however many controls name it.
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! use threatflow::enrich::{Database, DatabaseKind, Databases, Enrichment};
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("asn.csv");
//! std::fs::write(&path, "1.0.0.0,1.0.0.255,13335,\"Cloudflare, Inc.\"\n2a00::,2a00:ffff::,3320,Telekom\n")?;
//! let asn = Database::load(DatabaseKind::Asn, path.to_str().unwrap(), None)?;
//! let databases = Databases { geo: None, asn: Some(asn) };
//! let e = Enrichment::of("1.0.0.7", &databases);
//! assert_eq!((e.asn, e.as_org.as_deref()), (Some(13335), Some("Cloudflare, Inc.")));
//! assert_eq!(Enrichment::of("2a00:1::1", &databases).asn, Some(3320));
//! assert_eq!(Enrichment::of("9.9.9.9", &databases).asn, None);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};

use anyhow::{bail, Context, Result};
use ordered_float::OrderedFloat;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::Enrichment;

/// The largest database read: 512 MiB (GeoLite2-City is about 60 MiB).
pub const MAX_DATABASE_BYTES: u64 = 512 << 20;

/// What a database answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseKind {
    /// Country, and with a city database the city and its coordinates (`--geoip-db`).
    Geoip,
    /// Autonomous system number and organisation (`--asn-db`).
    Asn,
}

impl DatabaseKind {
    /// The kind's name, as in updates and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseKind::Geoip => "geoip",
            DatabaseKind::Asn => "asn",
        }
    }
}

/// A loaded database (see the module doc). Compared by kind, digest and location.
#[derive(Clone)]
pub struct Database {
    /// What it answers.
    pub kind: DatabaseKind,
    /// Where it was read from (a path, `file://` or `s3://` URI; see [`crate::location`]).
    pub location: String,
    /// Hex sha256 of its bytes.
    pub sha256: String,
    lookup: Arc<Lookup>,
}

/// The contents, shared by every copy of a database in a process.
enum Lookup {
    Mmdb(maxminddb::Reader<Vec<u8>>),
    Ranges(AsnRanges),
}

impl Database {
    /// Reads the database at `location` (relative paths against the working directory), verifies
    /// its digest when one is given, and opens it. A MaxMind-format file is recognised by its
    /// metadata; anything else must be CSV ranges.
    pub fn load(kind: DatabaseKind, location: &str, sha256: Option<&str>) -> Result<Database> {
        let bytes = crate::location::fetch_at_most(location, None, MAX_DATABASE_BYTES).with_context(|| format!("reading the {} database", kind.as_str()))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        if let Some(expected) = sha256 {
            if !expected.eq_ignore_ascii_case(&digest) {
                bail!("the {} database {location} has sha256 {digest}, not the {expected} it must have", kind.as_str());
            }
        }
        let lookup = shared(&digest, || open(kind, bytes).with_context(|| format!("opening the {} database {location}", kind.as_str())))?;
        Ok(Database { kind, location: location.to_string(), sha256: digest, lookup })
    }

    /// What the database says about a public address, written into `enrichment` (fields it
    /// does not know are left as they are).
    fn fill(&self, ip: IpAddr, enrichment: &mut Enrichment) {
        match &*self.lookup {
            Lookup::Mmdb(reader) => {
                let record = match reader.lookup(ip).and_then(|found| found.decode::<MmdbRecord>()) {
                    Ok(Some(record)) => record,
                    Ok(None) => return,
                    Err(error) => {
                        tracing::debug!(%ip, database = %self.location, "database record not decoded: {error}");
                        return;
                    }
                };
                record.fill(self.kind, enrichment);
            }
            Lookup::Ranges(ranges) => {
                if let Some((asn, org)) = ranges.find(ip) {
                    enrichment.asn = Some(asn);
                    enrichment.as_org = Some(org.to_string());
                }
            }
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("kind", &self.kind).field("location", &self.location).field("sha256", &self.sha256).finish()
    }
}

impl Database {
    fn identity(&self) -> (DatabaseKind, &str, &str) {
        (self.kind, &self.sha256, &self.location)
    }
}

impl PartialEq for Database {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for Database {}

impl PartialOrd for Database {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Database {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.identity().cmp(&other.identity())
    }
}

impl std::hash::Hash for Database {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.identity().hash(state)
    }
}

/// How a database is written: where it is and what it must hash to.
#[derive(Serialize, Deserialize)]
struct DatabaseRef {
    kind: DatabaseKind,
    location: String,
    sha256: String,
}

impl Serialize for Database {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        DatabaseRef { kind: self.kind, location: self.location.clone(), sha256: self.sha256.clone() }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Database {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Database, D::Error> {
        let reference = DatabaseRef::deserialize(deserializer)?;
        let loaded = match loaded(&reference.sha256) {
            Some(lookup) => Ok(Database { kind: reference.kind, location: reference.location, sha256: reference.sha256, lookup }),
            None => Database::load(reference.kind, &reference.location, Some(&reference.sha256)),
        };
        loaded.map_err(|error| serde::de::Error::custom(format!("{error:#}")))
    }
}

/// The databases open in this process, by digest.
static OPEN: Mutex<Option<HashMap<String, Weak<Lookup>>>> = Mutex::new(None);

fn loaded(digest: &str) -> Option<Arc<Lookup>> {
    let open = OPEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    open.as_ref()?.get(digest)?.upgrade()
}

/// The open database with this digest, or the one `open` makes (then kept for later loads).
fn shared(digest: &str, open: impl FnOnce() -> Result<Lookup>) -> Result<Arc<Lookup>> {
    if let Some(lookup) = loaded(digest) {
        return Ok(lookup);
    }
    let lookup = Arc::new(open()?);
    let mut guard = OPEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    map.retain(|_, weak| weak.strong_count() > 0);
    map.insert(digest.to_string(), Arc::downgrade(&lookup));
    Ok(lookup)
}

fn open(kind: DatabaseKind, bytes: Vec<u8>) -> Result<Lookup> {
    if is_mmdb(&bytes) {
        let reader = maxminddb::Reader::from_source(bytes).context("not a valid MaxMind DB file")?;
        tracing::info!(kind = kind.as_str(), database_type = %reader.metadata().database_type, "database opened");
        return Ok(Lookup::Mmdb(reader));
    }
    match kind {
        DatabaseKind::Asn => Ok(Lookup::Ranges(AsnRanges::parse(&bytes)?)),
        DatabaseKind::Geoip => bail!("not a MaxMind DB file (a GeoIP database must be .mmdb)"),
    }
}

/// MaxMind DB files end with their metadata, after this marker.
fn is_mmdb(bytes: &[u8]) -> bool {
    const MARKER: &[u8] = b"\xab\xcd\xefMaxMind.com";
    let tail = &bytes[bytes.len().saturating_sub(128 * 1024)..];
    tail.windows(MARKER.len()).any(|w| w == MARKER)
}

/// The fields of the record shapes in use: GeoLite2/GeoIP2 (`country.iso_code`, `city.names.en`,
/// `location.latitude`, `autonomous_system_number`) and ip-location-db (`country_code`, `city`,
/// `latitude`).
#[derive(Deserialize, Default)]
#[serde(default)]
struct MmdbRecord<'a> {
    #[serde(borrow)]
    country_code: Option<&'a str>,
    country: Option<IsoCode<'a>>,
    city: Option<CityName>,
    location: Option<Coordinates>,
    latitude: Option<f64>,
    longitude: Option<f64>,
    autonomous_system_number: Option<u32>,
    #[serde(borrow)]
    autonomous_system_organization: Option<&'a str>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct IsoCode<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CityName {
    Flat(String),
    Names { names: HashMap<String, String> },
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Coordinates {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

impl MmdbRecord<'_> {
    fn fill(self, kind: DatabaseKind, enrichment: &mut Enrichment) {
        if kind == DatabaseKind::Geoip {
            let country = self.country_code.or(self.country.and_then(|c| c.iso_code));
            if let Some(code) = country.filter(|c| c.len() == 2 && c.is_ascii()) {
                enrichment.country = Some(code.to_ascii_uppercase());
            }
            enrichment.city = match self.city {
                Some(CityName::Flat(name)) => Some(name),
                Some(CityName::Names { mut names }) => names.remove("en"),
                None => None,
            }
            .filter(|name| !name.is_empty())
            .or(enrichment.city.take());
            let (latitude, longitude) = match self.location {
                Some(location) => (location.latitude, location.longitude),
                None => (self.latitude, self.longitude),
            };
            if let (Some(latitude), Some(longitude)) = (latitude, longitude) {
                enrichment.latitude = Some(OrderedFloat(latitude));
                enrichment.longitude = Some(OrderedFloat(longitude));
            }
        }
        if let Some(asn) = self.autonomous_system_number {
            enrichment.asn = Some(asn);
            enrichment.as_org = self.autonomous_system_organization.map(str::to_string);
        }
    }
}

/// ASN ranges, sorted by start: `start,end,asn,organisation` lines with addresses as text
/// (`1.0.0.0`, `2a00::`) or IPv4 numbers (ip-location-db's `*-num.csv`).
struct AsnRanges {
    ranges: Vec<(u128, u128, u32, u32)>,
    organisations: Vec<String>,
}

impl AsnRanges {
    fn parse(bytes: &[u8]) -> Result<AsnRanges> {
        let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bytes);
        let mut ranges = Vec::new();
        let mut organisations: Vec<String> = Vec::new();
        let mut index: HashMap<String, u32> = HashMap::new();
        for (line, record) in reader.records().enumerate() {
            let record = record.with_context(|| format!("ASN ranges, line {}", line + 1))?;
            let field = |i: usize| record.get(i).map(str::trim).unwrap_or("");
            let (Some(start), Some(end)) = (address(field(0)), address(field(1))) else {
                bail!("ASN ranges, line {}: {:?} to {:?} is not a range of addresses", line + 1, field(0), field(1));
            };
            let asn: u32 = field(2).parse().with_context(|| format!("ASN ranges, line {}: bad ASN {:?}", line + 1, field(2)))?;
            let organisation = field(3);
            let next = organisations.len() as u32;
            let org = *index.entry(organisation.to_string()).or_insert_with(|| {
                organisations.push(organisation.to_string());
                next
            });
            ranges.push((start, end, asn, org));
        }
        anyhow::ensure!(!ranges.is_empty(), "no ASN ranges");
        ranges.sort_unstable();
        Ok(AsnRanges { ranges, organisations })
    }

    /// The range holding `ip` (the one with the greatest start at or below it).
    fn find(&self, ip: IpAddr) -> Option<(u32, &str)> {
        let key = key_of(ip);
        let after = self.ranges.partition_point(|(start, ..)| *start <= key);
        let (_, end, asn, org) = self.ranges.get(after.checked_sub(1)?)?;
        (key <= *end).then(|| (*asn, self.organisations[*org as usize].as_str()))
    }
}

/// An address as a number in one space: IPv4 as its IPv4-mapped IPv6 form.
fn key_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn address(text: &str) -> Option<u128> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(key_of(ip));
    }
    text.parse::<u32>().ok().map(|n| key_of(IpAddr::V4(n.into())))
}

/// The databases in force at an event's time, at most one of each kind.
#[derive(Clone, Debug, Default)]
pub struct Databases {
    /// The GeoIP database.
    pub geo: Option<Database>,
    /// The ASN database.
    pub asn: Option<Database>,
}

impl Databases {
    /// Whether any database is in force.
    pub fn is_empty(&self) -> bool {
        self.geo.is_none() && self.asn.is_none()
    }

    /// Fills what the databases know of a public address.
    pub fn fill(&self, ip: IpAddr, enrichment: &mut Enrichment) {
        for database in [&self.geo, &self.asn].into_iter().flatten() {
            database.fill(ip, enrichment);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_accept_numbers_and_refuse_nonsense() {
        let ranges = AsnRanges::parse(b"16777216,16777471,13335,\"Cloudflare, Inc.\"\n16778240,16779263,38803,Gtelecom\n").unwrap();
        assert_eq!(ranges.find("1.0.0.1".parse().unwrap()), Some((13335, "Cloudflare, Inc.")));
        assert_eq!(ranges.find("1.0.4.0".parse().unwrap()), Some((38803, "Gtelecom")));
        assert_eq!(ranges.find("1.0.1.0".parse().unwrap()), None);
        assert_eq!(ranges.find("0.0.0.1".parse().unwrap()), None);
        assert!(AsnRanges::parse(b"a,b,1,x\n").is_err());
        assert!(AsnRanges::parse(b"1.0.0.0,1.0.0.255,notanumber,x\n").is_err());
        assert!(AsnRanges::parse(b"").is_err());
    }

    #[test]
    fn a_changed_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("asn.csv");
        std::fs::write(&path, "1.0.0.0,1.0.0.255,13335,Cloudflare\n").unwrap();
        let location = path.to_str().unwrap();
        let database = Database::load(DatabaseKind::Asn, location, None).unwrap();
        let encoded = serde_json::to_string(&database).unwrap();
        assert!(!encoded.contains("Cloudflare"), "serialised by reference: {encoded}");
        drop(database);
        std::fs::write(&path, "1.0.0.0,1.0.0.255,64512,Other\n").unwrap();
        let error = serde_json::from_str::<Database>(&encoded).unwrap_err().to_string();
        assert!(error.contains("not the"), "{error}");
        assert!(Database::load(DatabaseKind::Geoip, location, None).is_err(), "a GeoIP database must be mmdb");
    }
}
