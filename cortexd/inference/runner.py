"""The model as the worker thread sees it: load, format, generate, measure.

Everything here runs on the one worker thread that owns the `Llama` object
(llama.cpp contexts are not thread-safe). `llama_cpp` is imported inside
`load_model`, so a daemon without a model never imports it (nor numpy).

Cancellation has two paths: between tokens the loop checks the job's stop
flag; during prompt processing — one `llama_decode` over up to `n_batch`
tokens that can take seconds — llama.cpp's abort callback checks the same
flag at every graph node and makes the decode fail with status 2. The
callback is installed only while the prompt is evaluated: during generation
a check per token is prompt enough, and the callback's ~600 Python calls per
token would cost a few percent of throughput.
"""

from __future__ import annotations

import codecs
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from cortexd.config.schema import InferenceConfig
from cortexd.inference.gguf import ModelFileError, ModelInfo, check_fits, inspect
from cortexd.inference.job import NS_PER_S, Job, StopReason
from cortexd.protocol import InvalidParams, Unavailable

log = logging.getLogger(__name__)

# create_completion's defaults for the knobs we do not expose, so results
# match llama-cpp-python called directly with the same params.
TOP_K = 40
MIN_P = 0.05
TYPICAL_P = 1.0
REPEAT_PENALTY = 1.0
ABORTED = 2  # llama_decode's status when the abort callback said stop
_SEED_RANGE = 2**32

Emit = Callable[[str], None]


class LoadedModel:
    """A loaded `Llama` plus what we know about it; used only on the worker thread."""

    def __init__(self, info: ModelInfo, config: InferenceConfig, n_threads: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.info = info
        self.n_threads = n_threads
        started = time.perf_counter()
        n_batch = min(config.n_batch, config.n_ctx)
        try:
            self.llm = llama_cpp.Llama(
                model_path=info.path,
                n_ctx=config.n_ctx,
                n_batch=n_batch,
                n_ubatch=n_batch,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                use_mmap=config.use_mmap,
                verbose=False,
            )
        except MemoryError:
            raise ModelFileError(
                f"out of memory loading {info.path} with n_ctx {config.n_ctx}"
            ) from None
        except ValueError as exc:
            raise ModelFileError(f"llama.cpp could not load {info.path}: {exc}") from None
        self.load_seconds = time.perf_counter() - started
        self.n_ctx = int(self.llm.n_ctx())
        self._job: Job | None = None
        # Kept referenced for as long as llama.cpp may call it.
        self._abort_cb = llama_cpp.ggml_abort_callback(self._should_abort)
        self._no_cb = llama_cpp.ggml_abort_callback(0)
        self._formatter = self._chat_formatter()

    def _should_abort(self, _data: Any) -> bool:
        job = self._job
        return job is not None and (
            job.stop_requested is not None or time.monotonic() >= job.deadline
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
        self._job = None
        self.llm.close()

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.info.path,
            "name": self.info.name,
            "architecture": self.info.architecture,
            "size_bytes": self.info.size_bytes,
            "n_ctx": self.n_ctx,
            "n_ctx_train": self.info.context_length,
            "n_threads": self.n_threads,
            "kv_cache_bytes": self.info.kv_bytes(self.n_ctx),
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

    # -- generation ------------------------------------------------------

    def generate(self, job: Job, emit: Emit) -> dict[str, Any]:
        """Run `job` to its end; stream text through `emit`; return the final result.

        A cancelled or timed-out job returns its partial text with that
        stop reason. Raises:
            InvalidParams: the prompt does not fit in the context (data: both sizes).
            Unavailable: llama.cpp ran out of memory (the model stays usable).
        """
        started = time.monotonic()
        job.started = started
        param = "prompt"
        stops = list(job.params.stop)
        if job.messages is not None:
            param = "messages"
            prompt, template_stops = self.format_chat(job.messages)
            stops.extend(s for s in template_stops if s not in stops)
        else:
            prompt = job.prompt or ""
        tokens = self.tokenize(prompt)
        job.prompt_tokens = len(tokens)
        if not tokens:
            raise InvalidParams(param, "is empty")
        if len(tokens) >= self.n_ctx:
            raise InvalidParams(
                param,
                f"is {len(tokens)} tokens but the model's context holds {self.n_ctx}",
                prompt_tokens=len(tokens),
                n_ctx=self.n_ctx,
            )
        return self._run(job, tokens, stops, emit, started)

    def _run(
        self, job: Job, tokens: list[int], stops: list[str], emit: Emit, started: float
    ) -> dict[str, Any]:
        llm = self.llm
        params = job.params
        max_tokens = min(params.max_tokens, self.n_ctx - len(tokens))
        llm.set_seed(params.seed if params.seed is not None else random.randrange(_SEED_RANGE))
        # Every request is evaluated from an empty cache, so the same request
        # gives the same answer whatever ran before it.
        llm.n_tokens = 0
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        stream = _StopScanner(stops)
        reason: StopReason = "length"
        first: float | None = None
        self._job = job
        job.phase = "prompt"
        self._set_abort(True)
        gen = llm.generate(
            tokens,
            top_k=TOP_K,
            top_p=params.top_p,
            min_p=MIN_P,
            typical_p=TYPICAL_P,
            temp=params.temperature,
            repeat_penalty=REPEAT_PENALTY,
        )
        vocab = llm._model.vocab
        is_eog = self._lib.llama_vocab_is_eog
        try:
            for token in gen:
                if first is None:
                    first = time.monotonic()
                    self._set_abort(False)
                    job.prompt_evaluated = len(tokens)
                    job.phase = "generating"
                if is_eog(vocab, token):
                    reason = "stop"
                    break
                job.generated += 1
                piece = decoder.decode(llm.detokenize([token]))
                ready, hit = stream.feed(piece)
                if ready:
                    emit(ready)
                if hit:
                    reason = "stop"
                    break
                if job.generated >= max_tokens:
                    break
                stopped = self._stop_reason(job)
                if stopped is not None:
                    reason = stopped
                    break
            else:
                reason = "stop"
        except RuntimeError as exc:
            stopped = self._stop_reason(job)
            if stopped is None or f"returned {ABORTED}" not in str(exc):
                self._recover()
                raise Unavailable(f"llama.cpp failed: {exc}", reason="decode_failed") from None
            reason = stopped
            if first is None:
                job.prompt_evaluated = int(llm.n_tokens)
        except MemoryError:
            self._recover()
            raise Unavailable(
                "out of memory while generating; the request was dropped, the model stays loaded",
                reason="out_of_memory",
            ) from None
        finally:
            gen.close()
            self._set_abort(False)
            self._job = None
        if reason in ("stop", "length"):
            tail = stream.flush(decoder.decode(b"", final=True))
            if tail:
                emit(tail)
        else:
            llm.n_tokens = 0
        ended = time.monotonic()
        return _result(job, stream.text, reason, started, first, ended)

    def _stop_reason(self, job: Job) -> StopReason | None:
        if job.stop_requested is not None:
            return job.stop_requested
        if time.monotonic() >= job.deadline:
            return "timeout"
        return None

    def _recover(self) -> None:
        # A failed decode may leave half a batch in the KV cache; the next
        # request starts from an empty cache anyway, so forget the rest.
        self.llm.n_tokens = 0


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


def _result(
    job: Job, text: str, reason: StopReason, started: float, first: float | None, ended: float
) -> dict[str, Any]:
    queue_s = started - job.submitted
    prompt_s = (first if first is not None else ended) - started
    eval_s = ended - first if first is not None else 0.0
    # The first token is sampled at the end of prompt evaluation, so the
    # generation rate counts the tokens after it.
    rate = (job.generated - 1) / eval_s if job.generated > 1 and eval_s > 0 else 0.0
    total_s = ended - job.submitted
    result: dict[str, Any] = {
        "request_id": job.request_id,
        "text": text,
        "stop_reason": reason,
        "prompt_tokens": job.prompt_tokens,
        "prompt_eval_count": job.prompt_evaluated,
        "eval_count": job.generated,
        "total_duration": int(total_s * NS_PER_S),
        "load_duration": job.load_ns,
        "prompt_eval_duration": int(prompt_s * NS_PER_S),
        "eval_duration": int(eval_s * NS_PER_S),
        "queue_ms": round(queue_s * 1000, 3),
        "ttft_ms": round((first - job.submitted) * 1000, 3) if first is not None else None,
        "total_ms": round(total_s * 1000, 3),
        "tokens_per_second": round(rate, 2),
    }
    if reason in ("cancelled", "timeout"):
        result["cancelled_in"] = "prompt" if first is None else "generation"
    return result


def load_model(path: str, config: InferenceConfig, n_threads: int) -> LoadedModel:
    """Check the file, check the memory, then load it with llama.cpp.

    Raises:
        ModelFileError: with the reason in an operator's words.
    """
    info = inspect(path)
    check_fits(info, config.n_ctx, config.use_mmap)
    if info.context_length and config.n_ctx > info.context_length:
        log.warning(
            "n_ctx %d is larger than %s was trained for (%d); answers may degrade",
            config.n_ctx,
            info.name,
            info.context_length,
        )
    return LoadedModel(info, config, n_threads)
