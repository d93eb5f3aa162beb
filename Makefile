# slm-swap: the two quick-start commands are `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint unit data clean-venv

# Torch is pinned and installed first: 2.13.0 has a CPU build on this machine's disk, and
# installing it before the rest stops pip from pulling a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or run: make PYTHON=python3 ...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check ray_app jobs slm_swap tests benchmarks
	$(BIN)/ruff format --check ray_app jobs slm_swap tests benchmarks

unit: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint unit

demo: $(STAMP)
	$(BIN)/python jobs/pipeline.py

# Rebuild the committed xLAM splits (byte-identical on every machine).
data: $(STAMP)
	$(BIN)/slm-swap data xlam --output-root slm_swap/02_dataset

clean-venv:
	rm -rf $(VENV)
