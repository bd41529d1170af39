"""What a backup or snapshot keeps of the configuration: the files the daemon reads,
each plugin whole or not at all, and the rest of the configuration directory."""

from __future__ import annotations

import os
from pathlib import Path

from cortexd.config.collect import MAX_CONFIG_FILES, MAX_CONFIG_MEMBER_BYTES, collect_config
from cortexd.config.plugintree import MAX_PLUGIN_FILE_BYTES, PluginTree
from cortexd.config.restore import ConfigTarget, config_targets


def layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A configuration directory with a plugins directory inside, and a rules file elsewhere."""
    confdir = tmp_path / "etc" / "cortex"
    plugins = confdir / "plugins"
    plugins.mkdir(parents=True)
    (confdir / "daemon.conf").write_text("{}\n")
    rules = tmp_path / "srv" / "alerts.yaml"
    rules.parent.mkdir()
    rules.write_text("alerts: []\n")
    return confdir, plugins, rules


def plugin(plugins: Path, name: str, *extra: str) -> list[str]:
    base = plugins / name
    base.mkdir()
    made = []
    for file in ("plugin.yaml", "__init__.py", *extra):
        path = base / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {file}\n")
        made.append(str(path))
    return made


def collect(confdir: Path, plugins: Path, rules: Path) -> tuple[list[str], list[dict[str, str]]]:
    targets = config_targets(
        [str(confdir / "daemon.conf")],
        [ConfigTarget(str(rules), lambda _doc: {})],
        PluginTree(str(plugins)),
    )
    found = collect_config(targets, str(confdir))
    return found.files, found.left_out


def test_the_rules_file_outside_the_directory_and_every_plugin_file_are_kept(
    tmp_path: Path,
) -> None:
    confdir, plugins, rules = layout(tmp_path)
    plugin(plugins, "disk_temp", "lib/sensors.py", "bin/read-sensor")
    (plugins / "disk_temp" / "__pycache__").mkdir()
    (plugins / "disk_temp" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (plugins / "README").write_text("not a plugin: plugins are directories\n")
    plugin(plugins, "_off")  # the loader ignores these
    (confdir / "ca.pem").write_text("cert\n")
    kept, left_out = collect(confdir, plugins, rules)
    assert kept == [
        str(confdir / "daemon.conf"),
        str(rules),
        *(
            str(plugins / "disk_temp" / f)
            for f in ("__init__.py", "plugin.yaml", "bin/read-sensor", "lib/sensors.py")
        ),
        str(confdir / "ca.pem"),
    ]
    assert left_out == []


def test_a_plugin_is_kept_whole_or_left_out_with_the_reason(tmp_path: Path) -> None:
    confdir, plugins, rules = layout(tmp_path)
    good = plugin(plugins, "good")
    linked = plugin(plugins, "linked")
    (plugins / "linked" / "data").symlink_to("/etc/shadow")
    plugin(plugins, "large")
    with open(plugins / "large" / "model.bin", "wb") as fh:
        fh.truncate(MAX_PLUGIN_FILE_BYTES + 1)
    plugin(plugins, "odd")
    (plugins / "odd" / "a b.py").write_text("")
    plugin(plugins, "special")
    os.mkfifo(plugins / "special" / "pipe")
    kept, left_out = collect(confdir, plugins, rules)
    assert kept[2:] == sorted(good)
    assert not set(linked) & set(kept)
    assert {item["path"]: item["reason"] for item in left_out} == {
        str(plugins / "large"): f"{plugins}/large/model.bin is larger than "
        f"{MAX_PLUGIN_FILE_BYTES} bytes",
        str(plugins / "linked"): f"{plugins}/linked/data is a symbolic link",
        str(plugins / "odd"): f"{plugins}/odd/a b.py: a name a restore would not write",
        str(plugins / "special"): f"{plugins}/special/pipe is not a regular file",
    }


def test_plugins_that_do_not_fit_are_left_out_whole(tmp_path: Path) -> None:
    confdir, plugins, rules = layout(tmp_path)
    per_plugin = 50
    extra = [f"m{n}.py" for n in range(per_plugin - 2)]
    for n in range(6):
        plugin(plugins, f"p{n}", *extra)
    kept, left_out = collect(confdir, plugins, rules)
    whole = (MAX_CONFIG_FILES - 2) // per_plugin
    assert len(kept) == 2 + whole * per_plugin
    assert [item["path"] for item in left_out] == [str(plugins / f"p{n}") for n in range(whole, 6)]
    assert "at most" in left_out[0]["reason"]


def test_a_file_too_large_for_an_archive_member_is_left_out(tmp_path: Path) -> None:
    confdir, plugins, rules = layout(tmp_path)
    big = confdir / "bundle.pem"
    with open(big, "wb") as fh:
        fh.truncate(MAX_CONFIG_MEMBER_BYTES + 1)
    kept, left_out = collect(confdir, plugins, rules)
    assert str(big) not in kept
    assert left_out == [
        {"path": str(big), "reason": f"larger than {MAX_CONFIG_MEMBER_BYTES} bytes"}
    ]
