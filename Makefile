# The two commands that matter: `make up` (run the system) and `make test` (run the tests).
# Both install what is missing first; installs are cached under $(CACHE_DIR).
SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE_DIR ?= $(or $(COHORTSTREAM_CACHE_DIR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/cohortstream)
export COHORTSTREAM_CACHE_DIR := $(CACHE_DIR)
PYTHON ?= python3.11
VENV := .venv
UV := $(CACHE_DIR)/tools/bin/uv

.PHONY: help install tools ohif up down status logs test test-unit test-integration settings-table lint clean

help:
	@echo "make up      install and start the local stack and the cohortstream worker, print where to look"
	@echo "make down    stop exactly what 'make up' started"
	@echo "make status  one line per service"
	@echo "make test    install, lint, start a separate test stack, run unit + integration tests, stop it"
	@echo "make test-unit   unit tests only (no services)"
	@echo "make lint    ruff check, ruff format --check, mypy (the first step of 'make test')"
	@echo "make settings-table  regenerate docs/settings.md's table from the settings class"

$(UV):
	$(PYTHON) -m venv $(CACHE_DIR)/tools
	$(CACHE_DIR)/tools/bin/pip install --quiet 'uv>=0.4,<1'

# uv keeps a shared cache, so a fresh clone re-creates the venv in seconds after the first time.
$(VENV)/.installed: pyproject.toml | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(VENV)
	VIRTUAL_ENV=$(VENV) $(UV) pip install --quiet -e '.[dev,annotation]'
	touch $@

install: $(VENV)/.installed

# The Debian tools the CLI calls (dcm2niix for `cohortstream export bids`), with apt when
# missing; tests/run.sh runs the same script for the tools the tests drive.
tools:
	deploy/install_tools.sh cli

# WORKERS=N: every lane of the worker runs N processes in its consumer group (scale-out).
# LISTENERS=N: N DICOM listener processes share the listener's port (SO_REUSEPORT).
# LISTENER_NICE=N (0-19): the listener runs at that niceness, so on a host with few cores the
# archive and the views get the CPU first (docs/operations.md "One host, few cores").
WORKERS ?= 1
LISTENERS ?= 1
LISTENER_NICE ?= 0
# SECURE=1: Kafka SASL_SSL + ACLs, MongoDB authentication, DICOM TLS, the API over HTTPS
# (docs/security.md); TLS files and passwords are made once in the state dir.
SECURE ?= 0

# The OHIF viewer the API serves at /ohif/ (files of the pinned monailabel wheel, cached).
ohif:
	deploy/install_ohif.sh

up: install tools ohif
	COHORTSTREAM_STACK_WORKERS=$(WORKERS) COHORTSTREAM_STACK_LISTENERS=$(LISTENERS) \
	  COHORTSTREAM_STACK_LISTENER_NICE=$(LISTENER_NICE) COHORTSTREAM_STACK_SECURE=$(SECURE) \
	  deploy/stack.sh up

down:
	deploy/stack.sh down

status:
	deploy/stack.sh status

test: install
	@echo "== lint: ruff (lint, format) and mypy"
	$(MAKE) --no-print-directory lint
	tests/run.sh

test-unit: install
	$(VENV)/bin/python -m pytest -rs tests/unit

# Regenerate the settings reference table in docs/settings.md from the settings class
# (tests/unit/test_settings.py fails when it is stale).
settings-table: install
	$(VENV)/bin/python -c "import re, pathlib; from cohortstream.settings import settings_markdown_table as t; \
	p = pathlib.Path('docs/settings.md'); s = p.read_text(); \
	p.write_text(re.sub(r'(<!-- settings-table:start -->\n).*?(<!-- settings-table:end -->)', lambda m: m[1] + t() + m[2], s, flags=re.S))"

# Lint and type-check (configuration in pyproject.toml). Not yet part of `make test`:
# it will be once the code is clean.
LINT_PACKAGES := cohortstream producers consumers streams api export
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(LINT_PACKAGES)

clean: down
	rm -rf .stack .stack-test $(VENV)
