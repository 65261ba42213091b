"""Config file (TOML) -> frozen dataclasses. Unknown keys are errors; every key has a built-in default."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """The config file cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class SensorConfig:
    """Kernel-side options (compile-time constants in the BPF program) and the read loop."""

    capture_env: bool = True  # copy the environment block at exec (attribution labels)
    skip_loopback: bool = True  # drop connects/accepts to loopback in the kernel: they never count as remote
    ringbuf_pages: int = 2048  # ring buffer size in 4 KiB pages, a power of two
    net_ringbuf_pages: int = 1024  # the connect/accept/listen ring, likewise
    poll_timeout_ms: int = 100
    stats_interval_s: float = 60.0


@dataclass(frozen=True)
class LineageConfig:
    """Process table bounds."""

    grace_s: float = 30.0  # keep exited processes this long: late events still resolve
    max_entries: int = 65536


MAX_RINGBUF_PAGES = 1 << 18
MAX_POLL_TIMEOUT_MS = 60_000
DEFAULT_ALERTS_FILE = "/var/log/chainwatch/alerts.jsonl"
DEFAULT_SPOOL_DIR = "/var/lib/chainwatch/spool"


@dataclass(frozen=True)
class DetectionConfig:
    """Rules and alert outputs."""

    rules_dir: str = ""  # empty: the bundled rules
    alerts: list[str] = field(default_factory=lambda: ["-", DEFAULT_ALERTS_FILE])  # "-" is stdout
    # Alerts an output cannot take (a full disk) wait here; best on another filesystem. Empty: memory only.
    spool_dir: str = DEFAULT_SPOOL_DIR
    spool_max_mb: int = 64  # per output
    # Directories of Sigma rules (YAML as published, searched recursively), e.g. SigmaHQ's rules/linux.
    # Empty: none. The bundled rules/sigma holds the seed rule; add it here to run it.
    sigma_dirs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Config:
    """The whole agent configuration."""

    sensor: SensorConfig = field(default_factory=SensorConfig)
    lineage: LineageConfig = field(default_factory=LineageConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)

    def validate(self, source: str = "<defaults>") -> Config:
        """Check value ranges; raises ConfigError."""
        for key, pages in (("ringbuf_pages", self.sensor.ringbuf_pages),
                           ("net_ringbuf_pages", self.sensor.net_ringbuf_pages)):
            # bcc sizes a ring buffer as pages * 4096 in a C int: 2**18 pages (1 GiB) is the most that fits.
            if pages < 1 or pages & (pages - 1) or pages > MAX_RINGBUF_PAGES:
                raise ConfigError(f"{source}: sensor.{key} must be a power of two up to {MAX_RINGBUF_PAGES}, "
                                  f"not {pages}")
        # bcc passes the poll timeout as a C int; a minute already makes shutdown and the stats line late.
        if not 1 <= self.sensor.poll_timeout_ms <= MAX_POLL_TIMEOUT_MS:
            raise ConfigError(f"{source}: sensor.poll_timeout_ms must be between 1 and {MAX_POLL_TIMEOUT_MS}, "
                              f"not {self.sensor.poll_timeout_ms}")
        # Written as "not ok" so NaN fails too; inf and NaN would crash or stall the daemon's timers.
        if not 0 < self.sensor.stats_interval_s < math.inf:
            raise ConfigError(f"{source}: sensor.stats_interval_s must be positive")
        if not 0 <= self.lineage.grace_s < math.inf or self.lineage.max_entries < 1024:
            raise ConfigError(f"{source}: lineage.grace_s must be >= 0 and lineage.max_entries >= 1024")
        alerts = self.detection.alerts
        if not alerts or not all(isinstance(a, str) and a for a in alerts):
            raise ConfigError(f"{source}: detection.alerts must be a non-empty list of paths or \"-\" (stdout)")
        if not all(isinstance(d, str) and d for d in self.detection.sigma_dirs):
            raise ConfigError(f"{source}: detection.sigma_dirs must be a list of directory paths")
        paths = {"detection.rules_dir": [self.detection.rules_dir], "detection.alerts": alerts,
                 "detection.spool_dir": [self.detection.spool_dir], "detection.sigma_dirs": self.detection.sigma_dirs}
        for key, values in paths.items():
            if any("\0" in value for value in values):  # the OS would refuse it later, with a traceback
                raise ConfigError(f"{source}: {key} must not contain a NUL character")
        if not 1 <= self.detection.spool_max_mb <= 1 << 20:
            raise ConfigError(f"{source}: detection.spool_max_mb must be between 1 and 1048576 (MiB), "
                              f"not {self.detection.spool_max_mb}")
        return self


def _build(cls: type[Any], data: dict[str, Any], where: str, source: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown key {where}{unknown[0]!r}; known keys are {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {where}{name} must be a table")
            kwargs[name] = _build(type(default), value, f"{where}{name}.", source)
            continue
        expected = type(default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            raise ConfigError(f"{source}: {where}{name} must be {expected.__name__}, not {type(value).__name__}")
        kwargs[name] = value
    return cls(**kwargs)


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse TOML text into a validated Config."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    config: Config = _build(Config, data, "", source)
    return config.validate(source)


def load_config(path: str | None) -> Config:
    """The config at path, or the built-in defaults when path is None."""
    if path is None:
        return Config().validate()
    try:
        text = Path(path).read_bytes().decode("utf-8")  # TOML is UTF-8, whatever the locale
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 ({exc})") from exc
    return parse_config(text, path)
