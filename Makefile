# chainwatch: `make run` and `make test` work on a fresh Debian 12 machine, as root.
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup run test test-unit test-py39 lint fmt gen clean bench bench-setup bench-latency deb rpm

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/chainwatch run $(ARGS)

test: setup lint test-py39
	CHAINWATCH_REQUIRE_LIVE=1 $(PY) -m pytest -q tests

# The pure tests on Python 3.9, the oldest chainwatch runs on (RHEL 9); pyenv's 3.9 or PY39=/path/to/python3.9.
test-py39:
	bash scripts/test-py39.sh

test-unit: setup
	$(PY) -m pytest -q tests/unit tests/replay

PYTHON_SOURCES := agent tests bench vagrant

# One formatter (ruff format, configured in pyproject.toml): `make fmt` applies it, lint checks it.
lint:
	$(VENV)/bin/ruff check $(PYTHON_SOURCES)
	$(VENV)/bin/ruff format --check $(PYTHON_SOURCES)
	$(VENV)/bin/mypy
	$(PY) -m agent.abi --check

# The one formatter ([tool.ruff.format] in pyproject.toml).
fmt:
	$(VENV)/bin/ruff format $(PYTHON_SOURCES)

# Not part of `make test`: timings are reported, never asserted. BENCH_ARGS e.g. "--rounds 7" or "--no-write".
BENCH_ARGS ?=
bench: bench-setup
	timeout 7200 $(PY) bench/run.py $(BENCH_ARGS)

# bpftrace is the peer sensor; without it the table says so instead of failing.
bench-setup: setup
	@command -v bpftrace >/dev/null || timeout 600 apt-get install -y bpftrace \
		|| echo "bpftrace could not be installed: the bench runs without that peer"

bench-latency: setup
	timeout 3600 $(PY) bench/latency.py -n 200

# Packages in dist/ (packaging/build.sh); tests/live/test_package.py builds, lints, installs and purges them.
deb: setup
	bash packaging/build.sh deb

rpm: setup
	bash packaging/build.sh rpm

gen:
	$(PY) -m agent.abi

clean:
	rm -rf $(VENV) build dist *.egg-info
