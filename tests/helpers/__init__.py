"""Helpers shared by the test tiers, imported as ``from tests.helpers.<module> import ...``:

polling    wait_until: poll a condition with a bound (the one poll loop)
events     EventStream: hand-built event streams for unit and replay tests
alerts     incidents, markers, summaries and process-tree selection of alert documents
live       what live tests need (root, bcc, tools) and skip_or_fail
addresses  the documentation addresses every test uses (the lab's, and hand-built streams')
netlab     the victim/attacker network-namespace lab, and its ports
proof      benign live tests prove the sensor saw their workload before asserting silence
scenarios  attack and benign scenarios against an agent subprocess (also vagrant/scenarios/run.py)

This file imports nothing: netlab and scenarios are also loaded by scripts outside the test run (bench/latency.py,
vagrant/scenarios/run.py in a box without pytest or the agent's dependencies).
"""
