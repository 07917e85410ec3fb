# Each target sets up its own virtual environment (.venv) the first time (Python 3.10 or later;
# on Debian/Ubuntu the venv module is a package of its own: sudo apt-get install python3-venv).
# A python that already has torch (Colab, Kaggle, your own env) keeps its torch: the venv then sees it
# through --system-site-packages. Otherwise torch is installed into the venv:
#   TORCH_SPEC   which torch (default: the pinned version below)
#   TORCH_INDEX  where from (default: PyTorch's CPU index, the CPU-only build, about 200 MB; the default
#                index gives Linux the CUDA build, several GB). For a CUDA build, e.g.
#                make setup TORCH_INDEX=https://download.pytorch.org/whl/cu126, or TORCH_INDEX= for the
#                package index pip is configured with. An index that cannot be reached (an offline mirror,
#                like this project's machines) falls back to that configured index, saying so.
# (environment.yml, for conda, installs the same torch the same way.)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.installed-dev
# tests write into a scratch area, never over data/ or the README's figures; the notebooks
# always start from an empty one, so their checked outputs are the ones recorded
TEST_ENV := BRATS_PROFILE=ci BRATS_FIGURES_DIR=$(CURDIR)/data/test/figures NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg
NOTEBOOK_DATA := $(CURDIR)/data/test/notebooks
# nbval runs copies of the notebooks in which each exercise's solution (a folded <details> cell) is a code cell
# in its place (brats_utils/demo/solutions.py); inside the checkout, so their setup cell finds it
RUNNABLE := $(CURDIR)/data/test/runnable-notebooks
VENV_HELP := could not create $(VENV) with $(PYTHON) -m venv; on Debian/Ubuntu: sudo apt-get install python3-venv

.PHONY: demo publish test test-browser lint unit unit-fast notebooks notebook-outputs lab bench gpu-check setup torch clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c "import sys; sys.exit(sys.version_info < (3, 10))" || { echo "$(PYTHON) is older than 3.10"; exit 1; }
	@if [ ! -x $(BIN)/python ]; then \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then \
	    echo "Using the torch that $(PYTHON) already has."; \
	    $(PYTHON) -m venv --system-site-packages $(VENV) || { rm -rf $(VENV); echo "$(VENV_HELP)"; exit 1; }; \
	  else \
	    $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "$(VENV_HELP)"; exit 1; }; \
	  fi; \
	fi
	@$(BIN)/python -c "import torch" 2>/dev/null || $(MAKE) --no-print-directory torch
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@

## make torch: TORCH_SPEC from TORCH_INDEX into the venv (setup does it when the venv has no torch)
torch:
ifeq ($(strip $(TORCH_INDEX)),)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
else
	@if $(BIN)/python -c "import sys, urllib.request; \
	    urllib.request.urlopen(sys.argv[1].rstrip('/') + '/torch/', timeout=10)" "$(TORCH_INDEX)" 2>/dev/null; then \
	  echo "Installing $(TORCH_SPEC) from $(TORCH_INDEX)"; \
	  $(BIN)/pip install -q "$(TORCH_SPEC)" --index-url "$(TORCH_INDEX)"; \
	else \
	  echo "$(TORCH_INDEX) cannot be reached: installing $(TORCH_SPEC) from the configured package index"; \
	  $(BIN)/pip install -q "$(TORCH_SPEC)"; \
	fi
endif

## make demo: the whole notebook series on the synthetic default; everything it writes (figures, executed
## notebooks, data, runs) goes under data/ (data/demo/figures, data/demo/notebooks), which git ignores
demo: $(STAMP)
	NO_ALBUMENTATIONS_UPDATE=1 $(BIN)/python -m brats_utils demo

## make publish: make demo, then refresh the tracked copies from it: figures/, docs/notebooks/ (at most 2 MB
## each: figures downscaled, the largest dropped if needed) and docs/notebook_times.json with the notebooks'
## headers and the README's times table written from it
publish: $(STAMP)
	NO_ALBUMENTATIONS_UPDATE=1 $(BIN)/python -m brats_utils demo --publish

## make test: lint, unit tests, then every notebook top to bottom with its solutions (nbval, ci profile)
test: lint unit notebooks

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

unit: $(STAMP)
	$(TEST_ENV) BRATS_DATA_DIR=$(CURDIR)/data/test/unit $(BIN)/pytest tests -q

## make unit-fast: the unit tests without the slow ones (torchrun, full-size volumes, trained models)
unit-fast: $(STAMP)
	$(TEST_ENV) BRATS_DATA_DIR=$(CURDIR)/data/test/unit $(BIN)/pytest tests -q -m 'not slow and not browser'

## make notebooks [NB=notebooks/03_preprocessing.ipynb]: the notebooks, solutions included, under nbval
notebooks: $(STAMP)
	rm -rf $(NOTEBOOK_DATA) $(RUNNABLE)
	$(BIN)/python -c 'import sys; from pathlib import Path; from brats_utils.demo.solutions import \
	write_runnable_copies as copies; copies([Path(p) for p in sys.argv[2:]], Path(sys.argv[1]))' \
	$(RUNNABLE) $(or $(NB),notebooks/[0-9][0-9]_*.ipynb)
	$(TEST_ENV) BRATS_DATA_DIR=$(NOTEBOOK_DATA) $(BIN)/pytest --nbval-lax $(RUNNABLE) -q -p no:cacheprovider

## make notebook-outputs: record the outputs nbval compares (cells tagged nbval-check-output), as CI sees them
notebook-outputs: $(STAMP)
	rm -rf $(NOTEBOOK_DATA)
	$(TEST_ENV) BRATS_DATA_DIR=$(NOTEBOOK_DATA) $(BIN)/python -c 'import sys; from pathlib import Path; from brats_utils.demo import \
	record_checked_outputs as rec; [rec(Path(p)) for p in sys.argv[1:]]' $(or $(NB),notebooks/[0-9][0-9]_*.ipynb)

## make test-official: the agreement of `evaluate --protocol brats2025` with the BraTS challenge's own package
## (extra "official", AGPL-3.0). It pins older numpy/pandas than the dev tools, so it goes into its own folder
## (about 0.9 GB) that only this test puts on the path; .ci/run runs it after make test.
OFFICIAL := $(VENV)/official
test-official: $(STAMP)
	@test -d $(OFFICIAL) || $(BIN)/pip install -q --target $(OFFICIAL) "brats-evaluation>=0.0.10,<0.1"
	$(TEST_ENV) BRATS_DATA_DIR=$(CURDIR)/data/test/official PYTHONPATH=$(OFFICIAL) $(BIN)/pytest tests/test_official.py -q -p no:cacheprovider

## make test-browser: the slice viewer of notebooks 02 and 06 in JupyterLab under Debian's Chromium
## (apt-get install -y chromium; Playwright drives it, never `playwright install`), screenshots in data/test/browser
test-browser: $(STAMP)
	@$(BIN)/python -c "import playwright, psutil, notebook" 2>/dev/null || $(BIN)/pip install -q -e ".[dev,browser]"
	@test -x /usr/bin/chromium || { echo "test-browser needs Debian's Chromium: apt-get install -y chromium"; exit 1; }
	$(BIN)/pytest tests/browser -m browser -q -s -p no:cacheprovider

## make lab: JupyterLab on the notebooks
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

## make bench [ONLY=inference]: speed and memory, printed as ratios measured side by side (MONAI for reference)
bench: $(STAMP)
	@$(BIN)/python -c "import monai" 2>/dev/null || $(BIN)/pip install -q -e ".[dev,bench]"
	NO_ALBUMENTATIONS_UPDATE=1 $(BIN)/python tests/benchmarks/run.py $(ONLY)

## make gpu-check: training steps, full-volume prediction (compile on/off, MONAI) and a 2-GPU DDP step, one table
## (at most 5 minutes on one GPU; says so and exits 1 without a GPU)
gpu-check: $(STAMP)
	@$(BIN)/python -c "import monai" 2>/dev/null || $(BIN)/pip install -q -e ".[dev,bench]"
	NO_ALBUMENTATIONS_UPDATE=1 $(BIN)/python tests/benchmarks/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) data/test data/demo .pytest_cache .ruff_cache
