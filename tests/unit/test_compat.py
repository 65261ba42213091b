"""agent/compat.py and the Python versions chainwatch runs on (3.9+): Sigma rules only where pySigma can be
imported, refused with one sentence elsewhere; records keep __slots__ where dataclasses can make them. Runs on
3.11 (make test) and on 3.9 (make test-py39), where the real answers differ: each branch asserts its own."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pytest

from agent import cli, compat, daemon, doctor
from agent.config import ConfigError
from agent.events import Exec
from agent.lineage.table import Process

REASON = "Sigma rules need pySigma 2, which needs Python 3.11 or later (test)"


def test_sigma_missing_on_this_python() -> None:
    missing = compat.sigma_missing()
    if sys.version_info < (3, 11):
        assert missing is not None and "3.11" in missing and "sigma_dirs" in missing
    else:  # the dev venv has pySigma (pyproject.toml)
        assert missing is None


def test_sigma_dirs_without_pysigma_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(daemon, "sigma_missing", lambda: REASON)
    assert daemon.load_sigma_dirs([]) is None  # nothing configured: nothing asked, nothing imported
    with pytest.raises(ConfigError, match=r"detection.sigma_dirs = \['/opt/sigma'\]: Sigma rules need pySigma"):
        daemon.load_sigma_dirs(["/opt/sigma"])


def test_rules_check_without_pysigma(monkeypatch, capsys, tmp_path: Path) -> None:
    """The bundled rules/sigma seed is noted as not checked (its native twin is checked); a --sigma DIR the user
    asked for is a failure."""
    monkeypatch.setattr(cli, "sigma_missing", lambda: REASON)
    # Not cli.main: it points structlog at this test's captured stderr, which later tests would log to, closed.
    assert cli._rules_check(argparse.Namespace(dir=None, sigma=None)) == 0
    out, err = capsys.readouterr()
    assert "rules OK" in out and "Sigma rules not checked" in err and REASON in err
    assert cli._rules_check(argparse.Namespace(dir=None, sigma=[str(tmp_path)])) == 1
    assert f"Sigma rules not checked ({tmp_path}): {REASON}" in capsys.readouterr().err


def test_doctor_has_a_sigma_line(monkeypatch) -> None:
    monkeypatch.setattr(doctor, "sigma_missing", lambda: REASON)
    lines = []
    doctor.run_doctor(lines.append)
    assert f"info sigma: {REASON}\n" in lines


def test_records_have_slots_where_dataclasses_make_them() -> None:
    for cls in (Exec, Process):
        assert dataclasses.is_dataclass(cls)
        assert ("__slots__" in vars(cls)) == (sys.version_info >= (3, 10)), cls
