//! The live metrics of `--metrics-addr`, scraped over HTTP from a running `replay` and checked at
//! the end against what the input and the outputs say: events, late events and rejected records
//! by reason counted from the input file itself, decisions, alerts and rule hits from the files
//! written, the partition's position and watermark from the file's size and times; and a second
//! run on the same checkpoints shows its restore time.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

mod common;
use common::{free_ports, http_get as get, lines, metric_samples as samples, threatflow};

#[test]
fn metrics_count_exactly_what_the_job_read_and_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    // 300,000 events of 100 users, every tenth a login; two late ones; five bad records.
    let base = 1_767_600_000_000u64;
    let mut bytes = Vec::new();
    let (mut logins, mut late, mut max_ts) = (0u64, 0u64, 0u64);
    for i in 0..300_000u64 {
        let ts = base + i * 10;
        let action = if i % 10 == 0 { "login" } else { "view" };
        logins += u64::from(i % 10 == 0);
        writeln!(bytes, r#"{{"event_id":"e{i}","ts":{ts},"user":"u{}","action":"{action}"}}"#, i % 100).unwrap();
        max_ts = max_ts.max(ts);
        if i == 100_000 || i == 200_000 {
            writeln!(bytes, r#"{{"event_id":"late{i}","ts":{},"user":"u1","action":"view"}}"#, ts - 20_000).unwrap();
            late += 1;
        }
        if i == 150_000 {
            bytes.extend_from_slice(b"{not json\n[1, 2]\n\xff\xfe\n");
            writeln!(bytes, r#"{{"event_id":"big","ts":{ts},"user":"u1","action":"view","resource":"{}"}}"#, "x".repeat(3_000)).unwrap();
            writeln!(bytes, r#"{{"event_id":"future","ts":4102444800000,"user":"u1","action":"view"}}"#).unwrap();
        }
    }
    std::fs::write(&input, &bytes).unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(&rules, r#"[{"id": "every-login", "when": {"action": ["login"]}, "actions": ["alert"]}]"#).unwrap();
    let model = dir.path().join("silent.json");
    std::fs::write(&model, r#"{"version": "silent", "features": ["failed_logins_5m"], "weights": [0.0], "bias": -50.0, "threshold": 0.5}"#).unwrap();
    let (decisions, alerts) = (dir.path().join("decisions.jsonl"), dir.path().join("alerts.jsonl"));
    let start = |port: u16| {
        let mut command = threatflow();
        command.args(["replay", "-w", "2", "--read-batch", "2000", "--max-record-bytes", "2000", "--checkpoint-interval", "50ms"]);
        command.arg("--input").arg(&input).arg("--rules").arg(&rules).arg("--model").arg(&model);
        command.arg("--output").arg(&decisions).arg("--alerts").arg(&alerts).arg("--checkpoint-dir").arg(dir.path().join("checkpoints"));
        command.args(["--metrics-addr", &format!("127.0.0.1:{port}"), "--linger", "120s"]);
        command.stderr(std::process::Stdio::piped()).spawn().unwrap()
    };
    let port = free_ports(1)[0];
    let mut child = start(port);
    let (last, seen_ready, scrapes) = scrape_until_finished(port, &mut child);
    assert_eq!(get(port, "/healthz").map(|(status, _)| status), Some(200));
    assert_eq!(get(port, "/readyz").map(|(status, _)| status), Some(503), "a finished job is not ready");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen_ready && scrapes > 1, "scraped {scrapes} times, ready seen: {seen_ready}");

    let value = |name: &str| last.get(name).copied().unwrap_or_else(|| panic!("no {name} in {last:#?}"));
    let partition = format!("partition=\"file:{}\"", input.display());
    let events = 300_000 + late;
    assert_eq!(value(&format!("threatflow_events_total{{{partition}}}")), events as f64);
    assert_eq!(value(&format!("threatflow_late_events_total{{{partition}}}")), late as f64);
    for (reason, count) in [("invalid", 2.0), ("invalid_utf8", 1.0), ("too_large", 1.0), ("ahead_of_writing", 1.0)] {
        assert_eq!(value(&format!("threatflow_rejected_records_total{{reason=\"{reason}\"}}")), count, "{reason}");
    }
    assert_eq!(value(&format!("threatflow_partition_position{{{partition}}}")), bytes.len() as f64, "read to the end");
    assert_eq!(value(&format!("threatflow_partition_watermark_milliseconds{{{partition}}}")), (max_ts - 5_000) as f64);
    // Decisions, alerts and hits as the files hold them, and as the input implies.
    let written = lines(&decisions);
    assert_eq!(written.len() as u64, logins);
    assert_eq!(value("threatflow_decisions_total{verdict=\"threat\"}"), logins as f64);
    assert_eq!(value("threatflow_alerts_total"), lines(&alerts).len() as f64);
    assert_eq!(value("threatflow_alerts_total"), logins as f64);
    assert_eq!(value("threatflow_rule_hits_total{rule=\"every-login\"}"), logins as f64);
    assert_eq!(value("threatflow_model_effective_from_milliseconds{version=\"silent\"}"), 0.0);
    assert!(value("threatflow_checkpoints_total") >= 1.0 && value("threatflow_checkpoint_bytes") > 0.0, "{last:#?}");
    assert_eq!(value("threatflow_ready"), 0.0);

    // Started again on the same checkpoints: restored, and the restore timed.
    let port = free_ports(1)[0];
    let mut child = start(port);
    let (again, _, _) = scrape_until_finished(port, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(again.get("threatflow_restore_duration_seconds").is_some_and(|s| *s > 0.0), "{again:#?}");
}

/// Scrapes `/metrics` while the job runs, until it says it has finished: the last page, whether
/// `/readyz` said ready at some point, and how many pages were read.
fn scrape_until_finished(port: u16, child: &mut std::process::Child) -> (std::collections::BTreeMap<String, f64>, bool, usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut seen_ready, mut scrapes) = (false, 0);
    loop {
        assert!(Instant::now() < deadline, "the job did not finish within 120 s");
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
            panic!("threatflow ended while lingering: {status}\n{stderr}");
        }
        let Some((200, page)) = get(port, "/metrics") else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        scrapes += 1;
        seen_ready |= get(port, "/readyz").is_some_and(|(status, _)| status == 200);
        let page = samples(&page);
        if page.get("threatflow_job_finished") == Some(&1.0) {
            return (page, seen_ready, scrapes);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
