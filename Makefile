# fewshot: install, demo, tests. Every target installs into .venv first when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-all bench bench-episodes bench-tree hierarchy-chain hierarchy-small-data recipe-mini-cpu recipe-cub recipe-omniglot reproduce-mini clean-venv

# Data roots and output folder of the recipes (override: make recipe-omniglot OMNIGLOT=/data/omniglot)
MINI     ?= data/miniimagenet
OMNIGLOT ?= data/omniglot
CUB      ?= data/cub
RUNS     ?= runs

install: $(STAMP)

# Re-runs only when pyproject.toml or this Makefile changed.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -U pip setuptools wheel
	# torch/torchvision by name from the registry (the local CPU-only torch wheel breaks torchvision).
	$(PIP) install torch torchvision "numpy<2"
	# learn2learn 0.2.0 ships Cython C that fails on Python 3.11: regenerate it with Cython.
	$(PY) -c "import learn2learn" 2>/dev/null || { \
	  $(PIP) install cython && \
	  $(PIP) install --use-pep517 --no-build-isolation \
	    --config-settings=--build-option=build_ext learn2learn==0.2.0; }
	$(PIP) install -e ".[dev]"
	touch $@

demo: install
	$(PY) -m fewshot.demo

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ""

bench: install
	$(PY) benchmarks/emd_layers.py --sizes 9 25 --batch 375 20 --pot --json benchmarks/emd_layers_quick.json

bench-episodes: install
	$(PY) benchmarks/episodes.py --backbone resnet12 --shots 1 5 --episodes 600

# Relaxed EMD on the WordNet tree (docs/hierarchy.md): closed form vs Sinkhorn, the chain
# regression, the small-data classification experiment on miniImageNet
bench-tree: install
	cd benchmarks && ../$(PY) tree_emd.py --json tree_emd.json --png ../docs/tree_emd_sinkhorn.png

hierarchy-chain: install
	$(PY) scripts/chain_regression.py --out $(RUNS)/chain

hierarchy-small-data: install
	$(PY) scripts/hierarchy_small_data.py --data-root $(MINI) --out $(RUNS)/hierarchy_small_data

# CPU-scale recipes (README "Results"); each step is skipped when its output exists.
recipe-mini-cpu: install
	bash scripts/recipe_miniimagenet_cpu.sh $(MINI) $(RUNS)/mini_cpu

# CUB (official layout); MINI_RUN=runs/mini_cpu adds the cross-domain miniImageNet -> CUB rows
recipe-cub: install
	MINI_RUN=$(MINI_RUN) bash scripts/recipe_cub_cpu.sh $(CUB) $(RUNS)/cub_cpu

recipe-omniglot: install
	bash scripts/recipe_omniglot.sh $(OMNIGLOT) $(RUNS)/omniglot

# The paper's full recipe on CUDA GPUs (torchrun, one process per GPU).
reproduce-mini: install
	bash scripts/reproduce_miniimagenet.sh $(MINI) $(RUNS)/reproduce_mini

clean-venv:
	rm -rf $(VENV)
