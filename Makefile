# Two commands for a newcomer: `make demo` and `make test`. Both create the virtual environment on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# No test or demo step may wait on the Hugging Face hub: everything real comes from the data root (../shared).
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: demo test install clean

install: $(VENV)/.installed

# torch is named in the same pip command as the package so the local CPU wheel wins over CUDA builds.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[test]"
	touch $@

demo: install
	$(OFFLINE) $(BIN)/talelab demo

test: install
	$(OFFLINE) HF_HOME=$${HF_HOME:-$$(mktemp -d)} $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
