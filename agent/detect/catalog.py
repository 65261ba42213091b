"""The detectors chainwatch has. A rule names one of these in its ``detector`` field."""

from __future__ import annotations

from typing import Final

DETECTORS: Final = frozenset({
    "shell_network_connection",   # Sigma 83dcd9f6: a shell binary connects to a non-local address
    "interpreter_reverse_shell",  # Elastic: suspicious interpreter exec, then a non-local connect within 1 s
    "stdio_to_socket",            # a socket with a non-local peer dup'ed onto stdin/stdout/stderr
    "tunnel_tool",                # chisel, ngrok, ligolo-ng, frp, ... by executable and argv
    "irc_connection",             # a connection to an IRC port
})
