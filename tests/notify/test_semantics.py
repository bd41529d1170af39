"""What receivers are told and when: repeats, silences ending, cooldowns, flapping, order.

Each test runs the real alert manager and notifier on real SQLite files and a
real local HTTP receiver, with short windows so the waits are short.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from cortexd.alerts.manager import AlertManager
from cortexd.alerts.model import Alert, Severity
from cortexd.notify.notifier import Notifier
from cortexd.server import Call
from cortexd.server.call import Peer
from tests.notify.conftest import Factory
from tests.notify.helpers import Post, receiver, until

FAST: dict[str, Any] = {
    "backoff_seconds": 0.05,
    "backoff_max_seconds": 0.2,
    "attempt_timeout_seconds": 2.0,
    "evaluation_interval_seconds": 0.05,
}


def rules(url: str, **rule: Any) -> dict[str, Any]:
    return {"alerts": [{"name": "ops", **rule, "actions": [{"type": "webhook", "url": url}]}]}


async def fire(
    alerts: AlertManager, severity: Severity = Severity.ERROR, mount: str = "/", used: int = 97
) -> Alert:
    return await alerts.notice(
        source="disk_space",
        labels={"mountpoint": mount},
        severity=severity,
        category="disk_usage",
        title=f"Disk space {mount}",
        description=f"{mount} is {used}% full",
        annotations={"value": used},
    )


async def clear(alerts: AlertManager, mount: str = "/", used: int = 40) -> None:
    await alerts.condition_cleared(
        source="disk_space",
        labels={"mountpoint": mount},
        description=f"{mount} is {used}% full",
        annotations={"value": used},
    )


def said(posts: list[Post]) -> list[str]:
    """What each message said: `firing ERROR`, `resolved`, `flapping`."""
    out = []
    for post in posts:
        body = post.json()
        one = body["alerts"][0]
        if one["annotations"].get("flapping") == "true":
            out.append("flapping")
        elif body["status"] == "resolved":
            out.append("resolved")
        else:
            out.append(f"firing {one['labels']['severity'].upper()}")
    return out


async def test_a_refire_held_by_the_cooldown_is_sent_when_it_ends(notify_stack: Factory) -> None:
    """Send, resolve, send again within the cooldown, wait past it: the firing arrives."""
    with receiver() as recv:
        async with notify_stack(rules(recv.url()), cooldown_seconds=1.0, **FAST) as (alerts, _):
            await fire(alerts)
            await clear(alerts)
            await fire(alerts)
            await until(lambda: len(recv.posts) == 2, what="firing and resolved")
            await until(lambda: len(recv.posts) == 3, within=5, what="the held firing")
            assert said(recv.posts) == ["firing ERROR", "resolved", "firing ERROR"]
            assert recv.posts[2].json()["alerts"][0]["annotations"]["summary"] == "Disk space /"


async def test_a_refire_that_resolved_during_the_cooldown_sends_nothing(
    notify_stack: Factory,
) -> None:
    with receiver() as recv:
        async with notify_stack(rules(recv.url()), cooldown_seconds=0.5, **FAST) as (
            alerts,
            notifier,
        ):
            await fire(alerts)
            await clear(alerts)
            await fire(alerts)
            await clear(alerts)
            await until(lambda: len(recv.posts) == 2, what="firing and resolved")
            await _quiet(notifier, 1.0)
            assert said(recv.posts) == ["firing ERROR", "resolved"]
            held = (await notifier.store.history(0, None, 10))[1]
            assert [(h["reason"], h["kind"]) for h in held] == [("cooldown", "firing")]


async def _quiet(notifier: Notifier, seconds: float) -> None:
    await anyio.sleep(seconds)
    await until(lambda: notifier.pending == 0, what="an empty outbox")


async def test_a_silence_ending_announces_what_still_fires(notify_stack: Factory) -> None:
    with receiver() as recv:
        async with notify_stack(rules(recv.url()), **FAST) as (alerts, notifier):
            await alerts.add_silence(['mountpoint="/"'], 0.6, "maintenance", "test")
            await fire(alerts)
            await fire(alerts, mount="/srv")  # not silenced: a marker that delivery works
            await until(lambda: len(recv.posts) == 1, what="the unsilenced alert")
            assert notifier.state()["held"] == {"silenced": 1}
            posts = await until(lambda: len(recv.posts) == 2 and recv.posts, within=3)
            told = posts[1].json()["alerts"][0]
            assert told["labels"]["mountpoint"] == "/"
            assert notifier.state()["held"] == {}


async def test_a_silence_over_a_told_alert_sends_nothing_at_either_end(
    notify_stack: Factory,
) -> None:
    with receiver() as recv:
        async with notify_stack(rules(recv.url()), **FAST) as (alerts, notifier):
            await fire(alerts)
            await until(lambda: len(recv.posts) == 1, what="the firing")
            await alerts.add_silence(['mountpoint="/"'], 0.3, "", "test")
            await _quiet(notifier, 0.8)
            assert said(recv.posts) == ["firing ERROR"]


async def test_repeat_interval_resends_until_acknowledged_and_again_after_escalation(
    notify_stack: Factory,
) -> None:
    with receiver() as recv:
        config = rules(recv.url(), repeat_interval=0.4)
        async with notify_stack(config, cooldown_seconds=0, **FAST) as (alerts, notifier):
            alert = await fire(alerts, Severity.WARNING)
            await until(lambda: len(recv.posts) >= 3, within=5, what="two repeats")
            event = recv.posts[1].json()
            assert event["status"] == "firing"
            await alerts.acknowledge(alert.id, "test")
            seen = len(recv.posts)
            await _quiet(notifier, 1.0)
            assert len(recv.posts) <= seen + 1  # one may have been on its way
            quiet = len(recv.posts)
            await fire(alerts, Severity.CRITICAL)  # an escalation re-opens it to firing
            await until(lambda: len(recv.posts) >= quiet + 3, within=5, what="repeats again")
            assert said(recv.posts)[quiet:][:3] == ["firing CRITICAL"] * 3


async def test_flapping_is_told_once_then_the_settled_state(notify_stack: Factory) -> None:
    flap = {"flap_window_seconds": 1.0, "flap_high_changes": 4, "flap_low_changes": 2}
    with receiver() as recv:
        async with notify_stack(rules(recv.url()), alerts=flap, cooldown_seconds=0, **FAST) as (
            alerts,
            notifier,
        ):
            for _ in range(5):
                await fire(alerts)
                await clear(alerts)
            await fire(alerts)  # it ends firing
            (alert,) = list(alerts.tracked())
            assert alert.flapping and alerts.state()["flapping"] == 1
            await until(lambda: alerts.state()["flapping"] == 0, within=5, what="settling")
            await _quiet(notifier, 0.3)
            told = said(recv.posts)
            # What went out before it flapped, one flapping notice, then its settled state.
            assert told.count("flapping") == 1
            assert told[-2:] == ["flapping", "firing ERROR"]
            assert len(told) <= 6  # 3 changes before flapping, the notice, the settled state
            held = (await notifier.store.history(0, None, 100))[1]
            assert {h["reason"] for h in held} == {"flapping"}


async def test_a_flap_that_settles_resolved_ends_with_a_resolution(notify_stack: Factory) -> None:
    flap = {"flap_window_seconds": 1.0, "flap_high_changes": 4, "flap_low_changes": 2}
    with receiver() as recv:
        async with notify_stack(rules(recv.url()), alerts=flap, cooldown_seconds=0, **FAST) as (
            alerts,
            notifier,
        ):
            for _ in range(4):
                await fire(alerts)
                await clear(alerts)
            await until(lambda: alerts.state()["flapping"] == 0, within=5, what="settling")
            await _quiet(notifier, 0.3)
            assert said(recv.posts)[-2:] == ["flapping", "resolved"]


async def test_messages_about_one_alert_arrive_in_the_order_they_were_made(
    notify_stack: Factory,
) -> None:
    """Each message takes the receiver a random time; per alert the order still holds."""
    with receiver(jitter=0.05) as recv:
        async with notify_stack(rules(recv.url()), cooldown_seconds=0, **FAST) as (alerts, _):
            mounts = [f"/m{i}" for i in range(12)]
            for mount in mounts:
                await fire(alerts, Severity.WARNING, mount=mount)
            for mount in mounts:
                await fire(alerts, Severity.CRITICAL, mount=mount)
            for mount in mounts:
                await clear(alerts, mount=mount)
            await until(lambda: len(recv.posts) == 36, within=20, what="every message")
            by_mount: dict[str, list[str]] = {}
            for post in recv.posts:
                mount = post.json()["alerts"][0]["labels"]["mountpoint"]
                by_mount.setdefault(mount, []).extend(said([post]))
            for mount in mounts:
                assert by_mount[mount] == ["firing WARNING", "firing CRITICAL", "resolved"], mount


async def test_a_resolution_carries_the_value_and_the_times(notify_stack: Factory) -> None:
    with receiver() as recv:
        async with notify_stack(rules(recv.url()), **FAST) as (alerts, _):
            alert = await fire(alerts, used=97)
            await clear(alerts, used=41)
            await until(lambda: len(recv.posts) == 2, what="firing and resolved")
            resolved = recv.posts[1].json()
            notes = resolved["alerts"][0]["annotations"]
            assert notes["description"] == "/ is 41% full"
            assert notes["value"] == "41"
            assert notes["fired_at"] == resolved["alerts"][0]["startsAt"]
            assert notes["resolved_at"] == resolved["alerts"][0]["endsAt"]
            assert alert.resolved_at is not None and alert.resolved_at >= alert.first_seen


async def test_url_credentials_become_basic_auth_and_never_show(
    notify_stack: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    with receiver() as recv:
        url = recv.url("/hook").replace("http://", "http://ops%40corp:s3cr%3At@")
        async with notify_stack(rules(url), **FAST) as (alerts, notifier):
            await fire(alerts)
            (post,) = await until(lambda: recv.posts, what="the post")
            assert post.headers["Authorization"] == "Basic b3BzQGNvcnA6czNjcjp0"  # ops@corp:s3cr:t
            recv.stop()
            await fire(alerts, Severity.CRITICAL)
            await until(lambda: notifier.failed["ops.webhook"] >= 1, what="a failed attempt")
            entries, _ = await notifier.store.history(0, None, 10)
            shown = repr([dict(e) for e in entries]) + repr(notifier.state()) + caplog.text
            assert "s3cr" not in shown
            assert "Connection refused" in shown


async def test_readers_see_the_size_of_what_a_server_answered_admins_the_text(
    notify_stack: Factory,
) -> None:
    from cortexd.notify.methods import notify_methods

    with receiver(mode="fail") as recv:
        async with notify_stack(rules(recv.url()), max_attempts=1, **FAST) as (alerts, notifier):
            await fire(alerts)
            await until(lambda: notifier.dead_lettered["ops.webhook"] == 1, what="a dead letter")
            methods = {m.name: m for m in notify_methods(notifier)}
            (dead,) = await notifier.store.dead_letters(None, None, 10)

            async def show(admin: bool) -> dict[str, Any]:
                method = methods["deadletter.show"]
                params = method.bind({"id": dead["id"]})
                call = Call(method.name, params, Peer(1, 1000, 1000), 1, is_admin=admin)
                answer: dict[str, Any] = await method.handler(call)
                return answer["dead_letter"]

            reader, admin = await show(False), await show(True)
            assert reader["last_error"] == admin["last_error"] == "HTTP 500 Internal Server Error"
            assert "body" not in reader and reader["body_chars"] == len("receiver failing")
            assert admin["body"] == "receiver failing"


async def test_a_full_outbox_defers_messages_until_there_is_room(notify_stack: Factory) -> None:
    with receiver() as recv:
        port = recv.port
        recv.stop()  # refused: the first entries stay in the outbox, retrying
        config = rules(recv.url())
        async with notify_stack(config, max_pending=2, max_attempts=100, **FAST) as (
            alerts,
            notifier,
        ):
            for n in range(4):
                await fire(alerts, mount=f"/m{n}")
            assert notifier.pending == 2
            assert notifier.state()["held"] == {"outbox_full": 2}
            with receiver(port=port) as back:
                posts = await until(lambda: len(back.posts) == 4 and back.posts, within=10)
                mounts = sorted(p.json()["alerts"][0]["labels"]["mountpoint"] for p in posts)
                assert mounts == ["/m0", "/m1", "/m2", "/m3"]
                await until(lambda: notifier.pending == 0, what="an empty outbox")
            held = (await notifier.store.history(0, None, 10))[1]
            assert [h["reason"] for h in held] == ["outbox_full", "outbox_full"]
