"""The shared test helpers (tests/helpers) and the test configuration they rely on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.events import Exec, Fork
from tests.helpers.events import EventStream
from tests.helpers.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_wait_until_returns_the_first_true_value() -> None:
    """wait_until polls until check gives a true value and returns that value."""
    values = iter([0, "", None, "done", "later"])
    assert wait_until(lambda: next(values), timeout=5, interval=0) == "done"


def test_wait_until_gives_up_with_the_last_value_or_fails_naming_what() -> None:
    """Out of time: the last (false) value, or with ``what`` an AssertionError naming it and the detail."""
    assert wait_until(lambda: [], timeout=0.05, interval=0.01) == []
    with pytest.raises(AssertionError, match=r"gave up waiting for the thing: why not"):
        wait_until(lambda: False, "the thing", timeout=0.05, interval=0.01, detail=lambda: "why not")


def test_event_stream_keeps_each_process_header() -> None:
    """spawn gives a Fork with the parent's comm and an Exec with the program's, both with the child's start."""
    s = EventStream(t0=10**9, cgroup_id=3)
    s.spawn(10, None, "/usr/bin/bash", ("bash",), t=0)
    s.spawn(11, 10, "/usr/bin/curl", ("curl", "x"), t=1)
    fork, exe = s.events[1:]
    assert isinstance(fork, Fork) and isinstance(exe, Exec)
    assert (fork.comm, fork.ppid, fork.parent_start_time, fork.cgroup_id) == ("bash", 10, s.start[10], 3)
    assert (exe.comm, exe.start_time, exe.ktime) == ("curl", s.start[11], 2 * 10**9 + 10**6)


def test_every_live_test_is_marked_live() -> None:
    """`-m "not live"` selects nothing under tests/live: its conftest marks every test there."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", "-m", "not live", "tests/live"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 5 and re.search(r"no tests collected \(\d+ deselected\)", proc.stdout), (
        proc.stdout[-2000:] + proc.stderr[-2000:]
    )


def test_an_undeclared_marker_is_an_error(tmp_path: Path) -> None:
    """--strict-markers: a marker pyproject.toml does not declare fails collection instead of doing nothing."""
    (tmp_path / "test_marked.py").write_text("import pytest\n\n\n@pytest.mark.lve\ndef test_x():\n    pass\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "--collect-only",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "'lve' not found in `markers` configuration option" in proc.stdout + proc.stderr, (
        proc.stdout[-2000:] + proc.stderr[-2000:]
    )
