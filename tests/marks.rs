//! Marked threats through the binary: `threatflow mark` writes a mark, the engine decides every
//! later repeat of its fingerprint as a threat naming the mark, exactly (an oracle over the events
//! computes the expected set), and a removal ends it.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

mod common;
use common::{lines, ok, threatflow};

/// The events a mark on `fields` of `marked` must flag: those judged from `from` on (late events
/// are judged at the watermark, 5 s behind the newest time seen) with the same values (absent
/// equals absent), until `until`.
fn expected(events: &[Value], marked: &Value, fields: &[&str], from: u64, until: u64) -> BTreeSet<String> {
    let mut newest = 0u64;
    let mut flagged = BTreeSet::new();
    for e in events {
        let ts = e["ts"].as_u64().unwrap();
        let judged = ts.max(newest.saturating_sub(5_000));
        newest = newest.max(ts);
        if (from..until).contains(&judged) && fields.iter().all(|f| e.get(f) == marked.get(f)) {
            flagged.insert(e["event_id"].as_str().unwrap().to_string());
        }
    }
    flagged
}

fn replay(events: &Path, marks: &Path, out: &Path) -> Vec<Value> {
    ok(threatflow()
        .args(["replay", "-w", "2", "--input"])
        .arg(events)
        .arg("--marks")
        .arg(marks)
        .arg("--output")
        .arg(out)
        .output()
        .expect("spawn"));
    lines(out)
}

#[test]
fn a_marked_fingerprint_flags_exactly_its_later_repeats_until_removed() {
    let dir = tempfile::tempdir().unwrap();
    let events_path = dir.path().join("events.jsonl");
    ok(threatflow().args(["generate", "--users", "200", "--events", "40000", "--seed", "9", "--out"]).arg(&events_path).output().expect("spawn"));
    let events = lines(&events_path);
    let default_fields = ["action", "resource", "src_ip", "user_agent"];
    // An event on a resource whose fingerprint repeats later (a habit of its user).
    let marked = events[..events.len() / 4]
        .iter()
        .find(|e| e.get("resource").is_some() && expected(&events, e, &default_fields, e["ts"].as_u64().unwrap() + 1, u64::MAX).len() >= 3)
        .expect("a repeated fingerprint")
        .clone();
    let id = marked["event_id"].as_str().unwrap();
    let ts = marked["ts"].as_u64().unwrap();
    let marks = dir.path().join("marks.jsonl");
    let mark = |extra: &[&str]| {
        ok(threatflow().args(["mark", id, "--to"]).arg(&marks).arg("--input").arg(&events_path).args(extra).output().expect("spawn"));
    };

    // The default fingerprint: action, resource, src_ip, user_agent.
    mark(&[]);
    let out = dir.path().join("default.jsonl");
    let decisions = replay(&events_path, &marks, &out);
    let flagged: BTreeSet<String> = decisions.iter().map(|d| d["event_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(flagged, expected(&events, &marked, &default_fields, ts + 1, u64::MAX));
    assert!(!flagged.is_empty(), "the marked fingerprint repeats");
    assert!(decisions.iter().all(|d| d["fingerprint_match"] == format!("mark:{id}") && d["verdict"] == "threat"));

    // A coarser fingerprint (same mark id: it replaces the first), removed later on.
    std::fs::remove_file(&marks).unwrap();
    mark(&["--fields", "action,resource"]);
    let until = events[events.len() * 3 / 4]["ts"].as_u64().unwrap();
    ok(threatflow()
        .args(["mark", id, "--remove", "--effective-from", &until.to_string(), "--to"])
        .arg(&marks)
        .output()
        .expect("spawn"));
    let out = dir.path().join("coarse.jsonl");
    let flagged: BTreeSet<String> = replay(&events_path, &marks, &out).iter().map(|d| d["event_id"].as_str().unwrap().to_string()).collect();
    let wanted = expected(&events, &marked, &["action", "resource"], ts + 1, until);
    assert!(!wanted.is_empty());
    assert_eq!(flagged, wanted);
}

#[test]
fn marking_an_unknown_event_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "{\"event_id\":\"a\",\"ts\":1,\"user\":\"u\",\"action\":\"login\"}\n").unwrap();
    let out = threatflow().args(["mark", "nope", "--to"]).arg(dir.path().join("m.jsonl")).arg("--input").arg(&events).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no event \"nope\""));
}
