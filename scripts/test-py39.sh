#!/usr/bin/env bash
# `make test-py39`: the pure tests on the oldest Python chainwatch supports (3.9, RHEL 9's python3), so a
# construct newer than 3.9 (a runtime `X | Y`, zip(strict=), dataclass(slots=), tomllib, datetime.UTC, ...)
# fails CI instead of a RHEL 9 host. A throwaway venv in .cache/py39 with the project's dependencies as
# pyproject.toml declares them for 3.9 (tomli, no pySigma) and the test runner; no bcc, so no live tests.
set -euo pipefail
cd "$(dirname "$0")/.."

py=${PY39:-$(ls -d /root/.pyenv/versions/3.9.*/bin/python 2>/dev/null | sort -V | tail -n 1)}
if [ -z "$py" ] || ! "$py" -c 'import sys; assert sys.version_info[:2] == (3, 9)' 2>/dev/null; then
    echo "test-py39: no Python 3.9 (pyenv's /root/.pyenv/versions/3.9.*, or PY39=/path/to/python3.9)" >&2
    exit 1
fi
venv=.cache/py39
stamp=$venv/.chainwatch-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! "$venv/bin/python" -V >/dev/null 2>&1; then
    rm -rf "$venv"
    "$py" -m venv "$venv"
    timeout 600 "$venv/bin/pip" install -q --disable-pip-version-check -e '.[test-run]' 2>&1 \
        | grep -v "^WARNING: Location" || true
    "$venv/bin/python" -c 'import agent, structlog, tomli, msgpack, yaml, psutil, pytest, hypothesis' \
        || { echo "test-py39: the 3.9 venv cannot import chainwatch's dependencies" >&2; exit 1; }
    touch "$stamp"
fi
# `test-py39.sh --venv`: only make the venv (tests/live/test_package.py runs the packaged code with it).
[ "${1:-}" = "--venv" ] && exit 0
# The scenario library the Vagrant boxes run (vagrant/scenarios/run.py imports tests/helpers/scenarios.py).
timeout 60 "$venv/bin/python" vagrant/scenarios/run.py --help >/dev/null
# Left out, each for a reason: pySigma needs 3.11 (test_sigma*), ocsf-json-schema needs 3.10 (test_ocsf);
# for time only (CI budget: under 2 minutes with the venv): the fuzzers (a minute and a half of hypothesis on
# 3.9; input robustness, the same on every Python) and the replay corpus (55 replays, a minute; the same code
# paths as tests/replay/test_detection_replay.py, which stays); the live-marker check (it collects tests/live,
# whose OCSF test needs ocsf-json-schema; the markers are the same on every Python). The rest import every agent
# module the package runs without bcc.
exec timeout 600 "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/unit tests/replay \
    --ignore tests/unit/test_sigma.py --ignore tests/replay/test_sigma_replay.py --ignore tests/unit/test_ocsf.py \
    --ignore tests/unit/test_fuzz.py --deselect tests/unit/test_rules.py::test_any_text_loads_or_raises_rule_errors \
    --ignore tests/replay/test_corpus.py --deselect tests/unit/test_helpers.py::test_every_live_test_is_marked_live "$@"
