"""The original tool's sectioned keys: read as cortexd's, noted, never "unknown" —
loaded from a file as the original wrote it, and seen at work in a real daemon."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cortexd.protocol import ConfigError
from tests.config.conftest import Layout
from tests.daemon import running_daemon
from tests.plugins.conftest import COMMAND, write_plugin

# The configuration section of the original tool's documentation, as written there.
SEED_FILE = """\
# /etc/cortex/config.yaml

# Doctor settings
doctor:
  timeout_seconds: 30     # Check timeout
  parallel_checks: true   # Run checks in parallel
  max_parallel: 4         # Max concurrent checks
  auto_fix_safe: false    # Auto-fix safe issues

# Update settings
updates:
  check_interval_hours: 24
  auto_check: true
  backup_before_update: true
  rollback_retention_days: 7
  channel: stable

# Plugin settings
plugins:
  enabled: true
  directory: /etc/cortex/plugins
  auto_load: true
  trusted_sources:
    - cortexlinux
"""
# The same file with every switch the other way.
SEED_FILE_OFF = (
    SEED_FILE.replace("parallel_checks: true", "parallel_checks: false")
    .replace("auto_fix_safe: false", "auto_fix_safe: true")
    .replace("auto_check: true", "auto_check: false")
    .replace("auto_load: true", "auto_load: false")
)


def test_the_original_file_loads_with_a_note_per_key_and_nothing_unknown(
    layout: Layout,
) -> None:
    layout.system.parent.mkdir(parents=True, exist_ok=True)
    layout.system.write_text(SEED_FILE)
    loaded = layout.load()
    config = loaded.config
    assert config.doctor.max_parallel == 4
    assert config.doctor.timeout_seconds == 30.0
    assert config.repair.auto_fix_safe is False
    assert config.checks.apt_updates.enabled and config.checks.security_updates.enabled
    assert config.updates.channel == ""
    assert config.updates.check_interval_hours == 24.0
    assert config.plugins.enabled is True
    notes = {w.split(": ")[1]: w for w in loaded.warnings}
    assert set(notes) == {
        "doctor.auto_fix_safe",
        "doctor.parallel_checks",
        "updates.auto_check",
        "updates.channel",
        "plugins.auto_load",
        "plugins.trusted_sources",
    }
    assert not [w for w in loaded.warnings if "unknown key" in w]
    # Each note names the file and the line of its key.
    assert notes["doctor.auto_fix_safe"].startswith(f"{layout.system}:8: ")
    assert "read as repair.auto_fix_safe: false" in notes["doctor.auto_fix_safe"]
    assert notes["updates.channel"].startswith(f"{layout.system}:16: ")
    assert "'stable'" in notes["updates.channel"]


def test_the_switches_turned_off_do_what_the_original_meant(layout: Layout) -> None:
    layout.system.parent.mkdir(parents=True, exist_ok=True)
    layout.system.write_text(SEED_FILE_OFF)
    config = layout.load().config
    assert config.repair.auto_fix_safe is True
    assert config.doctor.max_parallel == 1
    assert not config.checks.apt_updates.enabled
    assert not config.checks.security_updates.enabled
    assert config.checks.disk_space.enabled  # only the update checks
    assert config.plugins.enabled is False


def test_cortexd_names_win_in_the_same_file_and_layers_still_stack(layout: Layout) -> None:
    layout.write_system({"doctor": {"auto_fix_safe": True}, "repair": {"auto_fix_safe": False}})
    loaded = layout.load()
    assert loaded.config.repair.auto_fix_safe is False
    assert any("ignored: repair.auto_fix_safe" in w for w in loaded.warnings)
    # An alias in the user file overrides the system file's real key, as any key would.
    layout.write_system({"repair": {"auto_fix_safe": False}})
    layout.write_user({"doctor": {"auto_fix_safe": True}})
    assert layout.load().config.repair.auto_fix_safe is True


def test_the_aliases_work_from_the_environment(layout: Layout) -> None:
    loaded = layout.load(
        env={"CORTEXD_DOCTOR__PARALLEL_CHECKS": "false", "CORTEXD_PLUGINS__AUTO_LOAD": "no"}
    )
    assert loaded.config.doctor.max_parallel == 1
    assert loaded.config.plugins.enabled is False
    assert any(
        w.startswith("environment variable CORTEXD_DOCTOR__PARALLEL_CHECKS: ")
        for w in loaded.warnings
    )


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("doctor", "parallel_checks", "sometimes"),
        ("updates", "auto_check", 3),
        ("plugins", "auto_load", [True]),
    ],
)
def test_a_bad_value_is_an_error_naming_the_alias(
    layout: Layout, section: str, key: str, value: Any
) -> None:
    layout.write_system({section: {key: value}})
    with pytest.raises(ConfigError) as caught:
        layout.load()
    (problem,) = caught.value.errors
    assert f"{section}.{key}: expected true or false" in problem
    assert problem.startswith(str(layout.system))


def test_a_manifest_location_in_channel_is_not_a_channel_name(layout: Layout) -> None:
    layout.write_system({"updates": {"channel": "https://releases.example.org/cortexd.json"}})
    loaded = layout.load()
    assert loaded.config.updates.channel == "https://releases.example.org/cortexd.json"
    assert loaded.warnings == ()
    layout.write_system({"updates": {"channel": "http://releases.example.org/cortexd.json"}})
    with pytest.raises(ConfigError) as caught:
        layout.load()
    assert "updates.channel: must be a file:///path or https://" in caught.value.errors[0]


def test_a_daemon_on_the_original_file_behaves_as_it_says(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    plugins.chmod(0o755)
    write_plugin(plugins, "greeter", COMMAND, plugin_type="command")
    for text, on in ((SEED_FILE, True), (SEED_FILE_OFF, False)):
        sections = yaml.safe_load(text)
        sections["plugins"]["directory"] = str(plugins)
        with running_daemon(sections) as daemon:
            got = daemon.call("config.get")
            notes = [w for w in got["warnings"] if "unknown" not in w]
            assert len(notes) == 6 and len(got["warnings"]) == 6, got["warnings"]
            assert got["config"]["repair"]["auto_fix_safe"] is not on
            assert got["config"]["doctor"]["max_parallel"] == (4 if on else 1)
            checks = {c["id"]: c["enabled"] for c in daemon.call("checks.list")["checks"]}
            assert checks["apt_updates"] is on and checks["security_updates"] is on
            listed = daemon.call("plugins.list")
            loaded = [p["name"] for p in listed["plugins"] if p["status"] == "loaded"]
            assert (loaded == ["greeter"]) is on, json.dumps(listed)
