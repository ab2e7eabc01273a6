#!/usr/bin/env python3
"""The reference for tests/enrichment.rs: what MaxMind's own reader (the `maxminddb` package)
and a plain range search say about each address.

    geo_reference.py COUNTRY.mmdb ASN.csv < addresses > answers

One JSON object per input line: {"ip", "global", "country", "asn", "as_org"}; `global` is Python's
`ipaddress` notion of a globally routed address, and the lookups are made for every address that
parses (the test decides which answers a public address must have)."""
import bisect
import csv
import ipaddress
import json
import sys

import maxminddb


def key(ip):
    if ip.version == 4:
        return int(ipaddress.IPv6Address("::ffff:" + str(ip)))
    return int(ip)


def main():
    reader = maxminddb.open_database(sys.argv[1])
    ranges = []
    with open(sys.argv[2], newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            ranges.append((key(ipaddress.ip_address(row[0])), key(ipaddress.ip_address(row[1])), int(row[2]), row[3]))
    ranges.sort()
    starts = [r[0] for r in ranges]
    for line in sys.stdin:
        text = line.strip()
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            print(json.dumps({"ip": text, "global": False, "country": None, "asn": None, "as_org": None}))
            continue
        record = reader.get(text) or {}
        found = bisect.bisect_right(starts, key(ip)) - 1
        asn = as_org = None
        if found >= 0 and key(ip) <= ranges[found][1]:
            asn, as_org = ranges[found][2], ranges[found][3]
        print(json.dumps({"ip": text, "global": ip.is_global, "country": record.get("country_code"), "asn": asn, "as_org": as_org}))


main()
