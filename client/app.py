"""The fedshield ClientApp (Flower Message API): one per data-owning site.

Secure aggregation (``secagg.enabled``) is the client mod :mod:`client.secagg_mod`
around ``train``: the update computed here is masked at the site and never sent in
the clear.

``train``: plan the round's DP-SGD release, check it against the site's budget in
its ledger (refusing the round if it would exceed ``max-epsilon``), load the
global trainable state, train, record the release in the site's signed ledger,
and only then reply with the *delta* of the trainable parameters (clipped to
``client-dp.clip-norm`` when client-level DP is on) plus metrics (examples, loss,
the site's cumulative sample-level epsilon at its delta). See
:mod:`client.release` for the order and why it never overspends.

A refused round replies with a ``refusal`` ConfigRecord (site, reason, epsilon
spent and after, budget) and no update; the server reports it and goes on.

``evaluate``: accuracy/loss of the global model on the site's held-out data. These
aggregate metrics are released without DP noise; keep ``fraction-evaluate`` at 0
(the default) unless the sites accept that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import secrets

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from fedshield.common.config import ConfigError
from fedshield.common.device import pick_device
from fedshield.common.run_config import RunConfig
from fedshield.common.schema import (
    Metric,
    Record,
    Refusal,
    SiteKey,
    TrainKey,
    pii_metric,
)
from fedshield.models import (
    LoadedModel,
    arrays_to_state,
    load_model,
    load_trainable_state,
    state_delta,
    state_to_arrays,
    tasks,
    trainable_state,
)
from fedshield.models.texts import LabeledTexts
from fedshield.privacy.budget import TargetEpsilonSpent, plan_release
from fedshield.privacy.client_dp import clip_update
from fedshield.privacy.fingerprint import dataset_fingerprint

from .config import ClientConfig
from .errors import refusal_reply, site_errors_mod
from .node import NodeConfig
from .policy import PolicyRefused
from .release import Refused, SiteBudget, release_round, site_state_dir
from .scrubbing import scrub_site
from .secagg_mod import site_secagg_mod
from .site import SiteData, SiteFiles, SiteSource
from .trainer import TrainResult, train_site

__all__ = ["client_app", "evaluate", "train"]

State = dict[str, torch.Tensor]

logger = logging.getLogger(__name__)

DEPLOYED_SITE = SiteFiles()


def client_app(
    *, sites: SiteSource = DEPLOYED_SITE, faults: Mod | None = None
) -> ClientApp:
    """The fedshield ClientApp, reading each site's settings and examples from
    ``sites``; secure aggregation (the client mod) wraps ``train``. ``faults``:
    a mod that makes simulated sites fail or lag (:mod:`simulations.faults`)."""
    # outermost first: no exception's message (which may quote the site's data)
    # reaches the server as is
    mods = [site_errors_mod, *([faults] if faults else []), site_secagg_mod(sites)]
    app = ClientApp(mods=mods)

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return train(msg, context, sites=sites)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return evaluate(msg, context, sites=sites)

    return app


def _global_model(msg: Message, cfg: ClientConfig) -> tuple[LoadedModel, State]:
    """The shared model with the global trainable state from ``msg`` loaded."""
    loaded = load_model(cfg.model)
    record = msg.content.array_records.get(Record.ARRAYS)
    if not isinstance(record, ArrayRecord):
        raise ValueError(
            "The server's message carries no ArrayRecord under 'arrays'; expected the "
            "global trainable state. Is the ServerApp a fedshield ServerApp?"
        )
    global_state = arrays_to_state(record, what="The global model")
    load_trainable_state(loaded.model, global_state)
    return loaded, global_state


def training_seed(cfg: ClientConfig, site: str, server_round: int) -> int:
    """The seed of a site's round: Poisson sampling and DP noise must be unknown to
    the server, so under DP it is 63 bits from the OS CSPRNG (a seed derived from
    the run config, round and node id would let the server regenerate the noise).
    Non-private runs are reproducible: a hash of (seed, site, round)."""
    if cfg.dp.enabled:
        return secrets.randbits(63)
    digest = hashlib.sha256(f"{cfg.seed}/{site}/{server_round}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _budget_refusal(msg: Message, site: SiteData, refused: Refused) -> Message:
    check = refused.check
    refusal = Refusal(
        reason=refused.reason,
        epsilon_spent=check.spent,
        epsilon_after=check.after,
        max_epsilon=check.max_epsilon,
        delta=check.delta,
    )
    return refusal_reply(msg, site.name, refusal)


def _settings(
    context: Context, sites: SiteSource
) -> tuple[RunConfig, ClientConfig, NodeConfig]:
    """The run's config and the site's own, each parsed once (the site source reads
    its own keys from the same parsed run config)."""
    run_config = RunConfig.parse(dict(context.run_config))
    cfg = ClientConfig.from_run_config(run_config)
    return run_config, cfg, sites.node_config(dict(context.node_config), run_config)


def _policy_refusal(
    msg: Message,
    context: Context,
    node: NodeConfig,
    cfg: ClientConfig,
    *,
    evaluate: bool = False,
) -> Message | None:
    """The site's refusal if the run asks for less than its policy (checked before
    any record is read), else None."""
    try:
        if evaluate:
            node.policy.check_evaluate()
        node.policy.check_run(secagg=cfg.secagg, pii=cfg.pii)
    except PolicyRefused as refused:
        return refusal_reply(
            msg, node.name(context.node_id), Refusal(reason=str(refused))
        )
    return None


def _with_late_records(site: SiteData) -> SiteData:
    """``site`` with its ``after_scrubbing`` records (simulated audit canaries)
    appended to its training data, last."""
    late = site.after_scrubbing
    if late is None:
        return site
    train = LabeledTexts(site.train.texts + late.texts, site.train.labels + late.labels)
    return dataclasses.replace(site, train=train, after_scrubbing=None)


def train(
    msg: Message, context: Context, *, sites: SiteSource = DEPLOYED_SITE
) -> Message:
    run_config, cfg, node = _settings(context, sites)
    refused = _policy_refusal(msg, context, node, cfg)
    if refused is not None:
        return refused
    site = sites.load(node, cfg, run_config, context.node_id)
    train_config = dict(msg.content.config_records[Record.CONFIG])
    server_round = int(str(train_config[TrainKey.SERVER_ROUND]))
    budget = SiteBudget.resolve(
        node=node,
        train_config=train_config,
        site=site.name,
        run_delta=cfg.dp.delta,
    )
    # the budget's scope is the site's RAW texts: no run setting (pii.*, the
    # pseudonym key, the task, the label column) can present the same data as a new
    # dataset with a fresh budget
    raw_fingerprint = dataset_fingerprint(site.train.texts)
    # PII is removed before anything is tokenized
    scrubbed = scrub_site(
        site, cfg=node.policy.pii_for(cfg.pii), state_dir=budget.state_dir
    )
    late = scrubbed.site.after_scrubbing  # simulated secret canaries, or None
    site = _with_late_records(scrubbed.site)
    try:
        planned = plan_release(
            cfg.dp,
            num_examples=len(site.train),
            batch_size=cfg.train.batch_size,
            local_epochs=cfg.train.local_epochs,
            planned_rounds=cfg.num_rounds,
            server_round=server_round,
            delta=budget.delta,  # the budget's: sigma calibrated where ε is reported
            history=budget.history(raw_fingerprint),  # target ε: what the data spent
        )
    except TargetEpsilonSpent as spent:  # a refusal, reported as such
        return refusal_reply(msg, site.name, Refusal(reason=str(spent)))
    loaded, global_state = None, None

    def run_training() -> TrainResult:
        nonlocal loaded, global_state
        loaded, global_state = _global_model(msg, cfg)
        dataset = tasks.encode(site.train, loaded.tokenizer, cfg.model)
        if late is not None:  # a truncated secret would test nothing: refuse
            longest = 1 + max(  # + the end token
                len(loaded.tokenizer(t)["input_ids"]) for t in late.texts
            )
            if longest > cfg.model.max_length:
                raise ConfigError(
                    f"The audit's secret canaries take up to {longest} tokens with "
                    "this tokenizer, more than model.max-length="
                    f"{cfg.model.max_length}: truncated, the audit could not rank "
                    f"their digits. Raise model.max-length to at least {longest}."
                )
        truncated = getattr(dataset, "truncated", 0)  # causal LM: cut, not chunked
        if truncated:
            logger.warning(
                "%s: %d of %d records exceed model.max-length=%d tokens and are "
                "truncated (one record is one example: never chunked)",
                site.name,
                truncated,
                len(dataset),
                cfg.model.max_length,
            )
        return train_site(
            model=loaded.model,
            dataset=dataset,
            train_cfg=cfg.train,
            dp_cfg=cfg.dp,
            mode=cfg.grad_sample_mode,
            noise_multiplier=planned.noise_multiplier,
            seed=training_seed(cfg, site.name, server_round),
            device=pick_device(),
            canaries=site.gradient_canaries,  # simulated sites only
            per_sample_loss=tasks.per_sample_loss(cfg.model),
            adversarial=cfg.adversarial,
        )

    outcome = release_round(
        budget=budget,
        run_id=str(train_config.get(TrainKey.RUN_KEY, "")),
        server_round=server_round,
        fingerprint=raw_fingerprint,
        planned=planned,
        accountant=cfg.dp.accountant,
        train=run_training,
    )
    if isinstance(outcome, Refused):
        return _budget_refusal(msg, site, outcome)
    assert loaded is not None and global_state is not None  # set by run_training
    result = outcome.result
    delta = state_delta(trainable_state(loaded.model), global_state)
    if cfg.client_dp.enabled:  # client-level DP: bound the site's whole update
        bound = cfg.client_dp.clip_norm
        if cfg.secagg.enabled:  # leave room for the stochastic rounding of secagg
            q = cfg.secagg.quantizer
            numel = sum(t.numel() for t in delta.values())
            bound = max(bound - math.sqrt(numel) * 2 * q.clip_range / q.levels, 0.0)
        delta, norm = clip_update(delta, clip_norm=bound)
        logger.info(
            "%s round %d: update norm %.4g clipped to %g",
            site.name,
            server_round,
            norm,
            cfg.client_dp.clip_norm,
        )
    delta = sites.poison_update(node, run_config, delta)  # simulated attackers only
    logger.info(
        "%s round %d: %d examples, %d steps, loss %.4f, epsilon %.3f",
        site.name,
        server_round,
        result.num_examples,
        result.steps,
        result.mean_loss,
        outcome.epsilon,
    )
    release = result.release
    metrics = node.policy.released(
        {
            Metric.NUM_EXAMPLES: result.num_examples,
            Metric.TRAIN_LOSS: result.mean_loss,
            Metric.STEPS: result.steps,
            Metric.EPSILON: outcome.epsilon,
            Metric.RUN_EPSILON: outcome.run_epsilon,
            Metric.DELTA: budget.delta,
            Metric.MAX_EPSILON: budget.max_epsilon,
            Metric.NOISE_MULTIPLIER: release.noise_multiplier,
            Metric.SAMPLE_RATE: release.sample_rate,
            # counts of findings per entity type, never the values
            # (every configured type, zeros included: FedAvg needs equal metric keys)
            **{pii_metric(e): scrubbed.counts.get(e, 0) for e in cfg.pii.entities},
        }
    )  # only what the site's policy lets leave in the clear
    content = RecordDict(
        {
            Record.ARRAYS: state_to_arrays(delta),
            Record.METRICS: MetricRecord(metrics),
            Record.SITE: ConfigRecord(
                {SiteKey.NAME: site.name, SiteKey.DP: cfg.dp.enabled}
            ),
        }
    )
    return Message(content=content, reply_to=msg)


def evaluate(
    msg: Message, context: Context, *, sites: SiteSource = DEPLOYED_SITE
) -> Message:
    run_config, cfg, node = _settings(context, sites)
    refused = _policy_refusal(msg, context, node, cfg, evaluate=True)
    if refused is not None:
        return refused
    site = sites.load(node, cfg, run_config, context.node_id)
    config = msg.content.config_records.get(Record.CONFIG)
    state_dir = site_state_dir(
        node, dict(config) if config is not None else {}, site.name
    )
    site = scrub_site(site, cfg=node.policy.pii_for(cfg.pii), state_dir=state_dir).site
    if site.eval is None:
        raise ValueError(
            f"Site {site.name!r} has no evaluation data. Set `eval-data-path` in its "
            "node config, or set fraction-evaluate=0 in the run config."
        )
    loaded, _ = _global_model(msg, cfg)
    dataset = tasks.encode(site.eval, loaded.tokenizer, cfg.model)
    result = tasks.evaluate(
        loaded.model,
        dataset,
        cfg.model,
        batch_size=cfg.eval_batch_size,
        device=pick_device(),
    )
    metrics = MetricRecord(
        {
            Metric.NUM_EXAMPLES: len(dataset),
            Metric.ACCURACY: result.accuracy,
            Metric.LOSS: result.loss,
        }
    )
    return Message(content=RecordDict({Record.METRICS: metrics}), reply_to=msg)
