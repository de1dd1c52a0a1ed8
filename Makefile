# tritonvision developer commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The CPU wheel that lies on this machine's disk; plain `torch` would pull a CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: venv demo test test-all check lint format bench bench-quick bench-device clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e '.[export,serve,embed,deploy,ray,dev]'
	touch $(STAMP)

## Export the default encoder, start the local Triton, embed sample images, print, stop.
demo: venv
	$(VENV)/bin/tritonvision demo

## The test suite (CI runs this). The long soak is behind -m soak.
test: venv
	$(PY) -m pytest -m "not soak" -q

test-all: venv
	$(PY) -m pytest -q

check: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	MYPY=$(VENV)/bin/mypy tools/typecheck.sh

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: venv
	$(VENV)/bin/tritonvision bench --output BENCHMARKS.md

## The GPU run in one go on a machine with an NVIDIA GPU: make bench-device OUT=device-results
bench-device:
	bench/device.sh $(OUT)

bench-quick: venv
	$(VENV)/bin/tritonvision bench --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
