"""A FIFO of the bytes one alert output still owes: memory first, then a file; bounded in both.

The sink pushes a line here when its output cannot take it (a full or failing filesystem) and writes the
spool's head once the output recovers. Order is kept by one rule: while anything is on disk, every newer
line goes to disk behind it, and memory refills from the disk as it drains. A line that fits in neither
bound is refused with a reason (the sink counts and logs it): nothing leaves the spool unseen.

The spool file is a plain byte stream of exactly what is still owed to the output, whole lines except
possibly a first line's tail (the rest of a line the output took only part of). That is why a file left by
a clean shutdown (:meth:`Spool.persist`) is simply written first by the next run. After a crash, the lines
held only in memory are gone, and lines the file held may be written a second time: the file is emptied
only once the output took all of them.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from pathlib import Path
from typing import Final

from agent.safefile import open_private

READ_CHUNK: Final = 64 * 1024


class Spool:
    """Lines owed to one output. ``path`` None keeps them in memory only."""

    def __init__(self, memory_bytes: int, path: Path | None = None, disk_bytes: int = 0) -> None:
        self.memory_bytes = memory_bytes
        self.path = path
        self.disk_bytes = disk_bytes
        self._mem: deque[bytes] = deque()
        self._mem_size = 0
        self._head_done = 0  # bytes of the first memory line the output already took
        self._fd: int | None = None
        self._disk_read = 0  # the file's bytes before this offset are in memory or written
        self._disk_end = 0
        self._disk_lines = 0
        self._mem_from_disk = 0  # the first memory lines came from the file, which still holds them
        self.recovered_cut_bytes = 0

    def __len__(self) -> int:
        """Lines waiting (a partly written line counts until its last byte is written)."""
        return len(self._mem) + self._disk_lines

    @property
    def on_disk(self) -> int:
        """Lines waiting in the spool file."""
        return self._disk_lines

    def recover(self) -> int:
        """Take over a spool file a previous run left; returns its line count (0 when there is none).

        A last line without its newline (a crash mid-append) is cut off: written, it would merge with the
        next alert into one unreadable line. ``recovered_cut_bytes`` says how much was cut.
        """
        if self.path is None or not self.path.exists():
            return 0
        fd = self._open()
        size = os.fstat(fd).st_size
        lines, end = 0, 0
        offset = 0
        while offset < size:
            chunk = os.pread(fd, READ_CHUNK, offset)
            if not chunk:
                break
            lines += chunk.count(b"\n")
            last = chunk.rfind(b"\n")
            if last >= 0:
                end = offset + last + 1
            offset += len(chunk)
        if end < size:
            os.ftruncate(fd, end)
            self.recovered_cut_bytes = size - end
        self._disk_read, self._disk_end, self._disk_lines = 0, end, lines
        if not lines:
            self._drop_file()
        return lines

    def push(self, line: bytes) -> str | None:
        """Keep ``line`` (which ends with a newline) at the tail; returns None, or why it was refused."""
        if not self._disk_lines and (not self._mem or self._mem_size + len(line) <= self.memory_bytes):
            self._mem.append(line)
            self._mem_size += len(line)
            return None
        if self.path is None:
            return f"the memory spool is full ({self.memory_bytes} bytes) and there is no spool directory"
        if self._disk_end + len(line) > self.disk_bytes:
            return f"the spool file {self.path} is full ({self.disk_bytes} bytes)"
        try:
            self._append(line)
        except OSError as exc:
            return f"cannot write the spool file {self.path}: {exc.strerror or exc}"
        return None

    def peek(self) -> bytes | None:
        """The oldest bytes still owed (the rest of the first line), or None when empty. OSError: unreadable."""
        if not self._mem and self._disk_lines:
            self._refill()
        if not self._mem:
            return None
        return self._mem[0][self._head_done :]

    def peek_lines(self, max_lines: int, max_bytes: int) -> list[bytes]:
        """Up to ``max_lines`` of the oldest lines (the first one's rest, when partly written), no more than
        ``max_bytes`` together unless the first alone is larger; [] when empty. Nothing is taken: the caller
        consumes each once it is written. OSError: unreadable."""
        if not self._mem and self._disk_lines:
            self._refill()
        lines: list[bytes] = []
        size = 0
        for line in self._mem:
            part = line[self._head_done :] if not lines else line
            if lines and (len(lines) >= max_lines or size + len(part) > max_bytes):
                break
            lines.append(part)
            size += len(part)
        return lines

    def consume(self, count: int) -> bool:
        """``count`` bytes of :meth:`peek` were written; True when that finished the line."""
        self._head_done += count
        head = self._mem[0]
        if self._head_done < len(head):
            return False
        self._mem.popleft()
        self._mem_size -= len(head)
        self._head_done = 0
        if self._mem_from_disk:
            self._mem_from_disk -= 1
            self._reset_file()
        return True

    def persist(self) -> int:
        """At shutdown: leave everything still owed in the spool file for the next run, memory first.

        Returns the lines kept. Raises OSError when they cannot be kept (then they are lost, and the caller
        says so). The file may end up larger than ``disk_bytes`` by at most the memory spool.
        """
        if self.path is None:
            if len(self):
                raise OSError(errno.ENOENT, "no spool directory is configured")
            return 0
        lines = len(self)
        if not lines:
            self._drop_file()
            return 0
        if self._disk_read == 0 and not self._mem:
            self.close()  # the file already holds exactly what is owed
            return lines
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = open_private(tmp, os.O_WRONLY, truncate=True)
        try:
            _write_all(fd, self._mem[0][self._head_done :])
            for line in list(self._mem)[1:]:
                _write_all(fd, line)
            offset = self._disk_read
            while self._fd is not None and offset < self._disk_end:
                chunk = os.pread(self._fd, min(READ_CHUNK, self._disk_end - offset), offset)
                if not chunk:
                    raise OSError(errno.EIO, f"the spool file {self.path} ended early")
                _write_all(fd, chunk)
                offset += len(chunk)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            _unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, self.path)
        self.close()
        return lines

    def close(self) -> None:
        """Close the spool file (its content stays)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        if self._fd is None:
            assert self.path is not None
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd = open_private(self.path, os.O_RDWR)
        return self._fd

    def _append(self, line: bytes) -> None:
        fd = self._open()
        try:
            _write_all(fd, line, self._disk_end)
        except OSError:
            # A short write left part of the line: cut it, so the file holds whole lines only.
            try:
                os.ftruncate(fd, self._disk_end)
            except OSError:
                pass
            raise
        self._disk_end += len(line)
        self._disk_lines += 1

    def _refill(self) -> None:
        assert self._fd is not None
        size = max(self.memory_bytes, READ_CHUNK)
        while True:
            data = os.pread(self._fd, min(size, self._disk_end - self._disk_read), self._disk_read)
            cut = data.rfind(b"\n") + 1
            if cut:
                break
            if self._disk_read + len(data) >= self._disk_end:
                raise OSError(errno.EIO, f"the spool file {self.path} changed under the agent")
            size *= 2  # one line longer than the chunk
        parts = data[:cut].split(b"\n")[:-1]
        for part in parts:
            self._mem.append(part + b"\n")
        self._mem_size += cut
        self._mem_from_disk += len(parts)
        self._disk_read += cut
        self._disk_lines -= len(parts)

    def _reset_file(self) -> None:
        # Empty the file only once the output took every line it held: until then a crash leaves them
        # there (written twice at worst, never lost).
        if self._fd is None or self._mem_from_disk or self._disk_read < self._disk_end:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            return  # it only grows; the bound still holds
        self._disk_read = self._disk_end = 0

    def _drop_file(self) -> None:
        self.close()
        if self.path is not None:
            _unlink(self.path)


def _write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    done = 0
    while done < len(data):
        rest = data[done:]
        n = os.write(fd, rest) if offset is None else os.pwrite(fd, rest, offset + done)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done += n


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
