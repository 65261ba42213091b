"""Live persistence tests: real probes, writes inside a private mount namespace over tmpfs-backed overlays
(the real /etc, /root, /home, /var and /usr are never written). Each write must give exactly one file_write
event with the resolved path, and the detectors must place it (with its ATT&CK technique)."""

from __future__ import annotations

import shlex
import textwrap
from pathlib import Path

from agent.events import FileWrite
from agent.ruleset.load import load_lists
from tests.helpers.live import skip_or_fail
from tests.live.supplychain import run_in_overlays

OVERLAYS = ["/etc", "/root", "/home", "/var", "/usr"]

# One write per kind of place (see tests/unit/test_persistence.py for the full table of places).
EACH_KIND = [
    "/etc/cron.d/cw-x",
    "/var/spool/cron/crontabs/cw-user",
    "/var/spool/cron/atjobs/cw-a0001",
    "/etc/systemd/system/cw-x.service",
    "/etc/systemd/system/ssh.service.d/cw-override.conf",
    "/root/.config/systemd/user/cw-x.service",
    "/etc/systemd/system/cw-x.timer",
    "/etc/systemd/system/cw-x.path",
    "/etc/systemd/system/cw-x.socket",
    "/etc/rc.common",
    "/etc/init.d/cw-x",
    "/etc/update-motd.d/99-cw",
    "/root/.bash_logout",
    "/root/.shrc",
    "/root/.zshrc",
    "/root/.zlogin",
    "/root/.zshenv",
    "/root/.config/fish/config.fish",
    "/home/cwuser/.bashrc",
    "/etc/profile.d/cw.sh",
    "/etc/ld.so.preload",
    "/etc/sudoers.d/cw",
    "/etc/pam.d/cw",
    "/usr/lib/x86_64-linux-gnu/security/pam_cw.so",
    "/etc/nsswitch.conf",
    "/usr/lib/x86_64-linux-gnu/libnss_cw.so.2",
    "/etc/apt/apt.conf.d/99cw",
    "/etc/dpkg/dpkg.cfg.d/cw",
    "/var/lib/dpkg/info/cw.postinst",
    "/usr/lib/python3/dist-packages/cw.pth",
    "/root/.local/lib/python3.11/site-packages/cw.pth",
    "/usr/local/lib/python3.11/dist-packages/sitecustomize.py",
    "/usr/share/git-core/templates/hooks/pre-commit",
    "/root/.ssh/authorized_keys",
    "/etc/udev/rules.d/99-cw.rules",
    "/etc/modules-load.d/cw.conf",
    "/etc/xdg/autostart/cw.desktop",
]


def writes_of(sensorlab, since: int, pids: set[int], count: int) -> list[FileWrite]:
    events = sensorlab.wait_for(lambda e: isinstance(e, FileWrite) and e.pid in pids, count=count, since=since)
    return [e for e in events if isinstance(e, FileWrite)]


def test_a_write_to_each_kind_of_place_gives_one_event(sensorlab, tmp_path) -> None:
    """Every kind of ATT&CK persistence place gives exactly one file_write event, which the list places."""
    lists = load_lists()
    assert all(lists.persistence_place(p) is not None for p in EACH_KIND)
    script = "set -e\n" + "".join(
        f"mkdir -p {shlex.quote(str(Path(p).parent))}; echo cw > {shlex.quote(p)}\n" for p in EACH_KIND
    )
    mark = sensorlab.mark()
    pid, _ = run_in_overlays(tmp_path, script, OVERLAYS)
    evidence = tmp_path / "evidence"
    for path in EACH_KIND:  # the fixture really wrote each file, into the overlay
        top = next(d for d in OVERLAYS if path.startswith(d + "/"))
        assert (evidence / top.strip("/") / path[len(top) + 1 :]).is_file(), path
    events = writes_of(sensorlab, mark, {pid}, len(EACH_KIND))
    got = sorted(e.path for e in events)
    assert got == sorted(EACH_KIND), (set(EACH_KIND) - set(got), [p for p in got if got.count(p) > 1])
    assert all(e.operation == "open" for e in events)


CRONTAB = Path(__file__).resolve().parents[2] / ".cache" / "cron" / "usr" / "bin" / "crontab"

DIRFD = textwrap.dedent("""
    import os
    d = os.open("/etc/cron.d", os.O_RDONLY | os.O_DIRECTORY)
    fd = os.open("cw-dirfd", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=d)
    os.write(fd, b"* * * * * root /bin/true\\n"); os.close(fd)
    t = os.open("/etc", os.O_RDONLY | os.O_DIRECTORY)  # same filesystem: a rename, not a copy
    fd = os.open("cw-staged", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=t)
    os.close(fd)
    os.rename("cw-staged", "cw-dirfd-renamed", src_dir_fd=t, dst_dir_fd=d)
""")


def test_every_way_of_naming_the_file_gives_its_resolved_path(sensorlab, tmp_path) -> None:
    """Relative paths, a dirfd, cp, install, mv, crontab -, sed -i, "/./", "//", ".." and a symlinked
    directory: each write gives exactly one event, with the resolved, normalised path of the file written."""
    if not CRONTAB.is_file():
        skip_or_fail(f"{CRONTAB} is missing: `make setup` unpacks crontab from Debian's cron package")
    link = tmp_path / "cwlink"
    src = tmp_path / "job"
    src.write_text("* * * * * root /bin/true\n")
    script = f"""
        set -e
        mkdir -p /etc/cron.d /var/spool/cron/crontabs
        printf 'export A=1\\n' > /root/.bashrc
        echo SETUP-DONE
        cd /etc/cron.d && echo '* * * * * root /bin/true' > cw-relative && cd /
        {shlex.quote(str(Path("/usr/bin/python3")))} -c {shlex.quote(DIRFD)}
        cp {src} /etc/cron.d/
        install -m644 {src} /etc/cron.d/cw-installed
        cp {src} /etc/cw-mv-staged && mv /etc/cw-mv-staged /etc/cron.d/cw-moved
        echo '* * * * * /bin/true' | {CRONTAB} -
        sed -i 's/A=1/A=2/' /root/.bashrc
        echo x > /etc/./cron.d/cw-dot
        echo x > /etc//cron.d/cw-slashes
        echo x > /etc/cron.d/../cron.d/cw-dotdot
        ln -s /etc/cron.d {link}
        echo x > {link}/cw-symlinked
    """
    mark = sensorlab.mark()
    pid, done = run_in_overlays(tmp_path, script, ["/etc", "/root", "/var"])
    assert "SETUP-DONE" in done.stdout
    # (resolved path, comm of the writer, operation)
    want = [
        ("/etc/cron.d/cw-relative", "sh", "open"),
        ("/etc/cron.d/cw-dirfd", "python3", "open"),
        ("/etc/cron.d/cw-dirfd-renamed", "python3", "rename"),
        (f"/etc/cron.d/{src.name}", "cp", "open"),
        ("/etc/cron.d/cw-installed", "install", "open"),
        ("/etc/cron.d/cw-moved", "mv", "rename"),
        ("/var/spool/cron/crontabs/root", "crontab", "rename"),
        ("/root/.bashrc", "sed", "rename"),
        ("/etc/cron.d/cw-dot", "sh", "open"),
        ("/etc/cron.d/cw-slashes", "sh", "open"),
        ("/etc/cron.d/cw-dotdot", "sh", "open"),
        ("/etc/cron.d/cw-symlinked", "sh", "open"),
    ]

    def in_run(e) -> bool:
        return isinstance(e, FileWrite) and (e.pid == pid or e.ppid == pid)

    events = sensorlab.wait_for(lambda e: in_run(e) and e.path == "/etc/cron.d/cw-symlinked", since=mark)
    events = sensorlab.select(in_run, since=mark)
    for path, comm, operation in want:
        hits = [e for e in events if e.path == path and e.comm == comm]
        assert [(e.path, e.operation) for e in hits] == [(path, operation)], (
            path,
            comm,
            [(e.path, e.comm, e.operation) for e in events],
        )
    # crontab writes a temp file in the spool first (relative to its cwd): resolved too, and in the spool.
    temps = [e.path for e in events if e.comm == "crontab" and e.operation == "open"]
    assert all(p.startswith("/var/spool/cron/crontabs/tmp.") for p in temps), temps
    # No event carries an unresolved or unnormalised name.
    assert all(
        e.path.startswith("/")
        and "/./" not in e.path
        and "//" not in e.path
        and "/../" not in e.path
        and not e.path.startswith(str(tmp_path))
        for e in events
    ), [e.path for e in events]


def test_a_failed_open_for_write_gives_no_event(sensorlab, tmp_path) -> None:
    """An unprivileged user's denied open of /etc/cron.d/x for writing gives no event; the same write by root
    right after it gives one (so the workload reached the sensor)."""
    script = """
        mkdir -p /etc/cron.d && chmod 755 /etc/cron.d
        setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'echo x > /etc/cron.d/cw-denied' && exit 3
        echo x > /etc/cron.d/cw-allowed
    """
    mark = sensorlab.mark()
    pid, _ = run_in_overlays(tmp_path, script, ["/etc"])
    allowed = sensorlab.wait_for(
        lambda e: isinstance(e, FileWrite) and e.path == "/etc/cron.d/cw-allowed" and e.pid == pid, since=mark
    )
    assert len(allowed) == 1
    denied = sensorlab.select(lambda e: isinstance(e, FileWrite) and "cw-denied" in e.path, since=mark)
    assert denied == []


MOVE_DIR = "import os; os.rename('/root/cw-stage', '/root/.config/fish')"  # a rename, never mv's copy fallback


def test_a_directory_that_moves_into_a_place_is_judged_again(sensorlab, tmp_path) -> None:
    """The kernel stops resolving paths in a directory no place can name a file in (cold_dirs). A directory
    renamed into a place, or a mount moved onto one, is judged again: the next write there gives its event."""
    mnt = tmp_path / "cw-mnt"
    script = f"""
        set -e
        mount -t tmpfs cw-home /root
        mkdir -p /root/cw-stage /root/.config
        echo x > /root/cw-stage/config.fish
        echo x > /root/cw-stage/config.fish
        /usr/bin/python3 -c {shlex.quote(MOVE_DIR)}
        echo x > /root/.config/fish/config.fish
        mkdir -p {mnt} /etc/cron.d
        mount -t tmpfs cw-move {mnt}
        echo x > {mnt}/cw-moved-mount
        echo x > {mnt}/cw-moved-mount
        mount --move {mnt} /etc/cron.d
        echo x > /etc/cron.d/cw-moved-mount
        echo MOVED
    """
    mark = sensorlab.mark()
    pid, done = run_in_overlays(tmp_path, script, ["/etc"])
    assert "MOVED" in done.stdout
    want = ["/root/.config/fish/config.fish", "/etc/cron.d/cw-moved-mount"]
    events = writes_of(sensorlab, mark, {pid}, len(want))
    got = [(e.path, e.operation) for e in events]
    assert got == [(path, "open") for path in want], got


def test_a_file_bind_mounted_onto_a_place_is_never_remembered_as_cold(sensorlab, tmp_path) -> None:
    """A file bind-mounted onto /root/.bashrc is reached under the mountpoint's name: its directory key must
    not take the verdict of /root/ (cold), or the next write would go unseen. Its name here has .bashrc's
    length, the case a length check alone would let through. Each write gives its event."""
    src = tmp_path / "cw-src"
    script = f"""
        set -e
        mount -t tmpfs cw-home /root
        mkdir -p {src}
        echo x > {src}/abcdefg
        touch /root/.bashrc
        mount --bind {src}/abcdefg /root/.bashrc
        echo x >> /root/.bashrc
        echo x >> /root/.bashrc
        echo BOUND
    """
    mark = sensorlab.mark()
    pid, done = run_in_overlays(tmp_path, script, ["/etc"])
    assert "BOUND" in done.stdout
    events = writes_of(sensorlab, mark, {pid}, 2)  # the shell's two appends (touch is a process of its own)
    assert [(e.path, e.operation) for e in events] == [("/root/.bashrc", "open")] * 2, events
