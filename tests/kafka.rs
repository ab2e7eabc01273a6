//! threatflow against a real Kafka-compatible broker (nisshi, started per test by
//! `scripts/broker` on a free loopback port): the decisions read back from the topics are exactly
//! those of `threatflow replay` over the same partitions, on 2 workers and on 2 processes; every
//! malformed record is in the dead-letter topic; model and rule updates sent through their topics
//! mid-stream switch decisions exactly at `effective_from`; a broker restart loses nothing.
//!
//! `scripts/test` installs nisshi; a test never does: without it, each fails at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use threatflow::ingest::generator::{generate_all, GeneratorConfig};

mod common;
use common::{free_ports, lines, nisshi, ok, output_within, parse_lines, random, run_and_kill, threatflow, wait_for_checkpoints};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A broker on a free port, stopped when dropped.
struct Broker {
    port: u16,
    dir: tempfile::TempDir,
}

impl Broker {
    /// A broker to be started on a free port (the test fails here when nisshi is not installed).
    fn new() -> Broker {
        nisshi();
        Broker { port: free_ports(1)[0], dir: tempfile::tempdir().expect("tempdir") }
    }

    fn start(storage: &str) -> Broker {
        let broker = Broker::new();
        broker.script(&["start", storage]);
        broker
    }

    fn script(&self, args: &[&str]) {
        let output = Command::new(format!("{ROOT}/scripts/broker"))
            .args(args)
            .env("BROKER_PORT", self.port.to_string())
            .env("BROKER_DIR", self.dir.path())
            .output()
            .expect("running scripts/broker");
        assert!(
            output.status.success(),
            "scripts/broker {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.script(&["stop"]);
    }
}

/// A child process, killed when dropped (a failing test leaves nothing running).
struct Running(Option<Child>);

impl Running {
    fn spawn(command: &mut Command) -> Running {
        Running(Some(command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn")))
    }

    /// Waits for the process to end.
    fn wait(mut self) -> Output {
        self.0.take().expect("a child").wait_with_output().expect("wait")
    }

    /// Sends SIGTERM (the engine then decides what it has read and ends) and waits.
    fn terminate(self) -> Output {
        let pid = self.0.as_ref().expect("a child").id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        self.wait()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Generated events of `partitions` partitions, one JSON line each, per partition.
fn generated(partitions: usize, events: u64, seed: u64) -> Vec<Vec<String>> {
    let config = GeneratorConfig { seed, users: 300, events, partitions, ..GeneratorConfig::default() };
    let (parts, _labels) = generate_all(&config);
    parts.into_iter().map(|p| p.iter().map(|e| e.to_json()).collect()).collect()
}

fn write_files(dir: &Path, name: &str, parts: &[Vec<Vec<u8>>]) -> Vec<PathBuf> {
    parts
        .iter()
        .enumerate()
        .map(|(i, records)| {
            let path = dir.join(format!("{name}-{i}.jsonl"));
            let mut bytes = Vec::new();
            for r in records {
                bytes.extend_from_slice(r);
                bytes.push(b'\n');
            }
            std::fs::write(&path, bytes).expect("write");
            path
        })
        .collect()
}

fn produce(broker: &Broker, topic: &str, files: &[PathBuf], extra: &[&str]) {
    ok(threatflow()
        .args(["produce", "--kafka", &broker.address(), "--create-topics", "--topic", topic])
        .args(files.iter().flat_map(|f| ["--input".into(), f.display().to_string()]))
        .args(extra)
        .output()
        .expect("spawn"));
}

fn consume(broker: &Broker, topic: &str) -> Vec<Value> {
    let output = ok(threatflow().args(["consume", "--kafka", &broker.address(), "--topic", topic]).output().expect("spawn"));
    parse_lines(&String::from_utf8_lossy(&output.stdout))
}

/// The records of a topic, or none while it does not exist yet.
fn consume_if_exists(broker: &Broker, topic: &str) -> Vec<Value> {
    let output = threatflow().args(["consume", "--kafka", &broker.address(), "--topic", topic]).output().expect("spawn");
    if !output.status.success() && String::from_utf8_lossy(&output.stderr).contains("does not exist") {
        return Vec::new();
    }
    parse_lines(&String::from_utf8_lossy(&ok(output).stdout))
}

/// The model and rules both sides use.
fn control_args() -> Vec<String> {
    vec![
        "--model".into(),
        format!("{ROOT}/models/default.json"),
        "--rules".into(),
        format!("{ROOT}/rules/default.json"),
    ]
}

fn replay(files: &[PathBuf], output: &Path, extra: &[String]) -> Vec<Value> {
    ok(threatflow()
        .arg("replay")
        .args(files.iter().flat_map(|f| ["--input".into(), f.display().to_string()]))
        .arg("--output")
        .arg(output)
        .args(extra)
        .output()
        .expect("spawn"));
    lines(output)
}

/// Decisions as sorted JSON texts: equal sets mean equal decisions, field for field.
/// The records as sorted texts, without the position decisions carry (a topic's partition and
/// offset here, a file's line in the replay they are compared with).
fn sorted(values: &[Value]) -> Vec<String> {
    let without_position = |v: &Value| {
        let mut v = v.clone();
        if let Some(map) = v.as_object_mut() {
            map.remove("position");
        }
        v.to_string()
    };
    let mut texts: Vec<String> = values.iter().map(without_position).collect();
    texts.sort();
    texts
}

fn engine(broker: &Broker, extra: &[&str]) -> Command {
    let mut cmd = threatflow();
    cmd.args(["run", "--kafka", &broker.address(), "--create-topics", "--no-default-rules"]).args(control_args()).args(extra);
    cmd
}

#[test]
fn decisions_through_kafka_equal_replay_on_two_workers_and_two_processes() {
    let broker = Broker::start("memory");
    let dir = tempfile::tempdir().unwrap();
    // Four partitions of generated events, malformed records mixed in at known offsets.
    let bad: [&[u8]; 4] = [
        b"this is not json",
        br#"{"event_id":"m1","ts":5,"action":"login"}"#,
        br#"{"event_id":"w1","ts":"soon","user":"u","action":"login"}"#,
        b"{\"event_id\":\"\xc3\x28\",\"ts\":5,\"user\":\"u\",\"action\":\"login\"}",
    ];
    let mut malformed: Vec<(usize, u64, Vec<u8>)> = Vec::new();
    let mut valid = 0u64;
    let parts: Vec<Vec<Vec<u8>>> = generated(4, 40_000, 7)
        .into_iter()
        .enumerate()
        .map(|(p, events)| {
            let mut records = Vec::new();
            for (i, line) in events.into_iter().enumerate() {
                if i % 2_500 == 1_000 {
                    let record = bad[(i / 2_500 + p) % bad.len()].to_vec();
                    malformed.push((p, records.len() as u64, record.clone()));
                    records.push(record);
                }
                records.push(line.into_bytes());
                valid += 1;
            }
            records
        })
        .collect();
    let files = write_files(dir.path(), "part", &parts);
    produce(&broker, "activity", &files, &["--topic-partitions", "4"]);

    // The reference: replay of the same four partitions.
    let reference = replay(&files, &dir.path().join("replay.jsonl"), &control_args());
    let reference_dead = lines(&dir.path().join("replay.dead-letters.jsonl"));
    assert!(reference.len() > 50, "the stream has threats: {}", reference.len());
    assert_eq!(reference_dead.len(), malformed.len());

    // Two workers.
    let output = ok(engine(&broker, &["--until-end", "--json", "-w", "2"]).output().expect("spawn"));
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(report["events"], valid, "no valid event is missing");
    assert_eq!(report["rejected"], malformed.len() as u64);
    let decisions = consume(&broker, "decisions");
    assert_eq!(sorted(&decisions), sorted(&reference));
    for d in &decisions {
        let source = d["position"]["source"].as_str().unwrap_or_default();
        assert!(source.starts_with("kafka:activity/"), "a decision names the partition its event was read from: {d}");
    }

    // Alerts and actions: exactly those the decisions ask for, each naming its decision.
    let mut expected_alerts = BTreeSet::new();
    let mut expected_actions = BTreeSet::new();
    for d in &decisions {
        for action in d["actions"].as_array().expect("actions") {
            let id = d["decision_id"].as_str().unwrap().to_string();
            if action == "alert" {
                expected_alerts.insert(id);
            } else {
                expected_actions.insert((id, action.as_str().unwrap().to_string()));
            }
        }
    }
    let alerts: BTreeSet<String> = consume(&broker, "alerts").iter().map(|a| a["decision_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(alerts, expected_alerts);
    let actions: Vec<(String, String)> = consume(&broker, "actions")
        .iter()
        .map(|a| (a["decision_id"].as_str().unwrap().to_string(), a["action"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(actions.len(), expected_actions.len(), "no duplicate action");
    assert_eq!(actions.into_iter().collect::<BTreeSet<_>>(), expected_actions);

    // Every malformed record is a dead letter with its partition, offset, original bytes, and the
    // same reason as in the replay.
    let dead: BTreeMap<(String, u64), Value> = consume(&broker, "dead-letters")
        .into_iter()
        .map(|d| ((d["position"]["source"].as_str().unwrap().to_string(), d["position"]["offset"].as_u64().unwrap()), d))
        .collect();
    assert_eq!(dead.len(), malformed.len());
    let reasons: BTreeSet<&str> = reference_dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    for (p, offset, record) in &malformed {
        let d = dead.get(&(format!("kafka:activity/{p}"), *offset)).unwrap_or_else(|| panic!("no dead letter for {p}@{offset}"));
        let original = match (&d["original"], &d["original_base64"]) {
            (Value::String(s), _) => s.as_bytes().to_vec(),
            _ => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(d["original_base64"].as_str().unwrap()).unwrap()
            }
        };
        assert_eq!(&original, record);
        assert!(reasons.contains(d["reason"].as_str().unwrap()), "{d}");
    }

    // Two processes of one worker each read the same topic (partitions 0, 2 and 1, 3).
    let hostfile = dir.path().join("hosts");
    let ports = free_ports(2);
    std::fs::write(&hostfile, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).unwrap();
    let topics = ["--topic", "decisions=decisions-2p", "--topic", "dead-letters=dead-letters-2p", "--until-end"];
    let hosts = hostfile.display().to_string();
    let spawn = |process: &str| Running::spawn(engine(&broker, &topics).args(["-w", "1", "-n", "2", "-p", process, "-h", &hosts]));
    let p1 = spawn("1");
    let p0 = spawn("0");
    ok(p0.wait());
    ok(p1.wait());
    assert_eq!(sorted(&consume(&broker, "decisions-2p")), sorted(&reference));
    assert_eq!(consume(&broker, "dead-letters-2p").len(), malformed.len());
}

/// Raw provider records through the broker: the generator's events written as CloudTrail, Okta,
/// Google Workspace and Entra ID records (each user's from one provider), with the SigmaHQ rules,
/// threatflow's new-terms rules and entity risk. The decisions read back from the topic are
/// exactly `replay --format auto`'s over the same partitions, on two workers; the report gives
/// the throughput.
#[test]
fn raw_provider_records_through_kafka_decide_as_replay_does() {
    let broker = Broker::start("memory");
    let dir = tempfile::tempdir().unwrap();
    let rendering = threatflow::ingest::provider_records::Rendering::Mixed;
    let config = GeneratorConfig { seed: 11, users: 300, events: 40_000, partitions: 4, ..GeneratorConfig::default() };
    let (parts, _labels) = generate_all(&config);
    let parts: Vec<Vec<Vec<u8>>> = parts.iter().map(|events| events.iter().map(|e| rendering.render(e).into_bytes()).collect()).collect();
    let files = write_files(dir.path(), "raw", &parts);
    produce(&broker, "activity", &files, &["--topic-partitions", "4"]);
    let detections: Vec<String> = ["--format", "auto", "--rules-dir", &format!("{ROOT}/rules"), "--risk-threshold", "150", "--risk-only-below", "high"]
        .iter()
        .map(|a| a.to_string())
        .collect();

    let mut reference_args = control_args();
    reference_args.extend(detections.iter().cloned());
    let reference = replay(&files, &dir.path().join("replay.jsonl"), &reference_args);
    let names = |d: &Value, prefix: &str| d["rules"].as_array().is_some_and(|r| r.iter().any(|id| id.as_str().is_some_and(|id| id.starts_with(prefix))));
    let count = |verdict: &str| reference.iter().filter(|d| d["verdict"] == verdict).count();
    let new_terms = reference.iter().filter(|d| names(d, "threatflow-new-terms-")).count();
    let sigma = reference.iter().filter(|d| d["verdict"] == "threat" && d["rule_titles"].as_array().is_some_and(|t| !t.is_empty())).count();
    eprintln!("reference: {} decisions, {} risk, {sigma} naming a rule, {new_terms} new terms", reference.len(), count("risk"));
    assert!(count("risk") > 0 && sigma > 100 && new_terms > 0, "the stream has rule, new-terms and risk decisions");

    let detections: Vec<&str> = detections.iter().map(String::as_str).collect();
    let mut args = vec!["--until-end", "--json", "-w", "2"];
    args.extend(detections);
    let output = ok(engine(&broker, &args).output().expect("spawn"));
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(report["events"], 40_000, "every record is an event: {report}");
    let decisions = consume(&broker, "decisions");
    assert_eq!(sorted(&decisions), sorted(&reference));
    eprintln!("{} raw records through Kafka on 2 workers: {:.0} records/s, {} decisions", report["events"], report["events_per_second"].as_f64().unwrap_or(0.0), decisions.len());
}

/// `backtest --kafka`: the activity topic read to its end, once per rule set, compares the rule
/// sets exactly as `backtest --input` over the same partitions does.
#[test]
fn a_backtest_over_the_activity_topic_equals_one_over_files() {
    let broker = Broker::start("memory");
    let dir = tempfile::tempdir().unwrap();
    let rendering = threatflow::ingest::provider_records::Rendering::Mixed;
    let config = GeneratorConfig { seed: 12, users: 200, events: 20_000, partitions: 4, ..GeneratorConfig::default() };
    let (parts, _labels) = generate_all(&config);
    let parts: Vec<Vec<Vec<u8>>> = parts.iter().map(|events| events.iter().map(|e| rendering.render(e).into_bytes()).collect()).collect();
    let files = write_files(dir.path(), "raw", &parts);
    produce(&broker, "history", &files, &["--topic-partitions", "4"]);
    let backtest = |source: &[String]| {
        let output = ok(threatflow()
            .args(["backtest", "--rules-dir", &format!("{ROOT}/rules"), "--baseline-rules-dir", &format!("{ROOT}/rules/sigma"), "--json", "-w", "2"])
            .args(source)
            .output()
            .expect("spawn"));
        serde_json::from_slice::<Value>(&output.stdout).expect("a JSON comparison")
    };
    let from_files = backtest(&files.iter().flat_map(|f| ["--input".to_string(), f.display().to_string()]).collect::<Vec<_>>());
    let from_topic = backtest(&["--kafka".into(), broker.address(), "--topic".into(), "activity=history".into()]);
    assert_eq!(from_topic, from_files);
    let text = from_files.to_string();
    assert!(text.contains("threatflow-new-terms-"), "the new-terms rules flag events only the new side has: {text}");
}

/// Splits partitions at event time `at`: the records before the first one at or after it, and the rest.
/// Records per partition.
type Partitions = Vec<Vec<Vec<u8>>>;

fn split_at(parts: &[Vec<String>], at: u64) -> (Partitions, Partitions) {
    let ts = |line: &str| serde_json::from_str::<Value>(line).unwrap()["ts"].as_u64().unwrap();
    parts
        .iter()
        .map(|lines| {
            let cut = lines.iter().position(|l| ts(l) >= at).unwrap_or(lines.len());
            let bytes = |ls: &[String]| ls.iter().map(|l| l.clone().into_bytes()).collect::<Vec<_>>();
            (bytes(&lines[..cut]), bytes(&lines[cut..]))
        })
        .unzip()
}

/// Waits until the decisions topic holds every reference decision before `until` (all but the
/// tail the watermark still holds back), so the engine has read the whole stream.
fn wait_for_decisions(broker: &Broker, topic: &str, reference: &[Value], until: u64) {
    let expected: BTreeSet<&str> =
        reference.iter().filter(|d| d["ts"].as_u64().unwrap() < until).map(|d| d["decision_id"].as_str().unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = consume_if_exists(broker, topic);
        let ids: BTreeSet<&str> = got.iter().map(|d| d["decision_id"].as_str().unwrap()).collect();
        if expected.iter().all(|id| ids.contains(id)) {
            return;
        }
        assert!(Instant::now() < deadline, "the engine did not catch up: {} of {} decisions", ids.len(), expected.len());
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn max_ts(parts: &[Vec<String>]) -> u64 {
    parts.iter().flatten().map(|l| serde_json::from_str::<Value>(l).unwrap()["ts"].as_u64().unwrap()).max().unwrap()
}

#[test]
fn model_and_rule_updates_through_topics_switch_exactly_at_effective_from() {
    let broker = Broker::start("memory");
    let dir = tempfile::tempdir().unwrap();
    let parts = generated(2, 30_000, 11);
    let first = serde_json::from_str::<Value>(&parts[0][0]).unwrap()["ts"].as_u64().unwrap();
    let last = max_ts(&parts);
    let model_at = first + (last - first) / 2;
    let rule_at = model_at + (last - first) / 4;
    let (before, after) = split_at(&parts, model_at);
    let before = write_files(dir.path(), "before", &before);
    let after = write_files(dir.path(), "after", &after);

    // Model v2 (stricter on deletes and downloads, so it flags more than the default) and a rule.
    let (update, rule) = control_updates(dir.path(), model_at, rule_at);

    let mut args = control_args();
    args.extend(["--model-updates".into(), update.display().to_string(), "--rules".into(), rule.display().to_string()]);
    let all: Vec<PathBuf> = (0..2)
        .map(|i| {
            let path = dir.path().join(format!("all-{i}.jsonl"));
            let text = parts[i].iter().map(|l| format!("{l}\n")).collect::<String>();
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    let reference = replay(&all, &dir.path().join("replay.jsonl"), &args);

    // The engine follows the topics; the updates are sent after the first half of the events and
    // before the second (idleness is off, so event time waits for every partition).
    produce(&broker, "activity", &before, &["--topic-partitions", "2"]);
    let running = Running::spawn(&mut engine(&broker, &["--idle-timeout", "1h", "-w", "2"]));
    wait_for_decisions(&broker, "decisions", &reference, model_at - 60_000);
    // The model through `model publish`, which verifies the artifact and sends its update.
    ok(threatflow()
        .args(["model", "publish", "--kafka", &broker.address(), "--version", "v2", "--effective-from", &model_at.to_string()])
        .arg("--uri")
        .arg(dir.path().join("v2.json"))
        .output()
        .expect("spawn"));
    produce(&broker, "rules", &[rule], &["--topic-partitions", "1"]);
    produce(&broker, "activity", &after, &[]);
    wait_for_decisions(&broker, "decisions", &reference, last - 60_000);
    let output = running.terminate();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let decisions = consume(&broker, "decisions");
    assert_eq!(sorted(&decisions), sorted(&reference));
    for d in decisions.iter().filter(|d| d["verdict"] == "threat") {
        // (A blocked user's events are decided `blocked`, by no model.)
        let ts = d["ts"].as_u64().unwrap();
        let expected = if ts < model_at { "default-trained-1" } else { "v2" };
        assert_eq!(d["model_version"], expected, "{d}");
        let rules: Vec<&str> = d["rules"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
        assert!(!rules.contains(&"any-share") || ts >= rule_at, "{d}");
    }
    assert!(decisions.iter().any(|d| d["model_version"] == "v2"));
    assert!(decisions.iter().any(|d| d["rules"].to_string().contains("any-share")));
}

#[test]
fn broker_down_at_start_and_restarted_mid_run_loses_nothing() {
    let broker = Broker::new();
    let dir = tempfile::tempdir().unwrap();
    let parts = generated(2, 40_000, 5);
    let last = max_ts(&parts);
    let files = write_files(dir.path(), "part", &parts.iter().map(|p| p.iter().map(|l| l.clone().into_bytes()).collect()).collect::<Vec<_>>());
    let reference = replay(&files, &dir.path().join("replay.jsonl"), &control_args());

    // The engine starts before the broker, then follows the topics while a producer sends the
    // events at a fixed rate.
    let metrics_port = free_ports(1)[0].to_string();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let running = Running::spawn(&mut engine(&broker, &["--idle-timeout", "1h", "--topic-partitions", "2", "-w", "2", "--metrics-addr", &metrics_addr]));
    std::thread::sleep(Duration::from_millis(3_000));
    broker.script(&["start", "sqlite"]);
    let producer = Running::spawn(
        threatflow()
            .args(["produce", "--kafka", &broker.address(), "--create-topics", "--topic-partitions", "2", "--rate", "8000"])
            .args(files.iter().flat_map(|f| ["--input".into(), f.display().to_string()])),
    );
    // Restart the broker while both are busy (the stream takes about 5 s).
    std::thread::sleep(Duration::from_millis(2_000));
    broker.script(&["stop"]);
    std::thread::sleep(Duration::from_millis(1_500));
    broker.script(&["start", "sqlite"]);
    let producer = producer.wait();
    assert!(producer.status.success(), "producer: {}", String::from_utf8_lossy(&producer.stderr));
    wait_for_decisions(&broker, "decisions", &reference, last - 60_000);
    // The live metrics: every record read, each partition caught up (lag 0 by the consumer's
    // statistics, position at its end), and the outage counted as client errors.
    let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let page = common::http_get(metrics_port.parse().unwrap(), "/metrics").map(|(_, body)| common::metric_samples(&body)).unwrap_or_default();
        let caught_up = (0..2).all(|p| {
            let partition = format!("{{partition=\"kafka:activity/{p}\"}}");
            page.get(&format!("threatflow_partition_lag_records{partition}")) == Some(&0.0)
                && page.get(&format!("threatflow_partition_position{partition}")) == Some(&(sizes[p] as f64))
                && page.get(&format!("threatflow_events_total{partition}")) == Some(&(sizes[p] as f64))
        });
        if caught_up || Instant::now() > deadline {
            break page;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(metrics.get("threatflow_partition_lag_records{partition=\"kafka:activity/0\"}") == Some(&0.0), "{sizes:?}: {metrics:#?}");
    assert!(metrics.get("threatflow_events_total{partition=\"kafka:activity/1\"}") == Some(&(sizes[1] as f64)), "{sizes:?}: {metrics:#?}");
    assert!(metrics.get("threatflow_kafka_client_errors_total").is_some_and(|n| *n >= 1.0), "{metrics:#?}");
    assert_eq!(metrics.get("threatflow_ready"), Some(&1.0));
    let output = running.terminate();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("retrying in"), "the engine says it waits for the broker at start: {log}");
    // (librdkafka's own words vary with the moment: transport failure, all brokers down...)
    assert!(log.contains("(librdkafka retries)"), "the engine says it lost the broker: {log}");
    // Exactly the replay's decisions, none twice: the idempotent producer's retries across the
    // restart are not written again.
    assert_eq!(sorted(&consume(&broker, "decisions")), sorted(&reference));
}

#[test]
fn unreachable_broker_and_missing_topic_are_clear_errors() {
    let broker = Broker::new();
    let run = |extra: &[&str]| {
        let output = threatflow().args(["run", "--kafka", &broker.address(), "--until-end"]).args(extra).output().expect("spawn");
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    let error = run(&["--kafka-connect-timeout", "1s"]);
    assert!(error.contains("gave up after 1s"), "{error}");
    broker.script(&["start", "memory"]);
    let error = run(&["--topic", "activity=nowhere"]);
    assert!(error.contains("Kafka topic \"nowhere\" does not exist"), "{error}");
    let error = run(&["--kafka-option", "no.such.setting=1"]);
    assert!(error.contains("no.such.setting"), "{error}");
    // Settings exactly-once rests on cannot be changed; secrets come from a file, never echoed.
    let error = run(&["--kafka-option", "enable.idempotence=false"]);
    assert!(error.contains("\"enable.idempotence\" cannot be changed"), "{error}");
    let options = broker.dir.path().join("client.properties");
    std::fs::write(&options, "# secrets\nsasl.password=hunter2\nno.such.setting=2\n").unwrap();
    let error = run(&["--kafka-options-file", options.to_str().unwrap()]);
    assert!(error.contains("no.such.setting") && !error.contains("hunter2"), "{error}");
}

/// Hostile records through the real broker: 170 KB of control characters (six times larger once
/// JSON-escaped), 900 KB of invalid UTF-8 (a third larger in base64) and an event dated 2100.
/// Each is a dead letter that fits the dead-letter topic (the two large ones truncated, with their
/// size and digest), and the job ends normally. (Before, the first one's dead letter exceeded the
/// producer's 1 MB limit: the job failed, and after a restart failed again on the same record.)
#[test]
fn hostile_records_become_dead_letters_that_fit_the_topic() {
    use sha2::Digest;
    let broker = Broker::start("memory");
    let dir = tempfile::tempdir().unwrap();
    let control = vec![1u8; 170_000];
    let mut binary = vec![0xffu8; 900_000];
    binary[0] = b'{';
    let future = br#"{"event_id":"evil-2100","ts":4102444800000,"user":"u1","action":"login"}"#.to_vec();
    let hostile = [control, binary, future];
    let mut records: Vec<Vec<u8>> = generated(1, 600, 3).remove(0).into_iter().map(String::into_bytes).collect();
    for (i, record) in hostile.iter().enumerate() {
        records.insert(100 + 200 * i, record.clone());
    }
    let files = write_files(dir.path(), "hostile", &[records]);
    produce(&broker, "activity", &files, &[]);

    let output = ok(output_within(&mut engine(&broker, &["--until-end", "--json"]), Duration::from_secs(120)));
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(report["rejected"], 3);
    assert_eq!(report["events"], 600);
    let dead = consume(&broker, "dead-letters");
    assert_eq!(dead.len(), 3, "{dead:#?}");
    for (letter, record) in dead.iter().zip(&hostile) {
        let kept = match (&letter["original"], &letter["original_base64"]) {
            (Value::String(text), _) => text.as_bytes().to_vec(),
            (_, Value::String(b64)) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
            }
            _ => panic!("no original: {letter}"),
        };
        assert!(!kept.is_empty() && record.starts_with(&kept), "the original's prefix");
        assert_eq!(letter["truncated"], kept.len() < record.len());
        assert_eq!(letter["size"], record.len());
        assert_eq!(letter["sha256"].as_str(), Some(hex::encode(sha2::Sha256::digest(record)).as_str()));
        assert!(letter.to_string().len() < 300_000, "a dead letter fits a Kafka message");
    }
    assert_eq!(dead.iter().map(|d| d["truncated"] == true).collect::<Vec<_>>(), [true, true, false]);
    assert!(dead[2]["reason"].as_str().unwrap().contains("implausibly far in the future"), "{}", dead[2]);
}

/// Records a checkpoint still had to read, deleted by the broker (retention) while the job was
/// down: the restored job says so in its log and in a dead letter naming the offsets and the
/// count, and reads on from the first record still there.
#[test]
fn input_deleted_by_retention_while_down_is_reported_as_lost() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let broker = Broker::start("memory");
    let dir = tempfile::tempdir().unwrap();
    let parts: Partitions = generated(1, 60_000, 5).into_iter().map(|p| p.into_iter().map(String::into_bytes).collect()).collect();
    let files = write_files(dir.path(), "part", &parts);
    produce(&broker, "activity", &files, &["--topic-partitions", "1"]);
    let checkpoints = dir.path().join("checkpoints");
    let command = || {
        let mut cmd = engine(&broker, &["--until-end", "--json", "--read-batch", "1024", "--checkpoint-interval", "50ms"]);
        cmd.arg("--checkpoint-dir").arg(&checkpoints);
        cmd
    };
    // (2 files: the checkpoint at 0 and one mid-stream.)
    assert!(!run_and_kill(&mut command(), || wait_for_checkpoints(&checkpoints, 2)), "killed mid-stream");
    let described = ok(threatflow().arg("checkpoints").arg(&checkpoints).output().expect("spawn"));
    let newest = parse_lines(&String::from_utf8_lossy(&described.stdout)).remove(0);
    let offset = newest["partitions"]["kafka:activity/0"]["position"]["Offset"].as_i64().expect("the checkpoint's offset");
    assert!(offset < 50_000, "the checkpoint is mid-stream: {offset}");
    let deleted_to = offset + 1_000;
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", broker.address()).create().expect("an admin client");
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset("activity", 0, rdkafka::Offset::Offset(deleted_to)).unwrap();
    let deleted = futures_executor::block_on(admin.delete_records(&list, &AdminOptions::new())).expect("records deleted");
    assert_eq!(deleted.elements()[0].offset(), rdkafka::Offset::Offset(deleted_to), "the new first offset");

    let output = ok(output_within(command().env("NO_COLOR", "1").env("RUST_LOG", "warn"), Duration::from_secs(120)));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("deleted by the broker (retention)") && log.contains("lost=1000"), "{log}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(report["events"].as_u64(), Some(60_000 - 1_000), "every record but the deleted ones is read once");
    let dead = consume(&broker, "dead-letters");
    assert_eq!(dead.len(), 1, "{dead:#?} {report}");
    let reason = dead[0]["reason"].as_str().unwrap();
    assert_eq!(reason, format!("offsets {offset} to {deleted_to} (1000 records) were deleted by the broker (retention) before they were read: lost"));
    assert_eq!(dead[0]["position"]["offset"].as_i64(), Some(offset));
}

/// With a control key, a job applies only the control updates signed with it: a forged rule sent
/// to the rules topic unsigned, and a signed one altered after signing, are refused and logged;
/// the signed rule applies.
#[test]
fn control_updates_must_be_signed_when_a_key_is_configured() {
    let broker = Broker::start("memory");
    let dir = tempfile::tempdir().unwrap();
    let parts: Partitions = generated(1, 20_000, 9).into_iter().map(|p| p.into_iter().map(String::into_bytes).collect()).collect();
    let files = write_files(dir.path(), "part", &parts);
    produce(&broker, "activity", &files, &["--topic-partitions", "1"]);
    let key = dir.path().join("control.key");
    std::fs::write(&key, "a shared secret that only operators hold\n").unwrap();
    let key = key.to_str().unwrap();
    let sign = |rule: &str| {
        let path = dir.path().join("update.json");
        std::fs::write(&path, rule).unwrap();
        let output = ok(threatflow().args(["sign-update", "--control-key-file", key]).arg(&path).output().expect("spawn"));
        String::from_utf8(output.stdout).unwrap()
    };
    let signed = sign(r#"{"id": "signed-share", "effective_from": 0, "when": {"action": ["share_external"]}}"#);
    let tampered = sign(r#"{"id": "tampered-login", "effective_from": 0, "when": {"action": ["share_external"]}}"#).replace("share_external", "login");
    let forged = r#"{"id": "forged-login", "effective_from": 0, "when": {"action": ["login"]}}"#;
    let records = [forged, tampered.trim_end(), signed.trim_end()].map(|r| r.as_bytes().to_vec());
    let updates = write_files(dir.path(), "rules", &[records.to_vec()]);
    produce(&broker, "rules", &updates, &["--topic-partitions", "1"]);

    let output = ok(output_within(
        engine(&broker, &["--until-end", "--json", "--control-key-file", key]).env("NO_COLOR", "1").env("RUST_LOG", "warn"),
        Duration::from_secs(120),
    ));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("rules/0@0") && log.contains("unsigned updates are refused"), "{log}");
    assert!(log.contains("rules/0@1") && log.contains("signature does not verify"), "{log}");
    let decisions = consume(&broker, "decisions");
    let with = |rule: &str| decisions.iter().filter(|d| d["rules"].as_array().unwrap().iter().any(|r| r == rule)).count();
    assert!(with("signed-share") > 0, "the signed rule applies");
    assert_eq!((with("forged-login"), with("tampered-login")), (0, 0), "the forged and the tampered rule do not");
}

/// Threat-intel indicators through the intel topic (`--intel-topic`): a JSON-lines record and a
/// STIX 2.1 bundle published as messages decide exactly as the same indicators read from files by
/// `replay`: the same live matches and the same retro decisions, on two workers.
#[test]
fn indicators_through_the_intel_topic_decide_as_files_do() {
    let broker = Broker::start("memory");
    let dir = tempfile::tempdir().unwrap();
    let generated = generated(2, 20_000, 21);
    let parts: Partitions = generated.iter().map(|p| p.iter().map(|l| l.clone().into_bytes()).collect()).collect();
    let files = write_files(dir.path(), "part", &parts);
    produce(&broker, "activity", &files, &["--topic-partitions", "2"]);
    // Two addresses the events use often, indicated from a quarter and from the middle of the run.
    let events: Vec<Value> = generated.iter().flatten().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut by_ip: std::collections::BTreeMap<&str, usize> = Default::default();
    for e in &events {
        *by_ip.entry(e["src_ip"].as_str().unwrap_or_default()).or_default() += 1;
    }
    let mut common: Vec<(usize, &str)> = by_ip.into_iter().map(|(ip, n)| (n, ip)).collect();
    common.sort();
    let first = events.iter().map(|e| e["ts"].as_u64().unwrap()).min().unwrap();
    let last = max_ts(&generated);
    let (quarter, middle) = (first + (last - first) / 4, first + (last - first) / 2);
    let record = serde_json::json!({"type": "ip", "value": common[common.len() - 1].1, "effective_from": middle, "confidence": 90, "source": "team"});
    // (A source named in the bundle: without one, an indicator's source is where it was read.)
    let bundle = serde_json::json!({"type": "bundle", "id": "bundle--k", "objects": [
        {"type": "identity", "id": "identity--cert", "name": "CERT"},
        {"type": "indicator", "id": "indicator--k", "pattern_type": "stix", "created_by_ref": "identity--cert",
        "pattern": format!("[ipv4-addr:value = '{}']", common[common.len() - 2].1), "valid_from": quarter, "confidence": 50}]});
    let intel = dir.path().join("intel");
    std::fs::create_dir_all(&intel).unwrap();
    std::fs::write(intel.join("team.jsonl"), format!("{record}\n")).unwrap();
    std::fs::write(intel.join("cert.json"), format!("{bundle}\n")).unwrap();
    produce(&broker, "intel", &[intel.join("team.jsonl"), intel.join("cert.json")], &["--topic-partitions", "1"]);

    let mut args = control_args();
    args.extend(["--retro-window", "1h", "--intel"].map(String::from));
    args.push(intel.display().to_string());
    let reference = replay(&files, &dir.path().join("reference.jsonl"), &args);
    let retro = reference.iter().filter(|d| d["verdict"] == "retro").count();
    let live = reference.iter().filter(|d| d["verdict"] == "threat" && !d["intel"].is_null()).count();
    assert!(retro > 0 && live > 0, "{retro} retro and {live} live decisions");

    ok(output_within(&mut engine(&broker, &["--until-end", "-w", "2", "--intel-topic", "--retro-window", "1h"]), Duration::from_secs(120)));
    let decisions = consume(&broker, "decisions");
    let (got, expected) = (sorted(&decisions), sorted(&reference));
    let only = |a: &[String], b: &[String]| a.iter().filter(|x| b.binary_search(x).is_err()).take(3).map(|x| x.chars().take(400).collect::<String>()).collect::<Vec<_>>();
    assert!(got == expected, "{} vs {} decisions; only through Kafka: {:?}; only in the replay: {:?}", got.len(), expected.len(), only(&got, &expected), only(&expected, &got));
}

/// A model update to `v2` at `at` (an artifact beside it, stricter on deletes and downloads than
/// the default) and a rule from `rule_at` matching every external share, as files.
fn control_updates(dir: &Path, at: u64, rule_at: u64) -> (PathBuf, PathBuf) {
    let artifact = dir.join("v2.json");
    std::fs::write(
        &artifact,
        r#"{"version":"v2","features":["deletes_10m","download_bytes_1h"],"weights":[2.0,0.5],"bias":-9.0,"threshold":0.5}"#,
    )
    .unwrap();
    let sha = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(std::fs::read(&artifact).unwrap()))
    };
    let update = dir.join("update.jsonl");
    let update_line = serde_json::json!({"version": "v2", "uri": artifact.display().to_string(), "sha256": sha, "effective_from": at});
    std::fs::write(&update, format!("{update_line}\n")).unwrap();
    let rule = dir.join("rule.json");
    let rule_line = serde_json::json!({"id": "any-share", "effective_from": rule_at, "when": {"action": ["share_external"]}});
    std::fs::write(&rule, format!("{rule_line}\n")).unwrap();
    (update, rule)
}

#[test]
fn kill_9_during_a_kafka_run_loses_and_duplicates_nothing() {
    let broker = Broker::start("memory");
    let dir = tempfile::tempdir().unwrap();
    let generated = generated(4, 120_000, 13);
    let first = serde_json::from_str::<Value>(&generated[0][0]).unwrap()["ts"].as_u64().unwrap();
    let last = max_ts(&generated);
    // Events that are decided, to be sent twice: an input may repeat an event id, and each copy
    // is decided and written once (two copies of an id in the outputs read back after a restart
    // must not lead to a third, nor one copy suppress the other).
    let plain = write_files(dir.path(), "plain", &generated.iter().map(|p| p.iter().map(|l| l.clone().into_bytes()).collect()).collect::<Vec<_>>());
    let decided: BTreeSet<String> =
        replay(&plain, &dir.path().join("plain.jsonl"), &control_args()).iter().map(|d| d["event_id"].as_str().unwrap().to_string()).collect();
    // Malformed records mixed in, for the dead-letter topic.
    let parts: Partitions = generated
        .iter()
        .enumerate()
        .map(|(p, lines)| {
            let mut records = Vec::new();
            for (i, line) in lines.iter().enumerate() {
                if i % 10_000 == 77 {
                    records.push(format!("not json {p}/{i}").into_bytes());
                }
                records.push(line.clone().into_bytes());
                let id = serde_json::from_str::<Value>(line).unwrap()["event_id"].as_str().unwrap().to_string();
                if i % 2 == 0 && decided.contains(&id) {
                    records.push(line.clone().into_bytes());
                }
            }
            records
        })
        .collect();
    let malformed = parts.iter().flatten().filter(|r| r.starts_with(b"not json")).count();
    let files = write_files(dir.path(), "part", &parts);
    // A model and a rule update through their topics, published before the run: they must keep
    // applying exactly from their `effective_from` across restarts.
    let (update, rule) = control_updates(dir.path(), first + (last - first) / 2, first + 3 * (last - first) / 4);
    produce(&broker, "activity", &files, &["--topic-partitions", "4"]);
    produce(&broker, "models", std::slice::from_ref(&update), &["--topic-partitions", "1"]);
    produce(&broker, "rules", std::slice::from_ref(&rule), &["--topic-partitions", "1"]);

    let mut args = control_args();
    args.extend(["--model-updates".into(), update.display().to_string(), "--rules".into(), rule.display().to_string()]);
    let reference = replay(&files, &dir.path().join("replay.jsonl"), &args);
    assert!(reference.iter().any(|d| d["model_version"] == "v2") && reference.iter().any(|d| d["rules"].to_string().contains("any-share")));
    let mut seen = BTreeSet::new();
    let repeated = reference.iter().filter(|d| !seen.insert(d["decision_id"].as_str().unwrap())).count();
    assert!(repeated > 50, "decisions of repeated events: {repeated}");
    let mut expected_alerts = Vec::new();
    let mut expected_actions = Vec::new();
    for d in &reference {
        let id = d["decision_id"].as_str().unwrap().to_string();
        for action in d["actions"].as_array().unwrap() {
            match action.as_str().unwrap() {
                "alert" => expected_alerts.push(id.clone()),
                other => expected_actions.push(format!("{id}/{other}")),
            }
        }
    }
    expected_alerts.sort();
    expected_actions.sort();

    // Seeds 0 to 9 on one process; seed 10 on a two-process cluster, one process killed.
    let mut resumed_mid_stream = 0;
    for seed in 0..11u64 {
        let checkpoints = dir.path().join(format!("checkpoints-{seed}"));
        let topic = |role: &str| format!("{role}-{seed}");
        let command = |workers: &str, cluster: &[&str]| {
            // Small reads, so that event time advances in many steps and checkpoints fall mid-stream.
            let args = ["--until-end", "--json", "--topic-partitions", "2", "--read-batch", "2048", "-w", workers, "--checkpoint-interval", "100ms"];
            let mut cmd = engine(&broker, &args);
            cmd.arg("--checkpoint-dir").arg(&checkpoints).args(cluster);
            for role in ["decisions", "alerts", "actions", "dead-letters"] {
                cmd.args(["--topic", &format!("{role}={}", topic(role))]);
            }
            // Seeds 5 to 9 write the alerts as OCSF findings: read back by their `finding_info.uid`.
            if (5..10).contains(&seed) {
                cmd.args(["--alerts-format", "ocsf"]);
            }
            cmd
        };
        let mut rng = random(seed);
        let mut kills = 0;
        let output = if seed < 10 {
            // Up to three kills, each 0.9 to 2.1 s after the start (a run takes about 2 s),
            // alternating 1 and 2 workers; odd seeds kill the first run just after its first
            // checkpoint (beside the one at 0) instead.
            for attempt in 0..3 {
                let workers = if (seed + attempt) % 2 == 0 { "1" } else { "2" };
                let delay = Duration::from_millis(900 + rng.next().unwrap() % 1_200);
                let after_checkpoint = seed % 2 == 1 && attempt == 0;
                // (2 files: the checkpoint at 0 and a first one mid-stream.)
                let wait = || if after_checkpoint { wait_for_checkpoints(&checkpoints, 2) } else { std::thread::sleep(delay) };
                if run_and_kill(&mut command(workers, &[]), wait) {
                    break;
                }
                kills += 1;
            }
            ok(output_within(&mut command("2", &[]), Duration::from_secs(120)))
        } else {
            let hosts = dir.path().join("hosts");
            let ports = free_ports(2);
            std::fs::write(&hosts, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).unwrap();
            let hosts = hosts.display().to_string();
            let process = |p: &str| command("1", &["-n", "2", "-p", p, "-h", &hosts]);
            // Process 1 is killed; process 0, which loses its peer, is killed too (an operator
            // restarts the cluster). Timely's network threads panic at a peer's death: no log.
            let p1 = Running::spawn(process("1").stderr(Stdio::null()));
            let p0 = Running::spawn(process("0").stderr(Stdio::null()));
            wait_for_checkpoints(&checkpoints, 2);
            drop(p1);
            std::thread::sleep(Duration::from_millis(300));
            drop(p0);
            kills = 1;
            let p1 = Running::spawn(&mut process("1"));
            let output = ok(output_within(&mut process("0"), Duration::from_secs(120)));
            assert!(p1.wait().status.success(), "process 1 of the restarted cluster");
            output
        };
        // (Timely's cluster start prints a line before the report.)
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("seed {seed}: no JSON report ({e}): {stdout}"));
        let restored_from = report["checkpoints"]["restored_from"].as_u64();
        if restored_from.is_some_and(|f| f > 0) {
            resumed_mid_stream += 1;
        }

        // Every record exactly once: the multisets equal the uninterrupted replay's.
        let decisions = consume(&broker, &topic("decisions"));
        assert_eq!(decisions.len(), reference.len(), "seed {seed}: no decision lost or repeated");
        assert_eq!(sorted(&decisions), sorted(&reference), "seed {seed}");
        let ids = |role: &str, id: &dyn Fn(&Value) -> String| {
            let mut ids: Vec<String> = consume(&broker, &topic(role)).iter().map(id).collect();
            ids.sort();
            ids
        };
        let decision_id = |v: &Value| v["decision_id"].as_str().unwrap().to_string();
        let alert_id = |v: &Value| v["decision_id"].as_str().or(v["finding_info"]["uid"].as_str()).unwrap().to_string();
        assert_eq!(ids("alerts", &alert_id), expected_alerts, "seed {seed}: alerts");
        let action_id = |v: &Value| format!("{}/{}", decision_id(v), v["action"].as_str().unwrap());
        assert_eq!(ids("actions", &action_id), expected_actions, "seed {seed}: actions");
        let position = |v: &Value| v["position"].to_string();
        let dead = ids("dead-letters", &position);
        assert_eq!(dead.len(), malformed, "seed {seed}: dead letters");
        assert_eq!(dead.iter().collect::<BTreeSet<_>>().len(), malformed, "seed {seed}: no dead letter twice");
        eprintln!("seed {seed}: {kills} kills, resumed from {restored_from:?}, every output exactly once");
        if seed == 10 {
            assert!(restored_from.is_some_and(|f| f > 0), "the cluster resumed mid-stream");
        }
    }
    assert!(resumed_mid_stream >= 5, "most runs resumed from a checkpoint mid-stream: {resumed_mid_stream}");
}

/// `train --kafka` reads the activity topic up to its end and learns what `train --input` learns
/// from the same records in files (the same partitions, so the same event times).
#[test]
fn train_reads_a_topic_as_it_reads_files() {
    let broker = Broker::start("memory");
    let dir = tempfile::tempdir().unwrap();
    let config = GeneratorConfig { seed: 21, users: 300, events: 40_000, partitions: 2, ..GeneratorConfig::default() };
    let (parts, labels) = generate_all(&config);
    let parts: Vec<Vec<Vec<u8>>> = parts.iter().map(|p| p.iter().map(|e| e.to_json().into_bytes()).collect()).collect();
    let files = write_files(dir.path(), "history", &parts);
    let labels_path = dir.path().join("labels.jsonl");
    std::fs::write(&labels_path, labels.iter().map(|l| serde_json::to_string(l).unwrap() + "\n").collect::<String>()).unwrap();
    produce(&broker, "history", &files, &["--topic-partitions", "2"]);
    let train = |name: &str, source: &[String]| {
        let out = dir.path().join(format!("{name}.json"));
        ok(threatflow()
            .args(["train", "--version", "k1", "--alert-budget", "5", "-w", "2"])
            .args(source)
            .arg("--labels")
            .arg(&labels_path)
            .arg("--out")
            .arg(&out)
            .output()
            .expect("spawn"));
        let artifact: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        (artifact["weights"].clone(), artifact["bias"].clone(), artifact["threshold"].clone(), artifact["training"]["events"].clone())
    };
    let from_files = train("files", &files.iter().flat_map(|f| ["--input".to_string(), f.display().to_string()]).collect::<Vec<_>>());
    let from_topic = train("topic", &["--kafka".into(), broker.address(), "--topic".into(), "activity=history".into()]);
    assert_eq!(from_files.3, 40_000);
    assert_eq!(from_topic, from_files);
}
