"""The fingerprint of a site's training data: what the ledger composes epsilon over.

``fingerprint = "sha256:" + SHA-256(sorted(SHA-256(json([text, label])) for each
record))``: a digest of the *multiset* of records the trainer sees (after PII
scrubbing), so reordering the file or converting CSV to JSONL keeps the
fingerprint, while adding, removing or editing any record changes it.

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


def dataset_fingerprint(texts: Sequence[str], labels: Sequence[int]) -> str:
    if len(texts) != len(labels):
        raise ValueError(
            f"{len(texts)} texts but {len(labels)} labels; they must pair."
        )
    digests = sorted(
        hashlib.sha256(
            json.dumps([t, int(y)], ensure_ascii=False).encode("utf-8")
        ).digest()
        for t, y in zip(texts, labels, strict=True)
    )
    return "sha256:" + hashlib.sha256(b"".join(digests)).hexdigest()
