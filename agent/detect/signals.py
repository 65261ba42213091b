"""A signal: one detector's finding about one process, before correlation turns it into an alert."""

from __future__ import annotations

from dataclasses import dataclass

from agent.detect.rules import Rule
from agent.events import Event
from agent.lineage.identity import ProcessKey


@dataclass(frozen=True)
class Signal:
    """What a detector saw: the rule, the process, why, and the network or file artefact if any."""

    rule: Rule
    key: ProcessKey
    event: Event
    reason: str
    daddr: str = ""
    dport: int = 0
    family: str = ""  # "ipv4" | "ipv6"
    transport: str = ""
    path: str = ""

    @property
    def detector(self) -> str:
        """The detector (signal family) name."""
        return self.rule.detector
