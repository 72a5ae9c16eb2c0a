# fewshot: install, demo, tests. Every target installs into .venv first when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-all bench clean-venv

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
	$(PY) benchmarks/emd_layers.py --sizes 9 25 --pot

clean-venv:
	rm -rf $(VENV)
