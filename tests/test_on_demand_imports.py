"""What the idle daemon never imports, and what its first use does.

Code that runs only on demand (an explanation, a restore, a package rebuild)
and libraries the daemon does without (argparse for its few flags, psutil
for /proc, Python's IDNA tables for ASCII names) must not be in a daemon
that has started, run its checks and answered `status` and `health`: the
idle daemon would hold them in memory for nothing. The first explanation
imports what it needs and answers as usual.

The daemon runs with one method added (`with_test_methods`),
`test.modules`, answering the daemon's own `sys.modules`: `-X importtime`
would not do, as it does not log what `importlib.import_module` imports.
"""

from __future__ import annotations

import socket

from tests.daemon import DaemonProcess, running_daemon, with_test_methods
from tests.test_lifecycle import wait_until

MODULES_METHOD = """
async def modules(call):
    return {"modules": sorted(sys.modules)}


TEST_METHODS = [Method("test.modules", modules)]
"""
NEVER_AT_IDLE = (
    "argparse",
    "psutil",
    "encodings.idna",
    "tempfile",
    "cortexd.config.restore",
    "cortexd.config.plugintree",
    "cortexd.updates.repack",
    "cortexd.inference.process",
    "cortexd.inference.gguf",
    "cortexd.updates.channel",
    "cortexd.updates.installer",
)
EXPLAIN_ON_DEMAND = ("cortexd.explain.service", "cortexd.knowledge", "cortexd.explain.facts")


def test_the_idle_daemon_imports_only_what_it_uses() -> None:
    # A port on this host for network_connectivity to reach by name.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        target = f"localhost:{listener.getsockname()[1]}"
        config = {"checks": {"network_connectivity": {"targets": [target]}}}
        with running_daemon(config, command=with_test_methods(MODULES_METHOD)) as d:
            _idle_then_explain(d, target)


def _modules(d: DaemonProcess) -> set[str]:
    return set(d.call("test.modules")["modules"])


def _idle_then_explain(d: DaemonProcess, target: str) -> None:
    assert d.call("status")["components"]["explain"]["state"] == "running"
    ran = {"disk_space", "memory", "cpu_usage", "dns_resolution", "time_sync"}
    ran |= {"network_connectivity", "zombie_processes", "swap_usage"}
    wait_until(lambda: ran <= set(d.call("health")["checks"]), what=f"results of {ran}")
    ids = ["network_connectivity", "dns_resolution"]
    ran_now = d.call("checks.run", {"ids": ids}, timeout=60)["results"]
    details = {r["check_id"]: r["details"] for r in ran_now}
    assert target in details["network_connectivity"]["reached_ms"], details
    assert details["dns_resolution"]["resolved"]["localhost"], details
    before = _modules(d)
    assert "cortexd.monitor.checks.metrics" in before  # the answer is read as meant
    assert set(NEVER_AT_IDLE) & before == set()
    assert set(EXPLAIN_ON_DEMAND) & before == set()
    watcher = d.call("status")["components"]["journal_watcher"]
    if watcher["state"] != "running":  # no journal files here: nothing to read
        assert "systemd.journal" not in before, watcher

    answer = d.call("inference.ask", {"question": "Is the disk full?", "model": False})
    assert answer["text"] and answer["summary"] is None
    assert set(EXPLAIN_ON_DEMAND) <= _modules(d)
    assert d.call("status")["components"]["explain"]["asked"] == 1
