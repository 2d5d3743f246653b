# Two commands on a fresh machine:  `make demo` (whole DAG on the embedded default)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo smoke test test-fast deploy bench-install bench clean

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

test: install  ## unit + integration + e2e tests (real Ray, DeepSpeed, Prefect server, GX, MLflow)
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
