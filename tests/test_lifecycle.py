"""The daemon's lifecycle as systemd and an operator see it, on the real process.

Every test runs the real `cortexd` in a subprocess with a real datagram
socket as NOTIFY_SOCKET (tests/daemon.py) and talks to it over its real Unix
socket. The drain tests need a request that stays in flight for as long as the
test wants, and no built-in method does that yet; they run the real entry
point (`cortexd.main.main`) from a small launcher that registers one extra
method, `test.gate`, which waits until a file exists. Everything else — the
signal handling, the drain, the exit code — is the daemon's own code.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import yaml

from cortexctl.aio import AsyncClient
from cortexd import __version__
from cortexd.app import Daemon
from cortexd.config import load_config
from cortexd.sd import SystemdNotifier
from tests.daemon import (
    READY_TIMEOUT,
    DaemonProcess,
    NotifyListener,
    base_config,
    merge,
    running_daemon,
    short_tmpdir,
    spawn,
    with_test_methods,
)

# Generous bounds for a shared two-core machine: they catch hangs, not slowness.
WAIT = 30.0
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130

GATE_METHOD = """
import anyio


async def gate(call):
    # Stays in flight until the test creates the file.
    while not await anyio.Path(call.params["path"]).exists():
        await anyio.sleep(0.02)
    return {"opened": call.params["path"]}


TEST_METHODS = [
    Method("test.gate", gate, params=(Param("path", str, required=True),), timeout=300)
]
"""


# -- helpers -------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


def wait_sequence(
    notify: NotifyListener, keys: list[str], start: int, timeout: float = WAIT
) -> None:
    """Wait until `keys` arrive in this order among the state keys after index `start`
    (an index into `notify.keys()`)."""

    def present(_message: dict[str, str]) -> bool:
        seen = iter(notify.keys()[start:])
        return all(k in seen for k in keys)

    notify.wait_for(present, timeout)


def count(notify: NotifyListener, key: str) -> int:
    return notify.keys().count(key)


class Conn:
    """One raw client connection: send requests, collect answers by id."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(path)
        self.buffer = b""
        self.answers: dict[Any, dict[str, Any]] = {}
        self.closed = False

    def send(self, req_id: int, method: str, params: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": req_id, "method": method}
        if params is not None:
            message["params"] = params
        self.sock.sendall(orjson.dumps(message) + b"\n")

    def answer(self, req_id: int) -> dict[str, Any]:
        while req_id not in self.answers:
            if self.closed:
                raise AssertionError(f"connection closed before answer {req_id}: {self.answers}")
            self._read()
        return self.answers[req_id]

    def read_until_closed(self) -> None:
        while not self.closed:
            self._read()

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            self.closed = True
            return
        self.buffer += chunk
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            message = orjson.loads(line)
            self.answers[message.get("id")] = message

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def connect() -> Iterator[Callable[[str], Conn]]:
    """Open raw connections that are closed after the test, even when it fails."""
    opened: list[Conn] = []

    def open_conn(path: str) -> Conn:
        conn = Conn(path)
        opened.append(conn)
        return conn

    yield open_conn
    for conn in opened:
        conn.close()


@contextlib.contextmanager
def gated_daemon(config: dict[str, Any]) -> Iterator[DaemonProcess]:
    """The real daemon plus the `test.gate` method (see the module docstring)."""
    with running_daemon(config, command=with_test_methods(GATE_METHOD)) as daemon:
        yield daemon


def current_config(daemon: DaemonProcess) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(Path(daemon.config_path).read_text())
    return loaded


def error_of(conn_answer: dict[str, Any]) -> dict[str, Any]:
    assert "error" in conn_answer, conn_answer
    error: dict[str, Any] = conn_answer["error"]
    return error


# -- start-up and readiness -----------------------------------------------


def test_ready_is_sent_once_the_socket_accepts_with_a_status_line() -> None:
    with running_daemon(wait_ready=False) as daemon:
        ready = daemon.notify.wait_for(lambda m: m.get("READY") == "1", READY_TIMEOUT)
        # Connecting the moment READY arrives must work: the socket listens first.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(WAIT)
            sock.connect(daemon.socket_path)
            sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
            assert b'"pong":true' in sock.recv(65536)
        assert daemon.socket_path in ready["STATUS"]
        assert ready["MAINPID"] == str(daemon.proc.pid)
        assert daemon.notify.keys()[0] == "READY"


def test_a_status_asked_the_moment_ready_arrives_shows_every_feature_started() -> None:
    """READY=1 comes before the features are imported and started: a request
    sent at once waits in the listen backlog and is answered by all of them."""
    with running_daemon(wait_ready=False) as daemon:
        daemon.notify.wait_for(lambda m: m.get("READY") == "1", READY_TIMEOUT)
        status = daemon.call("status")
        built = Daemon(load_config(daemon.config_path), notifier=SystemdNotifier({}))
        built.install_features()
        assert list(status["components"]) == ["server", *(c.name for c in built.components)]
        states = {name: c["state"] for name, c in status["components"].items()}
        assert "starting" not in states.values(), states
        assert daemon.notify.wait_for(
            lambda m: m.get("STATUS", "").startswith("serving on"), READY_TIMEOUT
        )


def test_features_import_in_the_worker_thread_not_on_the_loop() -> None:
    """Every module building the features needs is in FEATURE_MODULES, so the
    loop never imports one after READY=1."""
    script = (
        "import sys\n"
        "from cortexd.config import load_config\n"
        "from cortexd.app import Daemon\n"
        "from cortexd.features import import_features\n"
        "daemon = Daemon(load_config(sys.argv[1]))\n"
        "import_features()\n"
        "before = set(sys.modules)\n"
        "daemon.install_features()\n"
        "print(sorted(m for m in set(sys.modules) - before if m.startswith('cortexd')))\n"
    )
    workdir = short_tmpdir()
    try:
        path = os.path.join(workdir, "daemon.conf")
        Path(path).write_text(yaml.safe_dump(base_config(workdir)))
        out = subprocess.run(
            [sys.executable, "-c", script, path], capture_output=True, text=True, timeout=WAIT
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[]"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_watchdog_keeps_being_fed_at_half_the_period() -> None:
    # 200 ms period → a WATCHDOG=1 about every 100 ms from the event loop.
    with running_daemon(env={"WATCHDOG_USEC": "200000"}) as daemon:
        daemon.notify.wait_for(lambda m: m.get("WATCHDOG") == "1", WAIT)
        wait_until(lambda: count(daemon.notify, "WATCHDOG") >= 5, what="5 watchdog pings")
        before = count(daemon.notify, "WATCHDOG")
        # Still alive and still feeding after serving requests.
        assert daemon.call("ping")["pong"] is True
        wait_until(lambda: count(daemon.notify, "WATCHDOG") >= before + 5, what="more pings")


def test_no_watchdog_pings_when_systemd_did_not_ask_for_them() -> None:
    with running_daemon() as daemon:
        daemon.call("status")
        assert daemon.stop() == 0
        seen = daemon.notify.keys()
        assert "STOPPING" in seen
        assert "WATCHDOG" not in seen


def test_watchdog_period_belongs_to_the_watched_pid_only() -> None:
    assert SystemdNotifier({"WATCHDOG_USEC": "2000000"}).watchdog_seconds == 2.0
    other_pid = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert SystemdNotifier(other_pid).watchdog_seconds is None
    assert SystemdNotifier({"WATCHDOG_USEC": "soon"}).watchdog_seconds is None


def test_notifier_consumes_its_environment() -> None:
    env = {"NOTIFY_SOCKET": "/nonexistent/notify", "WATCHDOG_USEC": "1000000"}
    notifier = SystemdNotifier(env)
    notifier.ready("serving")  # an unreachable address is not an error
    notifier.close()
    assert env == {}


# -- reload ----------------------------------------------------------------


def test_sighup_with_a_good_file_applies_it_between_reloading_and_ready() -> None:
    with running_daemon() as daemon:
        config = current_config(daemon)
        config["server"]["request_timeout"] = 7.5
        config["logging"]["level"] = "INFO"
        daemon.write_config(config)
        start = len(daemon.notify.keys())
        daemon.signal(signal.SIGHUP)
        wait_sequence(daemon.notify, ["RELOADING", "READY"], start)
        running = daemon.call("config.get")["config"]
        assert running["server"]["request_timeout"] == 7.5
        assert running["logging"]["level"] == "INFO"


def test_sighup_with_a_bad_file_keeps_the_running_config_and_logs_why() -> None:
    with running_daemon({"server": {"request_timeout": 4.0}}) as daemon:
        Path(daemon.config_path).write_text("server:\n  request_timeout: [1, 2\n")
        start = len(daemon.notify.keys())
        daemon.signal(signal.SIGHUP)
        wait_sequence(daemon.notify, ["RELOADING", "READY"], start)
        assert daemon.call("config.get")["config"]["server"]["request_timeout"] == 4.0
        assert daemon.call("ping")["pong"] is True
        wait_until(lambda: "reload failed" in daemon.log(), what="the failure in the log")
        log = daemon.log()
        assert f"{daemon.config_path}: invalid YAML at line 3" in log
        assert "ERROR" in log


def test_config_reload_with_a_bad_file_answers_config_error_naming_file_key_problem(
    connect: Callable[[str], Conn],
) -> None:
    with running_daemon() as daemon:
        config = current_config(daemon)
        config["server"]["request_timeout"] = "soon"
        config["logging"]["level"] = "LOUD"
        daemon.write_config(config)
        conn = connect(daemon.socket_path)
        conn.send(1, "config.reload")
        error = error_of(conn.answer(1))
        conn.close()
        assert error["code"] == -32011
        assert error["data"]["name"] == "CONFIG_ERROR"
        problems = error["data"]["errors"]
        assert any(
            p.startswith(f"{daemon.config_path}:")
            and "server.request_timeout" in p
            and "expected a number" in p
            for p in problems
        ), problems
        assert any(
            "logging.level" in p and "must be one of DEBUG, INFO, WARN, ERROR" in p
            for p in problems
        ), problems
        # The running config is untouched and the daemon serves on.
        assert daemon.call("config.get")["config"]["server"]["request_timeout"] == 5.0
        assert daemon.call("ping")["pong"] is True


def test_settings_that_need_a_restart_are_reported_and_not_applied() -> None:
    with running_daemon() as daemon:
        config = current_config(daemon)
        moved = os.path.join(daemon.workdir, "moved.sock")
        config["server"]["socket_path"] = moved
        config["server"]["request_timeout"] = 6.0  # this one applies live
        config["inference"] = {"n_ctx": 4096}
        daemon.write_config(config)
        result = daemon.call("config.reload")
        assert sorted(result["restart_required"]) == ["inference.n_ctx", "server.socket_path"]
        running = daemon.call("config.get")
        assert running["config"]["server"]["socket_path"] == daemon.socket_path
        assert running["config"]["inference"]["n_ctx"] == 2048
        assert running["config"]["server"]["request_timeout"] == 6.0
        assert sorted(running["restart_required"]) == ["inference.n_ctx", "server.socket_path"]
        assert sorted(daemon.call("status")["restart_required"]) == [
            "inference.n_ctx",
            "server.socket_path",
        ]
        assert not os.path.exists(moved)


def test_config_reload_alias_and_status_after_reload() -> None:
    with running_daemon() as daemon:
        result = daemon.call("config_reload")
        assert result["reloaded"] is True
        assert result["sources"] == [daemon.config_path]
        assert result["restart_required"] == []


# -- shutdown ----------------------------------------------------------------


def test_sigterm_stops_cleanly_and_removes_the_socket_it_created() -> None:
    with running_daemon() as daemon:
        daemon.call("ping")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(WAIT) == 0
        wait_sequence(daemon.notify, ["READY", "STOPPING"], 0)
        assert not os.path.exists(daemon.socket_path)
        assert "stopped" in daemon.log()


def test_sigterm_the_moment_ready_arrives_stops_cleanly_after_the_features_start() -> None:
    """A SIGTERM while the features are still importing and starting (just after
    READY=1) waits for them, then stops them in order: exit 0, socket removed."""
    with running_daemon(wait_ready=False) as daemon:
        daemon.notify.wait_for(lambda m: m.get("READY") == "1", READY_TIMEOUT)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(WAIT) == 0, daemon.log()
        wait_sequence(daemon.notify, ["READY", "STOPPING"], 0)
        assert not os.path.exists(daemon.socket_path)
        assert "Traceback" not in daemon.log()


def test_sigterm_lets_in_flight_requests_finish_while_new_ones_are_refused(
    connect: Callable[[str], Conn],
) -> None:
    with gated_daemon({"server": {"shutdown_timeout": 60}}) as daemon:
        gate = os.path.join(daemon.workdir, "gate")
        busy = connect(daemon.socket_path)
        other = connect(daemon.socket_path)
        busy.send(1, "test.gate", {"path": gate})
        wait_until(lambda: daemon.call("status")["components"]["server"]["inflight"] == 1)

        daemon.signal(signal.SIGTERM)
        daemon.notify.wait_for(lambda m: m.get("STOPPING") == "1", WAIT)
        busy.send(2, "config.get")
        other.send(3, "config.get")
        late = connect(daemon.socket_path)  # connects during the drain
        late.send(4, "config.get")
        for conn, req_id in ((busy, 2), (other, 3), (late, 4)):
            error = error_of(conn.answer(req_id))
            assert error["code"] == -32007
            assert error["data"]["name"] == "SHUTTING_DOWN"
        # status still answers while draining, and shows the request in flight.
        other.send(5, "status")
        server = other.answer(5)["result"]["components"]["server"]
        assert server["state"] == "stopping"
        assert server["inflight"] == 1
        # A reload now would tell systemd READY=1 after STOPPING=1: it is ignored.
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP ignored" in daemon.log(), what="the ignored SIGHUP")
        assert daemon.proc.poll() is None

        Path(gate).touch()
        assert busy.answer(1)["result"] == {"opened": gate}
        assert daemon.wait(WAIT) == 0
        for conn in (busy, other, late):
            conn.close()
        assert not os.path.exists(daemon.socket_path)
        keys = daemon.notify.keys()
        after_stopping = keys[keys.index("STOPPING") :]
        assert "READY" not in after_stopping
        assert "RELOADING" not in after_stopping


def test_requests_still_running_at_the_shutdown_timeout_are_cancelled(
    connect: Callable[[str], Conn],
) -> None:
    with gated_daemon({"server": {"shutdown_timeout": 1}}) as daemon:
        gate = os.path.join(daemon.workdir, "never")
        busy = connect(daemon.socket_path)
        busy.send(1, "test.gate", {"path": gate})
        wait_until(lambda: daemon.call("status")["components"]["server"]["inflight"] == 1)
        daemon.signal(signal.SIGTERM)
        # Exits on its own after the 1 s grace (the bound here only catches a hang).
        assert daemon.wait(WAIT) == 0
        busy.read_until_closed()
        busy.close()
        assert 1 not in busy.answers or "error" in busy.answers[1]
        assert "still running after 1s; cancelling" in daemon.log()


def test_a_second_sigint_stops_at_once(connect: Callable[[str], Conn]) -> None:
    with gated_daemon({"server": {"shutdown_timeout": 300}}) as daemon:
        busy = connect(daemon.socket_path)
        busy.send(1, "test.gate", {"path": os.path.join(daemon.workdir, "never")})
        wait_until(lambda: daemon.call("status")["components"]["server"]["inflight"] == 1)
        daemon.signal(signal.SIGINT)
        daemon.notify.wait_for(lambda m: m.get("STOPPING") == "1", WAIT)
        assert daemon.proc.poll() is None  # the first interrupt waits for the request
        daemon.signal(signal.SIGINT)
        # Far inside the 300 s grace period the first interrupt would have allowed.
        assert daemon.wait(WAIT) == EXIT_INTERRUPTED
        busy.close()
        assert not os.path.exists(daemon.socket_path)
        assert "stopping now" in daemon.log()


def test_shutdown_method_stops_the_daemon() -> None:
    with running_daemon() as daemon:
        result = daemon.call("shutdown")
        assert result["shutting_down"] is True
        assert daemon.wait(WAIT) == 0
        seen = daemon.notify.keys()
        assert "STOPPING" in seen


# -- the socket path ---------------------------------------------------------


def _spawn_plain(workdir: str, socket_path: str) -> tuple[subprocess.Popen[bytes], str]:
    cfg = merge(base_config(workdir), {"server": {"socket_path": socket_path}})
    proc, notify, _config, log_path = spawn(workdir, cfg)
    try:
        proc.wait(WAIT)
    finally:
        notify.close()
    return proc, Path(log_path).read_text()


def test_refuses_to_start_when_a_live_daemon_answers_on_the_path() -> None:
    with running_daemon() as first:
        workdir = short_tmpdir()
        try:
            proc, log = _spawn_plain(workdir, first.socket_path)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        assert proc.returncode == EXIT_FAILURE
        assert f"cannot start: a daemon is already serving on {first.socket_path}" in log
        # The first daemon keeps its socket and keeps serving.
        assert first.call("ping")["pong"] is True


def test_a_stale_socket_file_is_replaced() -> None:
    outer = short_tmpdir()
    try:
        path = os.path.join(outer, "stale.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
            dead.bind(path)  # a socket file nobody listens on, as after a crash
        with running_daemon({"server": {"socket_path": path}}) as daemon:
            assert daemon.call("ping")["pong"] is True
            assert "removing stale socket" in daemon.log()
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def test_a_path_that_is_not_a_socket_is_refused_and_left_alone() -> None:
    workdir = short_tmpdir()
    try:
        path = os.path.join(workdir, "precious")
        Path(path).write_text("not a socket\n")
        proc, log = _spawn_plain(workdir, path)
        assert proc.returncode == EXIT_FAILURE
        assert f"{path} exists and is not a socket" in log
        assert Path(path).read_text() == "not a socket\n"
        assert stat.S_ISREG(os.lstat(path).st_mode)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- status ------------------------------------------------------------------


def test_status_reports_what_an_operator_needs(connect: Callable[[str], Conn]) -> None:
    with running_daemon() as daemon, daemon.client() as client:
        client.call("ping")
        conn = connect(daemon.socket_path)
        conn.send(1, "config.get", {"section": 7})  # wrong type → INVALID_PARAMS
        assert error_of(conn.answer(1))["data"]["name"] == "INVALID_PARAMS"
        status = client.call("status")
        conn.close()
    assert status["version"] == __version__
    assert status["pid"] == daemon.proc.pid
    assert status["uptime_seconds"] > 0
    assert status["config_sources"] == [daemon.config_path]
    server = status["components"]["server"]
    assert server["state"] == "running"
    assert server["socket"] == daemon.socket_path
    assert server["inherited_socket"] is False
    stats = status["server"]
    assert stats["connections_open"] >= 2  # the client and the raw connection
    assert stats["methods"]["ping"]["requests"] >= 1
    assert stats["methods"]["config.get"]["errors"] == {"INVALID_PARAMS": 1}
    assert stats["errors_total"] >= 1


# -- components, in process ----------------------------------------------------


class Recorder:
    """A component that records what the root asks of it (no built-in one does yet)."""

    def __init__(self, name: str, events: list[tuple[Any, ...]], *, broken: bool = False) -> None:
        self.name = name
        self.events = events
        self.broken = broken

    def state(self) -> dict[str, Any]:
        if self.broken:
            raise RuntimeError("state probe broke")
        return {"state": "running"}

    async def start(self, tg: Any) -> None:
        self.events.append(("start", self.name))

    def apply_config(self, config: Any) -> None:
        self.events.append(("apply", self.name, config.server.request_timeout))
        if self.broken:
            raise RuntimeError("cannot apply")

    async def stop(self) -> None:
        self.events.append(("stop", self.name))
        if self.broken:
            raise RuntimeError("cannot stop")


async def test_components_start_in_order_stop_in_reverse_and_fail_alone() -> None:
    """The composition root in process (a real socket, no subprocess): components
    are started before the first accept, reloaded, and stopped in reverse order;
    one that fails in state(), apply_config() or stop() does not take the
    others down."""
    workdir = short_tmpdir()
    try:
        path = os.path.join(workdir, "daemon.conf")
        await anyio.Path(path).write_text(yaml.safe_dump(base_config(workdir)))
        daemon = Daemon(load_config(path), config_path=path, notifier=SystemdNotifier({}))
        daemon.install_features()
        events: list[tuple[Any, ...]] = []
        # Only the recorders: this is the root's contract, not the features'
        # (their components are tested with their own packages).
        daemon.components[:] = [Recorder("first", events), Recorder("second", events, broken=True)]
        socket_path = daemon.config.server.socket_path
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            with anyio.fail_after(WAIT):
                while True:
                    try:
                        client = AsyncClient(socket_path, timeout=WAIT)
                        await client.connect()
                        break
                    except Exception:
                        await anyio.sleep(0.02)
            async with client:
                status = await client.call("status")
                assert status["components"]["first"] == {"state": "running"}
                assert status["components"]["second"] == {
                    "state": "error",
                    "error": "state probe broke",
                }
                config = base_config(workdir)
                config["server"]["request_timeout"] = 3.0
                await anyio.Path(path).write_text(yaml.safe_dump(config))
                assert (await client.call("config.reload"))["reloaded"] is True
                assert (await client.call("config.get"))["config"]["server"][
                    "request_timeout"
                ] == 3.0
            daemon.request_shutdown("test over")
        assert events == [
            ("start", "first"),
            ("start", "second"),
            ("apply", "first", 3.0),
            ("apply", "second", 3.0),
            ("stop", "second"),
            ("stop", "first"),
        ]
        assert not await anyio.Path(socket_path).exists()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
