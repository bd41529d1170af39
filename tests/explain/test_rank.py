"""Ranking causes by facts, and filling runbook commands: pure logic, no host."""

from __future__ import annotations

from typing import Any

import yaml

from cortexd.explain.answer import fill
from cortexd.explain.facts import Fact, schema
from cortexd.explain.rank import rank
from cortexd.knowledge import Entry, parse

RUNBOOK = {
    "entries": [
        {
            "id": "memory",
            "match": {"source": "memory"},
            "title": "Memory",
            "meaning": "Memory is short.",
            "facts": ["memory_usage", "top_rss", "zombie_parents"],
            "causes": [
                {"id": "unsignalled", "text": "Nothing points here"},
                {
                    "id": "one_process",
                    "text": "One process",
                    "when": [{"fact": "proc.rss", "top": True, "at_least": {"share": 0.5}}],
                },
                {
                    "id": "shared",
                    "text": "Shared memory",
                    "when": [
                        {"fact": "memory.usage", "at_least": {"shmem_share": 0.3}, "weight": 2},
                        {"fact": "proc.rss", "at_most": {"share": 0.1}},
                    ],
                },
                {
                    "id": "init",
                    "text": "PID 1's zombies",
                    "when": [{"fact": "proc.zombie_parent", "equals": {"init": True}}],
                },
            ],
            "commands": ["free -h"],
        }
    ]
}


def entry() -> Entry:
    (found,) = parse(yaml.safe_dump(RUNBOOK), "t.yaml", schema())
    return found


def fact(kind: str, subject: str, **fields: Any) -> Fact:
    return Fact(kind, subject, f"{subject} text", "test", fields)


def test_causes_rank_by_the_weight_of_the_facts_that_point_to_them() -> None:
    facts = [
        fact("memory.usage", "memory", shmem_share=0.4),
        fact("proc.rss", "pid 9 (hog)", share=0.6),
        fact("proc.rss", "pid 3 (tiny)", share=0.05),
    ]
    ranked = rank(entry(), facts)
    assert [(r.cause.id, r.score) for r in ranked] == [
        ("shared", 3.0),
        ("one_process", 1.0),
        ("unsignalled", 0.0),
        ("init", 0.0),
    ]
    assert [f.subject for f in ranked[0].evidence] == ["memory", "pid 3 (tiny)"]
    assert [f.subject for f in ranked[1].evidence] == ["pid 9 (hog)"]
    assert not ranked[2].pointed_to and ranked[2].evidence == ()


def test_top_looks_only_at_the_first_fact_of_its_kind() -> None:
    facts = [fact("proc.rss", "pid 3 (small)", share=0.2), fact("proc.rss", "pid 9", share=0.7)]
    ranked = {r.cause.id: r for r in rank(entry(), facts)}
    assert not ranked["one_process"].pointed_to


def test_a_flag_is_not_a_number_and_a_missing_field_never_matches() -> None:
    ranked = {r.cause.id: r for r in rank(entry(), [fact("proc.zombie_parent", "p", init=1)])}
    assert not ranked["init"].pointed_to
    ranked = {r.cause.id: r for r in rank(entry(), [fact("proc.zombie_parent", "p", init=True)])}
    assert ranked["init"].pointed_to
    ranked = {r.cause.id: r for r in rank(entry(), [fact("proc.rss", "p")])}
    assert not ranked["one_process"].pointed_to and not ranked["shared"].pointed_to


def test_ties_keep_the_runbook_order() -> None:
    facts = [fact("proc.rss", "a", share=0.6), fact("proc.zombie_parent", "b", init=True)]
    assert [r.cause.id for r in rank(entry(), facts)][:2] == ["one_process", "init"]


def test_commands_are_filled_shell_quoted() -> None:
    assert fill("df -h {mountpoint}", {"mountpoint": "/srv"}) == "df -h /srv"
    assert (
        fill("df -h {mountpoint}", {"mountpoint": "/mnt/a b; rm -rf /"})
        == "df -h '/mnt/a b; rm -rf /'"
    )
    assert fill("journalctl -u {unit}", {}) == "journalctl -u <unit>"
    assert fill("awk '{{print $1}}' {unit}", {"unit": "x"}) == "awk '{print $1}' x"
