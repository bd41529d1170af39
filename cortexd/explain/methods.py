"""Socket methods of the explain feature (`inference.explain`, `inference.ask`) and `install`.

Both answer in two parts. The deterministic part (runbook + facts) is built
first; with `stream: true` it is the first stream notification
(`{"explanation": …}`), before the model is even asked. The model's short
summary follows through the inference engine's queue like any chat request
(its `request_id` and text arrive as the usual stream notifications) and
lands in the result's `summary`. Without a model, or with `model: false`,
`summary` is null and `summary_skipped` says why: the deterministic part is
the whole answer, and not an error. With `suggest: true` the model then
chooses among the fixes that apply, under a grammar (cortexd/explain/suggest.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from cortexd.alerts.ids import AlertLookup
from cortexd.alerts.manager import AlertManager
from cortexd.config.schema import Config
from cortexd.host.clock import kernel_clock_state
from cortexd.host.commands import CommandRunner
from cortexd.host.files import cortex_roots
from cortexd.imports import imported
from cortexd.inference.job import GenerationParams
from cortexd.inference.methods import METHOD_TIMEOUT
from cortexd.server import Call, Method, Param
from cortexd.server.registry import between

if TYPE_CHECKING:
    from cortexd.explain.facts import Host
    from cortexd.explain.service import Explainer, FixRegistry, HealthSource, PluginSource
    from cortexd.inference.engine import Engine
    from cortexd.knowledge import KnowledgeBase
    from cortexd.runtime import Runtime

MAX_TOKENS = 4096
MAX_QUESTION = 2000
MAX_ID = 128
SEED_LIMIT = 2**32
# A summary retells facts: little randomness keeps it from wandering.
TEMPERATURE = 0.2
TOP_P = 0.9


def _length(limit: int) -> Any:
    def check(value: str) -> str | None:
        return None if value.strip() and len(value) <= limit else f"must be 1 to {limit} characters"

    return check


def _temperature(value: float) -> str | None:
    return None if 0.0 <= value <= 2.0 else "must be between 0 and 2"


def _top_p(value: float) -> str | None:
    return None if 0.0 < value <= 1.0 else "must be greater than 0 and at most 1"


def _seed(value: int) -> str | None:
    return None if 0 <= value < SEED_LIMIT else f"must be between 0 and {SEED_LIMIT - 1}"


ANSWER_PARAMS = (
    Param("model", bool, default=True),
    Param("max_tokens", int, check=between(1, MAX_TOKENS)),
    Param("temperature", float, default=TEMPERATURE, check=_temperature),
    Param("top_p", float, default=TOP_P, check=_top_p),
    Param("seed", int, check=_seed),
    Param("stream", bool, default=False),
    Param("priority", str, default="interactive", choices=("interactive", "background")),
)


async def _unused(call: Call) -> None:
    raise AssertionError("never called: only its access level is asked about")


# What an explanation needs beyond this module: imported on the first one, in
# a worker thread, rather than at start-up. Most hosts go days without an
# explanation, and these modules (the runbook's loader, the fact gatherers,
# the prompts) are 0.6 MB of the idle daemon's memory.
EXPLAIN_MODULES = (
    "cortexd.explain.service",
    "cortexd.explain.prompt",
    "cortexd.explain.suggest",
    "cortexd.explain.summary",
    "cortexd.explain.facts",
    "cortexd.knowledge",
)
# What `status` shows of the feature before its first explanation: the
# counters of an Explainer that has done nothing yet (tests/explain compare).
NOT_BUILT_STATE: dict[str, Any] = {
    "state": "running",
    "runbook_entries": None,
    "in_progress": 0,
    "explained": 0,
    "asked": 0,
    "rejected_busy": 0,
}


class LazyExplainer:
    """The Explainer, built when the first explanation is asked for.

    `build` makes it (on the loop, once EXPLAIN_MODULES are imported in a
    worker thread); until then the feature costs only its socket methods.
    """

    def __init__(self, build: Callable[[], Explainer]) -> None:
        self._build = build
        self._lock = anyio.Lock()
        self.built: Explainer | None = None

    async def get(self) -> Explainer:
        """The Explainer, imported and built on the first call."""
        if self.built is None:
            async with self._lock:
                if self.built is None:
                    await imported(*EXPLAIN_MODULES)
                    self.built = self._build()
        return self.built

    def state(self) -> dict[str, Any]:
        return self.built.state() if self.built is not None else dict(NOT_BUILT_STATE)


# Journal lines among an explanation's facts follow the rule of the journal
# methods (docs/protocol.md, "Authorization"); the server's authorizer
# answers for a method of that access level.
JOURNAL_LINES = Method("inference.explain (journal lines)", _unused, access="journal")


def build_host(config: Config, runner: CommandRunner) -> Host:
    """Where the gatherers look, from the settings the checks use too."""
    from cortexd.explain.facts import Host

    return Host(
        runner=runner,
        kernel_clock=kernel_clock_state,
        apt_root=config.repair.root,
        cortex_roots=tuple(cortex_roots(config)),
        owner=os.geteuid(),
    )


class ExplainComponent:
    """The explain feature as a daemon component: status, reload, stop."""

    name = "explain"

    def __init__(self, explainer: LazyExplainer, runner: CommandRunner) -> None:
        self.explainer = explainer
        self.runner = runner

    def state(self) -> dict[str, Any]:
        return self.explainer.state()

    async def start(self, tg: TaskGroup) -> None:
        return None

    def apply_config(self, config: Config) -> None:
        # Not built yet: it reads the running config when it is.
        built = self.explainer.built
        if built is not None:
            built.config = config.explain
            built.host = build_host(config, self.runner)

    async def stop(self) -> None:
        self.runner.kill_all()


def explain_methods(
    explainers: LazyExplainer,
    engine: Engine | None,
    may_read_journal: Callable[[Call], bool] = lambda call: call.is_admin,
) -> list[Method]:
    """`inference.explain` and `inference.ask`, bound to `explainer` and `engine`.

    `may_read_journal` says whether a caller may see journal lines among the facts.
    """

    def generation(call: Call, explainer: Explainer) -> GenerationParams:
        from cortexd.explain.summary import SUMMARY_STOP

        p = call.params
        return GenerationParams(
            max_tokens=p["max_tokens"] or explainer.config.max_tokens,
            temperature=p["temperature"],
            top_p=p["top_p"],
            seed=p["seed"],
            stop=SUMMARY_STOP,
        )

    async def explain(call: Call) -> dict[str, Any]:
        explainer = await explainers.get()
        from cortexd.explain.prompt import explain_messages
        from cortexd.explain.suggest import suggest
        from cortexd.explain.summary import summarise

        journal = may_read_journal(call)
        result, topic, alert = await explainer.explain(call.params["alert_id"], journal=journal)
        if call.params["stream"]:
            await call.stream({"explanation": result})
        messages = explain_messages(alert.title, topic)
        result.update(await summarise(engine, call, messages, generation(call, explainer)))
        if call.params["suggest"]:
            labels = topic.labels
            chosen = await suggest(
                engine, call, alert.title, topic, lambda f: explainer.fix_target(f, labels)
            )
            result.update(chosen)
            if call.params["stream"]:
                await call.stream(chosen)
        return result

    async def ask(call: Call) -> dict[str, Any]:
        explainer = await explainers.get()
        from cortexd.explain.prompt import ask_messages
        from cortexd.explain.summary import summarise

        question = call.params["question"].strip()
        result, topics, not_passing = await explainer.ask(question, journal=may_read_journal(call))
        if call.params["stream"]:
            await call.stream({"explanation": result})
        messages = ask_messages(question, not_passing, topics)
        result.update(await summarise(engine, call, messages, generation(call, explainer)))
        return result

    return [
        Method(
            "inference.explain",
            explain,
            params=(
                Param("alert_id", str, required=True, check=_length(MAX_ID)),
                *ANSWER_PARAMS,
                Param("suggest", bool, default=False),
            ),
            param_aliases={"id": "alert_id"},
            timeout=METHOD_TIMEOUT,
            summary="explain an alert: runbook causes ranked by host facts, then a model summary",
        ),
        Method(
            "inference.ask",
            ask,
            params=(
                Param("question", str, required=True, check=_length(MAX_QUESTION)),
                *ANSWER_PARAMS,
            ),
            timeout=METHOD_TIMEOUT,
            summary="answer a question about this host from its facts and the runbook",
        ),
    ]


def install(
    daemon: Runtime,
    *,
    alerts: AlertManager,
    health: HealthSource,
    engine: Engine | None,
    fixes: FixRegistry,
    plugins: PluginSource | None = None,
) -> LazyExplainer:
    """Build the explain feature from what other features give it; add it and its methods.

    The Explainer itself is made on the first explanation (LazyExplainer).
    """
    runner = CommandRunner()

    def build() -> Explainer:
        from cortexd.explain.service import Explainer

        return Explainer(
            daemon.config.explain,
            _builtin,
            build_host(daemon.config, runner),
            alerts=AlertLookup(alerts),
            health=health,
            fixes=fixes,
            plugins=plugins,
        )

    explainer = LazyExplainer(build)
    daemon.components.append(ExplainComponent(explainer, runner))
    authorizer = daemon.authorizer
    daemon.registry.add(
        explain_methods(explainer, engine, lambda call: authorizer.check(JOURNAL_LINES, call.peer))
    )
    return explainer


def _builtin() -> KnowledgeBase:
    from cortexd.explain.facts import schema
    from cortexd.knowledge import load_builtin

    return load_builtin(schema())
