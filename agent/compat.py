"""What chainwatch needs from Python versions newer than the oldest it runs on (3.9: RHEL 9's python3;
Ubuntu 22.04 has 3.10). One home for the shims, so dropping an old Python is deleting lines here."""

from __future__ import annotations

import importlib.util
import platform
import sys
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # tomli is tomllib's origin, same API (a dependency on < 3.11 only, see pyproject.toml)
    import tomli as tomllib

# dataclass(**SLOTS): __slots__ (no per-instance __dict__: events and process-table entries are many) where
# dataclasses can make them, from 3.10 on.
SLOTS: dict[str, Any] = {"slots": True} if sys.version_info >= (3, 10) else {}


def sigma_missing() -> str | None:
    """Why Sigma rules (agent/sigma) cannot be loaded here, or None when they can. pySigma 2 needs Python 3.11,
    and it is not in the .deb/.rpm (it needs compiled modules: google-re2, jq); the bundled chainwatch rules
    never need it. Checked without importing it, so the answer costs nothing where Sigma is not configured."""
    if sys.version_info < (3, 11):
        return (
            f"Sigma rules need pySigma 2, which needs Python 3.11 or later; this is Python "
            f"{platform.python_version()}: leave detection.sigma_dirs empty"
        )
    if importlib.util.find_spec("sigma") is None:
        return (
            "Sigma rules need pySigma 2, which is not installed for this Python (the packages do not carry "
            "it): pip install 'pySigma>=2,<3' where chainwatch runs from a venv, or leave detection.sigma_dirs "
            "empty"
        )
    return None


__all__ = ["SLOTS", "sigma_missing", "tomllib"]
