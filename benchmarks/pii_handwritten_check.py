#!/usr/bin/env python3
"""Validate the hand-written PII evaluation set (pii_handwritten.jsonl).

Standard library only.  Usage:

    python3 benchmarks/pii_handwritten_check.py [path/to/file.jsonl]

Checks:
  * every line is a JSON object with exactly the keys id, domain, text, pii;
  * ids are unique non-empty strings;
  * domains are one of clinical, support, hr, chat, code, clean;
  * each pii entry is {"type": <known type>, "value": <non-empty str>};
  * every value occurs verbatim in its text (str.find);
  * no value is listed twice in one sentence;
  * the spans of different entries (all occurrences) never overlap;
  * PII domains have a non-empty pii list, "clean" has an empty one;
  * the minimum sizes (>= 25 sentences per PII domain, >= 60 clean) are met.

Occurrences of a value that are glued to a letter or digit on either side
(for example "Ann" inside "Annual") are reported as warnings, since the
convention is that every occurrence of a listed value counts as PII.

Prints per-domain counts, per-type counts and the totals; exits 1 on error.
"""

import json
import os
import sys
from collections import Counter

PII_DOMAINS = ("clinical", "support", "hr", "chat", "code")
DOMAINS = PII_DOMAINS + ("clean",)
TYPES = (
    "PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "LOCATION", "STREET_ADDRESS",
    "DATE_TIME", "US_SSN", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "URL",
    "MEDICAL_RECORD_NUMBER", "PASSPORT", "DRIVER_LICENSE", "NATIONAL_ID",
    "MAC_ADDRESS", "POSTCODE", "USERNAME", "EMPLOYEE_ID", "ORGANIZATION",
)
MIN_PER_PII_DOMAIN = 25
MIN_CLEAN = 60

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "pii_handwritten.jsonl")


def occurrences(text, value):
    """All (start, end) offsets of value in text, found with str.find."""
    spans = []
    start = text.find(value)
    while start != -1:
        spans.append((start, start + len(value)))
        start = text.find(value, start + 1)
    return spans


def main(argv):
    path = argv[1] if len(argv) > 1 else DEFAULT_PATH
    errors, warnings = [], []
    seen_ids = set()
    domain_counts = Counter()
    type_entries = Counter()
    type_spans = Counter()
    n_lines = 0

    with open(path, encoding="utf-8") as fh:
        raw_lines = fh.read().split("\n")
    if raw_lines and raw_lines[-1] == "":
        raw_lines.pop()

    for lineno, line in enumerate(raw_lines, 1):
        where = "line %d" % lineno
        if not line.strip():
            errors.append("%s: blank line" % where)
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append("%s: invalid JSON (%s)" % (where, exc))
            continue
        n_lines += 1
        if not isinstance(rec, dict):
            errors.append("%s: not a JSON object" % where)
            continue
        keys = set(rec)
        if keys != {"id", "domain", "text", "pii"}:
            errors.append("%s: keys are %s, expected id, domain, text, pii"
                          % (where, sorted(keys)))
            continue

        rid, domain, text, pii = rec["id"], rec["domain"], rec["text"], rec["pii"]
        if not isinstance(rid, str) or not rid:
            errors.append("%s: id must be a non-empty string" % where)
        elif rid in seen_ids:
            errors.append("%s: duplicate id %r" % (where, rid))
        else:
            seen_ids.add(rid)
            where = "line %d (%s)" % (lineno, rid)

        if domain not in DOMAINS:
            errors.append("%s: unknown domain %r" % (where, domain))
        else:
            domain_counts[domain] += 1
        if not isinstance(text, str) or not text.strip():
            errors.append("%s: text must be a non-empty string" % where)
            continue
        if not isinstance(pii, list):
            errors.append("%s: pii must be a list" % where)
            continue

        if domain == "clean" and pii:
            errors.append("%s: clean sentence has %d pii entries" % (where, len(pii)))
        if domain in PII_DOMAINS and not pii:
            errors.append("%s: PII sentence with an empty pii list" % where)

        values_seen = set()
        spans = []  # (start, end, type, value)
        for k, ent in enumerate(pii):
            ewhere = "%s pii[%d]" % (where, k)
            if not isinstance(ent, dict) or set(ent) != {"type", "value"}:
                errors.append("%s: entry must be {type, value}" % ewhere)
                continue
            etype, value = ent["type"], ent["value"]
            if etype not in TYPES:
                errors.append("%s: unknown type %r" % (ewhere, etype))
            if not isinstance(value, str) or not value:
                errors.append("%s: value must be a non-empty string" % ewhere)
                continue
            if value != value.strip():
                errors.append("%s: value %r has leading/trailing whitespace"
                              % (ewhere, value))
            if value in values_seen:
                errors.append("%s: value %r listed twice" % (ewhere, value))
                continue
            values_seen.add(value)
            occ = occurrences(text, value)
            if not occ:
                errors.append("%s: value %r not found in text" % (ewhere, value))
                continue
            type_entries[etype] += 1
            type_spans[etype] += len(occ)
            for s, e in occ:
                before = text[s - 1] if s > 0 else ""
                after = text[e] if e < len(text) else ""
                if (before.isalnum() and value[0].isalnum()) or \
                        (after.isalnum() and value[-1].isalnum()):
                    warnings.append("%s: %r at offset %d touches a letter/digit "
                                    "(%r|...|%r)" % (ewhere, value, s, before, after))
                spans.append((s, e, etype, value))

        spans.sort()
        for i in range(len(spans)):
            for j in range(i + 1, len(spans)):
                a, b = spans[i], spans[j]
                if b[0] >= a[1]:
                    break
                if a[3] != b[3]:
                    errors.append("%s: overlapping spans %r [%d:%d] and %r [%d:%d]"
                                  % (where, a[3], a[0], a[1], b[3], b[0], b[1]))

    for d in PII_DOMAINS:
        if domain_counts[d] < MIN_PER_PII_DOMAIN:
            errors.append("domain %s has %d sentences, need >= %d"
                          % (d, domain_counts[d], MIN_PER_PII_DOMAIN))
    if domain_counts["clean"] < MIN_CLEAN:
        errors.append("clean has %d sentences, need >= %d"
                      % (domain_counts["clean"], MIN_CLEAN))

    n_pii_sentences = sum(domain_counts[d] for d in PII_DOMAINS)
    print("file: %s" % path)
    print("\nsentences per domain:")
    for d in DOMAINS:
        print("  %-10s %4d" % (d, domain_counts[d]))
    print("  %-10s %4d" % ("PII total", n_pii_sentences))
    print("\nentities per type (listed values / occurrences in text):")
    for t in TYPES:
        if type_entries[t]:
            print("  %-22s %4d / %4d" % (t, type_entries[t], type_spans[t]))
    print("  %-22s %4d / %4d" % ("TOTAL", sum(type_entries.values()),
                                  sum(type_spans.values())))
    print("\ntotal sentences: %d (with PII: %d, clean: %d)"
          % (n_lines, n_pii_sentences, domain_counts["clean"]))

    if warnings:
        print("\n%d warning(s):" % len(warnings))
        for w in warnings:
            print("  WARN " + w)
    if errors:
        print("\n%d error(s):" % len(errors))
        for e in errors:
            print("  ERROR " + e)
        print("\nFAILED")
        return 1
    print("\nOK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
