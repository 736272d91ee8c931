# The two commands of the README do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# opentelemetry-distro lives outside the venv: installed beside fastapi-doctor it would compete for
# the wrapper's default distro. Tests and the benchmark add it to PYTHONPATH where they need it.
STOCK_OTEL := .cache/stock-otel

.PHONY: demo test test-fast test-matrix test-fastapi-suite bench bench-instructions dashboards clean

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

# The layering first (pyproject.toml's [tool.importlinter]: rules import no signal, signals no other).
test: $(VENV)/.test-installed $(STOCK_OTEL)/.installed
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The diagnosis tests on each supported FastAPI and CPython: the oldest FastAPI (0.100), one without
# native telemetry and Starlette's build_middleware_stack (0.115), and the newest, each on another
# CPython (3.11-3.13 from pyenv, else python3.X on PATH). One venv per pair under .cache/matrix/.
# An unsupported FastAPI (0.68) runs the test that diagnosis says it is off. No test may be skipped.
MATRIX ?= 3.11-0.100 3.12-0.115 3.13-newest
MATRIX_UNSUPPORTED ?= 3.11-0.68
MATRIX_TESTS ?= tests/test_real_app_shapes.py \
	tests/test_eventloop.py::test_blocking_calls_are_found_with_the_helpers_line \
	tests/test_eventloop.py::test_serialising_a_large_response_is_large_payload_not_blocking_io \
	tests/test_request_path.py::test_slow_dependency_is_measured_but_not_a_rebuild_and_the_cached_one_builds_once \
	tests/test_request_path.py::test_every_kind_of_dependency_is_timed_also_on_routes_added_later \
	tests/test_request_path.py::test_heavy_middleware_is_found_and_light_ones_are_not \
	tests/test_request_path.py::test_large_uncompressed_payload_is_found_and_gzip_twin_is_not
# What the tests need beside the agent and FastAPI (pip has no cache here: each venv downloads its own).
MATRIX_BASE_PACKAGES := "uvicorn>=0.30,<1" "httpx>=0.27,<1" "pytest>=8,<10" "pytest-timeout>=2.3,<3" \
	"opentelemetry-proto>=1.40,<2"
MATRIX_PACKAGES := $(MATRIX_BASE_PACKAGES) "uvloop>=0.19,<1" "sqlalchemy[asyncio]>=2.0,<2.1" "aiosqlite>=0.20,<1" \
	"hypothesis>=6.100,<7" "requests>=2.31,<3"

.cache/matrix/%/.installed: pyproject.toml
	@set -e; py=$$(echo $* | cut -d- -f1); fa=$$(echo $* | cut -d- -f2); \
	interpreter=$$(ls -d $$(pyenv root 2>/dev/null || echo /nonexistent)/versions/$$py.*/bin/python 2>/dev/null | tail -1); \
	interpreter=$${interpreter:-$$(command -v python$$py)}; \
	if [ "$$fa" = newest ]; then spec=fastapi; else spec="fastapi==$$fa.*"; fi; \
	rm -rf $(@D); $$interpreter -m venv $(@D); \
	$(@D)/bin/python -m pip install -q -e . "$$spec" \
		$(if $(filter $*,$(MATRIX_UNSUPPORTED)),$(MATRIX_BASE_PACKAGES),$(MATRIX_PACKAGES)); \
	touch $@

test-matrix: $(MATRIX:%=.cache/matrix/%/.installed) $(MATRIX_UNSUPPORTED:%=.cache/matrix/%/.installed)
	@failed=; for pair in $(MATRIX) $(MATRIX_UNSUPPORTED:%=%:unsupported); do \
	  venv=.cache/matrix/$${pair%:*}; tests="$(MATRIX_TESTS)"; \
	  case $$pair in *:unsupported) tests=tests/test_unsupported_fastapi.py;; esac; \
	  $$venv/bin/python -c 'import sys, fastapi; print(f"test-matrix: CPython {sys.version.split()[0]}, FastAPI {fastapi.__version__}")'; \
	  $$venv/bin/python -m pytest -q -p no:cacheprovider -rs $$tests > $$venv/pytest.log 2>&1; rc=$$?; cat $$venv/pytest.log; \
	  if [ $$rc -ne 0 ] || grep -q " skipped" $$venv/pytest.log; then failed="$$failed $${pair%:*}"; fi; \
	done; \
	if [ -n "$$failed" ]; then echo "test-matrix: failed (or skipped a test) on$$failed"; exit 1; fi

# FastAPI's own test suite without and with the agent (tests/fastapi_suite/run.py): the agent adds no
# failure. Downloads the fastapi sdist once into .cache/fastapi-suite/ with its own venv.
test-fastapi-suite: $(VENV)/.test-installed
	$(BIN)/python tests/fastapi_suite/run.py

# Full run: bare, stock, fastapi-doctor and the peers (bench/peers.py: venvs under .cache/bench-peers/).
# BENCH_ARGS=--quick checks that it works (CI; peers off unless --peers).
bench: $(VENV)/.test-installed $(STOCK_OTEL)/.installed
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Instructions per request under valgrind's callgrind (repeatable on a noisy machine; docs/performance.md).
bench-instructions: $(VENV)/.test-installed
	$(BIN)/python bench/instructions.py $(BENCH_ARGS)

# Regenerates dashboards/grafana/*.json, dashboards/prometheus/alerts.yaml and its promtool tests, and
# the Helm chart's copies of them (RUNBOOK_BASE_URL=... points the runbook links elsewhere).
dashboards: $(VENV)/.test-installed
	$(BIN)/python -m dashboards.build

clean:
	rm -rf $(VENV) .cache
