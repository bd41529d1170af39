"""Smaller holes closed: the silence cap, the plugins directory's owner, a broken rules
file at start, and a refusal that names who may.

Real daemons; the plugins-directory cases need root (to give a directory to
another uid) and say so when skipped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortexd.protocol import InvalidParams
from cortexd.server import Authorizer, Method
from tests.daemon import DaemonProcess, running_daemon, short_tmpdir
from tests.plugins.conftest import write_plugin

NOBODY = 65534
DAY = 86400.0
PLUGIN = "def check(settings):\n    return {'status': 'PASS', 'message': 'fine'}\n"

needs_root = pytest.mark.skipif(
    os.getuid() != 0, reason="needs root: the rule applies to a root daemon, and chown"
)


# -- alerts.max_silence_seconds -----------------------------------------------------


def test_a_silence_longer_than_the_cap_is_refused_and_the_cap_reloads(
    daemon: DaemonProcess,
) -> None:
    ninety_days = 90 * DAY
    with pytest.raises(InvalidParams) as caught:
        daemon.call("alerts.silence", {"matchers": ['job="x"'], "duration_seconds": 10 * 365 * DAY})
    assert caught.value.data["param"] == "duration_seconds"
    assert caught.value.data["limit"] == ninety_days
    assert "alerts.max_silence_seconds" in caught.value.message
    assert "90 days" in caught.value.message
    assert daemon.call("silences.list")["silences"] == []
    made = daemon.call(
        "alerts.silence", {"matchers": ['job="x"'], "duration_seconds": ninety_days}
    )["silence"]
    assert made["ends_at"] - made["starts_at"] == pytest.approx(ninety_days)

    config = Path(daemon.config_path).read_text()
    Path(daemon.config_path).write_text(config + "alerts:\n  max_silence_seconds: 3600\n")
    daemon.call("config.reload")
    with pytest.raises(InvalidParams, match="at most 3600 seconds"):
        daemon.call("alerts.silence", {"matchers": ['job="y"'], "duration_seconds": 3601})


# -- the plugins directory ------------------------------------------------------------


@pytest.fixture
def plugins_parent() -> Iterator[Path]:
    path = Path(short_tmpdir("cxp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def plugin_state(directory: Path) -> tuple[dict[str, object], dict[str, object]]:
    with running_daemon({"plugins": {"directory": str(directory)}}) as daemon:
        state = daemon.call("status")["components"]["plugins"]
        listing = daemon.call("plugins.list")
        scanned = daemon.call("plugins.list", {"scan": True})
        assert scanned["error"] == listing["error"]
        if listing["error"] is not None:
            assert scanned["plugins"] == []
        assert daemon.call("ping")["pong"] is True
    return state, listing


@needs_root
def test_a_plugins_directory_owned_by_another_user_loads_nothing(plugins_parent: Path) -> None:
    directory = plugins_parent / "plugins"
    write_plugin(directory, "fine", PLUGIN)
    os.chown(directory, NOBODY, NOBODY)
    state, listing = plugin_state(directory)
    assert state["state"] == "failed"
    assert f"owned by uid {NOBODY}, not root" in str(state["error"])
    assert listing["plugins"] == []
    assert listing["error"] == state["error"]


@needs_root
@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777])
def test_a_plugins_directory_others_may_write_loads_nothing(
    plugins_parent: Path, mode: int
) -> None:
    directory = plugins_parent / "plugins"
    write_plugin(directory, "fine", PLUGIN)
    os.chmod(directory, mode)
    state, listing = plugin_state(directory)
    assert state["state"] == "failed"
    assert "writable by group or others" in str(state["error"])
    assert listing["plugins"] == []


@needs_root
def test_a_parent_of_the_plugins_directory_is_checked_too(plugins_parent: Path) -> None:
    middle = plugins_parent / "opt"
    directory = middle / "plugins"
    write_plugin(directory, "fine", PLUGIN)
    os.chmod(middle, 0o755)
    os.chown(middle, NOBODY, NOBODY)
    state, _ = plugin_state(directory)
    assert state["state"] == "failed"
    assert f"a parent of the plugins directory {middle} is owned by uid {NOBODY}" in str(
        state["error"]
    )
    os.chown(middle, 0, 0)
    os.chmod(middle, 0o777)
    state, _ = plugin_state(directory)
    assert "writable by group or others (mode 0777)" in str(state["error"])


@needs_root
def test_a_link_to_a_directory_of_another_user_is_refused(plugins_parent: Path) -> None:
    theirs = plugins_parent / "theirs"
    write_plugin(theirs, "fine", PLUGIN)
    os.chown(theirs, NOBODY, NOBODY)
    link = plugins_parent / "plugins"
    link.symlink_to(theirs)
    state, listing = plugin_state(link)
    assert state["state"] == "failed"
    assert f"{theirs} is owned by uid {NOBODY}" in str(state["error"])
    assert listing["plugins"] == []


def test_a_safe_plugins_directory_loads(plugins_parent: Path) -> None:
    directory = plugins_parent / "plugins"
    write_plugin(directory, "fine", PLUGIN)
    state, listing = plugin_state(directory)
    assert state["state"] == "running"
    assert [p["status"] for p in listing["plugins"]] == ["loaded"]  # type: ignore[union-attr]


# -- a broken rules file --------------------------------------------------------------


def test_a_broken_rules_file_stops_the_start_with_exit_code_2(tmp_path: Path) -> None:
    rules = tmp_path / "alerts.yaml"
    rules.write_text(
        "alerts:\n  - name: r\n    status: sometimes\n"
        "    actions: [{type: webhook, url: 'http://127.0.0.1:9/'}]\n"
    )
    with running_daemon({"notify": {"rules_path": str(rules)}}, wait_ready=False) as daemon:
        assert daemon.wait() == 2
        log = daemon.log()
    assert "invalid configuration" in log
    assert "field 'status'" in log


# -- the refusal names who may ---------------------------------------------------------


async def _noop(call: object) -> None:
    return None


def test_the_refusal_names_the_groups_that_may() -> None:
    authorizer = Authorizer(
        lambda: None,
        frozenset(),
        admin_group=lambda: "cortex-admin",
        journal_groups=("adm", "systemd-journal"),
    )
    journal = authorizer.refusal(Method("logs.tail", _noop, access="journal"))
    assert journal == (
        "logs.tail reads the journal: it needs uid 0 or membership in one of the groups "
        "adm, systemd-journal, cortex-admin (the last is the admin group)"
    )
    admin = authorizer.refusal(Method("shutdown", _noop, access="admin"))
    assert admin == "shutdown needs uid 0 or membership in the admin group (cortex-admin)"
