#!/usr/bin/env python3
"""Validate JSON-lines as OCSF Detection Finding (class_uid 2004) events, offline: the OCSF
schema's own data (ocsf-json-schema bundles OCSF 1.0.0-1.8.0) compiled to a strict JSON Schema
(unknown attributes refused, enums, OCSF types, at-least-one and just-one constraints) and
checked with jsonschema, an independent implementation of what tests/ocsf.rs checks threatflow's
findings against. scripts/test installs both (pip).

Usage: validate.py EVENTS.jsonl [--version 1.8.0] [--profiles p1,p2]
Exit 0 if every non-blank line is valid, 1 if any error, 2 on usage error.
"""
import argparse
import json
import sys

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema


def build_validator(version, profiles):
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version))  # local files only
    return Draft202012Validator(schema.get_class_schema("detection_finding", profiles))


def describe(err):
    path = ".".join(str(p) for p in err.absolute_path) or "<root>"
    if err.validator in ("anyOf", "oneOf"):  # OCSF at_least_one / just_one constraints
        fields = [s["required"][0] for s in err.validator_value if "required" in s]
        kind = "at least one" if err.validator == "anyOf" else "exactly one"
        return f"{path}: needs {kind} of {fields}"
    if err.validator == "pattern":  # OCSF regexes (ip_t, mac_t, ...) are huge; don't echo them
        return f"{path}: {err.instance!r} does not match the OCSF type's pattern"
    return f"{path}: {err.message}"


def check_event(validator, event, version):
    errors = sorted(validator.iter_errors(event), key=lambda e: list(map(str, e.absolute_path)))
    msgs = [describe(e) for e in errors]
    # Invariant JSON Schema cannot express: type_uid = class_uid * 100 + activity_id
    if isinstance(event, dict) and all(isinstance(event.get(k), int)
                                       for k in ("class_uid", "activity_id", "type_uid")):
        want = event["class_uid"] * 100 + event["activity_id"]
        if event["type_uid"] != want:
            msgs.append(f"type_uid: expected {want} (class_uid*100+activity_id), got {event['type_uid']}")
    meta = event.get("metadata") if isinstance(event, dict) else None
    if isinstance(meta, dict) and isinstance(meta.get("version"), str) and meta["version"] != version:
        msgs.append(f"metadata.version: event says {meta['version']!r}, validating against {version!r}")
    return msgs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--version", default="1.8.0", help="OCSF schema version (default 1.8.0)")
    ap.add_argument("--profiles", default="", help="comma-separated OCSF profiles, e.g. host,security_control")
    args = ap.parse_args(argv)
    profiles = [p for p in args.profiles.split(",") if p]
    try:
        validator = build_validator(args.version, profiles)
    except (OSError, ValueError) as exc:
        print(f"cannot load OCSF {args.version} schema: {exc}", file=sys.stderr)
        return 2

    n_events = n_bad = 0
    with open(args.file, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            n_events += 1
            try:
                msgs = check_event(validator, json.loads(line), args.version)
            except json.JSONDecodeError as exc:
                msgs = [f"<json>: {exc}"]
            if msgs:
                n_bad += 1
                for m in msgs:
                    print(f"line {lineno}: {m}")
    print(f"{n_events - n_bad} valid, {n_bad} invalid (OCSF {args.version} detection_finding)",
          file=sys.stderr)
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
