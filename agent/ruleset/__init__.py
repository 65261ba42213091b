"""The ruleset layer: ``rules/`` on disk as typed, validated data (rules, lists, contexts, the detector catalog).

It imports nothing above the ABI (agent.abi, agent.events, agent.capture, agent.resources); context tagging,
detection and alerts build on it. Load with :func:`agent.ruleset.load.load_rules`.
"""
