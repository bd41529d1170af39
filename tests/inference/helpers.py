"""A request running on its own connection in a thread, for tests that act while it runs."""

from __future__ import annotations

import struct
import threading
from typing import Any

from cortexctl.client import Client

# Counting continues greedily until max_tokens: a generation that lasts as long as a test needs.
COUNTING_PROMPT = "1, 2, 3, 4, 5, 6, 7, 8,"
# About 1,800 tokens: prompt processing alone takes seconds on one thread.
LONG_PROMPT = "word " * 1800


class Background:
    """`method(params)` on a fresh connection in a thread; records stream data and outcome."""

    def __init__(self, socket_path: str, method: str, params: dict[str, Any]) -> None:
        self.stream: list[Any] = []
        self.result: Any = None
        self.error: BaseException | None = None
        self._client = Client(socket_path, timeout=120)
        self._thread = threading.Thread(target=self._run, args=(method, params), daemon=True)
        self._thread.start()

    def _run(self, method: str, params: dict[str, Any]) -> None:
        try:
            with self._client as client:
                self.result = client.call(method, params, on_stream=self.stream.append)
        except BaseException as exc:  # the test inspects it
            self.error = exc

    def request_id(self) -> str | None:
        return self.stream[0]["request_id"] if self.stream else None

    def join(self, timeout: float = 60.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "request did not finish in time"
        if self.error is not None:
            raise self.error
        return self.result


def write_tiny_gguf(path: str, name: str) -> str:
    """A valid GGUF file with a name and no tensors: enough for the daemon's checks,
    for tests whose runner is a stand-in that never loads it."""
    kv = {"general.architecture": "standin", "general.name": name}
    body = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv))
    for key, value in kv.items():
        body += _gguf_string(key) + struct.pack("<I", GGUF_STRING) + _gguf_string(value)
    body += b"\0" * (-len(body) % GGUF_ALIGNMENT)
    with open(path, "wb") as fh:
        fh.write(body)
    return path


GGUF_STRING = 8
GGUF_ALIGNMENT = 32


def _gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw
