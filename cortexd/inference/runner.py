"""The model as the runner process sees it: load, format, generate, measure.

This module runs only inside the runner child process (see `worker.py`), on
the one thread that owns the `Llama` object (llama.cpp contexts are not
thread-safe). The daemon never imports it, so neither `llama_cpp` nor numpy
is ever loaded into the daemon.

Cancellation has two paths: between tokens the loop checks the request's
stop flag; during prompt processing — one `llama_decode` over up to `n_batch`
tokens that can take seconds — llama.cpp's abort callback checks the same
flag at every graph node and makes the decode fail with status 2. The flag
is set by the runner's reader thread when a cancel frame arrives. The
callback is installed only while the prompt is evaluated: during generation
a check per token is prompt enough, and the callback's ~600 Python calls per
token would cost a few percent of throughput.
"""

from __future__ import annotations

import codecs
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from cortexd.protocol import InvalidParams, Unavailable

StopReason = Literal["stop", "length", "cancelled", "timeout"]
Phase = Literal["queued", "prompt", "generating", "done"]

# create_completion's defaults for the knobs a request does not set, so
# results match llama-cpp-python called directly with the same params.
TOP_K = 40
MIN_P = 0.05
TYPICAL_P = 1.0
REPEAT_PENALTY = 1.0
ABORTED = 2  # llama_decode's status when the abort callback said stop
_SEED_RANGE = 2**32

Emit = Callable[[str, int], None]
OnPhase = Callable[["Request"], None]


@dataclass(frozen=True, slots=True)
class Settings:
    """How to load a model: the daemon's `inference.*` settings, resolved."""

    n_ctx: int
    n_batch: int
    n_threads: int
    use_mmap: bool


@dataclass(frozen=True, slots=True)
class Sampling:
    """Generation parameters of one request, as the frame carries them.

    A generic set, so a later feature can constrain output with a GBNF
    `grammar` or raise `repeat_penalty` without a new frame type.
    """

    max_tokens: int = 512
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = TOP_K
    min_p: float = MIN_P
    typical_p: float = TYPICAL_P
    repeat_penalty: float = REPEAT_PENALTY
    stop: tuple[str, ...] = ()
    seed: int | None = None
    grammar: str | None = None


@dataclass(eq=False, slots=True)
class Request:
    """One request as the runner runs it.

    `stop_requested` is the one field another thread writes (the reader
    thread, on a cancel frame): a single reference assignment, atomic under
    the GIL, read by the abort callback and the token loop.
    """

    id: str
    sampling: Sampling
    deadline: float
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    stop_requested: StopReason | None = None
    phase: Phase = "queued"
    prompt_tokens: int = 0
    prompt_evaluated: int = 0
    generated: int = 0
    received: float = field(default_factory=time.monotonic)


class LoadedModel:
    """A loaded `Llama`; used only on the runner's main thread.

    `open_path` is what llama.cpp opens (the daemon passes the file as an
    inherited descriptor, `/proc/self/fd/N`, so the file checked is the file
    loaded); `name` is how errors name it.
    """

    def __init__(self, open_path: str, name: str, settings: Settings) -> None:
        import contextlib
        import io

        import llama_cpp

        self._lib = llama_cpp
        self.name = name
        self.settings = settings
        started = time.perf_counter()
        n_batch = min(settings.n_batch, settings.n_ctx)
        # verbose=True only so llama-cpp-python does not point fd 2 at
        # /dev/null while loading: an assertion that aborts the runner must
        # reach the daemon. Its Python-level chatter goes nowhere instead.
        with contextlib.redirect_stderr(io.StringIO()):
            self.llm = llama_cpp.Llama(
                model_path=open_path,
                n_ctx=settings.n_ctx,
                n_batch=n_batch,
                n_ubatch=n_batch,
                n_threads=settings.n_threads,
                n_threads_batch=settings.n_threads,
                use_mmap=settings.use_mmap,
                verbose=True,
            )
        self.llm.verbose = False
        self.load_seconds = time.perf_counter() - started
        self.n_ctx = int(self.llm.n_ctx())
        self._request: Request | None = None
        # Kept referenced for as long as llama.cpp may call it.
        self._abort_cb = llama_cpp.ggml_abort_callback(self._should_abort)
        self._no_cb = llama_cpp.ggml_abort_callback(0)
        self._formatter = self._chat_formatter()

    def _should_abort(self, _data: Any) -> bool:
        request = self._request
        return request is not None and (
            request.stop_requested is not None or time.monotonic() >= request.deadline
        )

    def _set_abort(self, on: bool) -> None:
        self._lib.llama_set_abort_callback(
            self.llm.ctx, self._abort_cb if on else self._no_cb, None
        )

    def _chat_formatter(self) -> Any:
        from llama_cpp import llama_chat_format

        llm = self.llm
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        eos, bos = llm.token_eos(), llm.token_bos()
        model = llm._model
        return llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
            stop_token_ids=[eos],
        )

    def close(self) -> None:
        self._request = None
        self.llm.close()

    def describe(self) -> dict[str, Any]:
        """What only the loaded model knows; the daemon adds what the file header says."""
        return {
            "n_ctx": self.n_ctx,
            "n_threads": self.settings.n_threads,
            "chat_template": self._formatter is not None,
            "load_seconds": round(self.load_seconds, 3),
        }

    # -- prompts ---------------------------------------------------------

    def format_chat(self, messages: list[dict[str, str]]) -> tuple[str, list[str]]:
        """The prompt text for `messages` and the template's stop strings."""
        if self._formatter is None:
            # ChatML, the most common template, for models that ship none.
            text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            return text + "<|im_start|>assistant\n", ["<|im_end|>"]
        formatted = self._formatter(messages=messages)
        stop = formatted.stop
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        return formatted.prompt, stops

    def tokenize(self, prompt: str) -> list[int]:
        """Tokens exactly as llama-cpp-python's create_completion builds them."""
        llm = self.llm
        model = llm._model
        bos = [llm.token_bos()] if model.add_bos_token() and llm.token_bos() != -1 else []
        eos = [llm.token_eos()] if model.add_eos_token() else []
        body = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) if prompt else []
        return [*bos, *body, *eos]

    def _grammar(self, text: str | None) -> Any:
        """A `LlamaGrammar` for `text`, after checking that llama.cpp can parse it.

        Raises:
            InvalidParams: llama.cpp refuses the grammar.
        """
        if text is None:
            return None
        from llama_cpp.llama_grammar import LLAMA_GRAMMAR_DEFAULT_ROOT, LlamaGrammar

        lib = self._lib
        # llama-cpp-python adds a grammar to the sampler chain without checking
        # that it parsed; a NULL sampler there would crash the runner.
        probe = lib.llama_sampler_init_grammar(
            self.llm._model.vocab, text.encode("utf-8"), LLAMA_GRAMMAR_DEFAULT_ROOT.encode("utf-8")
        )
        if not probe:
            raise InvalidParams("grammar", "is not a GBNF grammar llama.cpp can parse")
        lib.llama_sampler_free(probe)
        return LlamaGrammar.from_string(text, verbose=False)

    # -- generation ------------------------------------------------------

    def generate(self, request: Request, emit: Emit, on_phase: OnPhase) -> dict[str, Any]:
        """Run `request` to its end; stream text through `emit`; return its outcome.

        The outcome holds the counts and durations (seconds from when the
        runner received the request) the daemon builds the result from, and
        `tail`: text not streamed because it might have been the start of a
        stop string when the request was cancelled. A cancelled or timed-out
        request ends normally with that stop reason.

        Raises:
            InvalidParams: the prompt does not fit in the context, or a bad grammar.
            Unavailable: llama.cpp failed or ran out of memory (the model stays usable).
        """
        sampling = request.sampling
        param = "prompt"
        stops = list(sampling.stop)
        if request.messages is not None:
            param = "messages"
            prompt, template_stops = self.format_chat(request.messages)
            stops.extend(s for s in template_stops if s not in stops)
        else:
            prompt = request.prompt or ""
        tokens = self.tokenize(prompt)
        request.prompt_tokens = len(tokens)
        if not tokens:
            raise InvalidParams(param, "is empty")
        if len(tokens) >= self.n_ctx:
            raise InvalidParams(
                param,
                f"is {len(tokens)} tokens but the model's context holds {self.n_ctx}",
                prompt_tokens=len(tokens),
                n_ctx=self.n_ctx,
            )
        grammar = self._grammar(sampling.grammar)
        return self._run(request, tokens, stops, grammar, emit, on_phase)

    def _run(
        self,
        request: Request,
        tokens: list[int],
        stops: list[str],
        grammar: Any,
        emit: Emit,
        on_phase: OnPhase,
    ) -> dict[str, Any]:
        llm = self.llm
        sampling = request.sampling
        max_tokens = min(sampling.max_tokens, self.n_ctx - len(tokens))
        seed = sampling.seed if sampling.seed is not None else random.randrange(_SEED_RANGE)
        llm.set_seed(seed)
        # Every request is evaluated from an empty cache, so the same request
        # gives the same answer whatever ran before it.
        llm.n_tokens = 0
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        stream = _StopScanner(stops)
        reason: StopReason = "length"
        started = time.monotonic()
        first: float | None = None
        self._request = request
        request.phase = "prompt"
        on_phase(request)
        self._set_abort(True)
        gen = llm.generate(
            tokens,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            typical_p=sampling.typical_p,
            temp=sampling.temperature,
            repeat_penalty=sampling.repeat_penalty,
            grammar=grammar,
        )
        vocab = llm._model.vocab
        is_eog = self._lib.llama_vocab_is_eog
        try:
            for token in gen:
                if first is None:
                    first = time.monotonic()
                    self._set_abort(False)
                    request.prompt_evaluated = len(tokens)
                    request.phase = "generating"
                    on_phase(request)
                if is_eog(vocab, token):
                    reason = "stop"
                    break
                request.generated += 1
                piece = decoder.decode(llm.detokenize([token]))
                ready, hit = stream.feed(piece)
                if ready:
                    emit(ready, request.generated)
                if hit:
                    reason = "stop"
                    break
                if request.generated >= max_tokens:
                    break
                stopped = _stop_reason(request)
                if stopped is not None:
                    reason = stopped
                    break
            else:
                reason = "stop"
        except RuntimeError as exc:
            stopped = _stop_reason(request)
            if stopped is None or f"returned {ABORTED}" not in str(exc):
                self._recover()
                raise Unavailable(f"llama.cpp failed: {exc}", reason="decode_failed") from None
            reason = stopped
            if first is None:
                request.prompt_evaluated = int(llm.n_tokens)
        except MemoryError:
            self._recover()
            raise Unavailable(
                "out of memory while generating; the request was dropped, the model stays loaded",
                reason="out_of_memory",
            ) from None
        finally:
            gen.close()
            self._set_abort(False)
            self._request = None
        tail = ""
        if reason in ("stop", "length"):
            rest = stream.flush(decoder.decode(b"", final=True))
            if rest:
                emit(rest, request.generated)
        else:
            tail = stream.rest()
            llm.n_tokens = 0
        ended = time.monotonic()
        request.phase = "done"
        return {
            "stop_reason": reason,
            "tail": tail,
            "prompt_tokens": request.prompt_tokens,
            "prompt_evaluated": request.prompt_evaluated,
            "generated": request.generated,
            "prompt_s": (first if first is not None else ended) - started,
            "first_s": first - request.received if first is not None else None,
            "eval_s": ended - first if first is not None else 0.0,
            "total_s": ended - request.received,
        }

    def _recover(self) -> None:
        # A failed decode may leave half a batch in the KV cache; the next
        # request starts from an empty cache anyway, so forget the rest.
        self.llm.n_tokens = 0


def _stop_reason(request: Request) -> StopReason | None:
    if request.stop_requested is not None:
        return request.stop_requested
    if time.monotonic() >= request.deadline:
        return "timeout"
    return None


class _StopScanner:
    """Holds back text that may be the start of a stop string; cuts at the first one."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._longest = max((len(s) for s in self._stops), default=0)
        self.text = ""
        self._sent = 0

    def feed(self, piece: str) -> tuple[str, bool]:
        """Add `piece`; returns (text safe to stream now, whether a stop string was hit)."""
        if not piece:
            return "", False
        self.text += piece
        if not self._stops:
            out = self.text[self._sent :]
            self._sent = len(self.text)
            return out, False
        window = max(0, self._sent - self._longest)
        hits = [i for i in (self.text.find(s, window) for s in self._stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            out = self.text[self._sent :]
            self._sent = len(self.text)
            return out, True
        hold = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        end = max(self._sent, len(self.text) - hold)
        out = self.text[self._sent : end]
        self._sent = end
        return out, False

    def flush(self, tail: str) -> str:
        """At the natural end: everything not yet sent (nothing follows to complete a stop)."""
        self.text += tail
        out = self.text[self._sent :]
        self._sent = len(self.text)
        return out

    def rest(self) -> str:
        """Text held back and never sent: the request ended before it was safe to."""
        return self.text[self._sent :]
