"""Delivery through the outbox to real local endpoints (HTTP receiver, SMTP server)."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import email.utils
import hashlib
import hmac
import ssl
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import yaml
from aiosmtpd.smtp import AuthResult

from cortexd.alerts.manager import AlertManager
from cortexd.alerts.model import Severity
from cortexd.alerts.store import MIGRATIONS as ALERT_MIGRATIONS
from cortexd.config.schema import AlertsConfig, Config, NotifyConfig
from cortexd.notify.notifier import Notifier
from cortexd.notify.store import MIGRATIONS
from cortexd.store import Database
from tests.alerts.conftest import FakeClock
from tests.notify.conftest import Factory
from tests.notify.helpers import receiver, smtp_server, until

FAST: dict[str, Any] = {
    "backoff_seconds": 0.05,
    "backoff_max_seconds": 0.2,
    "attempt_timeout_seconds": 2.0,
}


def rules(*actions: dict[str, Any], **conditions: Any) -> dict[str, Any]:
    return {"alerts": [{"name": "ops", **conditions, "actions": list(actions)}]}


async def fire(alerts: AlertManager, title: str = "Disk space", **labels: str) -> Any:
    return await alerts.notice(
        source="disk_space",
        labels={"check": "disk_space", "mountpoint": "/", **labels},
        severity=Severity.CRITICAL,
        category="disk_usage",
        title=title,
        description="/ is 97% full",
    )


async def outbox(notifier: Notifier) -> list[Any]:
    return (await notifier.store.history(0, None, 1000))[0]


async def held(notifier: Notifier) -> list[Any]:
    return (await notifier.store.history(0, None, 1000))[1]


async def test_webhook_slack_and_discord_receive_the_alert_and_its_resolution(
    notify_stack: Factory,
) -> None:
    with receiver() as recv:
        config = rules(
            {"type": "webhook", "url": recv.url("/hook"), "hmac_secret": "s3cret"},
            {"type": "slack", "url": recv.url("/services/T/B/X"), "channel": "#ops"},
            {"type": "discord", "url": recv.url("/api/webhooks/1/tok")},
        )
        async with notify_stack(config, **FAST) as (alerts, _):
            alert = await fire(alerts)
            await until(lambda: len(recv.posts) >= 3, what="three posts")
            by_path = {p.path: p for p in recv.posts}
            hook = by_path["/hook"]
            body = hook.json()
            assert body["status"] == "firing"
            assert body["alerts"][0]["labels"]["instance"] == "web1"
            assert body["alerts"][0]["annotations"]["description"] == "/ is 97% full"
            digest = hmac.new(b"s3cret", hook.body, hashlib.sha256).hexdigest()
            assert hook.headers["X-Cortex-Signature"] == f"sha256={digest}"
            assert hook.headers["Content-Type"] == "application/json"
            slack = by_path["/services/T/B/X"].json()
            assert slack["channel"] == "#ops"
            assert "CRITICAL Disk space on web1" in slack["text"]
            discord = by_path["/api/webhooks/1/tok"].json()
            assert "Disk space" in discord["embeds"][0]["title"]

            await alerts.resolve(alert.id)
            await until(lambda: len(recv.posts) >= 6, what="three resolutions")
            resolved = [p for p in recv.posts[3:] if p.path == "/hook"]
            assert resolved[0].json()["status"] == "resolved"


async def test_email_reaches_a_real_smtp_server(notify_stack: Factory) -> None:
    with smtp_server() as smtp:
        action = {
            "type": "email",
            "to": ["ops@example.com", "oncall@example.com"],
            "from": "cortexd@web1.example.com",
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
        }
        async with notify_stack(rules(action), **FAST) as (alerts, notifier):
            await fire(alerts, title="Plattenplatz — fast voll")
            await until(lambda: smtp.messages, what="a mail")
            # What the server received parses under the strict policy: any defect raises.
            mail = email.message_from_bytes(smtp.messages[0][2], policy=email.policy.strict)
            assert mail["Subject"] == "[FIRING] CRITICAL Plattenplatz — fast voll on web1"
            assert mail["To"] == "ops@example.com, oncall@example.com"
            assert mail["MIME-Version"] == "1.0"
            sent = email.utils.parsedate_to_datetime(mail["Date"]).timestamp()
            assert abs(sent - time.time()) < 60
            assert mail["Message-ID"].endswith("@web1.example.com>")
            assert mail["X-Cortex-Notification-Id"] == "1"
            assert "/ is 97% full" in mail.get_content()
            assert smtp.messages[0][1] == ["ops@example.com", "oncall@example.com"]
            await until(lambda: notifier.sent["ops.email"] == 1, what="completed")


async def test_refused_endpoint_retries_then_dead_letters_then_retry_delivers(
    notify_stack: Factory,
) -> None:
    with receiver() as recv:
        port = recv.port
        recv.stop()  # refused from now on
        config = rules({"type": "webhook", "url": recv.url()})
        async with notify_stack(config, max_attempts=3, **FAST) as (alerts, notifier):
            await fire(alerts)
            await until(lambda: notifier.dead_lettered["ops.webhook"] == 1, what="dead letter")
            (entry,) = await outbox(notifier)
            assert entry["status"] == "failed"
            assert entry["attempts"] == 3
            assert "Connection refused" in entry["last_error"]
            # Backoff: the attempts were spread out, not fired back to back.
            # The two waits were at least half of 0.05 s and of 0.1 s (jitter).
            assert entry["completed_at"] - entry["created_at"] >= 0.025 + 0.05
            dead = await notifier.store.dead_letters(None, None, 10)
            assert [d["original_id"] for d in dead] == [entry["id"]]

            with receiver(port=port) as back:
                await notifier.retry_dead(list(dead))
                await until(lambda: notifier.sent["ops.webhook"] == 1, what="delivery")
                assert len(back.posts) == 1
                left = await notifier.store.dead_letters(None, None, 10)
                assert left == []


async def test_a_hanging_endpoint_never_delays_another(notify_stack: Factory) -> None:
    with receiver(mode="hang") as slow, receiver() as fast:
        config = rules(
            {"type": "webhook", "url": slow.url("/slow")},
            {"type": "webhook", "name": "fast", "url": fast.url("/fast")},
        )
        # Two slots: the hanging endpoint may hold one, never both.
        settings = {**FAST, "attempt_timeout_seconds": 1.5, "max_attempts": 1, "max_concurrent": 2}
        async with notify_stack(config, **settings) as (alerts, notifier):
            for i in range(3):
                await fire(alerts, title=f"disk {i}", mountpoint=f"/m{i}")
            # The fast receiver has all three while the slow one still hangs.
            await until(lambda: len(fast.posts) == 3, within=2.5, what="fast deliveries")
            assert notifier.dead_lettered["ops.webhook"] == 0
            await until(
                lambda: notifier.dead_lettered["ops.webhook"] == 3, what="slow ones time out"
            )
            entries = [e for e in await outbox(notifier) if e["action"] == "ops.webhook"]
            assert all("no answer" in e["last_error"] for e in entries)


async def test_a_silenced_alert_sends_nothing_but_is_recorded(notify_stack: Factory) -> None:
    with receiver() as recv:
        async with notify_stack(rules({"type": "webhook", "url": recv.url()}), **FAST) as (
            alerts,
            notifier,
        ):
            await alerts.add_silence(['mountpoint="/"'], 3600, "maintenance", "test")
            await fire(alerts)
            await fire(alerts, title="Other disk", mountpoint="/srv")
            await until(lambda: len(recv.posts) == 1, what="the unsilenced alert")
            assert recv.posts[0].json()["alerts"][0]["labels"]["mountpoint"] == "/srv"
            records = await held(notifier)
            assert [(h["reason"], h["title"]) for h in records] == [("silenced", "Disk space")]


async def test_rate_limit_defers_and_never_drops(notify_stack: Factory) -> None:
    with receiver() as recv:
        config = rules({"type": "webhook", "url": recv.url()})
        settings = {**FAST, "rate_limit_per_minute": 2, "evaluation_interval_seconds": 0.05}
        async with notify_stack(config, **settings) as (alerts, notifier):
            clock = FakeClock(notifier.clock())
            notifier.rate.clock = clock
            notifier.rate._at = clock.now
            for i in range(5):
                await fire(alerts, title=f"disk {i}", mountpoint=f"/m{i}")
            await until(lambda: len(recv.posts) == 2, what="two posts")
            assert notifier.suppressed["rate_limit"] == 3
            # Half a minute later one more token is free; a minute and a half, all of them.
            clock.step(30)
            await until(lambda: len(recv.posts) == 3, what="the first deferred one")
            clock.step(60)
            posts = await until(lambda: len(recv.posts) == 5 and recv.posts, what="all five")
            titles = sorted(p.json()["alerts"][0]["annotations"]["summary"] for p in posts)
            assert titles == [f"disk {i}" for i in range(5)]
            deferred = [p.json()["alerts"][0]["annotations"] for p in posts[2:]]
            assert all(p["summary"].startswith("disk ") for p in deferred)
            records = await held(notifier)
            assert sorted(h["reason"] for h in records) == ["rate_limit"] * 3


async def test_an_alert_committed_just_before_a_crash_is_notified_at_start(
    tmp_path: Path,
) -> None:
    """The alert row is committed, the notifier never saw it (the crash window)."""
    with receiver() as recv:
        rules_path = tmp_path / "alerts.yaml"
        rules_path.write_text(yaml.safe_dump(rules({"type": "webhook", "url": recv.url()})))
        config = dataclasses.replace(
            Config(), notify=NotifyConfig(rules_path=str(rules_path), **FAST)
        )
        alert_db = str(tmp_path / "alerts.db")
        async with anyio.create_task_group() as tg:
            alerts = AlertManager(Database(alert_db, ALERT_MIGRATIONS), AlertsConfig())
            await alerts.start(tg)
            await fire(alerts)  # no notifier listening yet
            notify_db = str(tmp_path / "notify.db")
            notifier = Notifier(Database(notify_db, MIGRATIONS), config, alerts)
            await notifier.start(tg)
            await until(lambda: notifier.sent["ops.webhook"] == 1, what="the catch-up")
            await notifier.stop()
            # A second start finds it accounted for: nothing is queued again.
            again = Notifier(Database(notify_db, MIGRATIONS), config, alerts)
            await again.start(tg)
            assert len(await outbox(again)) == 1
            await again.stop()
            assert len(recv.posts) == 1
            await alerts.stop()
            tg.cancel_scope.cancel()


async def test_daily_summary_goes_out_once_a_day_after_its_time(notify_stack: Factory) -> None:
    with receiver() as recv:
        config = rules({"type": "webhook", "url": recv.url()})
        async with notify_stack(config, daily_summary=True, **FAST) as (_, notifier):
            # Yesterday: the summary's times must lie in the past whatever the hour the
            # test runs at (6:30 today is still to come just after midnight).
            today = (datetime.now() - timedelta(days=1)).replace(second=0, microsecond=0)
            notifier.clock = lambda: today.replace(hour=5, minute=59).timestamp()
            await notifier._daily_summary()
            assert await outbox(notifier) == []
            notifier.clock = lambda: today.replace(hour=6, minute=30).timestamp()
            await notifier._daily_summary()
            await notifier._daily_summary()
            (post,) = await until(lambda: recv.posts, what="the summary")
            text = post.json()["alerts"][0]["annotations"]["description"]
            assert text.startswith("Last 24 h: 0 notifications sent")
            assert len(await outbox(notifier)) == 1


async def test_cooldown_holds_back_a_quick_refire_and_its_resolution(
    notify_stack: Factory,
) -> None:
    with receiver() as recv:
        async with notify_stack(rules({"type": "webhook", "url": recv.url()}), **FAST) as (
            alerts,
            notifier,
        ):
            alert = await fire(alerts)
            await alerts.resolve(alert.id)
            await fire(alerts)  # re-opens the same alert within the 5-minute cooldown
            await alerts.resolve(alert.id)
            await until(lambda: notifier.sent["ops.webhook"] == 2, what="two deliveries")
            assert [p.json()["status"] for p in recv.posts] == ["firing", "resolved"]
            records = await held(notifier)
            assert [(h["reason"], h["kind"]) for h in records] == [("cooldown", "firing")]
            assert len(await outbox(notifier)) == 2


async def test_email_logs_in_with_username_and_password(notify_stack: Factory) -> None:
    seen: list[tuple[str, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> Any:
        seen.append((auth.login.decode(), auth.password))
        return AuthResult(success=auth.password == b"s3cret")

    # Plain-text AUTH is offered here only because the server is on loopback.
    with smtp_server(authenticator=authenticator, auth_require_tls=False) as smtp:
        base = {"type": "email", "to": "ops@example.com", "smtp_host": "127.0.0.1"}
        action = {**base, "smtp_port": smtp.port, "username": "cortexd", "password": "s3cret"}
        async with notify_stack(rules(action), **FAST) as (alerts, notifier):
            await fire(alerts)
            await until(lambda: smtp.messages, what="a mail")
            assert seen == [("cortexd", b"s3cret")]
            result = await notifier.send(
                notifier.action("ops.email"),
                notifier.test_event(),
                "t",
            )
            assert result.status == 250


def _self_signed(directory: Path) -> tuple[str, str]:
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", key, "-out", cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


async def test_email_over_starttls_verifies_the_server(
    notify_stack: Factory, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    with smtp_server(tls_context=server_tls, require_starttls=True) as smtp:
        base = {
            "type": "email",
            "to": "ops@example.com",
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "starttls": True,
        }
        config = rules({**base, "ca_file": cert}, {**base, "name": "untrusted"})
        async with notify_stack(config, max_attempts=1, **FAST) as (alerts, notifier):
            await fire(alerts)
            await until(lambda: notifier.sent["ops.email"] == 1, what="the trusted mail")
            await until(lambda: notifier.dead_lettered["untrusted"] == 1, what="the refusal")
            assert len(smtp.messages) == 1
            (dead,) = await notifier.store.dead_letters(None, None, 10)
            assert "CERTIFICATE_VERIFY_FAILED" in dead["last_error"]
