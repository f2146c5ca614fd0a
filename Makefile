# Every target installs what it needs into .venv, so these work on a fresh
# machine that has only Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo lm test lint bench bench-lm clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,checkpoint,demo,display]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/train_digits.py $(ARGS)

# A character-level GPT on the Python docs (optax, orbax, tqdm, matplotlib: the
# checkpoint and demo extras). ARGS="--devices 8" for 8 simulated CPU devices.
lm: $(STAMP)
	$(BIN)/python examples/train_lm.py $(ARGS)

# The suite, the docstring examples in src/, then lint and type checks. pytest's
# "no tests collected" (exit 5) is reported and fails, like any other failure.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q --doctest-modules tests src/nnxfn $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; fi; exit $$rc
	$(MAKE) lint

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/run.py $(ARGS)

# The GPT of `make lm`: nnxfn vs Flax NNX vs raw JAX (ARGS="--devices 8", "--quick").
bench-lm: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/lm.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
