# Fresh-machine entry points. `make test` and `make demo` each create .venv and install from
# requirements-cpu.txt (pinned versions) before running.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_out
# torch comes first, from PyTorch's CPU wheel index: PyPI's Linux torch is the multi-GB CUDA build. Where that
# index cannot be reached, pip goes on with the sources in its own configuration (a local wheel folder, a
# mirror); TORCH_INDEX= (empty) leaves the index out.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIN := $(shell grep -oE '^torch==[^ ]+' requirements-cpu.txt)

.PHONY: setup test lint docs demo clean mutate

$(BIN)/segcls-train: pyproject.toml requirements-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --retries 2 --no-deps $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) '$(TORCH_PIN)'
	$(BIN)/pip install -q -r requirements-cpu.txt -e '.[train,export,prepare,view,openvino,docs,dev]'
	@touch $@

setup: $(BIN)/segcls-train

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/lint_imports.py

# The documentation site (mkdocs.yml): --strict turns a broken link, a missing page or a failed API or
# command reference into an error. Output in site/. NO_MKDOCS_2_WARNING: Material's banner about its end of
# life (2027-05) and its successor, printed on every build; the pins hold until the site moves.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict  # not --quiet: it hides the warnings --strict counts

test: setup lint docs
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
	rm -rf $(VENV) $(DEMO_OUT) build site *.egg-info mutation
