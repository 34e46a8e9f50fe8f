"""A finished simulation as the audit loads it: its ``summary.json``, its run config
parsed once, its simulated sites and what each claimed, and its final model.

Only a completed run has a final model; only simulated sites (``site-<k>``) can be
audited, since the audit regenerates their records from the run config and seed.
Every refusal is an :class:`AuditError` that says what was found and what to do.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshield.client.config import ClientConfig
from fedshield.common.config import ConfigError
from fedshield.common.layout import RunLayout
from fedshield.common.run_config import RunConfig
from fedshield.common.schema import epsilon_from_json
from fedshield.models import LoadedModel, load_model, load_trainable_state
from fedshield.privacy.audit import AuditConfig
from fedshield.privacy.pii import PIIMode
from fedshield.privacy.pii.scrubber import KEY_NAME

from ..scenario import Scenario

__all__ = [
    "AuditError",
    "FinishedRun",
    "SiteClaim",
    "load_final_model",
    "load_run",
    "site_index",
]


class AuditError(RuntimeError):
    """The run directory cannot be audited; the message says why and what to do."""


@dataclass(frozen=True, kw_only=True)
class SiteClaim:
    """What a site's run reported for one record of its data: its sample-level
    epsilon for this run (inf without DP) at ``delta``."""

    epsilon: float
    delta: float


@dataclass(frozen=True, kw_only=True)
class FinishedRun:
    """A completed run, with its configs parsed once at this boundary.

    ``run_config`` is the summary's config, parsed (keys added since the run take
    their declared defaults; the scenario regenerates records from it); ``client``
    and ``audit`` are its views.
    ``sites`` are the ``site-<k>`` names in k order; ``num_partitions`` is how many
    sites the simulation had."""

    run_dir: Path
    summary: dict[str, Any]
    run_config: RunConfig
    scenario: Scenario
    client: ClientConfig
    audit: AuditConfig
    sites: tuple[str, ...]
    num_partitions: int

    def state_dir(self, site: str) -> Path:
        """The site's state dir under the run (scrub cache, pseudonym key, ledger)."""
        return RunLayout(self.run_dir).site(site)

    def site_summary(self, site: str) -> dict[str, Any]:
        """The site's entry in ``summary.json``."""
        entry: dict[str, Any] = self.summary["sites"][site]
        return entry

    def claim(self, site: str) -> SiteClaim:
        """The site's claimed (epsilon, delta): inf without sample-level DP."""
        entry = self.site_summary(site)
        delta = float(entry.get("delta") or self.client.dp.delta)
        claimed = entry.get("run_epsilon")
        dp = bool(entry.get("noise_multiplier"))
        return SiteClaim(
            epsilon=epsilon_from_json(claimed)
            if dp and claimed is not None
            else math.inf,
            delta=delta,
        )

    @property
    def noise_multiplier(self) -> float:
        """The largest noise multiplier any site trained with (0.0 without DP):
        what the LiRA reference models train at."""
        return max(
            float(self.site_summary(n).get("noise_multiplier") or 0.0)
            for n in self.sites
        )


def site_index(name: str) -> int:
    """k of a simulated site ``site-<k>``."""
    match = re.fullmatch(r"site-(\d+)", name)
    if match is None:
        raise AuditError(
            f"Site {name!r} is not a simulated site (site-<k>). Auditing a deployed "
            "run needs that site's records, which stay at the site; run the audit "
            "on a simulation of the same setup."
        )
    return int(match.group(1))


def _read_summary(run_dir: Path) -> dict[str, Any]:
    path = RunLayout(run_dir).summary
    if not path.is_file():
        raise AuditError(
            f"{path} does not exist: expected a fedshield run directory (the --out "
            "of `fedshield simulate`)."
        )
    try:
        summary: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AuditError(f"{path} is not readable JSON ({err}).") from err
    if summary.get("status") != "completed":
        raise AuditError(
            f"The run in {run_dir} has status {summary.get('status')!r}; only a "
            "completed run has a final model to audit. Resume it first "
            '(--run-config "resume=true").'
        )
    return summary


def load_run(run_dir: Path, *, num_sites: int | None = None) -> FinishedRun:
    """Read and check the finished run in ``run_dir``.

    ``num_sites``: how many sites the simulation had (default: one more than the
    highest site-<k> in the summary; a site that never reported would make that
    guess wrong, which the check of every site's record count catches)."""
    summary = _read_summary(run_dir)
    try:
        run_config = RunConfig.parse(summary["config"])
        client = ClientConfig.from_run_config(run_config)
        audit = AuditConfig.from_run_config(run_config)
    except ConfigError as err:
        raise AuditError(f"The run's config in {run_dir}/summary.json: {err}") from err
    sites = summary.get("sites", {})
    if not sites:
        raise AuditError(f"{run_dir}/summary.json lists no sites: nothing to audit.")
    names = tuple(sorted(sites, key=site_index))
    run = FinishedRun(
        run_dir=run_dir,
        summary=summary,
        run_config=run_config,
        scenario=Scenario.from_run_config(run_config),
        client=client,
        audit=audit,
        sites=names,
        num_partitions=num_sites or max(site_index(n) for n in names) + 1,
    )
    if client.pii.mode is PIIMode.PSEUDONYM:
        for name in names:
            if not (run.state_dir(name) / KEY_NAME).is_file():
                raise AuditError(
                    f"{run_dir}/sites/{name}/{KEY_NAME} is missing: the audit needs "
                    "the site's pseudonym key to see the text training saw. Restore "
                    "it (a new key would give other surrogates)."
                )
    return run


def load_final_model(run: FinishedRun) -> LoadedModel:
    """The run's starting model with the final trainable weights loaded."""
    from safetensors.torch import load_file

    name = run.summary.get("weights", {}).get("trainable_state", "")
    layout = RunLayout(run.run_dir)
    path = layout.root / name if name else layout.final_trainable
    if not path.is_file():
        raise AuditError(f"{path} (the final model's trainable weights) is missing.")
    loaded = load_model(run.client.model)
    load_trainable_state(loaded.model, load_file(str(path)))
    return loaded
