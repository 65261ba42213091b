"""The ``chainwatch`` command line (see shared/design/contracts.md)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

import structlog

from agent import logs
from agent.btf import BtfError
from agent.config import Config, ConfigError, load_config
from agent.detect.rules import RuleErrors
from agent.probes.offsets import OffsetsUnavailable
from agent.recording import RecordingError

USER_ERRORS = (ConfigError, RecordingError, OffsetsUnavailable, BtfError, PermissionError, RuleErrors)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chainwatch", description="eBPF sensor for reverse shells and C2 in "
                                "package installs and CI jobs")
    sub = p.add_subparsers(dest="command", required=True)

    def detection_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--alerts", metavar="FILE|-", action="append",
                       help="write alerts here (repeatable; - is stdout); replaces the configured outputs")
        p.add_argument("--rules", metavar="DIR", help="rules directory (default: the bundled rules)")

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

    sub.add_parser("doctor", help="check kernel, BTF, tracepoints, bcc, headers and privileges")

    bpf = sub.add_parser("bpf", help="BPF program tools")
    bpf_sub = bpf.add_subparsers(dest="bpf_command", required=True)
    dump = bpf_sub.add_parser("dump", help="print the exact BPF source and compiler flags")
    dump.add_argument("--config")
    dump.add_argument("--rules", metavar="DIR", help="rules directory whose persistence list the kernel filters on")
    dump.set_defaults(alerts=None)

    rules = sub.add_parser("rules", help="detection rule tools")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_sub.add_parser("check", help="validate every rule and list file; print each problem as file:line")
    check.add_argument("dir", nargs="?", help="rules directory (default: the bundled rules)")
    return p


def _run(args: argparse.Namespace, record_path: str | None) -> int:
    from agent.daemon import Agent
    from agent.probes.loader import ProbeError

    config = with_detection_args(load_config(args.config), args)
    try:
        if record_path is None:
            return Agent(config).run()
        try:
            fh = open(record_path, "wb")
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
    return dataclasses.replace(config, detection=detection).validate("command line")


def _replay(args: argparse.Namespace) -> int:
    from agent.daemon import dump_event
    from agent.events import FLAG_SEEDED, Event
    from agent.lineage.table import ProcessTable
    from agent.pipeline import Consumer, Pipeline
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
        table = ProcessTable()
        sink = None
        tagger = None
        if args.alerts:
            from agent.alerts import Host
            from agent.context import ContextTagger
            from agent.detect.engine import DetectionEngine
            from agent.detect.rules import default_rules_dir, load_rules
            from agent.sinks import AlertSink

            rules = load_rules(args.rules or default_rules_dir())
            sink = AlertSink(list(args.alerts))
            host = Host(str(rec.meta.get("hostname", "")), str(rec.meta.get("host_id", "")))
            consumers.append(DetectionEngine(rules, table, host, sink.put, int(rec.meta.get("boot_offset_ns", 0))))
            tagger = ContextTagger(rules.lists, table)
        pipeline = Pipeline(table, module_loads_from_exec=features.get("module_load_source") == "exec",
                            consumers=consumers, tagger=tagger)
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

    program = build_program(probe_options(with_detection_args(load_config(args.config), args)))
    print(f"// offsets from: {program.offsets.source}")
    print(f"// features: {program.features.describe()}")
    print("// cflags: " + " ".join(program.cflags))
    print(program.text)
    return 0


def _rules_check(args: argparse.Namespace) -> int:
    from agent.detect.rules import default_rules_dir, load_rules

    directory = args.dir or default_rules_dir()
    try:
        ruleset = load_rules(directory)
    except RuleErrors as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    print(f"{len(ruleset.rules)} rules OK ({directory})")
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
            return run_doctor()
        if args.command == "bpf":
            return _bpf_dump(args)
        if args.command == "rules":
            return _rules_check(args)
    except USER_ERRORS as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    return _fail(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
