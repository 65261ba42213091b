"""Alert outputs: stdout and JSONL files, written by one thread behind a bounded queue.

The event loop only enqueues; a slow or blocked output never stalls it. A full queue drops the
alert with a logged count (never silently); shutdown flushes everything queued.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
from typing import IO, Any

import structlog

log = structlog.get_logger()

STOP = object()


class AlertSink:
    """Writes each alert as one JSON line to every output ("-" is stdout)."""

    def __init__(self, outputs: list[str], max_queue: int = 10000):
        self.outputs = outputs
        self._files: list[tuple[str, IO[str]]] = []
        for target in outputs:
            if target == "-":
                self._files.append((target, sys.stdout))
                continue
            try:
                os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
                self._files.append((target, open(target, "a", encoding="utf-8")))
            except OSError as exc:
                raise PermissionError(f"cannot open the alerts file {target}: {exc.strerror}; "
                                      "choose another with --alerts") from exc
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self._thread = threading.Thread(target=self._run, name="alert-sink", daemon=True)
        self._thread.start()

    def put(self, alert: dict[str, Any]) -> None:
        """Queue an alert; never blocks."""
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.dropped += 1
            log.error("alert_dropped", reason="sink queue full", total=self.dropped)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is STOP:
                return
            line = json.dumps(item, separators=(",", ":")) + "\n"
            for target, fh in self._files:
                try:
                    fh.write(line)
                    fh.flush()
                except OSError as exc:
                    self.write_errors += 1
                    log.error("alert_write_failed", output=target, error=str(exc), total=self.write_errors)
            self.written += 1

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued, then close the files."""
        self._queue.put(STOP)
        self._thread.join(timeout)
        for target, fh in self._files:
            if target != "-":
                fh.close()

    def stats(self) -> dict[str, int]:
        """Counters for the stats line."""
        return {"alerts_written": self.written, "alerts_dropped": self.dropped,
                "alert_write_errors": self.write_errors}
