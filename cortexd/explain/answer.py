"""The deterministic part of an answer: built from the runbook and the facts only.

It is what `cortexctl explain` prints first, and all it prints without a
model: the condition, the causes ranked by the facts (each with the facts
that point to it), the facts themselves with their sources, read-only
commands to look further, and the registered fixes with the cortexctl
command that plans them. Both a JSON shape and a text rendering of it.
"""

from __future__ import annotations

import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cortexd.explain.facts import Fact
from cortexd.explain.gather import Gathered
from cortexd.explain.rank import Ranked
from cortexd.knowledge import Entry

APPLY_NOTE = "dry runs; add --yes to apply, as an admin"


@dataclass(frozen=True, slots=True)
class FixInfo:
    fix_id: str
    safety: str
    description: str
    command: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "fix_id": self.fix_id,
            "safety": self.safety,
            "description": self.description,
            "command": self.command,
            "apply": f"{self.command} --yes",
        }


@dataclass(frozen=True, slots=True)
class Topic:
    """One runbook entry applied to one subject (a mountpoint, a unit, the host)."""

    entry: Entry
    labels: Mapping[str, str]
    ranked: tuple[Ranked, ...]
    gathered: Gathered
    fixes: tuple[FixInfo, ...]
    commands: tuple[str, ...]

    @property
    def top(self) -> Ranked | None:
        first = self.ranked[0] if self.ranked else None
        return first if first is not None and first.pointed_to else None

    def fixes_for(self, ranked: Ranked) -> list[FixInfo]:
        return [f for f in self.fixes if f.fix_id in ranked.cause.fixes]

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry": self.entry.id,
            "title": self.entry.title,
            "meaning": self.entry.meaning,
            "subject": dict(self.labels),
            "causes": [
                {
                    "id": r.cause.id,
                    "text": r.cause.text,
                    "advice": r.cause.advice,
                    "score": r.score,
                    "pointed_to": r.pointed_to,
                    "evidence": [f.to_dict() for f in r.evidence],
                    "fixes": [f.fix_id for f in self.fixes_for(r)],
                }
                for r in self.ranked
            ],
            "facts": [f.to_dict() for f in self.gathered.facts],
            "notes": list(self.gathered.notes),
            "commands": list(self.commands),
            "fixes": [f.to_dict() for f in self.fixes],
            "facts_ms": round(self.gathered.seconds * 1000, 1),
        }


def fill(template: str, values: Mapping[str, str]) -> str:
    """A runbook command with its placeholders filled, shell-quoted; unknown ones as <name>."""

    out: list[str] = []
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        out.append(literal)
        if name is not None:
            value = values.get(name)
            out.append(shlex.quote(value) if value else f"<{name}>")
    return "".join(out)


def _evidence(fact: Fact) -> str:
    return f"{fact.text}  [{fact.source}]"


def render_topic(topic: Topic) -> list[str]:
    """The text lines of one topic, below its heading."""
    lines = [topic.entry.meaning, ""]
    pointed = [r for r in topic.ranked if r.pointed_to]
    others = [r for r in topic.ranked if not r.pointed_to]
    if pointed:
        lines.append("Likely causes, most likely first:" if len(pointed) > 1 else "Likely cause:")
        for n, ranked in enumerate(pointed, 1):
            lines.append(f"  {n}. {ranked.cause.text}")
            lines.extend(f"     seen: {_evidence(f)}" for f in ranked.evidence)
            if ranked.cause.advice:
                lines.append(f"     what to do: {ranked.cause.advice}")
            lines.extend(
                f"     fix: {f.command}  ({f.fix_id}, {f.safety})" for f in topic.fixes_for(ranked)
            )
        if others:
            lines.append("Other common causes (nothing seen here points to them):")
    else:
        lines.append("Nothing seen here points to one cause; the common causes are:")
    lines.extend(f"  - {r.cause.text}" for r in others)
    lines.append("")
    facts = topic.gathered.facts
    lines.append(f"Facts ({len(facts)}, gathered in {topic.gathered.seconds * 1000:.0f} ms):")
    lines.extend(f"  - {_evidence(f)}" for f in facts)
    if not facts:
        lines.append("  (none)")
    lines.extend(f"  note: {note}" for note in topic.gathered.notes)
    lines.append("")
    lines.append("Look for yourself (read-only):")
    lines.extend(f"  $ {command}" for command in topic.commands)
    lines.append("")
    if topic.fixes:
        lines.append(f"Fixes ({APPLY_NOTE}):")
        lines.extend(
            f"  {f.fix_id} ({f.safety}): {f.description}\n    $ {f.command}" for f in topic.fixes
        )
    else:
        lines.append("No registered fix applies; the advice above says what to do.")
    return lines


def alert_view(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The alert fields an explanation repeats."""
    return {
        key: alert.get(key)
        for key in ("id", "title", "severity", "state", "source", "category", "labels")
    }


def render_alert(alert: Mapping[str, Any], topic: Topic) -> str:
    head = (
        f"{topic.entry.title}: {alert['title']} "
        f"({alert['severity']}, {alert['state']}, alert {str(alert['id'])[:8]})"
    )
    return "\n".join([head, "", *render_topic(topic)]).rstrip() + "\n"


def render_host(question: str, not_passing: list[dict[str, Any]], topics: list[Topic]) -> str:
    lines = [f"Question: {question}", ""]
    if not_passing:
        count = len(not_passing)
        lines.append(f"The host now: {count} check{'s' if count > 1 else ''} not passing")
        lines.extend(f"  - {c['check_id']} {c['status']}: {c['message']}" for c in not_passing)
    else:
        lines.append("The host now: every check that has run passes")
    for topic in topics:
        subject = ", ".join(f"{k}={v}" for k, v in topic.labels.items() if k != "check")
        lines += ["", f"== {topic.entry.title}" + (f" ({subject})" if subject else ""), ""]
        lines += render_topic(topic)
    if not topics:
        lines += ["", "The runbook has no topic for this question."]
    return "\n".join(lines).rstrip() + "\n"
