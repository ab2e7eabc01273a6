//! The `threatflow` binary, as users run it: determinism across workers and processes, malformed
//! input, model updates through a file, and the embedded default.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

mod common;
use common::{free_ports, lines, ok, threatflow};

fn decision_ids(path: &Path) -> BTreeSet<String> {
    lines(path).iter().map(|d| d["decision_id"].as_str().expect("decision_id").to_string()).collect()
}

/// Generates a small stream with every attack scenario.
fn generated(dir: &Path) -> PathBuf {
    let events = dir.join("events.jsonl");
    ok(threatflow()
        .args(["generate", "--users", "300", "--events", "60000", "--seed", "7", "--out"])
        .arg(&events)
        .output()
        .expect("spawn"));
    events
}

fn replay(events: &Path, output: &Path, extra: &[&str]) -> Output {
    let root = env!("CARGO_MANIFEST_DIR");
    ok(threatflow()
        .arg("replay")
        .arg("--input")
        .arg(events)
        .arg("--model")
        .arg(format!("{root}/models/default.json"))
        .arg("--rules")
        .arg(format!("{root}/rules/default.json"))
        .arg("--output")
        .arg(output)
        .args(extra)
        .output()
        .expect("spawn"))
}

#[test]
fn same_decisions_on_one_and_two_workers_and_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let events = generated(dir.path());
    let one = dir.path().join("w1.jsonl");
    let two = dir.path().join("w2.jsonl");
    replay(&events, &one, &["-w", "1"]);
    replay(&events, &two, &["-w", "2"]);

    // Two processes of one worker each, on loopback.
    let hostfile = dir.path().join("hosts");
    let ports = free_ports(2);
    std::fs::write(&hostfile, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).unwrap();
    let cluster = dir.path().join("n2.jsonl");
    let spawn = |process: &str| {
        let root = env!("CARGO_MANIFEST_DIR");
        threatflow()
            .arg("replay")
            .arg("--input")
            .arg(&events)
            .arg("--model")
            .arg(format!("{root}/models/default.json"))
            .arg("--rules")
            .arg(format!("{root}/rules/default.json"))
            .arg("--output")
            .arg(&cluster)
            .args(["-w", "1", "-n", "2", "-p", process, "-h"])
            .arg(&hostfile)
            .spawn()
            .expect("spawn")
    };
    let mut p1 = spawn("1");
    let p0 = spawn("0").wait_with_output().expect("process 0");
    ok(p0);
    assert!(p1.wait().expect("process 1").success());

    let reference = decision_ids(&one);
    assert!(reference.len() > 100, "the stream has threats: {}", reference.len());
    assert_eq!(reference, decision_ids(&two));
    assert_eq!(reference, decision_ids(&cluster));
    // The outputs are written in time and decision-id order: the same bytes.
    let bytes = std::fs::read(&one).unwrap();
    assert_eq!(bytes, std::fs::read(&two).unwrap());
    assert_eq!(bytes, std::fs::read(&cluster).unwrap());
}

#[test]
fn malformed_records_go_to_dead_letters_and_the_rest_is_decided() {
    let dir = tempfile::tempdir().unwrap();
    let events = generated(dir.path());
    let valid = std::fs::read(&events).unwrap();
    let valid_lines: Vec<&[u8]> = valid.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();

    let huge = format!("{{\"event_id\":\"huge\",\"ts\":1,\"user\":\"u\",\"action\":\"{}\"}}", "x".repeat(2 << 20));
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (b"this is not json".to_vec(), "invalid event"),
        (br#"{"event_id":"w1","ts":"soon","user":"u","action":"login"}"#.to_vec(), "field `ts`"),
        (br#"{"event_id":"w2","ts":5,"user":["u"],"action":"login"}"#.to_vec(), "field `user`"),
        (br#"{"event_id":"m1","ts":5,"action":"login"}"#.to_vec(), "missing field `user`"),
        (br#"{"event_id":"m2","ts":5,"user":"u","action":"download","bytes":"many"}"#.to_vec(), "field `bytes`"),
        (huge.into_bytes(), "exceeds the limit"),
        (b"{\"event_id\":\"\xc3\x28\",\"ts\":5,\"user\":\"u\",\"action\":\"login\"}".to_vec(), "UTF-8"),
        (br#"{"event_id":"t1","ts":5,"user":"u","action":"login"#.to_vec(), "invalid event"),
    ];
    // Interleave the bad records among the valid ones.
    let mut mixed = Vec::new();
    let mut expected_positions = Vec::new();
    let mut line = 0u64;
    let step = valid_lines.len() / (bad.len() + 1);
    for (i, l) in valid_lines.iter().enumerate() {
        if i > 0 && i % step == 0 && (i / step - 1) < bad.len() {
            let (record, reason) = &bad[i / step - 1];
            line += 1;
            expected_positions.push((line, *reason, record.len()));
            mixed.extend_from_slice(record);
            mixed.push(b'\n');
        }
        line += 1;
        mixed.extend_from_slice(l);
        mixed.push(b'\n');
    }
    let mixed_path = dir.path().join("mixed.jsonl");
    std::fs::write(&mixed_path, &mixed).unwrap();

    let clean_out = dir.path().join("clean.jsonl");
    let mixed_out = dir.path().join("mixed-decisions.jsonl");
    let dead = dir.path().join("dead.jsonl");
    replay(&events, &clean_out, &["-w", "2"]);
    replay(&mixed_path, &mixed_out, &["-w", "2", "--dead-letters", dead.to_str().unwrap()]);

    // The valid records are decided exactly as without the bad ones (only their line numbers and
    // offsets, which decisions carry for `revert`, moved).
    let without_position = |path: &Path| {
        lines(path)
            .into_iter()
            .map(|mut d| {
                assert!(d["position"]["source"].is_string(), "decisions name where the event was read: {d}");
                d.as_object_mut().unwrap().remove("position");
                d
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(without_position(&clean_out), without_position(&mixed_out));
    // Every bad record is a dead letter with its reason, position and original bytes.
    let dead_letters = lines(&dead);
    assert_eq!(dead_letters.len(), bad.len(), "{dead_letters:#?}");
    for (d, (line, reason, size)) in dead_letters.iter().zip(&expected_positions) {
        assert_eq!(d["position"]["record"].as_u64(), Some(*line));
        assert!(d["reason"].as_str().unwrap().contains(reason), "{d}");
        assert_eq!(d["size"].as_u64(), Some(*size as u64));
        let offset = d["position"]["offset"].as_u64().unwrap() as usize;
        let original: Vec<u8> = match (&d["original"], &d["original_base64"]) {
            (Value::String(s), _) => s.as_bytes().to_vec(),
            (_, Value::String(b)) => base64_decode(b),
            _ => panic!("no original bytes: {d}"),
        };
        assert_eq!(&mixed[offset..offset + original.len()], &original[..], "original bytes at the offset");
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).expect("base64")
}

/// A model update through a file: decisions name v1 before `effective_from` and v2 from it on;
/// an update whose artifact does not match its sha256 is rejected and v2 stays in force.
#[test]
fn model_updates_switch_exactly_at_effective_from() {
    let dir = tempfile::tempdir().unwrap();
    let events = generated(dir.path());
    let all = lines(&events);
    let t_switch = all[all.len() / 2]["ts"].as_u64().unwrap();

    // v2 flags everything with a resource; v1 is the default model.
    let v2 = r#"{"version":"v2","features":["distinct_resources_1h"],"weights":[10.0],"bias":-1.0,"threshold":0.5}"#;
    std::fs::write(dir.path().join("v2.json"), v2).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(v2.as_bytes()))
    };
    let bad = r#"{"version":"v3","features":["deletes_10m"],"weights":[0.0],"bias":-100.0,"threshold":0.5}"#;
    std::fs::write(dir.path().join("v3.json"), bad).unwrap();
    let updates = dir.path().join("updates.jsonl");
    std::fs::write(
        &updates,
        format!(
            "{{\"version\":\"v2\",\"uri\":\"v2.json\",\"sha256\":\"{sha}\",\"effective_from\":{t_switch}}}\n\
             {{\"version\":\"v3\",\"uri\":\"file://{}\",\"sha256\":\"{}\",\"effective_from\":{}}}\n",
            dir.path().join("v3.json").display(),
            "0".repeat(64),
            t_switch + 1,
        ),
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    // Blocks off: every event is judged by the model (a blocked user's events are not).
    let output = replay(&events, &out, &["-w", "2", "--model-updates", updates.to_str().unwrap(), "--block-for", "0s"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("model v3 rejected, the previous model stays in force") && stderr.contains("sha256 mismatch"), "{stderr}");

    let decisions = lines(&out);
    // The time each event is judged at: its ts, or the watermark (5 s behind the newest) when late.
    let mut newest = 0u64;
    let mut with_resource = BTreeSet::new();
    for e in &all {
        let ts = e["ts"].as_u64().unwrap();
        let judged = ts.max(newest.saturating_sub(5_000));
        newest = newest.max(ts);
        if judged >= t_switch && e.get("resource").is_some() {
            with_resource.insert(e["event_id"].as_str().unwrap());
        }
    }
    let mut after = BTreeSet::new();
    for d in &decisions {
        let ts = d["ts"].as_u64().unwrap();
        let version = d["model_version"].as_str().unwrap();
        if ts < t_switch {
            assert_eq!(version, "default-trained-1", "{d}");
        } else {
            assert_eq!(version, "v2", "{d}");
            after.insert(d["event_id"].as_str().unwrap());
        }
    }
    let missing: Vec<_> = with_resource.difference(&after).collect();
    assert!(missing.is_empty(), "events after the switch not flagged by v2: {missing:?}");
}

#[test]
fn run_detects_every_scenario_out_of_the_box() {
    let output = ok(threatflow().args(["run", "--users", "1000", "--events", "150000", "--json", "-w", "2"]).output().expect("spawn"));
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(report["events"].as_u64(), Some(150_000));
    let scenarios = report["quality"]["scenarios"].as_object().expect("quality per scenario");
    assert_eq!(scenarios.len(), 6, "{report}");
    for (name, q) in scenarios {
        assert!(q["instances"].as_u64().unwrap() >= 1, "{name}: {q}");
        assert_eq!(q["instances_detected"], q["instances"], "every {name} instance is detected: {q}");
    }
    let decisions = report["quality"]["decisions"].as_u64().unwrap();
    let true_positives = report["quality"]["true_positives"].as_u64().unwrap();
    assert!(true_positives * 2 >= decisions, "precision at least 0.5: {true_positives} of {decisions}");
}

#[test]
fn unknown_dataflow_and_missing_model_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = threatflow().args(["run", "--events", "10", "--dataflow", "nope"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown dataflow \"nope\""));
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"event_id\":\"1\",\"ts\":1,\"user\":\"u\",\"action\":\"login\"}\n").unwrap();
    let out = threatflow()
        .arg("replay")
        .arg("--input")
        .arg(&input)
        .args(["--model", "missing.json", "--output"])
        .arg(dir.path().join("o.jsonl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading model missing.json"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = threatflow()
        .args(["replay", "--input", "no-such-input.jsonl", "-w", "2", "--output"])
        .arg(dir.path().join("o.jsonl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("opening input no-such-input.jsonl"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A job's options from a TOML file decide exactly as the same options on the command line; an
/// option on the command line overrides the file's; `config check` prints the effective
/// configuration with secrets redacted, and that printout is itself a configuration of the same
/// job; unknown settings and bad values are clear errors.
#[test]
fn a_configuration_file_stands_for_the_options_and_the_command_line_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let events = generated(dir.path());
    let root = env!("CARGO_MANIFEST_DIR");
    let flags = dir.path().join("flags.jsonl");
    replay(&events, &flags, &["-w", "2", "--allowed-lateness", "2s", "--alert-suppression", "10m"]);

    let config = dir.path().join("threatflow.toml");
    let from_file = dir.path().join("from-file.jsonl");
    let text = format!(
        "input = [{events:?}]\nmodel = \"{root}/models/default.json\"\nrules = [\"{root}/rules/default.json\"]\noutput = {from_file:?}\n\
         workers = 2\nallowed_lateness = \"2s\"\nalert-suppression = \"10m\"\n",
        events = events.display().to_string(),
        from_file = from_file.display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    ok(threatflow().args(["replay", "--config"]).arg(&config).output().unwrap());
    assert_eq!(std::fs::read(&from_file).unwrap(), std::fs::read(&flags).unwrap(), "the file's options decide as the flags do");

    // The command line overrides: another output, and another lateness (different decisions' times).
    let overridden = dir.path().join("overridden.jsonl");
    ok(threatflow().args(["replay", "--config"]).arg(&config).arg("--output").arg(&overridden).arg("--allowed-lateness=0s").output().unwrap());
    let zero = dir.path().join("zero.jsonl");
    replay(&events, &zero, &["-w", "2", "--allowed-lateness", "0s", "--alert-suppression", "10m"]);
    assert_eq!(std::fs::read(&overridden).unwrap(), std::fs::read(&zero).unwrap());
    assert_ne!(std::fs::read(&zero).unwrap(), std::fs::read(&flags).unwrap(), "the lateness changes decisions");

    // `config check`: the effective configuration, secrets redacted, and a configuration itself.
    let kafka = dir.path().join("kafka.toml");
    std::fs::write(&kafka, "kafka = \"broker:9092\"\nkafka_option = [\"sasl.password=hunter2\", \"security.protocol=SASL_SSL\"]\nworkers = 2\n").unwrap();
    let check = |path: &Path| String::from_utf8(ok(threatflow().args(["config", "check"]).arg(path).output().unwrap()).stdout).unwrap();
    let effective = check(&kafka);
    assert!(!effective.contains("hunter2"), "{effective}");
    assert!(effective.contains("kafka_option = [\"sasl.password=<redacted>\", \"security.protocol=SASL_SSL\"]"), "{effective}");
    assert!(effective.contains("workers = 2\n") && effective.contains("# allowed_lateness = \"5s\" (default)\n") && effective.contains("kafka = \"broker:9092\"\n"), "{effective}");
    let again = dir.path().join("effective.toml");
    std::fs::write(&again, &effective).unwrap();
    assert_eq!(check(&again), effective, "the printout is a configuration of the same job");

    // Errors name the setting.
    for (text, expected) in [("bogus = 1\n", "unknown setting `bogus`"), ("allowed_lateness = \"soon\"\n", "soon"), ("json = 3\n", "`json` is a switch")] {
        std::fs::write(&config, text).unwrap();
        let output = threatflow().args(["run", "--config"]).arg(&config).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{text}: {stderr}");
    }
}
