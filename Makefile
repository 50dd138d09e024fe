# okkhor: `make demo` and `make test` each set up .venv first (a second setup run does nothing slow).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.okkhor-installed
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,export]'
	touch $(STAMP)

demo: setup
	$(PY) -m okkhor.demo

test: setup
	$(PY) -m pytest tests

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) demo build *.egg-info src/*.egg-info
