# chainwatch: `make run` and `make test` work on a fresh Debian 12 machine, as root.
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup run test test-unit lint gen clean bench-latency

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/chainwatch run $(ARGS)

test: setup lint
	CHAINWATCH_REQUIRE_LIVE=1 $(PY) -m pytest -q tests

test-unit: setup
	$(PY) -m pytest -q tests/unit tests/replay

lint:
	$(VENV)/bin/ruff check agent tests
	$(VENV)/bin/mypy
	$(PY) -m agent.abi --check

bench-latency: setup
	$(PY) bench/latency.py -n 200

gen:
	$(PY) -m agent.abi

clean:
	rm -rf $(VENV) build *.egg-info
