# The two commands that matter: `make up` (run the system) and `make test` (run the tests).
# Both install what is missing first; installs are cached under $(CACHE_DIR).
SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE_DIR ?= $(or $(COHORTSTREAM_CACHE_DIR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/cohortstream)
export COHORTSTREAM_CACHE_DIR := $(CACHE_DIR)
PYTHON ?= python3.11
VENV := .venv
UV := $(CACHE_DIR)/tools/bin/uv

.PHONY: help install up down status logs test test-unit test-integration settings-table clean

help:
	@echo "make up      install and start the local stack and the cohortstream worker, print where to look"
	@echo "make down    stop exactly what 'make up' started"
	@echo "make status  one line per service"
	@echo "make test    install, start a separate test stack, run unit + integration tests, stop it"
	@echo "make test-unit   unit tests only (no services)"

$(UV):
	$(PYTHON) -m venv $(CACHE_DIR)/tools
	$(CACHE_DIR)/tools/bin/pip install --quiet 'uv>=0.4,<1'

# uv keeps a shared cache, so a fresh clone re-creates the venv in seconds after the first time.
$(VENV)/.installed: pyproject.toml | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(VENV)
	VIRTUAL_ENV=$(VENV) $(UV) pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

up: install
	deploy/stack.sh up

down:
	deploy/stack.sh down

status:
	deploy/stack.sh status

test: install
	tests/run.sh

test-unit: install
	$(VENV)/bin/python -m pytest tests/unit

# Regenerate the README's settings table from the settings class.
settings-table: install
	$(VENV)/bin/python -c "import re, pathlib; from cohortstream.settings import settings_markdown_table as t; \
	p = pathlib.Path('README.md'); s = p.read_text(); \
	p.write_text(re.sub(r'(<!-- settings-table:start -->\n).*?(<!-- settings-table:end -->)', lambda m: m[1] + t() + m[2], s, flags=re.S))"

clean: down
	rm -rf .stack .stack-test $(VENV)
