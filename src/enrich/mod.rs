//! Context for an event's source address: the class of the address (public, private, reserved…),
//! and for a public one its country, city and coordinates (a GeoIP database) and its autonomous
//! system (an ASN database).
//!
//! Audit records carry an IP address and little else; detections need the country (the
//! `countries_24h` and `new_country` features, impossible travel) and the network (hosting
//! providers, anonymisers). Only public addresses are looked up: a private, reserved or
//! unparsable address is labelled as such, never guessed.
//!
//! ```
//! use threatflow::enrich::{classify, IpClass};
//! assert_eq!(classify("10.1.2.3").0, IpClass::Private);
//! assert_eq!(classify("AWS Internal").0, IpClass::Unparsable);
//! assert_eq!(classify("8.8.8.8").0, IpClass::Public);
//! assert_eq!(classify("[2001:db8::1]:443").0, IpClass::Reserved);
//! ```
//!
//! The databases ([`database`]) are part of the control collection: which one applies to an event
//! depends on its time, like a model, so a database replaced while a job runs changes decisions
//! exactly from its `effective_from`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ordered_float::OrderedFloat;
use serde::{Deserialize, Serialize};

pub mod database;
pub mod intel;
pub mod place;

pub use database::{Database, DatabaseKind, Databases};

/// What kind of address an event's `src_ip` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpClass {
    /// A globally routed address: looked up in the databases.
    Public,
    /// A private network (RFC 1918, RFC 4193 unique local, RFC 6598 shared address space).
    Private,
    /// The host itself.
    Loopback,
    /// Link-local (RFC 3927, fe80::/10).
    LinkLocal,
    /// Anything else not routed on the internet: unspecified, multicast, broadcast,
    /// documentation, benchmarking, IETF protocol assignments, reserved ranges.
    Reserved,
    /// Not an IP address (CloudTrail's `AWS Internal`, a service name, an anonymised value).
    Unparsable,
}

impl IpClass {
    /// The class's name, as in decisions.
    pub fn as_str(self) -> &'static str {
        match self {
            IpClass::Public => "public",
            IpClass::Private => "private",
            IpClass::Loopback => "loopback",
            IpClass::LinkLocal => "link_local",
            IpClass::Reserved => "reserved",
            IpClass::Unparsable => "unparsable",
        }
    }
}

/// An address's class and, when it parses, the address (an IPv4-mapped IPv6 address as IPv4).
/// Accepts the forms logs write: plain, with a port (`1.2.3.4:443`, `[2001:db8::1]:443`),
/// surrounded by spaces.
pub fn classify(text: &str) -> (IpClass, Option<IpAddr>) {
    let Some(ip) = parse_ip(text.trim()) else {
        return (IpClass::Unparsable, None);
    };
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let class = match ip {
        IpAddr::V4(v4) => class_v4(v4),
        IpAddr::V6(v6) => class_v6(v6),
    };
    (class, Some(ip))
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    // With a port: `1.2.3.4:443` or `[v6]:443`.
    text.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
}

fn class_v4(ip: Ipv4Addr) -> IpClass {
    let [a, b, c, _] = ip.octets();
    if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        IpClass::Private
    } else if ip.is_loopback() {
        IpClass::Loopback
    } else if ip.is_link_local() {
        IpClass::LinkLocal
    } else if a == 0
        || a >= 224
        || ip.is_documentation()
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || (a == 192 && b == 88 && c == 99)
    {
        IpClass::Reserved
    } else {
        IpClass::Public
    }
}

fn class_v6(ip: Ipv6Addr) -> IpClass {
    let segments = ip.segments();
    if ip.is_loopback() {
        IpClass::Loopback
    } else if (segments[0] & 0xfe00) == 0xfc00 {
        IpClass::Private
    } else if (segments[0] & 0xffc0) == 0xfe80 {
        IpClass::LinkLocal
    } else if (segments[0] & 0xe000) == 0x2000 && !(segments[0] == 0x2001 && segments[1] == 0x0db8) && segments[0] != 0x2002 {
        // Global unicast (2000::/3), without documentation (2001:db8::/32) and 6to4 (2002::/16,
        // whose embedded IPv4 address is the real source).
        IpClass::Public
    } else {
        IpClass::Reserved
    }
}

/// What the databases say about an event's source address (see the module doc). Serialised with
/// every field (`null` when absent): events cross processes in bincode, which has no field names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Enrichment {
    /// The address's class.
    pub ip_class: IpClass,
    /// ISO 3166 alpha-2 country code (GeoIP database), upper case.
    pub country: Option<String>,
    /// City name, in English (a city database).
    pub city: Option<String>,
    /// Latitude in degrees (a city database).
    pub latitude: Option<OrderedFloat<f64>>,
    /// Longitude in degrees (a city database).
    pub longitude: Option<OrderedFloat<f64>>,
    /// Autonomous system number (ASN database).
    pub asn: Option<u32>,
    /// Autonomous system organisation (ASN database).
    pub as_org: Option<String>,
}

impl Enrichment {
    /// Enriches an address with the databases in force: its class, and for a public address
    /// what each database knows of it.
    pub fn of(src_ip: &str, databases: &Databases) -> Enrichment {
        let (ip_class, ip) = classify(src_ip);
        let mut enrichment = Enrichment { ip_class, country: None, city: None, latitude: None, longitude: None, asn: None, as_org: None };
        if let (IpClass::Public, Some(ip)) = (ip_class, ip) {
            databases.fill(ip, &mut enrichment);
        }
        enrichment
    }

    /// The value of an enriched field by name (`ip_class`, `country`, `city`, `latitude`,
    /// `longitude`, `asn`, `as_org`), as text.
    pub fn field(&self, name: &str) -> Option<String> {
        match name {
            "ip_class" => Some(self.ip_class.as_str().to_string()),
            "country" => self.country.clone(),
            "city" => self.city.clone(),
            "latitude" => self.latitude.map(|l| l.to_string()),
            "longitude" => self.longitude.map(|l| l.to_string()),
            "asn" => self.asn.map(|a| a.to_string()),
            "as_org" => self.as_org.clone(),
            _ => None,
        }
    }

    /// As a record's object (what Sigma rules read under `enrichment`).
    pub fn to_value(&self) -> sonic_rs::Value {
        sonic_rs::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        let cases = [
            ("8.8.8.8", IpClass::Public),
            ("81.2.69.160:51234", IpClass::Public),
            (" 2a00:1450:4001:80b::200e ", IpClass::Public),
            ("::ffff:8.8.8.8", IpClass::Public),
            ("10.0.0.1", IpClass::Private),
            ("172.16.5.4", IpClass::Private),
            ("192.168.1.1", IpClass::Private),
            ("100.64.0.1", IpClass::Private),
            ("fd12::1", IpClass::Private),
            ("127.0.0.1", IpClass::Loopback),
            ("::1", IpClass::Loopback),
            ("169.254.169.254", IpClass::LinkLocal),
            ("fe80::1", IpClass::LinkLocal),
            ("0.0.0.0", IpClass::Reserved),
            ("203.0.113.9", IpClass::Reserved),
            ("198.51.100.7", IpClass::Reserved),
            ("198.18.0.1", IpClass::Reserved),
            ("224.0.0.1", IpClass::Reserved),
            ("255.255.255.255", IpClass::Reserved),
            ("2001:db8::1", IpClass::Reserved),
            ("ff02::1", IpClass::Reserved),
            ("AWS Internal", IpClass::Unparsable),
            ("cloudtrail.amazonaws.com", IpClass::Unparsable),
            ("", IpClass::Unparsable),
            ("1.2.3", IpClass::Unparsable),
        ];
        for (text, class) in cases {
            assert_eq!(classify(text).0, class, "{text:?}");
        }
    }
}
