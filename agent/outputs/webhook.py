"""Alerts POSTed to an HTTPS endpoint as JSON arrays, in batches, TLS verified by default.

Each request carries up to ``batch_max`` alerts (``batch_max_kb`` bytes) as one JSON array of documents
in the configured format. Any answer but 2xx, a timeout or a connection error fails the whole batch: the
delivery keeps those alerts at the head of the output's spool (memory, then disk: the bounded queue) and
retries with exponential backoff; newer alerts wait behind them, so the endpoint receives every alert once
and in order (unless it accepted a request but its answer was lost: then that batch comes again, and the
``X-Chainwatch-Batch`` header, the ids of its first and last alert, lets the endpoint see the repeat).

The certificate is checked against the system's CAs or ``ca_file``, with the host name; ``verify_tls =
false`` is for labs. A secret header (``Authorization: Bearer ...``) comes from a file or an environment
variable, never from the config file itself, and is never logged.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import ssl
import stat
import urllib.parse
from typing import Final

import structlog

from agent.config import ConfigError, WebhookConfig
from agent.formats import render
from agent.ocsf import PRODUCT_VERSION
from agent.outputs.common import Summary, decode_alert

log = structlog.get_logger()

USER_AGENT: Final = f"chainwatch/{PRODUCT_VERSION}"
ERROR_BODY_BYTES: Final = 200  # of a refusal's body, in the log


def read_secret(config: WebhookConfig) -> str | None:
    """The auth header's value from ``auth_header_file`` or ``auth_header_env``; None when neither is set.
    ConfigError when the one set cannot be read or is empty."""
    if config.auth_header_file:
        path = config.auth_header_file
        try:
            with open(path, "rb") as fh:
                mode = os.fstat(fh.fileno()).st_mode
                raw = fh.read(64 * 1024)
        except OSError as exc:
            raise ConfigError(f"cannot read outputs.webhook.auth_header_file {path}: {exc.strerror}") from exc
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            log.warning(
                "webhook_secret_readable",
                file=path,
                mode=oct(mode & 0o777),
                hint="anyone on the host can read the webhook's secret: chmod 0600 it",
            )
        value = raw.decode("utf-8", "replace").strip()
        where = f"the file {path}"
    elif config.auth_header_env:
        value = os.environ.get(config.auth_header_env, "").strip()
        where = f"the environment variable {config.auth_header_env}"
    else:
        return None
    if not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(
            f"outputs.webhook: {where} must hold the {config.auth_header} header's value "
            'on one line, without control characters (e.g. "Bearer <token>")'
        )
    return value


class WebhookOutput:
    """POSTs batches of alerts to one HTTPS URL over one kept-alive connection."""

    def __init__(
        self,
        url: str,
        *,
        fmt: str = "ecs",
        ca_file: str = "",
        verify_tls: bool = True,
        auth: tuple[str, str] | None = None,
        batch_max: int = 100,
        batch_bytes: int = 1 << 20,
        timeout_s: float = 10.0,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise ConfigError(f"outputs.webhook.url must be an https:// URL, not {url!r}")
        self.url = url
        self.name = url
        self.remote = True  # a last try at shutdown could wait out the timeout
        self.format = fmt
        self.batch_max = batch_max
        self.batch_bytes = batch_bytes
        self.timeout_s = timeout_s
        self._host = parsed.hostname
        self._port = parsed.port or 443
        self._target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
        if verify_tls:
            try:
                self._ssl = ssl.create_default_context(cafile=ca_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load outputs.webhook.ca_file {ca_file}: {exc}") from exc
        else:
            self._ssl = ssl._create_unverified_context()  # noqa: S323 - asked for by verify_tls = false
            log.warning("webhook_tls_unverified", url=url, hint="any certificate is accepted: for a lab only")
        self._auth = auth
        self._conn: http.client.HTTPSConnection | None = None

    @classmethod
    def from_config(cls, config: WebhookConfig) -> WebhookOutput:
        """The output ``[outputs.webhook]`` describes (reads the secret now: a missing one stops startup)."""
        secret = read_secret(config)
        return cls(
            config.url,
            fmt=config.format,
            ca_file=config.ca_file,
            verify_tls=config.verify_tls,
            auth=(config.auth_header, secret) if secret is not None else None,
            batch_max=config.batch_max,
            batch_bytes=config.batch_max_kb << 10,
            timeout_s=config.timeout_s,
        )

    def write(self, data: bytes) -> int:
        """One alert alone (the delivery batches through :meth:`write_batch`)."""
        self.write_batch([data])
        return len(data)

    def write_batch(self, lines: list[bytes]) -> None:
        """POST the alerts of ``lines``; OSError (nothing taken) unless the endpoint answered 2xx."""
        alerts = [a for line in lines if (a := decode_alert(line, self.name)) is not None]
        if not alerts:
            return
        body = (
            "[" + ",".join(json.dumps(render(a, self.format), separators=(",", ":")) for a in alerts) + "]"
        ).encode()
        first, last = Summary.of(alerts[0]).alert_id, Summary.of(alerts[-1]).alert_id
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Chainwatch-Format": self.format,
            "X-Chainwatch-Batch": f"{first}..{last};{len(alerts)}",
        }
        if self._auth is not None:
            headers[self._auth[0]] = self._auth[1]
        reused = self._conn is not None
        try:
            try:
                response, answer = self._post(body, headers)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not reused:
                    raise
                # The endpoint closed the idle kept-alive connection before this request: send it afresh.
                self._drop_connection()
                response, answer = self._post(body, headers)
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            if isinstance(exc, OSError):
                raise
            raise OSError(errno.EPROTO, f"bad HTTP exchange with {self._host}: {exc!r}") from exc
        if response.will_close:
            self._drop_connection()
        if not 200 <= response.status < 300:
            snippet = answer[:ERROR_BODY_BYTES].decode("utf-8", "replace")
            hint = " (check the auth header's secret)" if response.status in (401, 403) else ""
            raise OSError(errno.EIO, f"HTTP {response.status} {response.reason}{hint}: {snippet}")

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[http.client.HTTPResponse, bytes]:
        conn = self._connection()
        conn.request("POST", self._target, body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read(64 * 1024)
        while response.read(64 * 1024):  # the rest of a long answer, so the connection can be used again
            pass
        return response, answer

    def _connection(self) -> http.client.HTTPSConnection:
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout_s, context=self._ssl)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Close the connection."""
        self._drop_connection()
