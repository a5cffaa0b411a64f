# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv first and install
# the exact versions in requirements.lock (pyproject.toml keeps the ranges for `pip install seer`).
# `make lock` re-resolves to the newest versions in those ranges and rewrites the lock;
# `make test-latest` runs the suite on such a fresh resolve, in .venv-latest, without the lock.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LATEST := .venv-latest
LOCK := requirements.lock
# The CPU wheel of torch (not in the lock: it is the one package chosen per machine);
# on a CUDA machine use e.g. `make TORCH_SPEC=torch demo`.
TORCH_SPEC ?= torch==2.13.0
EXTRAS := .[test,ui]

.PHONY: install chromium demo test bench lock test-latest latest-venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade -c $(LOCK) pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c $(LOCK) --build-constraint $(LOCK) -e '$(EXTRAS)'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python scripts/demo.py

# The web UI test drives Debian's chromium with Playwright (browsers cannot be downloaded here).
# Installed with apt-get where there is apt; if that fails the test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "make: could not install chromium with apt-get; tests/test_webui.py will be skipped"

test: install chromium
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python benchmarks/offline.py

# A fresh venv with the newest releases that pyproject.toml's ranges admit (torch stays TORCH_SPEC:
# an unpinned torch would be a multi-GB CUDA build).
latest-venv:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(LATEST)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(LATEST)/bin/python -m pip install -q "$(TORCH_SPEC)" -e '$(EXTRAS)'

test-latest: latest-venv chromium
	$(LATEST)/bin/python -m pytest -q tests

lock: latest-venv
	{ echo "# The versions make demo / make test install (pip constraints); rewritten by make lock."; \
	  echo "# torch is not here: TORCH_SPEC in the Makefile picks it."; \
	  $(LATEST)/bin/python -m pip freeze --all --exclude-editable | grep -viE '^(torch|seer)=='; } > $(LOCK)

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache build *.egg-info
