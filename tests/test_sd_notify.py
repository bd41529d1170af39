"""sd_notify through sdnotify, over a real datagram socket standing in for systemd's.

`RELOADING=1` carries `MONOTONIC_USEC=` (what `Type=notify-reload` on systemd
253 and later reads); the address is taken from the process environment and
removed from it, so children never inherit it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from cortexd.sd import SystemdNotifier
from tests.daemon import NotifyListener, running_daemon, short_tmpdir

WAIT = 10.0


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    workdir = short_tmpdir()
    notify = NotifyListener(os.path.join(workdir, "notify"))
    try:
        yield notify
    finally:
        notify.close()
        os.unlink(notify.path)
        os.rmdir(workdir)


def test_reloading_carries_the_monotonic_time_it_began(
    listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.path)
    notifier = SystemdNotifier()
    assert "NOTIFY_SOCKET" not in os.environ, "a child process would inherit the address"
    before = monotonic_usec()
    notifier.reloading()
    after = monotonic_usec()
    notifier.ready("serving on /run/cortex.sock")
    notifier.close()
    message = listener.wait_for(lambda m: "RELOADING" in m, WAIT)
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= after
    ready = listener.wait_for(lambda m: "READY" in m, WAIT)
    assert ready == {
        "READY": "1",
        "STATUS": "serving on /run/cortex.sock",
        "MAINPID": str(os.getpid()),
    }


def test_status_text_goes_out_as_utf8(
    listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.path)
    notifier = SystemdNotifier()
    notifier.ready("serving on /run/cørtex → sock")
    notifier.close()
    assert listener.wait_for(lambda m: "READY" in m, WAIT)["STATUS"] == (
        "serving on /run/cørtex → sock"
    )


def test_an_abstract_address_is_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"cortex-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(WAIT)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = SystemdNotifier()
        notifier.watchdog()
        notifier.close()
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_an_unreachable_address_is_logged_and_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    caplog.set_level(logging.WARNING, logger="cortexd.sd")
    # filterwarnings=error: a socket left to the garbage collector fails this test.
    notifier = SystemdNotifier()
    assert notifier.enabled is False
    notifier.ready("serving")
    notifier.close()
    assert "cannot reach NOTIFY_SOCKET /nonexistent/notify" in caplog.text
    assert "NOTIFY_SOCKET" not in os.environ


def test_a_stand_in_environment_never_sends(listener: NotifyListener) -> None:
    env = {"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "4000000"}
    notifier = SystemdNotifier(env)
    assert notifier.enabled is False
    assert notifier.watchdog_seconds == 4.0
    notifier.ready("serving")
    notifier.close()
    assert env == {}
    with pytest.raises(TimeoutError):
        listener.wait_for(lambda m: True, 0.3)


def wait_after(listener: NotifyListener, start: int, key: str) -> dict[str, str]:
    """The first message carrying `key` among those that arrived after the first `start`."""
    return listener.wait_for(
        lambda m: key in m and any(m is later for later in listener.messages[start:]), WAIT
    )


def test_the_daemon_reloads_between_reloading_with_its_time_and_ready() -> None:
    with running_daemon() as daemon:
        start = len(daemon.notify.messages)
        before = monotonic_usec()
        daemon.signal(signal.SIGHUP)
        reloading = wait_after(daemon.notify, start, "RELOADING")
        assert reloading["RELOADING"] == "1"
        assert before <= int(reloading["MONOTONIC_USEC"]) <= monotonic_usec()
        assert reloading["STATUS"] == "reloading configuration"
        # READY=1 follows, ending the reload for systemd.
        wait_after(daemon.notify, daemon.notify.messages.index(reloading), "READY")

        # A reload asked for over the socket tells systemd the same way.
        start = len(daemon.notify.messages)
        before = monotonic_usec()
        assert daemon.call("config.reload")["reloaded"] is True
        reloading = wait_after(daemon.notify, start, "RELOADING")
        assert before <= int(reloading["MONOTONIC_USEC"]) <= monotonic_usec()
