"""The addresses tests use, all from the documentation ranges (RFC 5737, RFC 3849): the netns lab's own, and the
victim and attacker of hand-built event streams, which are the same two. Nothing else appears in a test."""

VICTIM_IP4 = "198.51.100.1"
ATTACKER_IP4 = "198.51.100.2"
VICTIM_IP6 = "2001:db8::1"
ATTACKER_IP6 = "2001:db8::2"
LAB_NET4 = "198.51.100.0/24"
LAB_NET6 = "2001:db8::/64"
# Nothing in the lab routes here: a connect to it must fail.
OUTSIDE_IP4 = "203.0.113.9"
# Where NetLab.add_attacker_addresses takes more attacker addresses from: not the lab's own subnet, so other
# sessions' labs (which all use LAB_NET4) are never affected by what a test does to these.
EXTRA_NET4 = "203.0.113.0/24"
EXTRA_NET6 = "2001:db8:c0de::/64"
