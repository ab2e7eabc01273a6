//! The ML loop as users run it: `train` on history, `evaluate`, `model publish` to a running engine,
//! artifacts on local paths and on an S3 endpoint (a real S3-compatible server on loopback).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use threatflow::ingest::generator::GeneratorConfig;
use threatflow::detect::model::Model;
use threatflow::job::SourceSpec;
use threatflow::training::dataset::{extract, ExtractSpec};
use threatflow::training::{evaluate::evaluate, train, TrainSpec};

mod common;
use common::{free_ports, lines, moto_server, ok, output_within, threatflow};

/// Events and their ground truth from the generator, as files.
fn generated(dir: &Path, seed: u64, users: u64, events: u64) -> (PathBuf, PathBuf) {
    let (out, labels) = (dir.join(format!("events-{seed}.jsonl")), dir.join(format!("labels-{seed}.jsonl")));
    ok(threatflow()
        .args(["generate", "--users", &users.to_string(), "--events", &events.to_string(), "--seed", &seed.to_string()])
        .arg("--out")
        .arg(&out)
        .arg("--labels")
        .arg(&labels)
        .output()
        .expect("spawn"));
    (out, labels)
}

fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).expect("read")))
}

/// Train/serve parity: the features `train` computed for each event are exactly the features the
/// served decisions carry for it, with the trained model in force, on 2 workers for training and
/// 1 for serving.
#[test]
fn features_computed_by_train_equal_the_features_served_decisions_carry() {
    let dir = tempfile::tempdir().unwrap();
    let (events, labels) = generated(dir.path(), 3, 400, 80_000);
    let (model, features) = (dir.path().join("model.json"), dir.path().join("features.jsonl"));
    let out = ok(threatflow()
        .args(["train", "-w", "2", "--version", "parity-1", "--alert-budget", "5"])
        .arg("--input")
        .arg(&events)
        .arg("--labels")
        .arg(&labels)
        .arg("--out")
        .arg(&model)
        .arg("--features-out")
        .arg(&features)
        .output()
        .expect("spawn"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&sha256_of(&model)), "train prints the artifact's sha256: {stdout}");
    let beside = std::fs::read_to_string(model.with_extension("json.sha256")).expect("the sha256 file");
    assert_eq!(beside, format!("{}  model.json\n", sha256_of(&model)));

    let trained: BTreeMap<String, Value> =
        lines(&features).into_iter().map(|f| (f["event_id"].as_str().unwrap().to_string(), f)).collect();
    assert_eq!(trained.len(), 80_000, "one row per event");
    let decisions_path = dir.path().join("decisions.jsonl");
    ok(threatflow()
        .args(["replay", "-w", "1", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&events)
        .arg("--output")
        .arg(&decisions_path)
        .output()
        .expect("spawn"));
    let decisions = lines(&decisions_path);
    assert!(decisions.len() > 50, "the trained model flags events: {}", decisions.len());
    let bias = serde_json::from_slice::<Value>(&std::fs::read(&model).unwrap()).unwrap()["bias"].as_f64().unwrap();
    for d in &decisions {
        assert_eq!(d["model_version"], "parity-1");
        // The explanation adds up: bias + the features' contributions is the score's logit.
        let score = d["score"].as_f64().unwrap();
        let sum: f64 = d["contributions"].as_array().unwrap().iter().map(|c| c[1].as_f64().unwrap()).sum();
        // (Scores within 1e-6 of 1 leave too few digits in `1 - score` to check the logit.)
        assert!(score > 0.999_999 || ((score / (1.0 - score)).ln() - (bias + sum)).abs() < 1e-6, "{d}");
        let row = &trained[d["event_id"].as_str().unwrap()];
        assert_eq!(row["features"], d["features"], "{d}");
        assert_eq!(row["ts"], d["ts"], "{d}");
    }
}

/// Trained on one generator seed and measured on another, the trained model finds more of the
/// attacks than the hand-set one at the hand-set one's alert load.
#[test]
fn a_trained_model_beats_the_hand_set_one_on_a_held_out_seed() {
    let data = |seed| {
        let generator = GeneratorConfig { users: 2_000, events: 400_000, seed, ..GeneratorConfig::default() };
        extract(timely::Config::process(2), ExtractSpec::new(SourceSpec::Generator(generator))).expect("features")
    };
    let history = data(11);
    let trained = train(&history, &history.ground_truth, &TrainSpec::new("trained")).expect("train");
    let trained = Model::from_bytes(&trained.bytes, Some(&trained.sha256)).expect("the artifact loads");
    let hand_set = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/models/handset.json")).expect("the hand-set model");
    let hand_set = Model::from_bytes(&hand_set, None).expect("the hand-set model loads");

    let held_out = data(12);
    let hand = evaluate(&held_out, &held_out.ground_truth, &hand_set);
    let ours = evaluate(&held_out, &held_out.ground_truth, &trained);
    let budget = hand.overall.alerts_per_1000;
    assert!(budget > 0.0, "the hand-set model flags something: {}", hand.table());
    let (hand_recall, our_recall) = (hand.recall_at_budget(budget).unwrap(), ours.recall_at_budget(budget).unwrap());
    assert!(
        our_recall > hand_recall,
        "recall at {budget:.2} alerts per 1,000: trained {our_recall:.3}, hand-set {hand_recall:.3}\n{}\n{}",
        hand.table(),
        ours.table()
    );
    assert!(ours.overall.pr_auc > hand.overall.pr_auc, "{}\n{}", hand.table(), ours.table());
}

/// `evaluate` prints the table per scenario and draws both plots.
#[test]
fn evaluate_reports_per_scenario_and_draws_plots() {
    let dir = tempfile::tempdir().unwrap();
    let plots = dir.path().join("plots");
    let out = ok(threatflow()
        .args(["evaluate", "--users", "500", "--events", "100000", "--seed", "5", "--json", "--alert-budget", "2"])
        .arg("--plots")
        .arg(&plots)
        .output()
        .expect("spawn"));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["model_version"], "default-trained-1");
    assert_eq!(report["overall"]["events"], 100_000);
    let scenarios = report["scenarios"].as_object().unwrap();
    assert_eq!(scenarios.len(), 6, "{report}");
    let malicious: u64 = scenarios.values().map(|s| s["events"].as_u64().unwrap()).sum();
    assert_eq!(report["overall"]["malicious"].as_u64(), Some(malicious));
    assert!(report["recall_at_budget"]["recall"].as_f64().is_some(), "{report}");
    for name in ["pr_curve.svg", "score_histogram.svg"] {
        let svg = std::fs::read_to_string(plots.join(name)).expect(name);
        assert!(svg.starts_with("<svg") && svg.contains("<path") || svg.contains("<polyline"), "{name}");
    }
}

/// Updates naming a corrupt artifact, a wrong sha256, an unknown feature or a missing file are
/// rejected with a clear log line, and the model in force stays in force.
#[test]
fn bad_artifacts_are_rejected_and_the_previous_model_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (events, _) = generated(dir.path(), 4, 300, 60_000);
    let all = lines(&events);
    let ts = |i: usize| all[i]["ts"].as_u64().unwrap();
    let (t1, t_bad) = (ts(10_000), ts(30_000));
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap();
        sha256_of(&dir.path().join(name))
    };
    let good = write("v1.json", r#"{"version":"v1","features":["distinct_resources_1h"],"weights":[10.0],"bias":-1.0,"threshold":0.5}"#);
    let corrupt = write("corrupt.json", r#"{"version":"v2","features":["distinct_resources_1h"],"weig"#);
    let unknown = write("unknown.json", r#"{"version":"v3","features":["shoe_size"],"weights":[1.0],"bias":0.0,"threshold":0.5}"#);
    write("other.json", r#"{"version":"v4","features":["deletes_10m"],"weights":[1.0],"bias":-50.0,"threshold":0.5}"#);
    let update = |version: &str, uri: &str, sha: &str, at: u64| {
        format!("{{\"version\":\"{version}\",\"uri\":\"{uri}\",\"sha256\":\"{sha}\",\"effective_from\":{at}}}\n")
    };
    let updates = dir.path().join("updates.jsonl");
    let text = update("v1", "v1.json", &good, t1)
        + &update("v2", "corrupt.json", &corrupt, t_bad)
        + &update("v3", "unknown.json", &unknown, t_bad)
        + &update("v4", "other.json", &"0".repeat(64), t_bad)
        + &update("v5", "missing.json", &good, t_bad)
        + "not json\n";
    std::fs::write(&updates, text).unwrap();
    let out_path = dir.path().join("decisions.jsonl");
    let output = ok(threatflow()
        .args(["replay", "-w", "2", "--input"])
        .arg(&events)
        .arg("--output")
        .arg(&out_path)
        .arg("--model-updates")
        .arg(&updates)
        .output()
        .expect("spawn"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "model v2 rejected, the previous model stays in force: model artifact corrupt.json: model artifact is not valid JSON",
        "model v3 rejected, the previous model stays in force: model artifact unknown.json: model v3: unknown feature `shoe_size`",
        "model v4 rejected, the previous model stays in force: model artifact other.json: sha256 mismatch",
        "model v5 rejected, the previous model stays in force: fetching the model artifact: reading",
        "updates.jsonl:6",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    let decisions = lines(&out_path);
    assert!(decisions.iter().any(|d| d["ts"].as_u64().unwrap() >= t_bad), "decisions after the bad updates");
    for d in &decisions {
        let ts = d["ts"].as_u64().unwrap();
        assert!(ts >= t1, "no model before v1, and no rules: nothing to decide {d}");
        assert_eq!(d["model_version"], "v1", "{d}");
    }
}

/// `model publish --to FILE` while the engine follows that file and reads a stream from its
/// standard input (as from `tail -f ... |`): every decision before `effective_from` names v1 and
/// every one from it on names v2, on 1 and 2 workers and on a 2-process cluster.
#[test]
fn a_model_published_while_running_applies_exactly_from_its_effective_from() {
    let dir = tempfile::tempdir().unwrap();
    let (events, _) = generated(dir.path(), 8, 2_000, 200_000);
    let text = std::fs::read_to_string(&events).unwrap();
    let all: Vec<&str> = text.lines().collect();
    let ts = |line: &str| serde_json::from_str::<Value>(line).unwrap()["ts"].as_u64().unwrap();
    // The stream is sent in two halves; v2 is published in between, effective at 3/4.
    let (first_half, second_half) = all.split_at(all.len() / 2);
    let switch = ts(all[all.len() * 3 / 4]);
    let v1 = dir.path().join("v1.json");
    let v2 = dir.path().join("v2.json");
    // v1 flags 3 or more failed logins in 5 minutes, v2 2 or more.
    std::fs::write(&v1, r#"{"version":"v1","features":["failed_logins_5m"],"weights":[10.0],"bias":-13.8,"threshold":0.5}"#).unwrap();
    std::fs::write(&v2, r#"{"version":"v2","features":["failed_logins_5m"],"weights":[10.0],"bias":-10.9,"threshold":0.5}"#).unwrap();
    for (case, cluster) in [("w1", vec![vec!["-w", "1"]]), ("w2", vec![vec!["-w", "2"]]), ("n2", vec![vec!["-n", "2", "-p", "0"], vec!["-n", "2", "-p", "1"]])] {
        let updates = dir.path().join(format!("updates-{case}.jsonl"));
        let output = dir.path().join(format!("decisions-{case}.jsonl"));
        let hostfile = dir.path().join(format!("hosts-{case}"));
        std::fs::write(&hostfile, free_ports(2).iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).unwrap();
        let mut processes: Vec<Child> = cluster
            .iter()
            .map(|args| {
                threatflow()
                    .args(["replay", "--input", "/dev/stdin", "--read-batch", "4096"])
                    .arg("--model")
                    .arg(&v1)
                    .arg("--model-updates")
                    .arg(&updates)
                    .arg("--output")
                    .arg(&output)
                    .arg("-h")
                    .arg(&hostfile)
                    .args(args)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        let mut stdin = processes[0].stdin.take().expect("stdin");
        for line in first_half {
            writeln!(stdin, "{line}").unwrap();
        }
        stdin.flush().unwrap();
        // The engine is deciding the first half: wait for its first decisions, then publish.
        let deadline = Instant::now() + Duration::from_secs(60);
        while lines_so_far(&output).is_empty() {
            assert!(Instant::now() < deadline, "{case}: no decision after 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        ok(threatflow()
            .args(["model", "publish", "--version", "v2", "--effective-from", &switch.to_string(), "--to"])
            .arg(&updates)
            .arg("--uri")
            .arg(&v2)
            .output()
            .expect("spawn"));
        for line in second_half {
            writeln!(stdin, "{line}").unwrap();
        }
        drop(stdin);
        for mut process in processes.drain(..) {
            let status = process.wait().expect("wait");
            let mut stderr = String::new();
            process.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
            assert!(status.success(), "{case}: {stderr}");
            assert!(!stderr.contains("arrived after its effective_from"), "{case}: {stderr}");
        }
        let decisions = lines(&output);
        let versions: BTreeSet<&str> = decisions.iter().map(|d| d["model_version"].as_str().unwrap()).collect();
        assert_eq!(versions, BTreeSet::from(["v1", "v2"]), "{case}: both models decided");
        for d in &decisions {
            let expected = if d["ts"].as_u64().unwrap() < switch { "v1" } else { "v2" };
            assert_eq!(d["model_version"], expected, "{case}: switch at {switch}: {d}");
        }
    }
}

/// The decisions written so far (the last line may be incomplete).
fn lines_so_far(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// An S3-compatible server (moto) on a free loopback port, stopped when dropped.
struct S3Server {
    child: Child,
    endpoint: String,
}

impl S3Server {
    fn start() -> S3Server {
        let port = free_ports(1)[0];
        let child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning moto_server");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the S3 server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        S3Server { child, endpoint: format!("http://127.0.0.1:{port}") }
    }

    /// Creates a bucket (a plain `PUT /BUCKET`; the test server checks no signature).
    fn create_bucket(&self, bucket: &str) {
        let address = self.endpoint.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        write!(stream, "PUT /{bucket} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }

    /// A `threatflow` command that reaches this server for `s3://` locations.
    fn threatflow(&self) -> Command {
        let mut command = threatflow();
        command
            .env("AWS_ENDPOINT", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1");
        command
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `train --out s3://...` writes the artifact and its sha256 to the bucket; `model publish` and the
/// engine fetch it from there; a location with nothing behind it is rejected.
#[test]
fn models_travel_through_an_s3_bucket() {
    let s3 = S3Server::start();
    s3.create_bucket("models");
    let dir = tempfile::tempdir().unwrap();
    let (events, labels) = generated(dir.path(), 6, 300, 60_000);
    ok(s3
        .threatflow()
        .args(["train", "--version", "s3-1", "--out", "s3://models/threat/s3-1.json", "--alert-budget", "5"])
        .arg("--input")
        .arg(&events)
        .arg("--labels")
        .arg(&labels)
        .output()
        .expect("spawn"));
    let all = lines(&events);
    let switch = all[all.len() / 2]["ts"].as_u64().unwrap();
    let updates = dir.path().join("updates.jsonl");
    for (version, uri) in [("s3-1", "s3://models/threat/s3-1.json"), ("s3-2", "s3://models/threat/missing.json")] {
        let out = s3
            .threatflow()
            .args(["model", "publish", "--version", version, "--uri", uri, "--effective-from", &switch.to_string(), "--to"])
            .arg(&updates)
            .output()
            .expect("spawn");
        assert_eq!(out.status.success(), version == "s3-1", "{}", String::from_utf8_lossy(&out.stderr));
    }
    // The missing one, written by hand (publish refuses it): the engine must reject it too.
    let mut file = std::fs::OpenOptions::new().append(true).open(&updates).unwrap();
    writeln!(file, r#"{{"version":"s3-2","uri":"s3://models/threat/missing.json","sha256":"{}","effective_from":{}}}"#, "0".repeat(64), switch + 1)
        .unwrap();
    let decisions = dir.path().join("decisions.jsonl");
    let out = output_within(
        s3.threatflow().args(["replay", "-w", "2", "--input"]).arg(&events).arg("--output").arg(&decisions).arg("--model-updates").arg(&updates),
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("model s3-2 rejected") && stderr.contains("s3://models/threat/missing.json"), "{stderr}");
    let decisions = lines(&decisions);
    assert!(!decisions.is_empty());
    for d in &decisions {
        assert!(d["ts"].as_u64().unwrap() >= switch, "{d}");
        assert_eq!(d["model_version"], "s3-1", "{d}");
    }
}
