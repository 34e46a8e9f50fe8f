"""Attacks on a site's switches and on what leaves it: downgrade, switching secure
aggregation or scrubbing off through the run config, and reading metrics, error
messages and evaluation answers.

Judged by what the coordinator holds afterwards: a plain update in a reply, planted
PII at the site's tokenizer (what the model trains on), a metric the site's policy
should keep, a record's text in an error, an exact statistic of the site's data.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import torch
from flwr.app import Message
from red_team_harness import (
    Env,
    Federation,
    Outcome,
    Result,
    attack,
    refusal_of,
    review_rows,
    update_of,
)
from red_team_secagg import new_round

# planted value -> pieces of it that must not reach the tokenizer (digits alone
# for numbers, which a tokenizer may split)
PLANTED = {
    "Hedda Brunvoll": ("hedda", "brunvoll"),
    "ivar.lund@fjordpost.example": ("ivar.lund", "fjordpost"),
    "512-38-7261": ("512387261",),
    "+44 7700 900123": ("447700900123",),
}
TEMPLATES = (
    "My name is Hedda Brunvoll and the film bored me.",
    "Loved it. Write to ivar.lund@fjordpost.example about the sequel.",
    "Refund my ticket, SSN 512-38-7261, it was dull.",
    "Call +44 7700 900123 if the screening moves.",
)


def pii_rows(site: int) -> list[tuple[str, int]]:
    plain = [
        (f"plain review {j} at site {site}, fine acting", j % 2) for j in range(20)
    ]
    return [(t, i % 2) for i, t in enumerate(TEMPLATES)] + plain


def same_rows(rows: list[tuple[str, int]], site: int) -> list[tuple[str, int]]:
    return rows


def leaks(texts: Sequence[str]) -> list[str]:
    """The planted values any of ``texts`` still holds a piece of."""
    found = []
    for value, pieces in PLANTED.items():
        for text in texts:
            folded, digits = text.casefold(), re.sub(r"\D", "", text)
            if any(p in (digits if p.isdigit() else folded) for p in pieces):
                found.append(value)
                break
    return found


@contextmanager
def tokenizer_inputs() -> Iterator[list[str]]:
    """Every text handed to a (fast) tokenizer meanwhile: what the site trains on
    (every way of calling a Hugging Face tokenizer goes through these two)."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    seen: list[str] = []
    originals = {n: getattr(TokenizersBackend, n) for n in ("_encode_plus", "tokenize")}

    def recorder(original: Any) -> Any:
        def record(self: Any, text: Any, *args: Any, **kwargs: Any) -> Any:
            seen.extend([text] if isinstance(text, str) else list(text))
            return original(self, text, *args, **kwargs)

        return record

    for name, original in originals.items():
        setattr(TokenizersBackend, name, recorder(original))
    try:
        yield seen
    finally:
        for name, original in originals.items():
            setattr(TokenizersBackend, name, original)


def plain_reply(reply: Message, what: str) -> Result:
    x = update_of(reply)
    if x is not None:
        return Result(
            Outcome.SUCCEEDED, f"{what}: the site sent its update ({len(x)} values)"
        )
    why = refusal_of(reply)
    if why is not None:
        return Result(Outcome.REFUSED, why[:300])
    return Result(Outcome.LEARNED_NOTHING, f"no update in {list(reply.content)}")


def downgrade(env: Env, name: str, message_type: str, **run: Any) -> Result:
    fed = Federation(env, name, 1, run_config=env.config(**run))
    node = fed.nodes[0]
    reply = fed.send(node, fed.message(node, message_type=message_type))
    return plain_reply(reply, f"a plain {message_type!r} message")


@attack(
    "downgrade-train",
    "A plain 'train' message (no secure-aggregation setup) never gets a site's "
    "update in the clear.",
)
def downgrade_train(env: Env) -> Result:
    return downgrade(env, "downgrade-train", "train")


@attack(
    "downgrade-train-default",
    "Nor does 'train.default', which Flower routes to the same train handler.",
)
def downgrade_train_default(env: Env) -> Result:
    return downgrade(env, "downgrade-default", "train.default")


@attack(
    "switch-off-secagg",
    "A run config with secagg.enabled=false does not switch a site's secure "
    "aggregation off (the site's policy decides).",
)
def switch_off_secagg(env: Env) -> Result:
    return downgrade(env, "switch-off", "train", secagg__enabled=False)


def weaker_scrubbing(env: Env, name: str, **run: Any) -> Result:
    """A secure round's setup (the site trains there) under a weaker pii.* run
    config, with the site's default policy; PII at the tokenizer is the loot."""
    fed = Federation(env, name, 1, run_config=env.config(**run), rows=pii_rows)
    rnd = new_round(env, fed, [fed.nodes[0], None], threshold=2)
    with tokenizer_inputs() as seen:
        rnd.setup()
    found = leaks(seen)
    if found:
        return Result(Outcome.SUCCEEDED, f"the site trained on {found}")
    if rnd.refused:
        return Result(Outcome.REFUSED, next(iter(rnd.refused.values()))[:300])
    return Result(
        Outcome.LEARNED_NOTHING,
        f"{len(seen)} texts tokenized, every planted value scrubbed",
    )


@attack("pii-off", "A run config with pii.mode=off does not switch scrubbing off.")
def pii_off(env: Env) -> Result:
    return weaker_scrubbing(env, "pii-off", pii__mode="off")


@attack(
    "pii-fewer-entities",
    "A run config listing fewer pii.entities (AGE only) scrubs no less.",
)
def pii_fewer_entities(env: Env) -> Result:
    return weaker_scrubbing(env, "pii-entities", pii__entities="AGE")


@attack(
    "pii-higher-threshold",
    "A run config with a higher pii.score-threshold (0.99) scrubs no less.",
)
def pii_higher_threshold(env: Env) -> Result:
    return weaker_scrubbing(env, "pii-threshold", pii__score_threshold=0.99)


def observed_round(env: Env) -> dict[str, Any]:
    """What a coordinator reads in the clear in one secure round, up to the masked
    inputs, of two sites with PII in their files (default run config and policy)."""
    if "observed" not in env.cache:
        fed = Federation(env, "observed", 2, rows=pii_rows)
        rnd = new_round(env, fed, fed.nodes, threshold=2)
        rnd.setup()
        rnd.share_keys()
        rnd.masked_input({i: rnd.inbox(i) for i in rnd.cts})
        env.cache["observed"] = {
            "metrics": [
                dict(r.content.metric_records.get("metrics", {}))
                for r in rnd.setup_replies.values()
                if not r.has_error()
            ],
            "masked": rnd.masked_records,
            "refused": dict(rnd.refused),
        }
    observed: dict[str, Any] = env.cache["observed"]
    return observed


def read_keys(env: Env, keys: Sequence[str], *, prefix: str = "") -> Result:
    seen = observed_round(env)
    if not seen["metrics"]:
        return Result(Outcome.REFUSED, f"{seen['refused']}")
    found = sorted(
        {
            f"{k}={v:.4g}"
            for m in seen["metrics"]
            for k, v in m.items()
            if k in keys or (prefix and k.startswith(prefix))
        }
    )
    if found:
        return Result(Outcome.SUCCEEDED, f"in the clear: {', '.join(found)[:300]}")
    released = sorted({k for m in seen["metrics"] for k in m})
    return Result(Outcome.LEARNED_NOTHING, f"the sites released only {released}")


@attack(
    "read-pii-counts",
    "The coordinator reads no per-entity PII counts from a site's messages.",
)
def read_pii_counts(env: Env) -> Result:
    return read_keys(env, (), prefix="pii-")


@attack(
    "read-train-metrics",
    "The coordinator reads no train loss, example count, steps, sampling rate or "
    "noise multiplier in the clear (none of them is noised or accounted).",
)
def read_train_metrics(env: Env) -> Result:
    keys = ("train-loss", "num-examples", "steps", "sample-rate", "noise-multiplier")
    return read_keys(env, keys)


@attack(
    "read-saturation",
    "The coordinator reads no count of a site's update values past "
    "secagg.clip-range (a statistic of the update it chose the range for).",
)
def read_saturation(env: Env) -> Result:
    seen = observed_round(env)
    counts = [r["saturated"] for r in seen["masked"] if "saturated" in r]
    if counts:
        return Result(Outcome.SUCCEEDED, f"saturation counts in the clear: {counts}")
    if not seen["masked"]:
        return Result(Outcome.REFUSED, f"{seen['refused']}")
    return Result(Outcome.LEARNED_NOTHING, "masked-input replies carry no count")


@attack(
    "read-dataset-size",
    "The released metrics do not tell a site's data from the same data plus one "
    "record (24 vs 25 records: add/remove neighbours).",
)
def read_dataset_size(env: Env) -> Result:
    released = []
    for count in (24, 25):
        rows = review_rows(0, count)  # the same 24 records, and one more
        fed = Federation(env, f"size-{count}", 1, rows=partial(same_rows, rows))
        rnd = new_round(env, fed, [fed.nodes[0], None], threshold=2)
        rnd.setup()
        if rnd.refused:
            return Result(Outcome.REFUSED, next(iter(rnd.refused.values()))[:300])
        released.append(dict(rnd.setup_replies[0].content.metric_records["metrics"]))
    # metrics that are functions of the data's size alone, never of the noise
    exact = ("num-examples", "steps", "sample-rate", "epsilon", "run-epsilon")
    differ = {
        k: (released[0][k], released[1][k])
        for k in exact
        if k in released[0] and k in released[1] and released[0][k] != released[1][k]
    }
    if differ:
        shown = ", ".join(f"{k}: {a:.6g} vs {b:.6g}" for k, (a, b) in differ.items())
        return Result(Outcome.SUCCEEDED, f"told apart with certainty by {shown}")
    return Result(Outcome.LEARNED_NOTHING, f"equal: {sorted(released[0])}")


@attack(
    "error-message-leak",
    "An error a site sends carries no data value, even when the run config "
    "points data.label-column at the text column.",
)
def error_message_leak(env: Env) -> Result:
    run = env.config(data__label_column="text", data__text_column="label")
    fed = Federation(env, "error-leak", 1, run_config=run, rows=pii_rows)
    rnd = new_round(env, fed, [fed.nodes[0], None], threshold=2)
    rnd.setup()
    reasons = list(rnd.refused.values())
    found = leaks(reasons)
    texts = [t for t, _ in pii_rows(0) if any(t in r for r in reasons)]
    if found or texts:
        return Result(
            Outcome.SUCCEEDED,
            f"the error carries {found or texts[:1]}: {reasons[0][:200]}",
        )
    if reasons:
        return Result(Outcome.REFUSED, f"no data value in: {reasons[0][:200]}")
    return Result(Outcome.LEARNED_NOTHING, "the site trained; nothing to read")


@attack(
    "evaluate-oracle",
    "An evaluate message with a model of the coordinator's making does not "
    "return an exact statistic of the site's held-out data (a constant "
    "classifier's accuracy is the share of one label).",
)
def evaluate_oracle(env: Env) -> Result:
    labels = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]  # 30 % label 0, the secret

    def eval_rows(site: int) -> list[tuple[str, int]]:
        return [
            (f"held-out review {j} at site {site}", y) for j, y in enumerate(labels)
        ]

    fed = Federation(env, "evaluate-oracle", 1, eval_rows=eval_rows)
    crafted = {k: v.clone() for k, v in env.global_state().items()}
    for name, value in crafted.items():
        if "classifier" in name:  # always class 0, whatever the text
            value.zero_()
            if name.endswith("bias"):
                value.copy_(torch.tensor([10.0, -10.0]))
    node = fed.nodes[0]
    reply = fed.send(node, fed.message(node, message_type="evaluate", state=crafted))
    why = refusal_of(reply)
    if why is not None:
        return Result(Outcome.REFUSED, why[:300])
    metrics = dict(reply.content.metric_records.get("metrics", {}))
    share = labels.count(0) / len(labels)
    accuracy = metrics.get("accuracy")
    if isinstance(accuracy, float) and np.isclose(accuracy, share):
        return Result(
            Outcome.SUCCEEDED,
            f"accuracy {accuracy} = the share of label 0 in the site's held-out data",
        )
    return Result(Outcome.LEARNED_NOTHING, f"the reply's metrics: {metrics}")
