"""Ranking an entry's causes by the facts gathered for the alert.

A cause's score is the sum of the weights of its conditions that some fact
satisfies; the facts that did are its evidence. Causes with evidence come
first, by score; ties and causes without evidence keep the runbook's order,
which lists the commonest first. Pure and deterministic: the same facts give
the same ranking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cortexd.explain.facts import Fact
from cortexd.knowledge import Cause, Condition, Entry


@dataclass(frozen=True, slots=True)
class Ranked:
    cause: Cause
    score: float
    evidence: tuple[Fact, ...]

    @property
    def pointed_to(self) -> bool:
        return self.score > 0


def _value(fact: Fact, name: str) -> object:
    if name == "text":
        return fact.text
    if name == "subject":
        return fact.subject
    return fact.fields.get(name)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def passes(condition: Condition, fact: Fact) -> bool:
    """Whether `fact` satisfies every part of `condition` (its kind is checked by the caller)."""
    for name, low in condition.at_least.items():
        number = _number(fact.fields.get(name))
        if number is None or number < low:
            return False
    for name, high in condition.at_most.items():
        number = _number(fact.fields.get(name))
        if number is None or number > high:
            return False
    for name, wanted in condition.equals.items():
        value = fact.fields.get(name)
        # True is not 1 here: a flag and a count are different facts.
        if isinstance(value, bool) != isinstance(wanted, bool) or value != wanted:
            return False
    for name, pattern in condition.matches.items():
        found = _value(fact, name)
        if found is None or not pattern.search(str(found)):
            return False
    return True


def holding(condition: Condition, facts: Sequence[Fact]) -> Fact | None:
    """The first fact of the condition's kind that satisfies it (only the first one if `top`)."""
    of_kind = [f for f in facts if f.kind == condition.fact]
    for fact in of_kind[:1] if condition.top else of_kind:
        if passes(condition, fact):
            return fact
    return None


def rank(entry: Entry, facts: Sequence[Fact]) -> list[Ranked]:
    """The entry's causes, those the facts point to first."""
    scored: list[tuple[float, int, Ranked]] = []
    for index, cause in enumerate(entry.causes):
        score = 0.0
        evidence: list[Fact] = []
        for condition in cause.when:
            fact = holding(condition, facts)
            if fact is not None:
                score += condition.weight
                if fact not in evidence:
                    evidence.append(fact)
        scored.append((score, index, Ranked(cause, score, tuple(evidence))))
    scored.sort(key=lambda item: (-item[0], item[1]))
    return [ranked for _, _, ranked in scored]
