"""Alertmanager's label matchers: `name="value"`, `!=`, `=~` and `!~`.

As in Alertmanager, a label the alert lacks matches as the empty string, and
regular expressions are anchored at both ends.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Op = Literal["=", "!=", "=~", "!~"]
_MATCHER = re.compile(
    r"""^\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*
        (?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>[^\s",{}=]*))\s*$""",
    re.X,
)
MAX_REGEX = 1000


class MatcherError(ValueError):
    """A matcher that cannot be parsed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Matcher:
    name: str
    op: Op
    value: str
    pattern: re.Pattern[str] | None = None

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.pattern is not None
        found = self.pattern.fullmatch(actual) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.name}{self.op}"{escaped}"'


def parse_matcher(text: str) -> Matcher:
    """Parse one matcher. Raises MatcherError naming the problem."""
    found = _MATCHER.match(text)
    if not found:
        raise MatcherError(f'not a matcher: {text!r} (expected name="value", !=, =~ or !~)')
    quoted = found.group("quoted")
    value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else found.group("bare") or ""
    op: Op = found.group("op")  # type: ignore[assignment]
    pattern = None
    if op in ("=~", "!~"):
        if len(value) > MAX_REGEX:
            raise MatcherError(f"regular expression longer than {MAX_REGEX} characters")
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise MatcherError(f"bad regular expression {value!r}: {exc}") from None
    return Matcher(found.group("name"), op, value, pattern)


def parse_matchers(items: Sequence[str]) -> list[Matcher]:
    """Parse matchers given as a list, each item one matcher or a `{a="b", c!="d"}` set."""
    out: list[Matcher] = []
    for item in items:
        text = item.strip()
        if text.startswith("{") and text.endswith("}"):
            text = text[1:-1]
        out.extend(parse_matcher(part) for part in _split(text))
    if not out:
        raise MatcherError("at least one matcher is required")
    return out


def _split(text: str) -> list[str]:
    """Split on commas outside quotes."""
    parts: list[str] = []
    current: list[str] = []
    in_quotes = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            in_quotes = not in_quotes
        elif ch == "," and not in_quotes:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def all_match(matchers: Sequence[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)
