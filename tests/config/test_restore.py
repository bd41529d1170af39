"""The one config-restore function: where it may write, how, and what it may change.

Restore (backup archives) and update rollback (snapshots) both go through
`cortexd.config.restore`; these tests drive it directly on real files: exact
targets only, no `..`, no symbolic links, no paths outside the configuration,
a configuration directory that is not /etc/cortex, fixed modes, and the
root-only keys a caller other than root may not change; a rules file that
does not validate; and the plugins directory: only below it, never through a
link or `..`, root-safe modes and owners, and no plugin file added or changed
by a caller other than root.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cortexd.config.plugintree import MAX_PLUGIN_FILE_BYTES, NOT_WRITABLE, PluginTree
from cortexd.config.restore import (
    ConfigTarget,
    RootOnlyChange,
    StagedFile,
    Target,
    config_targets,
    plan_config_restore,
    write_config_files,
)
from cortexd.notify.rootonly import check_rules_file, root_only_options
from cortexd.plugins.manifest import PluginError, check_directory_trust, check_trust
from cortexd.protocol import ConfigError


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    """A configuration directory somewhere else than /etc/cortex (a changed CONFDIR)."""
    path = tmp_path / "usr" / "local" / "etc" / "cortex"
    path.mkdir(parents=True)
    return path


def staged(tmp_path: Path, origin: str, text: str) -> StagedFile:
    """A file as an archive would carry it: its claimed origin and the staged bytes."""
    box = tmp_path / "staging"
    box.mkdir(exist_ok=True)
    copy = box / f"config-{len(list(box.iterdir()))}"
    copy.write_text(text)
    return StagedFile(origin, str(copy))


def restore(
    files: list[StagedFile], targets: list[Target], *, privileged: bool = True
) -> tuple[list[str], list[dict[str, str]]]:
    plan = plan_config_restore(files, targets, privileged=privileged)
    return write_config_files(plan), plan.skipped


def test_the_daemon_conf_it_reads_is_written_back(tmp_path: Path, confdir: Path) -> None:
    conf = confdir / "daemon.conf"
    conf.write_text("alerts: {coalesce_seconds: 42}\n")
    targets = config_targets([str(conf), "environment", "command line"])
    written, skipped = restore(
        [staged(tmp_path, str(conf), "alerts: {coalesce_seconds: 17}\n")], targets
    )
    assert written == [str(conf)]
    assert skipped == []
    assert conf.read_text() == "alerts: {coalesce_seconds: 17}\n"
    st = conf.stat()
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert st.st_uid == os.geteuid()
    # Nothing of the write is left beside it.
    assert sorted(p.name for p in confdir.iterdir()) == ["daemon.conf"]


def test_a_climbing_path_with_a_setuid_mode_writes_nothing(tmp_path: Path, confdir: Path) -> None:
    conf = confdir / "daemon.conf"
    conf.write_text("{}\n")
    victim = tmp_path / "usr" / "local" / "bin" / "x"
    victim.parent.mkdir(parents=True)
    climbing = f"{confdir}/../../bin/x"
    assert os.path.normpath(climbing) == str(victim)
    written, skipped = restore(
        [staged(tmp_path, climbing, "#!/bin/sh\nid\n")], config_targets([str(conf)])
    )
    assert written == []
    assert skipped == [
        {"origin": climbing, "reason": "not a normalised path (a '.', '..' or empty component)"}
    ]
    assert not victim.exists()


@pytest.mark.parametrize(
    ("origin", "reason"),
    [
        ("/usr/local/bin/cortex-evil", "not one of the files the daemon reads its configuration"),
        ("/etc/cron.d/cortex", "not one of the files the daemon reads its configuration"),
        ("relative/daemon.conf", "not an absolute path"),
        ("", "not a path"),
        (None, "not a path"),
    ],
)
def test_paths_outside_the_configuration_are_refused(
    tmp_path: Path, confdir: Path, origin: str | None, reason: str
) -> None:
    conf = confdir / "daemon.conf"
    conf.write_text("{}\n")
    written, skipped = restore(
        [staged(tmp_path, origin, "x: 1\n")],  # type: ignore[arg-type]
        config_targets([str(conf)]),
    )
    assert written == []
    assert skipped[0]["reason"].startswith(reason)


def test_no_prefix_match_inside_the_configuration_directory(tmp_path: Path, confdir: Path) -> None:
    conf = confdir / "daemon.conf"
    conf.write_text("{}\n")
    (confdir / "plugins").mkdir()
    origins = [
        f"{confdir}/plugins/evil.py",
        f"{confdir}/daemon.conf.d",
        f"{confdir}//daemon.conf",
        f"{confdir}/./daemon.conf",
    ]
    written, skipped = restore(
        [staged(tmp_path, o, "x: 1\n") for o in origins], config_targets([str(conf)])
    )
    assert written == []
    assert [s["origin"] for s in skipped] == origins
    assert not (confdir / "plugins" / "evil.py").exists()
    assert not (confdir / "daemon.conf.d").exists()
    assert conf.read_text() == "{}\n"


def test_the_old_confdir_is_refused_once_confdir_changed(tmp_path: Path, confdir: Path) -> None:
    """An archive from a daemon configured under another directory is not written there."""
    old = tmp_path / "etc" / "cortex"
    old.mkdir(parents=True)
    conf = confdir / "daemon.conf"
    conf.write_text("{}\n")
    written, skipped = restore(
        [
            staged(tmp_path, str(old / "daemon.conf"), "alerts: {coalesce_seconds: 5}\n"),
            staged(tmp_path, str(conf), "alerts: {coalesce_seconds: 6}\n"),
        ],
        config_targets([str(conf)]),
    )
    assert written == [str(conf)]
    assert skipped[0]["origin"] == str(old / "daemon.conf")
    assert not (old / "daemon.conf").exists()


def test_a_symlinked_config_file_is_refused(tmp_path: Path, confdir: Path) -> None:
    elsewhere = tmp_path / "shadow"
    elsewhere.write_text("root:x:0:0\n")
    conf = confdir / "daemon.conf"
    conf.symlink_to(elsewhere)
    written, skipped = restore([staged(tmp_path, str(conf), "x: 1\n")], config_targets([str(conf)]))
    assert written == []
    assert skipped[0]["reason"] == "a component of the path is a symbolic link"
    assert elsewhere.read_text() == "root:x:0:0\n"
    assert conf.is_symlink()


def test_a_symlinked_directory_component_is_refused(tmp_path: Path, confdir: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "daemon.conf").write_text("{}\n")
    linked = confdir / "linked"
    linked.symlink_to(real)
    origin = str(linked / "daemon.conf")
    written, skipped = restore([staged(tmp_path, origin, "x: 1\n")], config_targets([origin]))
    assert written == []
    assert skipped[0]["reason"] == "a component of the path is a symbolic link"
    assert (real / "daemon.conf").read_text() == "{}\n"


def test_a_missing_directory_is_never_created(tmp_path: Path, confdir: Path) -> None:
    origin = str(confdir / "gone" / "daemon.conf")
    written, skipped = restore([staged(tmp_path, origin, "{}\n")], config_targets([origin]))
    assert written == []
    assert "never creates" in skipped[0]["reason"]
    assert not (confdir / "gone").exists()


def test_a_fifo_in_place_of_the_file_is_refused(tmp_path: Path, confdir: Path) -> None:
    conf = confdir / "daemon.conf"
    os.mkfifo(conf)
    written, skipped = restore([staged(tmp_path, str(conf), "{}\n")], config_targets([str(conf)]))
    assert written == []
    assert skipped[0]["reason"] == "it exists and is not a regular file"


def test_modes_are_fixed_whatever_the_file_had(tmp_path: Path, confdir: Path) -> None:
    conf = confdir / "daemon.conf"
    conf.write_text("{}\n")
    conf.chmod(0o4777)
    rules = confdir / "alerts.yaml"
    targets = config_targets(
        [str(conf)], [ConfigTarget(str(rules), root_only_options, always_secret=True)]
    )
    restore(
        [
            staged(tmp_path, str(conf), "alerts: {coalesce_seconds: 3}\n"),
            staged(tmp_path, str(rules), "alerts: []\n"),
        ],
        targets,
    )
    assert stat.S_IMODE(conf.stat().st_mode) == 0o644
    assert stat.S_IMODE(rules.stat().st_mode) == 0o600


def test_a_daemon_conf_holding_a_secret_is_written_0600(tmp_path: Path, confdir: Path) -> None:
    conf = confdir / "daemon.conf"
    text = yaml.safe_dump({"http": {"api_token": "s3cret"}})
    restore([staged(tmp_path, str(conf), text)], config_targets([str(conf)]))
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600


def test_an_invalid_daemon_conf_is_refused_naming_the_real_path(
    tmp_path: Path, confdir: Path
) -> None:
    conf = confdir / "daemon.conf"
    conf.write_text("{}\n")
    with pytest.raises(ConfigError) as caught:
        plan_config_restore(
            [staged(tmp_path, str(conf), "server: {request_timeout: -1}\n")],
            config_targets([str(conf)]),
            privileged=True,
        )
    assert any(str(conf) in e and "request_timeout" in e for e in caught.value.errors)
    assert not any("staging" in e for e in caught.value.errors)
    assert conf.read_text() == "{}\n"


# -- root-only keys ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "candidate", "keys"),
    [
        ({}, {"updates": {"apt_command": ["/tmp/x.sh"]}}, ["updates.apt_command"]),
        (
            {"updates": {"apt_command": ["apt-get"]}},
            {"updates": {"apt_command": ["/tmp/x.sh"]}},
            ["updates.apt_command"],
        ),
        # Setting a key to its default still overrides a lower layer: a change.
        ({}, {"server": {"admin_group": "cortex-admin"}}, ["server.admin_group"]),
        ({"plugins": {"directory": "/etc/cortex/plugins"}}, {}, ["plugins.directory"]),
        ({}, {"model_path": "/home/u/evil.gguf"}, ["inference.model_path"]),
        (
            {},
            {"checks": {"disk_space": {"data_path": "/x"}}, "repair": {"root": "/tmp"}},
            ["checks.disk_space.data_path", "repair.root"],
        ),
    ],
)
def test_a_caller_other_than_root_cannot_change_root_only_keys(
    tmp_path: Path,
    confdir: Path,
    current: dict[str, object],
    candidate: dict[str, object],
    keys: list[str],
) -> None:
    conf = confdir / "daemon.conf"
    before = yaml.safe_dump(current)
    conf.write_text(before)
    files = [staged(tmp_path, str(conf), yaml.safe_dump(candidate))]
    with pytest.raises(RootOnlyChange) as caught:
        plan_config_restore(files, config_targets([str(conf)]), privileged=False)
    assert caught.value.data["keys"] == keys
    for key in keys:
        assert key in caught.value.message
    assert conf.read_text() == before
    # Root may.
    written, _ = restore(files, config_targets([str(conf)]), privileged=True)
    assert written == [str(conf)]


def test_other_keys_and_equal_root_only_values_pass_for_an_admin(
    tmp_path: Path, confdir: Path
) -> None:
    conf = confdir / "daemon.conf"
    conf.write_text(yaml.safe_dump({"updates": {"apt_command": ["apt-get"]}, "alerts": {}}))
    text = yaml.safe_dump(
        {"updates": {"apt_command": ["apt-get"]}, "alerts": {"coalesce_seconds": 9}}
    )
    written, _ = restore(
        [staged(tmp_path, str(conf), text)], config_targets([str(conf)]), privileged=False
    )
    assert written == [str(conf)]


def test_one_forbidden_file_means_nothing_is_written(tmp_path: Path, confdir: Path) -> None:
    conf = confdir / "daemon.conf"
    conf.write_text("{}\n")
    rules = confdir / "alerts.yaml"
    rules.write_text("alerts: []\n")
    targets = config_targets(
        [str(conf)], [ConfigTarget(str(rules), root_only_options, always_secret=True)]
    )
    files = [
        staged(tmp_path, str(conf), "alerts: {coalesce_seconds: 3}\n"),
        staged(
            tmp_path,
            str(rules),
            yaml.safe_dump(
                {
                    "alerts": [
                        {
                            "name": "r",
                            "actions": [
                                {"type": "jsonl", "path": "/etc/cron.d/x"},
                                {"type": "webhook", "url": "https://h/", "ca_file": "/root/k"},
                            ],
                        }
                    ]
                }
            ),
        ),
    ]
    with pytest.raises(RootOnlyChange) as caught:
        plan_config_restore(files, targets, privileged=False)
    assert caught.value.data["keys"] == [
        f"{rules}: alerts[r].actions[0]",
        f"{rules}: alerts[r].actions[1].ca_file",
    ]
    assert conf.read_text() == "{}\n"
    assert rules.read_text() == "alerts: []\n"


def test_rules_changes_that_name_no_file_pass_for_an_admin(tmp_path: Path, confdir: Path) -> None:
    rules = confdir / "alerts.yaml"
    rules.write_text(
        yaml.safe_dump({"alerts": [{"name": "r", "actions": [{"type": "webhook", "url": "a"}]}]})
    )
    targets = [ConfigTarget(str(rules), root_only_options, always_secret=True)]
    text = yaml.safe_dump(
        {"alerts": [{"name": "r", "actions": [{"type": "webhook", "url": "http://b/"}]}]}
    )
    written, _ = restore([staged(tmp_path, str(rules), text)], targets, privileged=False)
    assert written == [str(rules)]


# -- rules files -------------------------------------------------------------------


def test_a_rules_file_that_does_not_validate_is_refused_naming_it(
    tmp_path: Path, confdir: Path
) -> None:
    rules = tmp_path / "srv" / "alerts.yaml"  # outside the configuration directory
    rules.parent.mkdir()
    rules.write_text("alerts: []\n")
    targets = [rules_target(rules)]
    bad = yaml.safe_dump({"alerts": [{"name": "r", "actions": [{"type": "webhook"}]}]})
    with pytest.raises(ConfigError) as caught:
        plan_config_restore([staged(tmp_path, str(rules), bad)], targets, privileged=True)
    assert caught.value.errors == [
        f"{rules}: rule 'r': field 'actions[0].url': required for a webhook action"
    ]
    assert rules.read_text() == "alerts: []\n"
    # A type a plugin adds is checked once the plugins have loaded, as at start.
    added = yaml.safe_dump({"alerts": [{"name": "r", "actions": [{"type": "pager"}]}]})
    written, _ = restore([staged(tmp_path, str(rules), added)], targets)
    assert written == [str(rules)]


def rules_target(path: Path) -> ConfigTarget:
    return ConfigTarget(str(path), root_only_options, always_secret=True, validate=check_rules_file)


# -- the plugins directory ------------------------------------------------------------

PLUGIN_YAML = "name: disk_temp\nplugin_type: check\n"
PLUGIN_CODE = "def check(settings):\n    return {'status': 'PASS', 'message': 'ok'}\n"


@pytest.fixture
def plugins(confdir: Path) -> Path:
    """The plugins directory of a configuration directory that is not /etc/cortex."""
    path = confdir / "plugins"
    path.mkdir(mode=0o755)
    return path


def tree_targets(confdir: Path, plugins: Path) -> list[Target]:
    conf = confdir / "daemon.conf"
    if not conf.exists():
        conf.write_text("{}\n")
    return config_targets([str(conf)], plugins=PluginTree(str(plugins)))


def plugin_files(tmp_path: Path, plugins: Path, name: str = "disk_temp") -> list[StagedFile]:
    base = plugins / name
    return [
        staged(tmp_path, f"{base}/plugin.yaml", PLUGIN_YAML),
        staged(tmp_path, f"{base}/__init__.py", PLUGIN_CODE),
    ]


def test_a_deleted_plugin_is_written_back_root_safe(
    tmp_path: Path, confdir: Path, plugins: Path
) -> None:
    base = plugins / "disk_temp"
    helper = staged(tmp_path, f"{base}/bin/read-sensor", "#!/bin/sh\necho 41\n")
    data = staged(tmp_path, f"{base}/lib/limits.yaml", "max: 70\n")
    files = [
        *plugin_files(tmp_path, plugins),
        dataclasses.replace(helper, mode=0o4777),  # setuid and world-writable in the archive
        dataclasses.replace(data, mode=0o2666),
    ]
    plan = plan_config_restore(files, tree_targets(confdir, plugins), privileged=True)
    assert plan.plugins() == ["disk_temp"]
    written = write_config_files(plan)
    assert written == [f.origin for f in files]
    assert (base / "__init__.py").read_text() == PLUGIN_CODE
    assert (base / "bin" / "read-sensor").read_text() == "#!/bin/sh\necho 41\n"
    modes = {
        str(p.relative_to(plugins)): stat.S_IMODE(p.stat().st_mode)
        for p in (base, *base.rglob("*"))
    }
    assert modes == {
        "disk_temp": 0o755,
        "disk_temp/plugin.yaml": 0o644,
        "disk_temp/__init__.py": 0o644,
        "disk_temp/bin": 0o755,
        "disk_temp/bin/read-sensor": 0o755,
        "disk_temp/lib": 0o755,
        "disk_temp/lib/limits.yaml": 0o644,
    }
    assert {p.stat().st_uid for p in (base, *base.rglob("*"))} == {os.geteuid()}
    # The plugin loader takes what was written.
    check_directory_trust(str(plugins), os.geteuid())
    check_trust(str(base), os.geteuid())


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("{plugins}/../../../bin/x", "not a normalised path"),
        ("{plugins}/disk_temp/../../daemon.conf", "not a normalised path"),
        ("{plugins}/./disk_temp/x.py", "not a normalised path"),
        ("{plugins}//disk_temp/x.py", "not a normalised path"),
        ("/usr/local/bin/cortex-evil", "not one of the files the daemon reads"),
        ("{plugins}-old/disk_temp/x.py", "not one of the files the daemon reads"),
        ("{plugins}evil/disk_temp/x.py", "not one of the files the daemon reads"),
        ("{confdir}/evil.py", "not one of the files the daemon reads"),
        ("{plugins}/evil.py", "not inside a plugin's directory"),
        ("{plugins}/_private/x.py", "not a name a restore writes"),
        ("{plugins}/.hidden/x.py", "not a name a restore writes"),
        ("{plugins}/disk_temp/.profile", "not a name a restore writes"),
        ("{plugins}/disk_temp/__pycache__/x.pyc", "not a name a restore writes"),
        ("{plugins}/disk_temp/a b.py", "not a name a restore writes"),
        ("{plugins}/p/1/2/3/4/5/6/7/x.py", "more than 8 levels"),
    ],
)
def test_plugin_paths_a_restore_refuses(
    tmp_path: Path, confdir: Path, plugins: Path, where: str, reason: str
) -> None:
    origin = where.format(plugins=plugins, confdir=confdir)
    (plugins.parent / "plugins-old").mkdir()
    written, skipped = restore(
        [staged(tmp_path, origin, "import os\n")], tree_targets(confdir, plugins)
    )
    assert written == []
    assert reason in skipped[0]["reason"]
    assert list(plugins.iterdir()) == []
    assert list((plugins.parent / "plugins-old").iterdir()) == []
    assert not (tmp_path / "bin").exists()


def test_the_old_plugins_directory_is_refused_once_confdir_changed(
    tmp_path: Path, confdir: Path, plugins: Path
) -> None:
    old = tmp_path / "etc" / "cortex" / "plugins"
    old.mkdir(parents=True)
    files = [*plugin_files(tmp_path, old), *plugin_files(tmp_path, plugins)]
    written, skipped = restore(files, tree_targets(confdir, plugins))
    assert written == [f.origin for f in files[2:]]
    assert [s["origin"] for s in skipped] == [f.origin for f in files[:2]]
    assert list(old.iterdir()) == []


@pytest.mark.parametrize("linked", ["plugin", "plugins", "file", "subdirectory"])
def test_a_symbolic_link_on_the_way_is_refused(
    tmp_path: Path, confdir: Path, plugins: Path, linked: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "__init__.py").write_text("kept\n")
    base = plugins / "disk_temp"
    origin = f"{base}/__init__.py"
    if linked == "plugin":
        base.symlink_to(elsewhere)
    elif linked == "plugins":
        plugins.rmdir()
        plugins.symlink_to(elsewhere.parent)
        (elsewhere.parent / "disk_temp").symlink_to(elsewhere)
    elif linked == "file":
        base.mkdir()
        (base / "__init__.py").symlink_to(elsewhere / "__init__.py")
    else:
        base.mkdir()
        (base / "pkg").symlink_to(elsewhere)
        origin = f"{base}/pkg/__init__.py"
    written, skipped = restore(
        [staged(tmp_path, origin, "import os\n")], tree_targets(confdir, plugins)
    )
    assert written == []
    assert skipped[0]["reason"].endswith("a component of the path is a symbolic link")
    assert (elsewhere / "__init__.py").read_text() == "kept\n"


def test_a_missing_plugins_directory_is_never_created(
    tmp_path: Path, confdir: Path, plugins: Path
) -> None:
    plugins.rmdir()
    written, skipped = restore(plugin_files(tmp_path, plugins), tree_targets(confdir, plugins))
    assert written == []
    assert "does not exist (restore never creates it)" in skipped[0]["reason"]
    assert not plugins.exists()


def test_a_directory_in_place_of_a_plugin_file_is_refused(
    tmp_path: Path, confdir: Path, plugins: Path
) -> None:
    (plugins / "disk_temp" / "__init__.py").mkdir(parents=True)
    written, skipped = restore(plugin_files(tmp_path, plugins), tree_targets(confdir, plugins))
    assert written == [str(plugins / "disk_temp" / "plugin.yaml")]
    assert skipped[0]["reason"].endswith("it exists and is not a regular file")


def test_a_directory_swapped_for_a_link_after_the_plan_is_not_followed(
    tmp_path: Path, confdir: Path, plugins: Path
) -> None:
    (plugins / "disk_temp").mkdir()
    plan = plan_config_restore(
        plugin_files(tmp_path, plugins), tree_targets(confdir, plugins), privileged=True
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (plugins / "disk_temp").rmdir()
    (plugins / "disk_temp").symlink_to(elsewhere)
    with pytest.raises(OSError, match="no longer writable"):
        write_config_files(plan)
    assert list(elsewhere.iterdir()) == []


def test_an_oversized_plugin_file_is_refused_whole(
    tmp_path: Path, confdir: Path, plugins: Path
) -> None:
    files = [
        *plugin_files(tmp_path, plugins),
        staged(tmp_path, f"{plugins}/disk_temp/blob.bin", "x" * (MAX_PLUGIN_FILE_BYTES + 1)),
    ]
    with pytest.raises(ConfigError) as caught:
        plan_config_restore(files, tree_targets(confdir, plugins), privileged=True)
    assert caught.value.errors == [
        f"{plugins}/disk_temp/blob.bin: the archived copy is larger than "
        f"{MAX_PLUGIN_FILE_BYTES} bytes"
    ]
    assert list(plugins.iterdir()) == []


def test_a_caller_other_than_root_cannot_add_or_change_plugin_files(
    tmp_path: Path, confdir: Path, plugins: Path
) -> None:
    targets = tree_targets(confdir, plugins)
    base = plugins / "disk_temp"
    # A deleted plugin: an admin may not bring it back.
    with pytest.raises(RootOnlyChange) as caught:
        plan_config_restore(plugin_files(tmp_path, plugins), targets, privileged=False)
    assert caught.value.data == {
        "keys": [],
        "plugin_files": [f"{base}/plugin.yaml", f"{base}/__init__.py"],
    }
    assert f"only root may change the plugin files {base}/plugin.yaml" in caught.value.message
    assert not base.exists()
    # Root may; then the same files again change nothing, and an admin may restore them.
    restore(plugin_files(tmp_path, plugins), targets)
    before = {p.name: p.stat().st_mtime_ns for p in base.iterdir()}
    written, skipped = restore(plugin_files(tmp_path, plugins), targets, privileged=False)
    assert (written, skipped) == ([], [])
    assert {p.name: p.stat().st_mtime_ns for p in base.iterdir()} == before
    # One changed byte, or a mode, is a change.
    (base / "__init__.py").write_text(PLUGIN_CODE.replace("ok", "OK"))
    (base / "plugin.yaml").chmod(0o755)
    conf = confdir / "daemon.conf"
    files = [
        staged(tmp_path, str(conf), yaml.safe_dump({"plugins": {"directory": "/tmp/p"}})),
        *plugin_files(tmp_path, plugins),
    ]
    with pytest.raises(RootOnlyChange) as caught:
        plan_config_restore(files, targets, privileged=False)
    assert caught.value.data["keys"] == ["plugins.directory"]
    assert caught.value.data["plugin_files"] == [f"{base}/plugin.yaml", f"{base}/__init__.py"]
    assert caught.value.message.startswith(
        "only root may change plugins.directory and the plugin files"
    )
    assert "OK" in (base / "__init__.py").read_text()
    assert conf.read_text() == "{}\n"


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="root only: ownership rules bind a root daemon")
@pytest.mark.parametrize(
    "untrusted", ["plugins owner", "plugins mode", "parent mode", "plugin owner", "plugin mode"]
)
def test_a_plugins_directory_not_roots_alone_gets_nothing(
    tmp_path: Path, confdir: Path, plugins: Path, untrusted: str
) -> None:
    base = plugins / "disk_temp"
    base.mkdir()
    changed = {
        "plugins owner": (plugins, 65534, 0o755),
        "plugins mode": (plugins, 0, 0o775),
        "parent mode": (confdir, 0, 0o777),
        "plugin owner": (base, 65534, 0o755),
        "plugin mode": (base, 0, 0o757),
    }
    path, uid, mode = changed[untrusted]
    os.chown(path, uid, 0)
    path.chmod(mode)
    written, skipped = restore(plugin_files(tmp_path, plugins), tree_targets(confdir, plugins))
    assert written == []
    assert all("is not root's alone" in s["reason"] for s in skipped)
    assert list(base.iterdir()) == []
    # The loader refuses the same directories.
    with pytest.raises(PluginError):
        check_directory_trust(str(plugins), 0)
        check_trust(str(base), 0)


# A restore planned where the configuration directory is a read-only mount, as
# ProtectSystem=strict makes everything but /etc/cortex for the service: it runs in
# a private mount namespace, so nothing of the host is remounted.
PLAN_READ_ONLY = """
import json, sys
from cortexd.config.plugintree import PluginTree
from cortexd.config.restore import StagedFile, config_targets, plan_config_restore
conf, plugins, staged = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
targets = config_targets([conf], plugins=PluginTree(plugins))
plan = plan_config_restore([StagedFile(*s) for s in staged], targets, privileged=True)
print(json.dumps({"writes": [w.path for w in plan.writes], "skipped": plan.skipped}))
"""


def plan_where_read_only(directory: Path, *args: str) -> dict[str, Any]:
    if os.geteuid() == 0:
        mount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount]
        argv += [str(directory)]
    else:
        # For a daemon that is not root, a directory it may not write is the same case.
        for path in (directory, *directory.rglob("*")):
            if path.is_dir():
                path.chmod(0o555)
        argv = []
    done = subprocess.run(
        [*argv, sys.executable, "-c", PLAN_READ_ONLY, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_a_read_only_directory_is_refused_before_anything_is_written(
    tmp_path: Path, confdir: Path, plugins: Path
) -> None:
    conf = confdir / "daemon.conf"
    conf.write_text("{}\n")
    files = [staged(tmp_path, str(conf), "alerts: {coalesce_seconds: 3}\n")]
    files += plugin_files(tmp_path, plugins)
    args = (str(conf), str(plugins), json.dumps([[f.origin, f.staged] for f in files]))
    writable = plan_where_read_only(tmp_path / "staging", *args)  # not where it writes
    assert writable == {"writes": [f.origin for f in files], "skipped": []}
    read_only = plan_where_read_only(confdir, *args)
    assert read_only["writes"] == []
    assert [s["origin"] for s in read_only["skipped"]] == [f.origin for f in files]
    assert all(s["reason"].endswith(NOT_WRITABLE) for s in read_only["skipped"])
