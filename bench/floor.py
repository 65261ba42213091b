#!/usr/bin/env python3
"""The floor sensor: the tracepoints chainwatch attaches, each with an empty BPF program.

usage: floor.py PROBE...  where PROBE is a name as chainwatch's sensor_ready line lists it
("sched:sched_process_exec", or "raw:sched_process_fork" for a raw tracepoint). Logs one JSON line
{"event": "floor_ready"} on stderr once everything is attached, then waits for SIGTERM or SIGINT.
Run it with the venv's Python (bcc comes from the system site-packages).
"""

from __future__ import annotations

import json
import signal
import sys

RAW_PREFIX = "raw:"


def empty_program(probes: list[str]) -> str:
    """One empty program per probe, through the same bcc macros chainwatch uses, so attach costs match."""
    lines = []
    for probe in probes:
        if probe.startswith(RAW_PREFIX):
            lines.append(f"RAW_TRACEPOINT_PROBE({probe[len(RAW_PREFIX) :]}) {{ return 0; }}")
        else:
            category, _, event = probe.partition(":")
            lines.append(f"TRACEPOINT_PROBE({category}, {event}) {{ return 0; }}")
    return "\n".join(lines) + "\n"


def main(probes: list[str]) -> int:
    if not probes:
        sys.exit("usage: floor.py PROBE...")
    import bcc  # type: ignore[import-untyped]  # the distro package ships no stubs

    bpf = bcc.BPF(text=empty_program(probes).encode())
    # Blocked only now: LLVM, inside the compile, resets the signal mask (seen here with SigBlk).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    attached = len(bpf.tracepoint_fds) + len(bpf.raw_tracepoint_fds)
    print(json.dumps({"event": "floor_ready", "probes": attached}), file=sys.stderr, flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    bpf.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
