"""Alert outputs beyond stdout and files: journald, syslog and an HTTPS webhook, opened from the config.

Each is an :class:`agent.sinks.Output`: it takes one alert line (the ECS JSON the spool holds) per write,
whole or not at all, so :class:`agent.sinks.Delivery` spools what a down receiver cannot take and sends it
in order once the receiver is back. :func:`build_sink` is the one place the daemon's outputs are wired.
"""

from __future__ import annotations

from agent.config import Config, OutputsConfig
from agent.sinks import AlertSink, Output


def open_outputs(config: OutputsConfig) -> list[Output]:
    """The enabled outputs of ``config``; ConfigError when one cannot be set up (an unreadable secret)."""
    from agent.outputs.journald import JournalOutput
    from agent.outputs.syslog import SyslogOutput
    from agent.outputs.webhook import WebhookOutput

    outputs: list[Output] = []
    if config.journald.enabled:
        outputs.append(JournalOutput(config.journald.socket, fmt=config.journald.format))
    if config.syslog.enabled:
        outputs.append(SyslogOutput.from_config(config.syslog))
    if config.webhook.enabled:
        outputs.append(WebhookOutput.from_config(config.webhook))
    return outputs


def build_sink(config: Config, alerts: list[str] | None = None) -> AlertSink:
    """The daemon's sink: the alerts files (``alerts`` overrides detection.alerts) and the enabled outputs,
    each with its spool under detection.spool_dir."""
    detection = config.detection
    return AlertSink(
        list(detection.alerts if alerts is None else alerts),
        spool_dir=detection.spool_dir or None,
        spool_max_bytes=detection.spool_max_mb << 20,
        alerts_format=detection.alerts_format,
        extra=open_outputs(config.outputs),
    )
