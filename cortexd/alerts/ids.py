"""Alert ids as people type them: the full id, or a unique prefix of at least 8 characters.

`alerts list` shows the first 8 characters of each id; every method that
takes an alert id accepts that. A prefix that matches several alerts is
INVALID_PARAMS naming them; one that matches none is NOT_FOUND, as a
full id would be.
"""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from collections.abc import Awaitable
from typing import Any

from cortexd.alerts.manager import AlertManager
from cortexd.alerts.model import Alert
from cortexd.protocol import InvalidParams
from cortexd.server import Call, Method

MIN_PREFIX = 8
MAX_CANDIDATES = 10
_ID_TEXT = re.compile(r"^[0-9A-Fa-f-]+$")
# The alert methods whose `id` param names one alert.
ID_METHODS = frozenset({"alerts.get", "alerts.ack", "alerts.resolve"})


def _with_prefix(conn: sqlite3.Connection, prefix: str) -> list[str]:
    # A range on the primary key (not LIKE, which would need escaping and a scan).
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    rows = conn.execute(
        "SELECT id FROM alerts WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
        (prefix, upper, MAX_CANDIDATES + 1),
    ).fetchall()
    return [str(r[0]) for r in rows]


async def resolve_id(manager: AlertManager, given: str, param: str = "id") -> str:
    """The full alert id `given` stands for; unchanged when it is not a usable prefix.

    Raises:
        InvalidParams: a prefix that matches several alerts (data: candidates).
    """
    text = given.strip()
    if len(text) < MIN_PREFIX or not _ID_TEXT.match(text):
        return given
    prefix = text.lower()
    found = await manager.db.read(lambda c: _with_prefix(c, prefix))
    if prefix in found:
        return prefix
    if len(found) == 1:
        return found[0]
    if not found:
        return given  # the manager answers NOT_FOUND, naming what was given
    shown = found[:MAX_CANDIDATES]
    more = len(found) > MAX_CANDIDATES
    raise InvalidParams(
        param,
        f"{given!r} matches {len(shown)}{' or more' if more else ''} alerts: "
        f"{', '.join(shown)}; give more of the id",
        candidates=shown,
    )


class AlertLookup:
    """Finds one alert by id or prefix, for features that take an alert id (explain)."""

    def __init__(self, manager: AlertManager) -> None:
        self.manager = manager

    async def find(self, given: str, param: str = "id") -> Alert:
        """Raises InvalidParams (ambiguous prefix) or NotFound."""
        return await self.manager.get(await resolve_id(self.manager, given, param))

    def is_silenced(self, alert: Alert) -> bool:
        return self.manager.is_silenced(alert)


def _resolving(method: Method, manager: AlertManager) -> Method:
    handler = method.handler

    async def resolved(call: Call) -> Any:
        if call.params.get("id") is not None:
            call.params["id"] = await resolve_id(manager, call.params["id"])
        result = handler(call)
        if isinstance(result, Awaitable):
            return await result
        return result

    return dataclasses.replace(method, handler=resolved, inline=False)


def accept_id_prefixes(methods: list[Method], manager: AlertManager) -> list[Method]:
    """`methods` with the id-taking ones (ID_METHODS) resolving a prefix before they run."""
    return [_resolving(m, manager) if m.name in ID_METHODS else m for m in methods]


__all__ = ["MIN_PREFIX", "AlertLookup", "accept_id_prefixes", "resolve_id"]
