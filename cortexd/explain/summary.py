"""The model's part of an answer, generated through the inference engine's queue.

A 135M-parameter model drifts: after a sentence or two it repeats itself
("… permission permission permission …") or starts on invented commands.
The engine offers no repeat penalty yet, so the summary is guarded here:
its text is passed on sentence by sentence, and generation is stopped at the
first sentence that repeats an earlier one or repeats one word over and over;
stop strings end it at a blank line or at anything that looks like a command.
"""

from __future__ import annotations

import re
from typing import Any

from cortexd.inference.engine import Engine
from cortexd.inference.job import GenerationParams, Job
from cortexd.inference.methods import run_job
from cortexd.protocol import CortexError
from cortexd.server import Call

# A blank line ends the first paragraph, the model's best; a backtick, `sudo `
# or a prompt sign starts a command it made up (the real ones are above it).
SUMMARY_STOP = ("\n\n", "`", "sudo ", "$ ")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n")
_RUN_OF_WORDS = re.compile(r"\b(\w+)(?:\W+\1\b){3,}", re.IGNORECASE)


class Guard:
    """Holds streamed text back to whole sentences and says when the model starts repeating."""

    def __init__(self) -> None:
        self.kept = ""
        self.pending = ""
        self.stopped = False
        self._seen: set[str] = set()

    def feed(self, text: str) -> str:
        """Add generated text; returns the complete, new sentences that may be shown."""
        if self.stopped:
            return ""
        self.pending += text
        shown = ""
        while not self.stopped and (end := _SENTENCE_END.search(self.pending)):
            sentence, self.pending = self.pending[: end.end()], self.pending[end.end() :]
            shown += self._accept(sentence)
        # A word repeated on and on may never reach a sentence's end: stop it as it starts.
        if _RUN_OF_WORDS.search(self.pending):
            self.stopped = True
        return shown

    def finish(self) -> str:
        """The last, unfinished sentence, if it may be shown."""
        rest, self.pending = self.pending, ""
        return "" if self.stopped else self._accept(rest)

    def _accept(self, sentence: str) -> str:
        words = " ".join(sentence.lower().split())
        if (words and words in self._seen) or _RUN_OF_WORDS.search(sentence):
            self.stopped = True
            return ""
        if words:
            self._seen.add(words)
        self.kept += sentence
        return sentence


async def summarise(
    engine: Engine | None,
    call: Call,
    messages: list[dict[str, str]],
    params: GenerationParams,
) -> dict[str, Any]:
    """`summary` (the generation's result) or `summary_skipped` (why there is none).

    Streams through `call` when its params say `stream`. Never raises for a
    missing model or a full queue: the deterministic part stands on its own.
    On cancellation the generation is cancelled with it.
    """
    p = call.params
    if not p["model"]:
        return {"summary": None, "summary_skipped": "not asked for (model: false)"}
    if engine is None:
        return {"summary": None, "summary_skipped": "this daemon runs no inference engine"}
    guard = Guard()
    job = Job(
        request_id=call.request_id,
        priority=p["priority"],
        method=call.method,
        uid=call.peer.uid,
        params=params,
        messages=messages,
    )

    async def relay(message: dict[str, Any]) -> None:
        data = message["data"]
        if "text" not in data:
            if p["stream"]:
                await call.stream(data)
            return
        shown = guard.feed(data["text"])
        if guard.stopped:
            engine.cancel_job(job, "cancelled")
        if shown and p["stream"]:
            await call.stream({"text": shown})

    # run_job streams to this Call; its sender is the guard, which passes on what may be shown.
    guarded = Call(
        call.method,
        call.params,
        call.peer,
        call.id,
        call.is_admin,
        _sender=relay,
        _request_id=call.request_id,
    )
    try:
        outcome = await run_job(engine, guarded, job, stream=True)
    except CortexError as exc:
        return {"summary": None, "summary_skipped": f"{exc.code.name}: {exc.message}"}
    tail = guard.finish()
    if tail and p["stream"]:
        await call.stream({"text": tail})
    if guard.stopped:
        # Stopped here on purpose, at a sentence's end: that is a stop, not a cancel.
        outcome = {**outcome, "stop_reason": "stop", "guard": "repetition"}
        outcome.pop("cancelled_in", None)
    # Exactly what was streamed, so a client that joins the pieces has the same text.
    outcome["text"] = guard.kept
    return {"summary": outcome, "summary_skipped": None}
