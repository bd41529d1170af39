"""Explain benchmark: is the answer right, and how soon does each part of it arrive?

Run (as root: the scenarios use private namespaces):
`CORTEX_TEST_MODEL=… .venv/bin/python bench/explain.py [--rounds N] [--json]`.

For each scenario of tests/explain/scenarios.py (real conditions made in
private namespaces) a daemon serving the model explains the scenario's alert,
streaming, and this records:

- right: the deterministic part names the expected cause first, with the
  expected evidence and fixes (tests/explain/scenarios.py `judge`);
- facts_ms and answer_ms, from the daemon: gathering the facts, and from the
  facts to the complete deterministic part (aim ≤ 200 ms);
- det_ms: from sending the request to the deterministic part arriving;
- ttft_ms: the engine's time to the summary's first token (aim ≤ 3 s with
  one llama.cpp thread, the default on 2 cores), and first_text_ms, from the
  request to the first summary text arriving (the guard passes whole
  sentences, so this is later than the first token);
- the summary's prompt and generated token counts;
- the baseline in the same daemon: the prompt the previous explain built (the
  alert's fields and the raw `health` JSON) sent through `inference.chat`,
  its prompt tokens and time to first token, and the ratio of the two;
- the model's fix suggestion (`suggest: true`), generated under the
  grammar that allows only the fixes the runbook and the facts say apply:
  which ids it could choose from, which it chose, and whether they contain
  the scenario's expected fix (the fixes of its expected top cause);
- the same choice made harder: the model, loaded in this process with the
  daemon's settings, chooses under the same grammar among every fix of the
  runbook entry instead (cortexd/explain/suggest.py builds both the prompt
  and the grammar), so one wrong pick is possible wherever the entry has
  more than one fix; and hardest, among 8 registered fixes (the expected
  ones among them, in the registry's order), where only the model's
  reading of the cause can pick the right one.

The unsynchronised clock (given adjtimex's answer, see clock_probe.py) is
explained without a model. It reports and does not judge: a missed aim is
printed, not an exit status.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cortexctl.client import Client
from cortexd.explain.answer import FixInfo
from cortexd.explain.suggest import (
    MAX_ALLOWED,
    fix_grammar,
    max_tokens_for,
    parse_suggestion,
    suggest_messages,
)
from tests.explain.scenarios import (
    CLOCK,
    SCENARIOS,
    Scenario,
    World,
    clock_answer,
    judge,
    world,
)
from tests.inference.conftest import wait_state

DEFAULT_MODEL = "/var/lib/cortex/models/SmolLM2-135M-Instruct.Q4_1.gguf"
THREADS = 1
TIMEOUT = 300.0
# The previous explain's prompt, rebuilt here as the same-run baseline.
BASELINE_SYSTEM = (
    "You are an experienced Linux site reliability engineer. Explain alerts from a host "
    "monitoring daemon to an operator: what the alert means, the most likely causes on "
    "this host, and concrete next steps (commands to run, what to look for). Be brief."
)
BASELINE_FIELDS = (
    "title", "severity", "category", "state", "description", "labels", "annotations",
    "source", "host", "count",
)  # fmt: skip
MAX_ALERT_CHARS = 1500
MAX_HEALTH_CHARS = 1200


def _compact(value: Any, limit: int) -> str:
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= limit else text[:limit] + " …(truncated)"


def baseline_messages(alert: dict[str, Any], health: dict[str, Any]) -> list[dict[str, str]]:
    lines = [
        f"{key}: {alert[key] if isinstance(alert[key], str) else _compact(alert[key], 1500)}"
        for key in BASELINE_FIELDS
        if alert.get(key) not in (None, "", {}, [])
    ]
    parts = [
        "Alert:\n" + "\n".join(lines)[:MAX_ALERT_CHARS],
        f"Current health of the host:\n{_compact(health, MAX_HEALTH_CHARS)}",
        "Explain this alert and suggest next steps.",
    ]
    return [
        {"role": "system", "content": BASELINE_SYSTEM},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


def _find_alert(w: World, scenario: Scenario, values: dict[str, str]) -> dict[str, Any]:
    w.daemon.call("checks.run", {"ids": [scenario.check]}, timeout=TIMEOUT)
    subject = {k: values[k] for k in scenario.subject}
    (alert,) = [
        a
        for a in w.daemon.call("alerts.list", {"state": "active"})["alerts"]
        if a["source"] == scenario.check
        and all(a["labels"].get(k) == v for k, v in subject.items())
    ]
    return alert


def _timed_explain(socket_path: str, alert_id: str) -> dict[str, Any]:
    stamps: dict[str, float] = {}

    def seen(data: Any) -> None:
        now = time.perf_counter()
        if "explanation" in data:
            stamps.setdefault("deterministic", now)
        elif "text" in data:
            stamps.setdefault("first_text", now)

    with Client(socket_path, timeout=TIMEOUT) as client:
        started = time.perf_counter()
        result: dict[str, Any] = client.call(
            "inference.explain",
            {"alert_id": alert_id[:8], "stream": True, "seed": 1, "suggest": True},
            on_stream=seen,
            timeout=TIMEOUT,
        )
    result["client"] = {k: round((v - started) * 1000, 1) for k, v in stamps.items()}
    return result


def _baseline(socket_path: str, alert_id: str) -> dict[str, Any]:
    with Client(socket_path, timeout=TIMEOUT) as client:
        alert = client.call("alerts.get", {"id": alert_id})["alert"]
        health = client.call("health")
        result: dict[str, Any] = client.call(
            "inference.chat",
            {"messages": baseline_messages(alert, health), "max_tokens": 1, "temperature": 0},
            timeout=TIMEOUT,
        )
    return result


class EntryWide:
    """The model in this process, choosing among given fixes under the suggestion grammar."""

    def __init__(self, model: str) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=model, n_ctx=2048, n_threads=THREADS, verbose=False)

    def choose(self, result: dict[str, Any], fixes: list[FixInfo]) -> dict[str, Any] | None:
        fixes = fixes[:MAX_ALLOWED]
        if not fixes:
            return None
        from llama_cpp import LlamaGrammar

        top = result["causes"][0] if result["causes"][0]["pointed_to"] else None
        evidence = top["evidence"][0]["text"] if top and top["evidence"] else None
        ids = [f.fix_id for f in fixes]
        answer = self.llm.create_chat_completion(
            messages=suggest_messages(
                result["alert"]["title"],
                result["title"],
                top["text"] if top else None,
                evidence,
                fixes,
            ),
            grammar=LlamaGrammar.from_string(fix_grammar(ids), verbose=False),
            max_tokens=max_tokens_for(ids),
            temperature=0.2,
            top_p=0.9,
            seed=1,
        )
        text = str(answer["choices"][0]["message"]["content"])
        return {"allowed": ids, "chosen": [i["fix_id"] for i in parse_suggestion(text, ids)]}


def _every_fix(registered: list[dict[str, Any]], expected: list[str]) -> list[FixInfo]:
    """MAX_ALLOWED registered fixes, the expected ones among them, in the registry's order
    (so the list's position does not give the answer away)."""
    others = [f["id"] for f in registered if f["id"] not in expected]
    keep = set(expected) | set(others[: MAX_ALLOWED - len(expected)])
    return [
        FixInfo(f["id"], f["safety"], f["description"], f"cortexctl repair fix {f['id']}")
        for f in registered
        if f["id"] in keep
    ]


def _suggestion_row(
    scenario: Scenario, result: dict[str, Any], wide: EntryWide, registered: list[dict[str, Any]]
) -> dict[str, Any]:
    expected = [f for f, _ in scenario.fixes]
    suggestion = result.get("suggestion")
    chosen = [f["fix_id"] for f in suggestion["fixes"]] if suggestion else []
    entry_fixes = [
        FixInfo(f["fix_id"], f["safety"], f["description"], f["command"]) for f in result["fixes"]
    ]
    entry_wide = wide.choose(result, entry_fixes)
    wide_chosen = entry_wide["chosen"] if entry_wide else []
    every = wide.choose(result, _every_fix(registered, expected)) if expected else None
    every_chosen = every["chosen"] if every else []
    return {
        "expected_fixes": expected,
        "suggestion_allowed": suggestion["allowed"] if suggestion else [],
        "suggested": chosen,
        "suggestion_skipped": result.get("suggestion_skipped"),
        "suggestion_ms": suggestion["total_ms"] if suggestion else None,
        "suggestion_hit": bool(set(chosen) & set(expected)) if expected else None,
        "entry_fixes": entry_wide["allowed"] if entry_wide else [],
        "entry_wide_chosen": wide_chosen,
        "entry_wide_hit": bool(set(wide_chosen) & set(expected)) if expected else None,
        "entry_wide_first_hit": wide_chosen[:1] == expected[:1] if expected else None,
        "every_fix_allowed": every["allowed"] if every else [],
        "every_fix_chosen": every_chosen,
        "every_fix_hit": bool(set(every_chosen) & set(expected)) if expected else None,
        "every_fix_first_hit": every_chosen[:1] == expected[:1] if expected else None,
    }


def run_scenario(scenario: Scenario, model: str, wide: EntryWide) -> dict[str, Any]:
    extra = {"inference": {"model_path": model, "n_threads": THREADS}}
    with world(scenario, extra) as w:
        wait_state(w.daemon, {"ready"}, deadline=120)
        values = scenario.setup(w)
        alert = _find_alert(w, scenario, values)
        result = _timed_explain(w.daemon.socket_path, alert["id"])
        registered = w.daemon.call("fixes.list")["fixes"]
        base = _baseline(w.daemon.socket_path, alert["id"])
    summary = result["summary"] or {}
    return {
        "scenario": scenario.name,
        "right": not judge(scenario, values, result),
        "problems": judge(scenario, values, result),
        "facts_ms": result["timings"]["facts_ms"],
        "answer_ms": result["timings"]["answer_ms"],
        "det_ms": result["client"].get("deterministic"),
        "ttft_ms": summary.get("ttft_ms"),
        "first_text_ms": result["client"].get("first_text"),
        "prompt_tokens": summary.get("prompt_eval_count"),
        "tokens": summary.get("eval_count"),
        "guard": summary.get("guard"),
        "baseline_prompt_tokens": base["prompt_eval_count"],
        "baseline_ttft_ms": base["ttft_ms"],
        **_suggestion_row(scenario, result, wide, registered),
    }


def run_clock() -> dict[str, Any]:
    result = clock_answer()
    return {
        "scenario": CLOCK.name + " (adjtimex given)",
        "right": not judge(CLOCK, {}, result),
        "problems": judge(CLOCK, {}, result),
        "facts_ms": result["timings"]["facts_ms"],
        "answer_ms": result["timings"]["answer_ms"],
    }


def _cell(value: Any, fmt: str = "{:.0f}") -> str:
    return "—" if value is None else fmt.format(value)


def table(rows: list[dict[str, Any]]) -> str:
    header = [
        "scenario", "right cause and fix", "facts ms", "answer ms", "first token ms",
        "prompt tokens", "baseline prompt tokens", "baseline first token ms",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r["scenario"],
            "yes" if r["right"] else "NO: " + "; ".join(r["problems"]),
            _cell(r["facts_ms"]),
            _cell(r["answer_ms"], "{:.2f}"),
            _cell(r.get("ttft_ms")),
            _cell(r.get("prompt_tokens")),
            _cell(r.get("baseline_prompt_tokens")),
            _cell(r.get("baseline_ttft_ms")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rate(values: list[bool]) -> str:
    if not values:
        return "no scenario"
    return f"{sum(values)} of {len(values)} ({100 * sum(values) / len(values):.0f} %)"


def _suggestion_rates(rows: list[dict[str, Any]]) -> dict[str, Any]:
    judged = [r for r in rows if r.get("expected_fixes")]
    several = [r for r in judged if len(r["entry_fixes"]) > 1]
    return {
        "suggestion_contains_expected_fix": _rate([bool(r["suggestion_hit"]) for r in judged]),
        "suggestion_with_one_allowed_fix": sum(len(r["suggestion_allowed"]) == 1 for r in judged),
        "entry_wide_contains_expected_fix": _rate([bool(r["entry_wide_hit"]) for r in judged]),
        "entry_wide_first_is_expected_fix": _rate(
            [bool(r["entry_wide_first_hit"]) for r in judged]
        ),
        "entry_wide_first_is_expected_with_several_fixes": _rate(
            [bool(r["entry_wide_first_hit"]) for r in several]
        ),
        "every_fix_contains_expected_fix": _rate([bool(r["every_fix_hit"]) for r in judged]),
        "every_fix_first_is_expected_fix": _rate([bool(r["every_fix_first_hit"]) for r in judged]),
        "every_fix_mean_chosen": (
            round(statistics.mean(len(r["every_fix_chosen"]) for r in judged), 2)
            if judged
            else "no scenario"
        ),
    }


def suggestion_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "scenario", "expected fix", "allowed (runbook and facts)", "model chose",
        "suggestion ms", "entry's fixes", "model chose among them",
        "model chose among 8 registered fixes",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if "suggested" not in r:
            continue
        cells = [
            r["scenario"],
            ", ".join(r["expected_fixes"]) or "—",
            ", ".join(r["suggestion_allowed"]) or "— (not asked)",
            ", ".join(r["suggested"]) or "—",
            _cell(r["suggestion_ms"]),
            ", ".join(r["entry_fixes"]) or "—",
            ", ".join(r["entry_wide_chosen"]) or "—",
            ", ".join(r["every_fix_chosen"]) or "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    with_model = [r for r in rows if r.get("ttft_ms") is not None]
    ratios = [r["ttft_ms"] / r["baseline_ttft_ms"] for r in with_model if r["baseline_ttft_ms"]]
    out: dict[str, Any] = {
        "right_rate": sum(r["right"] for r in rows) / len(rows),
        "answer_ms_max": max(r["answer_ms"] for r in rows),
        **_suggestion_rates(rows),
    }
    if not with_model:
        return out
    return {
        **out,
        "ttft_ms_median": statistics.median(r["ttft_ms"] for r in with_model),
        "ttft_ms_max": max(r["ttft_ms"] for r in with_model),
        "first_text_ms_median": statistics.median(r["first_text_ms"] for r in with_model),
        "prompt_tokens_median": statistics.median(r["prompt_tokens"] for r in with_model),
        "baseline_ttft_ms_median": statistics.median(r["baseline_ttft_ms"] for r in with_model),
        "ttft_ratio_to_baseline_median": statistics.median(ratios),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="runs of every scenario")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--only", nargs="*", default=(), help="scenario names to run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/explain.py needs root: the scenarios use private namespaces", file=sys.stderr)
        return 2
    model = os.environ.get("CORTEX_TEST_MODEL", DEFAULT_MODEL)
    rows = []
    wide = EntryWide(model)
    for _ in range(args.rounds):
        for scenario in SCENARIOS:
            if args.only and scenario.name not in args.only:
                continue
            rows.append(run_scenario(scenario, model, wide))
            print(f"{scenario.name}: done", file=sys.stderr)
        if not args.only or CLOCK.name in args.only:
            rows.append(run_clock())
    figures = {"rows": rows, "summary": summary(rows), "cores": os.cpu_count()}
    if args.json:
        sys.stdout.write(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(table(rows))
        print()
        print(suggestion_table(rows))
        print()
        for key, value in figures["summary"].items():
            print(f"{key}: {value if isinstance(value, str) else round(value, 3)}")
        load = os.getloadavg()
        print(f"load average during the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
