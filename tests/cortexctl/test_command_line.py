"""cortexctl's command line as operators use it: global options anywhere, help pages
that end with examples that parse, the polling commands' fast path, and the
messages of a failing config reload."""

from __future__ import annotations

import argparse
import io
import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from cortexctl import cli
from cortexctl.errors import UsageError
from tests.daemon import DaemonProcess, running_daemon

CLI_TIMEOUT = 60
HELP_PAGE_END = "examples:"


@pytest.fixture(scope="module")
def shared_daemon() -> Iterator[DaemonProcess]:
    with running_daemon() as d:
        yield d


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(list(args), stdout=out), out.getvalue()


def pages(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser under `parser`, with the words that reach it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from pages(sub, (*path, name))


# -- global options anywhere -------------------------------------------------------


@pytest.mark.parametrize(
    "words",
    [
        ["--json", "status"],
        ["status", "--json"],
        ["config", "--json", "show", "server"],
        ["config", "show", "server", "--json"],
        ["alerts", "list", "--json", "--state", "all"],
        ["alerts", "--json"],
        ["doctor", "--check", "memory", "--json"],
        ["health", "--timeout", "30", "--json"],
        ["repair", "list", "--json"],
    ],
    ids=lambda words: " ".join(words),
)
def test_global_options_work_anywhere(shared_daemon: DaemonProcess, words: list[str]) -> None:
    # --socket goes last: after the command as well.
    code, out = run(*words, "--socket", shared_daemon.socket_path)
    assert code == 0, out
    assert isinstance(json.loads(out), dict)


def test_a_later_global_option_wins(shared_daemon: DaemonProcess, tmp_path: Path) -> None:
    missing = str(tmp_path / "none.sock")
    code, _ = run("--socket", missing, "config", "show", "--socket", shared_daemon.socket_path)
    assert code == 0
    code, _ = run("--socket", shared_daemon.socket_path, "config", "show", "--socket", missing)
    assert code == 3


# -- the polling commands' fast path -------------------------------------------------


@pytest.mark.parametrize("command", sorted(cli.FAST_COMMANDS))
@pytest.mark.parametrize(
    "globals_before, globals_after",
    [
        ([], []),
        (["--json"], []),
        ([], ["--json"]),
        (["--socket", "/x/c.sock"], ["--timeout", "2.5"]),
        (["--timeout=7", "--json"], ["--socket=/y.sock"]),
        (["--socket", "/a.sock", "--json"], ["--socket", "/b.sock", "--timeout", "1e3"]),
    ],
)
def test_fast_path_parses_as_argparse_does(
    command: str, globals_before: list[str], globals_after: list[str]
) -> None:
    words = [*globals_before, command, *globals_after]
    fast = cli.fast_parse(words)
    assert fast is not None
    slow = cli.build_parser(cli.modules_for(words)).parse_args(words)
    assert vars(fast) == vars(slow)


@pytest.mark.parametrize(
    "words",
    [
        ["status", "--help"],
        ["--jso", "status"],  # argparse would take the abbreviation; leave it to argparse
        ["status", "--timeout", "0"],
        ["status", "--timeout", "nan"],
        ["status", "--socket"],
        ["status", "--socket", "--json"],
        ["status", "extra"],
        ["status", "ping"],
        ["config", "show"],
        ["--json"],
    ],
    ids=lambda words: " ".join(words),
)
def test_fast_path_leaves_everything_else_to_argparse(words: list[str]) -> None:
    assert cli.fast_parse(words) is None


def test_polling_commands_import_neither_argparse_nor_typing(shared_daemon: DaemonProcess) -> None:
    # What keeps `cortexctl status` within a small multiple of `python -c pass`
    # (docs/performance.md): no argparse, typing, socket.py, shutil or asyncio.
    script = (
        "import io, sys, json\n"
        "from cortexctl.cli import main\n"
        "for command in ('status', 'ping', 'version', 'health'):\n"
        f"    rc = main(['--socket', {shared_daemon.socket_path!r}, command],"
        " stdout=io.StringIO())\n"
        "    assert rc == 0, (command, rc)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=CLI_TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    modules = set(orjson.loads(done.stdout))
    assert "cortexctl.commands.core" in modules
    assert modules.isdisjoint({"argparse", "typing", "socket", "shutil", "asyncio", "threading"})


# -- help pages --------------------------------------------------------------------


def test_every_help_page_ends_with_examples_that_parse(
    capsys: pytest.CaptureFixture[str],
) -> None:
    walked = 0
    for path, parser in pages(cli.build_parser()):
        code, _ = run(*path, "--help")
        assert code == 0, path
        page = capsys.readouterr().out
        assert page == parser.format_help(), path
        blocks = page.rstrip().split("\n\n")
        examples = blocks[-1].splitlines()
        assert examples[0] == HELP_PAGE_END, page
        assert len(examples) >= 2, path
        for example in examples[1:]:
            words = _example_words(example)
            # Each example runs this very page's command, and parses.
            assert words[: len(path)] == list(path), example
            try:
                cli.parse(words)
            except UsageError as exc:
                pytest.fail(f"{example!r} does not parse: {exc.message}")
        for option in ("--socket PATH", "--json", "--timeout SECONDS"):
            assert option in page, (path, option)
        walked += 1
    # The top level, 22 commands and their actions.
    assert walked > 60


def _example_words(example: str) -> list[str]:
    """The arguments of one example line: no sudo, nothing from a pipe or redirection on."""
    words = shlex.split(example.strip())
    if words[0] == "sudo":
        words = words[1:]
    assert words[0] == "cortexctl", example
    for cut in ("|", ">"):
        if cut in words:
            words = words[: words.index(cut)]
    return words[1:]


# -- usage errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    "words, exit_code",
    [
        (["--json", "frobnicate"], 2),
        (["status", "--json", "--bogus"], 2),
        (["alerts", "silence", "add", "x", "--json"], 2),
        (["doctor", "--json", "--no-such-flag"], 3),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else str(v),
)
def test_usage_errors_with_json_are_json(
    words: list[str], exit_code: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run("--socket", str(tmp_path / "none.sock"), *words)
    assert code == exit_code
    error = json.loads(out)["error"]
    assert error["data"]["name"] == "USAGE"
    assert error["message"]
    assert "usage:" in capsys.readouterr().err
