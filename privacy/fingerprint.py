"""The fingerprint of a site's training data: what the ledger composes epsilon over.

``fingerprint = "text-sha256:" + SHA-256(sorted(SHA-256(json(text)) for each
record))``: a digest of the *multiset* of the records' raw texts, before PII
scrubbing, so reordering the file or converting CSV to JSONL keeps the
fingerprint, while adding, removing or editing any text changes it.

**Texts only, not labels.** Every setting that changes what a site reads besides
the texts themselves is the coordinator's: the task (a causal LM reads no label),
``data.label-column``, ``data.label-names``. Were labels part of the fingerprint,
a coordinator could present the same texts as a new dataset, with a fresh budget,
by switching ``model.task`` or pointing ``data.label-column`` elsewhere.
Relabelling the same texts therefore composes with every earlier release on them
(an upper bound for any record). (Fingerprints written before this rule,
``sha256:`` over (text, label) pairs, do not match the new ones: a ledger from
then composes from scratch under the dataset scope; ``budget-scope="site"``
composes every release whatever the fingerprint.)

A changed dataset starts a new composition under the default budget scope; records
carried over from the old version are then protected by each version's epsilon
separately. Sites that edit their data between runs should set
``budget-scope="site"`` in the node config, which composes every release on the
site whatever the data (an upper bound for any record).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

__all__ = ["dataset_fingerprint"]

PREFIX = "text-sha256:"


def dataset_fingerprint(texts: Sequence[str]) -> str:
    digests = sorted(
        hashlib.sha256(json.dumps(t, ensure_ascii=False).encode("utf-8")).digest()
        for t in texts
    )
    return PREFIX + hashlib.sha256(b"".join(digests)).hexdigest()
