"""Which environment variables the sensor keeps: build-system attribution labels, by exact name.

The kernel copies the whole environment block at exec (bounded) into the ring buffer; decoding keeps only
the variables named here, so nothing else reaches the process table, an alert or a recording. The block
itself is never stored or logged.

They tell *which* package, lifecycle script or CI job started a process. They are labels chosen by
whoever set the environment, so they attribute but never authorise. The list is exact names, not
prefixes: ``CI_*``, ``GITHUB_*`` and ``BUILDKITE_*`` also hold ``CI_JOB_TOKEN``, ``CI_REGISTRY_PASSWORD``,
``BUILDKITE_AGENT_ACCESS_TOKEN`` and ``GITHUB_TOKEN``. Every name a context's ``labels`` use
(rules/lists/contexts.yaml) must be here; the rule loader says so when one is not.
"""

from __future__ import annotations

import re

__all__ = ["ENV_CAPTURE_NAMES", "env_wanted", "looks_secret", "parse_env_block"]

ENV_CAPTURE_NAMES: frozenset[str] = frozenset(
    {
        # npm lifecycle scripts
        "npm_package_name",
        "npm_package_version",
        "npm_lifecycle_event",
        # cargo build scripts
        "CARGO_PKG_NAME",
        "CARGO_PKG_VERSION",
        # dpkg maintainer scripts
        "DPKG_MAINTSCRIPT_PACKAGE",
        "DPKG_MAINTSCRIPT_NAME",
        # GitHub Actions (RUNNER_TRACKING_ID: the runner's orphan-process tracking, see detectors.py)
        "GITHUB_REPOSITORY",
        "GITHUB_WORKFLOW",
        "GITHUB_RUN_ID",
        "GITHUB_JOB",
        "RUNNER_TRACKING_ID",
        # GitLab CI
        "CI_PROJECT_PATH",
        "CI_PIPELINE_NAME",
        "CI_PIPELINE_ID",
        "CI_JOB_NAME",
        "CI_JOB_ID",
        # Jenkins
        "GIT_URL",
        "JOB_NAME",
        "BUILD_NUMBER",
        "BUILD_TAG",
        # Buildkite
        "BUILDKITE_REPO",
        "BUILDKITE_PIPELINE_SLUG",
        "BUILDKITE_BUILD_NUMBER",
        "BUILDKITE_LABEL",
        "BUILDKITE_JOB_ID",
    }
)
"""Captured names (case-sensitive, exact)."""

# Names that hold credentials whatever their prefix; none may ever be captured, even if listed above.
_SECRET = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|KEY|CREDENTIAL|AUTH|COOKIE|PRIVATE", re.IGNORECASE)


def looks_secret(name: str) -> bool:
    """True when ``name`` says it holds a credential (``*TOKEN*``, ``*PASSWORD*``, ``*SECRET*``, ``*KEY*``...)."""
    return _SECRET.search(name) is not None


_WANTED: frozenset[str] = frozenset(n for n in ENV_CAPTURE_NAMES if not looks_secret(n))
_WANTED_BYTES: frozenset[bytes] = frozenset(n.encode() for n in _WANTED)  # all ASCII: the same test, undecoded


def env_wanted(name: str) -> bool:
    """True if the variable ``name`` is one the sensor captures (case-sensitive, exact)."""
    return name in _WANTED


def parse_env_block(block: bytes) -> dict[str, str]:
    """The wanted variables of a NUL-separated ``KEY=VALUE`` block (``/proc/<pid>/environ``).

    Entries without ``=`` or with an empty name are ignored; undecodable bytes become
    U+FFFD. If a name repeats, the first occurrence wins, as with ``getenv(3)``.
    """
    out: dict[str, str] = {}
    for entry in block.split(b"\0"):
        name_b, sep, value_b = entry.partition(b"=")
        # Most of an environment is not wanted: tested before decoding (an exec storm's hot path).
        if not sep or name_b not in _WANTED_BYTES:
            continue
        name = name_b.decode()
        if name not in out:
            out[name] = value_b.decode("utf-8", "replace")
    return out
