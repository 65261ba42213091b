"""The ``chainwatch`` command line (see shared/design/contracts.md)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from agent import logs
from agent.btf import BtfError
from agent.compat import sigma_missing
from agent.config import Config, ConfigError, load_config
from agent.probes.offsets import OffsetsUnavailable
from agent.quarantine import QuarantineError
from agent.recording import RecordingError
from agent.resources import ResourceMissing
from agent.response import ResponseError
from agent.ruleset.yamlcheck import RuleErrors

USER_ERRORS = (
    ConfigError,
    RecordingError,
    OffsetsUnavailable,
    BtfError,
    PermissionError,
    RuleErrors,
    ResourceMissing,
    ResponseError,
    QuarantineError,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chainwatch", description="eBPF sensor for reverse shells and C2 in package installs and CI jobs"
    )
    sub = p.add_subparsers(dest="command", required=True)

    def detection_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--alerts",
            metavar="FILE|-",
            action="append",
            help="write alerts here (repeatable; - is stdout); replaces the configured outputs",
        )
        p.add_argument("--rules", metavar="DIR", help="rules directory (default: the bundled rules)")
        p.add_argument(
            "--sigma",
            metavar="DIR",
            action="append",
            help="a directory of Sigma rules (repeatable); replaces detection.sigma_dirs",
        )

    run = sub.add_parser("run", help="run the sensor in the foreground (root)")
    run.add_argument("--config", help="TOML config file (default: built-in defaults)")
    run.add_argument("--record", metavar="FILE", help="also write every event to FILE (msgpack stream)")
    detection_args(run)

    rec = sub.add_parser("record", help="like run, and write every decoded event to FILE")
    rec.add_argument("file")
    rec.add_argument("--config")
    detection_args(rec)

    rep = sub.add_parser("replay", help="run a recorded event stream through the pipeline (no root, no bcc)")
    rep.add_argument("file")
    rep.add_argument("--dump", action="store_true", help="print each event as one JSON line")
    detection_args(rep)

    doctor = sub.add_parser(
        "doctor", help="check kernel, BTF, tracepoints, bcc, headers, privileges and the compile cache"
    )
    doctor.add_argument("--config", help="TOML config file (its sensor.cache_dir)")

    bpf = sub.add_parser("bpf", help="BPF program tools")
    bpf_sub = bpf.add_subparsers(dest="bpf_command", required=True)
    dump = bpf_sub.add_parser("dump", help="print the exact BPF source and compiler flags")
    dump.add_argument("--config")
    dump.add_argument("--rules", metavar="DIR", help="rules directory whose persistence list the kernel filters on")
    dump.set_defaults(alerts=None, sigma=None)
    warm = bpf_sub.add_parser(
        "compile",
        help="compile the probes into the cache (sensor.cache_dir) and check that "
        "they load, so the next start skips the compile (e.g. before a restart "
        "after an upgrade)",
    )
    warm.add_argument("--config")
    warm.add_argument("--rules", metavar="DIR", help="rules directory whose persistence list the kernel filters on")
    warm.set_defaults(alerts=None, sigma=None)

    rules = sub.add_parser("rules", help="detection rule tools")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_sub.add_parser("check", help="validate every rule and list file; print each problem as file:line")
    check.add_argument("dir", nargs="?", help="rules directory (default: the bundled rules)")
    check.add_argument(
        "--sigma",
        metavar="DIR",
        action="append",
        help="check the Sigma rules in DIR (repeatable; default: DIR/sigma when it exists) and "
        "list the ones chainwatch cannot evaluate, with why",
    )

    resp = sub.add_parser("response", help="blocked addresses and quarantined files (see README, Response)")
    resp_sub = resp.add_subparsers(dest="response_command", required=True)
    for name, text in (
        ("list", "list blocked addresses (asks the running agent) and quarantined files"),
        ("unblock", "lift every block on ADDR in the running agent"),
        ("restore", "put quarantined file ID back where it was, with its mode, owner and times"),
    ):
        cmd = resp_sub.add_parser(name, help=text)
        cmd.add_argument("--config", help="TOML config file (its [response] paths)")
        if name == "unblock":
            cmd.add_argument("address")
        if name == "restore":
            cmd.add_argument("id")
            cmd.add_argument("--force", action="store_true", help="replace a file that exists at the path again")
            cmd.add_argument("--root", default="/", help="restore under this root (e.g. /proc/PID/root)")
    return p


def _run(args: argparse.Namespace, record_path: str | None) -> int:
    from agent.daemon import Agent
    from agent.probes.loader import ProbeError

    config = with_detection_args(load_config(args.config), args)
    try:
        if record_path is None:
            return Agent(config).run()
        from agent.safefile import open_private

        try:
            # Private (argv and labels), never through a symlink, in a directory only root can write.
            fh = os.fdopen(open_private(record_path, os.O_WRONLY, truncate=True), "wb")
        except OSError as exc:
            raise ConfigError(f"cannot write the recording {record_path}: {exc.strerror}") from exc
        with fh:
            return Agent(config, record=fh).run()
    except ProbeError as exc:
        return _fail(str(exc))


def with_detection_args(config: Config, args: argparse.Namespace) -> Config:
    """Apply --alerts and --rules over the config."""
    detection = config.detection
    if args.alerts:
        detection = dataclasses.replace(detection, alerts=list(args.alerts))
    if args.rules:
        detection = dataclasses.replace(detection, rules_dir=args.rules)
    if args.sigma:
        detection = dataclasses.replace(detection, sigma_dirs=list(args.sigma))
    return dataclasses.replace(config, detection=detection).validate("command line")


def _replay(args: argparse.Namespace) -> int:
    from agent.alerts import Host
    from agent.assemble import assemble
    from agent.daemon import dump_event, load_sigma_dirs
    from agent.events import FLAG_SEEDED, Event
    from agent.lineage.table import ProcessTable
    from agent.pipeline import Consumer
    from agent.recording import read_recording

    try:
        fh = open(args.file, "rb")
    except OSError as exc:
        raise RecordingError(f"cannot read {args.file}: {exc.strerror}") from exc
    with fh:
        rec = read_recording(fh)
        features = rec.meta.get("features") or {}
        consumers: list[Consumer] = []
        if args.dump:
            write = dump_event(sys.stdout)

            def dump_live(event: Event) -> None:
                # Seeded processes are table state, not events that happened during the recording.
                if not event.flags & FLAG_SEEDED:
                    write(event)

            consumers.append(dump_live)
        rules = sigma = sink = None
        if args.alerts:
            from agent.ruleset.load import default_rules_dir, load_rules
            from agent.sinks import AlertSink

            rules = load_rules(args.rules or default_rules_dir())
            sigma = load_sigma_dirs(list(args.sigma or []))
            sink = AlertSink(list(args.alerts))
        host = Host(str(rec.meta.get("hostname", "")), str(rec.meta.get("host_id", "")))
        pipeline = assemble(
            rules,
            ProcessTable(),
            [sink.put] if sink is not None else [],
            host=host,
            boot_offset_ns=int(rec.meta.get("boot_offset_ns", 0)),
            sigma=sigma,
            module_loads_from_exec=features.get("module_load_source") == "exec",
            consumers=consumers,
        )
        for event in rec.events:
            pipeline.feed(event)
        if sink is not None:
            sink.close()
        sys.stdout.flush()
    log = structlog.get_logger()
    for error in rec.errors:
        log.warning("recording_damaged", file=args.file, detail=error)
    log.info("replay_done", file=args.file, **pipeline.stats())
    return 1 if rec.errors else 0


def _bpf_dump(args: argparse.Namespace) -> int:
    from agent.daemon import probe_options
    from agent.probes.loader import build_program
    from agent.probes.source import source_files

    program = build_program(probe_options(with_detection_args(load_config(args.config), args)))
    print(f"// offsets from: {program.offsets.source}")
    print(f"// features: {program.features.describe()}")
    print("// cflags: " + " ".join(program.cflags))
    for number, btf_id in program.kfuncs.items():
        print(f"// calls of helper {number:#x} are made calls of kfunc BTF id {btf_id} when compiled (kfunc_calls)")
    print("// files (each starts at its #line 1): " + " ".join(source_files(program.text)))
    print(program.text, end="")
    return 0


def _bpf_compile(args: argparse.Namespace) -> int:
    from agent.daemon import probe_options
    from agent.probes.loader import ProbeError, open_sensor

    config = with_detection_args(load_config(args.config), args)
    if not config.sensor.cache_dir:
        return _fail("sensor.cache_dir is empty in this config: there is no cache to fill")
    try:
        # The same path as a start (compile in a child, load, attach, cache what loaded), then unload at once.
        sensor = open_sensor(probe_options(config), config.sensor.cache_dir)
    except ProbeError as exc:
        return _fail(str(exc))
    sensor.close()
    print(
        f"probes {sensor.startup['compile']} in {config.sensor.cache_dir}: the next start loads them without compiling"
    )
    return 0


def _rules_check(args: argparse.Namespace) -> int:
    from agent.ruleset.load import default_rules_dir, load_rules

    directory = args.dir or default_rules_dir()
    failed = False
    try:
        ruleset = load_rules(directory)
    except RuleErrors as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        failed = True
    else:
        print(f"{len(ruleset.rules)} rules OK ({directory})")
    bundled = Path(directory) / "sigma"
    sigma_dirs = list(args.sigma or ([str(bundled)] if bundled.is_dir() else []))
    missing = sigma_missing() if sigma_dirs else None
    if missing is not None:
        # The bundled Sigma seed has a native twin in the rules above: without pySigma nothing is lost.
        print(f"Sigma rules not checked ({', '.join(sigma_dirs)}): {missing}", file=sys.stderr)
        failed = failed or bool(args.sigma)
    elif sigma_dirs:
        from agent.sigma import read_sigma

        sigma, problems = read_sigma(sigma_dirs)
        for problem in problems:
            print(problem, file=sys.stderr)
        # Not errors: valid rules for logsources, fields or modifiers chainwatch does not evaluate.
        for rule in sigma.unsupported:
            print(f"{rule.file}:{rule.line}: cannot evaluate: {rule.reason}")
        verdict = f"{len(problems)} invalid" if problems else "OK"
        print(
            f"{len(sigma.rules)} Sigma rules {verdict}, {len(sigma.unsupported)} not evaluable "
            f"({', '.join(sigma_dirs)})"
        )
        failed = failed or bool(problems)
    return 1 if failed else 0


def _response(args: argparse.Namespace) -> int:
    import json

    from agent.quarantine import QuarantineStore
    from agent.response import control_request, quarantine_listing

    config = load_config(args.config).response
    if args.response_command == "restore":
        meta = QuarantineStore(config.quarantine_dir).restore(args.id, root=args.root, force=args.force)
        print(f"restored {meta.original_path} from quarantine entry {meta.id} (sha256 {meta.sha256})")
        return 0
    if args.response_command == "unblock":
        reply = control_request(config.control_socket, {"cmd": "unblock", "address": args.address})
        if not reply.get("ok"):
            return _fail(str(reply.get("error")))
        print(f"unblocked {args.address} ({reply['removed']} entries removed)")
        return 0
    try:
        agent = control_request(config.control_socket, {"cmd": "list"})
    except ResponseError as exc:
        agent = {"ok": False, "error": str(exc), "blocks": []}
    print(json.dumps({"agent": agent, "quarantine": quarantine_listing(config.quarantine_dir)}, indent=2))
    return 0


def _fail(sentence: str) -> int:
    print(f"chainwatch: {sentence}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``chainwatch`` console script."""
    args = _parser().parse_args(argv)
    logs.configure()
    try:
        if args.command == "run":
            return _run(args, args.record)
        if args.command == "record":
            return _run(args, args.file)
        if args.command == "replay":
            return _replay(args)
        if args.command == "doctor":
            from agent.doctor import run_doctor

            return run_doctor(config=load_config(args.config))
        if args.command == "bpf":
            return _bpf_compile(args) if args.bpf_command == "compile" else _bpf_dump(args)
        if args.command == "rules":
            return _rules_check(args)
        if args.command == "response":
            return _response(args)
    except USER_ERRORS as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    return _fail(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
