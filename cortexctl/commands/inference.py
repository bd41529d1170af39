"""Inference commands: ask, explain, model status|load|unload, inference cancel.

`ask` and `explain` stream the answer to the terminal as the daemon generates
it; with `--json` each stream message is a line `{"stream": …}` and the final
answer the line `{"result": …}`. Ctrl-C cancels the request on the daemon (the
client closes its connection, and the request is named to `inference.cancel`
over a second one) before exiting with 130. `explain` and `ask --host` print
the deterministic part (runbook and facts) the moment it arrives, then the
model's summary as it is generated.
"""

from __future__ import annotations

import os
import sys

from cortexctl.client import Client
from cortexctl.errors import Interrupted, UsageError
from cortexd.protocol import CortexError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from cortexctl.output import Output
    from cortexctl.progress import Progress

EXIT_OK = 0
EXIT_DAEMON_ERROR = 1
# Silence allowed while a request waits in the queue: the daemon's own
# inference deadline (120 s by default) ends it before this.
ANSWER_TIMEOUT = 600.0
LOAD_TIMEOUT = 3600.0
CANCEL_TIMEOUT = 5.0
MIB = 1024 * 1024

STREAM_NOTES = """\
With --json each stream message is printed as the line {"stream": ...} as it
arrives, and the final answer as the line {"result": ...}.
Ctrl-C cancels the request on the daemon."""
ASK_NOTES = (
    """\
--host answers from this host's facts and the runbook first, then lets the
model summarise them.
"""
    + STREAM_NOTES
)
FIX_NOTES = """\
--fix asks the model to choose among the registered fixes that the runbook and
the facts say apply (it cannot name any other, nor write a command), then plans
the chosen ones as `cortexctl repair fix` does: a dry run unless --yes is given
(applying needs an admin). With --json the plans and outcomes follow the result
as the line {"fixes": [...]}."""
EXPLAIN_NOTES = (
    """\
First what is known for certain: the runbook's causes ranked by facts gathered
now, the facts with their sources, commands to look further and the fixes that
apply; then a short summary by the local model (none without a model).

"""
    + FIX_NOTES
    + "\n\n"
    + STREAM_NOTES
)
SUMMARY_HEADING = "Summary (local model; the facts above are what counts):"
SUGGESTION_HEADING = "Fixes the local model suggests (chosen only among the fixes above):"


class _Streamer:
    """Prints streamed text as it arrives and remembers the request id."""

    def __init__(self, out: Output, progress: Progress) -> None:
        self.out = out
        self.progress = progress
        self.request_id: str | None = None
        self.printed = False

    def __call__(self, data: Any) -> None:
        self.out.event(data)
        if not isinstance(data, dict):
            return
        if "request_id" in data:
            self.request_id = str(data["request_id"])
            if data.get("position"):
                self.progress.update(f"number {data['position'] + 1} in the queue")
        text = data.get("text")
        if text and not self.out.as_json:
            self.progress.done()
            self.out.write(text)
            self.printed = True


def _cancel(client: Client, request_id: str | None) -> None:
    if request_id is None:
        return
    try:
        with Client(client.path, timeout=CANCEL_TIMEOUT) as other:
            other.call("inference.cancel", {"request_id": request_id})
    except (CortexError, OSError, TimeoutError):
        pass  # it may have finished meanwhile; we are exiting either way


def _streamed_call(
    client: Client, method: str, params: dict[str, Any], out: Output, streamer: _Streamer
) -> dict[str, Any]:
    """`method` with `stream: true`, each message to `streamer`; Ctrl-C cancels it on the
    daemon too (the connection is busy with the stream, so over a second one)."""
    try:
        result: dict[str, Any] = client.call(
            method,
            {**params, "stream": True},
            on_stream=streamer,
            timeout=max(client.timeout, ANSWER_TIMEOUT),
        )
    except KeyboardInterrupt:
        streamer.progress.done()
        _cancel(client, streamer.request_id)
        if streamer.printed:
            out.line()
        raise Interrupted("cancelled") from None
    return result


def _stream_answer(client: Client, method: str, params: dict[str, Any], out: Output) -> int:
    with out.progress("waiting for the model") as progress:
        streamer = _Streamer(out, progress)
        result = _streamed_call(client, method, params, out, streamer)
    if out.as_json:
        out.json_line({"result": result})
    else:
        if not streamer.printed and result.get("text"):
            out.write(result["text"])
        out.line()
        _print_stats(result)
    reason = result.get("stop_reason")
    if reason in ("cancelled", "timeout"):
        if not out.as_json:
            print(f"cortexctl: the answer was cut short ({reason})", file=sys.stderr)
        return EXIT_DAEMON_ERROR
    return EXIT_OK


def _print_stats(result: dict[str, Any]) -> None:
    if not sys.stderr.isatty():
        return
    ttft = result.get("ttft_ms")
    first = f", first token after {ttft:.0f} ms" if ttft is not None else ""
    print(
        f"[{result.get('eval_count', 0)} tokens, "
        f"{result.get('tokens_per_second', 0):.1f} tokens/s{first}]",
        file=sys.stderr,
    )


def _sampling(args: Any) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        params["temperature"] = args.temperature
    if args.seed is not None:
        params["seed"] = args.seed
    return params


def _ask(client: Client, args: Any, out: Output) -> int:
    if args.host:
        if args.system:
            raise UsageError("--system does not apply to --host")
        params = {"question": " ".join(args.question), **_answer_params(args)}
        return _two_parts(client, "inference.ask", params, out)[0]
    if args.no_model:
        raise UsageError("--no-model needs --host")
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": " ".join(args.question)})
    return _stream_answer(client, "inference.chat", {"messages": messages, **_sampling(args)}, out)


class _TwoParts(_Streamer):
    """Prints the deterministic part when it arrives, then the model's text under a heading."""

    def __call__(self, data: Any) -> None:
        if isinstance(data, dict) and isinstance(data.get("explanation"), dict):
            self.out.event(data)
            if not self.out.as_json:
                self.progress.done()
                self.out.write(str(data["explanation"].get("text", "")))
            return
        if (
            isinstance(data, dict)
            and data.get("text")
            and not self.printed
            and not self.out.as_json
        ):
            self.progress.done()
            self.out.line()
            self.out.line(SUMMARY_HEADING)
        super().__call__(data)


def _two_parts(
    client: Client, method: str, params: dict[str, Any], out: Output
) -> tuple[int, dict[str, Any]]:
    with out.progress("gathering facts") as progress:
        streamer = _TwoParts(out, progress)
        result = _streamed_call(client, method, params, out, streamer)
    if out.as_json:
        out.json_line({"result": result})
        return EXIT_OK, result
    summary = result.get("summary")
    if summary is not None:
        if streamer.printed:
            out.line()
        reason = summary.get("stop_reason")
        if reason in ("cancelled", "timeout"):
            print(f"cortexctl: the summary was cut short ({reason})", file=sys.stderr)
        _print_stats(summary)
    elif params.get("model", True) and result.get("summary_skipped"):
        print(f"cortexctl: no model summary: {result['summary_skipped']}", file=sys.stderr)
    return EXIT_OK, result


def _answer_params(args: Any) -> dict[str, Any]:
    params = _sampling(args)
    if args.no_model:
        params["model"] = False
    return params


def _explain(client: Client, args: Any, out: Output) -> int:
    if args.yes and not args.fix:
        raise UsageError("--yes needs --fix")
    if args.fix and args.no_model:
        raise UsageError("--fix offers the fixes the model chose: it cannot go with --no-model")
    params = {"alert_id": args.alert_id, **_answer_params(args)}
    if args.fix:
        params["suggest"] = True
    code, result = _two_parts(client, "inference.explain", params, out)
    if not args.fix:
        return code
    return _offer_fixes(client, out, result, args.yes)


def _offer_fixes(client: Client, out: Output, result: dict[str, Any], yes: bool) -> int:
    """Plan the fixes the model suggested, through the repair flow; apply them with `yes`."""
    from cortexctl.commands.repair import run_fixes

    suggestion = result.get("suggestion")
    if suggestion is None:
        if not out.as_json:
            print(
                f"cortexctl: no fix suggested: {result.get('suggestion_skipped')}", file=sys.stderr
            )
        return EXIT_OK
    if not out.as_json:
        out.line()
        out.line(SUGGESTION_HEADING)
        for fix in suggestion["fixes"]:
            target = f" [{fix['target']}]" if fix.get("target") else ""
            out.line(f"  {fix['fix_id']}{target} ({fix['safety']}): {fix['reason']}")
        out.line()
    wanted = [(str(f["fix_id"]), f.get("target")) for f in suggestion["fixes"]]
    code, done = run_fixes(client, out, wanted, yes)
    if out.as_json:
        out.json_line({"fixes": done})
    return code


def _model_status(client: Client, args: Any, out: Output) -> int:
    out.result(client.call("model.status"), lambda r: _show_model(out, r))
    return EXIT_OK


def _show_model(out: Output, result: dict[str, Any]) -> None:
    state = result["state"]
    colour = "32" if state == "ready" else "31" if state == "failed" else "33"
    rows: list[tuple[str, Any]] = [("state", out.paint(state, colour))]
    if result.get("reason"):
        rows.append(("reason", result["reason"]))
    model = result.get("model")
    if model:
        rows += [
            ("model", model["name"]),
            ("path", model["path"]),
            ("size", f"{model['size_bytes'] / MIB:.1f} MiB"),
            ("context", f"{model['n_ctx']} tokens"),
            ("threads", model["n_threads"]),
        ]
    elif result.get("path"):
        rows.append(("path", result["path"]))
    totals = result["totals"]
    in_flight = result.get("in_flight")
    rows += [
        ("queue", f"{result['queue_depth']} waiting (limit {result['queue_limit']})"),
        ("running", f"{in_flight['request_id']} ({in_flight['phase']})" if in_flight else "-"),
        (
            "requests",
            f"{totals['requests']} ({totals['completed']} completed, "
            f"{totals['cancelled']} cancelled, {totals['timed_out']} timed out, "
            f"{totals['failed']} failed)",
        ),
        ("generated", f"{totals['generated_tokens']} tokens, {totals['tokens_per_second']} /s"),
    ]
    hidden = result.get("hidden") or {}
    if hidden.get("queued") or hidden.get("in_flight"):
        rows.append(("others", f"{hidden['queued']} waiting, {hidden['in_flight']} running"))
    if result.get("rss_bytes"):
        rows.append(("memory", f"{result['rss_bytes'] / MIB:.0f} MiB resident (daemon)"))
    runner = result.get("runner") or {}
    if runner.get("pid"):
        rss = runner.get("rss_bytes") or 0
        rows.append(("runner", f"pid {runner['pid']}, {rss / MIB:.0f} MiB resident"))
    if runner.get("restarts") or runner.get("last_exit"):
        last = runner.get("last_exit")
        ended = f"; last ended by {last['how']} while {last['during']}" if last else ""
        rows.append(("restarts", f"{runner.get('restarts', 0)}{ended}"))
    if result.get("last_error"):
        error = result["last_error"]
        rows.append(("last error", f"{error['path']}: {error['reason']}"))
    out.table(rows)
    for item in result.get("queue", []):
        out.line(f"  #{item['position']} {item['request_id']} {item['priority']} uid {item['uid']}")


def _model_load(client: Client, args: Any, out: Output) -> int:
    # The daemon has its own working directory and home: resolve the path here.
    path = os.path.abspath(os.path.expanduser(args.path))
    with out.progress(f"loading {os.path.basename(path)}"):
        result = client.call(
            "model.load", {"path": path}, timeout=max(client.timeout, LOAD_TIMEOUT)
        )
    out.result(result, lambda r: _show_loaded(out, r, path))
    return EXIT_OK


def _show_loaded(out: Output, result: dict[str, Any], path: str) -> None:
    model = result.get("model") or {}
    out.line(f"loaded {model.get('name', path)} ({model.get('n_ctx', '?')} tokens of context)")


def _model_unload(client: Client, args: Any, out: Output) -> int:
    with out.progress("unloading the model"):
        result = client.call("model.unload", timeout=max(client.timeout, LOAD_TIMEOUT))
    out.result(result, lambda _: out.line("model unloaded"))
    return EXIT_OK


def _cancel_command(client: Client, args: Any, out: Output) -> int:
    out.result(
        client.call("inference.cancel", {"request_id": args.request_id}),
        lambda r: out.line(f"cancelled {r['request_id']} (was {r['phase']})"),
    )
    return EXIT_OK


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tokens", type=int, metavar="N", help="longest answer in tokens")
    parser.add_argument("--temperature", type=float, metavar="T", help="0 = deterministic")
    parser.add_argument("--seed", type=int, metavar="N", help="sampling seed")


def _add_no_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-model", action="store_true", help="only the deterministic part (with --host for ask)"
    )


def register(sub: Any) -> None:
    """Add this module's commands to the top-level subparsers."""
    from cortexctl.parsing import actions, command

    ask = command(
        sub,
        "ask",
        help="ask the local model a question (streams the answer)",
        notes=ASK_NOTES,
        examples=[
            'cortexctl ask "Why would a Linux disk fill up?"',
            'cortexctl ask --host "Why is my disk filling up?"',
            'cortexctl ask --system "Answer in one sentence." "What is swap?"',
            'cortexctl ask --json --max-tokens 64 "What is an inode?"',
        ],
    )
    ask.add_argument("question", nargs="+", help="the question")
    ask.add_argument("--system", metavar="TEXT", help="a system prompt")
    ask.add_argument(
        "--host", action="store_true", help="answer from this host's facts and the runbook"
    )
    _add_no_model(ask)
    _add_sampling(ask)
    ask.set_defaults(run=_ask)

    explain = command(
        sub,
        "explain",
        help="explain an alert: causes ranked by host facts, then a model summary",
        notes=EXPLAIN_NOTES,
        examples=[
            "cortexctl explain 3f2a9c1d",
            "cortexctl explain --no-model 3f2a9c1d",
            "cortexctl explain --json 3f2a9c1d",
            "cortexctl explain --fix 3f2a9c1d",
            "sudo cortexctl explain --fix --yes 3f2a9c1d",
        ],
    )
    explain.add_argument(
        "alert_id",
        metavar="ALERT_ID",
        help="the alert's id, or its first 8+ characters (`cortexctl alerts list`)",
    )
    _add_no_model(explain)
    _add_sampling(explain)
    explain.add_argument(
        "--fix",
        action="store_true",
        help="let the model choose among the known fixes and plan them (dry run)",
    )
    explain.add_argument(
        "--yes", "-y", action="store_true", help="with --fix: apply the chosen fixes (admin)"
    )
    explain.set_defaults(run=_explain)

    model = command(
        sub,
        "model",
        help="show, load or unload the inference model",
        examples=[
            "cortexctl model status",
            "sudo cortexctl model load /var/lib/cortex/models/other.gguf",
        ],
    )
    model_sub = actions(model, "model_command")
    command(
        model_sub,
        "status",
        help="model state, queue and totals",
        examples=["cortexctl model status", "cortexctl model status --json"],
    ).set_defaults(run=_model_status)
    load = command(
        model_sub,
        "load",
        help="load a GGUF model (admin)",
        notes="A relative path is taken from the current directory.",
        examples=[
            "sudo cortexctl model load /var/lib/cortex/models/SmolLM2-135M-Instruct.Q4_1.gguf",
            "sudo cortexctl model load ./my-model.gguf --json",
        ],
    )
    load.add_argument("path", metavar="PATH", help="path to a .gguf file")
    load.set_defaults(run=_model_load)
    command(
        model_sub,
        "unload",
        help="free the model (admin)",
        examples=["sudo cortexctl model unload"],
    ).set_defaults(run=_model_unload)

    inference = command(
        sub,
        "inference",
        help="manage inference requests",
        examples=["cortexctl inference cancel 5c2f9a0d1e3b4c6a"],
    )
    inference_sub = actions(inference, "inference_command")
    cancel = command(
        inference_sub,
        "cancel",
        help="cancel a queued or running request",
        examples=["cortexctl inference cancel 5c2f9a0d1e3b4c6a"],
    )
    cancel.add_argument("request_id", help="the request_id from the stream or model status")
    cancel.set_defaults(run=_cancel_command)
