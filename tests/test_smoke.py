"""The daemon starts, answers ping over the real socket, and stops cleanly."""

from __future__ import annotations

import os

from tests.daemon import DaemonProcess


def test_ping_and_clean_stop(daemon: DaemonProcess) -> None:
    assert daemon.call("ping")["pong"] is True
    assert daemon.stop() == 0
    assert not os.path.exists(daemon.socket_path)
    states = daemon.notify.keys()
    assert "STOPPING" in states
