"""The compile cache on a real kernel: a warm start loads exactly the bytecode bcc itself compiles, and a cached
entry that no longer loads is recompiled instead of stopping the sensor."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.probes.artifact import ATTACH_KINDS, ProgramSpec, dumps, loads
from agent.probes.cache import ProbeCache
from agent.probes.loader import Sensor, build_program, open_sensor
from agent.probes.source import ProbeOptions
from tests.helpers.live import skip_or_fail

pytestmark = pytest.mark.live

BPF_MAP_TYPE_TASK_STORAGE = 29
EXIT_ONLY = bytes([0x95, 0, 0, 0, 0, 0, 0, 0])  # "exit" with r0 never written: the verifier refuses it


@pytest.fixture
def root_only() -> None:
    if os.geteuid() != 0:
        skip_or_fail("loading BPF programs needs root")


def _bcc_programs() -> dict[str, bytes]:
    """Each program's bytecode when bcc compiles the whole program as one text in-process, the way chainwatch
    used to, with map references made symbolic and the kfunc helper calls made kfunc calls as the compile
    children do. (bcc cannot load those calls itself; equal bytecode is what equal kernel tags would show.)"""
    from agent.probes.compile import compile_artifact
    from agent.probes.loader import import_bcc

    import_bcc()
    program = build_program(ProbeOptions())
    artifact = compile_artifact(program.text, program.cflags, "whole", program.kfuncs)
    return {p.name: p.insns for p in artifact.programs}


def _start(cache_dir: Path) -> Sensor:
    sensor = open_sensor(cache_dir=str(cache_dir))
    assert sensor.attached(), "nothing attached"
    return sensor


def test_warm_start_loads_what_bcc_compiles(root_only: None, tmp_path: Path) -> None:
    """Cold: compiled in the children (one per part) and cached. Warm: loaded from the cache with the same attach
    points and kernel tags, and every program's bytecode equal to bcc's in-process compile of the whole program
    as one text."""
    cold = _start(tmp_path)
    try:
        assert cold.startup["compile"] == "compiled"
        cold_probes, cold_tags = cold.attached(), cold.program_tags()
    finally:
        cold.close()
    ((entry, _),) = ProbeCache(str(tmp_path)).state().entries
    cached = loads((tmp_path / entry).read_bytes())
    # The kernel creates task storage only with BTF for key and value: the warm start below needs what was kept.
    assert cached.btfs and cached.map("stash_slot").type == BPF_MAP_TYPE_TASK_STORAGE
    assert cached.map("stash_slot").uses_btf
    warm = _start(tmp_path)
    try:
        assert warm.startup["compile"] == "cached"
        assert warm.attached() == cold_probes
        assert warm.program_tags() == cold_tags
        assert warm.kernel_drops() == dict.fromkeys(warm.kernel_drops(), 0)
    finally:
        warm.close()
    assert all(tag for tag in cold_tags.values())
    assert {p.name: p.insns for p in cached.programs} == _bcc_programs()
    # The kfunc is what makes files' fields plain loads here: the compile made its calls kfunc calls.
    assert any(_calls_kfunc(p.insns) for p in cached.programs)


def _calls_kfunc(insns: bytes) -> bool:
    return any(insns[i] == 0x85 and insns[i + 1] >> 4 == 2 for i in range(0, len(insns), 8))


def test_a_cached_entry_that_does_not_load_is_recompiled(root_only: None, tmp_path: Path) -> None:
    """A well-formed entry under the right key whose program the verifier refuses: logged, replaced by a fresh
    compile, and the sensor starts."""
    _start(tmp_path).close()
    cache = ProbeCache(str(tmp_path))
    ((name, _),) = cache.state().entries
    good = loads((tmp_path / name).read_bytes())
    first: ProgramSpec = good.programs[0]
    assert first.attach_kind in ATTACH_KINDS
    broken = dataclasses.replace(
        good, programs=(dataclasses.replace(first, insns=EXIT_ONLY, map_refs=()), *good.programs[1:])
    )
    (tmp_path / name).write_bytes(dumps(broken))
    with capture_logs() as logs:
        sensor = _start(tmp_path)
    try:
        assert sensor.startup["compile"] == "compiled"
        failed = [entry for entry in logs if entry["event"] == "probe_cache_load_failed"]
        assert len(failed) == 1 and first.name in failed[0]["reason"], logs
    finally:
        sensor.close()
    assert loads((tmp_path / name).read_bytes()) == good


EXEC_ON_SOCKET = """
import socket, subprocess
a, b = socket.socketpair()
child = subprocess.run(["/bin/true"], stdin=a, timeout=10)
"""
CRON_WRITE = """
set -e
mount -t tmpfs cwprobe /etc/cron.d
echo $$
echo '* * * * * root /bin/true' > /etc/cron.d/cw-fallback
"""


def test_without_the_kfunc_files_are_read_by_probe_reads(
    root_only: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel without bpf_rdonly_cast (before 6.2): the build calls no kfunc, loads, and its probe reads still
    tell a socket on a new program's stdin and the resolved path of a write to a persistence place."""
    import subprocess
    import sys
    import time

    from agent.decode import decode
    from agent.events import Exec, FileWrite
    from agent.probes import loader

    real = loader.kernel_offsets()
    assert real.kfunc("KFUNC_RDONLY_CAST"), "this kernel has the kfunc: the default build uses it"
    monkeypatch.setattr(loader, "kernel_offsets", lambda: dataclasses.replace(real, kfuncs={}))
    sensor = _start(tmp_path)
    try:
        ((entry, _),) = ProbeCache(str(tmp_path)).state().entries
        assert not any(_calls_kfunc(p.insns) for p in loads((tmp_path / entry).read_bytes()).programs)
        parent = subprocess.Popen([sys.executable, "-c", EXEC_ON_SOCKET])
        assert parent.wait(timeout=20) == 0
        parent_pid = parent.pid
        cron = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", CRON_WRITE],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        cron_pid = int(cron.stdout.split()[0])
        seen: list[object] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            seen += [decode(raw) for raw in sensor.poll(100)]
            execs = [e for e in seen if isinstance(e, Exec) and e.filename == "/bin/true" and e.ppid == parent_pid]
            writes = [e for e in seen if isinstance(e, FileWrite) and e.pid == cron_pid]
            if execs and writes:
                break
        assert [e.stdio[0] for e in execs] == ["socket"]  # the inode's type, read through the fd's file
        assert [e.path for e in writes] == ["/etc/cron.d/cw-fallback"]
    finally:
        sensor.close()
    assert not Path("/etc/cron.d/cw-fallback").exists()
