"""Opening chainwatch's own files (alerts, spool, recordings) as a root daemon should.

Alerts and recordings hold command lines and attribution labels, so they are private: created 0600 (alert
files 0640, for a log shipper in the file's group), and an existing file with looser bits is tightened.
The last path component is never a symbolic link (O_NOFOLLOW), the file must be a regular file owned by
us, and its directory must not be writable by anyone else: otherwise another user could swap the file for a
link to /etc/shadow between two runs, or read what we append to a file they made. Each refusal is an
:class:`UnsafePath` (a PermissionError) whose message says what is wrong and what to do.

The directory is opened first and the file opened relative to it, so the checked directory is the one used.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final

__all__ = ["ALERT_MODE", "PRIVATE_MODE", "UnsafePath", "check_directory", "open_private"]

PRIVATE_MODE: Final = 0o600
ALERT_MODE: Final = 0o640
DIR_MODE: Final = 0o750


class UnsafePath(PermissionError):
    """chainwatch refuses to use a path for its own data; ``strerror`` is the whole explanation."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(errno.EPERM, reason, path)


def _owner_ok(uid: int) -> bool:
    return uid in (0, os.geteuid())


def check_directory(st: os.stat_result, path: str) -> None:
    """Refuse a directory another user could replace files in."""
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(path, f"{path} is not a directory")
    if not _owner_ok(st.st_uid):
        raise UnsafePath(
            path,
            f"{path} belongs to uid {st.st_uid}, who could replace chainwatch's files in it: "
            "use a directory owned by root",
        )
    if st.st_mode & stat.S_IWOTH:
        raise UnsafePath(
            path,
            f"{path} is writable by every user (mode {stat.S_IMODE(st.st_mode):o}), who could "
            "plant a link or a file there: use a directory only root can write",
        )
    if st.st_mode & stat.S_IWGRP and st.st_gid not in (0, os.getegid()):
        raise UnsafePath(
            path,
            f"{path} is writable by group {st.st_gid} (mode {stat.S_IMODE(st.st_mode):o}): "
            "use a directory only root can write",
        )


def open_private(path: str | os.PathLike[str], flags: int, mode: int = PRIVATE_MODE, *, truncate: bool = False) -> int:
    """Open (creating it with ``mode`` if missing) the file at ``path`` and return its descriptor.

    ``flags`` is the access mode and e.g. O_APPEND; O_CREAT, O_NOFOLLOW and O_CLOEXEC are added.
    ``truncate`` empties the file, only after it passed the checks (O_TRUNC would empty someone else's
    file before we could look at it). Missing parent directories are created ``DIR_MODE``.
    """
    full = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(full)
    if not name:
        raise UnsafePath(full, f"{full} is a directory, not a file")
    os.makedirs(parent, mode=DIR_MODE, exist_ok=True)
    dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        check_directory(os.fstat(dir_fd), parent)
        try:
            # O_NONBLOCK: a FIFO planted here must not hang the agent before the type check refuses it.
            fd = os.open(
                name,
                (flags & ~os.O_TRUNC) | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                mode,
                dir_fd=dir_fd,
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath(
                    full,
                    f"{full} is a symbolic link: chainwatch does not follow links for its own "
                    "files; remove it or point the setting at the real file",
                ) from exc
            raise
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(full, f"{full} is not a regular file")
        if not _owner_ok(st.st_uid):
            raise UnsafePath(full, f"{full} belongs to uid {st.st_uid}: chainwatch writes only files it owns")
        if stat.S_IMODE(st.st_mode) & ~mode:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & mode)  # made by an older version, or by hand
        os.set_blocking(fd, True)
        if truncate:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd
