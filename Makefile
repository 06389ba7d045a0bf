# finetune-operator: see README.md. Every target works from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install test test-unit test-inprocess test-e2e lint format crds crds-check demo demo-down cluster-up cluster-down binaries bench bench-trainer bench-data bench-operator gpu-check clean

install: $(STAMP) ## a .venv with the operator, the trainer and the development tools

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[trainer,bench,dev]'
	touch $(STAMP)

binaries: ## build the test control plane, Kueue, MinIO, helm and kubeconform from Go modules (cached)
	hack/build-binaries.sh

# The coverage of the glue modules (pyproject.toml [tool.coverage.run]) is printed, not enforced.
COVERAGE ?= --cov --cov-report=term
# Test workers (pytest-xdist), each with its own control plane, MinIO and Kueue, a test file to one worker:
# most of the suite waits on processes it started, so two workers use the 2 cores a single one leaves half idle.
TEST_WORKERS ?= 2

# binaries first: the workers would otherwise each start building a missing one.
test: install binaries ## the whole suite, as CI runs it: lint, CRD staleness, unit, in-process, trainer and e2e tests
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(COVERAGE) $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest -m "not e2e and not inprocess and not trainer and not s3" $(PYTEST_ARGS)

test-inprocess: install ## the reconcilers called in-process against the test control plane (tests/inprocess)
	$(PY) -m pytest -m inprocess $(COVERAGE) $(PYTEST_ARGS)

test-e2e: install
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

crds: install ## regenerate crds/ (and the chart's copy) from the pydantic models
	$(PY) -m finetune_operator.crdgen --out crds --out charts/finetune-operator/crds
	$(PY) -m finetune_operator.apidocs --out docs/api.md

cluster-up: install binaries ## start the test control plane; prints the KUBECONFIG to export
	$(PY) -m hack.cluster up

cluster-down:
	$(PY) -m hack.cluster down

demo: install ## run the main job (see README)
	$(PY) -m hack.demo up

demo-down:
	$(PY) -m hack.demo down

bench: bench-trainer bench-data bench-operator ## every benchmark (results in bench-results/)

bench-trainer: install ## ours vs TRL SFTTrainer+PEFT, side by side; GPU=1 for the 1B/8B GPU mode; BENCH_ARGS=--ablations ...
	$(PY) -m benchmarks.trainer $(if $(GPU),--gpu,) $(BENCH_ARGS)

bench-data: install ## the token store vs tokenizing in memory: peak PSS, time to first step, MB/s; BENCH_DATA_ARGS=--sizes 100,500
	$(PY) -m benchmarks.data $(BENCH_DATA_ARGS)

# Defaults finish in under 30 minutes on 2 cores; issue 16's full size:
#   make bench-operator OPBENCH_ARGS="--jobs 1000 --unrelated-pods 20000 --steady-minutes 10 --failover-jobs 100"
bench-operator: install ## the operator at scale vs bare Jobs on the test control plane; OPBENCH_ARGS=--jobs N ...
	$(PY) -m benchmarks.operator_scale $(OPBENCH_ARGS)

gpu-check: install ## the wheels a lent GPU machine lacks, into .gpu-carry/ (needs PyPI); prints the command to run there
	$(PY) -m benchmarks.carry --out .gpu-carry

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info .gpu-carry
