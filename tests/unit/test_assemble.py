"""agent.assemble: the one pipeline the daemon, replay and the tests run, put together from its parts."""

from __future__ import annotations

from typing import Any

from agent.alerts import Host
from agent.assemble import assemble
from agent.events import Connect, Event, Exec, ModuleLoad
from agent.lineage.table import ProcessTable
from agent.ruleset.load import load_rules

RULES = load_rules()
HOST = Host("assembled", "assembled-id")


class Kernel:
    """The kernel's side of context tagging, recorded."""

    def __init__(self) -> None:
        self.names: dict[str, int] = {}
        self.writes: list[tuple[int, ...]] = []

    def set_context_executables(self, names: dict[str, int]) -> None:
        self.names = dict(names)

    def write_context(self, pid: int, start_time: int, context: int, root_pid: int, root_start: int) -> None:
        self.writes.append((pid, start_time, context, root_pid, root_start))


def hdr(pid: int, ktime: int, comm: str) -> dict[str, Any]:
    return {"ktime": ktime, "pid": pid, "tid": pid, "ppid": 1, "start_time": 5, "uid": 0, "cgroup_id": 1, "comm": comm}


def bash_connects(pipeline: Any) -> None:
    pipeline.feed(Exec(**hdr(20, 10, "bash"), filename="/usr/bin/bash", args=("bash",)))
    pipeline.feed(
        Connect(**hdr(20, 20, "bash"), fd=3, family="ipv4", transport="tcp", daddr="198.51.100.7", dport=4444, result=0)
    )


def test_alerts_go_through_respond_to_every_sink_with_the_host() -> None:
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []

    def respond(alert: dict[str, Any]) -> dict[str, Any]:
        return {**alert, "responded": True}

    pipeline = assemble(RULES, ProcessTable(), [first.append, second.append], host=HOST, respond=respond)
    bash_connects(pipeline)
    assert len(first) == 1 and first == second
    assert first[0]["responded"] is True and first[0]["host"] == {"hostname": "assembled", "id": "assembled-id"}
    assert first[0]["chainwatch"]["signals"] == ["shell_network_connection"]
    assert pipeline.detection_stats()["alerts"] == 1 and "context_roots" in pipeline.detection_stats()


def test_consumers_see_each_event_before_detection() -> None:
    order: list[str] = []
    seen: list[Event] = []

    def consumer(event: Event) -> None:
        seen.append(event)
        order.append("consumer")

    pipeline = assemble(RULES, ProcessTable(), [lambda alert: order.append("alert")], host=HOST, consumers=[consumer])
    bash_connects(pipeline)
    assert [e.type for e in seen] == ["exec", "connect"]
    assert order == ["consumer", "consumer", "alert"]


def test_the_kernel_gets_the_context_names_and_tags() -> None:
    kernel = Kernel()
    pipeline = assemble(RULES, ProcessTable(), [], host=HOST, kernel=kernel)
    assert kernel.names == RULES.lists.kernel_context_names() and kernel.names
    pipeline.feed(Exec(**hdr(30, 10, "npm"), filename="/usr/bin/npm", args=("npm", "install", "x")))
    assert kernel.writes and kernel.writes[0][0] == 30 and kernel.writes[0][2] != 0


def test_without_a_ruleset_only_the_table_and_consumers_run() -> None:
    seen: list[Event] = []
    table = ProcessTable()
    pipeline = assemble(None, table, host=HOST, consumers=[seen.append], module_loads_from_exec=True)
    pipeline.feed(Exec(**hdr(40, 10, "insmod"), filename="/usr/sbin/insmod", args=("insmod", "x.ko")))
    assert pipeline.detection is None and pipeline.tagger is None and pipeline.detection_stats() == {}
    assert len(table) == 1 and [type(e) for e in seen] == [Exec, ModuleLoad]
