"""The model's suggestion: which known fixes to take, under a grammar that allows nothing else.

The runbook and the facts say which registered fixes address an alert (the
fixes of the causes the facts point to, or every fix of the entry when no
cause stands out). The model may only choose among those: its generation is
constrained by a GBNF grammar, built here as text and compiled by llama.cpp
in the runner, that accepts exactly a JSON list of one to MAX_SUGGESTED
objects `{"fix_id": <one of the allowed ids>, "reason": <one line>}`. The
reason's alphabet has no `/`, `$`, `|`, `;`, `>`, backtick or quote, so the
model cannot write a shell command even inside it. What comes back is
parsed and checked against the allowed set again, here, before anyone sees
it: the runner is the process that may be corrupted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from cortexd.explain.answer import FixInfo, Topic
from cortexd.explain.facts.model import clip
from cortexd.inference.engine import Engine
from cortexd.inference.job import GenerationParams, Job
from cortexd.inference.methods import run_job
from cortexd.protocol import CortexError
from cortexd.server import Call

MAX_SUGGESTED = 3
# The grammar has a rule per set of fixes chosen so far: keep the sets few.
MAX_ALLOWED = 8
MAX_REASON = 72
# Each item costs its framing and fix id (~16 tokens) plus its reason, at
# worst one token per character: enough to always finish a valid list.
TOKENS_PER_ITEM = 16 + MAX_REASON
# Only ids the grammar can quote without escaping (the runbook's own rule).
FIX_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# One sentence, not a command: letters, digits, spaces and plain punctuation,
# a full stop only at the end.
REASON_CHARS = "[a-zA-Z0-9 ,%()']"
REASON = re.compile(r"^[A-Z][a-zA-Z0-9 ,%()']*\.?$")

SYSTEM = (
    "You choose fixes for a Linux server problem from a list of known fixes. "
    "Choose the fixes that address the cause and give a short reason for each."
)

TargetOf = Callable[[str], str | None]


def allowed_fixes(topic: Topic) -> list[FixInfo]:
    """The fixes the runbook and the facts say apply: those of the causes pointed to, in rank
    order, or every fix of the entry when the facts point to no cause."""
    pointed = [r for r in topic.ranked if r.pointed_to]
    chosen = [f for r in pointed for f in topic.fixes_for(r)] if pointed else list(topic.fixes)
    seen: dict[str, FixInfo] = {}
    for fix in chosen:
        if FIX_ID.match(fix.fix_id):
            seen.setdefault(fix.fix_id, fix)
    return list(seen.values())[:MAX_ALLOWED]


def fix_grammar(fix_ids: Sequence[str], max_items: int = MAX_SUGGESTED) -> str:
    """A GBNF grammar for a JSON list of 1..`max_items` suggestions, each fix of `fix_ids` at
    most once.

    One rule per set of fixes already chosen says which may follow, so the
    model cannot spend its tokens on the same fix again.

    Raises:
        ValueError: no ids, too many, or an id the grammar cannot hold verbatim.
    """
    if not fix_ids:
        raise ValueError("a suggestion needs at least one fix id to choose from")
    if len(fix_ids) > MAX_ALLOWED:
        raise ValueError(f"at most {MAX_ALLOWED} fix ids to choose from, not {len(fix_ids)}")
    bad = [f for f in fix_ids if not FIX_ID.match(f)]
    if bad:
        raise ValueError(f"fix ids not of the form {FIX_ID.pattern}: {bad}")
    if len(set(fix_ids)) != len(fix_ids):
        raise ValueError(f"fix ids repeat: {list(fix_ids)}")
    items = max(1, min(max_items, len(fix_ids)))
    rules: dict[str, str] = {}

    def choice(used: tuple[int, ...]) -> str:
        """The alternatives for the next item after the fixes `used` (sorted indexes)."""
        options = []
        for i in range(len(fix_ids)):
            if i in used:
                continue
            after = tuple(sorted((*used, i)))
            if len(after) < items and len(after) < len(fix_ids):
                options.append(f"item-{i} {more(after)}")
            else:
                options.append(f"item-{i}")
        return " | ".join(options)

    def more(used: tuple[int, ...]) -> str:
        name = "more-" + "-".join(map(str, used))
        if name not in rules:
            rules[name] = f'(", " ({choice(used)}))?'
        return name

    root = f'root ::= "[" ({choice(())}) "]"'
    lines = [root, *(f"{name} ::= {body}" for name, body in rules.items())]
    lines += [
        f'item-{i} ::= "{{\\"fix_id\\": \\"{f}\\", \\"reason\\": \\"" reason "\\"}}"'
        for i, f in enumerate(fix_ids)
    ]
    lines.append(f'reason ::= [A-Z] {REASON_CHARS}{{0,{MAX_REASON - 2}}} "."?')
    return "\n".join(lines)


def max_tokens_for(fix_ids: Sequence[str]) -> int:
    """Enough tokens for the longest list the grammar allows over `fix_ids`."""
    return 8 + TOKENS_PER_ITEM * max(1, min(MAX_SUGGESTED, len(fix_ids)))


def suggest_messages(
    alert_title: str,
    problem: str,
    cause: str | None,
    evidence: str | None,
    allowed: Sequence[FixInfo],
) -> list[dict[str, str]]:
    """Chat messages asking the model to choose among `allowed` for an alert: its title, the
    runbook entry's title (`problem`), and the top cause with its first evidence, if any."""
    lines = [f"Alert: {clip(alert_title, 120)}.", f"Problem: {problem}."]
    if cause is not None:
        lines.append(f"Most likely cause: {cause}.")
    if evidence is not None:
        lines.append(f"Evidence: {evidence}.")
    lines.append("Known fixes:")
    lines.extend(f"- {f.fix_id}: {clip(f.description, 120)} ({f.safety})" for f in allowed)
    lines.append("Choose the fixes that address the cause.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def parse_suggestion(text: str, allowed: Sequence[str]) -> list[dict[str, str]]:
    """The suggested (fix_id, reason) pairs in `text`, first mention of each fix kept.

    Raises:
        ValueError: not the structure the grammar allows, or a fix id outside `allowed`.
    """
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(items, list) or not items:
        raise ValueError("not a non-empty JSON list")
    out: dict[str, dict[str, str]] = {}
    for n, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"fix_id", "reason"}:
            raise ValueError(f"item {n} is not an object with fix_id and reason")
        fix_id, reason = item["fix_id"], item["reason"]
        if not isinstance(fix_id, str) or fix_id not in allowed:
            raise ValueError(f"item {n}: fix_id {fix_id!r} is not one of {list(allowed)}")
        if not isinstance(reason, str) or len(reason) > MAX_REASON or not REASON.match(reason):
            raise ValueError(f"item {n}: reason is not one line of at most {MAX_REASON} characters")
        out.setdefault(fix_id, {"fix_id": fix_id, "reason": reason.strip()})
    return list(out.values())


async def suggest(
    engine: Engine | None,
    call: Call,
    alert_title: str,
    topic: Topic,
    target_of: TargetOf,
) -> dict[str, Any]:
    """`suggestion` (the model's choice among the allowed fixes) or `suggestion_skipped` (why
    there is none). Never raises for a missing model, a full queue or an unusable answer.

    The generation is not streamed: only the checked result is shown. On
    cancellation the generation is cancelled with it.
    """
    p = call.params
    allowed = allowed_fixes(topic)
    if not p["model"]:
        return _skipped("not asked for (model: false)")
    if not allowed:
        return _skipped("no registered fix addresses the causes seen")
    if engine is None:
        return _skipped("this daemon runs no inference engine")
    ids = [f.fix_id for f in allowed]
    top = topic.top
    job = Job(
        request_id=call.request_id,
        priority=p["priority"],
        method=call.method,
        uid=call.peer.uid,
        params=GenerationParams(
            max_tokens=max_tokens_for(ids),
            temperature=p["temperature"],
            top_p=p["top_p"],
            seed=p["seed"],
            grammar=fix_grammar(ids),
        ),
        messages=suggest_messages(
            alert_title,
            topic.entry.title,
            top.cause.text if top is not None else None,
            top.evidence[0].text if top is not None and top.evidence else None,
            allowed,
        ),
    )
    try:
        outcome = await run_job(engine, call, job, stream=False)
    except CortexError as exc:
        return _skipped(f"{exc.code.name}: {exc.message}")
    if outcome["stop_reason"] != "stop":
        return _skipped(f"the suggestion was cut short ({outcome['stop_reason']})")
    try:
        chosen = parse_suggestion(outcome["text"], ids)
    except ValueError as exc:
        return _skipped(f"the model's answer was not a valid suggestion: {exc}")
    by_id = {f.fix_id: f for f in allowed}
    fixes = []
    for item in chosen:
        info = by_id[item["fix_id"]]
        fixes.append(
            {
                **item,
                "safety": info.safety,
                "description": info.description,
                "command": info.command,
                "target": target_of(info.fix_id),
            }
        )
    return {"suggestion": {**outcome, "allowed": ids, "fixes": fixes}, "suggestion_skipped": None}


def _skipped(why: str) -> dict[str, Any]:
    return {"suggestion": None, "suggestion_skipped": why}
