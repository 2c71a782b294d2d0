# One-command set-up. Picks the `gpu` extra when nvidia-smi sees a GPU, `cpu` otherwise,
# and on CPU machines pins torch to the CPU wheel (constraints-cpu.txt).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
EXTRA := $(if $(filter 1,$(HAS_GPU)),gpu,cpu)
CONSTRAINTS := $(if $(filter 1,$(HAS_GPU)),,-c constraints-cpu.txt)
# Data: the folder is chosen by protocol.data.resolve_data_dir, the rule of every entry point
# (SSI_DATA_DIR when set, else ./data when it exists, else ../shared/data when it exists, else ./data);
# make only passes SSI_DATA_DIR on when you set it (`make run SSI_DATA_DIR=/path/to/data`).
ifneq ($(strip $(SSI_DATA_DIR)),)
export SSI_DATA_DIR
endif
DATASET ?= lastfm
PRESET ?= smoke
PORT ?= 8000

.PHONY: help venv data run train serve test bench loadtest lint clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

$(VENV)/.installed-$(EXTRA): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(filter 0,$(HAS_GPU)),$(PY) -m pip install -q torch==2.13.0,)
	$(PY) -m pip install -q $(CONSTRAINTS) -e ".[$(EXTRA),test,loadtest,dev]"
	touch $@

venv: $(VENV)/.installed-$(EXTRA)  ## create .venv and install (cpu or gpu extra, chosen automatically)

data: venv  ## make sure DATASET is in the data folder (downloads the public file, checksum-verified, if missing)
	@$(PY) -m training.data info $(DATASET) >/dev/null 2>&1 || $(PY) -m training.data download $(DATASET)

# `make run` trains the rows needed to serve SSI-HGN (MostPop, HGN alone, three teachers, SSI-HGN);
# RUN_MODELS= (empty) trains the whole catalogue of run_all.
RUN_MODELS ?= mostpop hgn ssi_hgn
train: data  ## run_all on DATASET with PRESET (default: smoke on lastfm), then export the best SSI student
	$(PY) training/run_all.py --preset $(PRESET) --datasets $(DATASET) --out artifacts/runs-$(PRESET) \
		--export-out artifacts/serving $(if $(strip $(RUN_MODELS)),--models $(RUN_MODELS),)

serve: venv  ## start the server on the latest artifact
	$(PY) -m serving --port $(PORT)

run: train  ## set-up + train quick preset + export + serve (command 1 of the README)
	@echo
	@echo "Server starting on http://127.0.0.1:$(PORT)  (docs: http://127.0.0.1:$(PORT)/docs)"
	@echo "Try:  curl -s -X POST http://127.0.0.1:$(PORT)/recommend -H 'content-type: application/json' -d '{\"history\": [1, 2, 3], \"k\": 5}'"
	@echo
	$(PY) -m serving --port $(PORT)

test: venv  ## the test suite (command 2 of the README; what CI runs)
	$(PY) -m pytest -q

bench: venv  ## serving benchmark (not part of the tests)
	$(PY) -m loadtest.bench

loadtest: venv  ## 2-minute locust run against a running server on PORT
	$(PY) -m loadtest.run --url http://127.0.0.1:$(PORT) --duration 120 --users 50

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint Dockerfile

clean:
	rm -rf $(VENV) .pytest_cache
