"""The daemon's real method registry, built in-process for tests generated from it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from cortexd.app import Daemon
from cortexd.config import ConfigFiles, load_config
from cortexd.server import Method


@contextlib.contextmanager
def built_daemon() -> Iterator[Daemon]:
    """A `Daemon` built (not started) on a private state directory and no config files."""
    workdir = tempfile.mkdtemp(prefix="cxreg", dir="/tmp")
    try:
        loaded = load_config(
            files=ConfigFiles(
                system=os.path.join(workdir, "none"), user=os.path.join(workdir, "no")
            ),
            environ={},
            overrides={
                "state_dir": os.path.join(workdir, "state"),
                "server": {"socket_path": os.path.join(workdir, "c.sock")},
                "notify": {"rules_path": os.path.join(workdir, "alerts.yaml")},
                "plugins": {"directory": os.path.join(workdir, "plugins")},
            },
        )
        daemon = Daemon(loaded)
        daemon.install_features()
        yield daemon
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def registered_methods() -> list[Method]:
    """Every method the daemon registers at construction, sorted by name."""
    with built_daemon() as daemon:
        return daemon.registry.methods()
