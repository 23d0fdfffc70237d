# `make demo` and `make test` each set up what they need on first use, then run.
# Set-up needs the package index (PyPI); what runs afterwards needs no network.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of TensorFlow keeps set-up light where no NVIDIA GPU is visible.
MODEL_EXTRA := $(if $(shell command -v nvidia-smi 2>/dev/null),model,model-cpu)
STAMP := $(VENV)/.installed-$(MODEL_EXTRA)

# The Kaggle-shaped base: a venv of the image's own Python (3.12) with the image's pins, all
# in hms_offline/bundle/kaggle_image.txt (the one place they live). `build_bundle.py --verify`
# runs the built kernel in a fresh venv layered on it. Fails, saying where it looked, when no
# CPython 3.12 is found; `make kaggle-base KAGGLE_PYTHON=/path/to/python3.12` names one.
KAGGLE_BASE := .venv-kaggle-base
KAGGLE_IMAGE := hms_offline/bundle/kaggle_image.txt
KAGGLE_IMAGE_TOOL := $(PYTHON) -m hms_offline.bundle.kaggle_image
KAGGLE_BASE_STAMP := $(KAGGLE_BASE)/.installed
KAGGLE_PYTHON ?=
export KAGGLE_PYTHON

# The keras engine's wheels (KERNEL_WHEEL_PINS in hms_offline/bundle/wheels.py) for every
# CPython the bundle ships them for (3.11, 3.12, 3.13), into .cache/wheels/.
WHEELS_STAMP := .cache/wheels/.fetched

.PHONY: setup kaggle-base wheels test test-fast demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(MODEL_EXTRA),train,test]"
	touch $@

kaggle-base: $(KAGGLE_BASE_STAMP)

$(KAGGLE_BASE_STAMP): $(KAGGLE_IMAGE) hms_offline/bundle/kaggle_image.py
	@kaggle_python=$$($(KAGGLE_IMAGE_TOOL) python) || exit 1; \
	echo "kaggle-base: $$kaggle_python, pins of $(KAGGLE_IMAGE)"; \
	rm -rf $(KAGGLE_BASE) && "$$kaggle_python" -m venv $(KAGGLE_BASE)
	$(KAGGLE_IMAGE_TOOL) constraints > $(KAGGLE_BASE)/constraints.txt
	$(KAGGLE_BASE)/bin/python -m pip install --quiet --upgrade pip
	$(KAGGLE_BASE)/bin/python -m pip install --quiet -c $(KAGGLE_BASE)/constraints.txt $$($(KAGGLE_IMAGE_TOOL) pins install)
	$(KAGGLE_BASE)/bin/python -m pip install --quiet --no-deps $$($(KAGGLE_IMAGE_TOOL) pins no-deps)
	@# offline (the tests' socket guard), as in the kernel: the image's own keras-cv imports
	PYTHONPATH=tests/offline_guard TF_CPP_MIN_LOG_LEVEL=3 $(KAGGLE_BASE)/bin/python -c "import tensorflow, keras, keras_cv" \
	  || { echo "kaggle-base: import tensorflow, keras, keras_cv fails offline in $(KAGGLE_BASE)" >&2; exit 1; }
	touch $@

wheels: $(WHEELS_STAMP)

$(WHEELS_STAMP): build_bundle.py hms_offline/bundle/wheels.py $(STAMP)
	$(PY) build_bundle.py --fetch-wheels
	touch $@

test: setup kaggle-base wheels
	$(PY) -m pytest -q

# The suite without the tests marked slow (they train, build or run models, build whole bundles):
# under a minute once set up.
test-fast: setup kaggle-base wheels
	$(PY) -m pytest -q -m "not slow"

demo: setup kaggle-base wheels
	$(PY) build_bundle.py --demo

clean:
	rm -rf $(VENV) $(KAGGLE_BASE) dist runs .cache .pytest_cache
