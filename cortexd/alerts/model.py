"""The alert model: severities, states, categories, identity and flap state.

An alert's identity (its fingerprint) is its source and identity labels, never
its measured values. Programs raising alerts over the socket may name the
identity outright with a key; otherwise their title is part of it, so two
different titles are two alerts (see `fingerprint`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal

import orjson

from cortexd.protocol import CortexError, ErrorCode

Clock = Callable[[], float]
"""Wall-clock seconds since the epoch; injected so tests step time by hand."""

State = Literal["firing", "acknowledged", "resolved"]
STATES: tuple[State, ...] = ("firing", "acknowledged", "resolved")

# The seed's alert types, kept as categories so its vocabulary still works.
CATEGORIES = (
    "apt_updates",
    "security_update",
    "disk_usage",
    "memory_usage",
    "cve_found",
    "dependency",
    "service",
    "system",
    "llm_error",
    "daemon_status",
    "ai_analysis",
)


class AlertCapReached(CortexError):
    """The active-alert cap is reached; the new alert was not stored."""

    code = ErrorCode.QUEUE_FULL

    def __init__(self, cap: int) -> None:
        super().__init__(f"the active alert cap ({cap}) is reached", depth=cap)


class Severity(IntEnum):
    """Ordered so that a comparison says which is worse."""

    INFO = 0
    WARNING = 1
    ERROR = 2
    CRITICAL = 3

    @classmethod
    def parse(cls, text: str) -> Severity:
        """`warning`, `WARNING` or `warn` → WARNING. Raises ValueError."""
        name = text.strip().upper()
        name = {"WARN": "WARNING", "CRIT": "CRITICAL", "ERR": "ERROR"}.get(name, name)
        try:
            return cls[name]
        except KeyError:
            raise ValueError(f"unknown severity {text!r}") from None


SEVERITY_NAMES = tuple(s.name for s in Severity)
# Recent state-change times kept per alert for flap detection.
MAX_CHANGES = 64
MAX_NAME = 64
_NOT_LABEL = re.compile(r"[^a-z0-9]+")


def fingerprint(
    source: str,
    labels: Mapping[str, str],
    *,
    key: str | None = None,
    title: str | None = None,
) -> str:
    """A stable hash of what the alert is about.

    By default the source and identity labels: measured values belong in
    annotations and never enter the hash, so a disk at 81 % and later 93 % is
    one alert, not two. With `key`, the source and the key alone (labels and
    title may then change in place); with `title`, the title joins the labels.
    """
    if key is not None:
        canonical = orjson.dumps([source, "key", key])
    elif title is not None:
        canonical = orjson.dumps([source, sorted(labels.items()), "title", title])
    else:
        canonical = orjson.dumps([source, sorted(labels.items())])
    return hashlib.sha256(canonical).hexdigest()[:32]


def slug(text: str) -> str:
    """A label-safe name from free text: `Backup job failed!` -> `backup_job_failed`.

    Empty when nothing of `text` is usable (the caller falls back to another name).
    """
    name = _NOT_LABEL.sub("_", text.lower()).strip("_")[:MAX_NAME].rstrip("_")
    if name and name[0].isdigit():
        name = f"_{name}"[:MAX_NAME]
    return name


def changes_within(changes: list[float], now: float, window: float) -> int:
    """How many of the state changes at `changes` fall in the `window` before `now`."""
    horizon = now - window
    return sum(1 for at in changes if at > horizon)


@dataclass(slots=True)
class Alert:
    """One alert: a condition's life from first firing until resolution."""

    id: str
    fingerprint: str
    source: str
    severity: Severity
    category: str
    title: str
    description: str
    labels: dict[str, str]
    annotations: dict[str, Any]
    state: State
    first_seen: float
    last_seen: float
    count: int
    host: str
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    resolved_at: float | None = None
    cleared_at: float | None = None
    key: str | None = None
    # The Alertmanager `alertname`: the source unless the raiser named it.
    name: str = ""
    flapping: bool = False
    # Times of recent state changes (fire, resolve, severity), oldest first.
    changes: list[float] = field(default_factory=list)
    # An event resolves on its own at this time unless it is raised again.
    expires_at: float | None = None
    # When the row was last written; count/last_seen changes between writes
    # are coalesced (see AlertManager) and flushed later.
    written_at: float = field(default=0.0, compare=False)
    dirty: bool = field(default=False, compare=False)

    @property
    def active(self) -> bool:
        return self.state != "resolved"

    @property
    def alertname(self) -> str:
        return self.name or self.source

    @classmethod
    def first(
        cls,
        notice: Notice,
        fp: str,
        source: str,
        category: str,
        key: str | None,
        *,
        now: float,
        host: str,
    ) -> Alert:
        """A new firing alert from its first notice."""
        return cls(
            id=str(uuid.uuid4()),
            fingerprint=fp,
            source=source,
            severity=notice.severity,
            category=category,
            title=notice.title,
            description=notice.description,
            labels=dict(notice.labels),
            annotations=dict(notice.annotations or {}),
            state="firing",
            first_seen=now,
            last_seen=now,
            count=1,
            host=host,
            key=key,
            name=notice.name or "",
            changes=[now],
            expires_at=notice.expires_at,
        )

    def copy(self) -> Alert:
        """A copy to roll back to if a write fails."""
        return dataclasses.replace(
            self,
            labels=dict(self.labels),
            annotations=dict(self.annotations),
            changes=list(self.changes),
        )

    def restore(self, saved: Alert) -> None:
        """Take every field back from `saved` (a `copy()` of this alert)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(saved, f.name))

    def match_labels(self) -> dict[str, str]:
        """The label set silences match against (Alertmanager's names included)."""
        return {
            **self.labels,
            "alertname": self.alertname,
            "source": self.source,
            "severity": self.severity.name.lower(),
            "category": self.category,
            "instance": self.host,
            "host": self.host,
        }

    def to_dict(self, *, silenced: bool = False) -> dict[str, Any]:
        """The JSON shape served by `alerts.list` and `alerts.get`."""
        return {
            "id": self.id,
            "fingerprint": self.fingerprint,
            "source": self.source,
            "severity": self.severity.name,
            "category": self.category,
            "title": self.title,
            "description": self.description,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "state": self.state,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "count": self.count,
            "acknowledged_at": self.acknowledged_at,
            "acknowledged_by": self.acknowledged_by,
            "resolved_at": self.resolved_at,
            "cleared": self.cleared_at is not None,
            "host": self.host,
            "silenced": silenced,
            "key": self.key,
            "name": self.alertname,
            "flapping": self.flapping,
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True, slots=True)
class Notice:
    """What one notice says about an alert that may already exist."""

    severity: Severity
    title: str
    description: str
    annotations: Mapping[str, Any] | None
    labels: Mapping[str, str]
    name: str | None
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class ListFilter:
    """What `alerts.list` selects; None means no restriction."""

    severity: Severity | None = None
    states: tuple[State, ...] | None = None
    category: str | None = None
    since: float | None = None
    include_cleared: bool = False
    limit: int = 100

    def selects(self, alert: Alert) -> bool:
        """Whether the `alerts.list` query would select `alert` (for alerts held in memory)."""
        return (
            (self.severity is None or alert.severity == self.severity)
            and (self.states is None or alert.state in self.states)
            and (self.category is None or alert.category == self.category)
            and (self.since is None or alert.last_seen >= self.since)
            and (self.include_cleared or alert.cleared_at is None)
        )


@dataclass(frozen=True, slots=True)
class Silence:
    """Matchers that mute notifications for alerts they match, until `ends_at`."""

    id: str
    matchers: tuple[str, ...]
    comment: str
    created_by: str
    created_at: float
    starts_at: float
    ends_at: float

    def active_at(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "matchers": list(self.matchers),
            "comment": self.comment,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "active": self.active_at(now),
        }
