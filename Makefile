# The two commands of the README: `make demo` and `make test`. Each sets up what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
VENV := .venv
PYTEST_ARGS ?=

.PHONY: setup lint cluster demo test test-fast test-reliability check-java check-uv ui clean

check-java:
	@java_bin=$${JAVA_HOME:+$$JAVA_HOME/bin/}java; \
	if ! command -v $$java_bin >/dev/null 2>&1; then \
	  echo "dpe needs Java 17 or newer for Spark, and found none."; \
	  echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless"; \
	  echo "  macOS:         brew install openjdk@17"; \
	  echo "  or set JAVA_HOME to a JDK 17+."; exit 1; fi; \
	v=$$($$java_bin -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	if [ -z "$$v" ] || [ "$$v" -lt 17 ]; then \
	  echo "dpe needs Java 17 or newer for Spark; found Java $$v ($$java_bin)."; \
	  echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless"; exit 1; fi

check-uv:
	@$(UV) --version >/dev/null 2>&1 || { echo "installing uv (the package manager dpe uses) with pip"; \
	  $(PYTHON) -m pip install --quiet --user uv || $(PYTHON) -m pip install --quiet uv; }

# Pinned by uv.lock; --locked fails instead of silently re-resolving.
setup: check-java check-uv
	@$(UV) sync --locked --all-extras --quiet

# The Kubernetes control plane the tests (and eks-sim) run against, built from Go modules into a
# cache outside the clone (tests/cluster/build.py); skipped with a message where Go is missing.
cluster: setup
	@$(VENV)/bin/python -m tests.cluster.build >/dev/null || [ $$? -eq 3 ]

demo: setup $(if $(filter eks-sim,$(DPE_ENV)),cluster)
	$(VENV)/bin/dpe demo

# The linter's configuration is in pyproject.toml ([tool.ruff]).
lint: setup
	$(VENV)/bin/ruff check .

test: setup lint cluster
	DPE_UV="$(UV)" $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Faults, crashes, spot loss, two controllers, bad input, secrets; ends with a summary line.
test-reliability: setup
	$(VENV)/bin/python -m pytest tests/reliability $(PYTEST_ARGS)

test-fast: setup
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

ui: setup
	$(VENV)/bin/dpe ui

clean:
	-$(VENV)/bin/dpe down
	rm -rf .dpe
