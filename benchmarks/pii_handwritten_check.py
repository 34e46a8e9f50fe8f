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
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "LOCATION",
    "STREET_ADDRESS",
    "DATE_TIME",
    "US_SSN",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "URL",
    "MEDICAL_RECORD_NUMBER",
    "PASSPORT",
    "DRIVER_LICENSE",
    "NATIONAL_ID",
    "MAC_ADDRESS",
    "POSTCODE",
    "USERNAME",
    "EMPLOYEE_ID",
    "ORGANIZATION",
)
MIN_PER_PII_DOMAIN = 25
MIN_CLEAN = 60

DEFAULT_PATH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "pii_handwritten.jsonl"
)


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
        where = f"line {lineno}"
        if not line.strip():
            errors.append(f"{where}: blank line")
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"{where}: invalid JSON ({exc})")
            continue
        n_lines += 1
        if not isinstance(rec, dict):
            errors.append(f"{where}: not a JSON object")
            continue
        keys = set(rec)
        if keys != {"id", "domain", "text", "pii"}:
            errors.append(
                f"{where}: keys are {sorted(keys)}, expected id, domain, text, pii"
            )
            continue

        rid, domain, text, pii = rec["id"], rec["domain"], rec["text"], rec["pii"]
        if not isinstance(rid, str) or not rid:
            errors.append(f"{where}: id must be a non-empty string")
        elif rid in seen_ids:
            errors.append(f"{where}: duplicate id {rid!r}")
        else:
            seen_ids.add(rid)
            where = f"line {lineno} ({rid})"

        if domain not in DOMAINS:
            errors.append(f"{where}: unknown domain {domain!r}")
        else:
            domain_counts[domain] += 1
        if not isinstance(text, str) or not text.strip():
            errors.append(f"{where}: text must be a non-empty string")
            continue
        if not isinstance(pii, list):
            errors.append(f"{where}: pii must be a list")
            continue

        if domain == "clean" and pii:
            errors.append(f"{where}: clean sentence has {len(pii)} pii entries")
        if domain in PII_DOMAINS and not pii:
            errors.append(f"{where}: PII sentence with an empty pii list")

        values_seen = set()
        spans = []  # (start, end, type, value)
        for k, ent in enumerate(pii):
            ewhere = f"{where} pii[{k}]"
            if not isinstance(ent, dict) or set(ent) != {"type", "value"}:
                errors.append(f"{ewhere}: entry must be {{type, value}}")
                continue
            etype, value = ent["type"], ent["value"]
            if etype not in TYPES:
                errors.append(f"{ewhere}: unknown type {etype!r}")
            if not isinstance(value, str) or not value:
                errors.append(f"{ewhere}: value must be a non-empty string")
                continue
            if value != value.strip():
                errors.append(
                    f"{ewhere}: value {value!r} has leading/trailing whitespace"
                )
            if value in values_seen:
                errors.append(f"{ewhere}: value {value!r} listed twice")
                continue
            values_seen.add(value)
            occ = occurrences(text, value)
            if not occ:
                errors.append(f"{ewhere}: value {value!r} not found in text")
                continue
            type_entries[etype] += 1
            type_spans[etype] += len(occ)
            for s, e in occ:
                before = text[s - 1] if s > 0 else ""
                after = text[e] if e < len(text) else ""
                if (before.isalnum() and value[0].isalnum()) or (
                    after.isalnum() and value[-1].isalnum()
                ):
                    warnings.append(
                        f"{ewhere}: {value!r} at offset {s} touches a letter/digit "
                        f"({before!r}|...|{after!r})"
                    )
                spans.append((s, e, etype, value))

        spans.sort()
        for i in range(len(spans)):
            for j in range(i + 1, len(spans)):
                a, b = spans[i], spans[j]
                if b[0] >= a[1]:
                    break
                if a[3] != b[3]:
                    errors.append(
                        f"{where}: overlapping spans {a[3]!r} [{a[0]}:{a[1]}] and "
                        f"{b[3]!r} [{b[0]}:{b[1]}]"
                    )

    for d in PII_DOMAINS:
        if domain_counts[d] < MIN_PER_PII_DOMAIN:
            errors.append(
                f"domain {d} has {domain_counts[d]} sentences, "
                f"need >= {MIN_PER_PII_DOMAIN}"
            )
    if domain_counts["clean"] < MIN_CLEAN:
        errors.append(
            f"clean has {domain_counts['clean']} sentences, need >= {MIN_CLEAN}"
        )

    n_pii_sentences = sum(domain_counts[d] for d in PII_DOMAINS)
    print(f"file: {path}")
    print("\nsentences per domain:")
    for d in DOMAINS:
        print(f"  {d:<10s} {domain_counts[d]:4d}")
    print(f"  {'PII total':<10s} {n_pii_sentences:4d}")
    print("\nentities per type (listed values / occurrences in text):")
    for t in TYPES:
        if type_entries[t]:
            print(f"  {t:<22s} {type_entries[t]:4d} / {type_spans[t]:4d}")
    print(
        f"  {'TOTAL':<22s} {sum(type_entries.values()):4d} / "
        f"{sum(type_spans.values()):4d}"
    )
    print(
        f"\ntotal sentences: {n_lines} (with PII: {n_pii_sentences}, "
        f"clean: {domain_counts['clean']})"
    )

    if warnings:
        print(f"\n{len(warnings)} warning(s):")
        for w in warnings:
            print("  WARN " + w)
    if errors:
        print(f"\n{len(errors)} error(s):")
        for e in errors:
            print("  ERROR " + e)
        print("\nFAILED")
        return 1
    print("\nOK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
