"""A signal: one detector's finding about one process, before correlation turns it into an alert."""

from __future__ import annotations

from dataclasses import dataclass

from agent.context import Context
from agent.events import Event
from agent.lineage.identity import ProcessKey
from agent.ruleset.catalog import FAMILIES
from agent.ruleset.rules import Rule


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
    context: Context | None = None  # the install or CI context of the process
    # An accepted connection (a bind shell): the remote peer is the source; daddr/dport are then the local
    # listening address and port (ECS direction, shared/design/contracts.md).
    saddr: str = ""
    sport: int = 0
    direction: str = ""  # "egress" | "ingress" | "" (no network artefact)

    @property
    def role(self) -> str:
        """What the signal means for correlation: c2, persistence, evasion, download or notice (catalog.FAMILIES),
        or for a Sigma rule the family its tags give (agent.sigma.load.family_of), which may be "other"."""
        return self.rule.family or FAMILIES[self.rule.detector]

    @property
    def detector(self) -> str:
        """The detector (signal family) name."""
        return self.rule.detector
