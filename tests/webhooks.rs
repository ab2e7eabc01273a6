//! Alerts posted to webhooks (`--alerts-to`), against a real HTTP server on loopback that refuses
//! connections at first, then fails, throttles and delays requests on purpose: every alert of the
//! alerts file arrives, none is lost, duplicates come only across a `kill -9` and are the same
//! alert, what a receiver refuses is set aside in the undelivered file, and the rate limit holds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{lines, ok, random, run_and_kill, threatflow};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One request the receiver answered.
#[derive(Clone, Debug)]
struct Request {
    path: String,
    at: Instant,
    status: u16,
    key: String,
    body: serde_json::Value,
}

/// A webhook receiver on loopback. `/hook` fails on purpose by request number: every fourth with
/// 503, every fifteenth with 429 and `Retry-After: 1`, every third after a 100 ms delay (slow but
/// answered); `/refuse` answers 400; any other path always 200. It starts listening only `late` after
/// it is made: requests before are refused connections.
struct Receiver {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    fn start(late: Duration) -> Receiver {
        use axum::extract::{Path, State};
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        let port = common::free_ports(1)[0];
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let state = Arc::clone(&requests);
        std::thread::spawn(move || {
            std::thread::sleep(late);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let handle = |State(requests): State<Arc<Mutex<Vec<Request>>>>, Path(path): Path<String>, headers: HeaderMap, body: axum::body::Bytes| async move {
                    let n = requests.lock().unwrap().iter().filter(|r| r.path == path).count() + 1;
                    let (status, delay, retry_after) = match path.as_str() {
                        "refuse" => (400, 0, false),
                        "hook" if n % 4 == 0 => (503, 0, false),
                        "hook" if n % 15 == 0 => (429, 0, true),
                        "hook" if n % 3 == 0 => (200, 100, false),
                        _ => (200, 0, false),
                    };
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    requests.lock().unwrap().push(Request { path, at: Instant::now(), status, key, body });
                    let mut response = (StatusCode::from_u16(status).unwrap(), "").into_response();
                    if retry_after {
                        response.headers_mut().insert("retry-after", "1".parse().unwrap());
                    }
                    response
                };
                let app = axum::Router::new().route("/{path}", axum::routing::post(handle)).with_state(state);
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        Receiver { port, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// The requests to `path` so far.
    fn requests(&self, path: &str) -> Vec<Request> {
        self.requests.lock().unwrap().iter().filter(|r| r.path == path).cloned().collect()
    }

    /// The alerts of the accepted generic requests to `path`, by decision id, each copy.
    fn delivered(&self, path: &str) -> BTreeMap<String, Vec<serde_json::Value>> {
        let mut by_id: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        for request in self.requests(path).into_iter().filter(|r| r.status == 200) {
            for alert in request.body["alerts"].as_array().unwrap() {
                by_id.entry(alert["decision_id"].as_str().unwrap().to_string()).or_default().push(alert.clone());
            }
        }
        by_id
    }
}

/// 100,000 generated events (2,000 users): a few hundred alerts with the default model and rules.
fn events(dir: &Path) -> std::path::PathBuf {
    let events = dir.join("events.jsonl");
    ok(threatflow()
        .args(["generate", "--users", "2000", "--events", "100000", "--seed", "3", "--out"])
        .arg(&events)
        .output()
        .expect("spawn"));
    events
}

fn replay(events: &Path, out: &Path, extra: &[&str]) -> std::process::Command {
    let mut command = threatflow();
    command
        .arg("replay")
        .arg("--input")
        .arg(events)
        .args(["--model", &format!("{ROOT}/models/default.json"), "--rules", &format!("{ROOT}/rules/default.json")])
        .arg("--output")
        .arg(out.join("decisions.jsonl"))
        .arg("--alerts")
        .arg(out.join("alerts.jsonl"))
        .args(["--alerts-to-timeout", "2s"])
        .args(extra);
    command
}

#[test]
fn every_alert_is_delivered_once_through_refusals_failures_and_delays() {
    let dir = tempfile::tempdir().unwrap();
    let events = events(dir.path());
    let receiver = Receiver::start(Duration::from_millis(1_500));
    // The Slack destination comes from a file, as secrets should.
    let destinations = dir.path().join("destinations");
    std::fs::write(&destinations, format!("# chat\nslack={}\n", receiver.url("slack"))).unwrap();
    let started = Instant::now();
    let output = ok(replay(&events, dir.path(), &["--alerts-to-batch", "5", "--alerts-to-rate", "20", "--alerts-to-attempts", "8"])
        .args(["--alerts-to", &receiver.url("hook"), "--alerts-to", &receiver.url("refuse")])
        .arg("--alerts-to-file")
        .arg(&destinations)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .expect("spawn"));
    let took = started.elapsed();

    let alerts = lines(&dir.path().join("alerts.jsonl"));
    assert!(alerts.len() > 100, "{} alerts", alerts.len());
    let ids: BTreeSet<String> = alerts.iter().map(|a| a["decision_id"].as_str().unwrap().to_string()).collect();

    // The generic webhook: every alert exactly once, as the alerts file has it.
    let delivered = receiver.delivered("hook");
    assert_eq!(delivered.keys().cloned().collect::<BTreeSet<_>>(), ids, "the delivered alerts are the alerts file's");
    assert!(delivered.values().all(|copies| copies.len() == 1), "a duplicate without a kill");
    for alert in &alerts {
        assert_eq!(&delivered[alert["decision_id"].as_str().unwrap()][0], alert);
    }
    // The faults happened, and a failed request's retry carries the same key.
    let hook = receiver.requests("hook");
    let failed: Vec<&Request> = hook.iter().filter(|r| r.status != 200).collect();
    assert!(failed.iter().any(|r| r.status == 503) && failed.iter().any(|r| r.status == 429), "{:?}", failed.iter().map(|r| r.status).collect::<Vec<_>>());
    let accepted_keys: BTreeSet<&str> = hook.iter().filter(|r| r.status == 200).map(|r| r.key.as_str()).collect();
    assert!(failed.iter().all(|r| accepted_keys.contains(r.key.as_str())), "a retry changed its idempotency key");
    // The rate limit: at most 20 requests in any second (plus the one at its edge).
    for (i, first) in hook.iter().enumerate() {
        let within = hook[i..].iter().take_while(|r| r.at.duration_since(first.at) < Duration::from_secs(1)).count();
        assert!(within <= 21, "{within} requests within a second");
    }
    // The refused connections at first were retried (the receiver listened 1.5 s late).
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("attempt=1") && took > Duration::from_millis(1_500), "{stderr}");
    assert!(!stderr.contains(&receiver.url("hook")), "a destination's URL was logged");

    // Slack: one bullet per alert, in messages with the count.
    let slack: usize = receiver.requests("slack").iter().map(|r| r.body["text"].as_str().unwrap().lines().filter(|l| l.starts_with('•')).count()).sum();
    assert_eq!(slack, alerts.len());

    // The refusing receiver: every alert set aside once, with the reason.
    let undelivered = lines(&dir.path().join("alerts.undelivered.jsonl"));
    assert_eq!(undelivered.len(), alerts.len());
    assert!(undelivered.iter().all(|u| u["error"] == "HTTP 400 Bad Request" && u["destination"].as_str().unwrap().starts_with("json http://127.0.0.1:")));
    let set_aside: BTreeSet<String> = undelivered.iter().map(|u| u["alert"]["decision_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(set_aside, ids);
    let refused: usize = receiver.requests("refuse").iter().map(|r| r.body["alerts"].as_array().unwrap().len()).sum();
    assert_eq!(refused, alerts.len(), "a refusal is not retried");
}

/// `kill -9` at random moments (while deciding or while delivering), then the same command until
/// it finishes: every alert arrives, and each duplicate is the same alert, at most one more copy
/// per kill.
#[test]
fn kill_9_while_delivering_loses_no_alert() {
    let dir = tempfile::tempdir().unwrap();
    let events = events(dir.path());
    let receiver = Receiver::start(Duration::ZERO);
    let checkpoints = dir.path().join("checkpoints");
    let extra = ["--alerts-to-batch", "4", "--alerts-to-rate", "15", "--checkpoint-dir", checkpoints.to_str().unwrap(), "--checkpoint-interval", "100ms"];
    let mut rng = random(7);
    let mut kills = 0;
    for _ in 0..3 {
        let delay = Duration::from_millis(300 + rng.next().unwrap() % 2_000);
        let mut command = replay(&events, dir.path(), &extra);
        command.args(["--alerts-to", &receiver.url("steady")]);
        if run_and_kill(&mut command, || std::thread::sleep(delay)) {
            break;
        }
        kills += 1;
    }
    ok(replay(&events, dir.path(), &extra).args(["--alerts-to", &receiver.url("steady")]).output().expect("spawn"));
    assert!(kills > 0, "no kill happened");

    let alerts = lines(&dir.path().join("alerts.jsonl"));
    let delivered = receiver.delivered("steady");
    let ids: BTreeSet<String> = alerts.iter().map(|a| a["decision_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(delivered.keys().cloned().collect::<BTreeSet<_>>(), ids, "an alert was lost");
    let duplicates: usize = delivered.values().map(|copies| copies.len() - 1).sum();
    eprintln!("{kills} kills, {duplicates} duplicates of {} alerts", alerts.len());
    // (A restart posts again what followed the checkpoint it resumed from: at most one more copy
    // per kill.)
    for copies in delivered.values() {
        assert!(copies.len() <= kills + 1, "{} copies after {kills} kills", copies.len());
        assert!(copies.iter().all(|c| c == &copies[0]), "a duplicate differs: {copies:?}");
    }
}
