"""The one config-restore function: where it may write, how, and what it may change.

Restore (backup archives) and update rollback (snapshots) both go through
`cortexd.config.restore`; these tests drive it directly on real files: exact
targets only, no `..`, no symbolic links, no paths outside the configuration,
a configuration directory that is not /etc/cortex, fixed modes, and the
root-only keys a caller other than root may not change; a rules file that
does not validate.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from cortexd.config.restore import (
    ConfigTarget,
    RootOnlyChange,
    StagedFile,
    config_targets,
    plan_config_restore,
    write_config_files,
)
from cortexd.notify.rootonly import check_rules_file, root_only_options
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
    files: list[StagedFile], targets: list[ConfigTarget], *, privileged: bool = True
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
