"""Config file (TOML) -> frozen dataclasses. Unknown keys are errors; every key has a built-in default."""

from __future__ import annotations

import dataclasses
import math
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agent.compat import tomllib


class ConfigError(ValueError):
    """The config file cannot be used; the message names the file and the key."""


KERNEL_DEFINE: Final = "kernel_define"  # field metadata: the BPF program is compiled with -D<NAME>=<value>


def _kernel(default: bool | int) -> Any:
    """A compile-time constant of the BPF program, declared here once: its default is the config's and the
    probe options', and agent/probes/source.py passes it as -D<FIELD NAME IN CAPITALS>; the C has no default."""
    return field(default=default, metadata={KERNEL_DEFINE: True})


@dataclass(frozen=True)
class SensorConfig:
    """Kernel-side options (compile-time constants in the BPF program) and the read loop."""

    capture_env: bool = _kernel(True)  # copy the environment block at exec (attribution labels)
    skip_loopback: bool = _kernel(True)  # drop connects/accepts to loopback in the kernel: they never count as remote
    ringbuf_pages: int = _kernel(2048)  # ring buffer size in 4 KiB pages, a power of two
    net_ringbuf_pages: int = _kernel(1024)  # the connect/accept/listen ring, likewise
    file_ringbuf_pages: int = _kernel(256)  # the persistence (file write) ring, likewise
    poll_timeout_ms: int = 100
    stats_interval_s: float = 60.0
    # Compiled probes are kept here and loaded without compiling at the next start ("" = compile every time).
    cache_dir: str = "/var/cache/chainwatch"

    def kernel_defines(self) -> dict[str, int]:
        """The C defines of the kernel-side options: {"CAPTURE_ENV": 1, "RINGBUF_PAGES": 2048, ...}."""
        return {
            f.name.upper(): int(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.metadata.get(KERNEL_DEFINE)
        }


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
    alerts_format: str = "ecs"  # document format of the alerts files and stdout: "ecs" or "ocsf"
    # Directories of Sigma rules (YAML as published, searched recursively), e.g. SigmaHQ's rules/linux.
    # Empty: none. The bundled rules/sigma holds the seed rule; add it here to run it.
    sigma_dirs: list[str] = field(default_factory=list)


FORMATS = ("ecs", "ocsf")  # alert document formats (agent/formats.py renders them)
SYSLOG_TRANSPORTS = ("unix", "udp", "tcp", "tls")
SYSLOG_FACILITIES = {
    "kern": 0,
    "user": 1,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "authpriv": 10,
    **{f"local{i}": 16 + i for i in range(8)},
}
DEFAULT_JOURNAL_SOCKET = "/run/systemd/journal/socket"
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110 5.6.2)


@dataclass(frozen=True)
class JournaldConfig:
    """Alerts to systemd-journald, as structured entries over its native protocol."""

    enabled: bool = False
    socket: str = DEFAULT_JOURNAL_SOCKET
    format: str = "ecs"  # of the CHAINWATCH_ALERT field (the whole alert)


@dataclass(frozen=True)
class SyslogConfig:
    """Alerts as RFC 5424 syslog messages to a local socket or a collector."""

    enabled: bool = False
    transport: str = "unix"  # unix (a local socket such as /dev/log), udp, tcp, tls
    address: str = "/dev/log"  # a socket path for unix, host:port otherwise
    facility: str = "authpriv"  # alerts carry command lines: the facility syslog daemons keep private
    format: str = "ecs"  # of the message body (the whole alert as JSON)
    ca_file: str = ""  # tls: the CA bundle that signs the collector's certificate; empty: the system's
    timeout_s: float = 5.0  # connect and send


@dataclass(frozen=True)
class WebhookConfig:
    """Alerts POSTed as JSON arrays to an HTTPS endpoint."""

    enabled: bool = False
    url: str = ""  # https://host[:port]/path
    format: str = "ecs"
    ca_file: str = ""  # the CA bundle that signs the endpoint's certificate; empty: the system's
    verify_tls: bool = True  # false accepts any certificate: for a lab only
    auth_header: str = "Authorization"  # the header that carries the secret below (if any)
    auth_header_file: str = ""  # a file whose content is that header's value, e.g. "Bearer ..."
    auth_header_env: str = ""  # or the name of an environment variable holding it
    batch_max: int = 100  # alerts per request
    batch_max_kb: int = 1024  # bytes per request (a single larger alert still goes alone)
    timeout_s: float = 10.0  # connect and response


@dataclass(frozen=True)
class OutputsConfig:
    """Alert outputs besides stdout and files. Each goes through its own spool (see detection.spool_dir)."""

    journald: JournaldConfig = field(default_factory=JournaldConfig)
    syslog: SyslogConfig = field(default_factory=SyslogConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)

    def validate(self, source: str) -> None:
        """Check each output's keys; raises ConfigError naming the key."""
        for name, fmt in (
            ("journald", self.journald.format),
            ("syslog", self.syslog.format),
            ("webhook", self.webhook.format),
        ):
            if fmt not in FORMATS:
                raise ConfigError(f"{source}: outputs.{name}.format must be one of {list(FORMATS)}, not {fmt!r}")
        for key, value in (
            ("journald.socket", self.journald.socket),
            ("syslog.address", self.syslog.address),
            ("syslog.ca_file", self.syslog.ca_file),
            ("webhook.url", self.webhook.url),
            ("webhook.ca_file", self.webhook.ca_file),
            ("webhook.auth_header_file", self.webhook.auth_header_file),
        ):
            if "\0" in value:
                raise ConfigError(f"{source}: outputs.{key} must not contain a NUL character")
        timeouts = (("syslog.timeout_s", self.syslog.timeout_s), ("webhook.timeout_s", self.webhook.timeout_s))
        for key, timeout in timeouts:
            if not 0 < timeout <= 300:
                raise ConfigError(f"{source}: outputs.{key} must be between 0 and 300 seconds, not {timeout}")
        if self.journald.enabled and not self.journald.socket.startswith("/"):
            raise ConfigError(
                f"{source}: outputs.journald.socket must be an absolute path, not {self.journald.socket!r}"
            )
        self._validate_syslog(source)
        self._validate_webhook(source)

    def _validate_syslog(self, source: str) -> None:
        s = self.syslog
        if s.transport not in SYSLOG_TRANSPORTS:
            raise ConfigError(
                f"{source}: outputs.syslog.transport must be one of {list(SYSLOG_TRANSPORTS)}, not {s.transport!r}"
            )
        if s.facility not in SYSLOG_FACILITIES:
            raise ConfigError(
                f"{source}: outputs.syslog.facility must be one of {sorted(SYSLOG_FACILITIES)}, not {s.facility!r}"
            )
        if not s.enabled:
            return
        if s.transport == "unix":
            if not s.address.startswith("/"):
                raise ConfigError(
                    f'{source}: outputs.syslog.address must be a socket path for transport "unix", not {s.address!r}'
                )
        elif split_host_port(s.address) is None:
            raise ConfigError(
                f"{source}: outputs.syslog.address must be host:port (or [v6]:port) for transport "
                f"{s.transport!r}, not {s.address!r}"
            )

    def _validate_webhook(self, source: str) -> None:
        w = self.webhook
        if not 1 <= w.batch_max <= 10_000:
            raise ConfigError(f"{source}: outputs.webhook.batch_max must be between 1 and 10000, not {w.batch_max}")
        if not 1 <= w.batch_max_kb <= 64 * 1024:
            raise ConfigError(
                f"{source}: outputs.webhook.batch_max_kb must be between 1 and 65536, not {w.batch_max_kb}"
            )
        if w.auth_header_file and w.auth_header_env:
            raise ConfigError(f"{source}: set outputs.webhook.auth_header_file or auth_header_env, not both")
        if not HEADER_NAME.fullmatch(w.auth_header):
            raise ConfigError(
                f"{source}: outputs.webhook.auth_header must be an HTTP header name, not {w.auth_header!r}"
            )
        if not w.enabled:
            return
        parsed = urllib.parse.urlsplit(w.url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise ConfigError(
                f"{source}: outputs.webhook.url must be an https:// URL, not {w.url!r} "
                "(alerts carry command lines: they are not sent in clear text)"
            )
        try:
            _ = parsed.port  # urllib checks the port only when asked
        except ValueError as exc:
            raise ConfigError(f"{source}: outputs.webhook.url has a bad port: {w.url!r}") from exc


def split_host_port(address: str) -> tuple[str, int] | None:
    """("host", port) from "host:port" or "[v6]:port"; None when it is not that."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            return None
        host = host[1:-1]
    elif ":" in host:
        return None
    return host, int(port)


RESPONSE_ACTIONS = ("kill", "block", "quarantine")
RESPONSE_SEVERITIES = {"low": 21, "medium": 47, "high": 73, "critical": 99}
MAX_BLOCK_TTL_S = 30 * 86400.0


def _list(*items: str) -> Any:
    return field(default_factory=lambda: list(items))


@dataclass(frozen=True)
class ResponseConfig:
    """Opt-in response to alerts (agent.response). Off unless enabled and a gate selects alerts."""

    enabled: bool = False
    dry_run: bool = False  # log and record what would be done; change nothing
    min_severity: str = ""  # respond to alerts at least this severe (low/medium/high/critical); "" = none
    rules: list[str] = field(default_factory=list)  # ...and to alerts whose rule.id is listed, any severity
    actions: list[str] = _list(*RESPONSE_ACTIONS)
    block_ttl_s: float = 3600.0
    block_port: bool = False  # block only the incident's port on the address (default: the whole address)
    # Never signalled, whatever the incident says (matched on /proc/<pid>/exe, never on a name).
    protected_executables: list[str] = _list(
        "/sbin/init",
        "/lib/systemd/systemd",
        "/usr/lib/systemd/systemd",
        "/usr/sbin/sshd",
        "/usr/sbin/cron",
        "/usr/bin/dbus-daemon",
        "/lib/systemd/systemd-journald",
        "/usr/lib/systemd/systemd-journald",
    )
    # Never blocked: loopback, unspecified, link-local (cloud metadata), multicast.
    protected_networks: list[str] = _list(
        "127.0.0.0/8",
        "0.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "255.255.255.255/32",
        "::1/128",
        "::/128",
        "fe80::/10",
        "ff00::/8",
    )
    quarantine_dir: str = "/var/lib/chainwatch/quarantine"
    # Only files under these are ever quarantined ("dir/" matches below it; otherwise the exact file).
    quarantine_prefixes: list[str] = _list(
        "/etc/cron.d/",
        "/etc/cron.hourly/",
        "/etc/cron.daily/",
        "/etc/cron.weekly/",
        "/etc/cron.monthly/",
        "/var/spool/cron/",
        "/etc/systemd/system/",
        "/run/systemd/system/",
        "/usr/local/lib/systemd/system/",
        "/etc/profile.d/",
        "/etc/sudoers.d/",
        "/etc/udev/rules.d/",
        "/etc/modprobe.d/",
        "/etc/ld.so.preload",
    )
    protected_paths: list[str] = _list(
        "/etc/crontab", "/etc/passwd", "/etc/shadow", "/etc/group", "/etc/sudoers", "/etc/ssh/sshd_config"
    )
    control_socket: str = "/run/chainwatch/control.sock"  # `chainwatch response list/unblock` reach the agent here


@dataclass(frozen=True)
class Config:
    """The whole agent configuration."""

    sensor: SensorConfig = field(default_factory=SensorConfig)
    lineage: LineageConfig = field(default_factory=LineageConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)
    response: ResponseConfig = field(default_factory=ResponseConfig)

    def validate(self, source: str = "<defaults>") -> Config:
        """Check value ranges; raises ConfigError."""
        for key, pages in (
            ("ringbuf_pages", self.sensor.ringbuf_pages),
            ("net_ringbuf_pages", self.sensor.net_ringbuf_pages),
            ("file_ringbuf_pages", self.sensor.file_ringbuf_pages),
        ):
            # bcc sizes a ring buffer as pages * 4096 in a C int: 2**18 pages (1 GiB) is the most that fits.
            if pages < 1 or pages & (pages - 1) or pages > MAX_RINGBUF_PAGES:
                raise ConfigError(
                    f"{source}: sensor.{key} must be a power of two up to {MAX_RINGBUF_PAGES}, not {pages}"
                )
        # bcc passes the poll timeout as a C int; a minute already makes shutdown and the stats line late.
        if not 1 <= self.sensor.poll_timeout_ms <= MAX_POLL_TIMEOUT_MS:
            raise ConfigError(
                f"{source}: sensor.poll_timeout_ms must be between 1 and {MAX_POLL_TIMEOUT_MS}, "
                f"not {self.sensor.poll_timeout_ms}"
            )
        # Written as "not ok" so NaN fails too; inf and NaN would crash or stall the daemon's timers.
        if not 0 < self.sensor.stats_interval_s < math.inf:
            raise ConfigError(f"{source}: sensor.stats_interval_s must be positive")
        if not 0 <= self.lineage.grace_s < math.inf or self.lineage.max_entries < 1024:
            raise ConfigError(f"{source}: lineage.grace_s must be >= 0 and lineage.max_entries >= 1024")
        alerts = self.detection.alerts
        if not alerts or not all(isinstance(a, str) and a for a in alerts):
            raise ConfigError(f'{source}: detection.alerts must be a non-empty list of paths or "-" (stdout)')
        if not all(isinstance(d, str) and d for d in self.detection.sigma_dirs):
            raise ConfigError(f"{source}: detection.sigma_dirs must be a list of directory paths")
        paths = {
            "sensor.cache_dir": [self.sensor.cache_dir],
            "detection.rules_dir": [self.detection.rules_dir],
            "detection.alerts": alerts,
            "detection.spool_dir": [self.detection.spool_dir],
            "detection.sigma_dirs": self.detection.sigma_dirs,
        }
        for key, values in paths.items():
            if any("\0" in value for value in values):  # the OS would refuse it later, with a traceback
                raise ConfigError(f"{source}: {key} must not contain a NUL character")
        if not 1 <= self.detection.spool_max_mb <= 1 << 20:
            raise ConfigError(
                f"{source}: detection.spool_max_mb must be between 1 and 1048576 (MiB), "
                f"not {self.detection.spool_max_mb}"
            )
        if self.detection.alerts_format not in FORMATS:
            raise ConfigError(
                f"{source}: detection.alerts_format must be one of {list(FORMATS)}, "
                f"not {self.detection.alerts_format!r}"
            )
        self.outputs.validate(source)
        validate_response(self.response, source)
        return self


def path_under(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` or below it ("dir/" prefixes match only below)."""
    return path.startswith(prefix) if prefix.endswith("/") else path == prefix or path.startswith(prefix + "/")


def validate_response(r: ResponseConfig, source: str) -> None:
    """Check the [response] table; raises ConfigError with one sentence naming the key."""
    import ipaddress

    if r.min_severity and r.min_severity not in RESPONSE_SEVERITIES:
        raise ConfigError(
            f"{source}: response.min_severity must be one of {', '.join(RESPONSE_SEVERITIES)} "
            f'(or "" for none), not {r.min_severity!r}'
        )
    if r.enabled and not r.min_severity and not r.rules:
        raise ConfigError(
            f"{source}: response.enabled is true but neither response.min_severity nor "
            "response.rules selects any alert: set one of them"
        )
    for key in (
        "rules",
        "actions",
        "protected_executables",
        "protected_networks",
        "quarantine_prefixes",
        "protected_paths",
    ):
        values = getattr(r, key)
        if not all(isinstance(v, str) and v and "\0" not in v for v in values):
            raise ConfigError(f"{source}: response.{key} must be a list of non-empty strings")
    bad = [a for a in r.actions if a not in RESPONSE_ACTIONS]
    if bad or len(set(r.actions)) != len(r.actions) or (r.enabled and not r.actions):
        raise ConfigError(
            f"{source}: response.actions must list each of {', '.join(RESPONSE_ACTIONS)} at most "
            f"once (and at least one when enabled), not {r.actions!r}"
        )
    # Written as "not ok" so NaN fails too.
    if not 1.0 <= r.block_ttl_s <= MAX_BLOCK_TTL_S:
        raise ConfigError(
            f"{source}: response.block_ttl_s must be between 1 and {MAX_BLOCK_TTL_S:.0f} seconds, not {r.block_ttl_s}"
        )
    for net in r.protected_networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(
                f"{source}: response.protected_networks entry {net!r} is not an address or network (e.g. 10.0.0.0/8)"
            ) from None
    for key in ("quarantine_dir", "control_socket"):
        value = getattr(r, key)
        if not value.startswith("/") or "\0" in value or value.rstrip("/") == "":
            raise ConfigError(f"{source}: response.{key} must be an absolute path other than /, not {value!r}")
    for key in ("protected_executables", "quarantine_prefixes", "protected_paths"):
        for value in getattr(r, key):
            if not value.startswith("/") or "/../" in value + "/" or "/./" in value + "/" or "//" in value:
                raise ConfigError(f"{source}: response.{key} entry {value!r} must be an absolute, normalised path")
    qdir = r.quarantine_dir.rstrip("/")
    for prefix in r.quarantine_prefixes:
        if prefix.rstrip("/") == "":
            raise ConfigError(
                f'{source}: response.quarantine_prefixes must not contain "/": that would allow '
                "quarantining any file on the host"
            )
        if path_under(qdir, prefix) or path_under(prefix.rstrip("/"), qdir + "/"):
            raise ConfigError(
                f"{source}: response.quarantine_dir {r.quarantine_dir!r} must not overlap "
                f"response.quarantine_prefixes entry {prefix!r}"
            )


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
