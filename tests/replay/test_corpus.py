"""The public replay corpus (tests/corpus, recorded by the live stdio-graph tests; see tests/live/corpus.py):
every recorded attack replays to one C2 incident carrying its signal, every benign case to no reverse-shell
or C2 alert and nothing above a notice. No root, no bcc."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.recording import read_recording

ROOT = Path(__file__).resolve().parents[2]
CORPUS = sorted((ROOT / "tests" / "corpus").glob("*.cwrec"))
C2 = {
    "reverse_shell",
    "bind_shell",
    "stdio_to_socket",
    "c2_beacon",
    "interpreter_reverse_shell",
    "tunnel_tool",
    "irc_connection",
}


def test_corpus_is_there() -> None:
    """The corpus holds attacks and benign cases (an empty corpus must not pass silently)."""
    expects = [_expect(p) for p in CORPUS]
    assert sum(1 for e in expects if "signal" in e) >= 10
    assert sum(1 for e in expects if e.get("quiet")) >= 5


def _expect(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        meta = read_recording(fh).meta
    expect = meta.get("expect")
    assert isinstance(expect, dict), f"{path.name}: no expected verdict in its meta"
    return expect


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_corpus_case_replays_to_its_verdict(path: Path, tmp_path: Path) -> None:
    """`chainwatch replay` of the recorded case gives the verdict the live test saw."""
    expect = _expect(path)
    out = tmp_path / "alerts.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "replay", str(path), "--alerts", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    alerts = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    c2 = [a for a in alerts if C2 & set(a["chainwatch"]["signals"])]
    if expect.get("quiet"):
        assert c2 == [] and all(a["event"]["severity"] <= 21 for a in alerts), [a["event"]["reason"] for a in alerts]
        return
    assert len({a["chainwatch"]["incident"]["id"] for a in c2}) == 1, [a["event"]["reason"] for a in alerts]
    hit = [a for a in c2 if expect["signal"] in a["chainwatch"]["signals"]]
    assert hit, [a["event"]["reason"] for a in alerts]
    if "port" in expect:
        assert expect["port"] in {a["destination"]["port"] for a in hit}
