"""The places where a write means persistence (``rules/lists/persistence_paths.yaml``), read once.

One reader for both sides: :func:`read_places` validates the file like every list (file and line for each
problem); :class:`agent.ruleset.lists.Lists` keeps the result for the detectors, and the probe compiler
(``agent.probes.source``) renders the kernel's coarse filter from the same :class:`PersistencePlaces`.

Four kinds of place, each entry ``{path, technique}`` (an ATT&CK technique id):

- ``prefixes``: an absolute path; matches it and every path that starts with it (``/etc/cron`` matches
  ``/etc/crontab`` and ``/etc/cron.d/x``).
- ``home``: relative to each home directory (``/root/`` and ``/home/<user>/``), with prefix semantics.
- ``suffixes``: any path that ends with it.
- ``globs``: an fnmatch pattern over the whole path, absolute or ``~/`` for each home directory. The kernel
  passes a path when it starts with the text before the first wildcard and ends with the text after the last,
  so both must be non-empty; userspace then matches the pattern itself.

Paths are matched after normalisation (``/etc/./cron.d//x`` is ``/etc/cron.d/x``): the kernel reports the
resolved path of the file it opened, and names built from a typed path are normalised here
(:func:`agent.events.normalize_path`, which the decoder also applies).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from agent.events import normalize_path
from agent.ruleset.yamlcheck import MITRE_ID, Checker, YamlMap

KINDS: Final = ("prefixes", "home", "suffixes", "globs")
KIND_OF_KEY: Final = {"prefixes": "prefix", "home": "home", "suffixes": "suffix", "globs": "glob"}
ENTRY_KEYS: Final = ("path", "technique")
WILDCARDS: Final = "*?["
PATH_MAX: Final = 256  # agent.abi.layout.PATH_MAX: the kernel matches names shorter than this
HOME_USER_MAX: Final = 32  # longest user name in /home/<user>/ the kernel looks for (useradd's limit)
HOME_PREFIX: Final = "~/"


def home_offset(path: str) -> int:
    """Where the part of ``path`` below its home directory starts, or 0 when it is not in one.

    Exactly the kernel's rule (persist_home_offset in the generated matcher): ``/root/`` and
    ``/home/<user>/`` with a user name of 1 to HOME_USER_MAX bytes."""
    if len(path) > 6 and path.startswith("/root/"):
        return 6
    if len(path) > 7 and path.startswith("/home/"):
        slash = path.find("/", 7, min(7 + HOME_USER_MAX, len(path)))
        if slash > 0:
            return slash + 1
    return 0


def _literal_ends(pattern: str) -> tuple[str, str]:
    first = min((i for i in (pattern.find(c) for c in WILDCARDS) if i >= 0), default=len(pattern))
    last = max(pattern.rfind("*"), pattern.rfind("?"), pattern.rfind("]"))
    return pattern[:first], pattern[last + 1 :] if last >= 0 else ""


@dataclass(frozen=True)
class Place:
    """One entry of the list."""

    kind: str  # "prefix" | "home" | "suffix" | "glob"
    path: str
    technique: str
    line: int = 0

    @property
    def in_home(self) -> bool:
        """Relative to a home directory (``home`` entries and ``~/`` globs)."""
        return self.kind == "home" or (self.kind == "glob" and self.path.startswith(HOME_PREFIX))

    def kernel_filter(self) -> tuple[str, str]:
        """(text the path must start with, text it must end with); relative to the home when ``in_home``."""
        if self.kind in ("prefix", "home"):
            return self.path, ""
        if self.kind == "suffix":
            return "", self.path
        pattern = self.path[len(HOME_PREFIX) :] if self.in_home else self.path
        return _literal_ends(pattern)

    def kernel_matches(self, path: str) -> bool:
        """What the kernel's coarse filter decides for this entry (a superset of :meth:`matches`)."""
        subject = path
        if self.in_home:
            offset = home_offset(path)
            if not offset:
                return False
            subject = path[offset:]
        start, end = self.kernel_filter()
        return subject.startswith(start) and subject.endswith(end)

    def matches(self, path: str) -> bool:
        """True when a write to the normalised absolute ``path`` is a write to this place."""
        if self.kind != "glob":
            return self.kernel_matches(path)
        if self.in_home:
            offset = home_offset(path)
            return bool(offset) and fnmatch.fnmatchcase(path[offset:], self.path[len(HOME_PREFIX) :])
        return fnmatch.fnmatchcase(path, self.path)


@dataclass(frozen=True)
class PersistencePlaces:
    """Every place, in file order."""

    places: tuple[Place, ...]

    def place_for(self, path: str) -> Place | None:
        """The first place a write to ``path`` (normalised first) lands in, or None."""
        path = normalize_path(path)
        return next((place for place in self.places if place.matches(path)), None)

    def of_kind(self, kind: str) -> tuple[Place, ...]:
        """The entries of one kind ("prefix", "home", "suffix", "glob")."""
        return tuple(place for place in self.places if place.kind == kind)

    def open_filter(self) -> OpenFilter:
        """The test the kernel makes on a file opened for writing before it resolves the file's whole path."""
        names: dict[str, None] = {}
        name_ends: dict[str, None] = {}
        dirs: dict[bool, tuple[dict[str, None], dict[str, None]]] = {False: ({}, {}), True: ({}, {})}
        for place in self.places:
            start, end = place.kernel_filter()
            if start:
                starts, exact = dirs[place.in_home]
                starts[start] = None
                exact[start[: start.rfind("/") + 1]] = None
            elif "/" in end:
                names[end.rsplit("/", 1)[1]] = None
            else:
                name_ends[end] = None
        return OpenFilter(
            tuple(names),
            tuple(name_ends),
            tuple(dirs[False][0]),
            tuple(dirs[False][1]),
            tuple(dirs[True][0]),
            tuple(dirs[True][1]),
        )


@dataclass(frozen=True)
class OpenFilter:
    """What a file's name or its directory must be for any place's kernel filter to pass its path.

    A path is the directory (up to and with its last '/') and the name. An entry with a literal start can only
    pass a path whose directory starts with that start, or is the directory the start ends in (a file in
    ``/etc/`` may be ``/etc/cron…``); an entry with only a literal end (the suffixes) can only pass a name that
    is the part of that end after its last '/', or ends with the whole end when it has no '/'. So a file whose
    name passes no name test, in a directory that passes no directory test, is in no place: the kernel
    remembers such directories ("cold") and does not resolve the paths of files written there again. Home
    entries are tested on the directory below the home (the whole path's :func:`home_offset`)."""

    names: tuple[str, ...]  # the name is one of these
    name_ends: tuple[str, ...]  # the name ends with one of these
    dir_starts: tuple[str, ...]  # the directory starts with one of these
    dirs: tuple[str, ...]  # the directory is one of these
    home_dir_starts: tuple[str, ...]  # below the home: the directory starts with one of these
    home_dirs: tuple[str, ...]  # below the home: the directory is one of these

    def name_may_match(self, name: str) -> bool:
        return name in self.names or any(name.endswith(end) for end in self.name_ends)

    def dir_may_match(self, directory: str, home: int) -> bool:
        """``directory`` ends with '/'; ``home`` is :func:`home_offset` of a path in it (0: not in a home)."""
        if directory in self.dirs or directory.startswith(self.dir_starts):
            return True
        below = directory[home:]
        return bool(home) and (below in self.home_dirs or below.startswith(self.home_dir_starts))

    def may_match(self, path: str) -> bool:
        """False only when no place's kernel filter can pass ``path`` (a superset of every kernel_matches)."""
        cut = path.rfind("/") + 1
        return self.name_may_match(path[cut:]) or self.dir_may_match(path[:cut], home_offset(path))


def _check_entry(kind: str, path: str) -> str | None:
    if not path.isascii() or any(ord(c) < 0x20 or c == "\x7f" for c in path):
        return f"{path!r} must be printable ASCII (the kernel compares bytes)"
    if len(path) >= PATH_MAX:
        return f"{path!r} is longer than the kernel's {PATH_MAX - 1}-byte paths"
    wild = any(c in path for c in WILDCARDS)
    if kind == "glob":
        home = path.startswith(HOME_PREFIX)
        if not home and not path.startswith("/"):
            return f"{path!r} must be an absolute path or start with '~/'"
        start, end = _literal_ends(path[len(HOME_PREFIX) :] if home else path)
        if not wild:
            return f"{path!r} has no wildcard: list it under prefixes, home or suffixes"
        if len(start) < (1 if home else 2) or not end:
            return (
                f"{path!r} must start and end with literal text (the kernel filters on the text before the "
                "first wildcard and after the last)"
            )
        return None
    if wild:
        return f"{path!r} has a wildcard: only globs entries may"
    if kind == "prefix" and not path.startswith("/"):
        return f"{path!r} is not an absolute path"
    if kind == "home" and (path.startswith(("/", "~")) or path.startswith("./")):
        return f"{path!r} must be relative to the home directory (like .bashrc or .config/systemd/user/)"
    return None


def read_places(checker: Checker, m: YamlMap) -> PersistencePlaces | None:
    """The places in an opened persistence_paths.yaml, or None (each problem reported with its line)."""
    places: list[Place] = []
    seen: dict[tuple[str, str], int] = {}
    good = True
    for key in KINDS:
        entries = checker.get_list(m, key, min_items=1 if key == "prefixes" else 0)
        if entries is None:
            good = good and key not in m.values  # absent: fine (a missing 'prefixes' is reported by keys())
            continue
        kind = KIND_OF_KEY[key]
        for entry in entries:
            spec = checker.mapping(entry, f"a {key} entry ({{path, technique}})")
            if spec is None:
                good = False
                continue
            before = len(checker.problems)
            checker.keys(spec, ENTRY_KEYS)
            path = checker.get_str(spec, "path", _entry_checker(kind))
            technique = checker.get_str(spec, "technique", _check_technique)
            if len(checker.problems) > before or path is None or technique is None:
                good = False
                continue
            first = seen.setdefault((kind, path), entry.line)
            if first != entry.line:
                checker.problem(entry.line, f"duplicate {key} entry {path!r} (first on line {first})")
                good = False
                continue
            places.append(Place(kind, path, technique, entry.line))
    return PersistencePlaces(tuple(places)) if good else None


def _entry_checker(kind: str) -> Callable[[str], str | None]:
    return lambda text: _check_entry(kind, text)


def _check_technique(text: str) -> str | None:
    return None if MITRE_ID.fullmatch(text) else f"{text!r} is not a MITRE ATT&CK technique id like T1053.003"
