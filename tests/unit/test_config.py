"""agent.config: TOML -> frozen dataclasses, with ConfigError naming the file and the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.config import Config, ConfigError, LineageConfig, SensorConfig, load_config, parse_config

FULL_TOML = """
[sensor]
capture_env = false
skip_loopback = false
ringbuf_pages = 512
net_ringbuf_pages = 64
file_ringbuf_pages = 32
poll_timeout_ms = 250
stats_interval_s = 15.5
cache_dir = "/tmp/cw-cache"

[lineage]
grace_s = 5.0
max_entries = 4096
"""


def test_defaults() -> None:
    """No config file gives the documented built-in defaults."""
    config = load_config(None)
    assert config == Config()
    assert config.sensor == SensorConfig(
        capture_env=True,
        skip_loopback=True,
        ringbuf_pages=2048,
        net_ringbuf_pages=1024,
        file_ringbuf_pages=256,
        poll_timeout_ms=100,
        stats_interval_s=60.0,
    )
    assert config.lineage == LineageConfig(grace_s=30.0, max_entries=65536)


def test_empty_file_is_defaults(tmp_path: Path) -> None:
    """An empty config file is the defaults."""
    path = tmp_path / "empty.toml"
    path.write_text("")
    assert load_config(str(path)) == Config()


def test_all_keys(tmp_path: Path) -> None:
    """A file setting every key yields exactly those values."""
    path = tmp_path / "chainwatch.toml"
    path.write_text(FULL_TOML)
    config = load_config(str(path))
    assert config.sensor == SensorConfig(
        capture_env=False,
        skip_loopback=False,
        ringbuf_pages=512,
        net_ringbuf_pages=64,
        file_ringbuf_pages=32,
        poll_timeout_ms=250,
        stats_interval_s=15.5,
        cache_dir="/tmp/cw-cache",
    )
    assert config.lineage == LineageConfig(grace_s=5.0, max_entries=4096)


def test_every_field_is_covered_by_full_toml() -> None:
    """FULL_TOML sets every field to a non-default value (so test_all_keys checks them all)."""
    config = parse_config(FULL_TOML)
    for section in (config.sensor, config.lineage):
        default = type(section)()
        for f in dataclasses.fields(section):
            assert getattr(section, f.name) != getattr(default, f.name), f.name


def test_config_is_frozen() -> None:
    """Config objects cannot be mutated."""
    config = parse_config(FULL_TOML)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sensor.ringbuf_pages = 4  # type: ignore[misc]


def test_int_accepted_for_float() -> None:
    """An integer is accepted where a float is expected, and becomes a float."""
    config = parse_config("[lineage]\ngrace_s = 10\n")
    assert config.lineage.grace_s == 10.0
    assert isinstance(config.lineage.grace_s, float)


@pytest.mark.parametrize(
    "text,key",
    [
        ("[sensor]\nring_pages = 4\n", "sensor.'ring_pages'"),
        ("[lineage]\ngrace = 1.0\n", "lineage.'grace'"),
        ("[detectors]\nenabled = true\n", "'detectors'"),
        ("verbose = true\n", "'verbose'"),
    ],
)
def test_unknown_key(tmp_path: Path, text: str, key: str) -> None:
    """An unknown key raises ConfigError naming the key and the file."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(path) in str(info.value)
    assert f"unknown key {key}" in str(info.value)


@pytest.mark.parametrize(
    "text,key",
    [
        ('[sensor]\nringbuf_pages = "big"\n', "sensor.ringbuf_pages"),
        ("[sensor]\nringbuf_pages = 4.0\n", "sensor.ringbuf_pages"),
        ("[sensor]\ncapture_env = 1\n", "sensor.capture_env"),
        ("[sensor]\npoll_timeout_ms = true\n", "sensor.poll_timeout_ms"),
        ('[lineage]\ngrace_s = "30s"\n', "lineage.grace_s"),
        ("[lineage]\ngrace_s = true\n", "lineage.grace_s"),
        ("sensor = 3\n", "sensor"),
        ("[sensor.capture_env]\nx = 1\n", "sensor.capture_env"),
    ],
)
def test_wrong_type(tmp_path: Path, text: str, key: str) -> None:
    """A value of the wrong type raises ConfigError naming the key and the file."""
    path = tmp_path / "types.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert str(path) in message
    assert f"{key} must be" in message


@pytest.mark.parametrize("pages", [0, 3, 1000, 2047, -2])
def test_ringbuf_pages_not_power_of_two(pages: int) -> None:
    """sensor.ringbuf_pages that is not a positive power of two raises ConfigError."""
    with pytest.raises(ConfigError, match="ringbuf_pages must be a power of two"):
        parse_config(f"[sensor]\nringbuf_pages = {pages}\n", "x.toml")


@pytest.mark.parametrize("pages", [1, 2, 64, 4096])
def test_ringbuf_pages_power_of_two(pages: int) -> None:
    """Powers of two are accepted for sensor.ringbuf_pages."""
    assert parse_config(f"[sensor]\nringbuf_pages = {pages}\n").sensor.ringbuf_pages == pages


@pytest.mark.parametrize(
    "text",
    [
        "[sensor]\npoll_timeout_ms = 0\n",
        "[sensor]\nstats_interval_s = 0.0\n",
        "[lineage]\ngrace_s = -1.0\n",
        "[lineage]\nmax_entries = 1023\n",
        "[sensor]\nstats_interval_s = nan\n",
        "[sensor]\nstats_interval_s = inf\n",
        "[lineage]\ngrace_s = nan\n",
        "[lineage]\ngrace_s = inf\n",
    ],
)
def test_out_of_range(text: str) -> None:
    """Out-of-range values (including NaN and infinity, which break the daemon's timers) raise ConfigError."""
    with pytest.raises(ConfigError, match="x.toml"):
        parse_config(text, "x.toml")


def test_missing_file(tmp_path: Path) -> None:
    """A path that does not exist raises ConfigError naming the path."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load_config(str(path))
    assert str(path) in str(info.value)


def test_directory_path(tmp_path: Path) -> None:
    """A path that is a directory (unreadable as a file) raises ConfigError, not OSError."""
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load_config(str(tmp_path))
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("text", ["[sensor\n", "ringbuf_pages = \n", "a = 1\na = 2\n", "[sensor]\nx = 'unterminated\n"])
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    """Text that is not TOML raises ConfigError naming the file."""
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(str(path))
    assert str(path) in str(info.value)


def test_non_utf8_file(tmp_path: Path) -> None:
    """A file that is not UTF-8 raises ConfigError, not UnicodeDecodeError."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[sensor]\n# caf\xe9\n")
    with pytest.raises(ConfigError, match="UTF-8") as info:
        load_config(str(path))
    assert str(path) in str(info.value)


def test_detection_spool_keys() -> None:
    """detection.spool_dir and spool_max_mb default to /var/lib/chainwatch/spool and 64, and can be set."""
    assert (Config().detection.spool_dir, Config().detection.spool_max_mb) == ("/var/lib/chainwatch/spool", 64)
    config = parse_config('[detection]\nspool_dir = ""\nspool_max_mb = 8\n')
    assert (config.detection.spool_dir, config.detection.spool_max_mb) == ("", 8)


@pytest.mark.parametrize(
    "text",
    [
        "[detection]\nspool_max_mb = 0\n",
        "[detection]\nspool_max_mb = 1048577\n",
        "[detection]\nspool_max_mb = 1.5\n",
        "[detection]\nspool_dir = 3\n",
        "[sensor]\npoll_timeout_ms = 60001\n",
        "[sensor]\nringbuf_pages = 524288\n",
    ],
)
def test_detection_and_sensor_bounds(text: str) -> None:
    """A spool bound outside 1..1048576 MiB, a wrong type, a poll timeout over a minute or a ring buffer over
    1 GiB raise ConfigError naming the file."""
    with pytest.raises(ConfigError, match="x.toml"):
        parse_config(text, "x.toml")
