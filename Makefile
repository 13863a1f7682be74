# Two commands on a fresh machine: `make smoke` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kiln-installed
SHARED_CORPUS := ../shared/corpus/python-docs
STDLIB_CORPUS := .smoke/stdlib-corpus

.PHONY: install system-packages lint smoke test test-long test-fast test-shuffled bench bench-peers clean

# torch is pinned first so that no bare `torch` requirement can pull a CUDA build onto a CPU machine,
# and pinned again beside the extras so that none of them (lm-eval, accelerate, peft) can move it.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test]" torch==2.13.0
	touch $(STAMP)

install: $(STAMP)

# Debian packages some tests need (Slurm, ...), listed in .ci/apt-packages: the missing ones are
# installed when run as root, otherwise named.
system-packages:
	@.ci/install-apt-packages

# The read benchmark's peers (OLMo-core, Megatron-core, litdata, MosaicML Streaming) with Kiln, in
# .venv-bench: their pins would downgrade packages Kiln's tests use.  torch stays the CPU wheel.
# torchvision (asked for by litdata and Streaming, used by neither on the benchmark's text path) goes
# again: PyPI has no build of it for the CPU torch wheel, and the one pip picks fails on import
# (`operator torchvision::nms does not exist`); bench_read.py keeps Streaming's vision part unimported.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.kiln-installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet torch==2.13.0
	echo "torch==2.13.0" > $(BENCH_VENV)/constraints.txt
	$(BENCH_VENV)/bin/python -m pip install --quiet -c $(BENCH_VENV)/constraints.txt -e ".[test]"
	$(BENCH_VENV)/bin/python -m pip install --quiet -c $(BENCH_VENV)/constraints.txt -e ".[bench]"
	$(BENCH_VENV)/bin/python -m pip uninstall --quiet --yes torchvision
	touch $@

bench-peers: $(BENCH_VENV)/.kiln-installed

smoke: $(STAMP)
	@if [ -d "$(SHARED_CORPUS)" ]; then corpus="$(SHARED_CORPUS)"; \
	else $(BIN)/python -m launch.corpus "$(STDLIB_CORPUS)"; corpus="$(STDLIB_CORPUS)"; fi; \
	echo "smoke corpus: $$corpus"; \
	$(BIN)/kiln run configs/smoke.yaml "data.inputs=[$$corpus/train-*.jsonl.gz]" "data.val_inputs=[$$corpus/val-*.jsonl.gz]"

# CI runs the tests in file order, so a run is reproduced by running it again.  `make test-shuffled` runs
# them in a random order (pytest-randomly; it prints the seed, SEED=N replays one) to show that no test
# depends on another's side effects.
# The lint gate: pyflakes and pycodestyle (the rules in pyproject.toml), ruff's formatting, and the
# one-way imports between the top-level packages (the contract in .importlinter).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

test: system-packages lint $(STAMP)
	$(BIN)/python -m pytest -q -p no:randomly --durations=30 -m "not long"

# The longest multi-process tests, left out of `make test` to keep CI within its time.
test-long: system-packages $(STAMP)
	$(BIN)/python -m pytest -q -p no:randomly -m long

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:randomly -m "not slow"

test-shuffled: system-packages $(STAMP)
	$(BIN)/python -m pytest -q $(if $(SEED),--randomly-seed=$(SEED),)

clean:
	rm -rf runs/smoke data/smoke .smoke
