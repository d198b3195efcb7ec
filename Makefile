# Quick start: `make demo` runs the main job end to end, `make test` runs the test suite.
# Both create .venv on first use from requirements.lock (the whole pinned tree) and reuse it after.
# VLLM=0 leaves out the vLLM engine (then serve with generator.engine: hf).
PYTHON ?= python3
VLLM ?= 1
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.flywheel-installed
# DeepSpeed JIT-compiles CPU ops it is asked for into a stable folder (compiled once).
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.flywheel/torch_extensions

.PHONY: demo test lint format bench clean

$(STAMP): requirements.lock requirements-nodeps.txt requirements-vllm.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	@# Packages whose declared dependencies we must not pull in (see the file's comments).
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	@# The vLLM engine (the `vllm` extra): its whole tree pinned, without the packages that break it.
	if [ "$(VLLM)" = 1 ]; then $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-vllm.txt; fi
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/flywheel demo

test: $(STAMP)
	@# The report's browser test drives Debian's chromium (Playwright never downloads one).
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "warning: could not install chromium (needs root: apt-get install chromium); the browser test will fail"
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf .flywheel
