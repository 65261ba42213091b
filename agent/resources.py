"""Where chainwatch's data files live: the ``rules/`` and ``bpf/`` directories.

One lookup for every caller. In order:

1. ``$CHAINWATCH_SHARE`` when set (it must hold both directories: a wrong value is an error, not a fallback);
2. the source tree this module sits in (a git checkout or an editable install);
3. the installed layout, ``/usr/share/chainwatch`` (the .deb/.rpm put them there; the Python package
   itself lives under /usr/lib/chainwatch/python, installed with ``pip --target``, with no data next to it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = ["INSTALLED_SHARE", "SHARE_ENV", "ResourceMissing", "bpf_dir", "rules_dir", "share_dir"]

SHARE_ENV: Final = "CHAINWATCH_SHARE"
INSTALLED_SHARE: Final = Path("/usr/share/chainwatch")
SOURCE_TREE: Final = Path(__file__).resolve().parents[1]
_WANTED: Final = ("rules", "bpf")


class ResourceMissing(FileNotFoundError):
    """Neither the source tree nor the installed layout holds chainwatch's rules and BPF sources."""


def _complete(base: Path) -> bool:
    return all((base / name).is_dir() for name in _WANTED)


def share_dir(*, source_tree: Path = SOURCE_TREE, installed: Path = INSTALLED_SHARE) -> Path:
    """The directory holding ``rules/`` and ``bpf/`` (see the module docstring for the order)."""
    override = os.environ.get(SHARE_ENV)
    if override:
        base = Path(override)
        if not _complete(base):
            raise ResourceMissing(
                f"{SHARE_ENV}={override} does not hold both rules/ and bpf/; "
                f"unset it to use {installed} or the source tree"
            )
        return base
    for base in (source_tree, installed):
        if _complete(base):
            return base
    raise ResourceMissing(
        f"chainwatch's rules/ and bpf/ are neither in {installed} nor in the source tree "
        f"{source_tree}: reinstall the package, or set {SHARE_ENV} to the directory holding them"
    )


def rules_dir() -> Path:
    """The bundled detection rules and lists."""
    return share_dir() / "rules"


def bpf_dir() -> Path:
    """The BPF C sources compiled at startup."""
    return share_dir() / "bpf"
