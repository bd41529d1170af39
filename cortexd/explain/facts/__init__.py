"""Facts about the host gathered for one alert: bounded in time and size, each with its source."""

from __future__ import annotations

from collections.abc import Mapping

from cortexd.explain.facts import disk, files, packages, procs, system
from cortexd.explain.facts.model import (
    CheckView,
    Context,
    Fact,
    Found,
    Gatherer,
    Host,
    KernelClock,
)
from cortexd.knowledge import Schema

GATHERERS: Mapping[str, Gatherer] = {
    g.name: g
    for g in (
        *system.GATHERERS,
        *disk.GATHERERS,
        *procs.GATHERERS,
        *packages.GATHERERS,
        *files.GATHERERS,
    )
}


def schema() -> Schema:
    """What runbook entries may refer to: the gatherers and the fact kinds each produces."""
    return Schema({name: g.kinds for name, g in GATHERERS.items()})


def fact_kinds() -> dict[str, frozenset[str]]:
    """Every fact kind a gatherer produces, with the fields its facts carry."""
    kinds: dict[str, frozenset[str]] = {}
    for gatherer in GATHERERS.values():
        kinds.update(gatherer.kinds)
    return kinds


__all__ = [
    "GATHERERS",
    "CheckView",
    "Context",
    "Fact",
    "Found",
    "Gatherer",
    "Host",
    "KernelClock",
    "fact_kinds",
    "schema",
]
