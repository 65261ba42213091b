"""The quarantine directory: persistence files the response stage moved away, with what it takes to put
them back (``chainwatch response restore ID``).

Layout: ``<dir>/<id>/content`` (the file's bytes, 0400) and ``<dir>/<id>/meta.json`` (0600): original path,
mode, owner, times, size, sha256, incident and alert ids, and which mount namespace the path was read in.
``<dir>`` and every entry are root-only (0700). Paths are opened without following symlinks, so a planted
link cannot turn a quarantine or a restore into a read or write of another file.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MAX_FILE_BYTES = 16 << 20  # persistence files are small; a huge one is not worth holding the event loop for


class QuarantineError(RuntimeError):
    """A quarantine or restore step was refused or failed; the message says why."""


@dataclass(frozen=True)
class Meta:
    """What ``meta.json`` holds."""

    id: str
    original_path: str
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    size: int
    sha256: str
    incident_id: str
    alert_id: str
    quarantined_at: str
    resolved_in: str  # "/" or "/proc/<pid>/root": the mount namespace view the file was read from


def open_no_follow(root: str | int, path: str, flags: int = os.O_RDONLY) -> tuple[int, os.stat_result]:
    """Open ``root`` (a directory, or an fd of one) + absolute ``path`` refusing symlinks in every component;
    returns (fd, its fstat). ``path`` "/" opens the root itself.

    Each directory is opened relative to the previous one with O_NOFOLLOW, so a link anywhere in the
    path (including absolute links, which would otherwise resolve against the agent's own root) fails.
    """
    parts = [p for p in path.split("/") if p]
    if not path.startswith("/") or any(p in (".", "..") for p in parts):
        raise QuarantineError(f"{path!r} is not an absolute, normalised path")
    try:
        dirfd = os.dup(root) if isinstance(root, int) else os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise QuarantineError(f"cannot open {root}: {exc.strerror}") from exc
    if not parts:
        return dirfd, os.fstat(dirfd)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dirfd)
            except OSError as exc:
                raise QuarantineError(
                    f"cannot open directory {part!r} of {path} without following links: {exc.strerror}"
                ) from exc
            os.close(dirfd)
            dirfd = nxt
        try:
            fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError as exc:
            raise QuarantineError(f"cannot open {path} without following links: {exc.strerror}") from exc
        return fd, os.fstat(fd)
    finally:
        os.close(dirfd)


def parent_fd(root: str | int, path: str) -> tuple[int, str]:
    """An fd of ``path``'s directory (under ``root``, no links followed) and ``path``'s last component."""
    parent, name = os.path.split(path)
    fd, _ = open_no_follow(root, parent, os.O_RDONLY | os.O_DIRECTORY)
    return fd, name


class QuarantineStore:
    """The quarantine directory."""

    def __init__(self, directory: str):
        self.dir = Path(directory)

    def prepare(self) -> None:
        """Create the directory root-only, or check an existing one is; raises QuarantineError."""
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(self.dir)
        except OSError as exc:
            raise QuarantineError(f"cannot create the quarantine directory {self.dir}: {exc.strerror}") from exc
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise QuarantineError(
                f"the quarantine directory {self.dir} must be a directory owned by the agent's "
                "user (root), not a link or another user's directory"
            )
        if st.st_mode & 0o077:
            os.chmod(self.dir, 0o700)  # ours: make it root-only rather than refuse to start

    def put(
        self, fd: int, st: os.stat_result, *, original_path: str, incident_id: str, alert_id: str, resolved_in: str
    ) -> Meta:
        """Copy the open file ``fd`` into a new entry; the caller removes the original afterwards."""
        if st.st_size > MAX_FILE_BYTES:
            raise QuarantineError(
                f"{original_path} is {st.st_size} bytes, more than the {MAX_FILE_BYTES} a "
                "persistence file is expected to be"
            )
        data = b""
        while len(data) <= MAX_FILE_BYTES:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            data += chunk
        entry_id = f"q-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        meta = Meta(
            id=entry_id,
            original_path=original_path,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            atime_ns=st.st_atime_ns,
            mtime_ns=st.st_mtime_ns,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            incident_id=incident_id,
            alert_id=alert_id,
            quarantined_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            resolved_in=resolved_in,
        )
        entry = self.dir / entry_id
        entry.mkdir(mode=0o700)
        _write_new(entry / "content", data, 0o400)
        _write_new(entry / "meta.json", (json.dumps(asdict(meta), indent=2) + "\n").encode(), 0o600)
        return meta

    def discard(self, entry_id: str) -> None:
        """Remove an entry (after a failed move, or once restored)."""
        entry = self._entry(entry_id)
        for name in ("content", "meta.json"):
            try:
                (entry / name).unlink()
            except FileNotFoundError:
                pass
        entry.rmdir()

    def _entry(self, entry_id: str) -> Path:
        if not entry_id or "/" in entry_id or entry_id.startswith("."):
            raise QuarantineError(f"{entry_id!r} is not a quarantine id")
        return self.dir / entry_id

    def meta(self, entry_id: str) -> Meta:
        """An entry's metadata; raises QuarantineError if there is no such entry."""
        try:
            data: dict[str, Any] = json.loads((self._entry(entry_id) / "meta.json").read_text())
            return Meta(**data)
        except FileNotFoundError:
            raise QuarantineError(f"no quarantine entry {entry_id!r} in {self.dir}") from None
        except (OSError, ValueError, TypeError) as exc:
            raise QuarantineError(f"quarantine entry {entry_id!r} is damaged: {exc}") from exc

    def entries(self) -> list[Meta]:
        """Every entry, oldest first."""
        try:
            names = sorted(p.name for p in self.dir.iterdir() if (p / "meta.json").is_file())
        except FileNotFoundError:
            return []
        return [self.meta(name) for name in names]

    def restore(self, entry_id: str, root: str = "/", force: bool = False) -> Meta:
        """Put the file back at its original path (under ``root``) with its mode, owner and times; the entry
        is removed. Refuses to overwrite an existing file unless ``force``."""
        meta = self.meta(entry_id)
        data = (self._entry(entry_id) / "content").read_bytes()
        if hashlib.sha256(data).hexdigest() != meta.sha256:
            raise QuarantineError(f"quarantine entry {entry_id!r}: content does not match its sha256; not restored")
        dirfd, name = parent_fd(root, meta.original_path)
        try:
            tmp = f".{name}.chainwatch-restore-{uuid.uuid4().hex[:8]}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
            try:
                _write_all(fd, data)
                os.fchown(fd, meta.uid, meta.gid)
                os.fchmod(fd, meta.mode)
                os.utime(fd, ns=(meta.atime_ns, meta.mtime_ns))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                if force:
                    os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
                else:
                    os.link(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd, follow_symlinks=False)
            except FileExistsError:
                raise QuarantineError(
                    f"{meta.original_path} exists again; not overwritten (use --force to replace it)"
                ) from None
            finally:
                try:
                    os.unlink(tmp, dir_fd=dirfd)
                except FileNotFoundError:
                    pass
        finally:
            os.close(dirfd)
        self.discard(entry_id)
        return meta


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
