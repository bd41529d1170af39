"""systemd integration: sd_notify messages, the watchdog period, socket activation.

Each reads its environment once and removes it, as sd_notify(3) and
sd_listen_fds(3) do, so child processes never inherit a socket or a
notification address meant for the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

import sdnotify

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3


class Notifier:
    """Sends sd_notify state lines; a no-op when systemd did not ask for them."""

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.enabled = bool(address)
        self._notifier: sdnotify.SystemdNotifier | None = None
        if self.enabled:
            # sdnotify's constructor connects a blocking socket to the address
            # in os.environ (and leaks it when that is unset); we give it our
            # own non-blocking socket to the address in `env` instead.
            notifier = sdnotify.SystemdNotifier.__new__(sdnotify.SystemdNotifier)
            notifier.debug = False
            notifier.socket = _connect(address)
            self._notifier = notifier
        self.watchdog_seconds = _watchdog_seconds(env)
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(key, None)

    def send(self, *lines: str) -> None:
        """Send `lines` as one datagram (e.g. `"READY=1", "STATUS=serving"`)."""
        if self._notifier is not None:
            self._notifier.notify("\n".join(lines))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", "STATUS=reloading configuration")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=shutting down")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def close(self) -> None:
        """Close the notification socket; later sends do nothing."""
        if self._notifier is not None:
            if self._notifier.socket is not None:
                self._notifier.socket.close()
            self._notifier = None


def _connect(address: str) -> socket.socket | None:
    """A non-blocking datagram socket connected to `address` (`@name` is abstract).

    Non-blocking because the sends happen on the event loop: if systemd's
    queue is full a notification is dropped (sdnotify swallows the error),
    which beats stalling every client. None when the address cannot be
    reached; sdnotify then sends nothing.
    """
    target = "\0" + address[1:] if address.startswith("@") else address
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(target)
    except OSError as exc:
        log.warning("cannot reach NOTIFY_SOCKET %s: %s", address, exc)
        sock.close()
        return None
    sock.setblocking(False)
    return sock


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
