"""Which databases the daemon holds, and how each owner lets go of one and takes it back.

Backups copy through these databases' own connections, and a restore swaps
their files: the owner releases its database first and resumes after. The
composition root declares each owner once; nothing searches components for
a database at run time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from cortexd.store.copy import copier, copy_database
from cortexd.store.db import Database

Step = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class StoreOwner:
    """One database and the owner's steps around a swap of its file.

    `release` by default closes the database, `resume` opens it again; an
    owner that keeps state loaded from it (the alert manager) passes its own.
    """

    db: Database
    release: Step
    resume: Step


class Stores:
    """The databases the daemon's features own, in the order they were declared."""

    def __init__(self) -> None:
        self._owners: list[StoreOwner] = []

    def add(self, db: Database, *, release: Step | None = None, resume: Step | None = None) -> None:
        """Declare `db`, with the steps around a swap of its file (close/open by default)."""
        self._owners.append(StoreOwner(db, release or db.close, resume or db.open))

    def __iter__(self) -> Iterator[StoreOwner]:
        return iter(list(self._owners))

    def databases(self) -> list[Database]:
        """Every declared database."""
        return [owner.db for owner in self._owners]

    def copier(self) -> Callable[[str, str], None]:
        """How a worker thread copies a database file: through its owner's connection
        when it is one of these, else with a connection of its own."""
        return copier(self.databases(), copy_database)
