"""Socket methods of the alert manager (docs/protocol.md, "Alerts") and the old aliases."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, cast

from cortexd.alerts.ids import accept_id_prefixes
from cortexd.alerts.manager import AlertManager
from cortexd.alerts.matchers import MatcherError
from cortexd.alerts.model import (
    CATEGORIES,
    MAX_NAME,
    SEVERITY_NAMES,
    STATES,
    ListFilter,
    Severity,
    State,
    slug,
)
from cortexd.alerts.store import MIGRATIONS
from cortexd.protocol import InvalidParams
from cortexd.server import Call, Method, Param
from cortexd.server.registry import between, positive
from cortexd.store import Database

if TYPE_CHECKING:
    from cortexd.runtime import Runtime

MAX_LIST = 10_000
MAX_LABELS = 32
MAX_TEXT = 4096
MAX_KEY = 256
STATE_CHOICES = (*STATES, "active", "all")


def _severity(value: str) -> str | None:
    try:
        Severity.parse(value)
    except ValueError:
        return f"must be one of {', '.join(SEVERITY_NAMES)}; got {value!r}"
    return None


def _labels(value: dict[str, Any]) -> str | None:
    if len(value) > MAX_LABELS:
        return f"at most {MAX_LABELS} labels"
    for key, item in value.items():
        if not isinstance(item, str):
            return f"label {key!r} must be a string"
        if len(key) > 256 or len(item) > 1024:
            return f"label {key!r} is too long"
    return None


def _text(limit: int) -> Any:
    def check(value: str) -> str | None:
        return None if 0 < len(value) <= limit else f"must be 1 to {limit} characters"

    return check


MAX_TTL = 365 * 86400.0


def _ttl(value: float) -> str | None:
    return None if 0 < value <= MAX_TTL else f"must be between 0 and {MAX_TTL:g} (a year)"


def _name(value: str) -> str | None:
    if not 0 < len(value) <= MAX_NAME or slug(value) != value:
        return (
            f"must be 1 to {MAX_NAME} characters: lower-case letters, digits and _, "
            "not starting with a digit (a label-safe name)"
        )
    return None


FILTER_PARAMS = (
    Param("severity", str, check=_severity),
    Param("category", str, choices=CATEGORIES),
    Param("since", float),
)


def _filter(params: dict[str, Any], default_state: str) -> ListFilter:
    state = params.get("state") or default_state
    states: tuple[State, ...] | None
    if state == "all":
        states = None
    elif state == "active":
        states = ("firing", "acknowledged")
    else:
        states = (cast(State, state),)
    severity = params.get("severity")
    return ListFilter(
        severity=Severity.parse(severity) if severity else None,
        states=states,
        category=params.get("category"),
        since=params.get("since"),
        include_cleared=bool(params.get("include_cleared")),
        limit=params.get("limit") or 100,
    )


def _who(call: Call) -> str:
    return f"uid {call.peer.uid} (pid {call.peer.pid})"


def alert_methods(manager: AlertManager) -> list[Method]:
    """The alert methods bound to `manager`."""

    def listing(default_state: str) -> Any:
        async def handler(call: Call) -> dict[str, Any]:
            alerts = await manager.query(_filter(call.params, default_state))
            return {
                "alerts": [a.to_dict(silenced=manager.is_silenced(a)) for a in alerts],
                "count": len(alerts),
            }

        return handler

    async def get(call: Call) -> dict[str, Any]:
        alert = await manager.get(call.params["id"])
        answer: dict[str, Any] = {"alert": alert.to_dict(silenced=manager.is_silenced(alert))}
        for detail in manager.details:
            answer.update(await detail(alert))
        return answer

    async def ack(call: Call) -> dict[str, Any]:
        params = call.params
        if params["id"] is not None and params["all"]:
            raise InvalidParams("all", "give either an id or all: true, not both")
        if params["id"] is not None:
            if any(params[k] is not None for k in ("severity", "category", "since")):
                raise InvalidParams("id", "filters apply only with all: true")
            alert = await manager.acknowledge(params["id"], _who(call))
            return {"acknowledged": [alert.id] if alert.state == "acknowledged" else []}
        if not params["all"]:
            raise InvalidParams("id", "give an alert id, or all: true (with optional filters)")
        done = await manager.acknowledge_matching(_filter(params, "firing"), _who(call))
        return {"acknowledged": [a.id for a in done]}

    async def resolve(call: Call) -> dict[str, Any]:
        params = call.params
        if (params["id"] is None) == (params["key"] is None):
            raise InvalidParams("id", "give an alert id or a key (with its source), not both")
        if params["id"] is not None:
            alert = await manager.resolve(params["id"])
        else:
            alert = await manager.resolve_key(params["source"], params["key"])
        return {"alert": alert.to_dict(silenced=manager.is_silenced(alert))}

    async def clear(call: Call) -> dict[str, Any]:
        return {"cleared": await manager.clear()}

    async def raise_(call: Call) -> dict[str, Any]:
        params = call.params
        labels = dict(params["labels"] or {})
        title = params["title"]
        # Without a key, the title is part of the identity: two titles, two alerts.
        alert = await manager.notice(
            source=params["source"],
            labels=labels,
            severity=Severity.parse(params["severity"]),
            category=params["category"],
            title=title,
            description=params["description"] or "",
            annotations={"raised_by": _who(call)},
            key=params["key"],
            title_is_identity=params["key"] is None,
            name=params["name"] or slug(title) or None,
            ttl=params["ttl_seconds"],
        )
        return {"alert": alert.to_dict(silenced=manager.is_silenced(alert))}

    async def silence(call: Call) -> dict[str, Any]:
        params = call.params
        if not params["matchers"]:
            raise InvalidParams("matchers", "at least one matcher is required")
        cap = manager.config.max_silence_seconds
        if params["duration_seconds"] > cap:
            # A silence is easily forgotten: past the cap, alerts would go unheard for good.
            raise InvalidParams(
                "duration_seconds",
                f"at most {cap:g} seconds ({cap / 86400:g} days, alerts.max_silence_seconds)",
                limit=cap,
            )
        try:
            created = await manager.add_silence(
                params["matchers"], params["duration_seconds"], params["comment"], _who(call)
            )
        except MatcherError as exc:
            raise InvalidParams("matchers", str(exc)) from None
        return {"silence": created.to_dict(manager.clock())}

    def silences_list(call: Call) -> dict[str, Any]:
        now = manager.clock()
        found = manager.silences(include_expired=call.params["all"])
        return {"silences": [s.to_dict(now) for s in found]}

    async def silences_delete(call: Call) -> dict[str, Any]:
        await manager.delete_silence(call.params["id"])
        return {"deleted": call.params["id"]}

    list_params = (
        *FILTER_PARAMS,
        Param("state", str, choices=STATE_CHOICES),
        Param("limit", int, default=100, check=between(1, MAX_LIST)),
        Param("include_cleared", bool, default=False),
    )
    id_param = Param("id", str, required=True)
    return [
        Method(
            "alerts.list",
            listing("active"),
            params=list_params,
            summary="alerts, filtered (active ones by default)",
        ),
        # The original daemon's `alerts` lists firing alerts by default; a method of its
        # own because an alias cannot change a default.
        Method(
            "alerts",
            listing("firing"),
            params=list_params,
            summary="seed name: alerts.list with state firing by default",
        ),
        Method("alerts.get", get, params=(id_param,), summary="one alert by id"),
        Method(
            "alerts.ack",
            ack,
            params=(Param("id", str), Param("all", bool, default=False), *FILTER_PARAMS),
            access="admin",
            aliases=("acknowledge_alert",),
            param_aliases={"alert_id": "id"},
            summary="acknowledge one alert, or all firing alerts matching filters",
        ),
        Method(
            "alerts.resolve",
            resolve,
            params=(
                Param("id", str),
                Param("key", str, check=_text(MAX_KEY)),
                Param("source", str, default="external", check=_text(128)),
            ),
            access="admin",
            summary="resolve an alert by hand (by id, or by the key it was raised with)",
        ),
        Method(
            "alerts.clear",
            clear,
            access="admin",
            aliases=("clear_acknowledged_alerts",),
            summary="move acknowledged and resolved alerts out of the active list",
        ),
        Method(
            "alerts.raise",
            raise_,
            params=(
                Param("title", str, required=True, check=_text(512)),
                Param("severity", str, default="WARNING", check=_severity),
                Param("category", str, default="system", choices=CATEGORIES),
                Param("description", str, check=lambda v: _text(MAX_TEXT)(v) if v else None),
                Param("labels", dict, check=_labels),
                Param("source", str, default="external", check=_text(128)),
                Param("key", str, check=_text(MAX_KEY)),
                Param("name", str, check=_name),
                Param("ttl_seconds", float, check=_ttl),
            ),
            access="admin",
            summary="raise (or update) an alert from another program",
        ),
        Method(
            "alerts.silence",
            silence,
            params=(
                Param("matchers", list, required=True, items=str),
                Param("duration_seconds", float, required=True, check=positive),
                Param("comment", str, default=""),
            ),
            access="admin",
            summary="mute notifications for alerts matching label matchers",
        ),
        Method(
            "silences.list",
            silences_list,
            params=(Param("all", bool, default=False),),
            inline=True,
            summary="active silences (all: true includes expired ones)",
        ),
        Method(
            "silences.delete",
            silences_delete,
            params=(id_param,),
            access="admin",
            summary="remove a silence",
        ),
    ]


def install(daemon: Runtime) -> AlertManager:
    """Build the alert manager on `<state_dir>/alerts.db`, add it and its methods."""
    db = Database(os.path.join(daemon.config.state_dir, "alerts.db"), MIGRATIONS)
    manager = AlertManager(db, daemon.config.alerts)
    daemon.components.append(manager)
    daemon.registry.add(accept_id_prefixes(alert_methods(manager), manager))
    return manager
