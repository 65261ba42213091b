"""agent.resources: rules/ and bpf/ from the source tree, the installed layout, or $CHAINWATCH_SHARE."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import resources
from agent.probes.source import bundled_persistence, render_source
from agent.ruleset.load import default_rules_dir, load_rules

REPO = Path(__file__).resolve().parents[2]


def layout(base: Path) -> Path:
    (base / "rules").mkdir(parents=True)
    (base / "bpf").mkdir()
    return base


def test_source_tree_wins_over_installed(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(resources.SHARE_ENV, raising=False)
    src, inst = layout(tmp_path / "src"), layout(tmp_path / "usr-share")
    assert resources.share_dir(source_tree=src, installed=inst) == src


def test_installed_layout_when_no_source_tree(tmp_path, monkeypatch) -> None:
    """An installed venv has agent/ in site-packages with no rules/ beside it: /usr/share/chainwatch is used."""
    monkeypatch.delenv(resources.SHARE_ENV, raising=False)
    site = tmp_path / "site-packages"
    site.mkdir()
    inst = layout(tmp_path / "usr-share")
    assert resources.share_dir(source_tree=site, installed=inst) == inst


def test_env_override_wins(tmp_path, monkeypatch) -> None:
    share = layout(tmp_path / "custom")
    monkeypatch.setenv(resources.SHARE_ENV, str(share))
    assert resources.share_dir(source_tree=layout(tmp_path / "src"), installed=tmp_path / "none") == share


def test_env_override_incomplete_is_an_error_not_a_fallback(tmp_path, monkeypatch) -> None:
    (tmp_path / "half" / "rules").mkdir(parents=True)
    monkeypatch.setenv(resources.SHARE_ENV, str(tmp_path / "half"))
    with pytest.raises(resources.ResourceMissing, match="CHAINWATCH_SHARE=.*rules/ and bpf/"):
        resources.share_dir(source_tree=REPO)


def test_nothing_found_names_both_places(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(resources.SHARE_ENV, raising=False)
    with pytest.raises(resources.ResourceMissing) as err:
        resources.share_dir(source_tree=tmp_path / "a", installed=tmp_path / "b")
    assert str(tmp_path / "b") in str(err.value) and "CHAINWATCH_SHARE" in str(err.value)


def test_this_checkout_is_the_default(monkeypatch) -> None:
    monkeypatch.delenv(resources.SHARE_ENV, raising=False)
    assert resources.share_dir() == REPO
    assert default_rules_dir() == REPO / "rules"


def test_callers_read_rules_and_bpf_from_the_override(tmp_path, monkeypatch) -> None:
    """Rules, the persistence list and the BPF text all come from $CHAINWATCH_SHARE, not the source tree."""
    import shutil

    share = tmp_path / "share"
    shutil.copytree(REPO / "rules", share / "rules")
    shutil.copytree(REPO / "bpf", share / "bpf")
    (share / "bpf" / "fd.bpf.c").write_text((REPO / "bpf" / "fd.bpf.c").read_text() + "\n/* from-the-share */\n")
    lst = share / "rules" / "lists" / "persistence_paths.yaml"
    entry = "  - {path: /from-the-share/, technique: T1053.003}\n"
    lst.write_text(lst.read_text().replace("\nprefixes:\n", "\nprefixes:\n" + entry, 1))
    monkeypatch.setenv(resources.SHARE_ENV, str(share))
    assert default_rules_dir() == share / "rules"
    ruleset = load_rules()
    assert ruleset.rules and all(r.source_file.startswith(str(share)) for r in ruleset.rules)
    assert bundled_persistence().place_for("/from-the-share/x") is not None
    text = render_source()
    assert "/* from-the-share */" in text and "/from-the-share/" in text
