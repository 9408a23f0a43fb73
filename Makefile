# BraNet: `make serve` starts the server, `make test` runs every test. Both install into .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export BRANET_DATA ?= ../shared/data

.PHONY: install serve test clean weights served-weights app mobile-test chromium api-types firebase-tools \
	firebase-emulators

# The app (mobile/): npm packages when the lock file changes, the web export (served at /app) when a source does.
APP_SOURCES := $(shell find mobile/app mobile/src -type f 2>/dev/null) mobile/app.json mobile/package-lock.json
NODE_STAMP := mobile/node_modules/.installed
APP_BUILD := mobile/dist/index.html

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "BraNet needs Python 3.11 ($(PYTHON) not found)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c requirements.lock -e '.[test]'
	$(PY) -m models.fetch_mobilesam
	$(PY) -m models.encoder_export
	touch $(STAMP)

$(NODE_STAMP): mobile/package.json mobile/package-lock.json
	@command -v npm >/dev/null || { echo "BraNet's app needs Node.js 20 and npm"; exit 1; }
	cd mobile && npm ci --no-audit --no-fund
	touch $(NODE_STAMP)

$(APP_BUILD): $(NODE_STAMP) $(APP_SOURCES)
	cd mobile && rm -rf dist && npx expo export --platform web --output-dir dist
	touch $(APP_BUILD)

app: $(APP_BUILD)

serve: $(STAMP) app
	$(VENV)/bin/branet serve --host 127.0.0.1 --port 8000

# Debian's chromium for the browser tests (CI runs as root; playwright-core cannot download browsers here).
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The Firebase emulators for tests/test_firebase.py: the Auth emulator from npm firebase-tools (pinned in
# deploy/firebase; optional packages left out, the Emulator UI is off) and Google's Firestore emulator from the
# Debian package (CI runs as root; it comes from Google's Cloud SDK apt repository, see README).
# The Cloud Storage emulator (PyPI gcp-storage-emulator, pure Python) comes with `install`: the test extra.
FIREBASE_STAMP := deploy/firebase/node_modules/.installed
FIRESTORE_EMULATOR := /usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator

$(FIREBASE_STAMP): deploy/firebase/package.json deploy/firebase/package-lock.json
	@command -v npm >/dev/null || { echo "the Firebase Auth emulator needs Node.js 20 and npm"; exit 1; }
	cd deploy/firebase && npm ci --omit=optional --no-audit --no-fund
	touch $(FIREBASE_STAMP)

firebase-tools: $(FIREBASE_STAMP)

firebase-emulators: firebase-tools
	@command -v cloud_firestore_emulator >/dev/null || test -x $(FIRESTORE_EMULATOR) || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq google-cloud-cli-firestore-emulator >/dev/null; } || \
	  { echo "install the Firestore emulator: apt-get install google-cloud-cli-firestore-emulator (from Google's Cloud SDK apt repository, see README)"; exit 1; }

# The app's own checks: types (strict), lint, unit and component tests, and the native (Android) bundle compiles.
mobile-test: $(NODE_STAMP)
	cd mobile && npx tsc --noEmit && npx eslint . && npx jest --ci
	cd mobile && rm -rf .cache/android-export && npx expo export --platform android --output-dir .cache/android-export >/dev/null

test: $(STAMP) app chromium firebase-emulators mobile-test
	$(PY) -m pytest -q

# After a change to the server's API: the app's OpenAPI copy and its generated types.
api-types: $(STAMP) $(NODE_STAMP)
	$(PY) mobile/scripts/openapi.py
	cd mobile && npx openapi-typescript src/api/openapi.json -o src/api/schema.ts

clean:
	rm -rf $(VENV) .cache .pytest_cache mobile/node_modules mobile/dist mobile/.cache

# The full offline phase (hours on 2 CPU cores): see training/RESULTS.md.
weights: $(STAMP)
	PY=$(PY) training/reproduce.sh

# Only the served weights, trained from scratch and exported to models/weights (70 min on 2 CPU cores).
served-weights: $(STAMP)
	PY=$(PY) training/served.sh
