"""Alert document formats an output can carry: "ecs" (the agent's own, contracts.md) or "ocsf"."""

from __future__ import annotations

import json
from typing import Any

from agent.config import FORMATS
from agent.ocsf import to_ocsf

__all__ = ["FORMATS", "encode_line", "render"]


def render(alert: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The alert as a document of format ``fmt``."""
    if fmt == "ecs":
        return alert
    if fmt == "ocsf":
        return to_ocsf(alert)
    raise ValueError(f"unknown alert format {fmt!r}; known formats are {list(FORMATS)}")


def encode_line(doc: dict[str, Any]) -> bytes:
    """One compact JSON line, ASCII only (ensure_ascii), ending with a newline. TypeError/ValueError when the
    document cannot be JSON."""
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()
