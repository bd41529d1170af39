"""The operator's plugin tooling against a real daemon: where `create` writes, what it
says, what each scaffold's manifest carries, and `list --available` seeing the disk."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
import yaml

from cortexctl.cli import main as cortexctl
from cortexd.protocol import CortexError
from tests.daemon import running_daemon
from tests.plugins.conftest import GOOD_CHECK, write_plugin

WAIT = 60.0


def ctl(*args: str, socket: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cortexctl(["--socket", socket, *args], stdout=out)
    return code, out.getvalue()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of the test's own, so no user config of the machine is read."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CORTEXD_PLUGINS__DIRECTORY", raising=False)
    return home


def test_create_writes_into_the_daemons_plugin_directory(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with running_daemon() as daemon:
        configured = daemon.call("config.get", {"section": "plugins"})["config"]["plugins"]
        plugins = Path(configured["directory"])
        code, text = ctl("plugins", "create", "disk-probe", socket=daemon.socket_path)
        assert code == 0, text
        assert f"created {plugins / 'disk-probe' / 'plugin.yaml'}" in text
        assert "load it:    sudo cortexctl plugins reload" in text
        assert f"(plugin directory {plugins}, from the daemon)" in text
        assert "/etc/cortex/plugins" not in text
        assert list(elsewhere.iterdir()) == []  # not the current directory

        # Not loaded yet, but on disk: --available says so, as the directory is now.
        code, text = ctl("plugins", "list", "--available", socket=daemon.socket_path)
        assert code == 0, text
        assert "found" in text and "disk-probe" in text
        assert "no plugins found" not in text
        daemon.call("plugins.reload", timeout=WAIT)
        (loaded,) = daemon.call("plugins.list")["plugins"]
        assert (loaded["name"], loaded["status"]) == ("disk-probe", "loaded")

        # Elsewhere on request; the hint names the daemon's directory, not a guess.
        code, text = ctl(
            "plugins", "create", "other", "-d", str(elsewhere), socket=daemon.socket_path
        )
        assert code == 0, text
        assert f"install it: sudo cp -r {elsewhere / 'other'} {plugins}/" in text


def test_without_a_daemon_create_reads_the_config_files(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "my-plugins"
    (home / ".cortex").mkdir()
    (home / ".cortex" / "daemon.conf").write_text(
        yaml.safe_dump({"plugins": {"directory": str(mine)}})
    )
    nobody = str(tmp_path / "no-daemon.sock")
    code, text = ctl("plugins", "create", "probe", "--type", "command", socket=nobody)
    assert code == 0, text
    assert (mine / "probe" / "plugin.yaml").is_file()
    assert f"(plugin directory {mine}, from {home / '.cortex' / 'daemon.conf'})" in text

    from_env = tmp_path / "env-plugins"
    monkeypatch.setenv("CORTEXD_PLUGINS__DIRECTORY", str(from_env))
    code, text = ctl("plugins", "create", "probe", socket=nobody)
    assert code == 0, text
    assert (from_env / "probe" / "plugin.yaml").is_file()


def test_create_where_it_cannot_write_says_why(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    nobody = str(tmp_path / "no-daemon.sock")
    code, text = ctl("plugins", "create", "probe", "-d", str(blocker), socket=nobody)
    assert code == 1
    assert f"cannot write {blocker / 'probe'}: Not a directory" in capsys.readouterr().err
    assert text == ""


@pytest.mark.parametrize(
    ("kind", "present", "absent"),
    [
        ("check", {"interval_seconds", "settings"}, {"action_type", "action_options"}),
        ("command", set(), {"interval_seconds", "settings", "action_type", "action_options"}),
        ("notifier", {"action_type", "action_options"}, {"interval_seconds", "settings"}),
    ],
)
def test_each_scaffold_carries_only_what_its_type_reads(
    tmp_path: Path, home: Path, kind: str, present: set[str], absent: set[str]
) -> None:
    nobody = str(tmp_path / "no-daemon.sock")
    code, text = ctl("plugins", "create", "x", "--type", kind, "-d", str(tmp_path), socket=nobody)
    assert code == 0, text
    manifest = yaml.safe_load((tmp_path / "x" / "plugin.yaml").read_text())
    assert manifest["plugin_type"] == kind
    assert present <= set(manifest)
    assert not absent & set(manifest)
    for folder in (tmp_path / "x", tmp_path / "x" / "tests"):
        assert folder.stat().st_mode & 0o777 == 0o755  # a root daemon trusts it


def test_list_scan_reports_the_directory_as_it_is_now(tmp_path: Path) -> None:
    base = tmp_path / "plugins"
    base.mkdir()
    write_plugin(base, "early", GOOD_CHECK)
    with running_daemon({"plugins": {"directory": str(base)}}) as daemon:
        before = daemon.call("plugins.list")["plugins"]
        assert [(p["name"], p["status"]) for p in before] == [("early", "loaded")]

        write_plugin(base, "late", GOOD_CHECK, version="2.0.0")
        broken = base / "broken"
        broken.mkdir(mode=0o755)
        (broken / "plugin.yaml").write_text("name: [unclosed\n")
        os.chmod(broken / "plugin.yaml", 0o644)
        shutil.rmtree(base / "early")

        # Without `scan`: what the daemon loaded, unchanged.
        assert daemon.call("plugins.list")["plugins"] == before
        seen = {p["name"]: p for p in daemon.call("plugins.list", {"scan": True})["plugins"]}
        assert seen["late"]["status"] == "found" and seen["late"]["version"] == "2.0.0"
        assert seen["broken"]["status"] == "failed"
        assert "not valid YAML" in seen["broken"]["error"]
        assert seen["early"]["status"] == "removed"
        assert "plugins reload" in seen["early"]["error"]
        # Only looked at: nothing was loaded or unloaded.
        assert daemon.call("plugins.list")["plugins"] == before

        with pytest.raises(CortexError) as bad:
            daemon.call("plugins.list", {"scan": "yes"})
        assert bad.value.code.name == "INVALID_PARAMS" and "scan" in bad.value.message
        assert daemon.call("ping")
