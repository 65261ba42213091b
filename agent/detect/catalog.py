"""The detectors chainwatch has. A rule names one of these in its ``detector`` field."""

from __future__ import annotations

from typing import Final

DETECTORS: Final = frozenset({
    "shell_network_connection",   # Sigma 83dcd9f6: a shell binary connects to a non-local address
    "interpreter_reverse_shell",  # Elastic: suspicious interpreter exec, then a non-local connect within 1 s
    "stdio_to_socket",            # a socket with a non-local peer dup'ed onto stdin/stdout/stderr
    "tunnel_tool",                # chisel, ngrok, ligolo-ng, frp, ... by executable and argv
    "irc_connection",             # a connection to an IRC port
    "persistence_write",          # a write, rename or link into a persistence location, or a module load
    "runner_tracking_tamper",     # a GitHub Actions step changed RUNNER_TRACKING_ID to escape job cleanup
})

# What each detector's signal means for correlation (the Datadog seed): a command-and-control channel,
# persistence (the amplifier), or evasion.
FAMILIES: Final = {
    "shell_network_connection": "c2", "interpreter_reverse_shell": "c2", "stdio_to_socket": "c2",
    "tunnel_tool": "c2", "irc_connection": "c2", "persistence_write": "persistence",
    "runner_tracking_tamper": "evasion",
}

# Loaded Sigma rules (agent/sigma) raise signals under one detector name per logsource category; their
# family comes from each rule's tags (Rule.family), not from FAMILIES. Native rules cannot name these.
SIGMA_DETECTORS: Final = {
    "process_creation": "sigma_process_creation",
    "network_connection": "sigma_network_connection",
    "file_event": "sigma_file_event",
}
