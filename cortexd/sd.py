"""systemd integration: sd_notify messages, the watchdog period, socket activation.

Each reads its environment once and removes it, as sd_notify(3) and
sd_listen_fds(3) do, so child processes never inherit a socket or a
notification address meant for the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import MutableMapping

import sdnotify

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class SystemdNotifier:
    """Sends sd_notify state lines; a no-op when systemd did not ask for them.

    `environ` stands in for the process environment in tests. The address is
    only ever taken from the real one: sdnotify reads it from there, and a
    stand-in mapping never makes the notifier send anywhere.
    """

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._systemd: sdnotify.SystemdNotifier | None = None
        if env is os.environ and env.get("NOTIFY_SOCKET"):
            self._systemd = _systemd_notifier(env["NOTIFY_SOCKET"])
        self.enabled = self._systemd is not None
        self.watchdog_seconds = _watchdog_seconds(env)
        for key in NOTIFY_ENV:
            env.pop(key, None)

    def send(self, *lines: str) -> None:
        """Send `lines` as one datagram (e.g. `"READY=1", "STATUS=serving"`)."""
        if self._systemd is not None:
            # sd_notify speaks UTF-8, and sdnotify encodes as Latin-1 (dropping
            # the whole message on any other character): hand it text whose
            # Latin-1 bytes are the UTF-8 ones, so a STATUS= with a non-ASCII
            # path cannot cost a READY=1.
            self._systemd.notify("\n".join(lines).encode("utf-8").decode("latin-1"))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def reloading(self) -> None:
        """RELOADING=1 with the CLOCK_MONOTONIC time it began, as Type=notify-reload asks.

        systemd (253 and later) uses MONOTONIC_USEC to tell this reload from
        one it asked for earlier; READY=1 ends it.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading configuration")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=shutting down")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def close(self) -> None:
        """Close the notification socket; later sends do nothing."""
        if self._systemd is not None:
            if self._systemd.socket is not None:
                self._systemd.socket.close()
            self._systemd = None


def _systemd_notifier(address: str) -> sdnotify.SystemdNotifier | None:
    """sdnotify's notifier for the address in the environment, or None if unreachable.

    Its socket is made non-blocking because the sends happen on the event
    loop: if systemd's queue is full a notification is dropped (sdnotify
    swallows the error), which beats stalling every client.
    """
    # A connect that fails leaves sdnotify's socket to the garbage collector,
    # whose ResourceWarning would name no culprit; ours says what happened.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        notifier = sdnotify.SystemdNotifier()
    if notifier.socket is None:
        log.warning("cannot reach NOTIFY_SOCKET %s; systemd will not hear from the daemon", address)
        return None
    notifier.socket.setblocking(False)
    return notifier


def _watchdog_seconds(env: MutableMapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC=%r", usec)
        return None
    return value / 1_000_000 if value > 0 else None


def inherited_socket(environ: MutableMapping[str, str] | None = None) -> socket.socket | None:
    """The listening socket systemd passed (LISTEN_FDS/LISTEN_PID), if any.

    Raises:
        OSError: fd 3 is not a listening Unix stream socket.
    """
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if not pid or not count or pid != str(os.getpid()):
        return None
    try:
        n = int(count)
    except ValueError:
        return None
    if n < 1:
        return None
    if n > 1:
        log.warning("systemd passed %d sockets; serving the first only", n)
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise OSError(f"inherited fd {SD_LISTEN_FDS_START} is not a Unix stream socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise OSError(f"inherited fd {SD_LISTEN_FDS_START} is not listening")
    os.set_inheritable(sock.fileno(), False)
    return sock
