//! GeoIP/ASN enrichment against the pinned databases of `scripts/geo` (which `scripts/test`
//! fetches): answers compared with MaxMind's own reader and a plain range search
//! (`tests/oracles/geo_reference.py`), real CloudTrail records filled for every public address,
//! the generator's countries found again from its addresses alone, and a database replaced
//! mid-stream applying exactly from its `effective_from` on one and two workers.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use threatflow::detect::enrichment::enrich;
use threatflow::enrich::{Database, DatabaseKind, Databases, Enrichment, IpClass};
use threatflow::ingest::generator::country_networks;
use threatflow::ingest::mapping::RecordFormat;

mod common;
use common::{lines, ok, threatflow};

/// The pinned databases: `$THREATFLOW_GEO_DIR` or `scripts/geo dir`'s default.
fn geo_dir() -> PathBuf {
    let dir = std::env::var_os("THREATFLOW_GEO_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
        let cache = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".cache"));
        cache.join("threatflow/geo/2.3.2026061719")
    });
    assert!(dir.join("country.mmdb").is_file() && dir.join("asn.csv").is_file(), "no databases in {}: run scripts/geo fetch (scripts/test does)", dir.display());
    dir
}

fn pinned() -> Databases {
    let dir = geo_dir();
    let load = |kind, file: &str| Some(Database::load(kind, dir.join(file).to_str().unwrap(), None).unwrap());
    Databases { geo: load(DatabaseKind::Geoip, "country.mmdb"), asn: load(DatabaseKind::Asn, "asn.csv") }
}

fn data(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(path)
}

/// The real CloudTrail records in `tests/data`: Panther's, Stratus Red Team's and OTRF's.
fn real_cloudtrail() -> Vec<Value> {
    let mut records: Vec<Value> = lines(&data("panther-analysis/rule-tests/AWS_CloudTrail.jsonl")).into_iter().map(|t| t["log"].clone()).collect();
    for entry in std::fs::read_dir(data("stratus-red-team/detonation-logs")).unwrap() {
        if let Ok(Value::Array(items)) = serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()) {
            records.extend(items);
        }
    }
    records.extend(lines(&data("otrf-security-datasets/aws/ec2_proxy_s3_exfiltration.jsonl")));
    records
}

/// What the reference says about each address.
fn reference(addresses: &[String]) -> BTreeMap<String, Value> {
    let dir = geo_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracles/geo_reference.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(dir.join("country.mmdb"))
        .arg(dir.join("asn.csv"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/test installs its maxminddb package)");
    let mut stdin = child.stdin.take().unwrap();
    let input = addresses.join("\n") + "\n";
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(output.status.success(), "the reference failed (is maxminddb installed? scripts/test installs it)");
    let answers: BTreeMap<String, Value> = String::from_utf8(output.stdout).unwrap().lines().map(|l| {
        let v: Value = serde_json::from_str(l).unwrap();
        (v["ip"].as_str().unwrap().to_string(), v)
    }).collect();
    assert_eq!(answers.len(), addresses.iter().collect::<std::collections::BTreeSet<_>>().len());
    answers
}

/// Every address of the real CloudTrail records and of the generator's networks, with edge cases:
/// a public address gets exactly the reference's country, ASN and organisation; any other gets
/// nothing; and no address the reference calls globally routed is classed otherwise (nor the
/// reverse, but for the shared address space, which we class private like RFC 1918).
#[test]
fn enrichment_agrees_with_maxminds_reader() {
    let databases = pinned();
    let mut addresses: Vec<String> = real_cloudtrail().iter().filter_map(|r| r["sourceIPAddress"].as_str().map(str::to_string)).collect();
    let mut seed = common::random(7);
    for (_, network, len) in country_networks() {
        let base = u32::from(network);
        for _ in 0..20 {
            let offset = (seed.next().unwrap() as u32) % (1 << (32 - len));
            addresses.push(std::net::Ipv4Addr::from(base + offset).to_string());
        }
    }
    addresses.extend(
        ["8.8.8.8", "1.1.1.1", "2a00:1450:4001:80b::200e", "2600:1f18::1", "10.1.2.3", "100.64.3.4", "127.0.0.1", "169.254.169.254", "203.0.113.9", "fd00::1", "::1", "AWS Internal", "ec2.amazonaws.com"]
            .map(String::from),
    );
    addresses.sort();
    addresses.dedup();
    let answers = reference(&addresses);
    let mut public = 0;
    for address in &addresses {
        let ours = Enrichment::of(address, &databases);
        let theirs = &answers[address];
        if ours.ip_class == IpClass::Public {
            public += 1;
            assert_eq!(ours.country.as_deref(), theirs["country"].as_str(), "{address}");
            assert_eq!(ours.asn.map(u64::from), theirs["asn"].as_u64(), "{address}");
            assert_eq!(ours.as_org.as_deref(), theirs["as_org"].as_str(), "{address}");
        } else {
            assert_eq!((ours.country, ours.asn, ours.as_org), (None, None, None), "{address}: nothing is guessed for a {:?} address", ours.ip_class);
        }
        let shared = address.starts_with("100.64.");
        if !shared {
            assert_eq!(ours.ip_class == IpClass::Public, theirs["global"] == true, "{address}: {:?}", ours.ip_class);
        }
    }
    assert!(public > 500, "{public} public addresses compared");
}

/// Every real CloudTrail record with a public `sourceIPAddress`, mapped and enriched, has a
/// country, and an ASN unless no autonomous system announces the address; the others are
/// labelled, never placed.
#[test]
fn real_cloudtrail_records_get_a_country_and_an_asn_for_every_public_address() {
    let databases = pinned();
    let format = RecordFormat::parse("aws.cloudtrail", None).unwrap();
    let mut classes: BTreeMap<IpClass, usize> = BTreeMap::new();
    let mut without_asn = std::collections::BTreeSet::new();
    for record in real_cloudtrail() {
        let mut decoded = Vec::new();
        format.decode(sonic_rs::to_value(&record).unwrap(), &mut decoded);
        let Some(Ok(event)) = decoded.pop().map(|d| d.0) else { continue };
        let Some(_) = event.src_ip.as_ref() else { continue };
        let event = enrich(event, &databases);
        let enrichment = event.enrichment.clone().expect("an event with a src_ip is enriched");
        *classes.entry(enrichment.ip_class).or_default() += 1;
        if enrichment.ip_class == IpClass::Public {
            assert!(enrichment.country.is_some(), "{enrichment:?} for {}", record["sourceIPAddress"]);
            if enrichment.asn.is_none() {
                without_asn.insert(record["sourceIPAddress"].as_str().unwrap_or_default().to_string());
            }
            assert_eq!(event.country.as_deref(), enrichment.country.as_deref(), "the event takes the database's country");
            // Sigma rules read it from the record.
            assert_eq!(event.extra.get("enrichment").and_then(|e| sonic_rs::JsonValueTrait::get(e, "asn")).and_then(sonic_rs::JsonValueTrait::as_u64), enrichment.asn.map(u64::from));
        } else {
            assert!(enrichment.country.is_none() && enrichment.asn.is_none());
        }
    }
    eprintln!("address classes of the real CloudTrail records: {classes:?}");
    // In no announced range (the reference range search finds none either: the test above
    // compares every one of these addresses): placeholders and anonymised addresses.
    assert_eq!(without_asn.into_iter().collect::<Vec<_>>(), ["1.2.3.4", "206.90.1.223", "209.209.254.254", "88.223.251.255"]);
    assert!(classes[&IpClass::Public] >= 300, "{classes:?}");
    assert!(classes[&IpClass::Unparsable] >= 10, "service names such as `AWS Internal`: {classes:?}");
}

/// The generator's networks lie in the countries it says: a GeoIP database finds every generated
/// event's country again from its address alone.
#[test]
fn the_generators_networks_lie_in_their_countries() {
    let databases = pinned();
    for (country, network, len) in country_networks() {
        let last = std::net::Ipv4Addr::from(u32::from(network) + (1 << (32 - len)) - 1);
        for address in [network, last] {
            assert_eq!(Enrichment::of(&address.to_string(), &databases).country.as_deref(), Some(country), "{address}");
        }
    }
}

/// Raw CloudTrail records carry no country; enriched, they decide with exactly the country and
/// travel features of the canonical events they were rendered from (the generator's ground truth).
#[test]
fn enriched_cloudtrail_records_have_the_canonical_country_features() {
    let dir = geo_dir();
    let out = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &[&str]| -> BTreeMap<String, Value> {
        let path = out.path().join(name);
        let mut command = threatflow();
        command.args(["run", "--users", "500", "--events", "60000", "-w", "2", "--output"]).arg(&path).args(extra);
        ok(command.output().unwrap());
        lines(&path).into_iter().map(|d| (d["event_id"].as_str().unwrap().to_string(), d)).collect()
    };
    let geoip = dir.join("country.mmdb");
    let canonical = run("canonical.jsonl", &[]);
    let blind = run("blind.jsonl", &["--format", "aws.cloudtrail"]);
    let enriched = run("enriched.jsonl", &["--format", "aws.cloudtrail", "--geoip-db", geoip.to_str().unwrap()]);
    let country_features = |d: &Value| (d["features"]["countries_24h"].clone(), d["features"]["new_country"].clone());
    let speed = |d: &Value| d["features"]["travel_speed_kmh"].as_u64().unwrap();
    let mut compared = 0;
    for (id, decision) in &enriched {
        if let Some(reference) = canonical.get(id) {
            assert_eq!(country_features(decision), country_features(reference), "{id}");
            // CloudTrail's `eventTime` has whole seconds: the elapsed time, and so the speed,
            // may differ from the canonical event's by a second's worth.
            let (expected, actual) = (speed(reference), speed(decision));
            assert!((expected == 0) == (actual == 0) && expected.abs_diff(actual) <= expected / 100 + 1, "{id}: {actual} km/h, not {expected}");
            compared += 1;
        }
        assert_eq!(decision["enrichment"]["ip_class"], "public", "{decision}");
    }
    assert!(compared * 10 >= canonical.len() * 9, "{compared} of {} canonical decisions compared", canonical.len());
    assert!(blind.values().all(|d| d["features"]["countries_24h"] == 0 && d["enrichment"].is_null()), "without a database, CloudTrail has no country");
}

/// The shipped `impossible-travel` rule (a login faster than 1,000 km/h from the previous one)
/// finds every impossible-travel attack of the generator in raw CloudTrail records once they are
/// enriched, and none without a database; besides the attacks it flags little more than the
/// victims' own return logins. A model that never flags leaves the rule alone in the report.
#[test]
fn the_impossible_travel_rule_finds_every_attack_in_enriched_raw_records() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/default.json")).unwrap();
    let shipped: Vec<Value> = serde_json::from_str(&shipped).unwrap();
    let rule = shipped.into_iter().find(|r| r["id"] == "impossible-travel").unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(&rules, serde_json::to_string(&[rule]).unwrap()).unwrap();
    let silent = dir.path().join("silent.json");
    std::fs::write(&silent, r#"{"version": "silent", "features": ["failed_logins_5m"], "weights": [0.0], "bias": -50.0, "threshold": 0.5}"#).unwrap();
    let report = |extra: &[&str]| -> Value {
        let mut command = threatflow();
        command.args(["run", "--users", "5000", "--events", "1000000", "-w", "2", "--format", "aws.cloudtrail", "--json", "--no-default-rules"]);
        command.arg("--model").arg(&silent).arg("--rules").arg(&rules).args(extra);
        serde_json::from_slice(&ok(command.output().unwrap()).stdout).unwrap()
    };
    let geoip = geo_dir().join("country.mmdb");
    let enriched = report(&["--geoip-db", geoip.to_str().unwrap()]);
    let travel = &enriched["quality"]["scenarios"]["impossible_travel"];
    let instances = travel["instances"].as_u64().unwrap();
    assert!(instances >= 3, "{enriched}");
    assert_eq!((travel["instances_detected"].as_u64(), travel["flagged"].as_u64()), (Some(instances), Some(instances)), "{enriched}");
    assert!(enriched["decisions"].as_u64().unwrap() <= 3 * instances, "{enriched}");
    let blind = report(&[]);
    assert_eq!(blind["decisions"], 0, "without a database there is no place: {blind}");
}

/// A database replaced by an update applies from its `effective_from`, the same on one and two
/// workers; an update whose bytes do not match its digest is refused and the old one stays.
#[test]
fn a_database_replaced_mid_stream_applies_from_its_effective_from() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.csv");
    let new = dir.path().join("new.csv");
    std::fs::write(&old, "2.28.0.0,2.28.255.255,64500,Old Networks\n").unwrap();
    std::fs::write(&new, "2.28.0.0,2.28.255.255,64501,New Networks\n").unwrap();
    let sha = |path: &Path| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
    };
    let updates = dir.path().join("updates.jsonl");
    let switch = 1_767_600_050_000u64;
    std::fs::write(
        &updates,
        format!(
            "{}\n{}\n",
            serde_json::json!({"database": "asn", "uri": "new.csv", "sha256": sha(&new), "effective_from": switch}),
            serde_json::json!({"database": "asn", "uri": "new.csv", "sha256": "00", "effective_from": switch + 20_000}),
        ),
    )
    .unwrap();
    let events = dir.path().join("events.jsonl");
    let mut text = String::new();
    for i in 0..100u64 {
        let ts = 1_767_600_000_000 + i * 1_000;
        text += &format!("{{\"event_id\":\"e{i}\",\"ts\":{ts},\"user\":\"u{}\",\"action\":\"login\",\"src_ip\":\"2.28.{i}.1\"}}\n", i % 7);
    }
    std::fs::write(&events, text).unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(&rules, r#"[{"id": "every-login", "when": {"action": ["login"]}}]"#).unwrap();
    let mut seen = Vec::new();
    for workers in ["1", "2"] {
        let output = dir.path().join(format!("decisions-{workers}.jsonl"));
        let mut command = threatflow();
        command.args(["replay", "-w", workers, "--input"]).arg(&events).arg("--rules").arg(&rules).arg("--asn-db").arg(&old);
        command.arg("--asn-db-sha256").arg(sha(&old)).arg("--model-updates").arg(&updates).arg("--output").arg(&output);
        ok(command.output().unwrap());
        let mut asns: Vec<(u64, u64)> = lines(&output).iter().map(|d| (d["ts"].as_u64().unwrap(), d["enrichment"]["asn"].as_u64().unwrap())).collect();
        asns.sort();
        assert_eq!(asns.len(), 100);
        for (ts, asn) in &asns {
            assert_eq!(*asn, if *ts < switch { 64500 } else { 64501 }, "at {ts}");
        }
        seen.push(asns);
    }
    assert_eq!(seen[0], seen[1], "the same on one and two workers");
    // A database whose digest differs from the one given is refused at start.
    let mut command = threatflow();
    command.args(["replay", "--input"]).arg(&events).arg("--output").arg(dir.path().join("refused.jsonl"));
    command.arg("--asn-db").arg(&old).arg("--asn-db-sha256").arg(sha(&new));
    let output = command.output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not the"), "{}", String::from_utf8_lossy(&output.stderr));
}
