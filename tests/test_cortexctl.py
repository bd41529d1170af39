"""cortexctl: the CLI's exit codes and output, its import footprint, and the
sync and async client libraries against a real daemon on a real socket."""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import orjson
import pytest

from cortexctl import AsyncClient, Client, DaemonUnreachable, cli
from cortexd.protocol import (
    Busy,
    CortexError,
    InvalidParams,
    MethodNotFound,
    NotFound,
    Timeout,
)
from tests.daemon import DaemonProcess, running_daemon, short_tmpdir
from tests.server.harness import serving

CLI_TIMEOUT = 60
# orjson too: its import costs more than a whole `status` round trip.
FORBIDDEN_IMPORTS = ("psutil", "llama_cpp", "numpy", "anyio", "yaml", "orjson", "prometheus_client")
FORBIDDEN_DAEMON_PARTS = ("cortexd.server", "cortexd.app", "cortexd.config")


@pytest.fixture(scope="module")
def shared_daemon() -> Iterator[DaemonProcess]:
    with running_daemon() as d:
        yield d


# Where a command with no --socket looks: never the host's /run/cortex.sock,
# which another daemon on the machine may hold with other permissions.
NO_DAEMON = "/nonexistent/cortexctl-tests/cortex.sock"


@pytest.fixture(autouse=True)
def no_host_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process calls of the CLI or the clients default to NO_DAEMON too."""
    monkeypatch.setenv("CORTEX_SOCKET", NO_DAEMON)


def cortexctl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CORTEX_SOCKET": NO_DAEMON}
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "cortexctl", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=env,
        check=False,
    )


# -- the command line ------------------------------------------------------------


def test_ping_exit_0(shared_daemon: DaemonProcess) -> None:
    result = cortexctl("--socket", shared_daemon.socket_path, "ping")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pong from ")


@pytest.mark.parametrize(
    "command",
    [["ping"], ["version"], ["status"], ["config", "show"], ["config", "show", "server"]],
)
def test_json_output_parses(shared_daemon: DaemonProcess, command: list[str]) -> None:
    result = cortexctl("--socket", shared_daemon.socket_path, "--json", *command)
    assert result.returncode == 0, result.stderr
    value = orjson.loads(result.stdout)
    assert isinstance(value, dict)
    assert value


def test_json_status_fields(shared_daemon: DaemonProcess) -> None:
    result = cortexctl("--socket", shared_daemon.socket_path, "--json", "status")
    status = orjson.loads(result.stdout)
    assert status["pid"] == shared_daemon.proc.pid
    assert status["components"]["server"]["state"] == "running"
    assert status["server"]["connections_open"] >= 1


def test_human_status_table(shared_daemon: DaemonProcess) -> None:
    result = cortexctl("--socket", shared_daemon.socket_path, "status")
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        key, _, value = line.strip().partition("  ")
        rows[key] = value.strip()
    assert "cortexd is running" in result.stdout
    assert rows["version"] == shared_daemon.call("version")["version"]
    assert rows["pid"] == str(shared_daemon.proc.pid)
    assert rows["uptime"].endswith(("s", "m"))
    assert rows["socket"] == shared_daemon.socket_path
    assert "\033[" not in result.stdout  # no colour when not a terminal


def test_daemon_error_exit_1(shared_daemon: DaemonProcess) -> None:
    result = cortexctl("--socket", shared_daemon.socket_path, "config", "show", "nosuch")
    assert result.returncode == 1
    assert "NOT_FOUND" in result.stderr
    assert "nosuch" in result.stderr
    as_json = cortexctl("--socket", shared_daemon.socket_path, "--json", "config", "show", "nosuch")
    assert as_json.returncode == 1
    error = orjson.loads(as_json.stdout)["error"]
    assert error["code"] == -32001
    assert error["data"]["name"] == "NOT_FOUND"


@pytest.mark.parametrize(
    "args",
    [[], ["frobnicate"], ["--timeout", "0", "ping"], ["--timeout", "x", "ping"], ["config"]],
    ids=["no command", "unknown command", "zero timeout", "bad timeout", "missing action"],
)
def test_usage_exit_2(args: list[str]) -> None:
    result = cortexctl("--socket", "/nonexistent/c.sock", *args)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_a_command_without_socket_never_dials_the_hosts_socket() -> None:
    result = cortexctl("status")
    assert result.returncode == 3, result.stderr
    assert NO_DAEMON in result.stderr
    assert "/run/cortex.sock" not in result.stderr
    with pytest.raises(DaemonUnreachable) as caught:
        Client().connect()
    assert NO_DAEMON in str(caught.value)


def test_help_exit_0() -> None:
    result = cortexctl("--help")
    assert result.returncode == 0
    assert "exit codes" in result.stdout


def test_no_daemon_exit_3_with_start_hint() -> None:
    workdir = short_tmpdir()
    try:
        missing = cortexctl("--socket", os.path.join(workdir, "none.sock"), "status")
        # A stale socket file nobody listens on is the same to the user.
        stale_path = os.path.join(workdir, "stale.sock")
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(stale_path)
        stale.close()
        refused = cortexctl("--socket", stale_path, "ping")
    finally:
        for name in os.listdir(workdir):
            os.unlink(os.path.join(workdir, name))
        os.rmdir(workdir)
    for result in (missing, refused):
        assert result.returncode == 3
        lines = result.stderr.strip().splitlines()
        assert lines[0].startswith("cortexctl: cannot reach cortexd")
        assert lines[1].startswith("hint:")
        assert "systemctl start cortexd" in lines[1]
        assert result.stdout == ""


def test_unreachable_hint_for_permission() -> None:
    from cortexctl.client import unreachable

    exc = unreachable("/run/cortex.sock", PermissionError(13, "Permission denied"))
    assert "group" in exc.hint
    assert "cortex" in exc.hint


def test_cli_does_not_import_daemon_or_heavy_modules(shared_daemon: DaemonProcess) -> None:
    script = (
        "import io, sys, json\n"
        "from cortexctl.cli import main\n"
        f"rc = main(['--socket', {shared_daemon.socket_path!r}, 'status'], stdout=io.StringIO())\n"
        "assert rc == 0, rc\n"
        f"rc = main(['--socket', {shared_daemon.socket_path!r}, '--json', 'config', 'show'],"
        " stdout=io.StringIO())\n"
        "assert rc == 0, rc\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=CLI_TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    modules = orjson.loads(result.stdout)
    assert "cortexctl.cli" in modules
    heavy = [m for m in modules if m.split(".")[0] in FORBIDDEN_IMPORTS]
    daemon_parts = [m for m in modules if m.startswith(FORBIDDEN_DAEMON_PARTS)]
    assert heavy == []
    assert daemon_parts == []


# -- the sync client -------------------------------------------------------------


def test_client_keeps_one_connection(shared_daemon: DaemonProcess) -> None:
    with Client(shared_daemon.socket_path) as client:
        before = client.call("status")["server"]["connections_total"]
        for _ in range(5):
            assert client.call("ping")["pong"] is True
        after = client.call("status")["server"]["connections_total"]
    assert after == before


@pytest.mark.parametrize(
    ("method", "params", "error", "data"),
    [
        ("no.such", None, MethodNotFound, {"method": "no.such"}),
        ("config.get", {"section": 1}, InvalidParams, {"param": "section"}),
        ("config.get", {"bogus": "x"}, InvalidParams, {"param": "bogus"}),
        ("config.get", {"section": "nosuch"}, NotFound, {"section": "nosuch"}),
    ],
)
def test_client_raises_typed_errors(
    shared_daemon: DaemonProcess,
    method: str,
    params: dict[str, Any] | None,
    error: type[CortexError],
    data: dict[str, Any],
) -> None:
    with Client(shared_daemon.socket_path) as client:
        with pytest.raises(error) as caught:
            client.call(method, params)
        assert type(caught.value) is error
        for key, value in data.items():
            assert caught.value.data[key] == value
        # The connection is still good after an error answer.
        assert client.call("ping")["pong"] is True


def test_client_unreachable() -> None:
    with pytest.raises(DaemonUnreachable) as caught:
        Client("/nonexistent/c.sock").connect()
    assert "not running" in str(caught.value)


def test_client_over_the_connection_limit_gets_busy() -> None:
    with running_daemon({"server": {"max_connections": 1}}) as d:
        with Client(d.socket_path) as holder:
            assert holder.call("ping")["pong"] is True
            with pytest.raises(Busy) as caught, Client(d.socket_path) as extra:
                extra.call("ping")
            assert caught.value.data["limit"] == 1
            assert holder.call("ping")["pong"] is True
        # The slot is free again once the daemon has seen the holder leave.
        deadline = time.monotonic() + 30
        while True:
            try:
                assert d.call("ping")["pong"] is True
                break
            except Busy:
                assert time.monotonic() < deadline, "the freed slot was never reused"
                time.sleep(0.05)


def test_client_cli_busy_is_a_daemon_error() -> None:
    with running_daemon({"server": {"max_connections": 1}}) as d:
        with Client(d.socket_path) as holder:
            assert holder.call("ping")["pong"] is True
            result = cortexctl("--socket", d.socket_path, "ping")
        assert result.returncode == 1
        assert "BUSY" in result.stderr
        assert "too many connections" in result.stderr


# -- the async client ------------------------------------------------------------


async def test_async_client_concurrent_calls_on_one_connection() -> None:
    async with serving(request_timeout=30) as served:
        finished: list[str] = []
        results: dict[str, Any] = {}

        async with AsyncClient(served.path) as client:

            async def run(name: str, method: str, params: dict[str, Any] | None) -> None:
                results[name] = await client.call(method, params)
                finished.append(name)

            async with anyio.create_task_group() as tg:
                tg.start_soon(run, "slow", "slow", {"seconds": 1.0})
                tg.start_soon(run, "echo", "echo", {"text": "hi"})
                tg.start_soon(run, "fast", "fast", None)
            assert served.stats.connections_total == 1
        assert results["slow"] == {"slept": 1.0}
        assert results["echo"]["text"] == "hi"
        assert results["fast"] == {"fast": True}
        assert finished[-1] == "slow"


async def test_async_client_typed_errors_and_streams() -> None:
    async with serving() as served, AsyncClient(served.path) as client:
        with pytest.raises(MethodNotFound):
            await client.call("nope")
        with pytest.raises(InvalidParams) as caught:
            await client.call("echo", {"text": 1})
        assert caught.value.data["param"] == "text"
        with pytest.raises(Timeout):
            await client.call("quick_timeout", {"seconds": 10})
        seen: list[Any] = []
        assert await client.call("chatty", {"count": 4}, on_stream=seen.append) == 4
        assert seen == [{"n": i} for i in range(4)]


async def test_async_client_reply_timeout() -> None:
    async with serving(request_timeout=30) as served, AsyncClient(served.path) as client:
        with pytest.raises(TimeoutError):
            await client.call("slow", {"seconds": 5}, reply_timeout=0.2)
        assert (await client.call("fast"))["fast"] is True


async def test_async_client_connection_closed_by_daemon() -> None:
    async with serving(idle_timeout=0.3) as served, AsyncClient(served.path) as client:
        assert (await client.call("fast"))["fast"] is True
        await served.wait_until(lambda: served.stats.connections_open == 0)
        started = time.monotonic()
        with pytest.raises(DaemonUnreachable):
            await client.call("fast", reply_timeout=20)
        assert time.monotonic() - started < 10, "a closed connection must fail fast, not time out"


async def test_async_client_busy_fails_pending_call() -> None:
    async with serving(max_connections=1) as served:
        holder = await served.connect()
        assert (await holder.request("fast"))["result"]
        async with AsyncClient(served.path) as client:
            with pytest.raises(Busy):
                await client.call("fast", reply_timeout=20)


async def test_async_client_unreachable() -> None:
    with pytest.raises(DaemonUnreachable):
        await AsyncClient("/nonexistent/c.sock").connect()


async def test_async_client_against_the_daemon(shared_daemon: DaemonProcess) -> None:
    async with AsyncClient(shared_daemon.socket_path) as client:
        pongs = []
        async with anyio.create_task_group() as tg:
            for _ in range(20):

                async def one() -> None:
                    pongs.append(await client.call("ping"))

                tg.start_soon(one)
        assert len(pongs) == 20
        assert all(p["pong"] is True for p in pongs)
        with pytest.raises(MethodNotFound):
            await client.call("missing")


def test_closed_stdout_is_not_an_error(shared_daemon: DaemonProcess) -> None:
    # `true` exits at once, long before cortexctl has its answer to print.
    script = (
        f"{sys.executable} -m cortexctl --socket {shared_daemon.socket_path} config show | true;"
        " echo rc=${PIPESTATUS[0]}"
    )
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=CLI_TIMEOUT
    )
    assert "Traceback" not in result.stderr
    assert "BrokenPipe" not in result.stderr
    assert result.stdout.strip() == "rc=0"


def test_every_command_is_mapped_to_the_modules_that_build_it() -> None:
    # The CLI registers only the modules a command needs; a command missing
    # from the map, or mapped to the wrong module, would be "invalid choice".
    owners: dict[str, list[str]] = {}
    for name in cli.COMMAND_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"cortexctl.commands.{name}").register(sub)
        for command in sub.choices:
            owners.setdefault(command, []).append(name)
    assert set(owners) == set(cli.COMMAND_OWNERS)
    for command, names in owners.items():
        assert set(names) <= set(cli.COMMAND_OWNERS[command]), command
    for command in cli.COMMAND_OWNERS:
        parser = cli.build_parser(cli.modules_for(["--json", command]))
        with pytest.raises(SystemExit) as shown:
            parser.parse_args([command, "--help"])
        assert shown.value.code == 0


def test_doctor_keeps_its_fix_flag_when_built_alone() -> None:
    words = ["--socket", "/nonexistent", "doctor", "--fix"]
    assert cli.requested_command(words) == "doctor"
    args = cli.build_parser(cli.modules_for(words)).parse_args(words)
    assert args.fix is True
