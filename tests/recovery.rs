//! Checkpoints and recovery, by killing the engine: `kill -9` at a random moment of a run with
//! `--checkpoint-dir`, then the same command again (on the same or another worker count) until it
//! finishes, on one process or a two-process cluster. The decisions and dead letters must be the
//! uninterrupted run's, byte for byte: no loss, no duplicate (an enrichment database replaced
//! mid-stream included). A newest checkpoint that cannot be
//! used (damaged, or its outputs lost) must make the engine fall back to the previous one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;
use common::{checkpoint_files, lines, ok, parse_lines, random, run_and_kill, threatflow, wait_for_checkpoints};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Generated events with malformed lines mixed in.
fn input(dir: &Path) -> std::path::PathBuf {
    input_of(dir, 300_000)
}

/// `events` generated events (2,000 users) with malformed lines mixed in: single ones, and every
/// 50,000 events a flood of 40 (more than the replay's dead-letter burst: a summary each).
fn input_of(dir: &Path, count: u64) -> std::path::PathBuf {
    let events = dir.join("events.jsonl");
    ok(threatflow()
        .args(["generate", "--users", "2000", "--events", &count.to_string(), "--seed", "3", "--out"])
        .arg(&events)
        .output()
        .expect("spawn"));
    let text = std::fs::read_to_string(&events).unwrap();
    let mut mixed = String::with_capacity(text.len() + 1024);
    for (i, line) in text.lines().enumerate() {
        if i % 20_000 == 7 {
            mixed.push_str(&format!("not json {i}\n"));
        }
        if i % 50_000 == 25_011 {
            (0..40).for_each(|j| mixed.push_str(&format!("flood {i}-{j}\n")));
        }
        mixed.push_str(line);
        mixed.push('\n');
    }
    std::fs::write(&events, mixed).unwrap();
    // An ASN database, replaced by another in the middle of the stream (a control update kept in
    // the checkpoints by location and digest): every decision names the one in force at its time.
    let times: Vec<u64> = text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["ts"].as_u64()).collect();
    let middle = (times.iter().min().unwrap() + times.iter().max().unwrap()) / 2;
    for (file, first) in [("old-asn.csv", 64_500), ("new-asn.csv", 65_000)] {
        let ranges: String = threatflow::ingest::generator::country_networks()
            .iter()
            .enumerate()
            .map(|(i, (country, network, len))| {
                let last = std::net::Ipv4Addr::from(u32::from(*network) + (1 << (32 - len)) - 1);
                format!("{network},{last},{},{country} networks\n", first + i)
            })
            .collect();
        std::fs::write(dir.join(file), ranges).unwrap();
    }
    let new_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(dir.join("new-asn.csv")).unwrap()))
    };
    let update = serde_json::json!({"database": "asn", "uri": "new-asn.csv", "sha256": new_sha, "effective_from": middle});
    std::fs::write(dir.join("updates.jsonl"), format!("{update}\n")).unwrap();
    // Threat-intel indicators: addresses and a user arriving mid-stream (retro-matched against the
    // six hours before), an AS of the replaced database, a network that expires. The live matches and
    // the retro history are state too.
    let mut by_ip: std::collections::BTreeMap<String, usize> = Default::default();
    for line in text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
        *by_ip.entry(line["src_ip"].as_str().unwrap_or_default().to_string()).or_default() += 1;
    }
    let mut common: Vec<(usize, String)> = by_ip.into_iter().map(|(ip, n)| (n, ip)).collect();
    common.sort();
    let quarter = (times.iter().max().unwrap() - times.iter().min().unwrap()) / 4;
    let first = *times.iter().min().unwrap();
    let intel = [
        serde_json::json!({"type": "ip", "value": common[common.len() - 1].1, "effective_from": first + quarter, "confidence": 90}),
        serde_json::json!({"type": "ip", "value": common[common.len() - 20].1, "effective_from": middle, "confidence": 40}),
        serde_json::json!({"type": "cidr", "value": format!("{}/16", common[common.len() - 40].1), "effective_from": first + 3 * quarter, "expires": first + 3 * quarter + 3_600_000}),
        serde_json::json!({"type": "asn", "value": "AS65003", "effective_from": middle + quarter / 2, "confidence": 70}),
        serde_json::json!({"type": "user", "value": "user000017@example.com", "effective_from": first + quarter}),
    ];
    std::fs::create_dir_all(dir.join("intel")).unwrap();
    std::fs::write(dir.join("intel/feed.jsonl"), intel.iter().map(|i| format!("{i}\n")).collect::<String>()).unwrap();
    // Correlation rules over two threshold rules that only feed them: their windows (grouped by
    // country, across users, and by user) and the blocks one makes are checkpointed state too.
    std::fs::write(
        dir.join("correlated.json"),
        r#"[{"id": "download", "when": {"action": ["download"]}}, {"id": "delete", "when": {"action": ["delete"]}}]"#,
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("correlations")).unwrap();
    std::fs::write(
        dir.join("correlations/rules.yml"),
        "title: Downloads by many users of one country\nid: country-downloads\nlevel: high\n\
         correlation: {type: value_count, rules: [download], group-by: [country], timespan: 10m, condition: {field: user, gte: 20}}\n\
         ---\ntitle: A download, then a delete, by one user\nid: download-then-delete\nactions: [alert, block]\n\
         correlation: {type: temporal_ordered, rules: [download, delete], group-by: [user], timespan: 1m}\n",
    )
    .unwrap();
    events
}

fn replay(events: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = threatflow();
    cmd.arg("replay")
        .arg("--input")
        .arg(events)
        .args(["--model", &format!("{ROOT}/models/default.json"), "--rules", &format!("{ROOT}/rules/default.json")])
        .arg("--rules")
        .arg(events.with_file_name("correlated.json"))
        .arg("--rules-dir")
        .arg(events.with_file_name("correlations"))
        .arg("--asn-db")
        .arg(events.with_file_name("old-asn.csv"))
        .arg("--model-updates")
        .arg(events.with_file_name("updates.jsonl"))
        .arg("--intel")
        .arg(events.with_file_name("intel"))
        .args(["--retro-window", "6h"])
        .arg("--output")
        .arg(out.join("decisions.jsonl"))
        .arg("--dead-letters")
        .arg(out.join("dead.jsonl"))
        .args(["--dead-letter-burst", "8"])
        .arg("--alerts")
        .arg(out.join("alerts.jsonl"))
        .arg("--actions")
        .arg(out.join("actions.jsonl"))
        // The alert gate's state is checkpointed too: the alerts must come out the same after a
        // kill (a day-long period, so that suppression spans the checkpoints).
        .args(["--alert-suppression", "1d"])
        .args(extra);
    cmd
}

/// The input with malformed lines, the outputs of its uninterrupted replay in `reference/`, and how
/// long that replay took.
fn input_and_reference(dir: &Path) -> (PathBuf, PathBuf, Duration) {
    let events = input(dir);
    let reference = dir.join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    let started = std::time::Instant::now();
    ok(replay(&events, &reference, &[]).output().expect("spawn"));
    let took = started.elapsed();
    for file in ["alerts.jsonl", "actions.jsonl"] {
        assert!(!lines(&reference.join(file)).is_empty(), "the reference run writes {file}");
    }
    let decisions = lines(&reference.join("decisions.jsonl"));
    for (what, count) in [
        ("country-downloads", decisions.iter().filter(|d| d["rules"].to_string().contains("country-downloads")).count()),
        ("download-then-delete", decisions.iter().filter(|d| d["rules"].to_string().contains("download-then-delete")).count()),
        ("blocked", decisions.iter().filter(|d| d["verdict"] == "blocked").count()),
    ] {
        eprintln!("reference: {count} decisions {what}");
        assert!(count > 0, "the reference run has decisions {what}");
    }
    // Indicators matched live and retroactively.
    let retro = decisions.iter().filter(|d| d["verdict"] == "retro").count();
    let intel = decisions.iter().filter(|d| d["verdict"] == "threat" && !d["intel"].is_null()).count();
    eprintln!("reference: {retro} retro decisions, {intel} threat decisions naming indicators");
    assert!(retro > 0 && intel > 0);
    // Both ASN databases decided: the replacement applied mid-stream.
    let asns: std::collections::BTreeSet<u64> = decisions.iter().filter_map(|d| d["enrichment"]["asn"].as_u64()).collect();
    assert!(asns.iter().any(|a| *a < 65_000) && asns.iter().any(|a| *a >= 65_000), "{asns:?}");
    let alerting = decisions.iter().filter(|d| d["actions"].to_string().contains("alert")).count();
    assert!(lines(&reference.join("alerts.jsonl")).len() < alerting, "some alerts are suppressed");
    (events, reference, took)
}

fn same_outputs(reference: &Path, out: &Path) {
    same_files(reference, out, &["decisions.jsonl", "dead.jsonl", "alerts.jsonl", "actions.jsonl"]);
}

/// Each of `files` in `out` is byte for byte the one in `reference`.
fn same_files(reference: &Path, out: &Path, files: &[&str]) {
    for file in files {
        let expected = std::fs::read(reference.join(file)).unwrap();
        let got = std::fs::read(out.join(file)).unwrap();
        assert!(expected == got, "{} differs from the uninterrupted run ({} vs {} bytes)", out.join(file).display(), got.len(), expected.len());
    }
}

#[test]
fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (events, reference, took) = input_and_reference(dir.path());
    assert!(std::fs::read_to_string(reference.join("decisions.jsonl")).unwrap().lines().count() > 100);
    // 15 single malformed lines, and 6 floods of 40: 8 whole and a summary of 32 each.
    let dead = lines(&reference.join("dead.jsonl"));
    assert_eq!(dead.len(), 15 + 6 * 9);
    assert_eq!(dead.iter().filter(|d| d["reason"].as_str().unwrap().starts_with("32 more records rejected")).count(), 6);

    let mut resumed_mid_stream = 0;
    for seed in 0..10u64 {
        let out = dir.path().join(format!("seed-{seed}"));
        std::fs::create_dir_all(&out).unwrap();
        let checkpoints = out.join("checkpoints");
        let mut rng = random(seed);
        let mut kills = 0;
        // Up to three kills, each after 20 % to 90 % of the uninterrupted run's time, alternating
        // 1 and 2 workers.
        for attempt in 0..3 {
            let workers = if (seed + attempt) % 2 == 0 { "1" } else { "2" };
            let extra = ["--checkpoint-dir", checkpoints.to_str().unwrap(), "--checkpoint-interval", "100ms", "-w", workers];
            let delay = took.mul_f64(0.2 + (rng.next().unwrap() % 700) as f64 / 1_000.0);
            if run_and_kill(&mut replay(&events, &out, &extra), || std::thread::sleep(delay)) {
                break;
            }
            kills += 1;
        }
        let extra = ["--checkpoint-dir", checkpoints.to_str().unwrap(), "--checkpoint-interval", "100ms", "-w", "2"];
        let output = ok(replay(&events, &out, &extra).env("NO_COLOR", "1").env("RUST_LOG", "info").output().expect("spawn"));
        if String::from_utf8_lossy(&output.stderr).contains("resuming from a checkpoint") {
            resumed_mid_stream += 1;
        }
        same_outputs(&reference, &out);
        eprintln!("seed {seed}: {kills} kills, outputs identical");
    }
    // Most runs must have resumed from a checkpoint (or the test would show nothing).
    assert!(resumed_mid_stream >= 6, "only {resumed_mid_stream} of 10 runs resumed mid-stream");
}

/// Kills a replay once three checkpoints exist, lets `spoil` make the newest unusable, and checks
/// that the restart says so (`logged`), falls back to an older one, and ends with the outputs of an
/// uninterrupted run.
fn resumes_past_a_spoiled_checkpoint(spoil: impl FnOnce(&Path, &Path), logged: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (events, reference, _) = input_and_reference(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let checkpoints = out.join("checkpoints");
    let extra = ["--checkpoint-dir", checkpoints.to_str().unwrap(), "--checkpoint-interval", "50ms"];
    run_and_kill(&mut replay(&events, &out, &extra), || wait_for_checkpoints(&checkpoints, 3));
    spoil(&checkpoints, &out);
    let output = ok(replay(&events, &out, &extra).env("NO_COLOR", "1").env("RUST_LOG", "info").output().expect("spawn"));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(logged.iter().all(|l| log.contains(l)), "the restart reports {logged:?}: {log}");
    same_outputs(&reference, &out);
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_previous_one() {
    let damage = |checkpoints: &Path, _: &Path| {
        let newest = checkpoint_files(checkpoints).pop().expect("a checkpoint");
        let bytes = std::fs::read(&newest).unwrap();
        std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    };
    resumes_past_a_spoiled_checkpoint(damage, &["damaged", "trying an older one"]);
}

/// A newest checkpoint that recorded more output than the files hold (written, then lost with the
/// machine) is skipped for an older one.
#[test]
fn a_checkpoint_whose_outputs_were_lost_falls_back_to_an_older_one() {
    let lose_output = |checkpoints: &Path, out: &Path| {
        let described = ok(threatflow().arg("checkpoints").arg(checkpoints).output().expect("spawn"));
        let lengths: Vec<u64> = parse_lines(&String::from_utf8_lossy(&described.stdout))
            .iter()
            .map(|c| c["outputs"]["decisions"].as_u64().expect("the decisions' recorded length"))
            .collect();
        let newest = lengths[0];
        assert!(lengths[1..].iter().any(|l| *l < newest), "two checkpoints that recorded different lengths: {lengths:?}");
        let decisions = std::fs::OpenOptions::new().write(true).open(out.join("decisions.jsonl")).unwrap();
        decisions.set_len(newest - 1).unwrap();
    };
    resumes_past_a_spoiled_checkpoint(lose_output, &["fewer than the", "falling back to the older checkpoint"]);
}

#[test]
fn the_generator_run_resumes_too() {
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &Path, extra: &[&str]| {
        let mut cmd = threatflow();
        cmd.args(["run", "--users", "2000", "--events", "300000", "--seed", "5", "--output"]).arg(out).args(extra);
        cmd
    };
    let reference = dir.path().join("reference.jsonl");
    ok(run(&reference, &[]).output().expect("spawn"));
    let out = dir.path().join("out.jsonl");
    let checkpoints = dir.path().join("checkpoints");
    let extra = ["--checkpoint-dir", checkpoints.to_str().unwrap(), "--checkpoint-interval", "100ms"];
    let finished = run_and_kill(&mut run(&out, &extra), || wait_for_checkpoints(&checkpoints, 2));
    assert!(!finished, "the run was killed before it finished");
    let output = ok(run(&out, &extra).env("NO_COLOR", "1").env("RUST_LOG", "info").output().expect("spawn"));
    assert!(String::from_utf8_lossy(&output.stderr).contains("resuming from a checkpoint"), "resumed mid-stream");
    assert!(std::fs::read(&reference).unwrap() == std::fs::read(&out).unwrap(), "the resumed run's decisions differ");
}

#[test]
fn a_two_process_cluster_resumes_after_one_process_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (events, reference, _) = input_and_reference(dir.path());

    // Kill once the first checkpoint is written, and once the second is.
    for (attempt, checkpoints_before_kill) in [1usize, 2].into_iter().enumerate() {
        let out = dir.path().join(format!("cluster-{attempt}"));
        std::fs::create_dir_all(&out).unwrap();
        let checkpoint_dir = out.join("checkpoints");
        let checkpoints = checkpoint_dir.display().to_string();
        let hosts = out.join("hosts");
        let ports = common::free_ports(2);
        std::fs::write(&hosts, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).unwrap();
        let hosts = hosts.display().to_string();
        let process = |p: &str| {
            let extra = ["--checkpoint-dir", &checkpoints, "--checkpoint-interval", "100ms", "-w", "1", "-n", "2", "-p", p, "-h", &hosts];
            replay(&events, &out, &extra)
        };
        // Kill process 1; process 0 loses its peer and is killed too (an operator restarts the cluster).
        // (Their peer's death makes timely's network threads panic: keep that out of the test log.)
        let mut p1 = process("1").stderr(std::process::Stdio::null()).spawn().expect("spawn");
        let mut p0 = process("0").stderr(std::process::Stdio::null()).spawn().expect("spawn");
        wait_for_checkpoints(&checkpoint_dir, checkpoints_before_kill);
        let _ = p1.kill();
        let _ = p1.wait();
        std::thread::sleep(Duration::from_millis(300));
        let _ = p0.kill();
        let _ = p0.wait();
        // The same two commands again.
        let p1 = process("1").spawn().expect("spawn");
        let p0 = ok(process("0").env("NO_COLOR", "1").env("RUST_LOG", "info").output().expect("spawn"));
        assert!(String::from_utf8_lossy(&p0.stderr).contains("resuming from a checkpoint"), "the cluster resumed mid-stream");
        assert!(p1.wait_with_output().expect("process 1").status.success());
        same_outputs(&reference, &out);
    }
}

/// Every dataflow `threatflow dataflows` lists (the extension point researchers write to) keeps
/// its state through the checkpoint layer: killed with `kill -9` after a few checkpoints on one
/// worker count and resumed on the other, it writes the uninterrupted run's outputs, byte for byte.
/// (Before the layer, country-drift's 7-day history was rebuilt from the events after the
/// checkpoint: decisions were lost and new ones written.)
#[test]
fn every_dataflow_resumes_exactly_after_kill_9() {
    let listed = ok(threatflow().arg("dataflows").output().expect("spawn"));
    let names: Vec<String> =
        String::from_utf8_lossy(&listed.stdout).lines().filter_map(|line| line.split_whitespace().next()).map(str::to_string).collect();
    assert!(names.iter().any(|n| n == "country-drift") && names.iter().any(|n| n == "threat"), "listed: {names:?}");

    let dir = tempfile::tempdir().unwrap();
    // Long enough (about 4 days of activity) for several checkpoints before the kill.
    let events = input_of(dir.path(), 900_000);
    for name in &names {
        let reference = dir.path().join(format!("{name}-reference"));
        std::fs::create_dir_all(&reference).unwrap();
        ok(replay(&events, &reference, &["--dataflow", name]).output().expect("spawn"));
        let decisions = lines(&reference.join("decisions.jsonl"));
        let threats = decisions.iter().filter(|d| d["verdict"] != "benign").count();
        assert!(threats > 0, "{name}: the reference run decides some threats");
        if name == "country-drift" {
            // Its own decisions, which depend on days of login history, are among them.
            let own = decisions.iter().filter(|d| d["rules"].to_string().contains("\"country-drift\"")).count();
            assert!(own > 100, "{name}: {own} decisions of its own");
        }
        for (killed_on, resumed_on) in [("1", "2"), ("2", "1")] {
            let out = dir.path().join(format!("{name}-{killed_on}-{resumed_on}"));
            std::fs::create_dir_all(&out).unwrap();
            let checkpoints = out.join("checkpoints");
            let with = |workers: &'static str| {
                let extra = ["--dataflow", name, "--checkpoint-dir", checkpoints.to_str().unwrap(), "--checkpoint-interval", "100ms", "-w", workers];
                replay(&events, &out, &extra)
            };
            let finished = run_and_kill(&mut with(killed_on), || wait_for_checkpoints(&checkpoints, 2));
            assert!(!finished, "{name}: the run was killed before it finished");
            let output = ok(with(resumed_on).env("NO_COLOR", "1").env("RUST_LOG", "info").output().expect("spawn"));
            assert!(String::from_utf8_lossy(&output.stderr).contains("resuming from a checkpoint"), "{name}: resumed mid-stream");
            same_outputs(&reference, &out);
            eprintln!("{name}: killed on {killed_on} workers, resumed on {resumed_on}: outputs identical ({threats} threats)");
        }
    }
}

/// Providers' raw records are decoded on every worker and judged back in read order on their
/// partition's worker: a `kill -9` at a random moment, on 1 or 2 workers, and the resumed run
/// (again on 1 or 2) give the uninterrupted run's decisions and dead letters, byte for byte; so
/// does a cluster of two processes, whose batches cross between them.
#[test]
fn raw_records_decoded_on_every_worker_resume_exactly_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("generated.jsonl");
    ok(threatflow()
        .args(["generate", "--format", "aws.cloudtrail", "--users", "500", "--events", "100000", "--seed", "5", "--out"])
        .arg(&generated)
        .output()
        .expect("spawn"));
    // Malformed records among the raw ones: their dead letters are judged in read order too.
    let mut records = String::new();
    for (i, line) in std::fs::read_to_string(&generated).unwrap().lines().enumerate() {
        records.push_str(line);
        records.push('\n');
        if i % 7_001 == 0 {
            records.push_str(&format!("{{\"eventName\": \"broken {i}\"\n"));
        }
    }
    let input = dir.path().join("cloudtrail.jsonl");
    std::fs::write(&input, records).unwrap();
    let replay = |out: &Path, extra: &[&str]| {
        let mut cmd = threatflow();
        cmd.arg("replay")
            .arg("--input")
            .arg(&input)
            .args(["--format", "aws.cloudtrail", "--model", &format!("{ROOT}/models/default.json"), "--rules", &format!("{ROOT}/rules/default.json")])
            .args(["--rules-dir", &format!("{ROOT}/rules/sigma")])
            .arg("--output")
            .arg(out.join("decisions.jsonl"))
            .arg("--dead-letters")
            .arg(out.join("dead.jsonl"))
            .args(extra);
        cmd
    };
    let reference = dir.path().join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    let started = std::time::Instant::now();
    ok(replay(&reference, &["-w", "2"]).output().expect("spawn"));
    let took = started.elapsed();
    let decisions = lines(&reference.join("decisions.jsonl"));
    assert!(decisions.iter().filter(|d| !d["rule_titles"].as_array().is_none_or(Vec::is_empty)).count() > 100, "SigmaHQ rules decide");
    assert_eq!(lines(&reference.join("dead.jsonl")).len(), 15);

    let mut resumed_mid_stream = 0;
    for seed in 0..4u64 {
        let out = dir.path().join(format!("seed-{seed}"));
        std::fs::create_dir_all(&out).unwrap();
        let checkpoints = out.join("checkpoints");
        let options = |workers| ["--checkpoint-dir", checkpoints.to_str().unwrap(), "--checkpoint-interval", "100ms", "-w", workers];
        let mut rng = random(seed);
        for attempt in 0..2 {
            let workers = if (seed + attempt) % 2 == 0 { "1" } else { "2" };
            let delay = took.mul_f64(0.3 + (rng.next().unwrap() % 600) as f64 / 1_000.0);
            if run_and_kill(&mut replay(&out, &options(workers)), || std::thread::sleep(delay)) {
                break;
            }
        }
        let output = ok(replay(&out, &options(if seed % 2 == 0 { "2" } else { "1" })).env("NO_COLOR", "1").env("RUST_LOG", "info").output().expect("spawn"));
        if String::from_utf8_lossy(&output.stderr).contains("resuming from a checkpoint") {
            resumed_mid_stream += 1;
        }
        same_files(&reference, &out, &["decisions.jsonl", "dead.jsonl"]);
    }
    assert!(resumed_mid_stream >= 2, "only {resumed_mid_stream} of 4 runs resumed mid-stream");

    let out = dir.path().join("cluster");
    std::fs::create_dir_all(&out).unwrap();
    let hosts = out.join("hosts");
    std::fs::write(&hosts, common::free_ports(2).iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).unwrap();
    let process = |p: &str| replay(&out, &["-w", "1", "-n", "2", "-p", p, "-h", hosts.to_str().unwrap()]);
    let p1 = process("1").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().expect("spawn");
    ok(process("0").output().expect("spawn"));
    assert!(p1.wait_with_output().expect("process 1").status.success());
    same_files(&reference, &out, &["decisions.jsonl", "dead.jsonl"]);
}
