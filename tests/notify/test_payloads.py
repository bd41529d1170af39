"""What each action type sends, checked against the receivers' formats."""

from __future__ import annotations

import hashlib
import hmac

import orjson

from cortexd.notify.payloads import HttpRequest, MailRequest, build, sign
from cortexd.notify.rules import Action

EVENT = {
    "kind": "firing",
    "at": 1_700_000_000.0,
    "instance": "web1",
    "alert": {
        "id": "a1",
        "fingerprint": "f00d",
        "source": "disk_space",
        "severity": "CRITICAL",
        "category": "disk_usage",
        "title": "Disk space",
        "description": "/ is 97% full",
        "labels": {"check": "disk_space", "mountpoint": "/"},
        "annotations": {"value": 97.0},
        "first_seen": 1_699_999_000.0,
        "host": "web1",
    },
}


def action(kind: str, **options: object) -> Action:
    return Action(name=f"r.{kind}", type=kind, options=options, rule="r")


def test_webhook_is_alertmanager_v4_with_instance_and_signature() -> None:
    request = build(action("webhook", url="http://h/x", hmac_secret="k"), EVENT, 7)
    assert isinstance(request, HttpRequest)
    body = orjson.loads(request.body)
    assert body["version"] == "4"
    assert body["status"] == "firing"
    assert body["receiver"] == "r.webhook"
    (one,) = body["alerts"]
    assert one["labels"]["instance"] == "web1"
    assert one["labels"]["alertname"] == "disk_space"
    assert one["labels"]["severity"] == "critical"
    assert one["annotations"]["summary"] == "Disk space"
    assert one["startsAt"] == "2023-11-14T21:56:40.000Z"
    assert one["endsAt"] == "0001-01-01T00:00:00Z"
    expected = hmac.new(b"k", request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Cortex-Signature"] == f"sha256={expected}"
    assert request.headers["X-Cortex-Notification-Id"] == "7"


def test_resolution_ends_the_alert() -> None:
    resolved = {**EVENT, "kind": "resolved", "alert": {**EVENT["alert"], "resolved_at": 1.7e9}}  # type: ignore[dict-item]
    webhook = orjson.loads(build(action("webhook", url="http://h/"), resolved, 1).body)  # type: ignore[union-attr]
    assert webhook["status"] == "resolved"
    assert webhook["alerts"][0]["endsAt"] == "2023-11-14T22:13:20.000Z"
    pd = orjson.loads(build(action("pagerduty", routing_key="rk"), resolved, 1).body)  # type: ignore[union-attr]
    assert pd["event_action"] == "resolve"


def test_pagerduty_events_v2() -> None:
    request = build(action("pagerduty", routing_key="rk"), EVENT, 1)
    assert isinstance(request, HttpRequest)
    assert request.url == "https://events.pagerduty.com/v2/enqueue"
    body = orjson.loads(request.body)
    assert body["routing_key"] == "rk"
    assert body["event_action"] == "trigger"
    assert body["dedup_key"] == "web1/f00d"
    assert body["payload"]["source"] == "web1"
    assert body["payload"]["severity"] == "critical"


def test_discord_never_pings_everyone() -> None:
    loud = {**EVENT, "alert": {**EVENT["alert"], "title": "@everyone disk"}}  # type: ignore[dict-item]
    body = orjson.loads(build(action("discord", url="http://h/"), loud, 1).body)  # type: ignore[union-attr]
    assert body["allowed_mentions"] == {"parse": []}
    assert "web1" in body["content"]


def test_email_names_the_host_in_the_subject() -> None:
    request = build(action("email", to=["ops@example.com"], smtp_host="mx"), EVENT, 1)
    assert isinstance(request, MailRequest)
    assert request.port == 25
    assert "web1" in request.message["Subject"]
    assert "CRITICAL" in request.message["Subject"]


def test_sign_is_hmac_sha256_of_the_body() -> None:
    assert sign("k", b"x") == "sha256=" + hmac.new(b"k", b"x", hashlib.sha256).hexdigest()
