# Two commands on a fresh machine:  `make demo` (whole DAG on the embedded default)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install browser demo smoke test test-fast deploy bench-install bench clean

# torch==2.13.0 (CPU) is pinned: pip takes the local CPU wheel; a looser spec would download a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install  ## the whole DAG as a Prefect flow on the embedded default (man pages -> registry)
	$(BIN)/modpipe run

smoke: install  ## the same DAG on a tiny slice
	$(BIN)/modpipe run --config recipes/smoke.yaml

# The run report's browser test renders it in headless Chromium: Debian's packages, installed when absent
# (apt-get as root, as CI runs; through sudo otherwise).
browser:  ## chromium + chromedriver for tests/unit/test_report.py
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation; }

test: install browser  ## unit + integration + e2e tests (real Ray, DeepSpeed, Prefect server, GX, MLflow, Chromium)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not integration" $(PYTEST_ARGS)

deploy: install  ## register the Prefect deployments of flows/prefect.yaml (needs PREFECT_API_URL)
	$(BIN)/prefect work-pool create modpipe-process --type process --overwrite
	MODPIPE_HOME=$(CURDIR) $(BIN)/prefect --no-prompt deploy --all --prefect-file flows/prefect.yaml

bench-install: install  ## the peers that benchmarks/ measure modpipe against (datatrove + spaCy)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,bench]'

BENCH_ARGS ?= --repeat 2
bench: install  ## (after `make bench-install`) curate vs datatrove on the man-page corpus, same run; JSON under benchmarks/results/
	$(BIN)/python benchmarks/curate_vs_datatrove.py $(BENCH_ARGS)

clean:
	rm -rf runs/ .pytest_cache
