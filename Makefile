# okkhor: `make demo` and `make test` each set up .venv first (a second setup run does nothing slow).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.okkhor-installed
# pyproject.toml takes a torch range (the one of a Kaggle image works); development pins the tested torch
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
WHEELHOUSE := wheelhouse
WHEELHOUSE_STAMP := $(WHEELHOUSE)/.okkhor-wheelhouse
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup fonts demo test lint bench faults wheelhouse clean

# the font library (`okkhor fonts fetch`: pinned npm and Debian font packages into ~/.cache/okkhor/fonts, or
# $OKKHOR_FONT_CACHE) where npm or apt-get is present; what it cannot fetch is one line, and never fails setup
FETCH_FONTS = if command -v npm >/dev/null 2>&1 || command -v apt-get >/dev/null 2>&1; then \
	  $(PY) -m okkhor fonts fetch || true; \
	else echo "setup: font library skipped: neither npm nor apt-get found (okkhor synth uses the PyPI fonts)"; fi

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,export,synth]' $(TORCH_PINS)
	@$(FETCH_FONTS)
	touch $(STAMP)

fonts: setup
	@$(FETCH_FONTS)

demo: setup
	$(PY) -m okkhor.demo

# the wheelhouse lets tests/test_install.py check an offline install (it is skipped without one)
test: setup $(WHEELHOUSE_STAMP)
	$(PY) -m pytest tests

# ruff: pyflakes, pycodestyle, isort and bugbear at 120 columns (pyproject.toml's [tool.ruff])
lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/run.py

# every wheel okkhor needs but torch, torchvision and their CUDA libraries, checked by an offline install into a
# fresh venv that has only torch; prints the install line for a Kaggle kernel
wheelhouse: setup
	$(PY) tools/wheelhouse.py --out $(WHEELHOUSE) --check
	touch $(WHEELHOUSE_STAMP)

$(WHEELHOUSE_STAMP): $(STAMP) pyproject.toml
	$(PY) tools/wheelhouse.py --out $(WHEELHOUSE)
	touch $@

clean:
	rm -rf $(VENV) demo build wheelhouse *.egg-info src/*.egg-info

# the fault suite: SIGKILL / SIGTERM a tiny training run at points the harness picks, resume, compare with an
# uninterrupted run; ends with `faults: N injected, N survived, 0 runs lost` (a fast subset is in tests/test_faults.py)
faults: setup
	$(PY) tools/faults.py --kills 6 --sigterms 2
