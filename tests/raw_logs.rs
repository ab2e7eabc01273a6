//! Providers' own records through the shipped mappings, on the real samples in `tests/data`:
//! Panther's rule-test events (per source), Stratus Red Team CloudTrail detonations (pretty-printed
//! JSON arrays), the OTRF S3 exfiltration set (Logstash-flattened CloudTrail) and the OTRF Golden
//! SAML set (Log Analytics `AuditLogs` and `OfficeActivity` rows).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use threatflow::ingest::mapping::Mappings;

mod common;
use common::{lines, ok, threatflow};

fn data(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(path)
}

/// `(parsed, rejected)` per detected source, and the rejection reasons.
fn decode_all(records: &[Value]) -> (BTreeMap<String, (u64, u64)>, Vec<String>) {
    let mappings = Mappings::shipped().expect("shipped mappings");
    let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut reasons = Vec::new();
    for record in records {
        match mappings.auto(sonic_rs::to_value(record).unwrap()) {
            Ok(event) => counts.entry(event.source.map_or_else(|| "canonical".into(), String::from)).or_default().0 += 1,
            Err(reason) if reason.to_string().contains("fits no mapping") => counts.entry("none".into()).or_default().1 += 1,
            Err(reason) => {
                reasons.push(reason.to_string());
                let source = reason.to_string().split(' ').nth(2).unwrap_or("?").to_string();
                counts.entry(source).or_default().1 += 1;
            }
        }
    }
    (counts, reasons)
}

/// Each Panther rule-test file's events: how many each mapping parses and rejects. The rejected
/// ones are hand-made test events without a timestamp or a user (Panther's rules do not need
/// them); each says so. What fits no mapping has no time or no actor (GCP stubs of one field, a
/// CloudTrail fragment without `userIdentity` among OneLogin's tests); Panther's tests of other
/// log types mixed into a file are mapped by their own source's mapping.
/// A file and, per mapping, the records it parses and rejects.
type PerSource<'a> = (&'a str, &'a [(&'a str, (u64, u64))]);

#[test]
fn panther_rule_test_events_parse_per_source() {
    let expected: [PerSource; 16] = [
        ("AWS_CloudTrail.jsonl", &[("aws.cloudtrail", (436, 27))]),
        ("Okta_SystemLog.jsonl", &[("okta.okta", (58, 8))]),
        ("GSuite_ActivityEvent.jsonl", &[("gcp.google_workspace", (94, 58)), ("none", (0, 5))]),
        ("Azure_Audit.jsonl", &[("azure.auditlogs", (21, 0)), ("azure.signinlogs", (26, 0))]),
        ("Microsoft365_Audit_AzureActiveDirectory.jsonl", &[("m365.audit", (4, 0))]),
        ("Microsoft365_Audit_Exchange.jsonl", &[("m365.audit", (10, 0))]),
        ("Microsoft365_Audit_SharePoint.jsonl", &[("m365.audit", (5, 0))]),
        ("GitHub_Audit.jsonl", &[("github.audit", (70, 29)), ("none", (0, 2))]),
        ("Slack_AuditLogs.jsonl", &[("slack.audit", (34, 32))]),
        ("Azure_MonitorActivity.jsonl", &[("azure.activitylogs", (17, 197))]),
        ("GCP_AuditLog.jsonl", &[("gcp.gcp.audit", (137, 23)), ("none", (0, 8))]),
        ("OneLogin_Events.jsonl", &[("onelogin.onelogin.events", (2, 26)), ("zoom.operation", (1, 0)), ("aws.cloudtrail", (1, 0)), ("none", (0, 1))]),
        ("Duo_Administrator.jsonl", &[("duo.administrator", (28, 0))]),
        ("Duo_Authentication.jsonl", &[("duo.authentication", (0, 14))]),
        ("Zoom_Operation.jsonl", &[("zoom.operation", (27, 1))]),
        ("Box_Event.jsonl", &[("box.events", (0, 26))]),
    ];
    for (file, counts) in expected {
        let records: Vec<Value> = lines(&data(&format!("panther-analysis/rule-tests/{file}"))).into_iter().map(|t| t["log"].clone()).collect();
        let (got, reasons) = decode_all(&records);
        let expected: BTreeMap<String, (u64, u64)> = counts.iter().map(|(s, c)| (s.to_string(), *c)).collect();
        assert_eq!(got, expected, "{file}: {reasons:#?}");
        for reason in &reasons {
            let missing = ["no `ts`", "no `user`", "unrecognised timestamp"].iter().any(|m| reason.contains(m));
            assert!(missing, "{file}: {reason}");
        }
    }
}

/// Runs the engine over files with `--format auto`; returns the events read and the dead letters.
fn replay_auto(files: &[PathBuf]) -> (u64, Vec<threatflow::event::DeadLetter>) {
    use threatflow::engine::run;
    use threatflow::job::{JobSpec, SourceSpec};
    use threatflow::ingest::mapping::RecordFormat;
    use threatflow::ingest::partition::Decoding;
    let mut job = JobSpec::new("threat", SourceSpec::Files(files.to_vec()));
    job.decoding = Decoding { format: RecordFormat::parse("auto", None).unwrap(), ..Decoding::default() };
    job.collect = true;
    let report = run(timely::Config::process(2), job).expect("the job runs");
    (report.events, report.collected_dead_letters)
}

/// Stratus Red Team's detonations: 35 pretty-printed JSON arrays of raw CloudTrail records, 310
/// events, every one parsed (107 carry a `sourceIPAddress` that is not a valid IP: kept as sent).
#[test]
fn stratus_detonation_arrays_parse_whole() {
    let dir = data("stratus-red-team/detonation-logs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
    files.sort();
    assert_eq!(files.len(), 35);
    let (events, dead) = replay_auto(&files);
    assert_eq!((events, dead.len()), (310, 0), "{dead:#?}");
}

/// OTRF: the S3 exfiltration set (Logstash-flattened CloudTrail, one per line), and the Golden
/// SAML set: `AuditLogs` rows (with `InitiatedBy` as a JSON string), one `OfficeActivity` row as
/// a pretty-printed object, and Microsoft 365 Defender advanced-hunting rows; a record of no known
/// source goes to the dead letters with the reason and its fields.
#[test]
fn otrf_sets_parse_and_what_fits_no_mapping_is_a_dead_letter() {
    let otrf = |f: &str| data(&format!("otrf-security-datasets/{f}"));
    assert_eq!(replay_auto(&[otrf("aws/ec2_proxy_s3_exfiltration.jsonl")]).0, 103);
    let (events, dead) = replay_auto(&[otrf("golden-saml-m365/AADAuditEvents.json"), otrf("golden-saml-m365/OfficeActivityEvents.json")]);
    assert_eq!((events, dead.len()), (5, 0), "{dead:#?}");
    let (events, dead) = replay_auto(&[otrf("golden-saml-m365/Microsoft365DefenderEvents.json")]);
    assert_eq!((events, dead.len()), (9, 0), "{dead:#?}");
    // A record of no known source: a dead letter naming its fields.
    let dir = tempfile::tempdir().unwrap();
    let unknown = dir.path().join("unknown.jsonl");
    std::fs::write(&unknown, "{\"Timestamp\": \"2021-08-02T13:11:39Z\", \"Verb\": \"LdapSearch\"}\n").unwrap();
    let (events, dead) = replay_auto(&[unknown]);
    assert_eq!((events, dead.len()), (0, 1));
    for d in &dead {
        assert!(d.reason.contains("fits no mapping") && d.reason.contains("Verb"), "{}", d.reason);
        assert!(d.original.as_deref().is_some_and(|o| o.contains("\"Verb\"")));
    }
}

/// Through the binary: raw CloudTrail records are decided like canonical events (the mapped action
/// categories feed the features), and a record that fits no mapping is a dead letter.
#[test]
fn replay_decides_raw_cloudtrail() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("trail.jsonl");
    let mut text = String::new();
    // Twelve failed console logins, then a success: the shipped brute-force rule fires.
    for i in 0..13 {
        let outcome = if i < 12 { "Failure" } else { "Success" };
        text += &serde_json::json!({
            "eventVersion": "1.08", "eventSource": "signin.amazonaws.com", "eventName": "ConsoleLogin",
            "eventTime": format!("2024-07-30T21:31:{:02}Z", i * 4), "eventID": format!("ct-{i}"),
            "sourceIPAddress": "08.1.250.216", "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::1:user/ann"},
            "responseElements": {"ConsoleLogin": outcome}
        })
        .to_string();
        text += "\n";
    }
    text += "{\"hello\": \"world\"}\n";
    std::fs::write(&input, text).unwrap();
    let out = dir.path().join("decisions.jsonl");
    let dead = dir.path().join("dead.jsonl");
    ok(threatflow()
        .args(["replay", "--format", "auto", "--rules", concat!(env!("CARGO_MANIFEST_DIR"), "/rules/default.json"), "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .arg("--dead-letters")
        .arg(&dead)
        .output()
        .expect("spawn"));
    let decisions = lines(&out);
    let flagged: Vec<&str> = decisions.iter().map(|d| d["event_id"].as_str().unwrap()).collect();
    assert_eq!(flagged, ["ct-9", "ct-10", "ct-11", "ct-12"]);
    assert!(decisions.iter().all(|d| d["user"] == "arn:aws:iam::1:user/ann" && d["features"]["failed_logins_5m"].as_u64().unwrap() >= 10));
    let dead = lines(&dead);
    assert_eq!(dead.len(), 1);
    assert!(dead[0]["reason"].as_str().unwrap().contains("fits no mapping"), "{}", dead[0]);
}

/// Sources that write text lines, not JSON: VPC flow logs (default format, with the header line
/// of an S3-delivered file) and S3 server access logs (quoted and bracketed fields, `-` for none,
/// an anonymous requester, the 18-field form of older logs), in one file with `--format auto`:
/// each line becomes the event its fields say; a flow record without traffic (`NODATA`) and a line
/// of no known format are dead letters that say why.
#[test]
fn text_logs_of_vpc_flow_and_s3_access_become_events() {
    let owner = "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be";
    let records = [
        "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status".to_string(),
        "2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK".into(),
        "2 123456789010 eni-1235b8ca123456789 203.0.113.12 172.31.16.139 0 0 1 4 336 1432917027 1432917142 REJECT OK".into(),
        "2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA".into(),
        format!(r#"{owner} amzn-s3-demo-bucket1 [06/Feb/2019:00:00:38 +0000] 192.0.2.3 arn:aws:iam::123456789012:user/ann 3E57427F3EXAMPLE REST.GET.OBJECT photos/cat.jpg "GET /amzn-s3-demo-bucket1/photos/cat.jpg HTTP/1.1" 200 - 1048576 1048576 70 10 "-" "aws-cli/2.15.0 Python/3.11" - s9lzHYrFp76ZVxRcpX9+5cjAnEH2ROuNkd2BHfIa6UkFVdtjf5mKR3/eTPFvsiP/XV/VLi31234= SigV4 ECDHE-RSA-AES128-GCM-SHA256 AuthHeader amzn-s3-demo-bucket1.s3.us-west-1.amazonaws.com TLSv1.2 - -"#),
        format!(r#"{owner} amzn-s3-demo-bucket1 [06/Feb/2019:00:01:00 +0000] 198.51.100.7 - 891CE47D2EXAMPLE REST.GET.OBJECT index.html "GET /index.html HTTP/1.1" 403 AccessDenied 243 - 5 - "-" "curl/8.5.0" -"#),
        format!(r#"{owner} amzn-s3-demo-bucket1 [06/Feb/2019:00:02:00 +0000] 192.0.2.3 arn:aws:iam::123456789012:user/ann A1206F460EXAMPLE REST.PUT.ACL photos/cat.jpg "PUT /amzn-s3-demo-bucket1/photos/cat.jpg?acl HTTP/1.1" 200 - - - 30 - "-" "aws-cli/2.15.0 Python/3.11" - host SigV4 ECDHE-RSA-AES128-GCM-SHA256 AuthHeader amzn-s3-demo-bucket1.s3.us-west-1.amazonaws.com TLSv1.2 - -"#),
        "an access log line of some other format".into(),
    ];
    // Each line through the mappings, as the source reads it.
    let format = threatflow::ingest::mapping::RecordFormat::parse("auto", None).unwrap();
    let mut events = Vec::new();
    for line in &records {
        let mut out = Vec::new();
        let taken = format.decode_text(line, &mut out);
        events.push((taken, out.into_iter().map(|(e, _)| e).collect::<Vec<_>>()));
    }
    assert!(events[0].0 && events[0].1.is_empty(), "the header line is read and skipped");
    let event = |i: usize| events[i].1[0].as_ref().unwrap_or_else(|e| panic!("line {i}: {e}"));
    let flow = event(1);
    assert_eq!((flow.source.as_deref(), flow.user.as_str(), flow.action.as_str(), flow.ts), (Some("aws.vpcflow"), "eni-1235b8ca123456789", "ACCEPT", 1_418_530_010_000));
    assert_eq!((flow.src_ip.as_deref(), flow.bytes, flow.resource.as_deref()), (Some("172.31.16.139"), Some(4249), Some("172.31.16.21")));
    assert_eq!(event(2).action.as_str(), "REJECT");
    let nodata = events[3].1[0].as_ref().expect_err("a flow record without traffic has no action");
    assert!(nodata.to_string().contains("no `action`"), "{nodata}");
    let get = event(4);
    assert_eq!((get.source.as_deref(), get.user.as_str(), get.action.as_str(), get.ts), (Some("aws.s3access"), "arn:aws:iam::123456789012:user/ann", "download", 1_549_411_238_000));
    assert_eq!((get.bytes, get.resource.as_deref(), get.user_agent.as_deref(), get.event_id.as_str()), (Some(1_048_576), Some("photos/cat.jpg"), Some("aws-cli/2.15.0 Python/3.11"), "3E57427F3EXAMPLE"));
    assert_eq!(get.field("http_status").as_deref(), Some("200"));
    let anonymous = event(5);
    assert_eq!((anonymous.user.as_str(), anonymous.field("error_code").as_deref()), ("198.51.100.7", Some("AccessDenied")));
    assert_eq!(event(6).action.as_str(), "share_external");
    assert!(!events[7].0, "a line of no known format is no text source's");

    // The same lines as a file through the engine: 5 events, the NODATA record and the unknown
    // line as dead letters with their reasons.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mixed.log");
    std::fs::write(&input, records.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let dead = dir.path().join("dead.jsonl");
    let output = ok(threatflow()
        .arg("replay")
        .arg("--input")
        .arg(&input)
        .args(["--format", "auto", "--output"])
        .arg(dir.path().join("decisions.jsonl"))
        .arg("--dead-letters")
        .arg(&dead)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .expect("spawn"));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("events=5 rejected=2"), "{log}");
    let dead = lines(&dead);
    assert_eq!(dead.len(), 2);
    assert!(dead[0]["reason"].as_str().unwrap().contains("no `action`"), "{}", dead[0]);
    assert!(dead[1]["reason"].as_str().unwrap().contains("not JSON: Invalid JSON value at line 1 column 1"), "{}", dead[1]);
}
