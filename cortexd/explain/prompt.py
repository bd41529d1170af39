"""The model's part: a compact prompt that asks for a plain-language summary of known facts.

A 135M-parameter model cannot diagnose a host, but it can retell a short list
of facts in plain words. So the prompt holds only what the deterministic part
already established (the condition, the top cause, the facts pointing to it
and what to do), a few hundred characters that the model processes in about
a second on two cores, and asks it not to add anything.
"""

from __future__ import annotations

from cortexd.explain.answer import Topic
from cortexd.explain.facts.model import clip

SYSTEM = (
    "You explain a Linux server problem to its operator in two or three short, plain "
    "sentences. Use only the facts given. Do not add causes, numbers or commands."
)
# Prompt processing dominates the first token's delay on a small CPU: keep
# the user message to roughly 150 tokens.
MAX_USER_CHARS = 700
MAX_FACTS = 3


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_USER_CHARS else text[: MAX_USER_CHARS - 1] + "…"


def _topic_lines(topic: Topic) -> list[str]:
    lines = [f"Problem: {topic.entry.title}."]
    top = topic.top
    if top is not None:
        lines.append(f"Most likely cause: {top.cause.text}.")
        lines.extend(f"Evidence: {f.text}." for f in top.evidence[:2])
        if top.cause.advice:
            lines.append(f"What to do: {clip(top.cause.advice, 160)}")
    else:
        lines.append("No single cause stands out from the facts.")
        lines.extend(
            f"Fact: {f.text}." for f in topic.gathered.facts[:MAX_FACTS] if f.kind != "check.result"
        )
    return lines


def explain_messages(alert_title: str, topic: Topic) -> list[dict[str, str]]:
    """Chat messages asking for a summary of one alert's deterministic explanation."""
    lines = [f"Alert: {alert_title}.", *_topic_lines(topic), "Explain this to the operator."]
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": _bounded("\n".join(lines))},
    ]


def ask_messages(
    question: str, not_passing: list[str], topics: list[Topic]
) -> list[dict[str, str]]:
    """Chat messages asking the model to answer `question` from the host's facts only."""
    lines = [f"Question: {clip(question, 200)}"]
    if not_passing:
        lines.append("Checks not passing: " + "; ".join(clip(c, 80) for c in not_passing[:3]))
    else:
        lines.append("Every check passes.")
    for topic in topics[:1]:
        lines.extend(_topic_lines(topic))
    lines.append("Answer the question using only these facts.")
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": _bounded("\n".join(lines))},
    ]
