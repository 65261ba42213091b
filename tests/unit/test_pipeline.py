"""agent.pipeline: decode -> process table -> derived module_load signals -> taps and consumers."""

from __future__ import annotations

import ctypes

import pytest

from agent.abi import layout
from agent.events import FLAG_SEEDED, Event, Exec, Fork, ModuleLoad
from agent.lineage.table import ProcessTable
from agent.pipeline import Pipeline, module_load_from_exec


def _exec(filename: str, *args: str, flags: int = 0, pid: int = 900) -> Exec:
    return Exec(
        ktime=10_000,
        pid=pid,
        tid=pid + 1,
        ppid=1,
        start_time=9_000,
        uid=0,
        cgroup_id=3,
        comm="sh",
        flags=flags,
        filename=filename,
        args=args,
        env={"CI_JOB_ID": "5"},
    )


def _fork_record(pid: int = 700) -> bytes:
    struct = layout.OP_STRUCT[layout.OPS["OP_FORK"]]
    r = struct()
    r.hdr.op = layout.OPS["OP_FORK"]
    r.hdr.size = ctypes.sizeof(struct)
    r.hdr.tgid = r.hdr.pid = pid
    r.hdr.ppid = 1
    r.hdr.start_time = 12_345
    r.hdr.comm = b"bash"
    r.parent_start_time = 1
    return bytes(r)


def test_insmod() -> None:
    """/usr/sbin/insmod x.ko is a module load carrying the exec's header, filename and args."""
    exec_event = _exec("/usr/sbin/insmod", "insmod", "x.ko")
    derived = module_load_from_exec(exec_event)
    assert isinstance(derived, ModuleLoad)
    assert (derived.source, derived.syscall, derived.filename, derived.args) == (
        "exec",
        "execve",
        "/usr/sbin/insmod",
        ("insmod", "x.ko"),
    )
    for name in ("ktime", "pid", "tid", "ppid", "start_time", "uid", "cgroup_id", "comm", "flags"):
        assert getattr(derived, name) == getattr(exec_event, name), name


def test_kmod_as_modprobe() -> None:
    """/bin/kmod invoked with argv[0] "modprobe" is a module load."""
    derived = module_load_from_exec(_exec("/bin/kmod", "modprobe", "foo"))
    assert isinstance(derived, ModuleLoad)
    assert derived.filename == "/bin/kmod"
    assert derived.args == ("modprobe", "foo")


def test_kmod_as_other_tool() -> None:
    """/bin/kmod invoked as lsmod (or with no argv) is not a module load."""
    assert module_load_from_exec(_exec("/bin/kmod", "lsmod")) is None
    assert module_load_from_exec(_exec("/bin/kmod")) is None


@pytest.mark.parametrize("flag", ["-r", "--remove", "-n", "--dry-run", "-c", "--showconfig"])
def test_modprobe_remove_or_dry_run(flag: str) -> None:
    """modprobe -r (and dry runs / config dumps) loads nothing: None."""
    assert module_load_from_exec(_exec("/sbin/modprobe", "modprobe", flag, "foo")) is None
    assert module_load_from_exec(_exec("/bin/kmod", "modprobe", flag, "foo")) is None


def test_modprobe_load() -> None:
    """Plain modprobe foo is a module load."""
    assert isinstance(module_load_from_exec(_exec("/sbin/modprobe", "modprobe", "foo")), ModuleLoad)


@pytest.mark.parametrize(
    "filename,args",
    [("/bin/true", ("true",)), ("/usr/bin/insmodx", ("insmodx",)), ("/bin/sh", ("sh", "-c", "insmod x.ko"))],
)
def test_not_a_loader(filename: str, args: tuple[str, ...]) -> None:
    """Execs of other programs are not module loads."""
    assert module_load_from_exec(_exec(filename, *args)) is None


class Sink:
    """A consumer that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)


def test_exec_then_module_load_to_consumers_only() -> None:
    """With module_loads_from_exec, consumers get Exec then ModuleLoad; taps get only the Exec."""
    tap, consumer = Sink(), Sink()
    pipeline = Pipeline(ProcessTable(), module_loads_from_exec=True, taps=[tap], consumers=[consumer])
    exec_event = _exec("/usr/sbin/insmod", "insmod", "x.ko")
    pipeline.feed(exec_event)
    assert tap.events == [exec_event]
    assert len(consumer.events) == 2
    assert consumer.events[0] == exec_event
    assert isinstance(consumer.events[1], ModuleLoad)
    assert consumer.events[1] == module_load_from_exec(exec_event)
    assert pipeline.counts == {"exec": 1, "module_load": 1}
    assert pipeline.table.by_pid(exec_event.pid) is not None


def test_no_module_load_when_disabled() -> None:
    """With module_loads_from_exec=False, an insmod exec yields no ModuleLoad."""
    consumer = Sink()
    pipeline = Pipeline(ProcessTable(), module_loads_from_exec=False, consumers=[consumer])
    exec_event = _exec("/usr/sbin/insmod", "insmod", "x.ko")
    pipeline.feed(exec_event)
    assert consumer.events == [exec_event]
    assert "module_load" not in pipeline.counts


def test_seeded_exec_is_not_a_module_load() -> None:
    """A seeded (from /proc) insmod exec does not produce a ModuleLoad: it is not a new attempt."""
    consumer = Sink()
    pipeline = Pipeline(ProcessTable(), module_loads_from_exec=True, consumers=[consumer])
    pipeline.feed(_exec("/usr/sbin/insmod", "insmod", "x.ko", flags=FLAG_SEEDED))
    assert [e.type for e in consumer.events] == ["exec"]


def test_raising_consumer_is_counted() -> None:
    """A consumer that raises is counted in consumer_errors; the other consumers still get every event."""
    calls: list[str] = []

    def broken(event: Event) -> None:
        calls.append(event.type)
        raise RuntimeError("boom")

    before, after = Sink(), Sink()
    pipeline = Pipeline(ProcessTable(), module_loads_from_exec=True, consumers=[before, broken, after])
    pipeline.feed(_exec("/usr/sbin/insmod", "insmod", "x.ko"))
    pipeline.feed(_exec("/bin/true", "true", pid=950))
    assert pipeline.consumer_errors == 3
    assert calls == ["exec", "module_load", "exec"]
    assert [e.type for e in before.events] == ["exec", "module_load", "exec"]
    assert [e.type for e in after.events] == ["exec", "module_load", "exec"]
    assert pipeline.stats()["consumer_errors"] == 3


def test_feed_records_garbage_and_good() -> None:
    """feed_records counts a garbage record as a decode error and still delivers the good one."""
    tap, consumer = Sink(), Sink()
    pipeline = Pipeline(ProcessTable(), module_loads_from_exec=True, taps=[tap], consumers=[consumer])
    pipeline.feed_records([b"\x01\x02garbage", _fork_record()])
    assert pipeline.decode_errors == 1
    assert len(consumer.events) == 1
    event = consumer.events[0]
    assert isinstance(event, Fork)
    assert (event.pid, event.start_time, event.comm) == (700, 12_345, "bash")
    assert tap.events == consumer.events
    assert pipeline.counts == {"fork": 1}
    assert pipeline.stats()["decode_errors"] == 1
