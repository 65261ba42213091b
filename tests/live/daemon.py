"""`chainwatch run` as a subprocess for the resilience and degraded-sensor tests: its JSON log lines, stats lines
and alerts, read from the files it writes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]
CHAINWATCH = [sys.executable, "-m", "agent"]
READY_TIMEOUT_S = 120.0  # compiling the probes takes seconds; far more on a loaded machine
STOP_TIMEOUT_S = 60.0
LogLine = dict[str, Any]


class Daemon:
    """`chainwatch run --config FILE --alerts FILE` as a subprocess; its JSON log lines go to a file."""

    def __init__(self, workdir: Path, config: str) -> None:
        self.log = workdir / "run.log"
        self.alerts = workdir / "alerts.jsonl"
        config_file = workdir / "chainwatch.toml"
        config_file.write_text(config)
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                [*CHAINWATCH, "run", "--config", str(config_file), "--alerts", str(self.alerts)],
                stderr=err,
                stdout=subprocess.DEVNULL,
                cwd=ROOT,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def lines(self) -> list[LogLine]:
        """Every complete JSON log line so far (bcc may print plain text too; that is skipped)."""
        out = []
        for text in self.log.read_text(errors="replace").splitlines(keepends=True):
            if not text.endswith("\n"):
                break  # still being written
            try:
                line = json.loads(text)
            except ValueError:
                continue
            if isinstance(line, dict):
                out.append(line)
        return out

    def stats(self) -> list[LogLine]:
        """The periodic stats lines so far (not the final one)."""
        return [line for line in self.lines() if line.get("event") == "stats" and not line.get("final")]

    def wait_until(self, check: Callable[[], bool], what: str, timeout: float) -> None:
        """Poll ``check``; fail if the agent dies or the bound (there only so a hang cannot stall CI) runs out."""

        def done() -> bool:
            if check():
                return True
            assert self.alive(), f"the agent exited ({self.proc.returncode}) while waiting for {what}: {self.tail()}"
            return False

        wait_until(done, what, timeout=timeout, detail=self.tail, interval=0.1)

    def wait_ready(self) -> None:
        self.wait_until(
            lambda: any(line.get("event") == "sensor_ready" for line in self.lines()), "sensor_ready", READY_TIMEOUT_S
        )

    def stop(self) -> int:
        """SIGTERM (flush and exit 0), SIGKILL if it hangs; returns the exit code. Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def final_stats(self) -> LogLine:
        final = [line for line in self.lines() if line.get("event") == "stats" and line.get("final")]
        assert len(final) == 1, self.tail()
        return final[0]

    def tail(self, n: int = 8) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def read_lines(path: Path) -> list[str]:
    """The complete lines of a file that may still be written (or not exist yet)."""
    if not path.exists():
        return []
    return [text for text in path.read_text(errors="replace").splitlines(keepends=True) if text.endswith("\n")]
