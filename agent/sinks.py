"""Alert outputs: stdout, JSONL files and the outputs of :mod:`agent.outputs` (journald, syslog, webhook),
each written by its own thread behind a bounded queue, with a durable spool.

The event loop only enqueues (:meth:`AlertSink.put` never blocks); a slow or failing output never stalls it,
nor the other outputs. A batched output (:class:`BatchOutput`, the webhook) takes every alert through its
spool and is written the spool's head, many alerts per request.
When a write fails (ENOSPC, EIO, ...) the alert is not lost: it goes to that output's spool
(:mod:`agent.spool`: memory, then a file in the spool directory), and the output is retried with
exponential backoff. Once it takes writes again the spool is written first, in order, and each alert
reaches each output exactly once (a line the output took only part of is finished, not rewritten).

Nothing is lost silently. A full queue (the writer thread is stuck) or a full spool (memory and file) drops
the alert with an error line naming it, and counts it; a spool still holding alerts at shutdown is kept on
disk and written first by the next run. The log says when an output starts spooling (``alerts_spooled``,
with the reason) and when its spool is written out (``alerts_spool_flushed``); :meth:`AlertSink.stats`
feeds the daemon's stats line.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final, Protocol, runtime_checkable

import structlog

from agent.config import DetectionConfig
from agent.formats import encode_line, render
from agent.safefile import ALERT_MODE, open_private
from agent.spool import Spool

log = structlog.get_logger()

STOP: Final = object()
MEMORY_SPOOL_BYTES: Final = 4 * 1024 * 1024  # per output; a few thousand alerts
DISK_SPOOL_BYTES: Final = DetectionConfig.spool_max_mb * 1024 * 1024  # per output (detection.spool_max_mb)
RETRY_MIN_S: Final = 0.1
RETRY_MAX_S: Final = 5.0


class Output(Protocol):
    """Where alert lines go. ``write`` returns how many bytes it took (short writes are allowed) or raises
    OSError having taken none."""

    name: str

    def write(self, data: bytes) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class BatchOutput(Protocol):
    """An output that takes several alert lines at once (a webhook request). ``write_batch`` takes them all
    or raises OSError having taken none; the delivery sends every alert through its spool, in batches of at
    most ``batch_max`` lines and ``batch_bytes`` bytes."""

    name: str
    batch_max: int
    batch_bytes: int

    def write(self, data: bytes) -> int: ...

    def write_batch(self, lines: list[bytes]) -> None: ...

    def close(self) -> None: ...


class FileOutput:
    """An append-only file, written with os.write so a short write is seen (a buffered file would keep the
    rest in its buffer and write it again on the next flush)."""

    def __init__(self, path: str) -> None:
        self.name = path
        self._fd = open_private(path, os.O_WRONLY | os.O_APPEND, ALERT_MODE)  # no symlinks, private, checked dir

    def write(self, data: bytes) -> int:
        """Append what the filesystem takes of ``data``."""
        return os.write(self._fd, data)

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)


class StreamOutput:
    """Standard output ("-"). Written through its file descriptor when it has one, after flushing the text
    stream so lines printed before (``replay --dump``) stay in order."""

    def __init__(self, stream: IO[str], name: str = "-") -> None:
        self.name = name
        self._stream = stream

    def write(self, data: bytes) -> int:
        """Write ``data``; a stream without a descriptor (a test's capture) takes all or nothing."""
        try:
            self._stream.flush()
            try:
                fd = self._stream.fileno()
            except io.UnsupportedOperation:
                self._stream.write(data.decode("utf-8"))
                self._stream.flush()
                return len(data)
        except ValueError as exc:  # a closed stream says so with ValueError, not OSError
            raise OSError(errno.EBADF, f"{self.name} is closed") from exc
        return os.write(fd, data)

    def close(self) -> None:
        """Standard output stays open."""


def open_output(target: str) -> Output:
    """The output for ``target``: "-" is standard output, anything else a file appended to."""
    if target == "-":
        return StreamOutput(sys.stdout)
    return FileOutput(target)


def spool_path(spool_dir: Path, target: str) -> Path:
    """The spool file of output ``target``: its name, for people, and a hash of its full path, for uniqueness."""
    # Network outputs are named by URL (syslog+tcp://host:514): their name is not a path in the working directory.
    full = target if "://" in target else os.path.abspath(target)
    digest = hashlib.sha256(full.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    base = os.path.basename(full) if "://" not in target else target.replace("://", "-")
    base = "".join(c if c.isalnum() or c in "._-" else "_" for c in base)
    return spool_dir / f"{base[:64]}-{digest}.spool"


def _filesystem(path: Path) -> int | None:
    """The device of the filesystem that holds ``path`` or would hold it once created."""
    for candidate in (path, *path.parents):
        try:
            return os.stat(candidate).st_dev
        except OSError:
            continue
    return None


def _reason(exc: OSError) -> dict[str, str]:
    code = errno.errorcode.get(exc.errno or 0, "")
    return {"reason": exc.strerror or str(exc), "errno": code}


def _output_bug(name: str, exc: Exception) -> OSError:
    log.exception("alert_output_error", output=name)
    return OSError(errno.EIO, f"the output failed: {exc!r}")


class Delivery:
    """One output, its spool and its retry schedule. Used by the sink's thread only; ``now`` is monotonic
    seconds, passed in so the schedule can be tested without sleeping."""

    def __init__(
        self, output: Output, spool: Spool, retry_min_s: float = RETRY_MIN_S, retry_max_s: float = RETRY_MAX_S
    ) -> None:
        self.output = output
        self.spool = spool
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.written = 0  # lines finished on this output
        self.write_errors = 0  # failed write attempts, retries included
        self.spooled = 0  # lines that went through the spool
        self.flushed = 0  # spooled lines written since
        self.dropped = 0  # lines refused by a full spool
        self._backoff = retry_min_s
        self._retry_at = 0.0
        self._episode_start: float | None = None  # when the output last started failing
        self._episode_spooled = 0
        self._episode_dropped = 0
        self._said_disk = False
        # Batched outputs take every line through the spool (it is their bounded queue) and write its head.
        self._batch = output if isinstance(output, BatchOutput) else None

    @property
    def waiting(self) -> int:
        """Lines in the spool."""
        return len(self.spool)

    def recover(self) -> None:
        """Take over the spool file a previous run left for this output, to be written before anything new."""
        try:
            lines = self.spool.recover()
        except OSError as exc:
            log.error(
                "alerts_spool_unreadable",
                output=self.output.name,
                spool_file=str(self.spool.path),
                **_reason(exc),
                hint="the alerts in it are not written; check the spool directory",
            )
            self.spool.path = None
            return
        if lines:
            self.spooled += lines
            self._episode_start, self._episode_spooled = time.monotonic(), lines
            log.warning(
                "alerts_spool_recovered",
                output=self.output.name,
                spool_file=str(self.spool.path),
                alerts=lines,
                cut_bytes=self.spool.recovered_cut_bytes,
            )

    def deliver(self, line: bytes, alert: dict[str, Any], now: float) -> None:
        """Write ``line`` now, or behind the lines already spooled."""
        if self._batch is not None:
            self._keep(line, alert, spooled=self._episode_start is not None)  # written by retry(), in batches
            return
        if not len(self.spool):
            done, error = self._write(line)
            if error is None:
                self.written += 1
                return
            self._start_episode(error, now)
            self._keep(line, alert)
            self.spool.consume(done)  # the output took this much of it: only the rest is owed
            return
        self._keep(line, alert)

    def due_in(self, now: float) -> float | None:
        """Seconds until the next retry, or None when nothing is spooled."""
        if not len(self.spool):
            return None
        return max(0.0, self._retry_at - now)

    def retry(self, now: float, force: bool = False) -> None:
        """Write the spool out, oldest first, when the backoff allows (or ``force``), until the output fails."""
        if not len(self.spool) or (now < self._retry_at and not force):
            return
        if self._batch is not None:
            if not self._retry_batches(self._batch, now):
                return
            self._end_episode(now)
            return
        while True:
            try:
                data = self.spool.peek()
            except OSError as exc:
                log.error(
                    "alerts_spool_unreadable", output=self.output.name, spool_file=str(self.spool.path), **_reason(exc)
                )
                self._schedule(now)
                return
            if data is None:
                break
            done, error = self._write(data)
            if done and self.spool.consume(done):
                self.written += 1
                self.flushed += 1
            if error is not None:
                self._schedule(now)
                return
        if len(self.spool):  # cannot happen; if it did, retrying at once would spin
            self._schedule(now)
            return
        self._end_episode(now)

    def _retry_batches(self, output: BatchOutput, now: float) -> bool:
        """Write the spool out in batches; False when the output failed (the rest waits for the backoff)."""
        while True:
            try:
                lines = self.spool.peek_lines(output.batch_max, output.batch_bytes)
            except OSError as exc:
                log.error(
                    "alerts_spool_unreadable", output=self.output.name, spool_file=str(self.spool.path), **_reason(exc)
                )
                self._schedule(now)
                return False
            if not lines:
                if len(self.spool):  # cannot happen; if it did, retrying at once would spin
                    self._schedule(now)
                    return False
                return True
            try:
                try:
                    output.write_batch(lines)
                except OSError:
                    raise
                except Exception as bug:  # noqa: BLE001 - a bug in an output: keep the alerts, retry, say so
                    raise _output_bug(self.output.name, bug) from bug
            except OSError as exc:
                self.write_errors += 1
                if self._episode_start is None:
                    self.spooled += len(self.spool)  # they wait now because of the failure
                    self._start_episode(exc, now, in_spool=len(self.spool))
                    self._episode_spooled = len(self.spool)
                else:
                    self._schedule(now)
                return False
            for line in lines:
                self.spool.consume(len(line))
                self.written += 1
                if self._episode_start is not None:
                    self.flushed += 1

    def _end_episode(self, now: float) -> None:
        if self._episode_start is not None:
            log.info(
                "alerts_spool_flushed",
                output=self.output.name,
                alerts=self._episode_spooled,
                dropped=self._episode_dropped,
                seconds=round(now - self._episode_start, 3),
            )
        self._episode_start = None
        self._episode_spooled = self._episode_dropped = 0
        self._said_disk = False
        self._backoff = self.retry_min_s

    def shutdown(self) -> None:
        """Last try; whatever the output still cannot take stays in the spool file for the next run."""
        # A failing network output could spend its whole timeout on a last try that shutdown may not wait
        # for (then the spool would die with the process): it goes straight to the spool file instead.
        if self._episode_start is None or not getattr(self.output, "remote", False):
            self.retry(time.monotonic(), force=True)
        waiting = len(self.spool)
        try:
            kept = self.spool.persist()
        except OSError as exc:
            log.error(
                "alerts_lost",
                output=self.output.name,
                alerts=waiting,
                spool_file=self._spool_file(),
                **_reason(exc),
                hint="set detection.spool_dir to a writable directory on another filesystem",
            )
            self.dropped += waiting
            kept = 0
        if kept:
            log.warning(
                "alerts_spool_kept",
                output=self.output.name,
                alerts=kept,
                spool_file=self._spool_file(),
                hint="they are written first when chainwatch starts again",
            )
        self.output.close()

    def _write(self, data: bytes) -> tuple[int, OSError | None]:
        """Bytes of ``data`` the output took, and the error that stopped it (None when it took them all)."""
        done = 0
        while done < len(data):
            try:
                n = self.output.write(data[done:])
            except OSError as exc:
                self.write_errors += 1
                return done, exc
            except Exception as exc:  # noqa: BLE001 - a bug in an output: keep the alert, retry, say so
                self.write_errors += 1
                return done, _output_bug(self.output.name, exc)
            if n <= 0:
                self.write_errors += 1
                return done, OSError(errno.EIO, "the output took nothing")
            done += n
        return done, None

    def _spool_file(self) -> str | None:
        return str(self.spool.path) if self.spool.path else None

    def _start_episode(self, error: OSError, now: float, in_spool: int | None = None) -> None:
        self._episode_start = now
        self._episode_spooled = self._episode_dropped = 0
        self._schedule(now)
        log.warning(
            "alerts_spooled",
            output=self.output.name,
            **_reason(error),
            in_spool=len(self.spool) + 1 if in_spool is None else in_spool,
            spool_file=self._spool_file(),
            hint="alerts are kept and written in order once the output takes writes again",
        )

    def _keep(self, line: bytes, alert: dict[str, Any], spooled: bool = True) -> None:
        refused = self.spool.push(line)
        if refused is not None:
            self.dropped += 1
            self._episode_dropped += 1
            event, rule = (v if isinstance(v, dict) else {} for v in (alert.get("event"), alert.get("rule")))
            log.error(
                "alert_dropped",
                output=self.output.name,
                reason=refused,
                total=self.dropped,
                alert_id=event.get("id"),
                rule=rule.get("name"),
                severity=event.get("severity"),
            )
            return
        if not spooled:
            return
        self.spooled += 1
        self._episode_spooled += 1
        if self.spool.on_disk and not self._said_disk:
            self._said_disk = True
            log.warning(
                "alerts_spooled",
                output=self.output.name,
                reason="the memory spool is full",
                in_spool=len(self.spool),
                spool_file=str(self.spool.path),
            )

    def _schedule(self, now: float) -> None:
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self.retry_max_s)


class _Worker:
    """One output's thread and queue: a slow or unreachable output (a collector that times out) delays only
    its own alerts, never the other outputs' or the event loop."""

    def __init__(self, delivery: Delivery, fmt: str, max_queue: int) -> None:
        self.delivery = delivery
        self.format = fmt  # the format of the lines this output's spool holds
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self.dropped = 0  # alerts the queue or the encoder refused
        self.thread = threading.Thread(target=self._run, name=f"alert-sink:{delivery.output.name}"[:64], daemon=True)

    def _run(self) -> None:
        delivery = self.delivery
        delivery.retry(time.monotonic())  # a recovered spool is written before the first new alert
        while True:
            wait = delivery.due_in(time.monotonic())
            try:
                item = self.queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is STOP:
                break
            try:
                if item is not None:
                    self._deliver(item)
                    # Take what else is queued before writing, so a burst becomes one batch for a batched output.
                    for _ in range(BURST):
                        try:
                            item = self.queue.get_nowait()
                        except queue.Empty:
                            break
                        if item is STOP:
                            break
                        self._deliver(item)
                    if item is STOP:
                        break
                delivery.retry(time.monotonic())
            except Exception:  # noqa: BLE001 - the thread must outlive a bug: alerts keep flowing
                log.exception("alert_sink_error", output=delivery.output.name)
                delivery._schedule(time.monotonic())  # back off: a bug hit on every retry must not spin
        try:
            delivery.shutdown()
        except Exception:  # noqa: BLE001 - logged; the other outputs still get their last try
            log.exception("alert_sink_error", output=delivery.output.name)

    def _deliver(self, alert: dict[str, Any]) -> None:
        try:
            line = encode_line(render(alert, self.format))
        except (TypeError, ValueError) as exc:
            self.dropped += 1
            log.error(
                "alert_dropped",
                output=self.delivery.output.name,
                total=self.dropped,
                reason=f"cannot encode the alert as JSON: {exc}",
            )
            return
        self.delivery.deliver(line, alert, time.monotonic())


BURST: Final = 1000  # alerts taken off a queue at once before writing


class AlertSink:
    """Writes each alert as one JSON line to every output ("-" is stdout), each output on its own thread.

    ``outputs`` are files or "-", in ``alerts_format`` ("ecs" or "ocsf"); ``extra`` are opened outputs
    (journald, syslog, webhook) whose spools hold ECS lines, which they render in their own format as
    they send. ``spool_dir`` None keeps spooled alerts in memory only (``memory_spool_bytes`` per output,
    then drops); with a directory, each output overflows to a spool file there (``spool_max_bytes`` per
    output). Choose a directory on another filesystem than the outputs: a full disk fills both.
    """

    def __init__(
        self,
        outputs: list[str],
        max_queue: int = 10000,
        *,
        spool_dir: str | Path | None = None,
        spool_max_bytes: int = DISK_SPOOL_BYTES,
        memory_spool_bytes: int = MEMORY_SPOOL_BYTES,
        retry_min_s: float = RETRY_MIN_S,
        retry_max_s: float = RETRY_MAX_S,
        opener: Callable[[str], Output] = open_output,
        alerts_format: str = "ecs",
        extra: list[Output] | None = None,
    ) -> None:
        self.outputs = outputs
        self._workers: list[_Worker] = []
        spool_root = Path(spool_dir) if spool_dir else None
        opened: list[tuple[Output, str]] = []
        for target in outputs:
            try:
                opened.append((opener(target), alerts_format))
            except OSError as exc:
                for output, _ in [*opened, *((o, "") for o in extra or [])]:
                    output.close()
                raise PermissionError(
                    f"cannot open the alerts file {target}: {exc.strerror}; choose another with --alerts"
                ) from exc
        opened += [(output, "ecs") for output in extra or []]
        for output, fmt in opened:
            target = output.name
            # stdout has no disk spool: a later run could not write a closed pipe's alerts anywhere sensible.
            path = spool_path(spool_root, target) if spool_root is not None and target != "-" else None
            delivery = Delivery(output, Spool(memory_spool_bytes, path, spool_max_bytes), retry_min_s, retry_max_s)
            if path is not None:
                fields: dict[str, Any] = {}
                if "://" not in target:
                    same = _filesystem(path.parent) == _filesystem(Path(os.path.abspath(target)).parent)
                    fields["same_filesystem"] = same
                    if same:
                        fields["hint"] = "a full disk fills both: point detection.spool_dir at another filesystem"
                log.info("alerts_spool", output=target, spool_file=str(path), **fields)
                delivery.recover()
            self._workers.append(_Worker(delivery, fmt, max_queue))
        self._deliveries = [w.delivery for w in self._workers]
        for worker in self._workers:
            worker.thread.start()

    @property
    def names(self) -> list[str]:
        """Every output, by name (files, "-", and the URLs of the others)."""
        return [d.output.name for d in self._deliveries]

    def put(self, alert: dict[str, Any]) -> None:
        """Queue an alert for every output; never blocks."""
        for worker in self._workers:
            try:
                worker.queue.put_nowait(alert)
            except queue.Full:
                worker.dropped += 1
                log.error(
                    "alert_dropped", reason="sink queue full", output=worker.delivery.output.name, total=worker.dropped
                )

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued (one last try for spooled alerts, the rest kept on disk), then close."""
        end = time.monotonic() + timeout
        for worker in self._workers:
            try:
                worker.queue.put(STOP, timeout=max(0.0, end - time.monotonic()))
            except queue.Full:
                log.error(
                    "alert_sink_stuck",
                    output=worker.delivery.output.name,
                    queued=worker.queue.qsize(),
                    hint="an output blocks its writes",
                )
        for worker in self._workers:
            worker.thread.join(max(0.0, end - time.monotonic()))
            if worker.thread.is_alive():
                log.error(
                    "alert_sink_stuck",
                    output=worker.delivery.output.name,
                    queued=worker.queue.qsize(),
                    hint="an output blocks its writes",
                )

    def stats(self) -> dict[str, int]:
        """Counters for the stats line. Spool counts are summed over the outputs."""
        ds = self._deliveries
        return {
            "alerts_written": min((d.written for d in ds), default=0),  # alerts every output has
            "alerts_dropped": sum(w.dropped for w in self._workers) + sum(d.dropped for d in ds),
            "alert_write_errors": sum(d.write_errors for d in ds),
            "alerts_spooled": sum(d.spooled for d in ds),
            "alerts_in_spool": sum(d.waiting for d in ds),
            "alerts_spool_flushed": sum(d.flushed for d in ds),
            "alerts_spool_dropped": sum(d.dropped for d in ds),
        }
