#!/usr/bin/env python3
"""Replay chainwatch's attack and benign scenarios against an agent on this machine, and keep what it wrote.

    sudo python3 vagrant/scenarios/run.py --out DIR [--chainwatch CMD] [--config FILE] [--alerts FILE]
                                          [--service-alerts FILE] [NAME...]

The scenarios are tests/helpers/scenarios.py, the library the live tests use: one set. Each runs in a private
two-namespace network lab (documentation addresses, no default route). The agent is started as users start
it (``chainwatch record``), then DIR holds alerts.jsonl, recording.cw, agent.log and verdicts.json. Exit 0
when every verdict holds. In a Vagrant box the default ``--chainwatch /usr/bin/chainwatch`` is the
installed package; ``--config /etc/chainwatch/chainwatch.toml --alerts /var/log/chainwatch/alerts.jsonl``
runs it with the installed config and reads the alerts where that config writes them.
``--service-alerts /var/log/chainwatch/alerts.jsonl`` (with the default --alerts) also judges every scenario
from what the running systemd service wrote meanwhile ("service:<name>" verdicts).

The agent works in a private directory (its files refuse directories other users can write, such as a
Vagrant synced folder); DIR gets copies at the end.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the tests package: tests/helpers/scenarios.py
try:
    import pyroute2  # noqa: F401  (the lab needs it; the installed package carries a copy)
except ImportError:
    sys.path.append("/usr/lib/chainwatch/python")

from tests.helpers.scenarios import SCENARIOS, Agent, alerts_after, play  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help=f"scenarios (default: all): {', '.join(SCENARIOS)}")
    p.add_argument("--out", required=True, type=Path, help="directory for alerts, recording, log and verdicts")
    p.add_argument("--chainwatch", default="/usr/bin/chainwatch", help="command that starts chainwatch")
    p.add_argument("--config", help="config file for the agent")
    p.add_argument(
        "--alerts", type=Path, help="read alerts where the config writes them (default: --alerts DIR/alerts.jsonl)"
    )
    p.add_argument("--service-alerts", type=Path, help="also judge what the running service writes here")
    args = p.parse_args()
    names = args.names or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenarios {unknown}; they are {list(SCENARIOS)}")
    if args.alerts is not None and args.alerts.exists():
        args.alerts.unlink()  # judge only this run's alerts
    service = alerts_after(args.service_alerts) if args.service_alerts else None
    also = {"service": service} if service else None
    private = Path(tempfile.mkdtemp(prefix="chainwatch-scenarios-"))
    try:
        agent = Agent(shlex.split(args.chainwatch), private, config=args.config, alerts=args.alerts)
        verdicts = play(agent, names, private / "work", also)
        args.out.mkdir(parents=True, exist_ok=True)
        for name in ("recording.cw", "agent.log"):
            if (private / name).exists():
                shutil.copy(private / name, args.out / name)
        if agent.alerts.exists():
            shutil.copy(agent.alerts, args.out / "alerts.jsonl")
        if service is not None:
            (args.out / "service-alerts.jsonl").write_text("".join(json.dumps(a) + "\n" for a in service()))
    finally:
        shutil.rmtree(private, ignore_errors=True)
    (args.out / "verdicts.json").write_text(json.dumps([asdict(v) for v in verdicts], indent=2) + "\n")
    for v in verdicts:
        print(f"{'PASS' if v.ok else 'FAIL'} {v.name}: {v.detail}")
    return 0 if all(v.ok for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
