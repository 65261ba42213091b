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
    "reverse_shell",              # the stdio graph: a shell relayed to a remote peer, or a command loop
    "bind_shell",                 # an accepted remote connection given to a shell
    "download_execute",           # a shell reads its commands from a network client's download
    "c2_beacon",                  # the same loop runs downloaded commands from one destination again
    "fileless_exec",              # an exec of a memfd or a deleted file
})

# What each detector's signal means for correlation (the Datadog seed): a command-and-control channel,
# persistence (the amplifier), evasion, a download run (medium in a context), or a notice (never amplified:
# a shell that connects but reads no commands from the connection is a port probe until proven otherwise).
FAMILIES: Final = {
    "shell_network_connection": "notice", "reverse_shell": "c2", "bind_shell": "c2", "c2_beacon": "c2",
    "download_execute": "download", "fileless_exec": "evasion",
    "interpreter_reverse_shell": "c2", "stdio_to_socket": "c2",
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
