"""Unit tests for agent.lineage (identity, process table, /proc seeding) and agent.capture."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from agent.events import FLAG_SEEDED, Connect, Exec, Exit, Fork
from agent.lineage import seed as seed_mod
from agent.lineage.identity import (
    NS_PER_TICK,
    ProcessKey,
    entity_id,
    parse_proc_stat,
    process_key,
    read_proc_stat,
    start_ticks_from_proc,
)
from agent.lineage.seed import seed_events
from agent.lineage.table import EARLY_EXIT_CAP, ProcessTable
from tests.helpers.polling import wait_until

SEC = 10**9


def fork(pid: int, ppid: int, start: int, parent_start: int, *, ktime: int | None = None, comm: str = "bash") -> Fork:
    """A Fork event for child ``pid`` (times in ns)."""
    return Fork(
        ktime=start if ktime is None else ktime,
        pid=pid,
        tid=pid,
        ppid=ppid,
        start_time=start,
        uid=1000,
        cgroup_id=7,
        comm=comm,
        parent_start_time=parent_start,
    )


def execve(
    pid: int,
    ppid: int,
    start: int,
    filename: str,
    *,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    ktime: int | None = None,
    flags: int = 0,
) -> Exec:
    """An Exec event for process ``pid``."""
    return Exec(
        ktime=start + 1000 if ktime is None else ktime,
        pid=pid,
        tid=pid,
        ppid=ppid,
        start_time=start,
        uid=1000,
        cgroup_id=7,
        comm=os.path.basename(filename)[:15],
        flags=flags,
        filename=filename,
        args=args or (filename,),
        env=env or {},
    )


def exit_(pid: int, start: int, ktime: int, code: int = 0) -> Exit:
    """An Exit event for process ``pid``."""
    return Exit(
        ktime=ktime, pid=pid, tid=pid, ppid=0, start_time=start, uid=1000, cgroup_id=7, comm="x", exit_code=code
    )


def key(pid: int, start: int) -> ProcessKey:
    """Shorthand for process_key."""
    return process_key(pid, start)


# ---------------------------------------------------------------------------- identity


def test_process_key_divides_ns_by_tick() -> None:
    """process_key truncates CLOCK_BOOTTIME ns to USER_HZ ticks like the kernel's stat."""
    assert NS_PER_TICK == 10**9 // os.sysconf("SC_CLK_TCK")
    assert process_key(42, 7 * NS_PER_TICK + NS_PER_TICK - 1) == ProcessKey(42, 7)
    assert process_key(42, 8 * NS_PER_TICK) == (42, 8)
    assert process_key(42, 8 * NS_PER_TICK).start_ticks == 8


def test_entity_id_stable_and_distinct() -> None:
    """entity_id is deterministic, 22 urlsafe chars, and differs by host, pid and start."""
    a = entity_id("host-a", ProcessKey(10, 500))
    assert a == entity_id("host-a", ProcessKey(10, 500))
    assert len(a) == 22
    assert set(a) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    others = {
        entity_id("host-b", ProcessKey(10, 500)),
        entity_id("host-a", ProcessKey(10, 501)),
        entity_id("host-a", ProcessKey(11, 500)),
    }
    assert a not in others and len(others) == 3


def _write_stat(root: Path, pid: int, comm: str, ppid: int, start_ticks: int) -> None:
    """Write a realistic fake <root>/<pid>/stat."""
    fields = ["S", str(ppid)] + ["0"] * 17 + [str(start_ticks)] + ["12345", "67"] + ["0"] * 28
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "stat").write_text(f"{pid} ({comm}) " + " ".join(fields) + "\n")


@pytest.mark.parametrize("comm", ["a) b (c", "x) S 1 2 3 4", "()", "plain"])
def test_stat_parsing_hostile_comm(tmp_path: Path, comm: str) -> None:
    """Field 22 and comm are found after the LAST ')' whatever comm contains."""
    _write_stat(tmp_path, 4321, comm, ppid=99, start_ticks=987654)
    assert start_ticks_from_proc(4321, proc_root=tmp_path) == 987654
    st = read_proc_stat(4321, proc_root=str(tmp_path))
    assert (st.pid, st.comm, st.state, st.ppid, st.start_ticks) == (4321, comm, "S", 99, 987654)


def test_stat_parsing_errors(tmp_path: Path) -> None:
    """Malformed stat raises ValueError, a missing process raises OSError."""
    with pytest.raises(ValueError):
        parse_proc_stat(b"12 (sh) S 1 2 3")
    with pytest.raises(ValueError):
        parse_proc_stat(b"12 sh S 1")
    with pytest.raises(OSError):
        start_ticks_from_proc(5555, proc_root=tmp_path)


def test_start_ticks_matches_own_stat() -> None:
    """start_ticks_from_proc agrees with psutil's view of this process's start time."""
    ticks = start_ticks_from_proc(os.getpid())
    boot = psutil.boot_time()
    created = psutil.Process().create_time()
    assert abs((boot + ticks / os.sysconf("SC_CLK_TCK")) - created) < 0.05


# ---------------------------------------------------------------------------- table basics


def test_fork_exec_exit_sequence() -> None:
    """Fork creates the child under its parent, Exec fills it in, Exit marks it but keeps it."""
    t = ProcessTable()
    shell = t.apply(execve(100, 1, 10 * SEC, "/bin/bash", env={"CI_JOB_ID": "9"}))
    assert shell is not None and shell.parent_key is None and shell.exec_count == 1
    child = t.apply(fork(200, 100, 20 * SEC, 10 * SEC))
    assert child is not None
    assert child.parent_key == key(100, 10 * SEC) and child.exec_count == 0
    assert (child.filename, child.env) == ("/bin/bash", {"CI_JOB_ID": "9"})  # a fork runs its parent's image
    same = t.apply(execve(200, 100, 20 * SEC, "/usr/bin/curl", args=("curl", "x.io")))
    assert same is child
    assert (child.filename, child.args, child.comm, child.env, child.exec_count) == (
        "/usr/bin/curl",
        ("curl", "x.io"),
        "curl",
        {},
        1,
    )
    assert [p.pid for p in t.ancestry(child.key)] == [100]
    assert t.children(shell.key) == [child]
    done = t.apply(exit_(200, 20 * SEC, ktime=25 * SEC, code=3))
    assert done is child and child.exited and child.exited_at == 25 * SEC and child.exit_code == 3
    assert len(t) == 2
    assert (
        t.lookup_event(
            Connect(ktime=26 * SEC, pid=200, tid=201, ppid=100, start_time=20 * SEC, uid=0, cgroup_id=0, comm="curl")
        )
        is child
    )


def test_reexec_is_same_process() -> None:
    """A second Exec of the same key updates the record and bumps exec_count."""
    t = ProcessTable()
    t.apply(execve(300, 1, 5 * SEC, "/bin/sh"))
    p = t.apply(execve(300, 1, 5 * SEC, "/usr/bin/python3", env={"GITHUB_SHA": "abc"}))
    assert p is not None and len(t) == 1 and p.exec_count == 2
    assert (p.filename, p.env) == ("/usr/bin/python3", {"GITHUB_SHA": "abc"})


def test_other_events_only_look_up() -> None:
    """Non-lineage events resolve their process but never create one."""
    t = ProcessTable()
    conn = Connect(ktime=1, pid=5, tid=5, ppid=1, start_time=SEC, uid=0, cgroup_id=0, comm="nc")
    assert t.apply(conn) is None and len(t) == 0
    p = t.apply(execve(5, 1, SEC, "/bin/nc"))
    assert t.apply(conn) is p


def test_exec_without_fork_uses_live_ppid_holder() -> None:
    """An Exec with no Fork takes the live holder of ppid as parent, not an exited one."""
    t = ProcessTable()
    t.apply(execve(10, 1, SEC, "/bin/bash"))
    kid = t.apply(execve(11, 10, 2 * SEC, "/bin/ls"))
    assert kid is not None and kid.parent_key == key(10, SEC)
    t.apply(exit_(10, SEC, ktime=3 * SEC))
    orphan = t.apply(execve(12, 10, 4 * SEC, "/bin/ls"))
    assert orphan is not None and orphan.parent_key is None


def test_fork_without_parent_start_falls_back_to_ppid() -> None:
    """A Fork with parent_start_time 0 takes the live holder of ppid as parent."""
    t = ProcessTable()
    t.apply(execve(10, 1, SEC, "/bin/bash"))
    kid = t.apply(fork(11, 10, 2 * SEC, 0))
    assert kid is not None and kid.parent_key == key(10, SEC)


def test_seeded_exec_marks_and_does_not_override_probe_data() -> None:
    """FLAG_SEEDED marks new records seeded; on a record a probe already saw, it changes nothing."""
    t = ProcessTable()
    s = t.apply(execve(1, 0, SEC, "/sbin/init", flags=FLAG_SEEDED))
    assert s is not None and s.seeded
    real = t.apply(execve(50, 1, 2 * SEC, "/bin/real"))
    again = t.apply(execve(50, 1, 2 * SEC, "/bin/stale-snapshot", flags=FLAG_SEEDED))
    assert again is real and real is not None
    assert (real.filename, real.exec_count, real.seeded) == ("/bin/real", 1, False)


def test_constructor_validates_bounds() -> None:
    """max_entries below 1 and a negative grace are rejected."""
    with pytest.raises(ValueError):
        ProcessTable(max_entries=0)
    with pytest.raises(ValueError):
        ProcessTable(grace_ns=-1)


# ---------------------------------------------------------------------------- pid reuse


def test_pid_reuse_gives_distinct_entries() -> None:
    """Same pid with two start times: two records, the old one presumed exited, children bind to the new."""
    t = ProcessTable()
    old = t.apply(execve(300, 1, 10 * SEC, "/bin/old"))
    child_of_old = t.apply(fork(301, 300, 11 * SEC, 10 * SEC))
    new = t.apply(execve(300, 1, 50 * SEC, "/bin/new", ktime=50 * SEC + 5))
    assert old is not None and new is not None and old is not new and len(t) == 3
    assert old.exited_at == 50 * SEC + 5 and old.exit_code is None and not new.exited
    assert t.by_pid(300) is new
    assert t.get(key(300, 10 * SEC)) is old  # still resolvable
    via_fork = t.apply(fork(400, 300, 60 * SEC, 50 * SEC))
    via_exec = t.apply(execve(401, 300, 61 * SEC, "/bin/true"))
    assert via_fork is not None and via_exec is not None
    assert [p.filename for p in t.ancestry(via_fork.key)] == ["/bin/new"]
    assert [p.filename for p in t.ancestry(via_exec.key)] == ["/bin/new"]
    assert child_of_old is not None and t.ancestry(child_of_old.key) == [old]


def test_late_event_of_older_pid_holder_does_not_steal_pid() -> None:
    """A first event for an older key of a pid arriving after a newer holder is stored as exited."""
    t = ProcessTable()
    new = t.apply(execve(300, 1, 50 * SEC, "/bin/new"))
    stale = t.apply(execve(300, 1, 10 * SEC, "/bin/old", ktime=51 * SEC))
    assert stale is not None and stale.exited and t.by_pid(300) is new and new is not None and not new.exited


def test_exit_of_old_key_after_reuse_keeps_new_holder() -> None:
    """The real Exit of a superseded key updates it without touching the pid's new holder."""
    t = ProcessTable()
    old = t.apply(execve(300, 1, 10 * SEC, "/bin/old"))
    new = t.apply(execve(300, 1, 50 * SEC, "/bin/new"))
    assert t.apply(exit_(300, 10 * SEC, ktime=49 * SEC, code=1)) is old
    assert old is not None and old.exited_at == 49 * SEC and old.exit_code == 1
    assert t.by_pid(300) is new and t.by_pid(300, live_only=True) is new


# ---------------------------------------------------------------------------- out of order


def test_exec_before_fork() -> None:
    """A Fork arriving after its child's Exec fills in the parent and keeps the exec data."""
    t = ProcessTable()
    t.apply(execve(100, 1, 10 * SEC, "/bin/bash"))
    t.apply(execve(7, 1, SEC, "/usr/sbin/sshd"))
    # The exec names ppid 7 (say, after reparenting) but the fork says bash created it.
    kid = t.apply(execve(200, 7, 20 * SEC, "/usr/bin/wget", args=("wget", "u")))
    assert kid is not None and kid.parent_key == key(7, SEC)
    same = t.apply(fork(200, 100, 20 * SEC, 10 * SEC, comm="bash"))
    assert same is kid
    assert kid.parent_key == key(100, 10 * SEC) and kid.ppid == 100
    assert (kid.filename, kid.args, kid.comm, kid.exec_count) == ("/usr/bin/wget", ("wget", "u"), "wget", 1)
    assert t.children(key(7, SEC)) == [] and t.children(key(100, 10 * SEC)) == [kid]


def test_exit_before_exec_of_same_key() -> None:
    """An Exec arriving after its process's Exit updates the exited record, which stays exited."""
    t = ProcessTable()
    t.apply(execve(100, 1, 10 * SEC, "/bin/bash"))
    t.apply(fork(200, 100, 20 * SEC, 10 * SEC))
    t.apply(exit_(200, 20 * SEC, ktime=21 * SEC, code=2))
    p = t.apply(execve(200, 100, 20 * SEC, "/usr/bin/id", ktime=20 * SEC + 500))
    assert p is not None and p.filename == "/usr/bin/id" and p.exec_count == 1
    assert p.exited_at == 21 * SEC and p.exit_code == 2


def test_exit_first_creates_nothing_but_late_events_see_it() -> None:
    """An Exit for an unknown key adds no entry; the process's late Fork/Exec create it already exited."""
    t = ProcessTable()
    assert t.apply(exit_(200, 20 * SEC, ktime=21 * SEC, code=4)) is None
    assert len(t) == 0
    p = t.apply(fork(200, 100, 20 * SEC, 10 * SEC))
    t.apply(execve(200, 100, 20 * SEC, "/bin/false"))
    assert p is not None and p.exited_at == 21 * SEC and p.exit_code == 4 and p.filename == "/bin/false"


def test_early_exit_memory_is_bounded() -> None:
    """Exits for unknown keys are remembered only up to EARLY_EXIT_CAP, and reap forgets them."""
    t = ProcessTable(grace_ns=SEC)
    for i in range(EARLY_EXIT_CAP + 10):
        t.apply(exit_(10_000 + i, SEC, ktime=2 * SEC))
    assert len(t._early_exits) == EARLY_EXIT_CAP and len(t) == 0
    t.reap(10 * SEC)
    assert len(t._early_exits) == 0


def test_double_fork_setsid_daemon() -> None:
    """A daemonised grandchild (parent exited, reparented to init) still walks back to the shell."""
    t = ProcessTable()
    for ev in seed_like():
        t.apply(ev)
    t.apply(fork(1000, 500, 100 * SEC, 20 * SEC))  # bash forks
    t.apply(execve(1000, 500, 100 * SEC, "/usr/bin/daemonize"))
    t.apply(fork(1001, 1000, 101 * SEC, 100 * SEC))  # first fork
    t.apply(fork(1002, 1001, 102 * SEC, 101 * SEC))  # second fork (after setsid)
    t.apply(exit_(1001, 101 * SEC, ktime=103 * SEC))  # middle child exits
    t.apply(exit_(1000, 100 * SEC, ktime=103 * SEC))
    d = t.apply(execve(1002, 1, 102 * SEC, "/tmp/.x/miner", ktime=104 * SEC))  # reparented to init
    assert d is not None and d.ppid == 1001 and d.parent_key == key(1001, 101 * SEC)
    chain = [p.pid for p in t.ancestry(d.key)]
    assert chain == [1001, 1000, 500, 1]
    assert t.ancestry(d.key)[0].exited


def seed_like() -> list[Exec]:
    """A seeded init and login shell."""
    return [
        execve(1, 0, SEC, "/sbin/init", flags=FLAG_SEEDED),
        execve(500, 1, 20 * SEC, "/bin/bash", flags=FLAG_SEEDED),
    ]


# ---------------------------------------------------------------------------- reaping, bounds, cycles


def test_reap_after_grace() -> None:
    """Exited processes are reaped only once exited_at + grace < now; orphaned children keep working."""
    t = ProcessTable(grace_ns=30 * SEC)
    t.apply(execve(100, 1, 10 * SEC, "/bin/bash"))
    kid = t.apply(fork(200, 100, 20 * SEC, 10 * SEC))
    t.apply(exit_(100, 10 * SEC, ktime=40 * SEC))
    assert t.reap(70 * SEC) == 0 and len(t) == 2
    assert t.reap(70 * SEC + 1) == 1 and t.reaped == 1
    assert t.get(key(100, 10 * SEC)) is None and t.by_pid(100) is None
    assert kid is not None and t.get(kid.key) is kid and t.ancestry(kid.key) == []
    assert t.reap(10**6 * SEC) == 0  # live processes are never reaped
    assert len(t) == 1


def test_reap_uses_latest_exit_time() -> None:
    """A real Exit after a presumed one (pid reuse) moves the reap deadline."""
    t = ProcessTable(grace_ns=10 * SEC)
    t.apply(execve(300, 1, 10 * SEC, "/bin/old"))
    t.apply(execve(300, 1, 50 * SEC, "/bin/new", ktime=50 * SEC))
    t.apply(exit_(300, 10 * SEC, ktime=55 * SEC))
    assert t.reap(61 * SEC) == 0
    assert t.reap(66 * SEC) == 1 and t.get(key(300, 10 * SEC)) is None


def test_max_entries_bound_with_live_processes() -> None:
    """Inserting 10x max_entries live processes keeps len bounded, evicting the oldest-started."""
    t = ProcessTable(max_entries=100)
    for i in range(1000):
        t.apply(fork(1000 + i, 1, (i + 1) * SEC, 0))
        assert len(t) <= 100
    assert len(t) == 100 and t.evicted == 900 and t.evicted_live == 900
    assert sorted(p.pid for p in t) == list(range(1900, 2000))


def test_max_entries_evicts_exited_first() -> None:
    """When over the bound, exited processes go first (oldest exit first) and live ones survive."""
    t = ProcessTable(max_entries=100)
    for i in range(50):
        t.apply(execve(10 + i, 1, (i + 1) * SEC, "/bin/long-lived"))
    for i in range(1000):
        start = (100 + i) * SEC
        t.apply(fork(5000 + i, 10, start, SEC))
        t.apply(execve(5000 + i, 10, start, "/bin/true"))
        t.apply(exit_(5000 + i, start, ktime=start + 1))
        assert len(t) <= 100
    assert len(t) == 100 and t.evicted == 950 and t.evicted_live == 0
    assert all(t.by_pid(10 + i) is not None for i in range(50))
    assert sorted(p.pid for p in t if p.exited) == list(range(5950, 6000))


def test_ancestry_cycle_and_depth_safe() -> None:
    """Ancestry terminates on a parent cycle and honours max_depth."""
    t = ProcessTable()
    a = t.apply(execve(1, 0, SEC, "/a"))
    b = t.apply(fork(2, 1, 2 * SEC, SEC))
    c = t.apply(fork(3, 2, 3 * SEC, 2 * SEC))
    assert a is not None and b is not None and c is not None
    a.parent_key = c.key  # corrupt on purpose: 1 -> 3 -> 2 -> 1
    assert [p.pid for p in t.ancestry(a.key)] == [3, 2]
    assert [p.pid for p in t.ancestry(c.key)] == [2, 1]
    c.parent_key = c.key
    assert t.ancestry(c.key) == []
    t2 = ProcessTable()
    t2.apply(execve(1, 0, SEC, "/init"))
    for i in range(2, 202):
        t2.apply(fork(i, i - 1, i * SEC, (i - 1) * SEC))
    leaf = key(201, 201 * SEC)
    assert len(t2.ancestry(leaf)) == 64
    assert [p.pid for p in t2.ancestry(leaf, max_depth=3)] == [200, 199, 198]
    assert len(t2.ancestry(leaf, max_depth=1000)) == 200
    assert t2.ancestry(key(999, SEC)) == []


# ---------------------------------------------------------------------------- seeding


def test_seed_events_real_proc() -> None:
    """seed_events includes this process with the kernel's key, its parent first, and a child's env labels."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GITHUB_RUN_ID": "77", "SECRET_TOKEN": "no"}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        wait_until(
            lambda: b"GITHUB_RUN_ID" in Path(f"/proc/{child.pid}/environ").read_bytes(),
            "the child's environment",
            timeout=10,
            interval=0.01,
        )
        events = seed_events()
    finally:
        child.kill()
        child.wait()
    me = os.getpid()
    by_pid = {ev.pid: ev for ev in events}
    mine = by_pid[me]
    assert process_key(mine.pid, mine.start_time) == ProcessKey(me, start_ticks_from_proc(me))
    assert mine.ppid == os.getppid() and mine.tid == me and mine.cgroup_id == 0
    assert mine.flags & FLAG_SEEDED and mine.uid == os.getuid()
    assert mine.filename == os.readlink("/proc/self/exe")
    assert mine.args == tuple(Path("/proc/self/cmdline").read_bytes().decode().rstrip("\0").split("\0"))
    assert mine.comm == read_proc_stat(me).comm
    assert os.getppid() in by_pid
    starts = [ev.start_time for ev in events]
    assert starts == sorted(starts)
    assert by_pid[child.pid].env == {"GITHUB_RUN_ID": "77"}
    t = ProcessTable()
    for ev in events:
        t.apply(ev)
    kid = t.get(process_key(child.pid, by_pid[child.pid].start_time))
    assert kid is not None and kid.seeded
    assert [p.pid for p in t.ancestry(kid.key)[:2]] == [me, os.getppid()]


def test_seed_events_skips_vanished_and_tolerates_denied(monkeypatch: pytest.MonkeyPatch) -> None:
    """Vanished pids are skipped, an unreadable exe becomes "", and nothing raises."""
    gone = 1
    while psutil.pid_exists(gone):
        gone += 7919
    monkeypatch.setattr(psutil, "pids", lambda: [gone, os.getpid(), os.getppid()])

    def denied_exe(self: psutil.Process) -> str:
        raise psutil.AccessDenied(self.pid)

    real_cmdline = psutil.Process.cmdline

    def vanishing_cmdline(self: psutil.Process) -> list[str]:
        if self.pid == os.getppid():
            raise psutil.NoSuchProcess(self.pid)
        return list(real_cmdline(self))

    monkeypatch.setattr(psutil.Process, "exe", denied_exe)
    monkeypatch.setattr(psutil.Process, "cmdline", vanishing_cmdline)
    events = seed_mod.seed_events()
    assert [ev.pid for ev in events] == [os.getpid()]
    assert events[0].filename == "" and events[0].args


# ---------------------------------------------------------------------------- capture

# env_wanted / parse_env_block: tests/unit/test_capture.py
