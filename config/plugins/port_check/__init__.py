"""Example check plugin: does a configurable service accept TCP connections?

Runs in a worker process the daemon kills at `plugins.timeout_seconds`;
`check(settings)` gets the `settings` mapping of plugin.yaml.
"""

from __future__ import annotations

import socket
import time
from typing import Any


def check(settings: dict[str, Any]) -> dict[str, Any]:
    """PASS when `host:port` accepts a connection, FAIL when it refuses or times out."""
    service = str(settings.get("service", "service"))
    host = str(settings.get("host", "127.0.0.1"))
    port = int(settings["port"])
    timeout = float(settings.get("timeout_seconds", 2))
    details = {"service": service, "host": host, "port": port}
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        return {
            "status": "FAIL",
            "message": f"{service} does not answer on {host}:{port}: {exc.strerror or exc}",
            "details": details,
        }
    elapsed = round((time.monotonic() - started) * 1000, 2)
    return {
        "status": "PASS",
        "message": f"{service} answers on {host}:{port} ({elapsed} ms)",
        "details": {**details, "connect_ms": elapsed},
    }
