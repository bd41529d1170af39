"""Socket methods of the notifier: notify.test, notify.history, deadletter.*.

What a remote server answered (an error page, an SMTP reply) is its text,
not ours: it may echo anything the request carried. Readers see its size
only; admins see the text.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from cortexd.alerts.manager import AlertManager
from cortexd.notify.actions import ActionTypes
from cortexd.notify.model import DeliveryFailed
from cortexd.notify.notifier import DAY, Notifier
from cortexd.notify.store import MIGRATIONS, entry_dict
from cortexd.protocol import InvalidParams, NotFound
from cortexd.server import Call, Method, Param
from cortexd.server.registry import between, positive
from cortexd.store import Database

if TYPE_CHECKING:
    from cortexd.runtime import Runtime

MAX_LIST = 10_000
TEST_TIMEOUT_GRACE = 5.0


def notify_methods(notifier: Notifier) -> list[Method]:
    """The notifier's methods bound to `notifier`."""

    async def test(call: Call) -> dict[str, Any]:
        action = notifier.action(call.params["action"])
        result: dict[str, Any] = {"action": action.name, "type": action.type}
        try:
            answer = await notifier.send(action, notifier.test_event(), "test")
        except DeliveryFailed as exc:
            return {**result, "delivered": False, "error": str(exc), "body": exc.body}
        return {**result, "delivered": True, "status": answer.status, "answer": answer.text}

    async def history(call: Call) -> dict[str, Any]:
        params = call.params
        since = params["since"] if params["since"] is not None else notifier.clock() - DAY
        rows, held = await notifier.store.history(since, params["action"], params["limit"])
        return {
            "notifications": [entry_dict(r, with_body=call.is_admin) for r in rows],
            "suppressed": [dict(r) for r in held],
        }

    async def dl_list(call: Call) -> dict[str, Any]:
        params = call.params
        rows = await notifier.store.dead_letters(params["action"], params["since"], params["limit"])
        return {
            "dead_letters": [
                entry_dict(r, with_payload=False, with_body=call.is_admin) for r in rows
            ]
        }

    async def dl_show(call: Call) -> dict[str, Any]:
        dead_id = call.params["id"]
        row = await notifier.store.dead_letter(dead_id)
        if row is None:
            raise NotFound(f"no dead letter {dead_id}", id=dead_id)
        return {"dead_letter": entry_dict(row, with_body=call.is_admin)}

    async def dl_retry(call: Call) -> dict[str, Any]:
        params = call.params
        dead_id, every, since = params["id"], params["all"], params["since"]
        if sum(x is not None and x is not False for x in (dead_id, since)) + every != 1:
            raise InvalidParams("id", "give exactly one of id, all: true or since")
        if dead_id is not None:
            row = await notifier.store.dead_letter(dead_id)
            if row is None:
                raise NotFound(f"no dead letter {dead_id}", id=dead_id)
            rows = [row]
        else:
            rows = await notifier.store.dead_letters(params["action"], since, MAX_LIST)
        ids, superseded = await notifier.retry_dead(rows)
        retried = [int(r["id"]) for r in rows if int(r["id"]) not in superseded]
        return {"retried": retried, "outbox_ids": ids, "superseded": superseded}

    async def dl_purge(call: Call) -> dict[str, Any]:
        older = call.params["older_than_seconds"]
        if older is None:
            older = notifier.config.deadletter_retention_days * DAY
        purged = await notifier.store.purge_dead(notifier.clock() - older)
        return {"purged": purged}

    filters = (
        Param("action", str),
        Param("since", float),
        Param("limit", int, default=100, check=between(1, MAX_LIST)),
    )
    return [
        Method(
            "notify.test",
            test,
            params=(Param("action", str, required=True),),
            access="admin",
            timeout=notifier.config.attempt_timeout_seconds + TEST_TIMEOUT_GRACE,
            summary="send a test alert through one action and report the endpoint's answer",
        ),
        Method(
            "notify.history",
            history,
            params=filters,
            summary="notifications queued since a time (24 h by default) and those held back",
        ),
        Method("deadletter.list", dl_list, params=filters, summary="dead-lettered notifications"),
        Method(
            "deadletter.show",
            dl_show,
            params=(Param("id", int, required=True),),
            summary="one dead letter with its notification",
        ),
        Method(
            "deadletter.retry",
            dl_retry,
            params=(
                Param("id", int),
                Param("all", bool, default=False),
                Param("since", float),
                Param("action", str),
            ),
            access="admin",
            summary="queue dead letters again (one id, all, or those failed since a time)",
        ),
        Method(
            "deadletter.purge",
            dl_purge,
            params=(Param("older_than_seconds", float, check=positive),),
            access="admin",
            summary="delete dead letters older than an age (the retention by default)",
        ),
    ]


def install(daemon: Runtime, alerts: AlertManager) -> Notifier:
    """Build the notifier on `<state_dir>/notify.db`, add it and its methods.

    Its `action_types` is where notifier plugins add theirs.
    """
    db = Database(os.path.join(daemon.config.state_dir, "notify.db"), MIGRATIONS)
    notifier = Notifier(db, daemon.config, alerts, action_types=ActionTypes())
    daemon.components.append(notifier)
    daemon.registry.add(notify_methods(notifier))
    return notifier
