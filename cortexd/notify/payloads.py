"""What each action type sends: request bodies built from one notification event.

An event is the JSON-ready dict stored in the outbox: `kind` (firing,
flapping, resolved, summary, test), `alert` (the alert as it stood),
`at`, `instance`, `event` (the change that led to it), `text` for
summaries, and for Alertmanager `ended` (label sets this message ends: the
alert's previous severity or labels). Bodies are built at delivery time from
the action's current settings, so no secret (HMAC key, routing key,
password, URL credentials) is ever written to the outbox.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from email.message import EmailMessage

from cortexd.notify.model import DEFAULT_PAGERDUTY_URL, Action, split_credentials

# A zero time is how Alertmanager's webhook says "no end yet".
ZERO_TIME = "0001-01-01T00:00:00Z"
SIGNATURE_HEADER = "X-Cortex-Signature"
ID_HEADER = "X-Cortex-Notification-Id"
DISCORD_TEXT_LIMIT = 2000
DISCORD_EMBED_LIMIT = 4000
SLACK_TEXT_LIMIT = 3000
# Alertmanager ends an alert that is not re-sent by then; we re-send well before.
ALERTMANAGER_LIFETIME_FACTOR = 3
_LABEL_NAME = re.compile(r"[^a-zA-Z0-9_]")
_COLORS = {"CRITICAL": 0xD32F2F, "ERROR": 0xF57C00, "WARNING": 0xFBC02D, "INFO": 0x1976D2}
_RESOLVED_COLOR = 0x388E3C
_PD_SEVERITY = {"CRITICAL": "critical", "ERROR": "error", "WARNING": "warning", "INFO": "info"}
_TAGS = {"resolved": "RESOLVED", "test": "TEST", "summary": "SUMMARY", "flapping": "FLAPPING"}
_LINE_BREAKS = re.compile(r"[\r\n]+")
MAX_SUBJECT = 200
_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


@dataclass(frozen=True, slots=True)
class HttpRequest:
    url: str
    body: bytes
    headers: dict[str, str]
    ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class MailRequest:
    message: EmailMessage
    host: str
    port: int
    starttls: bool
    ssl: bool
    username: str | None
    password: str | None
    ca_file: str | None = None


Request = HttpRequest | MailRequest


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def labels_of(event: dict[str, Any]) -> dict[str, str]:
    """The alert's labels in Prometheus form, with alertname, severity and instance."""
    alert = event["alert"]
    labels = {_LABEL_NAME.sub("_", k): str(v) for k, v in alert.get("labels", {}).items()}
    labels.update(
        alertname=alert.get("name") or alert["source"],
        severity=alert["severity"].lower(),
        category=alert.get("category", ""),
        instance=event["instance"],
        host=alert.get("host") or event["instance"],
    )
    return {k: v for k, v in labels.items() if v != ""}


def annotations_of(event: dict[str, Any]) -> dict[str, str]:
    alert = event["alert"]
    notes = {
        _LABEL_NAME.sub("_", k): str(v)
        for k, v in alert.get("annotations", {}).items()
        if isinstance(v, str | int | float)
    }
    notes["summary"] = alert["title"]
    if alert.get("description"):
        notes["description"] = alert["description"]
    if event.get("text"):
        notes["description"] = event["text"]
    if event["kind"] == "flapping":
        notes["flapping"] = "true"
    if event["kind"] == "resolved":
        notes.update(_times(event))
    if event.get("explanation"):
        notes["explanation"] = str(event["explanation"])
    return notes


def _times(event: dict[str, Any]) -> dict[str, str]:
    alert = event["alert"]
    fired = alert.get("first_seen") or event["at"]
    resolved = alert.get("resolved_at") or event["at"]
    return {"fired_at": rfc3339(fired), "resolved_at": rfc3339(resolved)}


def status_of(event: dict[str, Any]) -> str:
    return "resolved" if event["kind"] == "resolved" else "firing"


def headline(event: dict[str, Any]) -> str:
    """One line for chat and mail subjects: `[FIRING] CRITICAL disk full on web1`."""
    alert = event["alert"]
    tag = _TAGS.get(event["kind"], "FIRING")
    if event["kind"] == "summary":
        line = f"[{tag}] {alert['title']} on {event['instance']}"
    else:
        line = f"[{tag}] {alert['severity']} {alert['title']} on {event['instance']}"
    # A title from a script may hold line breaks; a header (or a chat line) must not.
    return _LINE_BREAKS.sub(" ", line)


def body_text(event: dict[str, Any]) -> str:
    alert = event["alert"]
    lines = [headline(event)]
    if event.get("text"):
        lines.append(event["text"])
    elif alert.get("description"):
        lines.append(alert["description"])
    if event["kind"] == "flapping":
        lines.append("It is flapping: further changes are held back until it settles.")
    if event["kind"] == "resolved":
        lines.append(_resolution_line(event))
    labels = labels_of(event)
    lines.append(", ".join(f"{k}={v}" for k, v in sorted(labels.items())))
    if event.get("explanation"):
        lines += ["", str(event["explanation"]).rstrip("\n")]
    return "\n".join(lines)


def _resolution_line(event: dict[str, Any]) -> str:
    alert = event["alert"]
    fired = alert.get("first_seen") or event["at"]
    resolved = alert.get("resolved_at") or event["at"]
    return (
        f"Fired {rfc3339(fired)}, resolved {rfc3339(resolved)} "
        f"(after {_span(max(0.0, resolved - fired))})."
    )


def _span(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    return " ".join([*parts, f"{secs}s"] if secs or not parts else parts)


def build(
    action: Action, event: dict[str, Any], entry_id: int | str, *, external_url: str = ""
) -> Request:
    """The request `action` sends for `event`; `entry_id` lets receivers drop repeats.

    `external_url` (`notify.external_url`) is where people can open the
    daemon's alerts over http(s); without one, no link is sent.
    """
    builder = _BUILDERS[action.type]
    request = builder(action, {**event, "external_url": external_url}, str(entry_id))
    ca_file = action.get("ca_file")
    return dataclasses.replace(request, ca_file=ca_file) if ca_file else request


def _json_request(url: str, payload: Any, entry_id: str, **headers: str) -> HttpRequest:
    # Credentials in the URL (`https://user:pw@host/…`) go as HTTP basic authentication.
    bare, authorization = split_credentials(url)
    if authorization is not None:
        headers["Authorization"] = authorization
    return HttpRequest(
        url=bare,
        body=orjson.dumps(payload),
        headers={"Content-Type": "application/json", ID_HEADER: entry_id, **headers},
    )


def _generator_url(event: dict[str, Any]) -> str:
    base = str(event.get("external_url") or "").rstrip("/")
    alert_id = event["alert"].get("id", "")
    return f"{base}/alerts/{alert_id}" if base and alert_id else ""


def _am_alert(event: dict[str, Any], *, webhook: bool) -> dict[str, Any]:
    alert = event["alert"]
    resolved = event["kind"] == "resolved"
    if resolved:
        ends = rfc3339(alert.get("resolved_at") or event["at"])
    elif webhook:
        ends = ZERO_TIME
    else:
        ends = rfc3339(event["sent_at"] + event["lifetime"])
    out = {
        "labels": labels_of(event),
        "annotations": annotations_of(event),
        "startsAt": rfc3339(alert.get("first_seen") or event["at"]),
        "endsAt": ends,
        "generatorURL": _generator_url(event),
    }
    if webhook:
        out["status"] = status_of(event)
        out["fingerprint"] = alert.get("fingerprint", "")
    return out


def _ended(event: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """An alert's earlier label set (its old severity), ended when this message was made."""
    alert = event["alert"]
    return {
        "labels": labels,
        "annotations": {"summary": alert["title"]},
        "startsAt": rfc3339(alert.get("first_seen") or event["at"]),
        "endsAt": rfc3339(event["at"]),
        "generatorURL": _generator_url(event),
    }


def go_quote(text: str) -> str:
    """`text` quoted the way Go's `%q` prints it (what Alertmanager's keys are made of)."""
    out = []
    for ch in text:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def group_key(labels: dict[str, str]) -> str:
    """Alertmanager's groupKey for the root route grouping by these labels.

    As Alertmanager prints it: the route's key, then the label set with each
    `name="value"` (Go quoting) sorted and joined by `, `.
    """
    pairs = sorted(f"{k}={go_quote(v)}" for k, v in labels.items())
    return "{}:{" + ", ".join(pairs) + "}"


def webhook_payload(action: Action, event: dict[str, Any]) -> dict[str, Any]:
    """Alertmanager's webhook v4 shape, so existing receivers accept it."""
    one = _am_alert(event, webhook=True)
    group = {"alertname": one["labels"]["alertname"]}
    return {
        "version": "4",
        "groupKey": group_key(group),
        "truncatedAlerts": 0,
        "status": one["status"],
        "receiver": action.name,
        "groupLabels": group,
        "commonLabels": one["labels"],
        "commonAnnotations": one["annotations"],
        "externalURL": str(event.get("external_url") or ""),
        "alerts": [one],
    }


def _webhook(action: Action, event: dict[str, Any], entry_id: str) -> Request:
    request = _json_request(action.get("url"), webhook_payload(action, event), entry_id)
    request.headers.update(action.get("headers") or {})
    secret = action.get("hmac_secret")
    if secret:
        request.headers[action.get("hmac_header") or SIGNATURE_HEADER] = sign(secret, request.body)
    return request


def sign(secret: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256 over the exact body bytes (GitHub's convention)."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _color(event: dict[str, Any]) -> int:
    if event["kind"] == "resolved":
        return _RESOLVED_COLOR
    return _COLORS.get(event["alert"]["severity"], _COLORS["INFO"])


def _slack(action: Action, event: dict[str, Any], entry_id: str) -> Request:
    labels = labels_of(event)
    payload: dict[str, Any] = {
        "text": headline(event),
        "attachments": [
            {
                "color": f"#{_color(event):06x}",
                "title": event["alert"]["title"][:SLACK_TEXT_LIMIT],
                "text": body_text(event)[:SLACK_TEXT_LIMIT],
                "fields": [
                    {"title": k, "value": v, "short": True} for k, v in sorted(labels.items())
                ],
                "ts": int(event["at"]),
            }
        ],
    }
    for key in ("channel", "username"):
        if action.get(key):
            payload[key] = action.get(key)
    return _json_request(action.get("url"), payload, entry_id)


def _discord(action: Action, event: dict[str, Any], entry_id: str) -> Request:
    labels = labels_of(event)
    payload: dict[str, Any] = {
        "content": headline(event)[:DISCORD_TEXT_LIMIT],
        "embeds": [
            {
                "title": event["alert"]["title"][:256],
                "description": body_text(event)[:DISCORD_EMBED_LIMIT],
                "color": _color(event),
                "timestamp": rfc3339(event["at"]),
                "fields": [
                    {"name": k, "value": v[:1024], "inline": True}
                    for k, v in sorted(labels.items())[:25]
                ],
            }
        ],
        # A notification must never ping @everyone because of alert text.
        "allowed_mentions": {"parse": []},
    }
    if action.get("username"):
        payload["username"] = action.get("username")
    return _json_request(action.get("url"), payload, entry_id)


def _pagerduty(action: Action, event: dict[str, Any], entry_id: str) -> Request:
    alert = event["alert"]
    severity = action.get("severity") or _PD_SEVERITY.get(alert["severity"], "warning")
    payload = {
        "routing_key": action.get("routing_key"),
        "event_action": "resolve" if event["kind"] == "resolved" else "trigger",
        "dedup_key": f"{event['instance']}/{alert.get('fingerprint', entry_id)}",
        "payload": {
            "summary": headline(event)[:1024],
            "source": event["instance"],
            "severity": severity,
            "timestamp": rfc3339(event["at"]),
            "component": alert["source"],
            "group": alert.get("category", ""),
            "class": alert["source"],
            "custom_details": {"labels": labels_of(event), **annotations_of(event)},
        },
    }
    return _json_request(action.get("url") or DEFAULT_PAGERDUTY_URL, payload, entry_id)


def _alertmanager(action: Action, event: dict[str, Any], entry_id: str) -> Request:
    url = action.get("url").rstrip("/") + "/api/v2/alerts"
    batch = event.get("batch")
    if batch is not None:
        # A keep-alive round: every firing alert as it is now, in one push.
        sent: dict[str, Any] = {
            k: event[k] for k in ("sent_at", "lifetime", "external_url") if k in event
        }
        return _json_request(
            url, [_am_alert({**e, **sent}, webhook=False) for e in batch], entry_id
        )
    # One push: the alert as it is now, and the label sets it replaces ended, so
    # Alertmanager never holds two active copies of one alert.
    current = _am_alert(event, webhook=False)
    ended = [_ended(event, old) for old in event.get("ended") or [] if old != current["labels"]]
    return _json_request(url, [current, *ended], entry_id)


def _email(action: Action, event: dict[str, Any], entry_id: str) -> Request:
    sender = action.get("from") or f"cortexd@{socket.getfqdn()}"
    domain = sender.rpartition("@")[2] or "localhost"
    # The email package is loaded with the first mail: a daemon that sends
    # none never holds it.
    import email.policy
    import email.utils
    from email.message import EmailMessage

    message = EmailMessage(policy=email.policy.SMTP)
    # RFC 5322: Date is required; Message-ID lets mail clients thread and drop repeats.
    message["Date"] = email.utils.formatdate(usegmt=True)
    message["Message-ID"] = email.utils.make_msgid(idstring=entry_id, domain=domain)
    message["Subject"] = headline(event)[:MAX_SUBJECT]
    message["From"] = sender
    message["To"] = ", ".join(action.get("to"))
    message["X-Cortex-Notification-Id"] = entry_id
    # Quoted-printable keeps the body 7-bit clean for relays without 8BITMIME.
    message.set_content(body_text(event) + "\n", cte="quoted-printable")
    ssl = bool(action.get("ssl"))
    starttls = bool(action.get("starttls"))
    default_port = 465 if ssl else 587 if starttls else 25
    return MailRequest(
        message=message,
        host=action.get("smtp_host") or "localhost",
        port=int(action.get("smtp_port") or default_port),
        starttls=starttls,
        ssl=ssl,
        username=action.get("username"),
        password=action.get("password"),
    )


_BUILDERS = {
    "webhook": _webhook,
    "slack": _slack,
    "discord": _discord,
    "pagerduty": _pagerduty,
    "alertmanager": _alertmanager,
    "email": _email,
}
