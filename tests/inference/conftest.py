"""Fixtures for the inference tests: the real model, real daemons serving it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import DaemonProcess, running_daemon

MODEL_ENV = "CORTEX_TEST_MODEL"
READY_DEADLINE = 60.0
POLL = 0.02


@pytest.fixture(scope="session")
def model_path() -> str:
    """The SmolLM2 GGUF `make test` fetches (CORTEX_TEST_MODEL)."""
    path = os.environ.get(MODEL_ENV, "")
    if not path or not os.path.isfile(path):
        pytest.skip(f"{MODEL_ENV} does not name a model file; run the tests with `make test`")
    return path


def wait_state(d: DaemonProcess, states: set[str], deadline: float = READY_DEADLINE) -> Any:
    """Poll model.status until its state is one of `states`; return the status."""
    end = time.monotonic() + deadline
    while True:
        status = d.call("model.status")
        if status["state"] in states:
            return status
        if time.monotonic() > end:
            raise AssertionError(f"model never reached {states}: {status}\n{d.log()[-3000:]}")
        time.sleep(POLL)


def interruptible() -> None:
    """`preexec_fn` for a child that a test stops with SIGINT: Ctrl-C's default
    action, even when this run inherited SIGINT ignored (a job a non-interactive
    shell started with `&` does), so the child's Python turns it into
    KeyboardInterrupt as it would at a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(predicate: Any, deadline: float = 30.0) -> Any:
    """Poll `predicate()` until it returns something truthy."""
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError("condition not met before the deadline")
        time.sleep(POLL)


def inference_config(model_path: str, **settings: Any) -> dict[str, Any]:
    """A daemon config serving `model_path` with one thread; `model.load` may load
    files from the model's directory (it is outside the test's state directory)."""
    inference = {
        "model_path": model_path,
        "n_threads": 1,
        "model_dirs": [os.path.dirname(model_path)],
        **settings,
    }
    return {"inference": inference}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory of the module's daemon, for the files its tests load."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def model_daemon(model_path: str, models_dir: Path) -> Iterator[DaemonProcess]:
    """One daemon serving the model with a queue of one, shared by a module's tests;
    `model.load` may load from the model's directory and from `models_dir`."""
    config = inference_config(model_path, queue_depth=1)
    config["inference"]["model_dirs"].append(str(models_dir))
    with running_daemon(config) as d:
        wait_state(d, {"ready"})
        yield d
