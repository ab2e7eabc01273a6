//! Sigma rules: our evaluator against an independent one (`rsigma-eval`, a dev-dependency only)
//! on every SigmaHQ cloud rule and every real record in `tests/data`; the rules a directory holds,
//! loaded and refused with file and line; and Sigma rules deciding raw records in the engine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use threatflow::detect::sigma::{self, Placeholders, SigmaRule};

mod common;
use common::{lines, ok, threatflow};

fn data(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(path)
}

/// The shipped Sigma rules (SigmaHQ's cloud rules that load without configuration).
fn shipped_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/sigma")
}

/// Every record of the real samples: Panther's test events, Stratus detonations, OTRF sets.
fn all_records() -> Vec<Value> {
    let mut records = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(data("panther-analysis/rule-tests")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for file in files {
        records.extend(lines(&file).into_iter().map(|t| t["log"].clone()));
    }
    let mut detonations: Vec<PathBuf> = std::fs::read_dir(data("stratus-red-team/detonation-logs")).unwrap().map(|e| e.unwrap().path()).collect();
    detonations.sort();
    for file in detonations {
        let array: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        records.extend(array.as_array().unwrap().iter().cloned());
    }
    records.extend(lines(&data("otrf-security-datasets/aws/ec2_proxy_s3_exfiltration.jsonl")));
    records.extend(lines(&data("otrf-security-datasets/golden-saml-m365/AADAuditEvents.json")));
    records.extend(lines(&data("otrf-security-datasets/golden-saml-m365/Microsoft365DefenderEvents.json")));
    records.push(serde_json::from_slice(&std::fs::read(data("otrf-security-datasets/golden-saml-m365/OfficeActivityEvents.json")).unwrap()).unwrap());
    records
}

/// Every SigmaHQ cloud rule (the 282 shipped in `rules/sigma` and the 18 others in
/// `tests/data/sigmahq-cloud-rules`) over every record: the same matches as rsigma-eval, for
/// every rule we accept. What we refuse is counted and explained, and not compared:
/// - 6 of the 9 rules of `unsupported/` use the legacy `| count() [by F] > N` aggregation with a
///   `timeframe`: each loads as a base rule (`ID:base`) and an `event_count` correlation (which
///   rsigma does not parse in this form, so they are not compared here; see
///   `legacy_count_rules_fire_as_a_window_oracle_says`); the other 3 are refused: `near` without a
///   `timeframe`, a `timeframe` without an aggregation, a `count()` without a `timeframe`;
/// - the 9 rules of `rules-placeholder/` need `%placeholder%` values, which a deployment configures
///   (`--sigma-placeholders`); without them we refuse the rule rather than match the literal text.
#[test]
fn every_sigmahq_cloud_rule_matches_as_rsigma_does() {
    let records = all_records();
    // The same records as the engine holds them.
    let ours_records: Vec<threatflow::event::Record> = records.iter().map(|r| sonic_rs::to_value(r).unwrap()).collect();
    assert_eq!(records.len(), 1_855);
    let (mut ours, mut refused) = (Vec::new(), Vec::new());
    let mut theirs: BTreeMap<String, rsigma_eval::CompiledRule> = BTreeMap::new();
    for dir in [shipped_rules(), data("sigmahq-cloud-rules")] {
        let (loaded, not) = sigma::read_dir(&dir, &Placeholders::new()).unwrap();
        ours.extend(loaded);
        refused.extend(not);
        let collection = rsigma_parser::parse_sigma_directory(&dir).unwrap();
        for rule in &collection.rules {
            if let Ok(compiled) = rsigma_eval::compile_rule(rule) {
                theirs.insert(rule.id.clone().unwrap_or_else(|| rule.title.clone()), compiled);
            }
        }
    }

    let mut refused_why: BTreeMap<&str, usize> = BTreeMap::new();
    for line in &refused {
        let why = if line.contains("aggregations") || line.contains("`timeframe`") {
            "legacy aggregation"
        } else if line.contains("is not configured") {
            "placeholder"
        } else {
            "other"
        };
        *refused_why.entry(why).or_default() += 1;
    }
    assert_eq!(refused_why.get("other"), None, "{refused:#?}");
    assert_eq!(refused_why.get("legacy aggregation"), Some(&3), "{refused:#?}");
    assert_eq!(refused_why.get("placeholder"), Some(&9), "{refused:#?}");
    assert_eq!(ours.len(), 282 + 6 * 2);

    let (mut compared, mut matches, mut differences) = (0usize, 0usize, Vec::new());
    for rule in &ours {
        let Some(reference) = theirs.get(&rule.id) else { continue };
        compared += 1;
        for (i, record) in records.iter().enumerate() {
            let mine = rule.matches_record(&ours_records[i]);
            let reference = rsigma_eval::evaluate_rule(reference, &rsigma_eval::JsonEvent::borrow(record)).is_some();
            matches += usize::from(mine);
            if mine != reference {
                differences.push(format!("{} ({}) on record {i}: ours {mine}, rsigma {reference}", rule.id, rule.title));
            }
        }
    }
    println!("rules: {} ours, {} refused {refused_why:?}, {} compared; {} records; {matches} matches", ours.len(), refused.len(), compared, records.len());
    assert!(compared >= 250, "{compared}");
    assert!(matches > 0);
    assert!(differences.is_empty(), "{} differences:\n{}", differences.len(), differences.join("\n"));
}

/// A directory of rules: every file loads or is refused with its file and line; a rule matches
/// raw records of its logsource in the engine, and decisions name its id and title.
#[test]
fn rules_dir_decides_raw_records_and_refuses_bad_rules_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("good.yml"),
        "title: Console login failure\nid: ct-login-failure\nlogsource: {product: aws, service: cloudtrail}\n\
         detection:\n  selection:\n    eventName: ConsoleLogin\n    responseElements.ConsoleLogin: failure\n  condition: selection\n\
         ---\ntitle: Okta only\nid: okta-any\nlogsource: {product: okta, service: okta}\ndetection:\n  s: {eventType: '*'}\n  condition: s\n",
    )
    .unwrap();
    std::fs::write(rules.join("bad.yaml"), "title: fine\nlogsource: {product: aws}\ndetection:\n  s: {a: 1}\n  condition: s\n---\ntitle: broken\ndetection:\n  s: {a|nonsense: 1}\n  condition: s\n")
        .unwrap();
    let input = dir.path().join("trail.jsonl");
    let record = |i: u32, outcome: &str| {
        serde_json::json!({"eventVersion": "1.08", "eventSource": "signin.amazonaws.com", "eventName": "ConsoleLogin",
            "eventTime": format!("2024-07-30T21:31:{i:02}Z"), "eventID": format!("ct-{i}"),
            "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::1:user/ann"}, "responseElements": {"ConsoleLogin": outcome}})
        .to_string()
            + "\n"
    };
    std::fs::write(&input, record(1, "Success") + &record(2, "Failure")).unwrap();
    let out = dir.path().join("decisions.jsonl");
    let output = ok(threatflow()
        .args(["replay", "--format", "auto", "--rules-dir"])
        .arg(&rules)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .output()
        .expect("spawn"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.yaml:7: ") && stderr.contains("the modifier `nonsense` is not supported"), "{stderr}");
    let decisions = lines(&out);
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0]["event_id"], "ct-2");
    assert_eq!(decisions[0]["rules"], serde_json::json!(["ct-login-failure"]));
    assert_eq!(decisions[0]["rule_titles"], serde_json::json!(["Console login failure"]));
}

/// A rule's logsource decides which records it sees; its detection alone does not.
#[test]
fn a_rule_sees_only_its_logsource() {
    let rule = SigmaRule::parse(
        "title: any\nlogsource: {product: okta, service: okta}\ndetection:\n  s: {eventName: ConsoleLogin}\n  condition: s\n",
        &Placeholders::new(),
    )
    .unwrap();
    let record = sonic_rs::json!({"eventName": "ConsoleLogin"});
    assert!(rule.matches_record(&record));
    assert!(!rule.applies_to("aws.cloudtrail") && rule.applies_to("okta.okta"));
}

/// The labelled OTRF S3 exfiltration set (an SSRF through an EC2 proxy, the instance role's
/// credentials stolen and used to list and copy a bucket): with the shipped rules, exactly the 11
/// malicious events are flagged and none of the 92 benign ones (console activity of an IAM user,
/// AWS services assuming roles).
#[test]
fn the_shipped_rules_flag_exactly_the_malicious_events_of_the_otrf_exfiltration_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("decisions.jsonl");
    ok(threatflow()
        .args(["replay", "--format", "auto", "--allowed-lateness", "1h", "--rules-dir"])
        .arg(shipped_rules())
        .arg("--input")
        .arg(data("otrf-security-datasets/aws/ec2_proxy_s3_exfiltration.jsonl"))
        .arg("--output")
        .arg(&out)
        .output()
        .expect("spawn"));
    let labels = lines(&data("otrf-security-datasets/aws/ec2_proxy_s3_exfiltration.labels.jsonl"));
    let malicious: std::collections::BTreeSet<&str> =
        labels.iter().filter(|l| l["malicious"] == true).map(|l| l["eventID"].as_str().unwrap()).collect();
    assert_eq!((labels.len(), malicious.len()), (103, 11));
    let decisions = lines(&out);
    let flagged: std::collections::BTreeSet<&str> = decisions.iter().map(|d| d["event_id"].as_str().unwrap()).collect();
    assert_eq!(flagged, malicious);
    for d in &decisions {
        assert_eq!(d["rule_titles"], serde_json::json!(["AWS STS AssumeRole Misuse"]), "{d}");
        assert_eq!(d["severity"], "low", "the rule's level: {d}");
    }
}

/// Rules hot-added, changed and removed in the followed directory while records stream in: a
/// rule with its own `effective_from` applies exactly from then (`b` from record 120; the changed
/// `a` stops matching at record 150), and a deleted file's rule no longer matches what comes next.
#[test]
fn rules_added_changed_and_removed_while_running() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let base = 1_722_375_000_000u64;
    let ts = |i: u64| base + i * 1_000;
    let rule = |id: &str, event: &str, from: Option<u64>| {
        let from = from.map(|t| format!("effective_from: {t}\n")).unwrap_or_default();
        format!("title: rule {id}\nid: {id}\n{from}logsource: {{product: aws, service: cloudtrail}}\ndetection:\n  s: {{eventName: {event}}}\n  condition: s\n")
    };
    std::fs::write(rules.join("a.yml"), rule("a", "ConsoleLogin", None)).unwrap();
    let record = |i: u64| {
        serde_json::json!({"eventVersion": "1.08", "eventSource": "signin.amazonaws.com", "eventName": "ConsoleLogin",
            "eventTime": ts(i), "eventID": format!("r{i}"), "userIdentity": {"arn": format!("arn:aws:iam::1:user/u{}", i % 7)}})
        .to_string()
    };
    let out = dir.path().join("decisions.jsonl");
    let mut child = threatflow()
        .args(["replay", "--format", "auto", "--input", "/dev/stdin", "--read-batch", "16", "--allowed-lateness", "0s", "--rules-dir"])
        .arg(&rules)
        .arg("--output")
        .arg(&out)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let send = |stdin: &mut std::process::ChildStdin, range: std::ops::Range<u64>| {
        for i in range {
            writeln!(stdin, "{}", record(i)).unwrap();
        }
        stdin.flush().unwrap();
    };
    send(&mut stdin, 0..100);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_to_string(&out).unwrap_or_default().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no decision after 60 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::write(rules.join("b.yml"), rule("b", "ConsoleLogin", Some(ts(120)))).unwrap();
    std::fs::write(rules.join("a.yml"), rule("a", "Nothing", Some(ts(150)))).unwrap();
    // The directory is scanned every 20 ms: give it time to see both files.
    std::thread::sleep(std::time::Duration::from_millis(500));
    send(&mut stdin, 100..201);
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::fs::remove_file(rules.join("b.yml")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    send(&mut stdin, 201..230);
    drop(stdin);
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("arrived after its effective_from"), "{stderr}");
    let decisions = lines(&out);
    let by_event: BTreeMap<String, Value> = decisions.iter().map(|d| (d["event_id"].as_str().unwrap().to_string(), d["rules"].clone())).collect();
    let rules_of = |i: u64| by_event.get(&format!("r{i}")).cloned().unwrap_or(serde_json::json!([]));
    for i in (0..150).chain(201..230) {
        let expected: Vec<&str> = match i {
            0..120 => vec!["a"],
            120..150 => vec!["a", "b"],
            _ => vec![],
        };
        assert_eq!(rules_of(i), serde_json::json!(expected), "record {i}");
    }
    // The deletion carries no time: it applies from the events' frontier when it is seen, after
    // some of records 150..=200 (all of them were sent before it). So `b` matches a prefix of them.
    let cut = (150..=200).find(|i| rules_of(*i) != serde_json::json!(["b"])).unwrap_or(201);
    assert!(cut > 150, "b matched from 150 until the deletion");
    for i in cut..=200 {
        assert_eq!(rules_of(i), serde_json::json!([]), "record {i}: after the deletion at {cut}");
    }
}

/// The Stratus CloudTrail detonations, in their order, re-timed 7 s apart from 2024-01-01 (so
/// correlation windows fill, and no two events are a whole window length apart: rsigma's windows
/// include their lower bound, ours, like the feature windows, do not).
fn retimed_trail() -> Vec<Value> {
    let mut records = Vec::new();
    let mut detonations: Vec<PathBuf> = std::fs::read_dir(data("stratus-red-team/detonation-logs")).unwrap().map(|e| e.unwrap().path()).collect();
    detonations.sort();
    for file in detonations {
        let array: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        records.extend(array.as_array().unwrap().iter().cloned());
    }
    for (i, record) in records.iter_mut().enumerate() {
        let secs = 1_704_067_200 + 7 * i as i64;
        record["eventTime"] = chrono::DateTime::from_timestamp(secs, 0).unwrap().to_rfc3339().into();
        record["eventID"] = format!("ct-{i:03}").into();
    }
    records
}

/// Runs the engine over CloudTrail records with Sigma rules (text); returns each decided event's
/// rule ids.
fn decide_trail(records: &[Value], rules: &str, workers: usize) -> BTreeMap<String, Vec<String>> {
    use threatflow::control::{ControlSpec, RulesSource};
    use threatflow::engine::run;
    use threatflow::job::{JobSpec, SourceSpec};
    use threatflow::ingest::partition::Decoding;
    let input: String = records.iter().map(|r| r.to_string() + "\n").collect();
    let mut job = JobSpec::new("threat", SourceSpec::Memory(vec![input.into_bytes()]));
    job.decoding = Decoding { format: threatflow::ingest::mapping::RecordFormat::parse("aws.cloudtrail", None).unwrap(), ..Decoding::default() };
    job.control = ControlSpec { rules: vec![RulesSource::Specs(threatflow::detect::rules::parse_sigma_updates(rules).unwrap())], ..Default::default() };
    job.collect = true;
    let report = run(timely::Config::process(workers), job).unwrap();
    assert_eq!(report.rejected, 0);
    report.collected_decisions.into_iter().map(|d| (d.event_id, d.rules)).collect()
}

/// Base rules and correlations of every type over the re-timed detonations: the engine's windows
/// fire at exactly the events rsigma-eval's correlation engine fires at (one event at a time, in
/// time order; no two events share a second here, where rsigma would see them one by one and we
/// together). The base rules only feed the correlations (`generate` is false), so decisions name
/// correlations only.
#[test]
fn correlation_rules_fire_as_rsigma_does() {
    let rules = r#"title: EC2 API call
id: base-ec2
name: ec2_call
logsource: {product: aws, service: cloudtrail}
detection:
  sel: {eventSource: ec2.amazonaws.com}
  condition: sel
---
title: Read-only API call
id: base-read
name: read_call
logsource: {product: aws, service: cloudtrail}
detection:
  sel: {eventName|startswith: [Describe, List, Get]}
  condition: sel
---
title: Change call
id: base-change
name: change_call
logsource: {product: aws, service: cloudtrail}
detection:
  sel: {eventName|startswith: [Create, Modify, Update, Attach, Put, Delete, Run, Start, Stop, Authorize, Enable, Send, Terminate]}
  condition: sel
---
title: SSM call
id: base-ssm
name: ssm_call
logsource: {product: aws, service: cloudtrail}
detection:
  sel: {eventSource: ssm.amazonaws.com}
  condition: sel
---
title: Burst of EC2 calls by one identity
id: corr-count
level: high
correlation:
  type: event_count
  rules: [ec2_call]
  group-by: [userIdentity.arn]
  timespan: 2m
  condition: {gte: 5}
---
title: Many distinct read calls from one address
id: corr-values
correlation:
  type: value_count
  rules: [read_call]
  group-by: [sourceIPAddress]
  timespan: 10m
  condition: {field: eventName, gte: 4}
---
title: SSM and change calls by one identity
id: corr-temporal
correlation:
  type: temporal
  rules: [ssm_call, change_call]
  group-by: [userIdentity.arn]
  timespan: 5m
  # Written out: the spec's default for temporal is every referenced rule (ours), rsigma-eval
  # 0.23 defaults to `gte: 1`.
  condition: {gte: 2}
---
title: A read call, then a change call, by one identity
id: corr-ordered
correlation:
  type: temporal_ordered
  rules: [read_call, change_call]
  group-by: [userIdentity.arn]
  timespan: 5m
"#;
    let records = retimed_trail();
    assert_eq!(records.len(), 310);

    let mut reference = rsigma_eval::CorrelationEngine::new(rsigma_eval::CorrelationConfig::default());
    reference.add_collection(&rsigma_parser::parse_sigma_yaml(rules).unwrap()).unwrap();
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, record) in records.iter().enumerate() {
        let fired = reference.process_event_at(&rsigma_eval::JsonEvent::borrow(record), 1_704_067_200 + 7 * i as i64);
        let mut ids: Vec<String> = fired.iter().filter(|r| r.is_correlation()).filter_map(|r| r.header.rule_id.clone()).collect();
        ids.sort();
        ids.dedup();
        if !ids.is_empty() {
            expected.insert(record["eventID"].as_str().unwrap().to_string(), ids);
        }
    }
    for id in ["corr-count", "corr-values", "corr-temporal", "corr-ordered"] {
        assert!(expected.values().any(|ids| ids.iter().any(|i| i == id)), "{id} fires somewhere: the test covers it");
    }
    for workers in [1, 2] {
        assert_eq!(decide_trail(&records, rules, workers), expected, "on {workers} worker(s)");
    }
}

/// SigmaHQ's legacy `| count() [by F] > N` rules with a `timeframe` run as event_count
/// correlations: over the re-timed detonations they fire at exactly the events a brute-force
/// window oracle names (every earlier match of the base rule in the same group within the
/// timeframe, counted per event).
#[test]
fn legacy_count_rules_fire_as_a_window_oracle_says() {
    let records = retimed_trail();
    let dir = data("sigmahq-cloud-rules/unsupported/cloud");
    let mut text = String::new();
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut loaded = 0;
    for file in sigma::rule_files(&dir) {
        let yaml = std::fs::read_to_string(&file).unwrap();
        let Ok(rules) = sigma::parse_all(&yaml, &Placeholders::new()) else { continue };
        loaded += 1;
        text += &format!("{}\n---\n", yaml.trim_end());
        let base = rules.iter().find(|r| r.id.ends_with(":base")).unwrap();
        let corr_rule = rules.iter().find(|r| r.correlation().is_some()).unwrap();
        let corr = corr_rule.correlation().unwrap();
        let field = |record: &Value, name: &str| name.split('.').try_fold(record, |v, s| v.get(s)).cloned();
        // (time, group) of every base match so far.
        let mut matched: Vec<(i64, Vec<Option<Value>>)> = Vec::new();
        for (i, record) in records.iter().enumerate() {
            if !base.matches_record(&sonic_rs::to_value(record).unwrap()) {
                continue;
            }
            let t = 7 * i as i64 * 1_000;
            let group: Vec<Option<Value>> = corr.group_by.iter().map(|g| field(record, g)).collect();
            matched.push((t, group.clone()));
            let count = matched.iter().filter(|(t2, g2)| *t2 > t - corr.timespan as i64 && *g2 == group).count();
            if corr.condition.holds(count as u64) {
                expected.entry(record["eventID"].as_str().unwrap().to_string()).or_default().push(corr_rule.id.clone());
            }
        }
    }
    assert_eq!(loaded, 6, "the six `count()` rules with a timeframe load");
    assert!(!expected.is_empty(), "some fire on the detonations");
    for ids in expected.values_mut() {
        ids.sort();
    }
    assert_eq!(decide_trail(&records, &text, 2), expected);
}

/// The rule index (by logsource, and by the field most rules pin to exact values) changes no
/// decision: over every real record and 20,000 generated raw records of each provider, with every
/// SigmaHQ cloud rule in force, `decide` names the same rules as when every rule is tried on every
/// event.
///
/// Nor does matching records early, as they are decoded (`crate::detect::sigma_set`): each record
/// decoded with the rule set in force published keeps its matches and its text only, and `decide`
/// names the same rules from those matches; with another rule set in force (one rule fewer), it
/// matches the record again from its text and names what scanning that set names.
#[test]
fn the_rule_index_and_early_matching_change_no_decision() {
    use threatflow::detect::control::Control;
    use threatflow::detect::decision::{decide, ControlIndex};
    use threatflow::detect::rules::Rule;
    use std::sync::Arc;
    use threatflow::detect::sigma_set::LatestSigmaSet;
    use threatflow::event::{Event, Position};
    use threatflow::ingest::mapping::RecordFormat;
    use threatflow::ingest::partition::{decode_record, Decoding, EarlyMatching, Item};
    use threatflow::ingest::provider_records::Provider;
    use threatflow::state::features::Features;

    let mut sigma_rules = Vec::new();
    for dir in [shipped_rules(), data("sigmahq-cloud-rules")] {
        sigma_rules.extend(sigma::read_dir(&dir, &Placeholders::new()).unwrap().0);
    }
    let keyed = sigma_rules.iter().filter(|r| !r.requirements().is_empty()).count();
    let owned: Vec<Control> = sigma_rules
        .into_iter()
        .map(|sigma| Control::Rule(Rule::from_spec(&threatflow::detect::rules::RuleSpec::from_sigma(sigma)).expect("a Sigma rule is a valid rule")))
        .collect();
    let controls: Vec<(&Control, isize)> = owned.iter().map(|c| (c, 1)).collect();
    let (indexed, scanning) = (ControlIndex::new(&controls), ControlIndex::scanning_every_rule(&controls));

    // One rule fewer: a set the early matches were not made against.
    let fewer: Vec<(&Control, isize)> = controls[1..].to_vec();
    let (fewer_indexed, fewer_scanning) = (ControlIndex::new(&fewer), ControlIndex::scanning_every_rule(&fewer));
    assert_ne!(fewer_indexed.sigma_set().fingerprint(), indexed.sigma_set().fingerprint());

    let mut texts: Vec<String> = all_records().iter().map(|r| serde_json::to_string(r).unwrap()).collect();
    let config = threatflow::ingest::generator::GeneratorConfig { users: 500, events: 20_000, partitions: 2, events_per_attack: 4_000, ..Default::default() };
    let generated: Vec<_> = threatflow::ingest::generator::generate_all(&config).0.into_iter().flatten().collect();
    for provider in Provider::ALL {
        texts.extend(generated.iter().map(|e| serde_json::to_string(&provider.render(e)).unwrap()));
    }
    let latest = LatestSigmaSet::new();
    latest.publish(indexed.sigma_set(), 0);
    let plain = Decoding { format: RecordFormat::parse("auto", None).unwrap(), ..Decoding::default() };
    let early = Decoding { early_matching: Some(latest as Arc<dyn EarlyMatching>), ..plain.clone() };
    let decoded = |decoding: &Decoding, text: &str| {
        let mut items = Vec::new();
        decode_record(text.as_bytes(), text.len(), decoding, None, || Position { source: "test".into(), record: 0, offset: 0 }, &mut items);
        match items.as_slice() {
            [Item::Event(event)] => Some(event.clone()),
            _ => None,
        }
    };
    let events: Vec<(Event, Event)> = texts.iter().filter_map(|text| Some((decoded(&plain, text)?, decoded(&early, text)?))).collect();
    assert!(events.len() > 80_000, "{}", events.len());
    let settled = events.iter().filter(|(_, e)| e.extra.early_matches().is_some_and(|m| m.rules == indexed.sigma_set().fingerprint())).count();
    assert!(settled >= events.len() - events.len() / 100, "most records are matched early: {settled} of {}", events.len());
    let features = Features::default();
    let mut flagged = 0;
    for (event, matched_early) in &events {
        let rules = |event: &Event, controls: &[(&Control, isize)], index: &ControlIndex| decide(event.ts, event, &features, controls, index).map(|d| d.rules);
        let with_index = rules(event, &controls, &indexed);
        assert_eq!(with_index, rules(event, &controls, &scanning), "{}", event.to_json());
        assert_eq!(rules(matched_early, &controls, &indexed), with_index, "matched early: {}", event.to_json());
        assert_eq!(rules(matched_early, &fewer, &fewer_indexed), rules(event, &fewer, &fewer_scanning), "another set: {}", event.to_json());
        assert_eq!(matched_early, event, "the same fields, parsed again from the text");
        flagged += usize::from(with_index.is_some());
    }
    println!("{keyed} of {} rules indexed by a field; {flagged} of {} events flagged; {settled} matched early", owned.len(), events.len());
    assert!(keyed * 10 >= owned.len() * 7, "most cloud rules pin a field: {keyed} of {}", owned.len());
    assert!(flagged > 500, "{flagged}");
}
