"""Which environment variables the sensor captures: build-system attribution labels.

The kernel copies the whole environment block at exec (bounded); decoding keeps only the variables
named here.
They tell *which* package, lifecycle script or CI job started a process. They are labels
chosen by whoever set the environment, so they attribute but never authorise.
"""

from __future__ import annotations

__all__ = ["ENV_CAPTURE_PREFIXES", "env_wanted", "parse_env_block"]

ENV_CAPTURE_PREFIXES: tuple[str, ...] = (
    "npm_package_",
    "npm_lifecycle_",
    "npm_config_user_agent",
    "DPKG_MAINTSCRIPT_",
    "CARGO_PKG_",
    "CARGO_MANIFEST_DIR",
    "PIP_BUILD_TRACKER",
    "PIP_REQ_TRACKER",
    "GITHUB_",
    "RUNNER_TRACKING_ID",
    "CI_",
    "GITLAB_CI",
    "JENKINS_URL",
    "BUILD_TAG",
    "JOB_NAME",
    "BUILD_NUMBER",
    "BUILDKITE_",
)
"""Captured names: an entry ending in ``_`` is a prefix, any other entry an exact name."""

_PREFIXES: tuple[str, ...] = tuple(p for p in ENV_CAPTURE_PREFIXES if p.endswith("_"))
_EXACT: frozenset[str] = frozenset(p for p in ENV_CAPTURE_PREFIXES if not p.endswith("_"))


def env_wanted(name: str) -> bool:
    """True if the variable ``name`` is one the sensor captures (case-sensitive)."""
    return name in _EXACT or name.startswith(_PREFIXES)


def parse_env_block(block: bytes) -> dict[str, str]:
    """The wanted variables of a NUL-separated ``KEY=VALUE`` block (``/proc/<pid>/environ``).

    Entries without ``=`` or with an empty name are ignored; undecodable bytes become
    U+FFFD. If a name repeats, the first occurrence wins, as with ``getenv(3)``.
    """
    out: dict[str, str] = {}
    for entry in block.split(b"\0"):
        name_b, sep, value_b = entry.partition(b"=")
        if not sep or not name_b:
            continue
        name = name_b.decode("utf-8", "replace")
        if name in out or not env_wanted(name):
            continue
        out[name] = value_b.decode("utf-8", "replace")
    return out
