//! `threatflow test` (rules tested as code) and `threatflow backtest` (a rule set against a
//! baseline on the same history), on real CloudTrail records: the fixture rules of
//! `tests/data/rule_tests` pass and are counted in the JUnit report; the same rules, broken on
//! purpose, fail with the difference; the tests shipped beside `rules/sigma` pass; and a backtest
//! of two rule sets that differ by one rule counts every rule's hits and names the events only one
//! side flags.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

mod common;
use common::{ok, threatflow};

fn root(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `threatflow test DIR --junit FILE`: its output, and the JUnit report.
fn test_rules(dir: &Path, junit: &Path) -> (Output, String) {
    let output = threatflow().arg("test").arg(dir).arg("--junit").arg(junit).output().expect("spawn");
    let xml = std::fs::read_to_string(junit).unwrap_or_else(|e| panic!("{}: {e}\nstdout: {}\nstderr: {}", junit.display(), stdout(&output), stderr(&output)));
    (output, xml)
}

/// A copy of a fixture directory (flat: rule files and test files), to break on purpose.
fn copy_of(fixture: &str, into: &Path) -> PathBuf {
    let copy = into.join("rules");
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(root(fixture)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
    }
    copy
}

/// Replaces the first occurrence of `from` in a file (it must be there).
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} holds {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// How many times `needle` occurs in `text`.
fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// The fixture rules (a Sigma rule with its tests under `tests:`; a base rule and an
/// `event_count` correlation with theirs in a `.tests.yml` file, timed sign-in failures and the
/// times the correlation fires at) pass, and the JUnit report counts every case in a suite per
/// rule file.
#[test]
fn fixture_rules_pass_and_the_junit_report_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let (output, xml) = test_rules(&root("tests/data/rule_tests/rules"), &dir.path().join("junit.xml"));
    let out = stdout(&ok(output));
    assert_eq!(out.lines().filter(|l| l.starts_with("ok      ")).count(), 7, "{out}");
    assert!(out.contains("ok      tf-fixture-console-login-failure-burst: the third failure within five minutes fires, and the fourth\n"), "{out}");
    assert!(out.contains("ok      tf-fixture-console-login-no-mfa: the same sign-in with MFA does not fire\n"), "{out}");
    assert!(out.lines().any(|l| l == "7 passed, 0 failed"), "{out}");

    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"threatflow test\" tests=\"7\" failures=\"0\" errors=\"0\""), "{xml}");
    assert_eq!((count(&xml, "<testsuite "), count(&xml, "<testcase "), count(&xml, "<failure"), count(&xml, "<error")), (2, 7, 0, 0), "{xml}");
    let correlations = root("tests/data/rule_tests/rules/console_login_failures.yml").display().to_string();
    assert!(xml.contains(&format!("<testsuite name=\"{correlations}\" tests=\"4\" failures=\"0\" errors=\"0\"")), "{xml}");
    assert!(
        xml.contains(&format!("<testcase name=\"tf-fixture-console-login-failure-burst: a failure exactly five minutes earlier is outside the window\" classname=\"{correlations}\"")),
        "{xml}"
    );
}

/// The same rules broken on purpose: a changed `eventName` loses the true positives, a longer
/// correlation window flags the near misses. Each failed case is named with the difference, the
/// command fails, and the JUnit report has a `<failure>` per failed case.
#[test]
fn broken_rules_fail_with_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let rules = copy_of("tests/data/rule_tests/rules", dir.path());
    // The detection's line comes before the test records, which keep their `ConsoleLogin`.
    edit(&rules.join("console_login_without_mfa.yml"), "eventName: ConsoleLogin", "eventName: ConsoleLogon");
    let (output, xml) = test_rules(&rules, &dir.path().join("junit.xml"));
    assert!(!output.status.success(), "a failed case fails the command");
    let out = stdout(&output);
    assert!(out.contains("FAILED  tf-fixture-console-login-no-mfa: the Stratus Red Team detonation fires  ("), "{out}");
    assert!(out.contains("missing:    event 0 at 2024-08-02T08:53:24.000Z (1722588804000)\n"), "{out}");
    assert!(out.contains("missing:    event \"865d9377-9c6b-4fd7-8aad-725e95f6a140\" (at any time)\n"), "{out}");
    assert!(out.contains("the rule's detections: none\n"), "{out}");
    assert!(out.contains("ok      tf-fixture-console-login-no-mfa: the same sign-in with MFA does not fire\n"), "{out}");
    assert!(out.lines().any(|l| l == "5 passed, 2 failed"), "{out}");
    assert!(stderr(&output).contains("2 of 7 rule test(s) failed"), "{}", stderr(&output));
    assert!(xml.contains("tests=\"7\" failures=\"2\" errors=\"0\""), "{xml}");
    assert_eq!(count(&xml, "<failure message=\"1 missing, 0 unexpected, 0 rejected\">"), 2, "{xml}");

    // Failures within ten minutes instead of five: the spread-out ones fire too.
    edit(&rules.join("console_login_without_mfa.yml"), "eventName: ConsoleLogon", "eventName: ConsoleLogin");
    edit(&rules.join("console_login_failures.yml"), "timespan: 5m", "timespan: 10m");
    let (output, xml) = test_rules(&rules, &dir.path().join("junit-2.xml"));
    assert!(!output.status.success());
    let out = stdout(&output);
    assert!(out.contains("FAILED  tf-fixture-console-login-failure-burst: failures spread over more than five minutes do not fire  ("), "{out}");
    assert!(out.contains("unexpected: event 2 (id \"signin-03\") at 2024-08-02T09:06:00.000Z (1722589560000)\n"), "{out}");
    assert!(out.contains("unexpected: event 6 (id \"signin-07\") at 2024-08-02T09:09:30.000Z (1722589770000)\n"), "{out}");
    assert!(out.lines().any(|l| l == "4 passed, 3 failed"), "{out}");
    assert!(xml.contains("tests=\"7\" failures=\"3\" errors=\"0\""), "{xml}");
}

/// A case naming a rule the directory does not load, or that does not parse, fails as an error.
#[test]
fn a_case_without_its_rule_or_malformed_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let rules = copy_of("tests/data/rule_tests/rules", dir.path());
    edit(&rules.join("console_login_failures.tests.yml"), "tf-fixture-console-login-failure:\n", "tf-fixture-no-such-rule:\n");
    std::fs::write(rules.join("typo.tests.yml"), "tf-fixture-console-login-no-mfa:\n  - {name: typo, events: [], expcet: []}\n").unwrap();
    let (output, xml) = test_rules(&rules, &dir.path().join("junit.xml"));
    assert!(!output.status.success());
    let out = stdout(&output);
    assert!(out.contains("FAILED  tf-fixture-no-such-rule: a rule a correlation refers to only feeds it (no `generate`)  ("), "{out}");
    assert!(out.contains("no rule with the id \"tf-fixture-no-such-rule\" is loaded"), "{out}");
    assert!(out.contains("unknown field `expcet`"), "{out}");
    assert!(out.lines().any(|l| l == "6 passed, 2 failed"), "{out}");
    assert!(xml.contains("tests=\"8\" failures=\"0\" errors=\"2\""), "{xml}");
}

/// The shipped tests (beside the 42 SigmaHQ rules with a true positive in `tests/data`: that
/// record, and near misses for ten; beside the seven new-terms rules: learning, first sightings,
/// history, late events, risk) pass with the whole shipped directory loaded.
#[test]
fn the_shipped_rule_tests_pass() {
    let dir = tempfile::tempdir().unwrap();
    // `rules` holds the SigmaHQ rules (42 with tests: every one with a true positive in
    // `tests/data`) and threatflow's new-terms rules (seven).
    let (output, xml) = test_rules(&root("rules"), &dir.path().join("junit.xml"));
    let out = stdout(&ok(output));
    let summary = out.lines().find(|l| l.ends_with(" passed, 0 failed")).unwrap_or_else(|| panic!("{out}"));
    let passed: usize = summary.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 86, "{out}");
    assert_eq!(count(&xml, "<testsuite "), 49, "{xml}");
    assert!(count(&out, ": near miss: ") >= 10, "{out}");
    assert!(count(&out, "ok      threatflow-new-terms-") >= 33, "{out}");
    assert!(out.contains("ok      77caf516-34e5-4df9-b4db-20744fea0a60: Stratus Red Team: console login without MFA\n"), "{out}");
}

/// Entity risk in a case: two high detections of one user within the window raise a risk
/// decision at the second (`expect_risk`); with a threshold they do not reach, the case fails.
#[test]
fn risk_expectations_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (output, _) = test_rules(&root("tests/data/rule_tests/risk"), &dir.path().join("junit.xml"));
    let out = stdout(&ok(output));
    assert!(out.lines().any(|l| l == "2 passed, 0 failed"), "{out}");

    let rules = copy_of("tests/data/rule_tests/risk", dir.path());
    edit(&rules.join("console_login_risk.yml"), "threshold: 100", "threshold: 150");
    let (output, _) = test_rules(&rules, &dir.path().join("junit-2.xml"));
    assert!(!output.status.success());
    let out = stdout(&output);
    assert!(
        out.contains("missing:    user \"arn:aws:iam::562283505220:user/stratus-red-team-nmfalu-jfzdtsvchl\" at 2024-08-02T09:53:24.000Z (1722592404000)\n"),
        "{out}"
    );
    assert!(out.contains("the risk decisions: none\n"), "{out}");
}

/// A backtest of two rule sets that differ by one rule (CloudTrail tampering: the new set adds
/// `PutEventSelectors` and drops `DeleteTrail`) over Stratus Red Team detonations: exact hits per
/// rule and side, alerts per day over `[--from, --to]`, and the events only one side flags.
#[test]
fn a_backtest_counts_each_rules_hits_and_the_events_only_one_side_flags() {
    let dir = tempfile::tempdir().unwrap();
    let mut records: Vec<Value> = Vec::new();
    for technique in [
        "defense-evasion.cloudtrail-delete",
        "defense-evasion.cloudtrail-event-selectors",
        "defense-evasion.cloudtrail-stop",
        "initial-access.console-login-without-mfa",
        "execution.ssm-send-command",
    ] {
        let file = root(&format!("tests/data/stratus-red-team/detonation-logs/aws.{technique}.json"));
        let array: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        records.extend(array.as_array().unwrap().iter().cloned());
    }
    records.sort_by(|a, b| a["eventTime"].as_str().cmp(&b["eventTime"].as_str()));
    assert_eq!(records.len(), 60);
    let history = dir.path().join("history.jsonl");
    std::fs::write(&history, records.iter().map(|r| r.to_string() + "\n").collect::<String>()).unwrap();

    let trail = |names: &str| {
        format!(
            "title: CloudTrail tampering\nid: trail-tampering\nlogsource: {{product: aws, service: cloudtrail}}\ndetection:\n  \
             selection:\n    eventSource: cloudtrail.amazonaws.com\n    eventName: [{names}]\n  condition: selection\nlevel: high\n"
        )
    };
    let ssm = "title: Command sent through SSM\nid: ssm-send-command\nlogsource: {product: aws, service: cloudtrail}\n\
               detection:\n  selection: {eventSource: ssm.amazonaws.com, eventName: SendCommand}\n  condition: selection\nlevel: medium\n";
    let (new, old) = (dir.path().join("new"), dir.path().join("old"));
    for (set, names) in [(&new, "StopLogging, PutEventSelectors"), (&old, "StopLogging, DeleteTrail")] {
        std::fs::create_dir(set).unwrap();
        std::fs::write(set.join("trail.yml"), trail(names)).unwrap();
        std::fs::write(set.join("ssm.yml"), ssm).unwrap();
    }
    let backtest = |to: &str, json: bool| {
        let mut command = threatflow();
        command.arg("backtest").arg("--rules-dir").arg(&new).arg("--baseline-rules-dir").arg(&old).arg("--input").arg(&history);
        command.args(["--from", "2024-07-31T00:00:00Z", "--to", to]);
        if json {
            command.arg("--json");
        }
        stdout(&ok(command.output().expect("spawn")))
    };

    let report: Value = serde_json::from_str(&backtest("2024-08-03T00:00:00Z", true)).unwrap();
    assert_eq!(report["days"], 3.0);
    let rules: Vec<&str> = report["rules"].as_array().unwrap().iter().map(|r| r["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, ["ssm-send-command", "trail-tampering"]);
    let (ssm, trail) = (&report["rules"][0], &report["rules"][1]);
    let side = |hits: u64, only: &[&str]| serde_json::json!({"hits": hits, "per_day": hits as f64 / 3.0, "only_here": only.len(), "only_here_first": only});
    assert_eq!(trail["title"], "CloudTrail tampering");
    // PutEventSelectors (12:50:02) only in the new set, DeleteTrail (12:46:41) only in the baseline.
    assert_eq!(trail["new"], side(2, &["c2a89408-340a-42f0-8ace-75d9f5769393"]));
    assert_eq!(trail["baseline"], side(2, &["ee73c230-44bc-4492-8542-cfb189eae287"]));
    assert_eq!(ssm["new"], side(1, &[]));
    assert_eq!(ssm["baseline"], side(1, &[]));
    assert_eq!(report["total"]["new"]["hits"], 3);
    assert_eq!(report["total"]["new"]["only_here"], 1);
    assert_eq!(report["total"]["baseline"]["only_here"], 1);

    // Up to 13:00 on the 31st: StopLogging (13:06:24) and SendCommand (2 August) are outside.
    let table = backtest("2024-07-31T13:00:00Z", false);
    let row = table.lines().find(|l| l.starts_with("trail-tampering ")).unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1..7], ["1", "1", "1.00", "1.00", "1", "1"], "{table}");
    assert!(!table.contains("ssm-send-command"), "{table}");
    assert!(table.contains("only new       trail-tampering: c2a89408-340a-42f0-8ace-75d9f5769393\n"), "{table}");
    assert!(table.contains("only baseline  trail-tampering: ee73c230-44bc-4492-8542-cfb189eae287\n"), "{table}");
}
