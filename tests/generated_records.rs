//! The generator's raw provider records (`threatflow run --format aws.cloudtrail`, ...): shaped
//! like the real records in `tests/data`, read back whole by the shipped mappings, and run end to
//! end with ground truth.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use threatflow::ingest::generator::{generate_all, GeneratorConfig};
use threatflow::ingest::mapping::RecordFormat;
use threatflow::ingest::provider_records::{Provider, Rendering};

mod common;
use common::{lines, ok, threatflow};

fn data(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(path)
}

/// Every key path of a record (`a.b`, array elements as `a[]`).
fn paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                out.insert(path.clone());
                paths(child, &path, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| paths(item, &format!("{prefix}[]"), out)),
        _ => {}
    }
}

/// The real records of a provider in `tests/data`.
fn real_records(provider: Provider) -> Vec<Value> {
    let panther = |file: &str| -> Vec<Value> { lines(&data(&format!("panther-analysis/rule-tests/{file}"))).into_iter().map(|t| t["log"].clone()).collect() };
    match provider {
        Provider::CloudTrail => {
            let mut records = panther("AWS_CloudTrail.jsonl");
            let dir = data("stratus-red-team/detonation-logs");
            for entry in std::fs::read_dir(dir).unwrap() {
                let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
                if let Ok(Value::Array(items)) = serde_json::from_str(&text) {
                    records.extend(items);
                }
            }
            records
        }
        Provider::Okta => panther("Okta_SystemLog.jsonl"),
        Provider::GoogleWorkspace => panther("GSuite_ActivityEvent.jsonl"),
        Provider::EntraSignIn => panther("Azure_Audit.jsonl")
            .into_iter()
            .filter(|r| r["operationName"].as_str().is_some_and(|o| o.eq_ignore_ascii_case("sign-in activity")))
            .collect(),
    }
}

fn generated() -> Vec<threatflow::event::Event> {
    let config = GeneratorConfig { users: 300, events: 30_000, partitions: 4, events_per_attack: 5_000, ..Default::default() };
    generate_all(&config).0.into_iter().flatten().collect()
}

/// Every field path of every generated record occurs in the provider's real records (the same
/// names and nesting), every action the generator has appears, and the provider's mapping reads
/// each record back as the generated event: its id, time (CloudTrail keeps whole seconds), source
/// address and user.
#[test]
fn generated_records_are_shaped_like_real_ones_and_map_back() {
    let events = generated();
    let actions: BTreeSet<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions.len(), 12, "{actions:?}");
    for provider in Provider::ALL {
        let mut real = BTreeSet::new();
        for record in real_records(provider) {
            paths(&record, "", &mut real);
        }
        assert!(real.len() > 50, "{provider:?}: {} real paths", real.len());
        let format = RecordFormat::parse(provider.mapping(), None).unwrap();
        let mut unknown = BTreeSet::new();
        let mut mapped_actions = BTreeSet::new();
        for event in &events {
            let record = provider.render(event);
            let mut own = BTreeSet::new();
            paths(&record, "", &mut own);
            unknown.extend(own.difference(&real).cloned());
            let mut decoded = Vec::new();
            format.decode(sonic_rs::to_value(&record).unwrap(), &mut decoded);
            assert_eq!(decoded.len(), 1);
            let mapped = decoded.remove(0).0.unwrap_or_else(|e| panic!("{provider:?}: {e}: {record}"));
            assert_eq!(mapped.event_id, event.event_id);
            let ts = if provider == Provider::CloudTrail { event.ts / 1000 * 1000 } else { event.ts };
            assert_eq!(mapped.ts, ts, "{provider:?}: {record}");
            assert_eq!(mapped.src_ip, event.src_ip, "{provider:?}");
            let user = if provider == Provider::CloudTrail { format!("arn:aws:iam::123456789012:user/{}", event.user) } else { event.user.to_string() };
            assert_eq!(mapped.user, user.as_str());
            mapped_actions.insert((event.action.to_string(), mapped.action.to_string()));
        }
        assert!(unknown.is_empty(), "{provider:?} writes fields real records do not have: {unknown:#?}");
        eprintln!("{provider:?}: {mapped_actions:?}");
        // What each provider can see of the activity.
        let sees = |from: &str, to: &str| mapped_actions.contains(&(from.to_string(), to.to_string()));
        assert!(sees("login", "login") && sees("login_failed", "login_failed"), "{provider:?}: {mapped_actions:?}");
        match provider {
            Provider::CloudTrail | Provider::GoogleWorkspace => {
                for action in ["download", "upload", "delete", "share_external", "permission_change", "admin_action"] {
                    assert!(sees(action, action), "{provider:?} shows {action}: {mapped_actions:?}");
                }
            }
            Provider::Okta => assert!(sees("permission_change", "permission_change") && sees("download", "login")),
            Provider::EntraSignIn => assert!(sees("download", "login")),
        }
    }
}

/// The mixed rendering (`--format auto`): each user's records come from one provider, every
/// provider has users, and automatic detection reads every record back.
#[test]
fn mixed_records_are_detected_per_provider() {
    let events = generated();
    let format = RecordFormat::parse("auto", None).unwrap();
    let rendering = Rendering::for_format(&format).unwrap().expect("auto is the mixed rendering");
    let mut sources = BTreeSet::new();
    let mut per_user: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for event in &events {
        let mut decoded = Vec::new();
        format.decode(sonic_rs::from_str(&rendering.render(event)).unwrap(), &mut decoded);
        let mapped = decoded.remove(0).0.expect("detected and mapped");
        let source = mapped.source.clone().unwrap();
        assert_eq!(source, rendering.provider(event).mapping());
        per_user.entry(event.user.to_string()).or_default().insert(source.to_string());
        sources.insert(source);
    }
    assert_eq!(sources.len(), 4, "{sources:?}");
    assert!(per_user.values().all(|s| s.len() == 1), "one provider per user");
    // A format the generator cannot write is a clear error.
    let error = Rendering::for_format(&RecordFormat::parse("github.audit", None).unwrap()).unwrap_err().to_string();
    assert!(error.contains("aws.cloudtrail") && error.contains("github.audit"), "{error}");
}

/// `threatflow run --format F` generates raw records end to end: every record is read (none
/// rejected), the quality report is there, and on CloudTrail and Google Workspace, which see
/// every action, the injected attacks are found; the run on raw records decides as a replay of
/// the same records written by `threatflow generate --format F` and read with `--format F`.
#[test]
fn run_generates_raw_records_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    for format in ["aws.cloudtrail", "okta.okta", "gcp.google_workspace", "azure.signinlogs", "auto"] {
        let out = ok(threatflow()
            .args(["run", "--format", format, "--users", "1000", "--events", "100000", "--seed", "3", "--json"])
            .output()
            .expect("spawn"));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{format}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!((report["events"].as_u64(), report["rejected"].as_u64()), (Some(100_000), Some(0)), "{format}: {report}");
        let quality = &report["quality"];
        assert!(quality.is_object(), "{format}: a quality report: {report}");
        eprintln!("{format}: {quality}");
        if matches!(format, "aws.cloudtrail" | "gcp.google_workspace") {
            let recall = quality["true_positives"].as_f64().unwrap() / quality["malicious"].as_f64().unwrap();
            assert!(recall > 0.3, "{format}: recall {recall}: {quality}");
        }
    }
    // The same records through a file.
    let records = dir.path().join("trail.jsonl");
    ok(threatflow()
        .args(["generate", "--format", "aws.cloudtrail", "--users", "300", "--events", "20000", "--partitions", "1", "--out"])
        .arg(&records)
        .output()
        .expect("spawn"));
    let written = lines(&records);
    assert_eq!(written.len(), 20_000);
    assert!(written.iter().all(|r| r["eventVersion"] == "1.08" && r["eventID"].is_string()));
    let decisions = dir.path().join("decisions.jsonl");
    let dead = dir.path().join("dead.jsonl");
    ok(threatflow()
        .args(["replay", "--format", "aws.cloudtrail", "--input"])
        .arg(&records)
        .arg("--output")
        .arg(&decisions)
        .arg("--dead-letters")
        .arg(&dead)
        .output()
        .expect("spawn"));
    assert_eq!(std::fs::read_to_string(&dead).unwrap_or_default(), "", "no dead letters");
}

/// SigmaHQ rules that fire on real CloudTrail and Okta records fire on the generated ones, on
/// exactly the records their selections match (counted here from the records `threatflow generate
/// --format F` writes for the same seed): the generated fields are the ones the rules read.
#[test]
fn sigma_rules_fire_on_generated_records_where_they_match() {
    let dir = tempfile::tempdir().unwrap();
    let text = |record: &Value, path: &str| -> String {
        path.split('.').fold(record, |value, key| &value[key]).as_str().unwrap_or("").to_lowercase()
    };
    type Selection = fn(&dyn Fn(&str) -> String) -> bool;
    let expected: [(&str, &[(&str, Selection)]); 2] = [
        (
            "aws.cloudtrail",
            &[
                // AWS Successful Console Login Without MFA
                ("77caf516-34e5-4df9-b4db-20744fea0a60", |f| f("eventName") == "consolelogin" && f("additionalEventData.MFAUsed") == "no" && f("responseElements.ConsoleLogin") == "success"),
                // AWS ConsoleLogin Failed Authentication
                ("6393e346-1977-46ef-8987-ad414a145fad", |f| f("eventName") == "consolelogin" && f("errorMessage") == "failed authentication"),
                // AWS IAM Backdoor Users Keys
                ("0a5177f4-6ca9-44c2-aacf-d3f3d8b6e4d2", |f| f("eventSource") == "iam.amazonaws.com" && f("eventName") == "createaccesskey"),
            ],
        ),
        (
            "okta.okta",
            &[
                // Okta Admin Role Assigned to an User or Group
                ("413d4a81-6c98-4479-9863-014785fd579c", |f| ["group.privilege.grant", "user.account.privilege.grant"].contains(&f("eventType").as_str())),
                // New Okta User Created
                ("b6c718dd-8f53-4b9f-98d8-93fdca966969", |f| f("eventType") == "user.lifecycle.create"),
            ],
        ),
    ];
    for (format, rules) in expected {
        let records = dir.path().join(format!("{format}.jsonl"));
        let generate = ["generate", "--format", format, "--users", "500", "--events", "50000", "--seed", "4", "--out"];
        ok(threatflow().args(generate).arg(&records).output().expect("spawn"));
        let records = lines(&records);
        let decisions = dir.path().join(format!("{format}-decisions.jsonl"));
        let sigma = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/sigma");
        let run = ["run", "--format", format, "--users", "500", "--events", "50000", "--seed", "4", "--no-default-rules", "--rules-dir", sigma, "--output"];
        ok(threatflow().args(run).arg(&decisions).output().expect("spawn"));
        let decisions = lines(&decisions);
        for (rule, selection) in rules {
            let hits = decisions.iter().filter(|d| d["rules"].as_array().unwrap().iter().any(|r| r == rule)).count();
            let matching = records.iter().filter(|record| selection(&|path: &str| text(record, path))).count();
            assert!(matching > 0, "{format}: the generated records hold matches of {rule}");
            assert_eq!(hits, matching, "{format}: {rule}");
        }
    }
}
