"""agent.capture: exact attribution names only, never credentials; recordings and replays keep no others."""

from __future__ import annotations

import io
from pathlib import Path

import msgpack
import pytest

from agent.capture import ENV_CAPTURE_NAMES, env_wanted, looks_secret, parse_env_block
from agent.decode import decode
from agent.events import Exec
from agent.lineage.seed import _read_env
from agent.lineage.table import ProcessTable
from agent.pipeline import Pipeline
from agent.recording import RecordingWriter, read_recording
from agent.ruleset.load import default_rules_dir, load_rules
from agent.ruleset.yamlcheck import RuleErrors
from tests.unit.test_decode import _exec_record

# The credentials CI systems put in the environment of every job step, and a few more shapes of name.
SECRETS = {
    "CI_JOB_TOKEN": "glcbt-cwsecret-1",
    "CI_REGISTRY_PASSWORD": "cwsecret-2",
    "CI_BUILD_TOKEN": "cwsecret-3",
    "CI_DEPLOY_PASSWORD": "cwsecret-4",
    "BUILDKITE_AGENT_ACCESS_TOKEN": "bkua_cwsecret-5",
    "GITHUB_TOKEN": "ghs_cwsecret-6",
    "ACTIONS_RUNTIME_TOKEN": "cwsecret-7",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "s8",
    "NPM_TOKEN": "npm_cwsecret-9",
    "npm_config__authToken": "cwsecret-10",
    "AWS_SECRET_ACCESS_KEY": "cwsecret-11",
    "AWS_ACCESS_KEY_ID": "cwsecret-12",
    "GITHUB_API_KEY": "cwsecret-13",
    "CI_JOB_JWT": "cwsecret-14",
    "BUILDKITE_S3_SECRET_ACCESS_KEY": "cwsecret-15",
    "CI_REPOSITORY_URL": "https://gitlab-ci-token:cwsecret-16@x/r",
}
LABELS = {"GITHUB_REPOSITORY": "o/r", "CI_JOB_ID": "42", "npm_package_name": "pkg", "BUILDKITE_JOB_ID": "j-1"}


def block(env: dict[str, str]) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())


def test_exact_names_not_prefixes() -> None:
    for name in LABELS:
        assert env_wanted(name), name
    for name in (
        "GITHUB_",
        "CI_",
        "CI_JOB_IDX",
        "XCI_JOB_ID",
        "ci_job_id",
        "PATH",
        "HOME",
        "BUILDKITE_BRANCH",
        "npm_config_user_agent",
        "GITHUB_EVENT_PATH",
    ):
        assert not env_wanted(name), name


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_credentials_never_wanted(name) -> None:
    assert not env_wanted(name)


def test_no_listed_name_looks_like_a_credential() -> None:
    assert not [n for n in ENV_CAPTURE_NAMES if looks_secret(n)]
    for name in ("CI_JOB_TOKEN", "x_password", "MY_SECRET", "SSH_KEY", "KEYRING", "GH_AUTH"):
        assert looks_secret(name), name


def test_parse_env_block_keeps_labels_only() -> None:
    raw = (
        block({"PATH": "/bin", **SECRETS, **LABELS})
        + b"noequals\0=anon\0GITHUB_REPOSITORY=second\0"
        + b"npm_package_name\xff=x\0"
    )
    assert parse_env_block(raw) == LABELS
    assert parse_env_block(b"") == {} and parse_env_block(b"\0\0garbage\xff\0") == {}
    assert parse_env_block(b"npm_package_name=\xff\xfepkg\0") == {"npm_package_name": "\ufffd\ufffdpkg"}


def test_every_bundled_label_variable_is_captured() -> None:
    """contexts.yaml labels name variables: each must survive capture, or the label is always empty."""
    lists = load_rules(default_rules_dir()).lists
    used = {var for root in lists.context_roots for _, var in root.labels}
    assert used and used <= ENV_CAPTURE_NAMES


@pytest.mark.parametrize(
    "var,why", [("CI_JOB_TOKEN", "names a credential"), ("CI_COMMIT_SHA", "is not captured at exec")]
)
def test_a_label_on_a_secret_or_uncaptured_variable_is_a_rule_problem(tmp_path, var, why) -> None:
    import shutil

    rules = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), rules)
    ctx = rules / "lists" / "contexts.yaml"
    ctx.write_text(ctx.read_text().replace("job_id: CI_JOB_ID", f"job_id: {var}", 1))
    with pytest.raises(RuleErrors) as err:
        load_rules(rules)
    assert any(why in str(p) and "contexts.yaml" in str(p) for p in err.value.problems), err.value.problems


def test_decoded_exec_and_its_recording_hold_no_credential(tmp_path) -> None:
    """The kernel sends the whole block; what is decoded, kept in the table and recorded is the labels only."""
    env_block = block({**SECRETS, **LABELS})[:1000]
    rec = _exec_record(env=env_block)
    event = decode(bytes(rec))
    assert isinstance(event, Exec)
    assert set(event.env) <= set(LABELS) and event.env
    fh = io.BytesIO()
    writer = RecordingWriter(fh, {"hostname": "h"})
    table = ProcessTable()
    Pipeline(table, module_loads_from_exec=False, taps=[writer.write]).feed(event)
    writer.flush()
    data = fh.getvalue()
    assert b"GITHUB_REPOSITORY" in data or b"CI_JOB_ID" in data or b"npm_package_name" in data
    for name, value in SECRETS.items():
        assert name.encode() not in data and value.encode() not in data, name
    proc = table.lookup_event(event)
    assert proc is not None and proc.env == event.env


def test_replay_drops_credentials_an_old_recording_holds() -> None:
    """A recording made when capture took whole prefixes (CI_*, GITHUB_*) loses the tokens on replay."""
    fh = io.BytesIO()
    packer = msgpack.Packer(use_bin_type=True)
    fh.write(packer.pack({"format": "chainwatch-recording", "version": 1}))
    old = Exec(
        ktime=1,
        pid=10,
        tid=10,
        ppid=1,
        start_time=5,
        uid=0,
        cgroup_id=0,
        comm="sh",
        flags=0,
        filename="/bin/sh",
        args=("sh",),
        env={**SECRETS, **LABELS},
    )
    fh.write(packer.pack(old.to_dict()))
    fh.seek(0)
    events = list(read_recording(fh).events)
    assert len(events) == 1 and events[0].env == LABELS


def test_seeded_processes_keep_labels_only(tmp_path) -> None:
    proc = tmp_path / "proc" / "77"
    proc.mkdir(parents=True)
    (proc / "environ").write_bytes(block({**SECRETS, **LABELS}))
    assert _read_env(77, str(Path(tmp_path / "proc"))) == LABELS
