//! Threat-intel indicators end to end: a directory of indicators in the three formats (JSON lines,
//! a STIX 2.1 bundle, CSV) over 20,000 events with addresses, users, user agents, domains and
//! hashes, late and same-millisecond events among them. A brute-force oracle over the events and
//! the indicators gives the exact `threat` decisions (every indicator in force at the event's
//! judged time that one of its values matches) and the exact `retro` decisions (for each
//! indicator that comes into force at `T` while no other of its value is, every event judged in
//! `[T - window, T)` that matches it), which the engine must produce on 1 and 2 workers, with the
//! indicators followed (the command line) and read once (the library).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{json, Value};

mod common;
use common::{lines, ok, random, threatflow};

const T0: u64 = 1_767_571_200_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;
const WINDOW: u64 = DAY;

/// An indicator as the test defines it: what the files say, in the oracle's terms.
#[derive(Clone, Debug)]
struct Defined {
    id: String,
    kind: &'static str,
    /// Normalised as the engine normalises it.
    value: String,
    /// In force during `[from, until)`.
    from: u64,
    until: u64,
}

/// 20,000 events in file order (one partition): times mostly rising, same-millisecond runs, and
/// one event in 50 sent late (up to a minute behind).
fn events() -> Vec<Value> {
    let mut rng = random(11);
    let mut next = |n: u64| rng.next().unwrap() % n;
    let agents = ["Mozilla/5.0 (X11; Linux x86_64)", "curl/8.0", "python-requests/2.32", "MailApp/16.0 (iOS 18.1)"];
    let domains = ["a.evil.example", "Evil.example", "good.example", "x.b.bad.test", "files.corp.test"];
    let hashes = ["AB12CD", "ab12cd", "ffee01", "0011aa"];
    let mut ts = T0;
    let mut out = Vec::new();
    for i in 0..20_000u64 {
        if next(10) != 0 {
            ts += next(40_000);
        }
        let sent = if next(50) == 0 { ts.saturating_sub(10_000 + next(50_000)) } else { ts };
        let user = match next(200) {
            7 if next(3) == 0 => "U7@Example.com".to_string(),
            n => format!("u{n}@example.com"),
        };
        let ip = match next(10) {
            0 => format!("2001:db8::{:x}", next(512)),
            1 => "AWS Internal".to_string(),
            _ => format!("198.51.{}.{}", next(4), next(12)),
        };
        let mut e = json!({"event_id": format!("e{i}"), "ts": sent, "user": user, "action": "download", "src_ip": ip, "user_agent": agents[next(4) as usize]});
        match next(10) {
            0..=2 => e["domain"] = json!(domains[next(5) as usize]),
            3 => e["resource"] = json!("https://cdn.Evil.example:8443/x.js"),
            4 => e["sha256"] = json!(hashes[next(4) as usize]),
            _ => {}
        }
        out.push(e);
    }
    out
}

/// Writes the indicator files into `dir`; returns the indicators as the oracle sees them.
fn indicators(dir: &Path) -> Vec<Defined> {
    std::fs::create_dir_all(dir).unwrap();
    let at = |days: f64| T0 + (days * DAY as f64) as u64;
    let jsonl = [
        json!({"id": "ip-early", "type": "ip", "value": "198.51.1.7", "source": "feed-a", "confidence": 80}),
        json!({"id": "net", "type": "cidr", "value": "198.51.2.200/24", "source": "feed-a", "confidence": 60, "effective_from": at(2.0), "expires": at(3.0)}),
        json!({"id": "net6", "type": "ipv6", "value": "2001:DB8::/120", "source": "feed-a", "effective_from": at(1.5)}),
        json!({"id": "user7", "type": "user", "value": "u7@example.com", "confidence": 95, "effective_from": at(1.0)}),
        json!({"id": "user7", "remove": true, "effective_from": at(2.0)}),
        json!({"id": "user7-again", "type": "email", "value": "U7@example.com", "source": "feed-b", "effective_from": at(2.5)}),
        json!({"id": "curl", "type": "user_agent", "value": "curl/8.0", "confidence": 20, "effective_from": format_time(at(2.2))}),
        json!({"id": "evil", "type": "domain", "value": "*.evil.example", "confidence": 90, "effective_from": at(3.0)}),
        json!({"id": "ip-early-b", "type": "ip", "value": "198.51.1.7", "source": "feed-b", "effective_from": at(2.0)}),
    ];
    let text: String = jsonl.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(dir.join("feed.jsonl"), format!("# indicators\n{text}")).unwrap();
    let stix = json!({"type": "bundle", "id": "bundle--1", "objects": [
        {"type": "identity", "id": "identity--cert", "name": "CERT"},
        {"type": "indicator", "id": "indicator--two", "created_by_ref": "identity--cert", "pattern_type": "stix", "confidence": 70,
         "pattern": "[ipv4-addr:value = '198.51.3.9'] OR [domain-name:value = 'bad.test']",
         "valid_from": format_time(at(1.2)), "valid_until": format_time(at(4.0))},
        {"type": "indicator", "id": "indicator--revoked", "pattern_type": "stix", "revoked": true,
         "pattern": "[ipv4-addr:value = '198.51.0.1']", "valid_from": format_time(at(0.5))},
        {"type": "indicator", "id": "indicator--and", "pattern_type": "stix",
         "pattern": "[ipv4-addr:value = '198.51.0.2' AND domain-name:value = 'good.example']", "valid_from": format_time(at(0.5))},
    ]});
    std::fs::write(dir.join("cert.json"), serde_json::to_string_pretty(&stix).unwrap()).unwrap();
    std::fs::write(dir.join("hashes.csv"), format!("type,value,confidence,effective_from\nsha256,AB12CD,40,{}\nnot-a-type,x,1,0\n", at(0.8))).unwrap();
    let d = |id: &str, kind, value: &str, from, until| Defined { id: id.into(), kind, value: value.into(), from, until };
    vec![
        d("ip-early", "ip", "198.51.1.7", 0, u64::MAX),
        d("net", "ip", "198.51.2.0/24", at(2.0), at(3.0)),
        d("net6", "ip", "2001:db8::/120", at(1.5), u64::MAX),
        d("user7", "user", "u7@example.com", at(1.0), at(2.0)),
        d("user7-again", "user", "u7@example.com", at(2.5), u64::MAX),
        d("curl", "user_agent", "curl/8.0", at(2.2), u64::MAX),
        d("evil", "domain", "evil.example", at(3.0), u64::MAX),
        d("ip-early-b", "ip", "198.51.1.7", at(2.0), u64::MAX),
        d("indicator--two#0", "ip", "198.51.3.9", at(1.2), at(4.0)),
        d("indicator--two#1", "domain", "bad.test", at(1.2), at(4.0)),
        d("hashes:hash:AB12CD", "hash", "ab12cd", at(0.8), u64::MAX),
    ]
}

fn format_time(ms: u64) -> String {
    let seconds = (ms / 1000) as i64;
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rest / 3600, rest % 3600 / 60, rest % 60, ms % 1000)
}

/// Whether `indicator` matches the event `e`, by the oracle's own reading of the rules.
fn matches(indicator: &Defined, e: &Value) -> bool {
    let text = |f: &str| e.get(f).and_then(Value::as_str).map(str::to_string);
    match indicator.kind {
        "ip" => {
            let Some(address) = text("src_ip").and_then(|ip| ip.parse::<std::net::IpAddr>().ok()) else { return false };
            let (network, prefix) = indicator.value.split_once('/').map_or((indicator.value.as_str(), None), |(n, p)| (n, Some(p)));
            let network: std::net::IpAddr = network.parse().unwrap();
            let bits = |a: std::net::IpAddr| match a {
                std::net::IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32u32),
                std::net::IpAddr::V6(v6) => (u128::from(v6), 128u32),
            };
            let ((a, width), (n, width_n)) = (bits(address), bits(network));
            let prefix = prefix.map_or(width, |p| p.parse().unwrap());
            width == width_n && (prefix == 0 || (a >> (width - prefix)) == (n >> (width - prefix)))
        }
        "user" => text("user").is_some_and(|u| u.to_lowercase() == indicator.value),
        "user_agent" => text("user_agent").is_some_and(|u| u == indicator.value),
        "hash" => text("sha256").is_some_and(|h| h.to_lowercase() == indicator.value),
        "domain" => {
            let mut names = Vec::new();
            names.extend(text("domain"));
            names.extend(text("resource").map(|r| r.split("://").nth(1).unwrap().split([':', '/']).next().unwrap().to_string()));
            names.iter().map(|n| n.to_lowercase()).any(|n| n == indicator.value || n.ends_with(&format!(".{}", indicator.value)))
        }
        other => unreachable!("{other}"),
    }
}

/// What the engine must decide: per event id, the live hits; per `(event id, T)`, the retro hits.
/// Per event id, the indicators it matched live.
type Live = BTreeMap<String, BTreeSet<String>>;
/// Per `(event id, T)`, the indicators that retro-matched it at `T`.
type Retro = BTreeMap<(String, u64), BTreeSet<String>>;

fn oracle(events: &[Value], defined: &[Defined]) -> (Live, Retro) {
    // Judged times: late events at the watermark, 5 s (the allowed lateness) behind the newest.
    let mut newest = 0u64;
    let judged: Vec<u64> = events
        .iter()
        .map(|e| {
            let ts = e["ts"].as_u64().unwrap();
            let at = ts.max(newest.saturating_sub(5_000));
            newest = newest.max(ts);
            at
        })
        .collect();
    let mut live = Live::new();
    for (e, at) in events.iter().zip(&judged) {
        for i in defined.iter().filter(|i| (i.from..i.until).contains(at) && matches(i, e)) {
            live.entry(e["event_id"].as_str().unwrap().to_string()).or_default().insert(i.id.clone());
        }
    }
    let mut retro = Retro::new();
    for i in defined {
        let start = i.from;
        let already = defined.iter().any(|o| o.kind == i.kind && o.value == i.value && start > 0 && (o.from..o.until).contains(&(start - 1)));
        if already {
            continue;
        }
        for (e, at) in events.iter().zip(&judged) {
            if (start.saturating_sub(WINDOW)..start).contains(at) && matches(i, e) {
                retro.entry((e["event_id"].as_str().unwrap().to_string(), start)).or_default().insert(i.id.clone());
            }
        }
    }
    (live, retro)
}

/// The engine's live and retro hits from its decisions (and checks each decision's shape).
fn found(decisions: &[Value]) -> (Live, Retro) {
    let ids = |d: &Value| d["intel"].as_array().unwrap().iter().map(|h| h["indicator"].as_str().unwrap().to_string()).collect::<BTreeSet<_>>();
    let mut live = BTreeMap::new();
    let mut retro = BTreeMap::new();
    for d in decisions {
        let event = d["event_id"].as_str().unwrap().to_string();
        match d["verdict"].as_str().unwrap() {
            "threat" => assert!(live.insert(event, ids(d)).is_none(), "one decision per event"),
            "retro" => {
                assert!(d["event_ts"].as_u64().unwrap() < d["ts"].as_u64().unwrap(), "a retro decision names an earlier event");
                assert_eq!(d["actions"], json!(["alert"]));
                assert!(retro.insert((event, d["ts"].as_u64().unwrap()), ids(d)).is_none(), "one retro decision per event and time");
            }
            other => panic!("unexpected verdict {other}"),
        }
    }
    (live, retro)
}

/// Fails with the first differences of two maps (they are large).
fn same<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(got: &BTreeMap<K, V>, expected: &BTreeMap<K, V>, what: &str) {
    let keys: BTreeSet<&K> = got.keys().chain(expected.keys()).collect();
    let differing: Vec<String> = keys
        .into_iter()
        .filter(|k| got.get(k) != expected.get(k))
        .take(8)
        .map(|k| format!("{k:?}: got {:?}, expected {:?}", got.get(k), expected.get(k)))
        .collect();
    assert!(differing.is_empty(), "{what}: {} vs {} entries; first differences:\n{}", got.len(), expected.len(), differing.join("\n"));
}

/// The events and the indicators written into `dir` (`events.jsonl`, `intel/`): the events' file,
/// the indicators as the oracle sees them, and the oracle's hits.
fn fixture(dir: &Path) -> (std::path::PathBuf, Vec<Defined>, Live, Retro) {
    let events = events();
    let path = dir.join("events.jsonl");
    std::fs::write(&path, events.iter().map(|e| format!("{e}\n")).collect::<String>()).unwrap();
    let defined = indicators(&dir.join("intel"));
    let (live, retro) = oracle(&events, &defined);
    (path, defined, live, retro)
}

#[test]
fn indicators_decide_live_and_retro_exactly_as_the_oracle_on_1_and_2_workers() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (input, defined, live, retro) = fixture(dir);
    // The test shows something: live and retro hits of every kind, and a value indicated twice.
    let kinds = |ids: &mut dyn Iterator<Item = &String>| ids.map(|id| defined.iter().find(|d| d.id == *id).unwrap().kind).collect::<BTreeSet<_>>();
    assert_eq!(kinds(&mut live.values().flatten()).len(), 5, "live hits of every kind");
    assert_eq!(kinds(&mut retro.values().flatten()).len(), 5, "retro hits of every kind");
    assert!(retro.keys().any(|(_, t)| *t == T0 + 5 * DAY / 2), "user7-again retro-matches: its value was out of force before");
    assert!(!retro.values().flatten().any(|id| id == "ip-early-b"), "a value already indicated is not retro-matched again");
    eprintln!("oracle: {} live, {} retro", live.len(), retro.len());

    for workers in ["1", "2"] {
        let out = dir.join(format!("decisions-{workers}.jsonl"));
        let output = ok(threatflow()
            .args(["replay", "--input"])
            .arg(&input)
            .arg("--intel")
            .arg(dir.join("intel"))
            .args(["--retro-window", "1d", "-w", workers, "--output"])
            .arg(&out)
            .env("NO_COLOR", "1")
            .output()
            .expect("spawn"));
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(log.contains("indicator--and") && log.contains("not-a-type"), "refused indicators are reported: {log}");
        let decisions = lines(&out);
        let (got_live, got_retro) = found(&decisions);
        same(&got_live, &live, &format!("{workers} workers: live hits"));
        same(&got_retro, &retro, &format!("{workers} workers: retro hits"));
        // Severity follows the highest confidence: the domain indicator says 90.
        let evil = decisions.iter().find(|d| d["verdict"] == "threat" && d["intel"].to_string().contains("\"evil\"")).unwrap();
        assert_eq!(evil["severity"], "critical");
    }

    // Read once at start (the library, not following): the index is made once, same answers.
    use threatflow::control::ControlSpec;
    use threatflow::job::{JobSpec, SourceSpec};
    for workers in [1, 2] {
        let mut job = JobSpec::new("threat", SourceSpec::Files(vec![input.clone()]));
        job.control = ControlSpec { intel: vec![dir.join("intel")], ..Default::default() };
        job.retro_window = WINDOW;
        job.collect = true;
        let report = threatflow::engine::run(timely::Config::process(workers), job).unwrap();
        let decisions: Vec<Value> = report.collected_decisions.iter().map(|d| serde_json::to_value(d).unwrap()).collect();
        let (got_live, got_retro) = found(&decisions);
        same(&got_live, &live, &format!("library, {workers} workers: live hits"));
        same(&got_retro, &retro, &format!("library, {workers} workers: retro hits"));
    }
}

#[test]
fn without_a_retro_window_only_live_events_are_decided() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (input, _, live, _) = fixture(dir);
    let out = dir.join("decisions.jsonl");
    ok(threatflow()
        .args(["replay", "--input"])
        .arg(&input)
        .arg("--intel")
        .arg(dir.join("intel"))
        .args(["--retro-window", "0s", "--output"])
        .arg(&out)
        .output()
        .expect("spawn"));
    let (got_live, got_retro) = found(&lines(&out));
    same(&got_live, &live, "live hits");
    assert!(got_retro.is_empty());
}

/// `threatflow intel check` reads the files as a job does: the indicators by kind per file, and
/// each refusal with its file and line (a failure when there is one).
#[test]
fn intel_check_reports_each_file_and_each_refusal() {
    let dir = tempfile::tempdir().unwrap();
    indicators(&dir.path().join("intel"));
    let output = threatflow().args(["intel", "check"]).arg(dir.path().join("intel")).output().expect("spawn");
    assert!(!output.status.success(), "refused records fail the check");
    let reports: BTreeMap<String, Value> = common::parse_lines(&String::from_utf8_lossy(&output.stdout))
        .into_iter()
        .map(|r| (Path::new(r["file"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned(), r))
        .collect();
    assert_eq!(reports["feed.jsonl"]["indicators"], json!({"domain": 1, "ip": 4, "user": 2, "user_agent": 1}));
    assert_eq!(reports["feed.jsonl"]["removals"], 1);
    assert_eq!(reports["cert.json"]["indicators"], json!({"domain": 1, "ip": 1}));
    assert_eq!(reports["cert.json"]["removals"], 1, "the revoked indicator");
    assert!(reports["cert.json"]["refused"][0].as_str().unwrap().contains("indicator--and"));
    assert_eq!(reports["hashes.csv"]["indicators"], json!({"hash": 1}));
    assert!(reports["hashes.csv"]["refused"][0].as_str().unwrap().contains("hashes.csv:3"));
    // A clean file passes.
    std::fs::remove_file(dir.path().join("intel/hashes.csv")).unwrap();
    std::fs::remove_file(dir.path().join("intel/cert.json")).unwrap();
    ok(threatflow().args(["intel", "check"]).arg(dir.path().join("intel")).output().expect("spawn"));
}
