"""Record/replay: a msgpack stream of decoded events, readable without root or bcc.

The stream is a header map followed by one map per event (``Event.to_dict``). Seeded processes are
recorded as the synthetic exec events they were, so a replay rebuilds the same process table.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Final

import msgpack

from agent.capture import env_wanted
from agent.events import Event, event_from_dict

MAGIC: Final = "chainwatch-recording"
VERSION: Final = 1


class RecordingError(ValueError):
    """The file is not a chainwatch recording, or is damaged; the message says which and where."""


class RecordingWriter:
    """Appends events to an open binary file; ``flush`` on a timer and at shutdown."""

    def __init__(self, fh: IO[bytes], meta: dict[str, Any]):
        self._fh = fh
        self._packer = msgpack.Packer(use_bin_type=True)
        self._fh.write(self._packer.pack({"format": MAGIC, "version": VERSION, **meta}))
        self.written = 0

    def write(self, event: Event) -> None:
        """Append one event."""
        self._fh.write(self._packer.pack(event.to_dict()))
        self.written += 1

    def flush(self) -> None:
        """Push buffered bytes to the file."""
        self._fh.flush()


@dataclass
class Recording:
    """A parsed recording: its header and an iterator over its events."""

    meta: dict[str, Any]
    events: Iterator[Event]
    errors: list[str] = field(default_factory=list)


def _size(fh: IO[bytes]) -> int | None:
    try:
        here = fh.tell()
        end = fh.seek(0, 2)
        fh.seek(here)
        return end - here
    except (OSError, ValueError):
        return None


def read_recording(fh: IO[bytes]) -> Recording:
    """Open a recording. A damaged event is reported in ``errors`` and skipped; a bad header raises."""
    size = _size(fh)
    unpacker = msgpack.Unpacker(fh, raw=False, strict_map_key=False)
    try:
        meta = next(unpacker)
    except StopIteration:
        raise RecordingError("empty file: not a chainwatch recording") from None
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        raise RecordingError(f"not a chainwatch recording ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != MAGIC:
        raise RecordingError("not a chainwatch recording (no chainwatch header)")
    if meta.get("version") != VERSION:
        raise RecordingError(
            f"recording version {meta.get('version')} is not supported (this chainwatch reads {VERSION})"
        )
    rec = Recording(meta, iter(()))

    def events() -> Iterator[Event]:
        index = 0
        done = unpacker.tell()  # end of the last complete item: after a cut, tell() points into the torn one
        while True:
            try:
                item = next(unpacker)
            except StopIteration:
                if size is not None and done < size:
                    rec.errors.append(f"item {index + 1}: truncated at byte {done} of {size}")
                return
            except (msgpack.FormatError, msgpack.StackError, ValueError) as exc:
                rec.errors.append(f"item {index}: unreadable ({exc}); stopping")
                return
            index += 1
            done = unpacker.tell()
            if not isinstance(item, dict):
                rec.errors.append(f"item {index}: not an event map")
                continue
            env = item.get("env")
            if isinstance(env, dict):  # a recording made before capture was an allowlist may hold tokens
                item["env"] = {k: v for k, v in env.items() if isinstance(k, str) and env_wanted(k)}
            try:
                yield event_from_dict(item)
            except ValueError as exc:
                rec.errors.append(f"item {index}: {exc}")

    rec.events = events()
    return rec
