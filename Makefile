# Two commands for a fresh clone: `make demo` and `make test`. Both work offline.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Real GLUE data beside the repo (CI and dev machines); users may set PEFTLAB_DATA themselves.
ifeq ($(origin PEFTLAB_DATA), undefined)
  ifneq ($(wildcard ../shared/data),)
    export PEFTLAB_DATA := $(abspath ../shared/data)
  endif
endif
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1

.PHONY: demo test install install-dev clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned: the CPU wheel on this disk; a bare `torch` would pull a CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev,ray]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/peftlab demo

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) outputs
