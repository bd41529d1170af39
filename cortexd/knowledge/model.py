"""The runbook's shape: entries, the causes they list, the facts that point to each cause.

An entry explains one kind of alert (matched by its source and, optionally,
labels): what the condition means, its common causes, read-only commands to
look with, and the registered fixes that address it. A cause is pointed to
by conditions on gathered facts; which facts exist, and which fields they
carry, is declared by the gatherers and checked when the runbook loads.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Scalar = float | int | str | bool


@dataclass(frozen=True, slots=True)
class Condition:
    """A test on the facts of one kind; it holds when one fact passes every part.

    `top`: only the first fact of the kind (gatherers list the largest first).
    `at_least`/`at_most`: numeric fields; `equals`: any field; `matches`: a
    regular expression searched in a field, `text` or `subject`.
    """

    fact: str
    top: bool = False
    at_least: Mapping[str, float] = field(default_factory=dict)
    at_most: Mapping[str, float] = field(default_factory=dict)
    equals: Mapping[str, Scalar] = field(default_factory=dict)
    matches: Mapping[str, re.Pattern[str]] = field(default_factory=dict)
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Cause:
    id: str
    text: str
    advice: str = ""
    when: tuple[Condition, ...] = ()
    fixes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FixRef:
    """A registered fix that addresses an entry, and the cortexctl command that offers it."""

    id: str
    command: str


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    source: str
    title: str
    meaning: str
    causes: tuple[Cause, ...]
    commands: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    keywords: tuple[str, ...] = ()
    facts: tuple[str, ...] = ()
    fixes: tuple[FixRef, ...] = ()
    origin: str = ""

    @property
    def is_pattern(self) -> bool:
        return any(ch in self.source for ch in "*?[")

    def applies(self, source: str, labels: Mapping[str, str]) -> bool:
        if self.is_pattern:
            if not fnmatch.fnmatchcase(source, self.source):
                return False
        elif source != self.source:
            return False
        return all(labels.get(k) == v for k, v in self.labels.items())

    def specificity(self) -> tuple[int, int, int]:
        """Exact sources before patterns, more labels before fewer, longer patterns first."""
        return (0 if self.is_pattern else 1, len(self.labels), len(self.source))

    def fix(self, fix_id: str) -> FixRef:
        return next(f for f in self.fixes if f.id == fix_id)

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "title": self.title, "origin": self.origin}


class KnowledgeBase:
    """The loaded runbook: entries by id, looked up by alert source and labels."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = {e.id: e for e in entries}

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, source: str, labels: Mapping[str, str]) -> Entry | None:
        """The most specific entry for an alert from `source` with `labels`."""
        found = [e for e in self.entries.values() if e.applies(source, labels)]
        return max(found, key=Entry.specificity) if found else None

    def search(self, words: list[str]) -> list[tuple[int, Entry]]:
        """Entries whose keywords the words name, best first (a word may extend a keyword)."""
        scored = []
        for entry in self.entries.values():
            hits = sum(1 for keyword in entry.keywords if any(w.startswith(keyword) for w in words))
            if hits:
                scored.append((hits, entry))
        scored.sort(key=lambda item: (-item[0], item[1].id))
        return scored
