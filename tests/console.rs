//! The live console (`--console`) in a real browser: Debian's chromium, headless, driven by
//! playwright-core (`tests/console/check.mjs`; `scripts/test` installs both), loads the page while
//! a job runs. The alerts the page shows once the job has finished are exactly the newest ones of
//! the alerts file, newest first; an expanded alert shows the model's contributions of that
//! alert; a filter on a user leaves exactly that user's alerts. A console on another address than
//! loopback needs a token.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

mod common;
use common::{free_ports, http_get, lines, threatflow};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_console_shows_the_alerts_as_written_in_a_browser() {
    assert!(Path::new("/usr/bin/chromium").is_file(), "no /usr/bin/chromium: run scripts/test, which installs it");
    assert!(Path::new(ROOT).join("tests/console/node_modules/playwright-core").is_dir(), "no playwright-core: run scripts/test (npm ci in tests/console)");
    let dir = tempfile::tempdir().unwrap();
    let alerts = dir.path().join("alerts.jsonl");
    let port = free_ports(1)[0];
    let mut job = threatflow()
        .args(["run", "--users", "20000", "--events", "3000000", "-w", "2", "--console", &format!("127.0.0.1:{port}"), "--linger", "300s", "--alerts"])
        .arg(&alerts)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The page is opened as soon as the console answers, while the job runs.
    let started = std::time::Instant::now();
    while http_get(port, "/").is_none() {
        assert!(started.elapsed().as_secs() < 60, "the console did not come up");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = Command::new("node").arg(Path::new(ROOT).join("tests/console/check.mjs")).arg(format!("http://127.0.0.1:{port}/")).output().expect("node");
    job.kill().unwrap();
    job.wait().unwrap();
    assert!(output.status.success(), "the browser check failed: {}", String::from_utf8_lossy(&output.stderr));
    let page: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(page["errors"], serde_json::json!([]), "script errors on the page");
    assert_eq!(page["sawRunning"], true, "the page saw the job running");

    let written = lines(&alerts);
    let newest: Vec<&str> = written.iter().rev().take(1_000).map(|a| a["decision_id"].as_str().unwrap()).collect();
    let shown: Vec<&str> = page["rows"].as_array().unwrap().iter().map(|r| r["decision_id"].as_str().unwrap()).collect();
    assert!(written.len() > 1_000, "{} alerts: the page keeps the newest 1,000", written.len());
    assert_eq!(shown, newest, "the page shows the newest alerts, newest first");

    // The expanded alert's explanation is the alert's own.
    let explained = &page["explained"];
    let id = explained["decision_id"].as_str().expect("an alert of the model was expanded");
    let alert = written.iter().find(|a| a["decision_id"] == id).unwrap();
    let contributions: Vec<(String, String)> =
        alert["contributions"].as_array().unwrap().iter().map(|c| (c[0].as_str().unwrap().to_string(), format!("{:.2}", c[1].as_f64().unwrap()))).collect();
    let on_page: Vec<(String, String)> = serde_json::from_value(explained["contributions"].clone()).unwrap();
    assert!(!contributions.is_empty());
    assert_eq!(on_page, contributions);
    let features: Vec<String> = serde_json::from_value(explained["features"].clone()).unwrap();
    let features: BTreeMap<&str, &str> = features.chunks(2).map(|pair| (pair[0].as_str(), pair[1].as_str())).collect();
    let expected: BTreeMap<String, String> = alert["features"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    assert_eq!(features, expected.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect());

    // A filter on one user leaves that user's alerts, all of them.
    let user = page["user"].as_str().unwrap();
    let filtered: Vec<&str> = page["filtered"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    let of_user = page["rows"].as_array().unwrap().iter().filter(|r| r["user"] == user).count();
    assert!(!filtered.is_empty() && filtered.iter().all(|u| *u == user) && filtered.len() == of_user, "{user}: {filtered:?}");
}

#[test]
fn a_console_beyond_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "{\"event_id\":\"e1\",\"ts\":1000,\"user\":\"ann\",\"action\":\"login\"}\n").unwrap();
    let output = threatflow()
        .args(["replay", "--input"])
        .arg(&events)
        .arg("--output")
        .arg(dir.path().join("d.jsonl"))
        .args(["--console", "0.0.0.0:0"])
        .env_remove("THREATFLOW_CONSOLE_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("needs a token"), "{stderr}");

    // With a token, requests without it are refused and requests with it served.
    let port = free_ports(1)[0];
    let mut job = threatflow()
        .args(["replay", "--input"])
        .arg(&events)
        .arg("--output")
        .arg(dir.path().join("d2.jsonl"))
        .args(["--console", &format!("0.0.0.0:{port}"), "--linger", "60s"])
        .env("THREATFLOW_CONSOLE_TOKEN", "s3cret-token")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let refused = loop {
        if let Some(answer) = http_get(port, "/") {
            break answer;
        }
        assert!(started.elapsed().as_secs() < 60, "the console did not come up");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let served = http_get(port, "/?token=s3cret-token");
    let updates = http_get(port, "/events");
    job.kill().unwrap();
    job.wait().unwrap();
    assert_eq!(refused.0, 401);
    assert_eq!(updates.map(|(status, _)| status), Some(401));
    assert!(served.is_some_and(|(status, body)| status == 200 && body.contains("threatflow")));
}
