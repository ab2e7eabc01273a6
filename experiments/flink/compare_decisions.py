#!/usr/bin/env python3
"""Compare two sets of decision files (JSON lines) of the real-job comparison.

Usage: compare_decisions.py EXPECTED_FILE... -- ACTUAL_FILE...

Decisions are matched by decision_id; for each, the event, user, judged ts, verdict, model
version, rules, actions, late flag, block (blocked_by, blocked_until) and the ten features must be
equal, and the scores within 1e-12 (Java and Rust may print a double's last digit differently).
Prints one JSON line: the number of decisions, per verdict, and the checksum (the XOR of all
decision ids, 32 hex digits).
Exits 1 on any difference, naming the first few.
"""
import json
import sys

FIELDS = ("event_id", "user", "ts", "verdict", "model_version", "rules", "actions", "late", "features", "blocked_by", "blocked_until")


def load(paths):
    decisions = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    d = json.loads(line)
                    if d["decision_id"] in decisions:
                        sys.exit(f"{path}: decision {d['decision_id']} twice")
                    decisions[d["decision_id"]] = d
    return decisions


def main():
    split = sys.argv.index("--")
    expected, actual = load(sys.argv[1:split]), load(sys.argv[split + 1:])
    problems = []
    for key in sorted(expected.keys() - actual.keys())[:5]:
        problems.append(f"missing: {json.dumps({k: expected[key].get(k) for k in FIELDS})}")
    for key in sorted(actual.keys() - expected.keys())[:5]:
        problems.append(f"extra: {json.dumps({k: actual[key].get(k) for k in FIELDS})}")
    for key in sorted(expected.keys() & actual.keys()):
        a, b = expected[key], actual[key]
        differ = [k for k in FIELDS if a.get(k) != b.get(k)]
        if (a["score"] is None) != (b["score"] is None) or (a["score"] is not None and abs(a["score"] - b["score"]) > 1e-12):
            differ.append("score")
        if differ and len(problems) < 10:
            problems.append(f"{key} differs in {differ}: {json.dumps({k: a.get(k) for k in differ})} vs {json.dumps({k: b.get(k) for k in differ})}")
    checksum = 0
    verdicts = {}
    for key, d in expected.items():
        checksum ^= int(key, 16)
        verdicts[d["verdict"]] = verdicts.get(d["verdict"], 0) + 1
    print(json.dumps({"decisions": len(expected), "verdicts": verdicts, "checksum": f"{checksum:032x}",
                      "equal": not problems and len(expected) == len(actual)}))
    if problems or len(expected) != len(actual):
        print(f"{len(expected)} expected, {len(actual)} actual decisions", file=sys.stderr)
        for p in problems:
            print(p, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
