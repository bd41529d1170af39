"""Build the chat messages for `inference.explain` from an alert and the host's health.

The alert manager and the monitor are separate features; this module finds
their methods (`alerts.get`, `health`) in the registry at call time instead of
importing them, so inference works — and says clearly what is missing — in a
daemon built without them.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import orjson

from cortexd.protocol import CortexError, InvalidParams, PermissionDenied, Unavailable
from cortexd.server import Call, Method

if TYPE_CHECKING:
    from cortexd.app import Daemon

# SmolLM2's context is 2,048 tokens by default, and prompt processing is the
# slow part on a small CPU: keep the evidence short.
MAX_ALERT_CHARS = 1500
MAX_HEALTH_CHARS = 1200
# The alert fields that help a diagnosis, in the order the model reads them;
# ids, fingerprints and bookkeeping only cost prompt tokens.
ALERT_FIELDS = (
    "title",
    "severity",
    "category",
    "state",
    "description",
    "labels",
    "annotations",
    "source",
    "host",
    "count",
)

SYSTEM_PROMPT = (
    "You are an experienced Linux site reliability engineer. Explain alerts from a host "
    "monitoring daemon to an operator: what the alert means, the most likely causes on "
    "this host, and concrete next steps (commands to run, what to look for). Be brief."
)


async def _call_method(daemon: Daemon, caller: Call, name: str, raw: dict[str, Any]) -> Any:
    method: Method = daemon.registry.get(name)
    if method.access != "read" and not caller.is_admin:
        raise PermissionDenied(f"{name} needs admin rights", method=name)
    call = Call(
        method=method.name,
        params=method.bind(raw),
        peer=caller.peer,
        id=None,
        is_admin=caller.is_admin,
    )
    result = method.handler(call)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _get_alert(daemon: Daemon, caller: Call, alert_id: str) -> Any:
    last: CortexError | None = None
    # The alert manager names its id param `id`; the seed's vocabulary used `alert_id`.
    for key in ("id", "alert_id"):
        for value in _id_forms(alert_id):
            try:
                return await _call_method(daemon, caller, "alerts.get", {key: value})
            except InvalidParams as exc:
                last = exc
    assert last is not None
    raise last


def _id_forms(alert_id: str) -> list[Any]:
    return [alert_id, int(alert_id)] if alert_id.isdigit() else [alert_id]


def _compact(value: Any, limit: int) -> str:
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= limit else text[:limit] + " …(truncated)"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else _compact(value, MAX_ALERT_CHARS)


def _describe_alert(raw: Any) -> str:
    alert = raw.get("alert", raw) if isinstance(raw, dict) else raw
    if not isinstance(alert, dict):
        return _compact(alert, MAX_ALERT_CHARS)
    lines = [
        f"{key}: {_text(alert[key])}"
        for key in ALERT_FIELDS
        if alert.get(key) not in (None, "", {}, [])
    ]
    return "\n".join(lines)[:MAX_ALERT_CHARS] if lines else _compact(alert, MAX_ALERT_CHARS)


async def explain_messages(daemon: Daemon, caller: Call, alert_id: str) -> list[dict[str, str]]:
    """Chat messages asking the model to explain alert `alert_id`.

    Raises:
        Unavailable: the daemon has no alert manager (`alerts.get` is not registered).
        NotFound: (from the alert manager) no such alert.
    """
    if not daemon.registry.known("alerts.get"):
        raise Unavailable(
            "explain needs the alert manager, which this daemon does not run "
            "(no alerts.get method)",
            missing="alerts.get",
        )
    alert = await _get_alert(daemon, caller, alert_id)
    parts = [f"Alert:\n{_describe_alert(alert)}"]
    if daemon.registry.known("health"):
        try:
            health = await _call_method(daemon, caller, "health", {})
        except CortexError as exc:
            parts.append(f"Current health: unavailable ({exc.message})")
        else:
            parts.append(f"Current health of the host:\n{_compact(health, MAX_HEALTH_CHARS)}")
    parts.append("Explain this alert and suggest next steps.")
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "\n\n".join(parts)},
    ]
