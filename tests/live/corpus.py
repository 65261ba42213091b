"""The public replay corpus: each live attack and benign case of the stdio graph can record its own event
stream (the test's process tree only) into tests/corpus/NAME.cwrec, with the verdict it must replay to.
tests/replay/test_corpus.py replays every file without root or bcc and checks the same verdict.

Recording is on when CHAINWATCH_RECORD_CORPUS=1 (the files are committed; CI does not rewrite them):
    CHAINWATCH_RECORD_CORPUS=1 .venv/bin/python -m pytest -q tests/live/test_stdio_graph.py
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agent.events import Event, Exec
from agent.lineage.identity import process_key
from agent.recording import RecordingWriter

CORPUS_DIR = Path(__file__).resolve().parents[1] / "corpus"


def tree_events(sensorlab: Any, since: int, token: str) -> list[Event]:
    """The events since ``since`` of the process tree whose root's argv carries ``token``."""
    events = sensorlab.select(lambda e: True, since)
    roots = {process_key(e.pid, e.start_time) for e in events if isinstance(e, Exec) and token in " ".join(e.args)}

    def in_tree(table: Any) -> set[Any]:
        keys = set(roots)
        for e in events:
            key = process_key(e.pid, e.start_time)
            if key in keys:
                continue
            if any(p.key in roots for p in table.ancestry(key)):
                keys.add(key)
        return keys

    keys = sensorlab.with_table(in_tree)
    return [e for e in events if process_key(e.pid, e.start_time) in keys]


def record_case(sensorlab: Any, name: str, since: int, token: str, expect: dict[str, Any]) -> list[Event]:
    """Select the case's events; write them to the corpus when recording is on. Returns the events."""
    events = tree_events(sensorlab, since, token)
    assert events, f"no events of the {name} case's process tree"
    if os.environ.get("CHAINWATCH_RECORD_CORPUS") == "1":
        CORPUS_DIR.mkdir(exist_ok=True)
        with open(CORPUS_DIR / f"{name}.cwrec", "wb") as fh:
            writer = RecordingWriter(fh, {"hostname": "corpus", "host_id": "corpus", "case": name, "expect": expect})
            for event in events:
                writer.write(event)
            writer.flush()
    return events
