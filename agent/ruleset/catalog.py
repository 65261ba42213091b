"""The detectors chainwatch has, each declared once: its name, correlation family and alert categories.

A rule names a detector in its ``detector`` field (validated against :data:`DETECTORS`); the detector code
raises signals through the constants below (``catalog.TUNNEL_TOOL.name``), the correlator reads the family
(:data:`FAMILIES`) and the alert document the ECS categories (:data:`CATEGORIES`), all derived from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Detector:
    """One detector: what its signals mean for correlation and which ECS ``event.category`` they are."""

    name: str
    family: str
    """What the signal means for correlation (the Datadog seed): "c2" (a command-and-control channel),
    "persistence" (the amplifier), "evasion", "download" (a download run, medium in a context) or "notice"
    (never amplified: a shell that connects but reads no commands from the connection is a port probe
    until proven otherwise). Empty for Sigma detectors: a Sigma rule's family comes from its tags."""
    categories: tuple[str, ...]
    """ECS ``event.category`` values of its alerts."""


_PN: Final = ("process", "network")

SHELL_NETWORK_CONNECTION: Final = Detector("shell_network_connection", "notice", _PN)
"""Sigma 83dcd9f6: a shell binary connects to a non-local address."""
INTERPRETER_REVERSE_SHELL: Final = Detector("interpreter_reverse_shell", "c2", _PN)
"""Elastic: suspicious interpreter exec, then a non-local connect within 1 s."""
STDIO_TO_SOCKET: Final = Detector("stdio_to_socket", "c2", _PN)
"""A socket with a non-local peer dup'ed onto stdin/stdout/stderr."""
TUNNEL_TOOL: Final = Detector("tunnel_tool", "c2", _PN)
"""chisel, ngrok, ligolo-ng, frp, ... by executable and argv."""
IRC_CONNECTION: Final = Detector("irc_connection", "c2", ("network",))
"""A connection to an IRC port."""
PERSISTENCE_WRITE: Final = Detector("persistence_write", "persistence", ("file",))
"""A write, rename or link into a persistence location, or a module load."""
RUNNER_TRACKING_TAMPER: Final = Detector("runner_tracking_tamper", "evasion", ("process",))
"""A GitHub Actions step changed RUNNER_TRACKING_ID to escape job cleanup."""
REVERSE_SHELL: Final = Detector("reverse_shell", "c2", _PN)
"""The stdio graph: a shell relayed to a remote peer, or a command loop."""
BIND_SHELL: Final = Detector("bind_shell", "c2", _PN)
"""An accepted remote connection given to a shell."""
DOWNLOAD_EXECUTE: Final = Detector("download_execute", "download", _PN)
"""A shell reads its commands from a network client's download."""
C2_BEACON: Final = Detector("c2_beacon", "c2", _PN)
"""The same loop runs downloaded commands from one destination again."""
FILELESS_EXEC: Final = Detector("fileless_exec", "evasion", ("process",))
"""An exec of a memfd or a deleted file."""

NATIVE: Final = (
    SHELL_NETWORK_CONNECTION,
    INTERPRETER_REVERSE_SHELL,
    STDIO_TO_SOCKET,
    TUNNEL_TOOL,
    IRC_CONNECTION,
    PERSISTENCE_WRITE,
    RUNNER_TRACKING_TAMPER,
    REVERSE_SHELL,
    BIND_SHELL,
    DOWNLOAD_EXECUTE,
    C2_BEACON,
    FILELESS_EXEC,
)

# Loaded Sigma rules (agent/sigma) raise signals under one detector per logsource category; their family
# comes from each rule's tags (Rule.family), not from FAMILIES. Native rules cannot name these.
SIGMA: Final = {
    "process_creation": Detector("sigma_process_creation", "", ("process",)),
    "network_connection": Detector("sigma_network_connection", "", _PN),
    "file_event": Detector("sigma_file_event", "", ("file",)),
}

DETECTORS: Final = frozenset(d.name for d in NATIVE)
"""The names a native rule's ``detector`` may take."""
FAMILIES: Final = {d.name: d.family for d in NATIVE}
SIGMA_DETECTORS: Final = {category: d.name for category, d in SIGMA.items()}
CATEGORIES: Final = {d.name: d.categories for d in (*NATIVE, *SIGMA.values())}
