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

/// A flood of bad records at one watermark is kept whole up to `--dead-letter-burst`, then
/// counted in one summary dead letter per watermark, so that a partition delivering nothing but
/// bad records cannot fill memory. The dead letters are those an oracle derives from the file
/// (watermark = greatest event time before the record minus the lateness), byte-identical however
/// the input is read: batches of 64 (the least a partition reads at a time), 100 or the default, on one or two
/// workers.
#[test]
fn a_flood_of_bad_records_is_summarized_per_watermark() {
    const BURST: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let mut records = Vec::new();
    for k in 0..60u64 {
        for j in 0..[0, 1, 3, 4, 5, 9, 60][k as usize % 7] {
            records.push(if j % 2 == 0 { format!("not json {k}-{j}") } else { format!(r#"{{"event_id":"bad-{k}-{j}","ts":"soon"}}"#) });
        }
        // Every third event is a second behind the one before: it does not move the watermark.
        let ts = 1_700_000_000_000 + k * 1_000 - if k % 3 == 2 { 2_000 } else { 0 };
        records.push(format!(r#"{{"event_id":"e{k}","ts":{ts},"user":"u{}","action":"login","country":"US"}}"#, k % 3));
    }
    let input = dir.path().join("flood.jsonl");
    std::fs::write(&input, records.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();

    // The oracle: runs of bad records by watermark, in file order.
    let mut expected: Vec<serde_json::Value> = Vec::new();
    let (mut max_ts, mut run): (Option<u64>, Option<(u64, Vec<usize>)>) = (None, None);
    let close = |run: Option<(u64, Vec<usize>)>, expected: &mut Vec<serde_json::Value>| {
        let Some((_, members)) = run else { return };
        for &i in members.iter().take(BURST) {
            expected.push(serde_json::json!({"record": i + 1, "original": records[i]}));
        }
        if members.len() > BURST {
            let (first, last) = (members[BURST] + 1, members[members.len() - 1] + 1);
            let reason = format!("{} more records rejected at this time are counted here, not kept one by one: records {first} to {last} of", members.len() - BURST);
            expected.push(serde_json::json!({"record": first, "reason": reason}));
        }
    };
    for (i, line) in records.iter().enumerate() {
        match serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| v["ts"].as_u64()) {
            Some(ts) => max_ts = Some(max_ts.map_or(ts, |m| m.max(ts))),
            None => {
                let watermark = max_ts.map_or(0, |m| m.saturating_sub(5_000));
                if run.as_ref().is_some_and(|(at, _)| *at != watermark) {
                    close(run.take(), &mut expected);
                }
                run.get_or_insert((watermark, Vec::new())).1.push(i);
            }
        }
    }
    close(run.take(), &mut expected);
    assert!(expected.iter().filter(|e| e.get("reason").is_some()).count() >= 10, "the input has floods");

    let mut outputs = Vec::new();
    for (batch, workers) in [("1", "1"), ("100", "2"), ("32768", "2")] {
        let dead = dir.path().join(format!("dead-{batch}-{workers}.jsonl"));
        ok(threatflow()
            .arg("replay")
            .arg("--input")
            .arg(&input)
            .args(["--dead-letter-burst", &BURST.to_string(), "--read-batch", batch, "-w", workers, "--output", "/dev/null"])
            .arg("--dead-letters")
            .arg(&dead)
            .output()
            .expect("spawn"));
        outputs.push(std::fs::read(&dead).unwrap());
    }
    assert!(outputs.iter().all(|o| *o == outputs[0]), "the dead letters depend on how the input was read");
    let got = common::parse_lines(std::str::from_utf8(&outputs[0]).unwrap());
    assert_eq!(got.len(), expected.len(), "{got:#?}");
    for (letter, want) in got.iter().zip(&expected) {
        assert_eq!(letter["position"]["record"], want["record"], "{letter}");
        match want.get("reason") {
            Some(reason) => {
                assert!(letter["reason"].as_str().unwrap().starts_with(reason.as_str().unwrap()), "{letter} vs {reason}");
                assert_eq!((letter["truncated"].as_bool(), letter["original"].as_str()), (Some(true), None), "{letter}");
            }
            None => assert_eq!(letter["original"], want["original"], "{letter}"),
        }
    }
}

