"""Live persistence tests: real probes, writes inside a private mount namespace over tmpfs-backed overlays
(the real /etc, /root, /home, /var and /usr are never written). Each write must give exactly one file_write
event with the resolved path, and the detectors must place it (with its ATT&CK technique)."""

from __future__ import annotations

import shlex
import subprocess
import textwrap
from pathlib import Path

import pytest
from supplychain import in_private_overlays

from agent.detect.lists import load_lists
from agent.events import FileWrite

pytestmark = pytest.mark.live

OVERLAYS = ["/etc", "/root", "/home", "/var", "/usr"]

# One write per kind of place (see tests/unit/test_persistence.py for the full table of places).
EACH_KIND = [
    "/etc/cron.d/cw-x", "/var/spool/cron/crontabs/cw-user", "/var/spool/cron/atjobs/cw-a0001",
    "/etc/systemd/system/cw-x.service", "/etc/systemd/system/ssh.service.d/cw-override.conf",
    "/root/.config/systemd/user/cw-x.service", "/etc/systemd/system/cw-x.timer", "/etc/systemd/system/cw-x.path",
    "/etc/systemd/system/cw-x.socket", "/etc/rc.common", "/etc/init.d/cw-x", "/etc/update-motd.d/99-cw",
    "/root/.bash_logout", "/root/.shrc", "/root/.zshrc", "/root/.zlogin", "/root/.zshenv",
    "/root/.config/fish/config.fish", "/home/cwuser/.bashrc", "/etc/profile.d/cw.sh", "/etc/ld.so.preload",
    "/etc/sudoers.d/cw", "/etc/pam.d/cw", "/usr/lib/x86_64-linux-gnu/security/pam_cw.so", "/etc/nsswitch.conf",
    "/usr/lib/x86_64-linux-gnu/libnss_cw.so.2", "/etc/apt/apt.conf.d/99cw", "/etc/dpkg/dpkg.cfg.d/cw",
    "/var/lib/dpkg/info/cw.postinst", "/usr/lib/python3/dist-packages/cw.pth",
    "/root/.local/lib/python3.11/site-packages/cw.pth", "/usr/local/lib/python3.11/dist-packages/sitecustomize.py",
    "/usr/share/git-core/templates/hooks/pre-commit", "/root/.ssh/authorized_keys", "/etc/udev/rules.d/99-cw.rules",
    "/etc/modules-load.d/cw.conf", "/etc/xdg/autostart/cw.desktop",
]


def run_in_overlays(tmp_path: Path, script: str, dirs: list[str] = OVERLAYS,
                    timeout: float = 60) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Run ``script`` with sh in a private mount namespace over overlays of ``dirs``; returns (the script
    shell's pid, the result). The script's first line of output is its pid."""
    body = "echo $$\n" + textwrap.dedent(script)
    argv = in_private_overlays(["sh", "-c", body], dirs, tmp_path / "scratch", tmp_path / "evidence")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"fixture failed ({done.returncode}): {done.stderr}"
    return int(done.stdout.split()[0]), done


def writes_of(sensorlab, since: int, pids: set[int], count: int) -> list[FileWrite]:
    events = sensorlab.wait_for(lambda e: isinstance(e, FileWrite) and e.pid in pids, count=count, since=since)
    return [e for e in events if isinstance(e, FileWrite)]


def test_a_write_to_each_kind_of_place_gives_one_event(sensorlab, tmp_path) -> None:
    """Every kind of ATT&CK persistence place gives exactly one file_write event, which the list places."""
    lists = load_lists()
    assert all(lists.persistence_place(p) is not None for p in EACH_KIND)
    script = "set -e\n" + "".join(f"mkdir -p {shlex.quote(str(Path(p).parent))}; echo cw > {shlex.quote(p)}\n"
                                  for p in EACH_KIND)
    mark = sensorlab.mark()
    pid, _ = run_in_overlays(tmp_path, script)
    evidence = tmp_path / "evidence"
    for path in EACH_KIND:  # the fixture really wrote each file, into the overlay
        top = next(d for d in OVERLAYS if path.startswith(d + "/"))
        assert (evidence / top.strip("/") / path[len(top) + 1:]).is_file(), path
    events = writes_of(sensorlab, mark, {pid}, len(EACH_KIND))
    got = sorted(e.path for e in events)
    assert got == sorted(EACH_KIND), (set(EACH_KIND) - set(got), [p for p in got if got.count(p) > 1])
    assert all(e.operation == "open" for e in events)
