"""Silences: label matchers that mute notifications for the alerts they match, until they end."""

from __future__ import annotations

import functools
import uuid

from cortexd.alerts import store
from cortexd.alerts.matchers import Matcher, all_match, parse_matchers
from cortexd.alerts.model import Alert, Clock, Silence
from cortexd.protocol import NotFound
from cortexd.store import Database


@functools.lru_cache(maxsize=1024)
def _parsed(matchers: tuple[str, ...]) -> list[Matcher]:
    return parse_matchers(matchers)


class Silences:
    """The silences of one alerts database, kept in memory and written through."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._all: dict[str, Silence] = {}

    def load(self, silences: list[Silence]) -> None:
        self._all = {s.id: s for s in silences}

    async def add(self, matchers: list[str], duration: float, comment: str, by: str) -> Silence:
        """Store a silence. Raises MatcherError (a ValueError) for bad matchers."""
        parsed = parse_matchers(matchers)
        now = self.clock()
        silence = Silence(
            id=str(uuid.uuid4()),
            matchers=tuple(str(m) for m in parsed),
            comment=comment,
            created_by=by,
            created_at=now,
            starts_at=now,
            ends_at=now + duration,
        )
        await self.db.run(lambda c: store.save_silence(c, silence))
        self._all[silence.id] = silence
        return silence

    def listed(self, *, include_expired: bool = False) -> list[Silence]:
        now = self.clock()
        return [s for s in self._all.values() if include_expired or s.active_at(now)]

    def active_count(self) -> int:
        now = self.clock()
        return sum(1 for s in self._all.values() if s.active_at(now))

    async def delete(self, silence_id: str) -> None:
        """Raises NotFound."""
        if silence_id not in self._all:
            raise NotFound(f"no silence {silence_id!r}", id=silence_id)
        await self.db.run(lambda c: store.delete_silence(c, silence_id))
        del self._all[silence_id]

    def forget_ended_before(self, when: float) -> None:
        """Drop silences that ended before `when` (their rows are pruned alike)."""
        self._all = {k: s for k, s in self._all.items() if s.ends_at >= when}

    def matches(self, alert: Alert) -> bool:
        """Whether an active silence matches `alert`."""
        now = self.clock()
        labels = alert.match_labels()
        return any(
            s.active_at(now) and all_match(_parsed(s.matchers), labels) for s in self._all.values()
        )
