"""The red team's harness: real sites behind an in-memory grid, the attack
registry and the oracle that judges what an attacker recovered.

A site here is a deployed site: the real ``fedshield.client.app.client_app()``
(its client mods and handlers), a node config written as an operator would (a CSV
at ``data-path``, a ``state-dir``), a Flower ``Context`` per run. Messages reach it
as Flower delivers them (:meth:`Federation.send`), and an exception leaves it the
way Flower's runtime reports it: an ``Error`` whose reason is the exception's text.

The coordinator builds every message itself (``red_team_protocol.SecureRound`` for
the secure-aggregation stages), so it can lie. What it recovers is judged against
the *oracle* (:class:`UpdateTap`): the update each site's train handler computed,
which the attacker never sees.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

import fedshield.client.app as site_app
from fedshield.common.run_config import RunConfig
from fedshield.models import (
    arrays_to_state,
    flatten_state,
    load_model,
    state_to_arrays,
    trainable_state,
    write_tiny_bert,
)
from fedshield.models.config import ModelConfig

__all__ = [
    "REGISTRY",
    "Attack",
    "Env",
    "Federation",
    "Outcome",
    "Result",
    "UpdateTap",
    "attack",
    "refusal_of",
    "review_rows",
    "task_identity",
    "update_of",
]

TINY = {"model.max-length": 16, "train.batch-size": 8}
RUN_KEY = "red-team"


class Outcome(StrEnum):
    REFUSED = "refused"  # the site refused, with its reason
    LEARNED_NOTHING = "learned-nothing"  # it went through; the secret stayed hidden
    SUCCEEDED = "succeeded"  # the attacker recovered what it should not


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    detail: str


@dataclass(frozen=True)
class Attack:
    """One attack: ``play`` runs it against real sites under ``env``."""

    name: str
    claim: str
    play: Callable[[Env], Result]
    in_scope: bool = True  # False: outside the documented threat model (reported)


REGISTRY: list[Attack] = []


def attack(
    name: str, claim: str, *, in_scope: bool = True
) -> Callable[[Callable[[Env], Result]], Callable[[Env], Result]]:
    def register(play: Callable[[Env], Result]) -> Callable[[Env], Result]:
        REGISTRY.append(Attack(name, claim, play, in_scope))
        return play

    return register


@contextmanager
def task_identity() -> Iterator[None]:
    """Flower stamps messages with the running task's ids; outside a Flower
    runtime they are set here (the tests' ``task_identity`` fixture does the same)."""
    from flwr.supercore.task_identity import TaskIdentity

    names = ("_run_id", "_node_id", "_task_id")
    saved = {n: TaskIdentity.__dict__.get(n) for n in names}
    for n, value in zip(names, (1, 0, 1), strict=True):
        setattr(TaskIdentity, n, value)
    try:
        yield
    finally:
        for n, old in saved.items():
            setattr(TaskIdentity, n, old)


@dataclass
class Env:
    """A scratch folder, a tiny random BERT and the app's default run config."""

    root: Path
    run_config: dict[str, Any]
    cache: dict[str, Any] = field(default_factory=dict)  # rounds attacks share
    _count: int = 0
    _global: dict[str, torch.Tensor] | None = None

    @classmethod
    def create(cls, root: Path) -> Env:
        model = write_tiny_bert(root / "tiny-bert")
        config = dict(RunConfig.parse({"model.source": str(model), **TINY}))
        return cls(root=root, run_config=config)

    def workdir(self, name: str) -> Path:
        self._count += 1
        path = self.root / f"{self._count:02d}-{name}"
        path.mkdir(parents=True)
        return path

    def config(self, **overrides: Any) -> dict[str, Any]:
        """The run config with ``overrides``, keys spelt as Python names:
        ``dp__target_epsilon=4`` sets ``dp.target-epsilon``."""
        keys = {k.replace("__", ".").replace("_", "-"): v for k, v in overrides.items()}
        return {**self.run_config, **keys}

    def global_state(self) -> dict[str, torch.Tensor]:
        """The global trainable state the coordinator sends (same on every call)."""
        if self._global is None:
            torch.manual_seed(0)
            loaded = load_model(ModelConfig.from_run_config(self.run_config))
            self._global = trainable_state(loaded.model)
        return self._global

    def vector_length(self) -> int:
        return sum(t.numel() for t in self.global_state().values())


def review_rows(site: int, count: int = 24) -> list[tuple[str, int]]:
    return [
        (f"review {j} at site {site}: {'fine acting' if j % 2 else 'dull plot'}", j % 2)
        for j in range(count)
    ]


def write_rows(path: Path, rows: Sequence[tuple[str, int]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


class Federation:
    """Deployed sites (node ids 101, 102, ...) behind one in-memory grid. Each
    site's node config is what an operator who set no policy writes (the policy's
    defaults), except ``secagg-max-colluders=0`` (a site that trusts the other
    sites: small rounds and low thresholds are allowed, so that each attack meets
    the guard it is about; the attacks on colluders pass the default, 1), plus
    ``site_policy`` (empty; the tests' weakened sites set it)."""

    site_policy: dict[str, Any] = {}
    trusting: dict[str, Any] = {"secagg-max-colluders": 0}

    def __init__(
        self,
        env: Env,
        name: str,
        sites: int,
        *,
        run_config: dict[str, Any] | None = None,
        node_config: dict[str, Any] | None = None,
        rows: Callable[[int], Sequence[tuple[str, int]]] = review_rows,
        eval_rows: Callable[[int], Sequence[tuple[str, int]]] | None = None,
    ) -> None:
        self.env = env
        self.dir = env.workdir(name)
        self.app: ClientApp = site_app.client_app()
        self.node_configs: dict[int, dict[str, Any]] = {}
        for i in range(sites):
            site_dir = self.dir / f"site-{i}"
            site_dir.mkdir()
            config = {
                "data-path": str(write_rows(site_dir / "train.csv", rows(i))),
                "state-dir": str(site_dir / "state"),
                "site-name": f"site-{i}",
                **self.trusting,
                **self.site_policy,
                **(node_config or {}),
            }
            if eval_rows is not None:
                config["eval-data-path"] = str(
                    write_rows(site_dir / "eval.csv", eval_rows(i))
                )
            self.node_configs[101 + i] = config
        self.new_run(run_config or env.run_config)

    @property
    def nodes(self) -> list[int]:
        return sorted(self.node_configs)

    def new_run(self, run_config: dict[str, Any], run_id: int = 1) -> None:
        """A new Flower run: fresh contexts (empty state), the same sites."""
        self.run_config = dict(run_config)
        self.contexts = {
            n: Context(
                run_id=run_id,
                node_id=n,
                node_config=dict(c),
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for n, c in self.node_configs.items()
        }

    def send(self, node: int, msg: Message) -> Message:
        """The site's reply, as Flower's runtime delivers it (an exception becomes
        an Error carrying its text, which the coordinator reads)."""
        try:
            return self.app(msg, self.contexts[node])
        except Exception as ex:  # noqa: BLE001 - Flower's runtime does the same
            reason = str(type(ex)) + ":<'" + str(ex) + "'>"
            return Message(Error(code=1, reason=reason), reply_to=msg)

    def message(
        self,
        node: int,
        *,
        server_round: int = 1,
        message_type: str = "train",
        secagg: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        state: dict[str, torch.Tensor] | None = None,
    ) -> Message:
        """A train/evaluate message as the server builds it."""
        content = RecordDict(
            {
                "arrays": state_to_arrays(state or self.env.global_state()),
                "config": ConfigRecord(
                    {"server-round": server_round, "run-key": RUN_KEY, **(config or {})}
                ),
            }
        )
        if secagg is not None:
            content["secagg"] = ConfigRecord(secagg)
        return Message(content=content, dst_node_id=node, message_type=message_type)


def refusal_of(reply: Message) -> str | None:
    """Why the site did not go along (an error or a refusal record), else None."""
    if reply.has_error():
        return f"error: {reply.error.reason}"
    refusal = reply.content.config_records.get("refusal")
    if refusal is not None:
        return "refusal: " + str(refusal.get("reason", ""))
    return None


def update_of(reply: Message) -> np.ndarray | None:
    """The plain update a reply carries (any ArrayRecord but a masked vector)."""
    if reply.has_error():
        return None
    for name, record in reply.content.array_records.items():
        if name != "masked" and len(record):
            state = arrays_to_state(record, what="a reply's update")
            return flatten_state(state).double().numpy()
    return None


class UpdateTap:
    """The oracle: every update a site's train handler returns, by node id (what
    the site would have sent in the clear; the attacker never reads this)."""

    def __init__(self) -> None:
        self.updates: dict[int, list[np.ndarray]] = {}

    @contextmanager
    def installed(self) -> Iterator[UpdateTap]:
        real = site_app.train

        def tapped(msg: Message, context: Context, **kwargs: Any) -> Message:
            reply = real(msg, context, **kwargs)
            x = update_of(reply)
            if x is not None:
                self.updates.setdefault(context.node_id, []).append(x)
            return reply

        site_app.train = tapped
        try:
            yield self
        finally:
            site_app.train = real

    def last(self, node: int) -> np.ndarray | None:
        got = self.updates.get(node)
        return got[-1] if got else None
