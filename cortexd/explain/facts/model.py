"""What a fact is, what a gatherer needs, and the bounds every gatherer keeps.

A fact is one observation about the host made now, for the alert at hand,
with where it came from (`source`): a path read, a command run, a walk made.
Gatherers are plain blocking functions; they run on worker threads (see
`gather.py`) and keep to the context's deadline themselves, because a thread
cannot be cancelled from outside.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cortexd.host.commands import Runner

FieldValue = float | int | str | bool
# Bounds on what one explanation carries, whatever the host looks like.
MAX_FACTS_PER_KIND = 5
MAX_TEXT = 240
MAX_NOTES = 20

KernelClock = Callable[[], tuple[int, int, int]]
"""adjtimex(2) read-only: (state, status flags, max error in µs)."""


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """`text` on one line, at most `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def size(n: float) -> str:
    """Bytes as people read them: 812 B, 7.2 MiB, 1.4 GiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def percent(share: float) -> str:
    """A share (0 to 1) as a whole percent, never rounding a real share down to 0."""
    value = 100.0 * share
    if 0 < value < 1:
        return "<1%"
    return f"{value:.0f}%"


@dataclass(frozen=True, slots=True)
class Fact:
    """One observation: its kind, what it is about, a sentence, and its provenance.

    `fields` holds the numbers and words the knowledge base's conditions test
    (a gatherer declares which fields each of its kinds carries).
    """

    kind: str
    subject: str
    text: str
    source: str
    fields: Mapping[str, FieldValue] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "text": self.text,
            "source": self.source,
            "fields": dict(self.fields),
        }


@dataclass(frozen=True, slots=True)
class CheckView:
    """The last result of the check an alert came from, as the monitor holds it."""

    check_id: str
    status: str
    message: str
    details: Mapping[str, Any]
    finished_at: float

    def item(self, labels: Mapping[str, str]) -> Mapping[str, Any]:
        """The details of the one subject `labels` name (a mountpoint, a unit).

        A check with several subjects keeps one entry per subject under
        `items`; a check with one subject keeps its details flat.
        """
        items = self.details.get("items")
        if not isinstance(items, list):
            return self.details
        own = {k: v for k, v in labels.items() if k != "check"}
        for entry in items:
            if isinstance(entry, dict) and all(
                entry.get("labels", {}).get(k) == v for k, v in own.items()
            ):
                return entry
        return {}


@dataclass(frozen=True, slots=True)
class Host:
    """Where the gatherers look, and the few things tests must be able to replace.

    `apt_root` and `cortex_roots` follow the repair settings (so a test tree
    is looked at where the checks look); `kernel_clock` reads adjtimex.
    """

    runner: Runner
    kernel_clock: KernelClock
    apt_root: str = "/"
    cortex_roots: tuple[str, ...] = ()
    owner: int = field(default_factory=os.geteuid)
    proc: str = "/proc"
    journal_dirs: tuple[str, ...] = ("/var/log/journal", "/run/log/journal")


@dataclass(frozen=True, slots=True)
class Context:
    """What one gatherer run sees: the subject's labels, the check's view, the deadline."""

    labels: Mapping[str, str]
    check: CheckView | None
    host: Host
    deadline: float
    # Whether the caller may read the journal (admins, adm, systemd-journal): the
    # journal holds authentication logs, and explain itself is open to every reader.
    journal: bool = True

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline


class Found:
    """What a gatherer found: facts (bounded per kind) and notes on what it could not see."""

    def __init__(self) -> None:
        self.facts: list[Fact] = []
        self.notes: list[str] = []
        self._per_kind: dict[str, int] = {}

    def add(self, kind: str, subject: str, text: str, source: str, **fields: FieldValue) -> bool:
        """Keep one fact; False once its kind holds MAX_FACTS_PER_KIND already."""
        count = self._per_kind.get(kind, 0)
        if count >= MAX_FACTS_PER_KIND:
            return False
        self._per_kind[kind] = count + 1
        self.facts.append(Fact(kind, clip(subject), clip(text), clip(source), fields))
        return True

    def note(self, text: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(clip(text))


@dataclass(frozen=True, slots=True)
class Gatherer:
    """A named way to look at the host.

    `kinds` maps each fact kind it produces to the fields those facts carry
    (the knowledge base is validated against it); `needs` names the label the
    gatherer cannot work without (`mountpoint`, `unit`), if any.
    """

    name: str
    run: Callable[[Context, Found], None]
    kinds: Mapping[str, frozenset[str]]
    needs: str | None = None
    description: str = ""
