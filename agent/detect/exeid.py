"""What an executable is, by the file the kernel executed rather than the name it was run by.

A copy of bash in /tmp, a renamed socat or a memfd holding chisel runs under any name; the exec event carries
the executed file's device, inode and size (mm->exe_file). This module knows the installed shells, interpreters
and tunnel tools by inode, and a copy of one by content: a file whose size equals a known program's is hashed
(SHA-256, once per device/inode/mtime, only then) and named by the match. A binary of a size no known program
has costs nothing; one of a known size costs a stat of /proc/PID/exe. Only the live agent uses it: a recording
replayed on another host has other inodes and no /proc to read.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Iterable, Sequence
from typing import Final

from agent.ruleset.lists import Lists

DEFAULT_DIRS: Final = ("/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/local/sbin")
MAX_HASH_BYTES: Final = 8 << 20  # bash, python, socat, ncat are smaller; hashing node (90 MB) would cost a second
CACHE_MAX: Final = 8192
# Network clients the detectors name besides the lists' shells, interpreters and tunnel tools.
NETWORK_CLIENTS: Final = (
    "nc",
    "ncat",
    "netcat",
    "nc.traditional",
    "nc.openbsd",
    "socat",
    "telnet",
    "openssl",
    "curl",
    "wget",
)


def kernel_dev(st_dev: int) -> int:
    """A stat st_dev as the kernel's dev_t (MKDEV: major << 20 | minor), the encoding of Exec.exe_id."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def _digest(path: str, size: int) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return f"{size}:{h.hexdigest()}"


class ExeIdentity:
    """Names executables: the program an installed file is (by inode) or a copy of (by content)."""

    def __init__(self, names: Iterable[str], dirs: Sequence[str] = DEFAULT_DIRS, proc: str = "/proc"):
        self.proc = proc
        self.by_inode: dict[tuple[int, int], str] = {}
        self.by_digest: dict[str, str] = {}
        self.sizes: set[int] = set()
        self._cache: dict[tuple[int, int, int], str | None] = {}
        self.hashed = 0
        wanted = set(names)
        for directory in dirs:
            for name in sorted(wanted):
                path = os.path.join(directory, name)
                try:
                    st = os.stat(path)  # follows links: /bin/sh -> dash is dash
                except OSError:
                    continue
                real = os.path.basename(os.path.realpath(path))
                program = real if real in wanted else name
                inode = (kernel_dev(st.st_dev), st.st_ino)
                if inode in self.by_inode:
                    continue  # the same file by another name or directory (/bin -> /usr/bin)
                self.by_inode[inode] = program
                if 0 < st.st_size <= MAX_HASH_BYTES:
                    digest = _digest(path, st.st_size)
                    if digest:
                        self.sizes.add(st.st_size)
                        self.by_digest.setdefault(digest, program)

    @classmethod
    def for_patterns(
        cls, names: Iterable[str], patterns: Iterable[str], dirs: Sequence[str] = DEFAULT_DIRS, proc: str = "/proc"
    ) -> ExeIdentity:
        """Known programs by name, plus every file in ``dirs`` whose name matches one of the fnmatch
        ``patterns`` (interpreters are installed under versioned names: python3.11, perl5.36)."""
        wanted = set(names)
        pats = tuple(patterns)
        for directory in dirs:
            try:
                entries = os.listdir(directory)
            except OSError:
                continue
            wanted.update(e for e in entries if any(fnmatch.fnmatchcase(e, p) for p in pats))
        return cls(wanted, dirs, proc)

    def identify(self, pid: int, exe_id: str, size: int = 0) -> str | None:
        """The known program process ``pid`` executes (its exe_id "DEV:INO" and size from the kernel), or None.

        A size the kernel reported that no known program has is not a copy of one: nothing to stat or hash."""
        dev, _, ino = exe_id.partition(":")
        if dev.isdigit() and ino.isdigit():
            known = self.by_inode.get((int(dev), int(ino)))
            if known is not None:
                return known
        if size and size not in self.sizes:
            return None
        path = f"{self.proc}/{pid}/exe"
        try:
            st = os.stat(path)
        except OSError:
            return None  # gone already, or a kernel thread
        key = (st.st_dev, st.st_ino, st.st_mtime_ns)
        if key in self._cache:
            return self._cache[key]
        name = None
        if st.st_size in self.sizes:
            digest = _digest(path, st.st_size)
            self.hashed += 1
            name = self.by_digest.get(digest) if digest else None
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[key] = name
        return name


def for_lists(lists: Lists, dirs: Sequence[str] = DEFAULT_DIRS, proc: str = "/proc") -> ExeIdentity:
    """An ExeIdentity for what the rules name: shells, interpreters, tunnel tools and network clients."""
    names = set(lists.shells) | set(NETWORK_CLIENTS) | {exe for tool in lists.tunnels for exe in tool.executables}
    return ExeIdentity.for_patterns(names, lists.interpreters, dirs, proc)
