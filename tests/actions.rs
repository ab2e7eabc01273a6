//! Threat actions through the binary: a rule whose actions include `block` blocks its user for
//! `--block-for` of event time, `threatflow unblock` lifts it from its `effective_from`, and a
//! `revert` command names the event's file, line and byte offset. Every expectation is written
//! out by hand from the events below.

use std::path::Path;

use serde_json::{json, Value};

mod common;
use common::{lines, ok, threatflow};

const RULES: &str = r#"[
  {"id": "brute-force", "title": "Burst of failed logins", "when": {"action": ["login_failed"]}, "features": {"failed_logins_5m": {"gte": 3}}, "actions": ["alert", "block"]},
  {"id": "mass-delete", "title": "Mass deletion", "features": {"deletes_10m": {"gte": 2}}, "actions": ["alert", "revert"]}
]"#;

/// The events, one per line, at `ts` seconds.
fn events() -> Vec<Value> {
    let e = |id: &str, ts: u64, user: &str, action: &str| json!({"event_id": id, "ts": ts * 1000, "user": user, "action": action});
    vec![
        e("a1", 1, "ann", "login_failed"),
        e("a2", 2, "ann", "login_failed"),
        // The third failure in 5 minutes: a threat that blocks ann for 60 s of event time.
        e("a3", 3, "ann", "login_failed"),
        // Same millisecond as a3: not blocked by it (docs/semantics.md#threat-actions-and-blocking: events after the decision's ts).
        e("a3b", 3, "ann", "login"),
        e("a4", 10, "ann", "login"),
        e("b1", 20, "bob", "delete"),
        // bob's second delete in 10 minutes: revert it.
        e("b2", 21, "bob", "delete"),
        e("a5", 40, "ann", "view"),
        // ann is unblocked from 50 s on.
        e("a6", 50, "ann", "view"),
        e("a7", 70, "ann", "view"),
    ]
}

fn write_lines(path: &Path, values: &[Value]) -> Vec<u64> {
    let mut text = String::new();
    let mut offsets = Vec::new();
    for v in values {
        offsets.push(text.len() as u64);
        text += &format!("{v}\n");
    }
    std::fs::write(path, text).unwrap();
    offsets
}

fn run(dir: &Path, workers: &str, unblock_at: Option<u64>) -> (Vec<Value>, Vec<Value>, Vec<u64>) {
    let input = dir.join("events.jsonl");
    let offsets = write_lines(&input, &events());
    let rules = dir.join("rules.json");
    std::fs::write(&rules, RULES).unwrap();
    let marks = dir.join("marks.jsonl");
    std::fs::write(&marks, "").unwrap();
    if let Some(at) = unblock_at {
        ok(threatflow().args(["unblock", "ann", "--effective-from", &at.to_string(), "--to"]).arg(&marks).output().expect("spawn"));
    }
    let (out, actions) = (dir.join("decisions.jsonl"), dir.join("actions.jsonl"));
    ok(threatflow()
        .args(["replay", "-w", workers, "--block-for", "60s", "--input"])
        .arg(&input)
        .arg("--rules")
        .arg(&rules)
        .arg("--marks")
        .arg(&marks)
        .arg("--output")
        .arg(&out)
        .arg("--actions")
        .arg(&actions)
        .output()
        .expect("spawn"));
    (lines(&out), lines(&actions), offsets)
}

/// `(event, verdict, rules, blocked_by)` of each decision, by event id.
fn summary(decisions: &[Value]) -> Vec<(String, String, Vec<String>, Option<String>)> {
    let mut rows: Vec<_> = decisions
        .iter()
        .map(|d| {
            let rules = d["rules"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
            (d["event_id"].as_str().unwrap().into(), d["verdict"].as_str().unwrap().into(), rules, d["blocked_by"].as_str().map(String::from))
        })
        .collect();
    rows.sort();
    rows
}

fn row(event: &str, verdict: &str, rules: &[&str], by: Option<&str>) -> (String, String, Vec<String>, Option<String>) {
    (event.into(), verdict.into(), rules.iter().map(|r| r.to_string()).collect(), by.map(String::from))
}

#[test]
fn a_block_holds_for_its_duration_and_an_unblock_lifts_it() {
    for workers in ["1", "2"] {
        let dir = tempfile::tempdir().unwrap();
        let (decisions, _, _) = run(dir.path(), workers, None);
        assert_eq!(
            summary(&decisions),
            [
                row("a3", "threat", &["brute-force"], None),
                row("a4", "blocked", &[], Some("a3")),
                row("a5", "blocked", &[], Some("a3")),
                row("a6", "blocked", &[], Some("a3")),
                row("b2", "threat", &["mass-delete"], None),
            ],
            "{workers} worker(s), no unblock"
        );
        // The block covers event time (3 s, 63 s]: a7 at 70 s is free again.
        let a3 = decisions.iter().find(|d| d["event_id"] == "a3").unwrap();
        assert_eq!(a3["blocked_until"], 63_000);

        let dir = tempfile::tempdir().unwrap();
        let (decisions, _, _) = run(dir.path(), workers, Some(50_000));
        assert_eq!(
            summary(&decisions),
            [
                row("a3", "threat", &["brute-force"], None),
                row("a4", "blocked", &[], Some("a3")),
                row("a5", "blocked", &[], Some("a3")),
                row("b2", "threat", &["mass-delete"], None),
            ],
            "{workers} worker(s), unblocked at 50 s"
        );
    }
}

#[test]
fn action_commands_name_the_user_and_where_the_event_was_read() {
    let dir = tempfile::tempdir().unwrap();
    let (decisions, actions, offsets) = run(dir.path(), "2", None);
    let id = |event: &str| decisions.iter().find(|d| d["event_id"] == event).unwrap()["decision_id"].clone();
    let source = format!("file:{}", dir.path().join("events.jsonl").display());
    let mut actions = actions;
    actions.sort_by_key(|a| a["event_id"].as_str().unwrap().to_string());
    assert_eq!(actions.len(), 2, "{actions:#?}");
    let (block, revert) = (&actions[0], &actions[1]);
    assert_eq!(
        (&block["action"], &block["user"], &block["event_id"], &block["ts"], &block["until"], &block["decision_id"]),
        (&json!("block"), &json!("ann"), &json!("a3"), &json!(3_000), &json!(63_000), &id("a3"))
    );
    assert_eq!(
        (&revert["action"], &revert["user"], &revert["event_id"], &revert["ts"], &revert["decision_id"]),
        (&json!("revert"), &json!("bob"), &json!("b2"), &json!(21_000), &id("b2"))
    );
    // b2 is the seventh line (index 6) of the input.
    assert_eq!(revert["position"]["source"].as_str().unwrap(), source);
    assert_eq!(revert["position"]["record"], 7);
    assert_eq!(revert["position"]["offset"], offsets[6]);
}
