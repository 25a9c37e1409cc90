# Fresh-machine entry points. `make test` and `make demo` each create .venv and install from
# requirements-cpu.txt (CPU torch pinned) before running.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_out

.PHONY: setup test lint demo clean mutate

$(BIN)/segcls-train: pyproject.toml requirements-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-cpu.txt -e '.[train,export,prepare,dev]'
	@touch $@

setup: $(BIN)/segcls-train

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/lint_imports.py

test: setup lint
	$(BIN)/python -m pytest -q

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh $(DEMO_OUT)

# Mutation testing of the core (docs/mutation.md): hours on 2 cores, so not part of `test` or CI.
# cosmic-ray mutates the files in place and restores them: do not edit the tree while it runs.
# MODULES="segcls/core/metrics.py runtime/score.py" limits it; `--report` / `--retest` via MUTATE_ARGS.
MODULES ?=
MUTATE_ARGS ?=
mutate: setup
	$(BIN)/python -c 'import cosmic_ray' 2>/dev/null || $(BIN)/pip install -q -e '.[mutate]'
	OMP_NUM_THREADS=1 nice -n 10 $(BIN)/python scripts/mutate.py $(MUTATE_ARGS) $(MODULES)  # busy cores: torch threads spin

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info mutation
