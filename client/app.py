"""The fedshield ClientApp (Flower Message API): one per data-owning site.

``train``: load the global trainable state, run DP-SGD on the site's data, reply
with the *delta* of the trainable parameters plus metrics (examples, loss, the
site's cumulative sample-level epsilon at delta). The accountant's history is kept
on the site's disk under the server's run key (``accountant_store``), so epsilon
composes over every round of the run, also across a crash and ``resume=true``.
``evaluate``: accuracy/loss of the global model on the site's held-out data. These
aggregate metrics are released without DP noise; keep ``fraction-evaluate`` at 0
(the default) unless the sites accept that.
"""

from __future__ import annotations

import logging

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

from models import (
    LoadedModel,
    arrays_to_state,
    load_model,
    load_trainable_state,
    state_delta,
    state_to_arrays,
    trainable_state,
)

from .accountant_store import AccountantStore
from .config import ClientConfig
from .data import tokenize
from .evaluate import evaluate_model
from .site import load_site
from .trainer import pick_device, train_site

__all__ = ["app"]

State = dict[str, torch.Tensor]

logger = logging.getLogger(__name__)

app = ClientApp()


def _global_model(msg: Message, cfg: ClientConfig) -> tuple[LoadedModel, State]:
    """The shared model with the global trainable state from ``msg`` loaded."""
    loaded = load_model(cfg.model)
    record = msg.content.array_records.get("arrays")
    if not isinstance(record, ArrayRecord):
        raise ValueError(
            "The server's message carries no ArrayRecord under 'arrays'; expected the "
            "global trainable state. Is the ServerApp a fedshield ServerApp?"
        )
    global_state = arrays_to_state(record, what="The global model")
    load_trainable_state(loaded.model, global_state)
    return loaded, global_state


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = ClientConfig.from_run_config(dict(context.run_config))
    site = load_site(
        dict(context.node_config), dict(context.run_config), cfg, context.node_id
    )
    loaded, global_state = _global_model(msg, cfg)
    model = loaded.model
    train_config = dict(msg.content.config_records["config"])
    server_round = int(str(train_config["server-round"]))
    dataset = tokenize(site.train, loaded.tokenizer, max_length=cfg.model.max_length)

    store = AccountantStore.for_site(
        node_config=dict(context.node_config), train_config=train_config, site=site.name
    )
    result = train_site(
        model=model,
        dataset=dataset,
        train_cfg=cfg.train,
        dp_cfg=cfg.dp,
        mode=cfg.grad_sample_mode,
        accountant_json=store.load(),
        planned_rounds=cfg.num_rounds,
        seed=cfg.seed * 100_003 + server_round * 1_009 + context.node_id % 1_000_003,
        device=pick_device(),
    )
    if cfg.dp.enabled:
        store.save(result.accountant_json)  # persisted before the update leaves
    delta = state_delta(trainable_state(model), global_state)
    logger.info(
        "%s round %d: %d examples, %d steps, loss %.4f, epsilon %.3f",
        site.name,
        server_round,
        result.num_examples,
        result.steps,
        result.mean_loss,
        result.epsilon,
    )
    metrics = MetricRecord(
        {
            "num-examples": result.num_examples,
            "train-loss": result.mean_loss,
            "steps": result.steps,
            "epsilon": result.epsilon,
            "delta": cfg.dp.delta if cfg.dp.enabled else 0.0,
            "noise-multiplier": result.noise_multiplier,
            "sample-rate": result.sample_rate,
        }
    )
    content = RecordDict(
        {
            "arrays": state_to_arrays(delta),
            "metrics": metrics,
            "site": ConfigRecord({"name": site.name, "dp": cfg.dp.enabled}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = ClientConfig.from_run_config(dict(context.run_config))
    site = load_site(
        dict(context.node_config), dict(context.run_config), cfg, context.node_id
    )
    if site.eval is None:
        raise ValueError(
            f"Site {site.name!r} has no evaluation data. Set `eval-data-path` in its "
            "node config, or set fraction-evaluate=0 in the run config."
        )
    loaded, _ = _global_model(msg, cfg)
    dataset = tokenize(site.eval, loaded.tokenizer, max_length=cfg.model.max_length)
    result = evaluate_model(loaded.model, dataset, batch_size=64, device=pick_device())
    metrics = MetricRecord(
        {"num-examples": len(dataset), "accuracy": result.accuracy, "loss": result.loss}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
