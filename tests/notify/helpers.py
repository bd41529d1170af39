"""Real local endpoints for notification tests: an HTTP receiver and an SMTP server.

Both listen on 127.0.0.1 only. The HTTP receiver records every POST (path,
headers, body) and can be told to answer, fail (HTTP 500), hang, or refuse
(its socket closed, so connecting fails).
"""

from __future__ import annotations

import contextlib
import http.server
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from aiosmtpd.controller import Controller

from tests.daemon import stop_process

Mode = Literal["ok", "fail", "hang"]
HANG_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    """A threaded HTTP server on 127.0.0.1 that records POSTs."""

    port: int = field(default_factory=free_port)
    mode: Mode = "ok"
    # Each message takes up to this long to process (a random share), as a real
    # endpoint's do: messages sent at once then finish in any order.
    jitter: float = 0.0
    posts: list[Post] = field(default_factory=list)
    _server: http.server.ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:
                    # The sender died mid-request (a test's kill -9): not a message.
                    return
                if receiver.mode == "hang":
                    receiver._release.wait(HANG_SECONDS)
                    return
                if receiver.jitter:
                    time.sleep(random.uniform(0.0, receiver.jitter))
                with receiver._lock:
                    receiver.posts.append(Post(self.path, dict(self.headers.items()), body))
                code = 200 if receiver.mode == "ok" else 500
                answer = b"ok" if code == 200 else b"receiver failing"
                self.send_response(code)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Close the socket: connections are refused from now on."""
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._release = threading.Event()

    def wait_for(self, count: int, timeout: float = 30.0, path: str | None = None) -> list[Post]:
        """Poll until `count` posts (to `path`, if given) arrived; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [p for p in self.posts if path is None or p.path == path]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(found)} of {count} posts arrived: {found}")
            time.sleep(0.02)


@contextlib.contextmanager
def receiver(mode: Mode = "ok", port: int | None = None, jitter: float = 0.0) -> Iterator[Receiver]:
    recv = Receiver(port=port or free_port(), mode=mode, jitter=jitter)
    recv.start()
    try:
        yield recv
    finally:
        recv.stop()


class _MailHandler:
    def __init__(self, sink: list[tuple[str, list[str], bytes]]) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.sink.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"


@dataclass
class MailServer:
    port: int
    messages: list[tuple[str, list[str], bytes]]

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Message]:
        import email

        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.messages)} of {count} mails arrived")
            time.sleep(0.02)
        return [email.message_from_bytes(content) for _, _, content in self.messages]


@contextlib.contextmanager
def smtp_server(**kwargs: Any) -> Iterator[MailServer]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 in its own thread."""
    messages: list[tuple[str, list[str], bytes]] = []
    port = free_port()
    controller = Controller(_MailHandler(messages), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield MailServer(port, messages)
    finally:
        controller.stop()


ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


@dataclass
class Alertmanager:
    """A running Alertmanager: where it listens and its process."""

    url: str
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def alertmanager(home: Path) -> Iterator[Alertmanager]:
    """A real Alertmanager with a null receiver, its config and storage under `home`
    (which must exist), on its own port, not clustered; stopped on the way out.

    Raises:
        RuntimeError: prometheus-alertmanager is not installed.
        AssertionError: it did not listen within the deadline.
    """
    if ALERTMANAGER is None:
        raise RuntimeError("prometheus-alertmanager is not installed (make deps installs it)")
    port = free_port()
    (home / "am.yml").write_text(
        yaml.safe_dump({"route": {"receiver": "null"}, "receivers": [{"name": "null"}]})
    )
    proc = subprocess.Popen(
        [
            ALERTMANAGER,
            f"--config.file={home / 'am.yml'}",
            f"--storage.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        poll(lambda: _listens(port), what="Alertmanager to listen")
        yield Alertmanager(f"http://127.0.0.1:{port}", proc)
    finally:
        stop_process(proc, 10)


def _listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def poll(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Return predicate()'s first truthy value, polling until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def until(predicate: Callable[[], Any], within: float = 30.0, what: str = "condition") -> Any:
    """Like `poll`, for async tests: the event loop keeps running while we wait."""
    import anyio

    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(0.02)
