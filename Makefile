# BraNet: `make serve` starts the server, `make test` runs every test. Both install into .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export BRANET_DATA ?= ../shared/data

.PHONY: install serve test clean weights served-weights

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "BraNet needs Python 3.11 ($(PYTHON) not found)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c requirements.lock -e '.[test]'
	$(PY) -m models.fetch_mobilesam
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/branet serve --host 127.0.0.1 --port 8000

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .cache .pytest_cache

# The full offline phase (hours on 2 CPU cores): see training/RESULTS.md.
weights: $(STAMP)
	PY=$(PY) training/reproduce.sh

# Only the served weights, trained from scratch and exported to models/weights (70 min on 2 CPU cores).
served-weights: $(STAMP)
	PY=$(PY) training/served.sh
