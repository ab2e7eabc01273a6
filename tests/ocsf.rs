//! `--alerts-format ocsf`: every alert as an OCSF 1.8.0 Detection Finding, valid for an independent
//! validator (the OCSF schema's data compiled to a strict JSON Schema, checked with Python's
//! jsonschema: `tests/ocsf/validate.py`, installed by `scripts/test`), and carrying what the JSON
//! alert of the same run says: the decision, severity, user, source endpoint with its enrichment,
//! the rules, the model's score and contributions, the indicators.

use std::path::Path;
use std::process::Command;

mod common;
use common::{lines, ok, threatflow};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs the OCSF validator on `file`; its exit status and report.
fn validate(file: &Path) -> (bool, String) {
    let output = Command::new("python3")
        .arg(format!("{ROOT}/tests/ocsf/validate.py"))
        .arg(file)
        .args(["--version", "1.8.0"])
        .output()
        .expect("python3 (scripts/test installs it)");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!report.contains("ModuleNotFoundError"), "the OCSF validator is not installed: run scripts/test\n{report}");
    (output.status.success(), report)
}

#[test]
fn alerts_as_ocsf_detection_findings_validate_and_say_what_the_json_alerts_say() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    ok(threatflow()
        .args(["generate", "--users", "2000", "--events", "100000", "--seed", "3", "--out"])
        .arg(&events)
        .output()
        .expect("spawn"));
    // An ASN database for the generator's networks (enrichment), and an indicator for the most
    // common address (intel hits).
    let asn: String = threatflow::ingest::generator::country_networks()
        .iter()
        .enumerate()
        .map(|(i, (country, network, len))| {
            let last = std::net::Ipv4Addr::from(u32::from(*network) + (1 << (32 - len)) - 1);
            format!("{network},{last},{},{country} networks\n", 64_500 + i)
        })
        .collect();
    std::fs::write(dir.path().join("asn.csv"), asn).unwrap();
    let mut by_ip: std::collections::BTreeMap<String, usize> = Default::default();
    for event in lines(&events) {
        *by_ip.entry(event["src_ip"].as_str().unwrap_or_default().to_string()).or_default() += 1;
    }
    let common = by_ip.iter().max_by_key(|(_, n)| **n).map(|(ip, _)| ip.clone()).unwrap();
    std::fs::write(dir.path().join("intel.jsonl"), format!("{}\n", serde_json::json!({"type": "ip", "value": common, "confidence": 90}))).unwrap();

    let run = |format: &str| {
        let alerts = dir.path().join(format!("alerts-{format}.jsonl"));
        ok(threatflow()
            .arg("replay")
            .arg("--input")
            .arg(&events)
            .args(["--model", &format!("{ROOT}/models/default.json"), "--rules", &format!("{ROOT}/rules/default.json")])
            .arg("--asn-db")
            .arg(dir.path().join("asn.csv"))
            .arg("--intel")
            .arg(dir.path().join("intel.jsonl"))
            .arg("--output")
            .arg(dir.path().join(format!("decisions-{format}.jsonl")))
            .arg("--alerts")
            .arg(&alerts)
            .args(["--alerts-format", format])
            .output()
            .expect("spawn"));
        alerts
    };
    let (json, ocsf) = (lines(&run("json")), run("ocsf"));

    let (valid, report) = validate(&ocsf);
    assert!(valid, "{report}");
    let findings = lines(&ocsf);
    assert_eq!(findings.len(), json.len());
    assert!(json.len() > 100, "{} alerts", json.len());
    let severities = [("informational", 1), ("low", 2), ("medium", 3), ("high", 4), ("critical", 5)];
    let (mut enriched, mut indicated, mut modelled) = (0, 0, 0);
    for (alert, finding) in json.iter().zip(&findings) {
        assert_eq!(finding["finding_info"]["uid"], alert["decision_id"]);
        assert_eq!(finding["metadata"]["uid"], alert["decision_id"]);
        assert_eq!(finding["time"], alert["ts"]);
        let severity = severities.iter().find(|(name, _)| alert["severity"] == *name).unwrap().1;
        assert_eq!(finding["severity_id"], severity, "{finding}");
        let evidence = &finding["evidences"][0];
        assert_eq!(evidence["actor"]["user"]["name"], alert["user"]);
        assert_eq!(evidence["uid"], alert["event_id"]);
        assert_eq!(evidence["src_endpoint"]["ip"], alert["src_ip"]);
        assert_eq!(finding["unmapped"]["verdict"], alert["verdict"]);
        let rules: Vec<&serde_json::Value> = alert["rules"].as_array().unwrap().iter().collect();
        let analytics: Vec<&serde_json::Value> =
            std::iter::once(&finding["finding_info"]["analytic"]).chain(finding["finding_info"]["related_analytics"].as_array().into_iter().flatten()).collect();
        for (rule, analytic) in rules.iter().zip(&analytics) {
            assert_eq!(&&analytic["uid"], rule);
        }
        if let Some(score) = alert["score"].as_f64() {
            assert_eq!(finding["unmapped"]["score"].as_f64(), Some(score));
            // (Left out when empty, as every empty value is.)
            let contributions = finding["unmapped"].get("contributions").cloned().unwrap_or_else(|| serde_json::json!([]));
            assert_eq!(contributions, alert["contributions"]);
            modelled += 1;
        }
        if let Some(asn) = evidence["src_endpoint"]["autonomous_system"]["number"].as_u64() {
            assert!((64_500..65_000).contains(&asn), "{finding}");
            enriched += 1;
        }
        if let Some(hits) = alert["intel"].as_array() {
            let indicator = &hits[0]["indicator"];
            assert!(analytics.iter().any(|a| a["uid"] == *indicator && a["type_id"] == 9), "{finding}");
            indicated += 1;
        }
    }
    eprintln!("{} findings: {enriched} enriched, {indicated} naming an indicator, {modelled} with a model score", findings.len());
    assert!(enriched > 0 && indicated > 0 && modelled > 0);

    // The validator can fail: a finding without `finding_info`, one with a bad address.
    let broken = dir.path().join("broken.jsonl");
    let mut without = findings[0].clone();
    without.as_object_mut().unwrap().remove("finding_info");
    let mut bad_ip = findings[0].clone();
    bad_ip["evidences"][0]["src_endpoint"]["ip"] = "not an address".into();
    std::fs::write(&broken, format!("{without}\n{bad_ip}\n")).unwrap();
    let (valid, report) = validate(&broken);
    assert!(!valid && report.contains("line 1: <root>: 'finding_info' is a required property") && report.contains("line 2: evidences.0.src_endpoint.ip"), "{report}");
}

/// Raw CloudTrail with the SigmaHQ rules: findings name the rules, and a source address that is a
/// service's name (`AWS Internal`, `ec2.amazonaws.com`: CloudTrail's for calls AWS makes itself)
/// is the endpoint's `name`, not an invalid `ip`.
#[test]
fn sigma_findings_on_raw_cloudtrail_validate() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = threatflow();
    command.arg("replay");
    let mut files: Vec<_> = std::fs::read_dir(format!("{ROOT}/tests/data/stratus-red-team/detonation-logs")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for file in &files {
        command.arg("--input").arg(file);
    }
    let alerts = dir.path().join("alerts.jsonl");
    ok(command
        .args(["--format", "auto", "--rules-dir", &format!("{ROOT}/rules/sigma"), "--alerts-format", "ocsf", "--output"])
        .arg(dir.path().join("decisions.jsonl"))
        .arg("--alerts")
        .arg(&alerts)
        .output()
        .expect("spawn"));
    let findings = lines(&alerts);
    assert!(findings.len() > 20, "{} findings", findings.len());
    let (valid, report) = validate(&alerts);
    assert!(valid, "{report}");
    let named = findings.iter().filter(|f| f["evidences"][0]["src_endpoint"]["name"].is_string()).count();
    let rules = findings.iter().filter(|f| f["finding_info"]["analytic"]["type_id"] == 1).count();
    eprintln!("{} findings: {named} with a named (not addressed) source, {rules} from rules", findings.len());
    assert!(named > 0 && rules == findings.len());
}

/// Entity-risk alerts as findings: on the generator's raw CloudTrail with the SigmaHQ rules and
/// `--risk-threshold`, every finding validates, and each risk decision's finding names the entity's
/// risk as its analytic and carries the JSON alert's risk (entity, score, every contribution).
#[test]
fn risk_alerts_become_valid_findings_with_their_contributions() {
    let dir = tempfile::tempdir().unwrap();
    let run = |format: &str| {
        let alerts = dir.path().join(format!("alerts-{format}.jsonl"));
        ok(threatflow()
            .args(["run", "--format", "aws.cloudtrail", "--rules-dir", &format!("{ROOT}/rules/sigma"), "--users", "2000", "--events", "100000"])
            .args(["--risk-threshold", "150", "--risk-only-below", "high", "-w", "2", "--alerts-format", format, "--alerts"])
            .arg(&alerts)
            .output()
            .expect("spawn"));
        alerts
    };
    let (json_alerts, findings_file) = (lines(&run("json")), run("ocsf"));
    let (valid, report) = validate(&findings_file);
    assert!(valid, "{report}");
    let findings: std::collections::BTreeMap<String, serde_json::Value> =
        lines(&findings_file).into_iter().map(|f| (f["finding_info"]["uid"].as_str().unwrap().to_string(), f)).collect();
    let risks: Vec<&serde_json::Value> = json_alerts.iter().filter(|a| a["verdict"] == "risk").collect();
    assert!(risks.len() > 10 && findings.len() == json_alerts.len(), "{} risk alerts of {}; {} findings", risks.len(), json_alerts.len(), findings.len());
    for alert in risks {
        let finding = &findings[alert["decision_id"].as_str().unwrap()];
        // (The finding leaves empty lists out: a contribution of the model alone names no rule.)
        let (theirs, ours) = (&finding["unmapped"]["risk"], &alert["risk"]);
        for key in ["entity", "value", "score", "threshold", "window"] {
            assert_eq!(theirs[key], ours[key], "{key}: {finding}");
        }
        let ids = |risk: &serde_json::Value| risk["contributions"].as_array().unwrap().iter().map(|c| (c["decision_id"].clone(), c["score"].clone())).collect::<Vec<_>>();
        assert_eq!(ids(theirs), ids(ours), "{finding}");
        assert_eq!(finding["finding_info"]["analytic"]["uid"], format!("risk:{}", alert["risk"]["entity"].as_str().unwrap()));
        assert!(alert["risk"]["score"].as_u64().unwrap() >= 150 && !alert["risk"]["contributions"].as_array().unwrap().is_empty());
    }
}
