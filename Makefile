# `make demo` and `make test` each set up what they need on first use, then run.
# Set-up needs the package index (PyPI); what runs afterwards needs no network.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of TensorFlow keeps set-up light where no NVIDIA GPU is visible.
MODEL_EXTRA := $(if $(shell command -v nvidia-smi 2>/dev/null),model,model-cpu)
STAMP := $(VENV)/.installed-$(MODEL_EXTRA)

# What Kaggle's base image is sure to have, and nothing else: `build_bundle.py --verify`
# runs the kernel in a fresh venv layered on this one (tensorflow brings the keras it requires).
KAGGLE_BASE := .venv-kaggle-base
KAGGLE_BASE_PACKAGES := tensorflow-cpu==2.21.0 numpy pandas pyarrow scikit-learn
KAGGLE_BASE_STAMP := $(KAGGLE_BASE)/.installed

# The kernel's pinned wheels: for Kaggle's CPython 3.12 (what the bundle ships) and for the
# local Python (what the local verification installs).
KAGGLE_PYTHON_VERSION := 3.12
LOCAL_PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
LOCAL_PLATFORM := manylinux2014_$(shell uname -m)
WHEELS_STAMP := .cache/wheels/.fetched-$(KAGGLE_PYTHON_VERSION)-$(LOCAL_PYTHON_VERSION)

.PHONY: setup kaggle-base wheels test demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(MODEL_EXTRA),train,test]"
	touch $@

kaggle-base: $(KAGGLE_BASE_STAMP)

$(KAGGLE_BASE_STAMP):
	rm -rf $(KAGGLE_BASE)
	$(PYTHON) -m venv $(KAGGLE_BASE)
	$(KAGGLE_BASE)/bin/python -m pip install --quiet --upgrade pip
	$(KAGGLE_BASE)/bin/python -m pip install --quiet $(KAGGLE_BASE_PACKAGES)
	touch $@

wheels: $(WHEELS_STAMP)

$(WHEELS_STAMP): build_bundle.py $(STAMP)
	$(PY) build_bundle.py --fetch-wheels --python-version $(KAGGLE_PYTHON_VERSION)
	$(PY) build_bundle.py --fetch-wheels --python-version $(LOCAL_PYTHON_VERSION) --platform $(LOCAL_PLATFORM)
	touch $@

test: setup kaggle-base wheels
	$(PY) -m pytest -q

demo: setup kaggle-base wheels
	$(PY) build_bundle.py --demo

clean:
	rm -rf $(VENV) $(KAGGLE_BASE) dist runs .cache .pytest_cache
