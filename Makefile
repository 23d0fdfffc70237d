# `make demo` and `make test` each set up .venv on first use, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of TensorFlow keeps set-up light where no NVIDIA GPU is visible.
MODEL_EXTRA := $(if $(shell command -v nvidia-smi 2>/dev/null),model,model-cpu)
STAMP := $(VENV)/.installed-$(MODEL_EXTRA)

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(MODEL_EXTRA),train,test]"
	touch $@

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) build_bundle.py --demo

clean:
	rm -rf $(VENV) dist runs .cache .pytest_cache
