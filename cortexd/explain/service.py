"""The explain feature: an alert (or a question) in, the deterministic answer out.

It sees the rest of the daemon only through the narrow sources its
constructor takes: an alert finder, the monitor's results, the fix registry
and, for plugin runbooks, the plugin manager. Facts are gathered on worker
threads within `explain.facts_timeout_seconds`; at most MAX_IN_PROGRESS
explanations gather at once, and one more is refused with BUSY rather than
queued behind them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.to_thread

from cortexd.alerts.model import Alert
from cortexd.config.schema import ExplainConfig
from cortexd.explain.answer import FixInfo, Topic, alert_view, fill, render_alert, render_host
from cortexd.explain.facts import GATHERERS, CheckView, Host, schema
from cortexd.explain.gather import gather
from cortexd.explain.rank import rank
from cortexd.knowledge import (
    Entry,
    KnowledgeBase,
    KnowledgeError,
    check_fixes,
    load_file,
)
from cortexd.monitor.check import RANK, CheckResult, Status
from cortexd.plugins.manager import Plugin
from cortexd.plugins.manager import check_id as plugin_check_id
from cortexd.plugins.manifest import PluginError, check_trust
from cortexd.protocol import CortexError, ErrorCode

if TYPE_CHECKING:
    from cortexd.repair.model import Fix

log = logging.getLogger(__name__)

MAX_IN_PROGRESS = 4
MAX_THREADS = 6
MAX_TOPICS = 2
PLUGIN_RUNBOOK = "runbook.yaml"
_WORD = re.compile(r"[a-z0-9]+")


class ExplainBusy(CortexError):
    """Too many explanations are gathering facts at once."""

    code = ErrorCode.BUSY

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} explanations are being gathered already; try again", limit=limit)


class RunbookBroken(CortexError):
    """The runbook shipped with the daemon does not validate."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"the runbook does not load: {'; '.join(problems[:3])}", problems=problems)


class AlertFinder(Protocol):
    async def find(self, given: str, param: str = "id") -> Alert: ...

    def is_silenced(self, alert: Alert) -> bool: ...


class HealthSource(Protocol):
    @property
    def results(self) -> Mapping[str, CheckResult]: ...


class FixRegistry(Protocol):
    @property
    def fixes(self) -> Mapping[str, Fix]: ...


class PluginSource(Protocol):
    @property
    def plugins(self) -> Mapping[str, Plugin]: ...


class Explainer:
    """Builds deterministic explanations from the runbook and gathered facts."""

    def __init__(
        self,
        config: ExplainConfig,
        knowledge: Callable[[], KnowledgeBase],
        host: Host,
        *,
        alerts: AlertFinder,
        health: HealthSource,
        fixes: FixRegistry,
        plugins: PluginSource | None = None,
        euid: int | None = None,
    ) -> None:
        self.config = config
        self._knowledge = knowledge
        self._kb: KnowledgeBase | None = None
        self._kb_lock = anyio.Lock()
        self.host = host
        self.alerts = alerts
        self.health = health
        self.fix_registry = fixes
        self.plugins = plugins
        self.euid = os.geteuid() if euid is None else euid
        self.limiter = anyio.CapacityLimiter(MAX_THREADS)
        self.in_progress = 0
        self.counts = {"explained": 0, "asked": 0, "rejected_busy": 0}
        self._plugin_runbooks: dict[str, tuple[tuple[int, int], list[Entry] | str]] = {}

    async def knowledge(self) -> KnowledgeBase:
        """The runbook, read and validated on first use (off the loop, and not at start-up).

        Raises:
            RunbookBroken: the shipped runbook does not validate (a packaging bug).
        """
        async with self._kb_lock:
            if self._kb is None:
                try:
                    kb = await anyio.to_thread.run_sync(self._knowledge)
                except KnowledgeError as exc:
                    log.error("the runbook does not load: %s", exc)
                    raise RunbookBroken(exc.problems) from None
                # A source no entry names (a NUL never is one) must still find one.
                if kb.find("\0any other program", {}) is None:
                    raise RunbookBroken(["no catch-all entry (match: {source: '*'})"])
                for problem in check_fixes(kb, lambda fix_id: fix_id in self.fix_registry.fixes):
                    log.error("runbook: %s", problem)
                self._kb = kb
            return self._kb

    def state(self) -> dict[str, Any]:
        return {
            "state": "running",
            "runbook_entries": len(self._kb) if self._kb is not None else None,
            "in_progress": self.in_progress,
            **self.counts,
        }

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        if self.in_progress >= MAX_IN_PROGRESS:
            self.counts["rejected_busy"] += 1
            raise ExplainBusy(MAX_IN_PROGRESS)
        self.in_progress += 1
        try:
            yield
        finally:
            self.in_progress -= 1

    # -- one alert --------------------------------------------------------------

    async def explain(
        self, given_id: str, *, journal: bool = True
    ) -> tuple[dict[str, Any], Topic, Alert]:
        """The deterministic explanation of one alert (id or unique prefix).

        `journal`: whether the caller may see journal lines among the facts.

        Raises:
            InvalidParams: an ambiguous prefix. NotFound: no such alert.
            ExplainBusy: too many explanations in progress.
        On cancellation the gatherers' threads are abandoned; they stop at their deadline.
        """
        alert = await self.alerts.find(given_id, "alert_id")
        kb = await self.knowledge()
        with self._slot():
            labels = dict(alert.labels)
            entry, notes = await self._entry_for(kb, alert.source, labels)
            check_id = labels.get("check") or alert.source
            topic = await self._topic(
                entry,
                labels,
                self._check_view(check_id),
                {"id": alert.id, "check": check_id},
                journal,
            )
            shown = alert.to_dict(silenced=self.alerts.is_silenced(alert))
            result: dict[str, Any] = {
                "alert": alert_view(shown),
                **topic.to_dict(),
                "text": render_alert(shown, topic),
            }
            result["notes"] = [*notes, *result["notes"]]
            del result["facts_ms"]  # in `timings`, with the deterministic part's own time
            result["timings"] = {
                "facts_ms": round(topic.gathered.seconds * 1000, 1),
                "answer_ms": round((time.monotonic() - topic.gathered.finished) * 1000, 2),
            }
        self.counts["explained"] += 1
        return result, topic, alert

    async def _entry_for(
        self, kb: KnowledgeBase, source: str, labels: Mapping[str, str]
    ) -> tuple[Entry, list[str]]:
        notes: list[str] = []
        plugin = self._plugin_with_check(source)
        if plugin is not None:
            found = await anyio.to_thread.run_sync(
                self._plugin_runbook, plugin.name, plugin.directory, source
            )
            if isinstance(found, str):
                notes.append(found)
            else:
                entry = KnowledgeBase(found).find(source, labels)
                if entry is not None:
                    return entry, notes
        entry = kb.find(source, labels)
        assert entry is not None  # the catch-all entry, checked at load
        return entry, notes

    def _plugin_with_check(self, check_id: str) -> Plugin | None:
        """The loaded check plugin whose check is `check_id` (looked up on the loop)."""
        if self.plugins is None or not check_id.startswith("plugin_"):
            return None
        return next(
            (
                p
                for p in self.plugins.plugins.values()
                if p.status == "loaded" and p.check and plugin_check_id(p.name) == check_id
            ),
            None,
        )

    def _plugin_runbook(self, name: str, directory: str, check_id: str) -> list[Entry] | str:
        """The entries of a check plugin's runbook.yaml, or why there are none. Blocking."""
        path = os.path.join(directory, PLUGIN_RUNBOOK)
        try:
            st = os.stat(path)
        except OSError:
            return f"plugin {name} ships no {PLUGIN_RUNBOOK}"
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._plugin_runbooks.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        outcome: list[Entry] | str
        try:
            check_trust(directory, self.euid)
            entries = load_file(path, schema())
            foreign = [e.id for e in entries if e.source != check_id]
            if foreign:
                raise KnowledgeError(
                    [f"{path}: entries {foreign} must match only source {check_id}"]
                )
            unknown = check_fixes(KnowledgeBase(entries), lambda f: f in self.fix_registry.fixes)
            if unknown:
                raise KnowledgeError(unknown)
            outcome = entries
        except (KnowledgeError, PluginError) as exc:
            log.warning("plugin %s: %s not used: %s", name, PLUGIN_RUNBOOK, exc)
            outcome = f"plugin {name}'s {PLUGIN_RUNBOOK} is not used: {exc}"
        self._plugin_runbooks[path] = (stamp, outcome)
        return outcome

    def fix_target(self, fix_id: str, labels: Mapping[str, str]) -> str | None:
        """The subject a targeted fix would act on for an alert with `labels` (None: all)."""
        fix = self.fix_registry.fixes.get(fix_id)
        if fix is None or not fix.targeted or fix.target_label is None:
            return None
        return labels.get(fix.target_label) or None

    def _check_view(self, check_id: str) -> CheckView | None:
        result = self.health.results.get(check_id)
        if result is None:
            return None
        return CheckView(
            result.check_id, result.status.value, result.message, result.details, result.finished_at
        )

    async def _topic(
        self,
        entry: Entry,
        labels: Mapping[str, str],
        check: CheckView | None,
        values: Mapping[str, str],
        journal: bool,
    ) -> Topic:
        gathered = await gather(
            entry.facts,
            labels,
            check,
            self.host,
            self.config.facts_timeout_seconds,
            self.limiter,
            journal=journal,
        )
        ranked = rank(entry, gathered.facts)
        filled = {**labels, **values}
        fixes = []
        for ref in entry.fixes:
            fix = self.fix_registry.fixes.get(ref.id)
            if fix is not None:
                fixes.append(
                    FixInfo(ref.id, fix.safety, fix.description, fill(ref.command, filled))
                )
        topic = Topic(
            entry=entry,
            labels=dict(labels),
            ranked=tuple(ranked),
            gathered=gathered,
            fixes=tuple(fixes),
            commands=tuple(fill(c, filled) for c in entry.commands),
        )
        return topic

    # -- a question about the host ------------------------------------------------

    def not_passing(self) -> list[dict[str, Any]]:
        """The checks whose last result is not PASS or SKIP, worst first."""
        bad = [
            r
            for r in self.health.results.values()
            if r.status in (Status.WARN, Status.FAIL, Status.ERROR)
        ]
        bad.sort(key=lambda r: (-RANK[r.status], r.check_id))
        return [
            {"check_id": r.check_id, "status": r.status.value, "message": r.message} for r in bad
        ]

    def _topics_for(
        self, kb: KnowledgeBase, question: str, not_passing: list[dict[str, Any]]
    ) -> list[Entry]:
        words = _WORD.findall(question.lower())
        matches = kb.search(words)
        if matches:
            best = matches[0][0]
            return [entry for score, entry in matches if score == best][:MAX_TOPICS]
        chosen: list[Entry] = []
        for check in not_passing:
            entry = kb.find(check["check_id"], {"check": check["check_id"]})
            if entry is not None and not entry.is_pattern and entry not in chosen:
                chosen.append(entry)
        return chosen[:MAX_TOPICS]

    def _subject(self, entry: Entry) -> dict[str, str]:
        """Labels for an entry asked about without an alert: the worst subject of its check."""
        labels = {"check": entry.source}
        result = self.health.results.get(entry.source)
        items = result.details.get("items") if result is not None else None
        if not isinstance(items, list):
            return labels
        needs = {GATHERERS[name].needs for name in entry.facts} - {None}
        ranked = sorted(
            (i for i in items if isinstance(i, dict)),
            key=lambda i: (
                -RANK.get(Status(i.get("status", "PASS")), 0),
                -(i.get("used_percent") or 0),
            ),
        )
        for item in ranked:
            own = item.get("labels") or {}
            if all(own.get(n) for n in needs if n is not None):
                return {**labels, **own}
        return labels

    async def ask(
        self, question: str, *, journal: bool = True
    ) -> tuple[dict[str, Any], list[Topic], list[str]]:
        """The deterministic answer to a free question, from the runbook and the host's state.

        Raises ExplainBusy. On cancellation the gatherers' threads are abandoned.
        """
        kb = await self.knowledge()
        with self._slot():
            not_passing = self.not_passing()
            topics = []
            for entry in self._topics_for(kb, question, not_passing):
                labels = self._subject(entry)
                view = self._check_view(entry.source)
                topics.append(
                    await self._topic(entry, labels, view, {"check": entry.source}, journal)
                )
            result: dict[str, Any] = {
                "question": question,
                "not_passing": not_passing,
                "topics": [t.to_dict() for t in topics],
                "text": render_host(question, not_passing, topics),
            }
            last = max((t.gathered.finished for t in topics), default=None)
            result["timings"] = {
                "facts_ms": round(sum(t.gathered.seconds for t in topics) * 1000, 1),
                "answer_ms": round((time.monotonic() - last) * 1000, 2) if last else 0.0,
            }
        self.counts["asked"] += 1
        summary = [f"{c['check_id']} {c['status']}: {c['message']}" for c in not_passing]
        return result, topics, summary
