//! Hostile input through the `threatflow` binary: records built to break the engine change
//! nothing but their own fate (issue 16).

use std::path::Path;

mod common;
use common::{lines, ok, threatflow};

/// Replays `inputs` with the default model and rules on two workers; returns the decisions'
/// bytes and the dead letters.
fn replay(dir: &Path, name: &str, inputs: &[&Path]) -> (Vec<u8>, Vec<serde_json::Value>) {
    let root = env!("CARGO_MANIFEST_DIR");
    let decisions = dir.join(format!("{name}-decisions.jsonl"));
    let dead = dir.join(format!("{name}-dead.jsonl"));
    let mut command = threatflow();
    command.arg("replay");
    for input in inputs {
        command.arg("--input").arg(input);
    }
    ok(command
        .arg("--model")
        .arg(format!("{root}/models/default.json"))
        .arg("--rules")
        .arg(format!("{root}/rules/default.json"))
        .arg("--output")
        .arg(&decisions)
        .arg("--dead-letters")
        .arg(&dead)
        .args(["-w", "2"])
        .output()
        .expect("spawn"));
    (std::fs::read(&decisions).expect("decisions"), lines(&dead))
}

/// One record dated 2100-01-01 and one at `u64::MAX` among 40,000 ordinary events leave every
/// decision byte-identical to a run where those two records are malformed: they are dead
/// letters and never move their partition's watermark. (Before the fix the 2100 record made
/// every later event of its partition late, judged at a year-2100 watermark.)
#[test]
fn far_future_records_are_dead_letters_and_change_no_decision() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("events.jsonl");
    ok(threatflow()
        .args(["generate", "--users", "2000", "--events", "40000", "--seed", "11", "--out"])
        .arg(&generated)
        .output()
        .expect("spawn"));
    let text = std::fs::read_to_string(&generated).unwrap();
    let records: Vec<&str> = text.lines().collect();
    // Two partitions: the hostile records are in the second, whose other events must stay on time.
    let (first, second) = records.split_at(records.len() / 2);
    let write = |name: &str, lines: &[&str]| {
        let path = dir.path().join(name);
        std::fs::write(&path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        path
    };
    let first = write("a.jsonl", first);

    // Each hostile record has a twin of the same length whose `ts` is a string (malformed), so
    // that offsets, and with them the decisions' positions, are the same in both runs.
    let hostile = [
        (r#"{"event_id":"evil-2100","ts":4102444800000,"user":"u1","action":"login","country":"KP"}"#, "implausibly far in the future"),
        (r#"{"event_id":"evil-max","ts":18446744073709551615,"user":"u2","action":"download","bytes":1}"#, "after the year 9999"),
    ];
    let malformed = |record: &str| {
        let (head, tail) = record.split_once(r#""ts":"#).unwrap();
        let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
        let quoted = format!("\"{}\"", &digits[..digits.len() - 2]);
        format!("{head}\"ts\":{quoted}{}", &tail[digits.len()..])
    };
    let at = [second.len() / 10, second.len() / 2];
    let with = |replace: &dyn Fn(&str) -> String| {
        let mut lines: Vec<String> = second.iter().map(|l| l.to_string()).collect();
        for (i, (record, _)) in at.iter().zip(hostile) {
            lines.insert(*i, replace(record));
        }
        lines
    };
    let reference_lines = with(&|r| malformed(r));
    let hostile_lines = with(&|r| r.to_string());
    // The same files in both runs, so that the decisions' positions are the same.
    let second = write("b.jsonl", &reference_lines.iter().map(String::as_str).collect::<Vec<_>>());
    let (reference, reference_dead) = replay(dir.path(), "reference", &[&first, &second]);
    write("b.jsonl", &hostile_lines.iter().map(String::as_str).collect::<Vec<_>>());
    let (decided, dead) = replay(dir.path(), "hostile", &[&first, &second]);

    assert!(reference.len() > 10_000, "the stream has decisions");
    assert_eq!(reference_dead.len(), 2, "{reference_dead:#?}");
    assert!(decided == reference, "the hostile records changed decisions");
    assert_eq!(dead.len(), 2, "{dead:#?}");
    for ((record, reason), letter) in hostile.iter().zip(&dead) {
        assert_eq!(letter["original"].as_str(), Some(*record));
        assert!(letter["reason"].as_str().unwrap().contains(reason), "{letter}");
    }
}
