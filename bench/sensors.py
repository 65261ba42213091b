"""The sensors the benchmark compares, each started fresh for one measurement and stopped after it.

* ``none``: nothing attached.
* ``floor``: the tracepoints chainwatch attaches, with empty BPF programs (bench/floor.py).
* ``chainwatch``: ``chainwatch run`` as shipped, default config; ready at its ``sensor_ready`` log line.
* ``bpftrace``: a peer doing comparable work on the hot tracepoints (bench/peer.bt).

A sensor's ``stop()`` returns what it saw and lost, from its own counters, where it has any.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
VENV_PYTHON: Final = ROOT / ".venv" / "bin" / "python"
CHAINWATCH: Final = ROOT / ".venv" / "bin" / "chainwatch"
PEER_SCRIPT: Final = ROOT / "bench" / "peer.bt"
READY_TIMEOUT_S: Final = 120.0
STOP_TIMEOUT_S: Final = 30.0


class SensorUnavailable(RuntimeError):
    """The sensor could not start or attach here; the message says why (it goes into the table)."""


@dataclass(frozen=True)
class Counts:
    """What a sensor reported seeing and losing over its whole run (None: it does not count this)."""

    seen: int | None = None
    lost_kernel: int | None = None
    lost_user: int | None = None
    by_type: dict[str, int] = field(default_factory=dict)  # events seen per type, where counted


class Sensor:
    """No sensor at all; the base of the others (start, ready, stop)."""

    name = "none"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_s: float | None = None  # launch to ready, seconds

    @property
    def pid(self) -> int | None:
        """The process whose CPU and memory count as the agent's, if there is one."""
        return self.proc.pid if self.proc is not None else None

    def start(self, workdir: Path) -> None:
        """Launch and return once everything is attached."""

    def stop(self) -> Counts:
        """Stop it and return its counters."""
        return Counts()


class DaemonSensor(Sensor):
    """A sensor run as a child process: ready when a marker appears in its output, stopped by a signal."""

    stop_signal = signal.SIGTERM

    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self, stdout: str, stderr: str) -> bool:
        raise NotImplementedError

    def counts(self, stdout: str, stderr: str) -> Counts:
        return Counts()

    def start(self, workdir: Path) -> None:
        self.stdout_path, self.stderr_path = workdir / f"{self.name}.out", workdir / f"{self.name}.err"
        launched = time.monotonic()
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=workdir)
        while not self.is_ready(*self._output()):
            if self.proc.poll() is not None:
                raise SensorUnavailable(
                    f"{self.name} exited with {self.proc.returncode} before it was ready: "
                    f"{_last_line(self._output()[1])}"
                )
            if time.monotonic() - launched > READY_TIMEOUT_S:
                self._kill()
                raise SensorUnavailable(f"{self.name} was not ready after {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.01)
        self.ready_s = time.monotonic() - launched

    def stop(self) -> Counts:
        assert self.proc is not None
        self.proc.send_signal(self.stop_signal)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._kill()
        return self.counts(*self._output())

    def _kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT_S)

    def _output(self) -> tuple[str, str]:
        return (self.stdout_path.read_text(errors="replace"), self.stderr_path.read_text(errors="replace"))


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every complete JSON object line in text (a log may end with a partial line or hold other text)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{") and line.endswith("}"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "(no output)"


class Chainwatch(DaemonSensor):
    """``chainwatch run`` with the default config (alerts to stdout and /var/log/chainwatch/alerts.jsonl), but
    its compile cache in ``cache_dir`` (the bench's own: an empty one makes a cold start, a filled one a warm
    start)."""

    name = "chainwatch"

    def __init__(self, program: Sequence[str] = (str(CHAINWATCH),), cache_dir: Path | None = None):
        super().__init__()
        self.program = list(program)  # another build can be measured, e.g. `python -m agent` from a checkout
        self.cache_dir = cache_dir

    def command(self) -> list[str]:
        if self.cache_dir is None:
            return [*self.program, "run"]
        config = self.cache_dir.with_suffix(".toml")
        config.write_text(f'[sensor]\ncache_dir = "{self.cache_dir}"\n')
        return [*self.program, "run", "--config", str(config)]

    def is_ready(self, stdout: str, stderr: str) -> bool:
        return self.ready_line(stderr) is not None

    @staticmethod
    def ready_line(stderr: str) -> dict[str, Any] | None:
        """The sensor_ready log line, once it is there."""
        return next((line for line in json_lines(stderr) if line.get("event") == "sensor_ready"), None)

    def probes(self) -> list[str]:
        """The tracepoints chainwatch attached, as its sensor_ready line lists them (Sensor.attached())."""
        line = self.ready_line(self._output()[1])
        assert line is not None
        return [str(probe) for probe in line["probes"]]

    def counts(self, stdout: str, stderr: str) -> Counts:
        lines = json_lines(stderr)
        ready = self.ready_line(stderr)
        final = next((line for line in reversed(lines) if line.get("event") == "stats" and line.get("final")), None)
        if ready is None or final is None:
            return Counts()
        by_type = {str(kind): int(n) for kind, n in final["events"].items()}
        # The /proc seed feeds one exec per running process through the pipeline: not events seen.
        by_type["exec"] = by_type.get("exec", 0) - int(ready.get("seeded_processes", 0))
        return Counts(
            sum(by_type.values()),
            sum(int(n) for n in final["kernel_drops"].values()),
            int(final["userspace_drops"]),
            by_type,
        )


class Floor(DaemonSensor):
    """Empty BPF programs on the given tracepoints."""

    name = "floor"

    def __init__(self, probes: list[str]):
        super().__init__()
        self.probes = probes

    def command(self) -> list[str]:
        return [str(VENV_PYTHON), str(ROOT / "bench" / "floor.py"), *self.probes]

    def is_ready(self, stdout: str, stderr: str) -> bool:
        return any(line.get("event") == "floor_ready" for line in json_lines(stderr))


LOST_RE: Final = re.compile(r"Lost (\d+) events")
PEER_EVENT_PREFIXES: Final = ("exec ", "connect ", "dup ", "open ")


class Bpftrace(DaemonSensor):
    """bpftrace running bench/peer.bt; events seen are its printed lines, losses its "Lost N events"."""

    name = "bpftrace"
    stop_signal = signal.SIGINT

    def __init__(self, binary: str):
        super().__init__()
        self.binary = binary

    def command(self) -> list[str]:
        return [self.binary, str(PEER_SCRIPT)]

    def is_ready(self, stdout: str, stderr: str) -> bool:
        # "Attaching N probes..." comes before the attach: ready once an exec of ours shows in its output.
        if "Attaching" not in stdout:
            return False
        canary = _spawn_exec()
        time.sleep(0.05)
        return f"exec {canary} " in self._output()[0]

    def counts(self, stdout: str, stderr: str) -> Counts:
        seen = sum(1 for line in stdout.splitlines() if line.startswith(PEER_EVENT_PREFIXES))
        lost = sum(int(n) for n in LOST_RE.findall(stdout + stderr))
        return Counts(seen, lost, 0)


def _spawn_exec() -> int:
    """Run one short exec and return its pid."""
    proc = subprocess.run(
        ["/bin/sh", "-c", "echo $$; exec /bin/true"], capture_output=True, text=True, timeout=10, check=True
    )
    return int(proc.stdout)
