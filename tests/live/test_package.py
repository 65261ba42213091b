"""The packages as a user gets them: `make deb`/`make rpm` build, lintian has no errors or warnings, `dpkg -i`
installs on this machine, the installed `chainwatch doctor` passes, the installed agent (run in the foreground with the
installed config, rules and BPF from /usr/share/chainwatch) catches a lab reverse shell, the installed unit
verifies, and purge leaves nothing behind. The rpm's file list and dependencies are checked with rpm -qp.

Installing touches the real system, so the module fixture refuses a machine where chainwatch is already
installed, moves aside any /var/lib/chainwatch and /var/log/chainwatch another run left (and puts them back),
and purges the package whatever happens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALLED = ("/usr/bin/chainwatch", "/usr/lib/chainwatch", "/usr/share/chainwatch", "/etc/chainwatch")
DATA = ("/var/lib/chainwatch", "/var/log/chainwatch", "/var/cache/chainwatch")  # state, logs, compiled probes
ENABLE_LINK = "/etc/systemd/system/multi-user.target.wants/chainwatch.service"
CONFIG = "/etc/chainwatch/chainwatch.toml"
ALERTS = "/var/log/chainwatch/alerts.jsonl"  # where the installed config writes


def run(argv: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def installed() -> bool:
    proc = run(["dpkg-query", "-W", "-f=${Status}", "chainwatch"])
    return proc.returncode == 0 and "installed" in proc.stdout and "not-installed" not in proc.stdout


def purge() -> subprocess.CompletedProcess[str]:
    return run(["dpkg", "--purge", "chainwatch"])


class Packages:
    def __init__(self, dist: Path) -> None:
        self.dist = dist
        self.deb = self.rpm = Path()
        self.files: list[str] = []  # dpkg -L while installed
        self.preexisting_dirs: set[str] = set()


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> Iterator[Packages]:
    if os.geteuid() != 0:
        pytest.fail("the package test installs a .deb: run it as root (make test does)")
    for tool in ("dpkg-deb", "rpmbuild", "lintian", "systemd-analyze"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} missing: scripts/setup.sh installs dpkg-dev, rpm, lintian and systemd")
    present = [p for p in INSTALLED if os.path.lexists(p)]
    if installed() or present:
        pytest.fail(
            f"chainwatch is already installed here ({present or 'dpkg says so'}): the package test "
            "would replace and then purge it"
        )
    dist = tmp_path_factory.mktemp("dist")
    pkgs = Packages(dist)
    env = {**os.environ, "DIST": str(dist)}
    for kind in ("deb", "rpm"):
        proc = run(["make", "-s", kind], cwd=REPO, env=env, timeout=600)
        assert proc.returncode == 0, f"make {kind}: {proc.stdout}{proc.stderr}"
        setattr(pkgs, kind, Path(proc.stdout.strip().splitlines()[-1]))
    # Another run's alerts and spool (the built-in defaults point there) stay safe, out of the way.
    aside = {d: f"{d}.before-package-test-{os.getpid()}" for d in DATA if os.path.lexists(d)}
    for d, backup in aside.items():
        os.rename(d, backup)
    pkgs.preexisting_dirs = (
        {"/"}
        | {str(p) for p in Path("/").glob("*")}
        | {
            str(p)
            for base in (
                "/usr",
                "/usr/share",
                "/usr/lib",
                "/usr/share/man",
                "/usr/share/doc",
                "/etc",
                "/lib",
                "/lib/systemd",
                "/usr/share/lintian",
                "/usr/share/lintian/overrides",
            )
            for p in [Path(base), *Path(base).glob("*")]
            if p.is_dir()
        }
    )
    try:
        proc = run(["dpkg", "-i", str(pkgs.deb)])
        assert proc.returncode == 0, f"dpkg -i: {proc.stdout}{proc.stderr}"
        pkgs.files = [os.path.normpath(f) for f in run(["dpkg", "-L", "chainwatch"]).stdout.split("\n") if f]
        yield pkgs
    finally:
        if installed():
            purge()
        for d, backup in aside.items():
            shutil.rmtree(d, ignore_errors=True)
            os.rename(backup, d)


def test_lintian_has_no_errors_or_warnings(packages) -> None:
    """As the README says: no E: and no W: tags (packaging/debian/lintian-overrides holds the one accepted tag)."""
    proc = run(["lintian", "--tag-display-limit", "0", str(packages.deb)], timeout=600)
    tags = [line for line in proc.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert not tags, "\n".join(tags)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rpm_lists_the_files_and_dependencies(packages) -> None:
    files = set(run(["rpm", "-qpl", str(packages.rpm)]).stdout.split())
    for want in (
        "/usr/bin/chainwatch",
        CONFIG,
        "/etc/logrotate.d/chainwatch",
        "/usr/lib/systemd/system/chainwatch.service",
        "/usr/share/doc/chainwatch/README.md",
        "/usr/share/chainwatch/rules/lists/contexts.yaml",
        "/usr/share/chainwatch/bpf/process.bpf.c",
        "/usr/lib/chainwatch/python/agent/cli.py",
        "/usr/lib/chainwatch/python/structlog/__init__.py",
    ):
        assert want in files, want
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    requires = run(["rpm", "-qpR", str(packages.rpm)]).stdout
    for want in ("python3-bcc", "python3 >= 3.9", "python3-psutil", "python3-msgpack", "python3-pyyaml"):
        assert want in requires, requires
    assert "bpfcc" not in requires and "kernel-devel" not in requires  # headers: Recommends only
    assert "kernel-devel" in run(["rpm", "-qp", "--recommends", str(packages.rpm)]).stdout
    config = run(["rpm", "-qpc", str(packages.rpm)]).stdout.split()
    assert CONFIG in config


def test_rpm_erase_removes_state_and_logs(packages) -> None:
    """rpm has no purge: erasing (not upgrading: $1 is 0 only then) stops and disables the service and removes
    state and logs; the config goes too unless changed (rpm keeps a changed one as .rpmsave)."""
    import re

    parts = re.split(
        r"^(\w+) scriptlet \(using [^)]*\):$", run(["rpm", "-qp", "--scripts", str(packages.rpm)]).stdout, flags=re.M
    )
    scripts = dict(zip(parts[1::2], parts[2::2]))
    preun, postun = scripts["preuninstall"], scripts["postuninstall"]
    assert '[ "$1" -eq 0 ]' in preun and "systemctl disable --now chainwatch.service" in preun, preun
    erase = postun.split('if [ "$1" -eq 0 ]; then')[1].split("\nfi")[0]
    assert "rm -rf /var/lib/chainwatch /var/log/chainwatch" in erase, postun


def test_bundled_dependencies_run_on_the_oldest_python(packages) -> None:
    """The .deb and the .rpm carry the same pure-Python wheels, each made for python3 >= 3.9 (RHEL 9)."""
    import email

    deb_root = packages.dist / "deb-root"
    run(["dpkg-deb", "-x", str(packages.deb), str(deb_root)])
    lib = deb_root / "usr/lib/chainwatch/python"
    infos = sorted(lib.glob("*.dist-info"))
    assert {i.name.split("-")[0] for i in infos} == {"structlog", "tomli"}, infos
    for info in infos:
        requires_python = email.message_from_string((info / "METADATA").read_text())["Requires-Python"] or ""
        floor = requires_python.replace(" ", "").split(",")[0]
        assert floor.startswith(">=3.") and int(floor[4:].split(".")[0]) <= 9, (info.name, requires_python)
    # The packaged tree itself on Python 3.9: its launcher's path setup (-I, the bundled copies first), with
    # psutil/msgpack/PyYAML from make test-py39's venv standing in for RHEL 9's python3-* packages.
    venv = run(["bash", "scripts/test-py39.sh", "--venv"], cwd=REPO)
    assert venv.returncode == 0, venv.stdout + venv.stderr
    launcher = (deb_root / "usr/bin/chainwatch").read_text().replace("/usr/lib/chainwatch/python", str(lib))
    code = launcher.replace(
        "from agent.cli import main",
        "import structlog, tomli\nfrom agent.cli import main\nprint(structlog.__file__, tomli.__file__)",
    )
    proc = run(
        [str(REPO / ".cache/py39/bin/python"), "-I", "-c", code, "rules", "check"],
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "CHAINWATCH_SHARE": str(deb_root / "usr/share/chainwatch")},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"{lib}/structlog/__init__.py {lib}/tomli/__init__.py\n"), proc.stdout
    assert "rules OK" in proc.stdout and "Sigma rules not checked" in proc.stderr and "3.11" in proc.stderr
    rpm_files = set(run(["rpm", "-qpl", str(packages.rpm)]).stdout.split())
    assert {f"/usr/lib/chainwatch/python/{i.name}/METADATA" for i in infos} <= rpm_files
    assert "python3 (>= 3.9)" in run(["dpkg-deb", "-f", str(packages.deb), "Depends"]).stdout


def test_deb_metadata(packages) -> None:
    fields = run(["dpkg-deb", "-f", str(packages.deb), "Depends", "Recommends"]).stdout
    assert "python3-bpfcc" in fields and "linux-headers" in fields.split("Recommends:")[1]
    assert "linux-headers" not in fields.split("Recommends:")[0]
    assert CONFIG in Path("/var/lib/dpkg/info/chainwatch.conffiles").read_text()


def test_installed_doctor_finds_the_installed_data(packages) -> None:
    proc = run(["/usr/bin/chainwatch", "doctor"], cwd="/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rules and BPF sources in /usr/share/chainwatch" in proc.stdout


def test_installing_leaves_the_checkout_venv_alone(packages) -> None:
    """The checkout's .venv still imports its own agent (not the installed copy), and bcc."""
    proc = run([sys.executable, "-c", "import agent, bcc, psutil, structlog; print(agent.__file__)"])
    assert proc.returncode == 0 and proc.stdout.strip() == str(REPO / "agent" / "__init__.py"), proc.stderr


def test_installed_agent_with_installed_config_catches_a_reverse_shell(packages, sensorlab, tmp_path) -> None:
    from tests.helpers.scenarios import Agent, play

    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}  # nothing from the checkout
    agent = Agent(["/usr/bin/chainwatch"], tmp_path / "out", config=CONFIG, alerts=Path(ALERTS), env=env)
    verdicts = play(agent, ["bash_dev_tcp", "benign_http"], tmp_path / "work")
    assert all(v.ok for v in verdicts), [(v.name, v.detail) for v in verdicts] + [agent.log_text()[-2000:]]
    assert oct(os.stat(ALERTS).st_mode & 0o777) in ("0o640", "0o600")


def test_installed_unit_verifies(packages) -> None:
    unit = "/lib/systemd/system/chainwatch.service"
    assert unit in packages.files
    proc = run(["systemd-analyze", "verify", unit], timeout=60)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr
    assert os.path.islink(ENABLE_LINK)  # enabled by postinst even where systemd does not run (started: no)


def test_purge_leaves_nothing(packages) -> None:
    """Last in this file: purge, then nothing dpkg installed, nor config, state, logs or the enable link,
    is left (directories other packages share stay)."""
    assert packages.files and "/usr/bin/chainwatch" in packages.files
    proc = purge()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    left = [f for f in packages.files if f and os.path.lexists(f) and f not in packages.preexisting_dirs]
    left += [p for p in (*INSTALLED, *DATA, ENABLE_LINK) if os.path.lexists(p)]
    assert not left, left
