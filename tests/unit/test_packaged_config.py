"""The shipped config file stays valid and equal to the built-in defaults."""

from pathlib import Path

from agent.config import Config, load_config


def test_packaged_config_is_the_defaults() -> None:
    """packaging/chainwatch.toml parses and matches Config() exactly, so the docs in it cannot drift."""
    path = Path(__file__).resolve().parents[2] / "packaging" / "chainwatch.toml"
    assert load_config(str(path)) == Config()
