"""The response stage's decisions (agent.response): gating, what is protected, what is planned, config errors.
The live tests (tests/live/test_response.py) do the same against real processes, sockets and files."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import pytest

from agent.alerts import iso
from agent.config import ConfigError, ResponseConfig, parse_config
from agent.events import Exec, Fork
from agent.lineage.identity import NS_PER_TICK, ProcessKey, entity_id
from agent.lineage.table import ProcessTable
from agent.quarantine import QuarantineError, QuarantineStore
from agent.response import (
    PF_KTHREAD,
    ControlServer,
    Live,
    Responder,
    ResponseError,
    block_targets,
    check_rule_ids,
    control_request,
    kill_plan,
    parse_live,
    quarantine_refusal,
    selected,
    split_endpoint,
)

HOST = "unit-host"
ON = ResponseConfig(enabled=True, min_severity="high")


def alert(severity: int = 73, rule: str = "r-1", **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "@timestamp": iso(time.time_ns()),
        "event": {"severity": severity, "id": "a-1"},
        "rule": {"id": rule},
        "host": {"id": HOST},
        "chainwatch": {"incident": {"id": "inc-1"}, "artifacts": {}, "response": []},
    }
    doc.update(extra)
    return doc


# ------------------------------------------------------------------------------------------- gating


def test_off_by_default() -> None:
    """Without a config, nothing is selected, and the responder passes alerts through untouched."""
    assert selected(ResponseConfig(), alert(99)) is None
    doc = alert(99, destination={"ip": "198.51.100.2", "port": 4444})
    assert Responder(ResponseConfig(), ProcessTable())(doc)["chainwatch"]["response"] == []


@pytest.mark.parametrize(
    ("config", "severity", "rule", "hit"),
    [
        (ON, 73, "r-1", True),
        (ON, 99, "r-1", True),
        (ON, 47, "r-1", False),
        (ResponseConfig(enabled=True, rules=["r-2"]), 21, "r-2", True),
        (ResponseConfig(enabled=True, rules=["r-2"]), 99, "r-1", False),
        (ResponseConfig(enabled=True, min_severity="critical", rules=["r-2"]), 47, "r-2", True),
        (ResponseConfig(enabled=False, min_severity="low"), 99, "r-1", False),
    ],
)
def test_gating_by_severity_and_rule(config: ResponseConfig, severity: int, rule: str, hit: bool) -> None:
    """An alert is selected when its severity reaches min_severity or its rule id is listed; never when off."""
    assert (selected(config, alert(severity, rule)) is not None) is hit


# ------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("enabled = true", "neither response.min_severity nor response.rules"),
        ('min_severity = "severe"', "min_severity must be one of low, medium, high, critical"),
        ('actions = ["kill", "nuke"]', "response.actions must list"),
        ('actions = ["kill", "kill"]', "response.actions must list"),
        ('enabled = true\nmin_severity = "high"\nactions = []', "at least one when enabled"),
        ("block_ttl_s = 0", "block_ttl_s must be between 1"),
        ("block_ttl_s = nan", "block_ttl_s must be between 1"),
        ('protected_networks = ["10.0.0.0/33"]', "not an address or network"),
        ('quarantine_prefixes = ["/"]', 'must not contain "/"'),
        ('quarantine_prefixes = ["etc/cron.d/"]', "absolute, normalised path"),
        ('protected_paths = ["/etc/../shadow"]', "absolute, normalised path"),
        ('quarantine_dir = "/etc/cron.d/q"', "must not overlap"),
        ('quarantine_dir = "relative"', "quarantine_dir must be an absolute path"),
        ('control_socket = "/"', "control_socket must be an absolute path"),
        ('rules = [""]', "list of non-empty strings"),
        ('rules = "r-1"', "rules must be list"),
        ("kill = true", "unknown key response.'kill'"),
    ],
)
def test_bad_response_config_is_an_error(text: str, match: str) -> None:
    """Each mistake is a ConfigError that names the file and the key."""
    with pytest.raises(ConfigError, match="x.toml") as exc:
        parse_config(f"[response]\n{text}\n", "x.toml")
    assert match in str(exc.value)


def test_good_response_config() -> None:
    config = parse_config('[response]\nenabled = true\nrules = ["r-1"]\nactions = ["block"]\nblock_ttl_s = 60\n')
    assert config.response == dataclasses.replace(
        ResponseConfig(), enabled=True, rules=["r-1"], actions=["block"], block_ttl_s=60.0
    )


def test_unknown_rule_id_is_a_startup_error() -> None:
    check_rule_ids(ResponseConfig(enabled=True, rules=["a"]), ["a", "b"])
    with pytest.raises(ResponseError, match="'typo'"):
        check_rule_ids(ResponseConfig(enabled=True, rules=["a", "typo"]), ["a", "b"])


# -------------------------------------------------------------------------------------------- block


def test_block_targets_protected_networks_and_ports() -> None:
    """The destination and every artifact destination, deduplicated; protected networks refused."""
    doc = alert(destination={"ip": "198.51.100.2", "port": 4444})
    doc["chainwatch"]["artifacts"] = {
        "destinations": [
            "198.51.100.2:4444",
            "2001:db8::2:443",
            "127.0.0.1:80",
            "169.254.169.254:80",
            "[::ffff:203.0.113.9]:53",
        ]
    }
    got = block_targets(ON, doc)
    assert [(a, p) for a, p, why in got if why is None] == [("198.51.100.2", 0), ("2001:db8::2", 0), ("203.0.113.9", 0)]
    refused = {a: why for a, _, why in got if why}
    assert set(refused) == {"127.0.0.1", "169.254.169.254"}
    assert "protected_networks" in refused["169.254.169.254"]
    with_port = block_targets(dataclasses.replace(ON, block_port=True), doc)
    assert ("198.51.100.2", 4444, None) in with_port and ("2001:db8::2", 443, None) in with_port


def test_block_targets_ingress_blocks_the_source_never_the_local_address() -> None:
    """A bind shell: destination is our own listening address; only the remote source is a target."""
    doc = alert(
        destination={"ip": "198.51.100.1", "port": 4444},
        source={"ip": "198.51.100.2", "port": 51000},
        network={"direction": "ingress"},
    )
    doc["chainwatch"]["artifacts"] = {"destinations": ["198.51.100.1:4444"]}
    assert block_targets(ON, doc) == [("198.51.100.2", 0, None)]


def test_split_endpoint() -> None:
    assert split_endpoint("1.2.3.4:80") == ("1.2.3.4", 80)
    assert split_endpoint("2001:db8::2:4444") == ("2001:db8::2", 4444)


class FakeBlocker:
    def __init__(self) -> None:
        self.blocked: dict[tuple[str, int], float] = {}
        self.closed = False

    def block(self, address: str, port: int, ttl_s: float) -> bool:
        new = (address, port) not in self.blocked
        self.blocked[(address, port)] = ttl_s
        return new

    def unblock(self, address: str) -> int:
        gone = [k for k in self.blocked if k[0] == address]
        for k in gone:
            del self.blocked[k]
        return len(gone)

    def entries(self) -> list[Any]:
        return []

    def expire(self) -> list[Any]:
        return []

    def close(self) -> None:
        self.closed = True


def test_block_records_done_once_per_incident_and_dry_run_touches_nothing() -> None:
    config = dataclasses.replace(ON, actions=["block"], block_ttl_s=30.0)
    blocker = FakeBlocker()
    responder = Responder(config, ProcessTable(), blocker=blocker)
    first = responder(alert(destination={"ip": "198.51.100.2", "port": 4444}))
    assert first["chainwatch"]["response"] == [
        {
            "action": "block",
            "target": "198.51.100.2",
            "result": "done",
            "reason": "connects and UDP sends to 198.51.100.2 refused in the kernel for 30 s; "
            "`chainwatch response unblock 198.51.100.2` lifts it",
        }
    ]
    assert blocker.blocked == {("198.51.100.2", 0): 30.0}
    again = responder(alert(destination={"ip": "198.51.100.2", "port": 4444}))
    assert again["chainwatch"]["response"] == []  # an update line repeats nothing already done

    dry = FakeBlocker()
    doc = Responder(dataclasses.replace(config, dry_run=True), ProcessTable(), blocker=dry)(
        alert(destination={"ip": "198.51.100.2", "port": 4444})
    )
    assert [e["result"] for e in doc["chainwatch"]["response"]] == ["dry_run"]
    assert dry.blocked == {}


def test_block_without_program_fails_loudly() -> None:
    doc = Responder(dataclasses.replace(ON, actions=["block"]), ProcessTable())(
        alert(destination={"ip": "198.51.100.2", "port": 4444})
    )
    assert doc["chainwatch"]["response"][0]["result"] == "failed"


# --------------------------------------------------------------------------------------- quarantine


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/etc/cron.d/x", True),
        ("/etc/cron.d/sub/x", True),
        ("/etc/ld.so.preload", True),
        ("/etc/cron.dx", False),
        ("/etc/crontab", False),
        ("/etc/passwd", False),
        ("/root/.bashrc", False),
        ("/etc/cron.d/../shadow", False),
        ("etc/cron.d/x", False),
        ("/etc/ld.so.preload.d/x", False),
    ],
)
def test_quarantine_only_under_allowed_prefixes(path: str, ok: bool) -> None:
    assert (quarantine_refusal(ON, path) is None) is ok


def test_protected_path_wins_over_prefix() -> None:
    config = dataclasses.replace(ON, protected_paths=["/etc/cron.d/keep"])
    assert "protected" in (quarantine_refusal(config, "/etc/cron.d/keep") or "")
    assert quarantine_refusal(config, "/etc/cron.d/other") is None


def quarantine_responder(tmp_path: Path, **changes: Any) -> tuple[Responder, Path]:
    watched = tmp_path / "cron.d"
    watched.mkdir(parents=True)
    config = dataclasses.replace(
        ON, actions=["quarantine"], quarantine_prefixes=[f"{watched}/"], quarantine_dir=str(tmp_path / "q"), **changes
    )
    store = QuarantineStore(config.quarantine_dir)
    store.prepare()
    return Responder(config, ProcessTable(), store=store), watched


def test_quarantine_and_restore_round_trip(tmp_path: Path) -> None:
    """The file moves to a 0700 directory with its metadata; restore puts it back with mode and times."""
    responder, watched = quarantine_responder(tmp_path)
    target = watched / "evil"
    target.write_text("* * * * * root /bin/true\n")
    os.chmod(target, 0o640)
    os.utime(target, ns=(1_700_000_000_000_000_000, 1_700_000_001_000_000_000))
    before = os.stat(target)
    doc = responder(alert(file={"path": str(target)}))
    (entry,) = doc["chainwatch"]["response"]
    assert entry["result"] == "done", entry
    assert not target.exists()
    store = responder.store
    assert store is not None
    assert oct(os.stat(store.dir).st_mode & 0o777) == "0o700"
    (meta,) = store.entries()
    assert meta.original_path == str(target) and meta.incident_id == "inc-1" and meta.mode == 0o640
    assert meta.id in entry["reason"]
    with pytest.raises(QuarantineError, match="exists again"):
        target.write_text("new")
        store.restore(meta.id)
    target.unlink()
    store.restore(meta.id)
    after = os.stat(target)
    assert target.read_text() == "* * * * * root /bin/true\n"
    assert (after.st_mode, after.st_uid, after.st_mtime_ns) == (before.st_mode, before.st_uid, before.st_mtime_ns)
    assert store.entries() == []


def test_quarantine_refuses_symlinks_old_files_and_dry_run_keeps_the_file(tmp_path: Path) -> None:
    responder, watched = quarantine_responder(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("not yours")
    (watched / "link").symlink_to(secret)
    old = watched / "old"
    old.write_text("older than the incident")
    later = alert(file={"path": str(watched / "link")})
    later["@timestamp"] = iso(time.time_ns() + 60 * 10**9)  # the incident began after the file last changed
    later["chainwatch"]["artifacts"] = {"files": [str(old)]}
    entries = responder(later)["chainwatch"]["response"]
    assert [e["result"] for e in entries] == ["failed", "failed"], entries
    assert "following links" in entries[0]["reason"] and "has not changed since" in entries[1]["reason"]
    assert secret.read_text() == "not yours" and old.exists()

    dry, watched2 = quarantine_responder(tmp_path / "dry", dry_run=True)
    fresh = watched2 / "fresh"
    fresh.write_text("x")
    (entry,) = dry(alert(file={"path": str(fresh)}))["chainwatch"]["response"]
    assert entry["result"] == "dry_run" and fresh.exists()
    assert dry.store is not None and dry.store.entries() == []


# --------------------------------------------------------------------------------------------- kill

T = NS_PER_TICK


def spawn(table: ProcessTable, pid: int, ppid: int, start: int, parent_start: int, exe: str) -> ProcessKey:
    table.apply(
        Fork(
            ktime=start * T,
            pid=pid,
            tid=pid,
            ppid=ppid,
            start_time=start * T,
            uid=0,
            cgroup_id=0,
            comm="x",
            parent_start_time=parent_start * T,
        )
    )
    table.apply(
        Exec(
            ktime=start * T + 1,
            pid=pid,
            tid=pid,
            ppid=ppid,
            start_time=start * T,
            uid=0,
            cgroup_id=0,
            comm=os.path.basename(exe),
            filename=exe,
        )
    )
    return ProcessKey(pid, start)


def lab() -> tuple[ProcessTable, dict[int, Live], dict[int, str]]:
    """systemd(1) -> sshd(100) -> bash(200) -> {bash -i(300) -> sleep(400), sibling(301)};
    daemon(500), forked by bash -i and re-parented to 1; agent(900) under sshd."""
    table = ProcessTable()
    procs = [
        (1, 0, 1, 0, "/lib/systemd/systemd"),
        (100, 1, 10, 1, "/usr/sbin/sshd"),
        (200, 100, 20, 10, "/bin/bash"),
        (300, 200, 30, 20, "/bin/bash"),
        (400, 300, 40, 30, "/bin/sleep"),
        (301, 200, 31, 20, "/bin/sleep"),
        (500, 300, 50, 30, "/bin/sh"),
        (900, 100, 90, 10, "/usr/bin/python3"),
    ]
    live, exes = {}, {}
    for pid, ppid, start, pstart, exe in procs:
        spawn(table, pid, ppid, start, pstart, exe)
        live[pid] = Live(pid, 1 if pid == 500 else ppid, start, 0, os.path.basename(exe))
        exes[pid] = exe
    live[2] = Live(2, 0, 1, PF_KTHREAD, "kthreadd")
    return table, live, exes


def plan(
    incident: list[ProcessKey], table: ProcessTable, live: dict[int, Live], exes: dict[int, str], **kw: Any
) -> tuple[set[int], dict[int, str]]:
    result = kill_plan(
        incident,
        table,
        live,
        agent_pid=kw.pop("agent_pid", 900),
        protected_executables=kw.pop("protected", ResponseConfig().protected_executables),
        exe=lambda pid: exes.get(pid, ""),
        **kw,
    )
    return {p.pid for p in result.targets}, {p.pid: why for p, why in result.refused}


def test_kill_plan_is_the_incident_tree_and_nothing_else() -> None:
    """The reverse shell, its child and its re-parented daemon; not its parent, sibling, sshd or the agent."""
    table, live, exes = lab()
    targets, refused = plan([ProcessKey(300, 30)], table, live, exes)
    assert targets == {300, 400, 500}
    assert refused == {}


def test_kill_plan_skips_a_reused_pid() -> None:
    """The sensor's bash -i started at tick 30; a process now holding pid 300 started later is someone else."""
    table, live, exes = lab()
    live[300] = Live(300, 200, 77, 0, "bash")
    targets, _ = plan([ProcessKey(300, 30)], table, live, exes)
    assert 300 not in targets


def test_kill_plan_never_the_agent_its_ancestors_pid1_kernel_threads_or_protected() -> None:
    table, live, exes = lab()
    targets, refused = plan([ProcessKey(1, 1), ProcessKey(2, 1), ProcessKey(100, 10)], table, live, exes)
    assert targets == set()
    assert "pid 1 is never killed" in refused[1] and "pid 2" in refused[2]
    assert "agent" in refused[100]  # sshd is the agent's ancestor (and a protected executable)

    exes[300] = "/usr/sbin/cron"
    targets, refused = plan([ProcessKey(300, 30)], table, live, exes)
    assert targets == set() and "protected_executables" in refused[300]  # and nothing below it


def test_kill_plan_kernel_thread_flag() -> None:
    table, live, exes = lab()
    live[400] = Live(400, 300, 40, PF_KTHREAD, "kworker")
    targets, refused = plan([ProcessKey(300, 30)], table, live, exes)
    assert 400 not in targets and "kernel thread" in refused[400]


def test_kill_plan_spares_context_root_ancestors() -> None:
    """An incident that names bash(200)'s ancestor chain: with 300 the context root, 200 and 100 are spared."""
    table, live, exes = lab()
    targets, refused = plan(
        [ProcessKey(200, 20), ProcessKey(300, 30)], table, live, exes, agent_pid=0, context_root=ProcessKey(300, 30)
    )
    assert 200 not in targets and "context root" in refused[200]
    assert {300, 400, 500} <= targets and 301 not in targets


def test_responder_dry_run_kill_plans_but_signals_nothing(tmp_path: Path) -> None:
    """Against a fake /proc: dry-run lists the tree with result dry_run (nothing could be signalled there)."""
    table, live, exes = lab()
    proc = tmp_path / "proc"
    for pid, p in live.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "stat").write_text(
            f"{pid} ({p.comm}) S {p.ppid} 1 1 0 -1 {p.flags} " + "0 " * 12 + f"{p.start_ticks} 0 0\n"
        )
        os.symlink(exes.get(pid, "/none"), proc / str(pid) / "exe")
    assert parse_live((proc / "300" / "stat").read_bytes()) == live[300]
    config = dataclasses.replace(ON, actions=["kill"], dry_run=True)
    responder = Responder(config, table, agent_pid=900, proc_root=str(proc))
    doc = alert(process={"pid": 300, "entity_id": entity_id(HOST, ProcessKey(300, 30))})
    entries = responder(doc)["chainwatch"]["response"]
    assert sorted(e["target"].split()[1] for e in entries) == ["300", "400", "500"]
    assert {e["result"] for e in entries} == {"dry_run"}


# ---------------------------------------------------------------------------------------- control


def test_control_socket_lists_and_unblocks(tmp_path: Path) -> None:
    blocker = FakeBlocker()
    blocker.block("203.0.113.7", 0, 30)
    responder = Responder(dataclasses.replace(ON, actions=["block"]), ProcessTable(), blocker=blocker)
    path = str(tmp_path / "run" / "control.sock")
    responder.control = ControlServer(path, responder)
    try:
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        assert control_request(path, {"cmd": "list"})["ok"] is True
        assert control_request(path, {"cmd": "unblock", "address": "nonsense"})["ok"] is False
        assert control_request(path, {"cmd": "unblock", "address": "203.0.113.7"}) == {"ok": True, "removed": 1}
        assert blocker.blocked == {}
        with pytest.raises(ResponseError, match="another chainwatch agent answers"):
            ControlServer(path, responder)
    finally:
        responder.close()
    assert not os.path.exists(path) and blocker.closed
    with pytest.raises(ResponseError, match="no chainwatch agent answers"):
        control_request(path, {"cmd": "list"})
