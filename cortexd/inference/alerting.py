"""Alerts about the runner: one per model that crashed it, resolved when a runner serves it.

The engine decides on the event loop and must not wait on the alert store
(a disk write), so it queues what to say here and one task says it, in
order. The queue is bounded: in a crash storm the newest reports are dropped
with a log line, never the supervisor's time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from cortexd.alerts.model import Severity
from cortexd.inference.exits import ExitInfo

log = logging.getLogger(__name__)

SOURCE = "inference"
# One of the alert categories (alerts.model.CATEGORIES) clients filter by.
CATEGORY = "llm_error"
PENDING = 32


class AlertSink(Protocol):
    """What the engine needs of the alert manager."""

    async def notice(
        self,
        *,
        source: str,
        labels: Mapping[str, str],
        severity: Severity,
        category: str,
        title: str,
        description: str = "",
        annotations: Mapping[str, Any] | None = None,
    ) -> Any: ...

    async def condition_cleared(self, *, source: str, labels: Mapping[str, str]) -> Any: ...

    def open_alerts(self, source: str | None = None) -> list[Any]: ...


_Report = tuple[str, str, str, dict[str, Any]]


class CrashAlerts:
    """Raises and resolves the runner's alerts from one task, in order."""

    def __init__(self, sink: AlertSink | None) -> None:
        self._sink = sink
        self._send: MemoryObjectSendStream[_Report] | None = None

    def start(self, tg: TaskGroup) -> None:
        """Start the delivering task (the streams exist only while it runs)."""
        if self._sink is None:
            return
        send, receive = anyio.create_memory_object_stream[_Report](PENDING)
        self._send = send
        tg.start_soon(self._deliver, self._sink, receive)

    def fire(self, path: str, message: str, info: ExitInfo) -> None:
        """A runner serving `path` crashed."""
        annotations = {
            "signal": info.signal,
            "exit_status": info.code,
            "during": info.during,
            "stderr": list(info.stderr),
        }
        self._queue(("fire", path, message, annotations))

    def resolve(self, path: str) -> None:
        """A runner serves `path`: every crash alert ends, that of a model given up
        for this one too (also one raised before a restart)."""
        self._queue(("clear", path, "", {}))

    def resolve_all(self) -> None:
        """No model is wanted any more (unloaded): every crash alert ends."""
        self._queue(("clear", "", "", {}))

    def _queue(self, report: _Report) -> None:
        if self._send is None:
            return
        try:
            self._send.send_nowait(report)
        except anyio.WouldBlock:
            log.warning("inference alert dropped (%d pending): %s", PENDING, report[2] or report[0])
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def close(self) -> None:
        if self._send is not None:
            await self._send.aclose()

    async def _deliver(self, sink: AlertSink, receive: MemoryObjectReceiveStream[_Report]) -> None:
        async with receive:
            async for kind, path, message, annotations in receive:
                labels = {"model": path}
                try:
                    if kind == "fire":
                        stderr = annotations.get("stderr") or []
                        await sink.notice(
                            source=SOURCE,
                            labels=labels,
                            severity=Severity.ERROR,
                            category=CATEGORY,
                            title=message,
                            description="\n".join(stderr[-10:]),
                            annotations=annotations,
                        )
                    else:
                        models = {path} if path else set()
                        models |= {a.labels.get("model", "") for a in sink.open_alerts(SOURCE)}
                        for model in sorted(m for m in models if m):
                            await sink.condition_cleared(source=SOURCE, labels={"model": model})
                except Exception:  # isolation boundary: a failing alert store never stops inference
                    log.exception("inference alert for %s not stored", path)
