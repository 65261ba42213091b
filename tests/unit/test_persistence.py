"""agent.ruleset.persistence: the one reader of persistence_paths.yaml, its matching, and the kernel filter it feeds."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import Config
from agent.daemon import probe_options
from agent.events import normalize_path
from agent.probes.source import bundled_persistence, render_path_matcher, render_source
from agent.ruleset.load import default_rules_dir, load_lists
from agent.ruleset.persistence import home_offset
from agent.ruleset.yamlcheck import RuleErrors

# One path per kind of place the list must cover (ATT&CK Linux persistence), with the technique expected.
PLACES = {
    "/etc/cron.d/x": "T1053.003",
    "/var/spool/cron/crontabs/root": "T1053.003",
    "/var/spool/cron/atjobs/a00001": "T1053.002",
    "/etc/systemd/system/x.service": "T1543.002",
    "/etc/systemd/system/ssh.service.d/override.conf": "T1543.002",
    "/root/.config/systemd/user/x.service": "T1543.002",
    "/home/dev/.config/systemd/user/default.target.wants/x.service": "T1543.002",
    "/etc/systemd/system/x.timer": "T1543.002",
    "/tmp/units/x.timer": "T1053.006",
    "/tmp/units/x.socket": "T1543.002",
    "/etc/rc.local": "T1037.004",
    "/etc/rc.common": "T1037.004",
    "/etc/rc.d/rc.local": "T1037.004",
    "/etc/init.d/evil": "T1037.004",
    "/etc/update-motd.d/99-x": "T1037",
    "/root/.bashrc": "T1546.004",
    "/home/dev/.bash_logout": "T1546.004",
    "/home/dev/.shrc": "T1546.004",
    "/home/dev/.zshrc": "T1546.004",
    "/home/dev/.zlogin": "T1546.004",
    "/home/dev/.zshenv": "T1546.004",
    "/home/dev/.config/fish/config.fish": "T1546.004",
    "/etc/profile.d/x.sh": "T1546.004",
    "/etc/skel/.bashrc": "T1546.004",
    "/etc/ld.so.preload": "T1574.006",
    "/etc/ld.so.conf.d/x.conf": "T1574.006",
    "/etc/sudoers": "T1548.003",
    "/etc/sudoers.d/x": "T1548.003",
    "/etc/pam.d/sshd": "T1556.003",
    "/lib/x86_64-linux-gnu/security/pam_x.so": "T1556.003",
    "/usr/lib/x86_64-linux-gnu/security/pam_x.so": "T1556.003",
    "/etc/nsswitch.conf": "T1556",
    "/usr/lib/x86_64-linux-gnu/libnss_x.so.2": "T1556",
    "/etc/apt/apt.conf.d/99x": "T1546.016",
    "/etc/dpkg/dpkg.cfg.d/x": "T1546.016",
    "/var/lib/dpkg/info/x.postinst": "T1546.016",
    "/usr/lib/python3/dist-packages/x.pth": "T1546.018",
    "/usr/local/lib/python3.11/dist-packages/x.pth": "T1546.018",
    "/home/dev/.local/lib/python3.11/site-packages/x.pth": "T1546.018",
    "/usr/lib/python3.11/sitecustomize.py": "T1546.018",
    "/home/dev/venv/lib/python3.11/site-packages/usercustomize.py": "T1546.018",
    "/usr/share/git-core/templates/hooks/pre-commit": "T1546",
    "/etc/gitconfig": "T1546",
    "/root/.ssh/authorized_keys": "T1098.004",
    "/home/dev/.ssh/authorized_keys2": "T1098.004",
    "/etc/ssh/sshd_config.d/x.conf": "T1098.004",
    "/etc/udev/rules.d/99-x.rules": "T1546.017",
    "/etc/modules-load.d/x.conf": "T1547.006",
    "/etc/xdg/autostart/x.desktop": "T1547.013",
    "/home/dev/.config/autostart/x.desktop": "T1547.013",
}

NOT_PLACES = (
    "/tmp/x",
    "/etc/passwd",
    "/home/dev/model.pth",
    "/home/dev/project/x.py",
    "/usr/lib/python3/x.py",
    "/var/lib/dpkg/info/x.list",
    "/home/dev/.config/other/x",
    "/etc/cro",
    "/home/dev/.ssh/known_hosts",
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
)


@pytest.fixture(scope="module")
def places():
    return load_lists().persistence


@pytest.mark.parametrize("path,technique", PLACES.items())
def test_every_kind_of_place_and_its_technique(places, path, technique) -> None:
    """Each ATT&CK persistence place is listed, names its technique, and passes the kernel's filter."""
    place = places.place_for(path)
    assert place is not None, path
    assert place.technique == technique
    assert any(p.kernel_matches(path) for p in places.places)


@pytest.mark.parametrize("path", NOT_PLACES)
def test_ordinary_paths_are_not_places(places, path) -> None:
    """Ordinary writes are not persistence."""
    assert places.place_for(path) is None


def test_userspace_never_matches_what_the_kernel_drops(places) -> None:
    """The kernel filter is coarser than the userspace match, never finer (or events would be lost)."""
    for path in [*PLACES, *NOT_PLACES]:
        if places.place_for(path) is not None:
            assert any(p.kernel_matches(path) for p in places.places), path


@pytest.mark.parametrize(
    "raw,want",
    [
        ("/etc/./cron.d/x", "/etc/cron.d/x"),
        ("/etc//cron.d/x", "/etc/cron.d/x"),
        ("//etc/cron.d/x", "/etc/cron.d/x"),
        ("/etc/cron.d/../cron.d/x", "/etc/cron.d/x"),
        ("/../etc/x", "/etc/x"),
        ("/", "/"),
        ("etc/x", "/etc/x"),
    ],
)
def test_normalize(raw, want) -> None:
    """Typed paths are folded before matching: ., .., repeated and leading double slashes."""
    assert normalize_path(raw) == want


def test_place_for_normalises(places) -> None:
    """A typed /etc/./cron.d//x is the cron place."""
    assert places.place_for("/etc/./cron.d//x").path == "/etc/cron"
    assert places.place_for("/tmp/../etc/cron.d/x").path == "/etc/cron"


@pytest.mark.parametrize(
    "path,offset",
    [
        ("/root/.bashrc", 6),
        ("/root/", 0),
        ("/home/u/.bashrc", 8),
        ("/home/u", 0),
        ("/home//x", 0),
        ("/home/" + "u" * 32 + "/x", 39),
        ("/home/" + "u" * 33 + "/x", 0),
        ("/etc/x", 0),
        ("/homeless/x/y", 0),
    ],
)
def test_home_offset(path, offset) -> None:
    """Homes are /root/ and /home/<user>/ with a 1-32 byte user, exactly as the kernel's persist_home_offset."""
    assert home_offset(path) == offset


def _write_lists(tmp_path: Path, persistence: str) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), rules)
    (rules / "lists" / "persistence_paths.yaml").write_text(persistence)
    return rules


@pytest.mark.parametrize(
    "body,problem",
    [
        ("prefixes:\n  - /etc/cron\n", "must be a mapping"),
        ("prefixes:\n  - {path: etc/cron, technique: T1053.003}\n", "not an absolute path"),
        ("prefixes:\n  - {path: /etc/cron, technique: cron}\n", "not a MITRE ATT&CK technique"),
        ("prefixes:\n  - {path: /etc/cron}\n", "missing key 'technique'"),
        ("prefixes:\n  - {path: /etc/crön, technique: T1053}\n", "printable ASCII"),
        ("prefixes:\n  - {path: /etc/cron*, technique: T1053}\n", "only globs"),
        (
            "prefixes:\n  - {path: /etc/cron, technique: T1053}\nglobs:\n  - {path: /etc/*, technique: T1053}\n",
            "literal text",
        ),
        (
            "prefixes:\n  - {path: /etc/cron, technique: T1053}\nglobs:\n  - {path: /etc/x, technique: T1053}\n",
            "no wildcard",
        ),
        (
            "prefixes:\n  - {path: /etc/cron, technique: T1053}\nhome:\n  - {path: /.x, technique: T1053}\n",
            "relative to the home",
        ),
        ("prefixes:\n  - {path: /etc/cron, technique: T1053}\n  - {path: /etc/cron, technique: T1053}\n", "duplicate"),
        (
            "prefixes:\n  - {path: /etc/cron, technique: T1053}\nsuffix:\n  - {path: .x, technique: T1053}\n",
            "unknown key 'suffix'",
        ),
    ],
)
def test_bad_entries_are_reported_with_file_and_line(tmp_path, body, problem) -> None:
    """`rules check` validation: each bad entry is reported with the list file and its line."""
    rules = _write_lists(tmp_path, body)
    with pytest.raises(RuleErrors) as info:
        load_lists(rules / "lists")
    messages = [f"{p.file}:{p.line}: {p.reason}" for p in info.value.problems]
    assert any("persistence_paths.yaml:" in m and problem in m for m in messages), messages
    assert all(p.line >= 1 for p in info.value.problems)


def test_kernel_filter_comes_from_the_rules_in_use(tmp_path) -> None:
    """Under --rules DIR the kernel compiles that directory's list, not the bundled one."""
    rules = _write_lists(
        tmp_path,
        "prefixes:\n  - {path: /opt/chainwatch-custom/, technique: T1546}\n"
        "home:\n  - {path: .custom-rc, technique: T1546.004}\n",
    )
    config = replace(Config(), detection=replace(Config().detection, rules_dir=str(rules)))
    options = probe_options(config)
    assert options.persistence is not None
    assert [p.path for p in options.persistence.places] == ["/opt/chainwatch-custom/", ".custom-rc"]
    text = render_source(persistence=options.persistence)
    assert render_path_matcher(options.persistence) in text
    assert "prefix /opt/chainwatch-custom/" in text and "/etc/cron" not in text.split("persist_path_match")[1]
    assert "prefix .custom-rc" not in text and "home .custom-rc" in text.split("if (h) {")[1]


def test_open_filter_passes_every_path_a_place_can_pass() -> None:
    """The kernel's test before resolving an opened file's path (OpenFilter) never turns away a path that an
    entry's kernel filter passes, whatever the name or directory; and it does turn away ordinary writes."""
    places = bundled_persistence()
    f = places.open_filter()
    names = ["x", "config.fish", ".bashrc", "authorized_keys", "cw.service", "rc.local", "cw.pth", "libnss_x.so.2"]
    dirs = [
        "/",
        "/etc/",
        "/etc/cron.d/",
        "/tmp/",
        "/tmp/build/obj/",
        "/root/",
        "/root/.config/fish/",
        "/home/u/",
        "/home/u/.ssh/",
        "/home/u/src/",
        "/usr/lib/python3/dist-packages/",
        "/var/lib/dpkg/info/",
        "/usr/share/doc/x/",
        "/root/.local/lib/python3.11/site-packages/",
    ]
    for place in places.places:
        start, end = place.kernel_filter()
        base = "/root/" if place.in_home else ""
        for tail in ("", "x", "x/y", end):
            path = normalize_path(base + start + tail) if (base + start + tail).startswith("/") else None
            if path and place.kernel_matches(path):
                assert f.may_match(path), (place.path, path)
        if not start:
            for d in dirs:
                path = d + end.lstrip("/") if "/" not in end.strip("/") else d + end.rsplit("/", 1)[1]
                assert not place.kernel_matches(path) or f.may_match(path), (place.path, path)
    for d in dirs:
        for name in names:
            path = d + name
            if any(place.kernel_matches(path) for place in places.places):
                assert f.may_match(path), path
    assert not f.may_match("/tmp/build/obj/main.o")
    assert not f.may_match("/home/u/src/x")
    assert not f.may_match("/usr/share/doc/x/README")
    assert f.may_match("/etc/crontab") and f.may_match("/home/u/.ssh/rc") and f.may_match("/srv/x.service")
