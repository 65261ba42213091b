"""Property-based fuzzing of the three parsers of outside input: the decoder, the rule loader and the config loader
(the one home of the fuzzers: tests/unit/test_decode.py, test_rules.py and test_config.py hold the examples).

Most start from valid input (well-formed records, the bundled rules and lists, the packaged config) and mutate
it, so the examples reach past the first syntax check; the others generate plausible input from scratch (records
of a known op and size, YAML over the rule keys, TOML over the config keys). The property is the same
everywhere: the parser returns its value or raises its own documented error with a message a person can act on,
and nothing else escapes. Bounded (max_examples, no deadline) so the file runs in seconds.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent import events as ev
from agent.abi import layout
from agent.config import Config, ConfigError, LineageConfig, SensorConfig, load_config, parse_config
from agent.decode import HEADER_SIZE, DecodeError, decode
from agent.ruleset.load import check_rules, default_lists_dir, default_rules_dir, load_rules, rule_files
from agent.ruleset.rules import RuleSet
from agent.ruleset.yamlcheck import RuleErrors
from tests.unit.test_decode import put_bytes

ROOT = Path(__file__).resolve().parents[2]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW_FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- generic text and byte mutations ----------------------------------------------------------------------


def _lines_mutation(draw: st.DrawFn, text: str, tokens: st.SearchStrategy[str]) -> str:
    """One structural change to ``text``: drop, repeat, swap, re-indent, cut or splice lines and values."""
    lines = text.split("\n")
    i = draw(st.integers(0, len(lines) - 1))
    how = draw(st.sampled_from(["drop", "repeat", "swap", "indent", "value", "insert", "cut", "char"]))
    if how == "drop":
        del lines[i]
    elif how == "repeat":
        lines.insert(i, lines[i])
    elif how == "swap":
        j = draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
    elif how == "indent":
        lines[i] = draw(st.sampled_from(["", " ", "  ", "    ", "\t"])) + lines[i].lstrip()
    elif how == "value":
        # Keep the key, replace what follows it: reaches the type and range checks.
        for sep in (" = ", ": ", "- "):
            if sep in lines[i]:
                lines[i] = lines[i].split(sep, 1)[0] + sep + draw(tokens)
                break
        else:
            lines[i] += draw(tokens)
    elif how == "insert":
        lines.insert(i, draw(tokens))
    elif how == "cut":
        joined = "\n".join(lines)
        return joined[: draw(st.integers(0, len(joined)))]
    else:
        pos = draw(st.integers(0, len(lines[i])))
        lines[i] = lines[i][:pos] + draw(st.characters(codec="utf-8")) + lines[i][pos + 1 :]
    return "\n".join(lines)


def mutated(seeds: list[str], tokens: st.SearchStrategy[str], max_steps: int = 4) -> st.SearchStrategy[str]:
    """A seed text with 1..max_steps mutations."""

    @st.composite
    def build(draw: st.DrawFn) -> str:
        text = draw(st.sampled_from(seeds))
        for _ in range(draw(st.integers(1, max_steps))):
            text = _lines_mutation(draw, text, tokens)
        return text

    return build()


def assert_clear(message: str) -> None:
    """A message a person can act on: one line, not empty, no Python object reprs."""
    assert message.strip(), "empty error message"
    assert "Traceback" not in message and "object at 0x" not in message, message


# --- the decoder ------------------------------------------------------------------------------------------

_TEXT_FIELDS = {
    "filename": b"/usr/bin/bash",
    "args": b"bash\0-i\0",
    "env": b"GITHUB_RUN_ID=7\0HOME=/root\0",
    "path": b"/etc/cron.d/x",
    "source": b"/tmp/x",
}
_INT_TYPES: dict[type, tuple[int, int]] = {
    layout.u8: (0, 2**8 - 1),
    layout.u16: (0, 2**16 - 1),
    layout.u32: (0, 2**32 - 1),
    layout.u64: (0, 2**64 - 1),
    layout.s32: (-(2**31), 2**31 - 1),
}


def valid_record(op: int) -> bytes:
    """A well-formed record of kind ``op``: header filled, text fields with their lengths, a TCP/IPv4 peer."""
    record = layout.OP_RECORD[op]
    r = layout.OP_STRUCT[op]()
    r.hdr.op, r.hdr.ktime, r.hdr.tgid, r.hdr.pid, r.hdr.ppid = op, 10**9, 4242, 4242, 1
    r.hdr.start_time, r.hdr.uid, r.hdr.comm = 5 * 10**8, 1000, b"bash"
    names = {name for name, _, _ in record.fields}
    for name, data in _TEXT_FIELDS.items():
        if name in names and f"{name}_len" in names:
            put_bytes(r, name, data)
            setattr(r, f"{name}_len", len(data))
    if "family" in names:
        r.family, r.sock_type, r.port = 2, 1, 4444
        r.addr[:4] = [198, 51, 100, 2]
    if "stdio_sock_fd" in names:
        r.stdio_sock_fd = -1
    size = ctypes.sizeof(r)
    if record.tail:  # sent cut after the tail's used bytes, as the kernel does
        size = layout.min_size(op) + getattr(r, f"{record.tail}_len")
    r.hdr.size = size
    raw = bytes(r)[:size]
    return raw + bytes(-len(raw) % 8)


VALID_RECORDS = {op: valid_record(op) for op in sorted(set(layout.OPS.values()))}


def test_valid_records_decode() -> None:
    """The seeds are valid: each decodes to an event (so the mutations below start from a real record)."""
    for raw in VALID_RECORDS.values():
        assert isinstance(decode(raw), ev.Event)


@st.composite
def mutated_records(draw: st.DrawFn) -> bytes:
    """A valid record with a few byte-level or field-level changes."""
    op = draw(st.sampled_from(sorted(VALID_RECORDS)))
    raw = bytearray(VALID_RECORDS[op])
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "bytes", "field", "size", "cut", "extend"]))
        if how == "flip" and raw:
            pos = draw(st.integers(0, len(raw) - 1))
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif how == "bytes" and raw:
            pos = draw(st.integers(0, len(raw) - 1))
            chunk = draw(st.binary(min_size=1, max_size=16))
            raw[pos : pos + len(chunk)] = chunk
        elif how == "field" and len(raw) >= HEADER_SIZE:
            # An integer field set to an edge value: lengths past their arrays, odd families, negative fds.
            struct = layout.OP_STRUCT[op]
            ints = [(name, ctype) for name, ctype, length in layout.OP_RECORD[op].fields if not length]
            if ints and len(raw) >= ctypes.sizeof(struct):
                name, ctype = draw(st.sampled_from(ints))
                lo, hi = _INT_TYPES[ctype]
                r = struct.from_buffer_copy(bytes(raw[: ctypes.sizeof(struct)]))
                setattr(r, name, draw(st.sampled_from([lo, hi, 0, 1, -1 if lo < 0 else hi - 1]) | st.integers(lo, hi)))
                raw[: ctypes.sizeof(struct)] = bytes(r)
        elif how == "size" and len(raw) >= HEADER_SIZE:
            h = layout.EventHeader.from_buffer_copy(bytes(raw[:HEADER_SIZE]))
            h.size = draw(st.integers(0, 2**32 - 1) | st.integers(max(0, len(raw) - 16), len(raw) + 16))
            raw[:HEADER_SIZE] = bytes(h)
        elif how == "cut":
            del raw[draw(st.integers(0, len(raw))) :]
        elif how == "extend":
            raw += draw(st.binary(max_size=64))
    return bytes(raw)


def check_decode(raw: bytes) -> None:
    try:
        event = decode(raw)
    except DecodeError as exc:
        assert_clear(str(exc))
        return
    assert isinstance(event, ev.Event) and event.type in ev.EVENT_TYPES
    assert ev.event_from_dict(event.to_dict()) == event  # what record/replay does with it


@FUZZ
@given(mutated_records())
def test_decode_mutated_records(raw: bytes) -> None:
    """Mutated valid records only ever decode to an Event (that round-trips) or raise a clear DecodeError."""
    check_decode(raw)


@FUZZ
@given(
    st.binary(max_size=512)
    | st.sampled_from(sorted(VALID_RECORDS)).flatmap(
        lambda op: st.binary(max_size=len(VALID_RECORDS[op])).map(lambda tail: VALID_RECORDS[op][:HEADER_SIZE] + tail)
    )
)
def test_decode_arbitrary_bytes_and_bodies(raw: bytes) -> None:
    """Arbitrary bytes, and a valid header followed by an arbitrary body: an Event or a clear DecodeError."""
    check_decode(raw)


@st.composite
def plausible_records(draw: st.DrawFn) -> bytes:
    """Records with a known op and a self-consistent size but random field values (reaches the builders)."""
    op = draw(st.sampled_from(sorted(set(layout.OPS.values()))))
    r = layout.OP_STRUCT[op]()
    for name, ctype, length in layout.OP_RECORD[op].fields:
        if length:
            put_bytes(r, name, draw(st.binary(max_size=min(length, 48))))
        else:
            lo, hi = _INT_TYPES[ctype]
            small = st.integers(max(lo, 0), min(hi, 300))  # lengths and enums that mostly fit
            setattr(r, name, draw(st.one_of(small, st.integers(lo, hi))))
    for name, _ in layout.EventHeader._fields_:
        if name == "comm":
            r.hdr.comm = draw(st.binary(max_size=16))
        elif name not in ("op", "size"):
            lo, hi = _INT_TYPES[dict(layout.EventHeader._fields_)[name]]
            setattr(r.hdr, name, draw(st.integers(lo, hi)))
    r.hdr.op = op
    r.hdr.size = size = draw(st.integers(layout.min_size(op), ctypes.sizeof(r)))
    padding = draw(st.integers(0, 7))
    return bytes(r)[:size] + draw(st.binary(min_size=padding, max_size=padding))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plausible_records())
def test_decode_plausible_records(raw: bytes) -> None:
    """Records with a valid op and size but random contents: an Event (that round-trips) or a clear DecodeError."""
    check_decode(raw)


# --- the rule loader --------------------------------------------------------------------------------------

YAML_TOKENS = st.sampled_from(
    [
        "",
        "~",
        "null",
        "[]",
        "{}",
        "true",
        "0",
        "-1",
        "70000",
        "1e400",
        ".nan",
        "'x'",
        '"\\u0000"',
        "2021-13-45",
        "2021-01-01",
        "!!binary aGk=",
        "!!set {a}",
        "!!python/object:os.system x",
        "&a x",
        "*a",
        "*missing",
        "<<: *a",
        "[[[[[[",
        "{a: [b, {c: d}]}",
        "- x",
        "? x",
        "|\n  block",
        ">",
        "'unterminated",
        "x" * 300,
        "ünïcödé",
        "\t",
        "T1059",
        "T1059.004",
        "high",
        "critical",
        "low",
        "stable",
        "experimental",
        "tunnel_tool",
        "sigma:x",
        "0b8f3f4e-1c39-4b8a-9d2e-6f1e2a3b4c5d",
        "10.0.0.0/8",
        "10.0.0.1/8",
        "::1",
        "/usr/bin/*",
        "relative/path",
        "https://example.org/x",
        "[1, 2, 2]",
        "[a, a]",
        "[/bin/sh]",
        "{process_executables: [x]}",
    ]
) | st.text(max_size=12)

RULE_SEEDS = [p.read_text(encoding="utf-8") for p in rule_files(default_rules_dir())]
LIST_FILES = sorted(default_lists_dir().glob("*.yaml"))
LIST_SEEDS = {p.name: p.read_text(encoding="utf-8") for p in LIST_FILES}


def line_count(raw: bytes) -> int:
    """Lines as YAML counts them: \r, \r\n, \x85, \u2028 and \u2029 also end a line (str.splitlines() knows
    them all, and a few more, which only makes this an upper bound)."""
    try:
        return len(raw.decode("utf-8").splitlines()) + 1
    except UnicodeDecodeError:
        return raw.count(b"\n") + 1


def check_rules_dir(directory: Path, lists_dir: Path) -> None:
    """load_rules gives a RuleSet or RuleErrors whose every problem has a file in the tree, a line in that
    file and a reason; check_rules reports the same problems."""
    try:
        ruleset = load_rules(directory, lists_dir)
    except RuleErrors as exc:
        assert exc.problems, "RuleErrors without a problem"
        for problem in exc.problems:
            path = Path(problem.file)
            assert path == directory or path == lists_dir or path.parent in (directory, lists_dir), problem
            lines = line_count(path.read_bytes()) if path.is_file() else 1
            assert 1 <= problem.line <= lines, f"{problem} (the file has {lines} lines)"
            assert_clear(problem.reason)
            assert "\n" not in problem.reason, problem
            assert str(problem) in str(exc)
        assert check_rules(directory, lists_dir) == exc.problems
        return
    assert isinstance(ruleset, RuleSet)
    assert check_rules(directory, lists_dir) == []


@SLOW_FUZZ
@given(mutated(RULE_SEEDS, YAML_TOKENS))
def test_rule_loader_mutated_rules(text: str) -> None:
    """A bundled rule with a few mutations: loads, or every problem is reported with file, line and reason."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "fuzzed-rule.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        check_rules_dir(Path(tmp), default_lists_dir())


@SLOW_FUZZ
@given(
    st.sampled_from(sorted(LIST_SEEDS)).flatmap(
        lambda name: mutated([LIST_SEEDS[name]], YAML_TOKENS).map(lambda text: (name, text))
    )
)
def test_rule_loader_mutated_lists(named: tuple[str, str]) -> None:
    """A bundled list with a few mutations, beside the bundled rules: loads, or clear located problems."""
    name, text = named
    with tempfile.TemporaryDirectory() as tmp:
        rules, lists = Path(tmp) / "rules", Path(tmp) / "rules" / "lists"
        shutil.copytree(default_lists_dir(), lists)
        for path in rule_files(default_rules_dir()):
            shutil.copy(path, rules / path.name)
        (lists / name).write_text(text, encoding="utf-8", errors="surrogatepass")
        check_rules_dir(rules, lists)


@SLOW_FUZZ
@given(
    st.binary(max_size=300)
    | st.sampled_from(RULE_SEEDS).flatmap(
        lambda seed: st.integers(0, len(seed)).flatmap(
            lambda pos: st.binary(min_size=1, max_size=4).map(lambda b: seed.encode()[:pos] + b + seed.encode()[pos:])
        )
    )
)
@example(data=b"\r!")  # a lone CR ends a line for YAML: the problem is on line 2 (found by CI)
def test_rule_loader_arbitrary_bytes(data: bytes) -> None:
    """Raw bytes (not UTF-8, NULs, BOMs) in a rule file: a RuleSet or located problems, nothing else."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "fuzzed-rule.yaml").write_bytes(data)
        check_rules_dir(Path(tmp), default_lists_dir())


RULE_KEYS = [
    "id",
    "name",
    "description",
    "detector",
    "severity",
    "maturity",
    "mitre",
    "false_positives",
    "exceptions",
    "references",
    "seed",
    "destination_cidrs",
    "destination_ports",
    "<<",
]
RULE_TOKENS = st.sampled_from(
    [
        *RULE_KEYS,
        ": ",
        "\n",
        "\n  ",
        "- ",
        "[",
        "]",
        "{",
        "}",
        ", ",
        "&a ",
        "*a",
        "!!str ",
        "!x ",
        "!!binary ",
        "!!set ",
        "? ",
        "'",
        '"',
        "#",
        "|",
        ">",
        "---\n",
        "...\n",
        "%YAML 1.1\n",
        "\t",
        "\x00",
        "\ufeff",
        "T1059",
        "83dcd9f6-9ca8-4af7-a16e-a1c7a6b51871",
        "high",
        "tunnel_tool",
        "null",
        "~",
        "true",
        "1",
        "-1",
        "2021-13-45",
        "0x1F",
        "10.0.0.0/8",
        "::1",
    ]
)
YAMLISH = st.lists(st.one_of(RULE_TOKENS, st.text(max_size=4)), max_size=40).map("".join)
YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(RULE_KEYS), inner, max_size=4),
    max_leaves=12,
)
RULE_DOCUMENTS = st.dictionaries(st.sampled_from(RULE_KEYS), YAML_VALUES, max_size=12).map(yaml.safe_dump)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(YAMLISH, RULE_DOCUMENTS, st.text(max_size=200)))
def test_rule_loader_any_text(text: str) -> None:
    """Whatever a rule file holds (YAML-ish tokens, documents over the rule keys, any text): a RuleSet or
    located problems, never anything else."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "fuzzed.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        check_rules_dir(Path(tmp), default_lists_dir())


# --- the config loader ------------------------------------------------------------------------------------

TOML_TOKENS = st.sampled_from(
    [
        "",
        "true",
        "false",
        "0",
        "-1",
        "1",
        "3",
        "1024",
        "4096",
        "1048577",
        "9223372036854775807",
        "-9223372036854775808",
        "0.0",
        "-0.0",
        "1e308",
        "inf",
        "-inf",
        "nan",
        "1.5",
        '""',
        '"-"',
        '"\\u0000"',
        '"/tmp/x\\u0000y"',
        "'lit'",
        "[]",
        '["-"]',
        "[1, 2]",
        '["", "-"]',
        "{}",
        "{ a = 1 }",
        "1979-05-27T07:32:00Z",
        "1979-05-27",
        "07:32:00",
        "[[x]]",
        "[sensor]",
        "[lineage]",
        "[detection]",
        "[detection.alerts]",
        "sensor.capture_env = true",
        "bogus = 1",
        "= 1",
        "x = ",
        '"unterminated',
        "0x1F",
        "0o17",
        "0b101",
        "1_000",
        "+1",
    ]
) | st.text(max_size=10)

CONFIG_SEED = (ROOT / "packaging" / "chainwatch.toml").read_text(encoding="utf-8")


def check_config_text(text: str, source: str = "fuzz.toml") -> None:
    """parse_config gives a usable Config or a ConfigError that names the source."""
    try:
        config = parse_config(text, source)
    except ConfigError as exc:
        message = str(exc)
        assert_clear(message)
        assert message.startswith(f"{source}: "), message
        return
    check_usable(config)


def check_usable(config: Config) -> None:
    """A config that loads can be used as the daemon uses it: nothing it does with the values can fail."""
    assert isinstance(config, Config)
    assert config.validate() is config
    pages = config.sensor.ringbuf_pages
    assert pages >= 1 and pages & (pages - 1) == 0
    # bcc takes the poll timeout as a C int, and the ring buffer's byte size is a C int expression.
    ctypes.c_int(config.sensor.poll_timeout_ms)
    assert config.sensor.poll_timeout_ms <= 2**31 - 1 and pages * 4096 <= 2**31 - 1
    assert math.isfinite(config.sensor.stats_interval_s) and config.sensor.stats_interval_s > 0
    assert math.isfinite(config.lineage.grace_s) and config.lineage.grace_s >= 0
    int(config.lineage.grace_s * 1e9)
    assert config.detection.alerts and all(isinstance(a, str) and a and "\0" not in a for a in config.detection.alerts)
    assert "\0" not in config.detection.spool_dir + config.detection.rules_dir
    assert config.detection.spool_max_mb << 20 > 0


def test_config_seed_is_valid() -> None:
    """The seed (the packaged config) loads, so the mutations start from a valid file."""
    check_usable(parse_config(CONFIG_SEED))


@FUZZ
@given(mutated([CONFIG_SEED], TOML_TOKENS))
def test_config_mutated(text: str) -> None:
    """The packaged config with a few mutations: a usable Config, or a ConfigError naming the file."""
    check_config_text(text)


CONFIG_VALUES = st.one_of(
    st.booleans().map(lambda b: "true" if b else "false"),
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(
        lambda f: "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf") if math.isinf(f) else repr(f)
    ),
    st.text(alphabet="abc 1", max_size=5).map(lambda s: f'"{s}"'),
    st.just("[1, 2]"),
    st.just("{ a = 1 }"),
    st.just("1979-05-27T07:32:00Z"),
)
CONFIG_KEYS = st.sampled_from(
    [f.name for f in dataclasses.fields(SensorConfig)] + [f.name for f in dataclasses.fields(LineageConfig)] + ["bogus"]
)


@st.composite
def toml_docs(draw: st.DrawFn) -> str:
    """Well-formed TOML over the real sensor and lineage keys (and one unknown), with values of any type."""
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        lines.append(f"{draw(CONFIG_KEYS)} = {draw(CONFIG_VALUES)}")
    for section in draw(st.lists(st.sampled_from(["sensor", "lineage", "other"]), max_size=3, unique=True)):
        lines.append(f"[{section}]")
        keys = draw(st.lists(CONFIG_KEYS, max_size=5, unique=True))
        lines += [f"{key} = {draw(CONFIG_VALUES)}" for key in keys]
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None)
@given(toml_docs() | st.text(max_size=200))
def test_config_random_toml_and_text(text: str) -> None:
    """Random well-formed TOML over the real keys, and random text: a usable Config or a ConfigError naming the
    source."""
    check_config_text(text)


@FUZZ
@given(
    st.binary(max_size=200)
    | st.integers(0, len(CONFIG_SEED)).flatmap(
        lambda pos: st.binary(min_size=1, max_size=4).map(
            lambda b: CONFIG_SEED.encode()[:pos] + b + CONFIG_SEED.encode()[pos:]
        )
    )
)
def test_config_file_arbitrary_bytes(data: bytes) -> None:
    """load_config on a file of raw bytes (not UTF-8, NULs): a usable Config or a ConfigError naming the file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzzed.toml"
        path.write_bytes(data)
        try:
            config = load_config(str(path))
        except ConfigError as exc:
            assert_clear(str(exc))
            assert str(path) in str(exc)
            return
        check_usable(config)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[sensor]\npoll_timeout_ms = 9223372036854775807\n", "sensor.poll_timeout_ms"),
        ("[sensor]\nringbuf_pages = 4611686018427387904\n", "sensor.ringbuf_pages"),
        ('[detection]\nalerts = ["/tmp/a\\u0000b"]\n', "detection.alerts must not contain a NUL"),
        ('[detection]\nspool_dir = "/x\\u0000"\n', "detection.spool_dir must not contain a NUL"),
        ("[detection]\nspool_max_mb = 0\n", "detection.spool_max_mb"),
    ],
)
def test_config_values_the_daemon_cannot_use_are_errors(text: str, needle: str) -> None:
    """Values that would crash the daemon later (a poll timeout too big for bcc's C int, a ring buffer past
    1 GiB, a NUL in a path) are ConfigErrors at load time, naming the key."""
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        parse_config(text, "x.toml")
