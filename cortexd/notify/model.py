"""The notifier's shared vocabulary: actions, answers, delivery failures and URLs.

Every other module of the package imports from here and this module imports
none of them, so rules, action types, payloads and delivery depend on one
base instead of on each other.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

ACTION_TYPES = ("webhook", "slack", "discord", "email", "pagerduty", "alertmanager")
DEFAULT_PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
# Alertmanager's default repeat interval: a firing alert is sent again this often.
DEFAULT_REPEAT_INTERVAL = 4 * 3600.0
# What an endpoint answered is kept (and shown to admins) up to this many characters.
MAX_BODY = 1024

Kind = Literal["firing", "flapping", "resolved"]
"""What a message about an alert says: it fires, it flaps, or it is resolved."""


@dataclass(frozen=True, slots=True)
class Action:
    """One configured destination; `options` holds its type's keys, checked at load."""

    name: str
    type: str
    options: Mapping[str, Any]
    rule: str
    send_resolved: bool = True
    # Seconds between re-sends of a still-firing alert; 0 never re-sends.
    repeat_interval: float = DEFAULT_REPEAT_INTERVAL

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the endpoint said: an HTTP status or SMTP reply code, and its first bytes."""

    status: int
    text: str


class DeliveryFailed(Exception):
    """The endpoint refused, failed or did not answer; `str()` says how.

    The message is the daemon's own words (safe to show anyone); what the
    remote server answered, if anything, is `body` (shown to admins only).
    """

    def __init__(self, message: str, *, body: str = "") -> None:
        super().__init__(message)
        self.body = body[:MAX_BODY]


def split_credentials(url: str) -> tuple[str, str | None]:
    """`http://user:pw@host/x` -> (`http://host/x`, `Basic dXNlcjpwdw==`); no user -> None."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    user = unquote(parts.username)
    password = unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return urlunsplit(_without_userinfo(parts)), f"Basic {token}"


def _without_userinfo(parts: SplitResult) -> SplitResult:
    return parts._replace(netloc=parts.netloc.rpartition("@")[2])


@dataclass(slots=True)
class Delivery:
    """What one action was last told about one alert (by fingerprint), and when.

    `kind` is the last message queued for it (None: nothing yet). `labels` is
    the label set that message carried (Alertmanager's identity of it), and
    `fired_at` when a firing or flapping message was last queued (for the
    cooldown and the repeat interval). `held` says, in memory only, why the
    alert's current state waits to be told, and since when.
    """

    fingerprint: str
    action: str
    alert_id: str
    kind: Kind | None = None
    severity: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    queued_at: float = 0.0
    fired_at: float | None = None
    # The outbox entry of the last message (0: none yet).
    last_id: int = 0
    held: str | None = None
    held_since: float | None = None
