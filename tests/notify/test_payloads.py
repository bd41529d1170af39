"""What each action type sends, checked against the receivers' formats."""

from __future__ import annotations

import email
import email.policy
import email.utils
import hashlib
import hmac

import orjson

from cortexd.notify.payloads import HttpRequest, MailRequest, build, group_key, sign
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


def test_group_key_is_formatted_as_alertmanager_does() -> None:
    assert group_key({"alertname": "disk_space"}) == '{}:{alertname="disk_space"}'
    # Go's %q quoting, pairs sorted and joined by ", ".
    labels = {"b": 'say "hi"\n', "a": "tab\there", "c": "\x01ü"}
    assert group_key(labels) == '{}:{a="tab\\there", b="say \\"hi\\"\\n", c="\\x01ü"}'
    body = orjson.loads(build(action("webhook", url="http://h/"), EVENT, 1).body)  # type: ignore[union-attr]
    assert body["groupKey"] == '{}:{alertname="disk_space"}'


def test_no_link_without_an_http_external_url() -> None:
    plain = orjson.loads(build(action("webhook", url="http://h/"), EVENT, 1).body)  # type: ignore[union-attr]
    assert plain["alerts"][0]["generatorURL"] == ""
    assert plain["externalURL"] == ""
    linked = build(action("webhook", url="http://h/"), EVENT, 1, external_url="https://ops/c/")
    body = orjson.loads(linked.body)  # type: ignore[union-attr]
    assert body["alerts"][0]["generatorURL"] == "https://ops/c/alerts/a1"
    assert body["externalURL"] == "https://ops/c/"


def test_alertmanager_push_ends_the_old_label_set_with_the_new_one() -> None:
    escalated = {
        **EVENT,
        "sent_at": 1_700_000_000.0,
        "lifetime": 180.0,
        "alert": {**EVENT["alert"], "severity": "CRITICAL"},  # type: ignore[dict-item]
        "ended": [{"alertname": "disk_space", "severity": "warning", "instance": "web1"}],
    }
    request = build(action("alertmanager", url="http://am:9093"), escalated, 1)
    assert request.url == "http://am:9093/api/v2/alerts"  # type: ignore[union-attr]
    new, old = orjson.loads(request.body)  # type: ignore[union-attr]
    assert new["labels"]["severity"] == "critical"
    assert new["endsAt"] == "2023-11-14T22:16:20.000Z"  # sent_at + lifetime: still firing
    assert old["labels"]["severity"] == "warning"
    assert old["endsAt"] == "2023-11-14T22:13:20.000Z"  # ended at the escalation


def test_url_credentials_go_as_basic_auth_not_in_the_url() -> None:
    request = build(action("webhook", url="https://bot:p%40ss@hooks.example/x"), EVENT, 1)
    assert isinstance(request, HttpRequest)
    assert request.url == "https://hooks.example/x"
    assert request.headers["Authorization"] == "Basic Ym90OnBAc3M="  # bot:p@ss


def test_email_conforms_to_rfc_5322_with_a_utf8_subject() -> None:
    event = {**EVENT, "alert": {**EVENT["alert"], "title": "Plattenplatz fast voll —\nÜberlauf"}}  # type: ignore[dict-item]
    request = build(action("email", to=["ops@example.com"], **{"from": "c@web1.example"}), event, 9)
    assert isinstance(request, MailRequest)
    wire = request.message.as_bytes()
    assert wire.isascii()  # 7-bit clean: encoded words in headers, quoted-printable body
    parsed = email.message_from_bytes(wire, policy=email.policy.strict)
    assert parsed["Subject"] == "[FIRING] CRITICAL Plattenplatz fast voll — Überlauf on web1"
    assert parsed["MIME-Version"] == "1.0"
    assert email.utils.parsedate_to_datetime(parsed["Date"]).tzinfo is not None
    assert parsed["Message-ID"].startswith("<") and parsed["Message-ID"].endswith("@web1.example>")
    assert "Überlauf" in parsed.get_content()


def test_a_resolution_mail_says_when_it_fired_and_resolved() -> None:
    resolved = {
        **EVENT,
        "kind": "resolved",
        "alert": {**EVENT["alert"], "resolved_at": 1_700_000_125.0, "description": "/ is 41% full"},  # type: ignore[dict-item]
    }
    request = build(action("email", to=["ops@example.com"]), resolved, 1)
    text = request.message.get_content()  # type: ignore[union-attr]
    assert "/ is 41% full" in text
    assert (
        "Fired 2023-11-14T21:56:40.000Z, resolved 2023-11-14T22:15:25.000Z (after 18m 45s)" in text
    )
