# The two commands of the README do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# opentelemetry-distro lives outside the venv: installed beside fastapi-doctor it would compete for
# the wrapper's default distro. Tests and the benchmark add it to PYTHONPATH where they need it.
STOCK_OTEL := .cache/stock-otel

.PHONY: demo test test-fast test-fastapi-suite bench dashboards clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[demo]"
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	touch $(VENV)/.demo-installed $@

$(STOCK_OTEL)/.installed: pyproject.toml | $(VENV)/.test-installed
	rm -rf $(STOCK_OTEL)
	$(BIN)/python -m pip install -q --no-deps --target $(STOCK_OTEL) \
		"opentelemetry-distro==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-instrumentation"))')"
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/fastapi-doctor demo

test: $(VENV)/.test-installed $(STOCK_OTEL)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# FastAPI's own test suite without and with the agent (tests/fastapi_suite/run.py): the agent adds no
# failure. Downloads the fastapi sdist once into .cache/fastapi-suite/ with its own venv.
test-fastapi-suite: $(VENV)/.test-installed
	$(BIN)/python tests/fastapi_suite/run.py

bench: $(VENV)/.test-installed $(STOCK_OTEL)/.installed
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Regenerates dashboards/grafana/*.json, dashboards/prometheus/alerts.yaml and its promtool tests, and
# the Helm chart's copies of them (RUNBOOK_BASE_URL=... points the runbook links elsewhere).
dashboards: $(VENV)/.test-installed
	$(BIN)/python -m dashboards.build

clean:
	rm -rf $(VENV) .cache
