"""The compile cache on a real kernel: a warm start loads exactly the bytecode bcc itself loads, and a cached
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


def _bcc_tags() -> dict[str, str]:
    """Each program's kernel tag when bcc compiles and loads it in-process, the way chainwatch used to."""
    from agent.probes.loader import import_bcc

    bcc = import_bcc()
    program = build_program(ProbeOptions())

    class NoAttach(bcc.BPF):  # type: ignore[misc,name-defined]
        def _trace_autoload(self) -> None:
            pass

    bpf = NoAttach(text=program.text.encode(), cflags=program.cflags)
    try:
        from bcc.libbcc import lib

        tags = {}
        for index in range(lib.bpf_num_functions(bpf.module)):
            name = lib.bpf_function_name(bpf.module, index)
            kind = bcc.BPF.RAW_TRACEPOINT if name.startswith(b"raw_tracepoint__") else bcc.BPF.TRACEPOINT
            fd = bpf.load_func(name, kind).fd
            with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
                tags[name.decode()] = next(line.split()[1] for line in info if line.startswith("prog_tag:"))
        return tags
    finally:
        bpf.cleanup()


def _start(cache_dir: Path) -> Sensor:
    sensor = open_sensor(cache_dir=str(cache_dir))
    assert sensor.attached(), "nothing attached"
    return sensor


def test_warm_start_loads_what_bcc_loads(root_only: None, tmp_path: Path) -> None:
    """Cold: compiled in the children (one per part) and cached. Warm: loaded from the cache with the same attach
    points, and every program's kernel tag equal to bcc's own in-process load of the whole program as one text."""
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
    assert cold_tags == _bcc_tags()
    assert all(tag for tag in cold_tags.values())


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
