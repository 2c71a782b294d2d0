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
DATASET ?= beauty-top1500
PRESET ?= cpu
MAX_EPOCHS ?= 20
PORT ?= 8000
EXPORT_OUT ?= artifacts/serving

.PHONY: help venv venv-dev data run train serve test bench loadtest lint clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

# Two steps: what `make run` needs (the package + the cpu/gpu extra), then the test/load-test/dev tools for
# `make test`. pip installs torch (on CPU machines the pinned CPU wheel, which pip finds on local disk here)
# and uv, then uv installs the rest (~4 s instead of ~30 s with pip, measured on this 2-core machine).
$(VENV)/.installed-$(EXTRA): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(if $(filter 0,$(HAS_GPU)),torch==2.13.0,) uv
	$(VENV)/bin/uv pip install -q --python $(PY) $(CONSTRAINTS) -e ".[$(EXTRA)]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-$(EXTRA)
	$(VENV)/bin/uv pip install -q --python $(PY) $(CONSTRAINTS) -e ".[$(EXTRA),test,loadtest,dev]"
	touch $@

venv: $(VENV)/.installed-$(EXTRA)  ## create .venv with what training and serving need (cpu or gpu extra, chosen automatically)

venv-dev: $(VENV)/.installed-dev  ## venv + the test, load-test and lint tools

data: venv  ## make sure DATASET is in the data folder (downloads the public file, or derives a named subset, checksum-verified, if missing)
	@$(PY) -m training.data info $(DATASET) >/dev/null 2>&1 || $(PY) -m training.data download $(DATASET)

# `make run`: the first run (training/quickstart.py). On beauty-top1500 (Beauty's 1,500 most interacted items, derived
# once by `make data`) at the cpu sizes (the teacher 6 epochs at lr 0.01,
# the students to early stopping within MAX_EPOCHS), two processes side by side train a GRU consistency teacher then
# the HGN-CE student distilled from it, and MostPop
# and HGN-CE alone; the student with the best validation full-ranking NDCG@10 is exported (the log says whether that
# is the distilled one and why), each model's encode cost is measured, the proof table and every stage's time are
# printed, then the server starts. DISTILLED picks another distilled row (its teachers and student alone follow).
DISTILLED ?= ssi_hgn_ce_gru_temporal
RUN_OUT ?= artifacts/runs-first-$(PRESET)$(if $(strip $(MAX_EPOCHS)),-e$(MAX_EPOCHS),)
START := $(shell date +%s.%N)
train: data  ## the first run on DATASET (default beauty-top1500): teacher, student alone, distilled student; export the best
	$(PY) -m training.quickstart --preset $(PRESET) --dataset $(DATASET) --distilled $(DISTILLED) --out $(RUN_OUT) \
		--export-out $(EXPORT_OUT) --max-epochs $(if $(strip $(MAX_EPOCHS)),$(MAX_EPOCHS),0) --started-at $(START)

serve: venv  ## start the server on the latest artifact
	$(PY) -m serving --port $(PORT)

run: train  ## set-up + quick training + export + serve (command 1 of the README)
	@echo
	@echo "Server starting on http://127.0.0.1:$(PORT)  (docs: http://127.0.0.1:$(PORT)/docs)"
	@echo "Try (a real user's history from $(DATASET)):"
	@echo "  curl -s -X POST http://127.0.0.1:$(PORT)/recommend -H 'content-type: application/json' -d '$$(cat $(EXPORT_OUT)/example_request.json)'"
	@echo
	$(PY) -m serving --port $(PORT)

test: venv-dev  ## the test suite (command 2 of the README; what CI runs)
	$(PY) -m pytest -q

bench: venv-dev  ## serving benchmark (not part of the tests)
	$(PY) -m loadtest.bench

loadtest: venv-dev  ## 2-minute locust run against a running server on PORT
	$(PY) -m loadtest.run --url http://127.0.0.1:$(PORT) --duration 120 --users 50

lint: venv-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint Dockerfile

clean:
	rm -rf $(VENV) .pytest_cache
