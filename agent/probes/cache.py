"""The compile cache: one artifact (agent.probes.artifact) per key, in a directory only root can write.

What is in here gets loaded into the kernel by root, so the directory and files are treated like the
agent's other private data (agent.safefile): the directory is created 0700 and refused if another user
could write it, files are 0600, opened relative to the checked directory and never through a symbolic
link, written to a temporary name and renamed into place (a crash leaves the old entry or none), and
checked on read. A bad entry is deleted and recompiled, with a log line; it never stops the agent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import structlog

from agent.probes.artifact import Artifact, ArtifactError, dumps, loads
from agent.safefile import UnsafePath, check_directory

log = structlog.get_logger()

DEFAULT_DIR: Final = "/var/cache/chainwatch"
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
PREFIX: Final = "probes-"
SUFFIX: Final = ".cwbpf"
MAX_BYTES: Final = 64 << 20  # a real entry is well under 1 MiB
VMLINUX_BTF: Final = "/sys/kernel/btf/vmlinux"
COMPILER_LIBRARY: Final = "libbcc.so.0"


def toolchain() -> dict[str, str]:
    """What besides the source and flags changes the compiled bytecode: bcc's build (found next to the
    libbcc_bpf this process loads, without importing bcc), the kernel (release, build and BTF) and the
    kernel headers bcc compiles its helpers against (make setup may link the nearest version's)."""
    from agent.probes.offsets import headers_dir

    out = {
        "kernel": f"{os.uname().release} {os.uname().version} {os.uname().machine}",
        "headers": os.path.realpath(headers_dir()),
    }
    try:
        with open(VMLINUX_BTF, "rb") as f:
            out["btf"] = hashlib.sha256(f.read()).hexdigest()
    except OSError:
        out["btf"] = "none"
    out["compiler"] = _compiler_identity()
    return out


def _compiler_identity() -> str:
    """libbcc's resolved file name (it carries the version), size and mtime: a rebuilt bcc changes it."""
    from agent.probes.bpflib import LIBRARY, library

    try:
        library()
        with open("/proc/self/maps", encoding="utf-8") as maps:
            loaded = next(line.split()[-1] for line in maps if f"/{LIBRARY.split('.so')[0]}.so" in line)
        compiler = os.path.join(os.path.dirname(loaded), COMPILER_LIBRARY)
        st = os.stat(compiler)
        return f"{os.path.realpath(compiler)} {st.st_size} {st.st_mtime_ns}"
    except (OSError, StopIteration):
        return "unknown"


@dataclass(frozen=True)
class CacheState:
    """For doctor: where the cache is and what is in it."""

    directory: str
    entries: list[tuple[str, int]]  # (file name, size)
    problem: str = ""


class ProbeCache:
    """The artifacts under ``directory``; every method is safe to call on a missing or bad directory."""

    def __init__(self, directory: str = DEFAULT_DIR):
        self.directory = os.path.abspath(directory)

    @staticmethod
    def file_name(key: str) -> str:
        return f"{PREFIX}{key}{SUFFIX}"

    @contextlib.contextmanager
    def _dir(self, create: bool) -> Iterator[int]:
        """The cache directory's fd, after the ownership and mode checks (UnsafePath otherwise)."""
        if create:
            os.makedirs(os.path.dirname(self.directory), mode=0o755, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.directory, DIR_MODE)
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            check_directory(st, self.directory)
            if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise UnsafePath(
                    self.directory,
                    f"{self.directory} is writable by others: chainwatch loads what "
                    "is cached there into the kernel; make it 0700 root",
                )
            yield fd
        finally:
            os.close(fd)

    def load(self, key: str) -> Artifact | None:
        """The valid artifact for ``key``, or None (missing: silently; unreadable or invalid: logged, and an
        invalid entry is removed so the next compile replaces it)."""
        name = self.file_name(key)
        try:
            with self._dir(create=False) as dir_fd:
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
                except FileNotFoundError:
                    return None
                try:
                    data = self._read_checked(fd, name)
                finally:
                    os.close(fd)
                try:
                    return loads(data, key)
                except ArtifactError as exc:
                    log.warning(
                        "probe_cache_invalid",
                        file=os.path.join(self.directory, name),
                        reason=str(exc),
                        action="recompiling",
                    )
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=dir_fd)
                    return None
        except FileNotFoundError:
            return None
        except OSError as exc:  # UnsafePath included: say so, then compile as if there were no cache
            log.warning("probe_cache_unusable", directory=self.directory, reason=str(exc), action="recompiling")
            return None

    def _read_checked(self, fd: int, name: str) -> bytes:
        st = os.fstat(fd)
        path = os.path.join(self.directory, name)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(path, f"{path} is not a regular file")
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UnsafePath(
                path,
                f"{path} could be written by another user (uid {st.st_uid}, mode "
                f"{stat.S_IMODE(st.st_mode):o}): not loading it",
            )
        if st.st_size > MAX_BYTES:
            raise UnsafePath(path, f"{path} is {st.st_size} bytes, more than a compiled program can be")
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_BYTES:
                break
        return b"".join(chunks)

    def store(self, artifact: Artifact) -> bool:
        """Write the artifact atomically and remove other keys' entries; False (logged) when it cannot."""
        name = self.file_name(artifact.key)
        data = dumps(artifact)
        try:
            with self._dir(create=True) as dir_fd:
                tmp = f".{name}.{os.getpid()}.tmp"
                fd = os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=dir_fd
                )
                try:
                    with os.fdopen(fd, "wb", closefd=False) as f:
                        f.write(data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                try:
                    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except OSError:
                    os.unlink(tmp, dir_fd=dir_fd)
                    raise
                for other in os.listdir(dir_fd):
                    # One entry is all the agent needs: older sources and kernels go (and temp files of a crash).
                    if other != name and (other.startswith(PREFIX) or other.startswith(f".{PREFIX}")):
                        with contextlib.suppress(OSError):
                            os.unlink(other, dir_fd=dir_fd)
                os.fsync(dir_fd)
            return True
        except OSError as exc:
            log.warning(
                "probe_cache_not_written",
                directory=self.directory,
                reason=str(exc),
                hint="the next start compiles again; make the directory root-owned 0700",
            )
            return False

    def remove(self, key: str) -> None:
        """Drop the entry for ``key`` (it failed to load)."""
        with contextlib.suppress(OSError), self._dir(create=False) as dir_fd:
            os.unlink(self.file_name(key), dir_fd=dir_fd)

    def state(self) -> CacheState:
        """What doctor shows."""
        try:
            with self._dir(create=False) as dir_fd:
                entries = []
                for name in sorted(os.listdir(dir_fd)):
                    if name.startswith(PREFIX) and name.endswith(SUFFIX):
                        entries.append((name, os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_size))
                return CacheState(self.directory, entries)
        except FileNotFoundError:
            return CacheState(self.directory, [], "does not exist yet (the first start creates it)")
        except OSError as exc:
            return CacheState(self.directory, [], str(exc))
