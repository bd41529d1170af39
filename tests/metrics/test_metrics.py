"""Metrics, /health and /ready from the real daemon, checked by the real promtool."""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import orjson
import psutil
import pytest

from cortexd.alerts import AlertManager
from cortexd.app import Daemon
from cortexd.config import ConfigFiles, load_config
from cortexd.metrics.methods import MetricsComponent
from cortexd.monitor.scheduler import Monitor
from cortexd.protocol import MethodNotFound
from cortexd.sd import SystemdNotifier
from tests.daemon import DaemonProcess, running_daemon, short_tmpdir
from tests.metrics.helpers import promtool, sample
from tests.notify.helpers import free_port, poll

WAIT = 30.0


def get(port: int, path: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        body = exc.read()
        exc.close()
        return exc.code, body, exc.headers["Content-Type"]


@pytest.fixture
def http_daemon(tmp_path: Path) -> Any:
    port = free_port()
    textfile = tmp_path / "cortexd.prom"
    config = {
        "metrics": {
            "http_enabled": True,
            "http_port": port,
            "textfile_path": str(textfile),
            "textfile_interval_seconds": 1,
        },
        "notify": {"rules_path": str(tmp_path / "none.yaml")},
    }
    with running_daemon(config) as d:
        yield d, port, textfile


def test_metrics_method_and_http_pass_promtool_and_count_what_happened(
    http_daemon: tuple[DaemonProcess, int, Path],
) -> None:
    d, port, _ = http_daemon
    with pytest.raises(MethodNotFound):
        d.call("no.such.method")
    d.call("ping")
    poll(lambda: d.call("checks.list")["checks"][0]["status"], what="a first check run")
    text = d.call("metrics")["text"]
    promtool(text)
    assert sample(text, 'cortex_requests_total{code="METHOD_NOT_FOUND",method="unknown"}') == 1
    assert (sample(text, 'cortex_requests_total{code="ok",method="ping"}') or 0) >= 1
    assert_process_metrics_describe(text, d.proc.pid)
    assert "cortex_check_runs_total{" in text
    assert "cortex_check_duration_seconds_bucket{" in text
    assert "cortex_inference_queue_depth 0.0" in text
    assert "_created" not in text

    status, body, content_type = get(port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    promtool(body.decode())
    assert get(port, "/nope")[0] == 404


def assert_process_metrics_describe(text: str, pid: int) -> None:
    """The standard process_* metrics are there, unprefixed, and describe the daemon."""
    proc = psutil.Process(pid)
    rss = sample(text, "process_resident_memory_bytes") or 0
    assert 0.5 < rss / proc.memory_info().rss < 2, (rss, proc.memory_info().rss)
    start = sample(text, "process_start_time_seconds") or 0
    assert abs(start - proc.create_time()) < 2, (start, proc.create_time())
    assert (sample(text, "process_open_fds") or 0) >= 3
    assert (sample(text, "process_max_fds") or 0) >= 1024
    assert sample(text, "process_cpu_seconds_total") is not None
    assert (sample(text, "process_virtual_memory_bytes") or 0) >= rss
    assert "cortex_process_" not in text


def test_health_and_ready_documents(http_daemon: tuple[DaemonProcess, int, Path]) -> None:
    d, port, _ = http_daemon
    status, body, content_type = get(port, "/ready")
    assert (status, orjson.loads(body)) == (200, {"ready": True, "socket": True, "monitor": True})
    assert content_type == "application/json"
    poll(lambda: d.call("health")["checks"], what="check results")
    status, body, _ = get(port, "/health")
    doc = orjson.loads(body)
    assert doc["status"] in ("healthy", "degraded", "unhealthy")
    assert status == (503 if doc["status"] == "unhealthy" else 200)
    assert doc["timestamp"].endswith("Z")
    assert doc["checks"]
    # Checks keep finishing meanwhile: each one /health named is one `health` knows.
    full = d.call("health")
    assert set(doc["checks"]) <= set(full["checks"])
    assert set(doc["checks"].values()) <= {"pass", "warn", "fail", "skip", "error"}
    # `cortexctl health --json` shows the method's document: a superset of
    # /health in the same words, not a second vocabulary.
    assert full["status"] in ("healthy", "degraded", "unhealthy")
    assert full["timestamp"].endswith("Z")
    assert set(full["checks"].values()) <= {"pass", "warn", "fail", "skip", "error"}
    assert set(doc) - {"alerts", "stale_checks"} <= set(full)


def test_the_textfile_is_written_whole(http_daemon: tuple[DaemonProcess, int, Path]) -> None:
    _, _, textfile = http_daemon
    poll(textfile.exists, what="the textfile")
    text = textfile.read_text()
    promtool(text)
    assert "cortex_build_info{" in text
    # node_exporter exports its own process_* metrics: the daemon's would clash there.
    assert "\nprocess_" not in text and not text.startswith("process_")
    # No temporary file is left beside it.
    assert [p.name for p in textfile.parent.iterdir()] == [textfile.name]


def fetch(port: int, path: str, accept: str | None) -> tuple[bytes, str | None, str | None]:
    """The raw body, Content-Encoding and Vary of one GET with `Accept-Encoding: accept`."""
    headers = {} if accept is None else {"Accept-Encoding": accept}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read(), response.headers["Content-Encoding"], response.headers["Vary"]


def test_a_scraper_that_asks_for_gzip_gets_it(http_daemon: tuple[DaemonProcess, int, Path]) -> None:
    """Prometheus sends `Accept-Encoding: gzip`: the exposition goes compressed,
    smaller, and unpacks to a valid exposition; others get it plain."""
    _, port, _ = http_daemon
    plain, encoding, vary = fetch(port, "/metrics", None)
    assert encoding is None and vary == "Accept-Encoding"
    packed, encoding, _ = fetch(port, "/metrics", "gzip")
    assert encoding == "gzip"
    text = gzip.decompress(packed)
    # Repetitive text: even a young daemon's few kilobytes shrink well.
    assert len(packed) * 2 < len(text)
    assert plain.startswith(b"# HELP")
    promtool(text.decode())
    families = {line.split()[2] for line in text.decode().splitlines() if line.startswith("# TYPE")}
    assert "cortex_build_info" in families
    assert fetch(port, "/metrics", "deflate, gzip;q=0")[1] is None
    assert fetch(port, "/metrics", "identity")[1] is None
    # A small answer is not worth gzip's own bytes.
    assert fetch(port, "/ready", "gzip")[1] is None


class Gate:
    """A component started after metrics that holds the socket back until released."""

    name = "gate"

    def __init__(self) -> None:
        self.reached = anyio.Event()
        self.release = anyio.Event()

    def state(self) -> dict[str, Any]:
        return {"state": "running" if self.release.is_set() else "starting"}

    async def start(self, tg: Any) -> None:
        self.reached.set()
        await self.release.wait()

    def apply_config(self, config: Any) -> None:
        return None

    async def stop(self) -> None:
        return None


async def test_ready_is_503_until_the_socket_serves() -> None:
    """/ready over HTTP while a component after metrics holds the socket back, then after."""
    port = free_port()
    workdir = short_tmpdir()
    none = os.path.join(workdir, "none")
    loaded = load_config(
        files=ConfigFiles(system=none, user=none),
        environ={},
        overrides={
            "state_dir": os.path.join(workdir, "state"),
            "server": {"socket_path": os.path.join(workdir, "c.sock")},
            "notify": {"rules_path": none},
            "metrics": {"http_enabled": True, "http_port": port},
        },
    )
    daemon = Daemon(loaded, notifier=SystemdNotifier({}))
    daemon.install_features()
    kept = (AlertManager, Monitor, MetricsComponent)
    gate = Gate()
    daemon.components[:] = [*(c for c in daemon.components if isinstance(c, kept)), gate]
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            with anyio.fail_after(WAIT):
                await gate.reached.wait()
            status, body, _ = await anyio.to_thread.run_sync(get, port, "/ready")
            assert (status, orjson.loads(body)) == (
                503,
                {"ready": False, "socket": False, "monitor": True},
            )
            gate.release.set()
            with anyio.fail_after(WAIT):
                while True:
                    status, body, _ = await anyio.to_thread.run_sync(get, port, "/ready")
                    if status == 200:
                        break
                    await anyio.sleep(0.05)
            assert orjson.loads(body) == {"ready": True, "socket": True, "monitor": True}
            daemon.request_shutdown("test over")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_metrics_port_in_use_fails_the_start_before_ready(tmp_path: Path) -> None:
    """The HTTP port is bound before READY=1, like the Unix socket: a port taken
    by another program stops the start with one clear line, and READY never comes."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = {
            "metrics": {"http_enabled": True, "http_host": "127.0.0.1", "http_port": port},
            "notify": {"rules_path": str(tmp_path / "none.yaml")},
        }
        with running_daemon(config, wait_ready=False) as d:
            assert d.wait(30) == 1, d.log()
            assert "cannot start:" in d.log()
            assert "address already in use" in d.log().lower()
            sent = d.notify.keys()  # the state keys in order, a list
            assert "READY" not in sent
            assert not os.path.exists(d.socket_path)


def test_a_probe_sent_the_moment_ready_arrives_is_answered_not_refused(tmp_path: Path) -> None:
    """The HTTP port listens before READY=1: a probe sent at once waits in the
    backlog while the features start, then gets a /ready document."""
    port = free_port()
    config = {
        "metrics": {"http_enabled": True, "http_host": "127.0.0.1", "http_port": port},
        "notify": {"rules_path": str(tmp_path / "none.yaml")},
    }
    with running_daemon(config, wait_ready=False) as d:
        d.notify.wait_for(lambda m: m.get("READY") == "1", WAIT)
        status, body, _ = get(port, "/ready")
        assert status in (200, 503)
        assert set(orjson.loads(body)) == {"ready", "socket", "monitor"}
        poll(lambda: get(port, "/ready")[0] == 200, what="/ready to say ready")
