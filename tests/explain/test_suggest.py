"""Fix suggestions constrained by a grammar: its text, the checks on what comes back, and the
real engine and runner with the real model generating under it.

The model's answers are asserted only through their structure (JSON, every
fix id among those allowed, each at most once, a one-line reason), never
their wording.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from cortexd.config.schema import InferenceConfig
from cortexd.explain.suggest import (
    MAX_ALLOWED,
    MAX_REASON,
    MAX_SUGGESTED,
    REASON,
    fix_grammar,
    max_tokens_for,
    parse_suggestion,
)
from cortexd.inference.engine import Engine
from cortexd.inference.job import GenerationParams, Job
from cortexd.protocol import InvalidParams
from tests.daemon import DaemonProcess, running_daemon
from tests.explain.scenarios import ALL_CHECKS
from tests.inference.conftest import wait_state

DEADLINE = 120.0
IDS = (
    "clear_apt_locks", "dpkg_configure", "apt_fix_broken", "apt_rebuild_lists",
    "vacuum_journal", "remove_world_write", "reset_cortex_permissions", "restart_unit",
)  # fmt: skip
MESSAGES = [
    {"role": "system", "content": "You choose fixes for a Linux server problem."},
    {
        "role": "user",
        "content": "Problem: an interrupted dpkg run left packages half configured.\n"
        "Known fixes:\n"
        + "\n".join(f"- {f}: a registered fix" for f in IDS)
        + "\nChoose the fixes that address the cause.",
    },
]


def test_the_grammar_names_only_the_allowed_fixes() -> None:
    one = fix_grammar(["clear_apt_locks"])
    assert one.splitlines()[0] == 'root ::= "[" (item-0) "]"'
    assert '"{\\"fix_id\\": \\"clear_apt_locks\\", \\"reason\\": \\"" reason "\\"}"' in one
    three = fix_grammar(IDS[:3])
    for fix_id in IDS[:3]:
        assert three.count(f'\\"{fix_id}\\"') == 1
    assert "vacuum_journal" not in three
    # No rule after the third choice: a list holds at most MAX_SUGGESTED fixes.
    assert not [line for line in three.splitlines() if line.startswith("more-0-1-2 ")]
    # The reason's alphabet has nothing a shell command needs.
    reason = three.splitlines()[-1]
    for char in '/$|;>`"\\&*~':
        assert char not in reason.split("::=", 1)[1].replace('"."?', ""), char


@pytest.mark.parametrize(
    ("ids", "problem"),
    [
        ([], "at least one fix id"),
        (["Clear"], "fix ids not of the form"),
        (['a" | "b'], "fix ids not of the form"),
        (["a", "a"], "fix ids repeat"),
        ([f"fix_{n}" for n in range(MAX_ALLOWED + 1)], f"at most {MAX_ALLOWED} fix ids"),
    ],
)
def test_a_grammar_is_refused_for_ids_it_cannot_hold(ids: list[str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        fix_grammar(ids)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("rm -rf /", "not JSON"),
        ("[]", "not a non-empty JSON list"),
        ('{"fix_id": "a", "reason": "R"}', "not a non-empty JSON list"),
        ('[{"fix_id": "a"}]', "item 0 is not an object with fix_id and reason"),
        ('[{"fix_id": "a", "reason": "R", "command": "x"}]', "item 0 is not an object"),
        ('[{"fix_id": "b", "reason": "R"}]', "item 0: fix_id 'b' is not one of"),
        ('[{"fix_id": "a", "reason": "Run rm -rf /tmp"}]', "item 0: reason is not one line"),
        ('[{"fix_id": "a", "reason": "Two\\nlines"}]', "item 0: reason is not one line"),
        ('[{"fix_id": "a", "reason": "' + "A" * (MAX_REASON + 1) + '"}]', "reason is not"),
    ],
)
def test_an_answer_outside_the_grammar_is_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_suggestion(text, ["a"])


def test_a_fix_named_twice_is_kept_once() -> None:
    text = '[{"fix_id": "a", "reason": "First."}, {"fix_id": "a", "reason": "Again."}]'
    assert parse_suggestion(text, ["a"]) == [{"fix_id": "a", "reason": "First."}]


# -- the real runner and model ------------------------------------------------------------


@contextlib.asynccontextmanager
async def engine_with(model_path: str) -> AsyncIterator[Engine]:
    """The engine with its real runner and the model loaded, stopped afterwards."""
    config = InferenceConfig(model_path=model_path, n_threads=1)
    engine = Engine(config, model_dirs=[os.path.dirname(model_path)])
    up, down = anyio.Event(), anyio.Event()

    async def own() -> None:
        async with anyio.create_task_group() as tg:
            await engine.start(tg)
            up.set()
            await down.wait()
            with anyio.fail_after(DEADLINE):
                await engine.stop()
            tg.cancel_scope.cancel()

    owner = asyncio.get_running_loop().create_task(own())
    await up.wait()
    try:
        with anyio.fail_after(DEADLINE):
            # Polled: the runner is another process, with no event to wait on.
            while True:
                if engine.state == "ready":
                    break
                await anyio.sleep(0.02)
        yield engine
    finally:
        down.set()
        await owner


async def run(engine: Engine, rid: str, params: GenerationParams) -> dict[str, Any]:
    job = Job(request_id=rid, priority="interactive", method="test", uid=0, params=params)
    job.messages = MESSAGES
    engine.submit(job)
    try:
        with anyio.fail_after(DEADLINE):
            while not job.finished:
                await job.wait()
                job.take_pieces()
        return job.outcome()
    finally:
        engine.forget(job)


@pytest.mark.slow
async def test_a_bad_grammar_is_a_precise_error_and_the_runner_lives_on(
    model_path: str,
) -> None:
    async with engine_with(model_path) as engine:
        pid = engine.summary()["runner_pid"]
        for n, bad in enumerate(['root ::= "[" (', "root ::= undefined-rule", "no rules at all"]):
            with pytest.raises(InvalidParams) as caught:
                await run(engine, f"bad{n}", GenerationParams(max_tokens=8, grammar=bad))
            assert caught.value.data == {"param": "grammar"}
            assert "is not a GBNF grammar llama.cpp can parse" in caught.value.message
        # Still the same runner, and it still generates under a good grammar.
        done = await run(
            engine,
            "good",
            GenerationParams(
                max_tokens=max_tokens_for(IDS[:1]), seed=1, grammar=fix_grammar(IDS[:1])
            ),
        )
        assert engine.summary()["runner_pid"] == pid
        assert engine.summary()["restarts"] == 0
        assert [i["fix_id"] for i in parse_suggestion(done["text"], IDS[:1])] == [IDS[0]]


@pytest.mark.slow
async def test_generation_under_the_grammar_is_always_a_valid_suggestion(
    model_path: str,
) -> None:
    async with engine_with(model_path) as engine:
        for size in (2, 3, MAX_ALLOWED):
            allowed = IDS[:size]
            for seed in (1, 2):
                params = GenerationParams(
                    max_tokens=max_tokens_for(allowed),
                    temperature=0.8,
                    seed=seed,
                    grammar=fix_grammar(allowed),
                )
                done = await run(engine, f"s{size}-{seed}", params)
                assert done["stop_reason"] == "stop", done
                items = json.loads(done["text"])
                assert 1 <= len(items) <= min(MAX_SUGGESTED, size)
                ids = [i["fix_id"] for i in items]
                assert set(ids) <= set(allowed) and len(set(ids)) == len(ids)
                assert all(REASON.match(i["reason"]) for i in items), items
                assert parse_suggestion(done["text"], allowed)


# -- through the daemon and cortexctl -----------------------------------------------------


def _cortexctl(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CORTEX_SOCKET"}
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "cortexctl", "--socket", d.socket_path, *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _world_writable_daemon(base: Path, model_path: str | None) -> Any:
    checks: dict[str, Any] = {name: {"enabled": False} for name in ALL_CHECKS}
    checks["cortex_world_writable"] = {"interval_seconds": 3600}
    config: dict[str, Any] = {
        "checks": checks,
        "logs": {"watch": False},
        "repair": {"config_dir": str(base / "etc"), "runtime_dir": str(base / "run")},
    }
    if model_path is not None:
        config["inference"] = {"model_path": model_path, "n_threads": 1}
    return running_daemon(config)


def _alert(d: DaemonProcess) -> tuple[Path, str]:
    spool = Path(d.state_dir) / "spool"
    spool.mkdir()
    os.chmod(spool, 0o777)
    d.call("checks.run", {"ids": ["cortex_world_writable"]}, timeout=DEADLINE)
    (alert,) = [
        a
        for a in d.call("alerts.list", {"state": "active"})["alerts"]
        if a["source"] == "cortex_world_writable"
    ]
    return spool, str(alert["id"])


def test_without_a_model_there_is_no_suggestion_and_no_error(tmp_path: Path) -> None:
    with _world_writable_daemon(tmp_path, None) as d:
        spool, alert_id = _alert(d)
        with pytest.raises(InvalidParams) as caught:
            d.call("inference.explain", {"alert_id": alert_id, "suggest": "yes"})
        assert caught.value.data["param"] == "suggest"
        result = d.call("inference.explain", {"alert_id": alert_id, "suggest": True})
        unasked = d.call("inference.explain", {"alert_id": alert_id, "model": False})
        off = d.call("inference.explain", {"alert_id": alert_id, "model": False, "suggest": True})
        fix = _cortexctl(d, "explain", "--fix", alert_id[:8])
        usage = [
            _cortexctl(d, "explain", "--yes", alert_id[:8]),
            _cortexctl(d, "explain", "--fix", "--no-model", alert_id[:8]),
        ]
        mode = stat.S_IMODE(spool.stat().st_mode)
    assert result["suggestion"] is None
    assert result["suggestion_skipped"].startswith("MODEL_NOT_LOADED: ")
    assert "suggestion" not in unasked and "suggestion_skipped" not in unasked
    assert off["suggestion_skipped"] == "not asked for (model: false)"
    assert fix.returncode == 0, fix.stderr
    assert "cortexctl: no fix suggested: MODEL_NOT_LOADED" in fix.stderr
    assert "Fixes the local model suggests" not in fix.stdout
    assert [u.returncode for u in usage] == [2, 2]
    assert "--yes needs --fix" in usage[0].stderr
    assert "cannot go with --no-model" in usage[1].stderr
    assert mode == 0o777


@pytest.mark.slow
def test_explain_fix_plans_the_suggested_fixes_and_applies_them_with_yes(
    tmp_path: Path, model_path: str
) -> None:
    with _world_writable_daemon(tmp_path, model_path) as d:
        wait_state(d, {"ready"})
        spool, alert_id = _alert(d)
        seen: list[Any] = []
        with d.client(DEADLINE) as client:
            result = client.call(
                "inference.explain",
                {"alert_id": alert_id[:8], "suggest": True, "stream": True, "seed": 3},
                on_stream=seen.append,
                timeout=DEADLINE,
            )
        dry = _cortexctl(d, "explain", "--fix", "--max-tokens", "24", alert_id[:8])
        mode_after_dry_run = stat.S_IMODE(spool.stat().st_mode)
        applied = _cortexctl(d, "--json", "explain", "--fix", "--yes", alert_id[:8])
        mode_after_apply = stat.S_IMODE(spool.stat().st_mode)
    # The suggestion comes last, once, checked: the text of its generation is not streamed.
    assert list(seen[0]) == ["explanation"]
    assert seen[-1] == {k: result[k] for k in ("suggestion", "suggestion_skipped")}
    assert all("suggestion" not in m for m in seen[:-1])
    summary_text = "".join(m.get("text", "") for m in seen[:-1])
    assert summary_text == result["summary"]["text"]
    suggestion = result["suggestion"]
    assert result["suggestion_skipped"] is None
    # The runbook's cause here offers one fix: the grammar allows it and nothing else.
    assert suggestion["allowed"] == ["remove_world_write"]
    assert suggestion["stop_reason"] == "stop"
    assert [f["fix_id"] for f in json.loads(suggestion["text"])] == ["remove_world_write"]
    (fix,) = suggestion["fixes"]
    assert fix["fix_id"] == "remove_world_write" and fix["safety"] == "safe"
    assert fix["command"] == "cortexctl repair permissions --cortex"
    assert fix["target"] is None
    assert REASON.match(fix["reason"])
    # cortexctl: the suggestion, then the fix's plan as a dry run; nothing changed.
    assert dry.returncode == 0, dry.stderr
    head, heading, tail = dry.stdout.partition(
        "Fixes the local model suggests (chosen only among the fixes above):\n"
    )
    assert heading, dry.stdout
    assert head.startswith("Cortex files can be changed by anyone on the host: ")
    assert "\nSummary (local model; the facts above are what counts):\n" in head
    assert tail.startswith("  remove_world_write (safe): ")
    assert f"  - chmod 0775 {spool}" in tail.splitlines(), tail
    assert "dry run: nothing changed (pass --yes to apply)" in tail
    assert mode_after_dry_run == 0o777
    # --yes applies it (the test runs as the daemon's user: an admin) and the check passes again.
    assert applied.returncode == 0, applied.stderr + applied.stdout
    lines = [json.loads(line) for line in applied.stdout.splitlines()]
    assert "result" in lines[-2]
    (done,) = lines[-1]["fixes"]
    assert done["outcome"]["fix_id"] == "remove_world_write"
    assert done["outcome"]["ok"] is True and done["outcome"]["verified"] is True
    assert mode_after_apply & stat.S_IWOTH == 0


def test_a_targeted_fix_is_offered_for_the_alerts_own_subject() -> None:
    from cortexd.config.schema import ExplainConfig
    from cortexd.explain.service import Explainer
    from cortexd.repair.permissions import RemoveWorldWrite, UserPermissions
    from cortexd.repair.runner import FixRunner
    from cortexd.repair.system import RestartUnit

    runner = FixRunner(timeout=1.0)
    fixes = {
        f.id: f
        for f in (RestartUnit(runner), UserPermissions(runner), RemoveWorldWrite(runner, [], 0))
    }

    class Registry:
        @property
        def fixes(self) -> dict[str, Any]:
            return fixes

    explainer = Explainer(
        ExplainConfig(),
        knowledge=lambda: None,  # type: ignore[arg-type,return-value]
        host=None,  # type: ignore[arg-type]
        alerts=None,  # type: ignore[arg-type]
        health=None,  # type: ignore[arg-type]
        fixes=Registry(),
    )
    labels = {"check": "systemd_failed", "unit": "nginx.service"}
    assert explainer.fix_target("restart_unit", labels) == "nginx.service"
    # Not targeted, or no label naming its subject: the fix acts on all it finds.
    assert explainer.fix_target("remove_world_write", labels) is None
    assert explainer.fix_target("restart_unit", {"check": "systemd_failed"}) is None
    assert explainer.fix_target("user_permissions", labels) is None
    assert explainer.fix_target("no_such_fix", labels) is None
