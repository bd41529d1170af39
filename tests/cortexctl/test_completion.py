"""Shell completion: what `cortexctl __complete` offers, and the bash, zsh and fish
scripts run in the real shells against a real daemon (and with none)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortexctl import completion
from cortexctl.cli import COMMAND_OWNERS, main
from tests.daemon import DaemonProcess, running_daemon
from tests.plugins.conftest import write_plugin

SHELL_TIMEOUT = 30
BIN = str(Path(sys.executable).parent)
GOOD_CHECK = 'def check(settings):\n    return {"status": "PASS", "message": "ok"}\n'


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    plugins = tmp_path_factory.mktemp("plugins")
    os.chmod(plugins.parent, 0o755)
    write_plugin(plugins, "greeter", GOOD_CHECK)
    with running_daemon({"plugins": {"directory": str(plugins)}}) as d:
        d.call("alerts.raise", {"title": "to complete", "severity": "ERROR"})
        yield d


def offered(*words: str, socket_path: str | None = None) -> list[str]:
    """The values `cortexctl __complete` prints for `words` (the last is being typed)."""
    out = io.StringIO()
    before = ["--socket", socket_path] if socket_path else []
    assert main(["__complete", *before, *words], stdout=out) == 0
    return [line.split("\t")[0] for line in out.getvalue().splitlines()]


def shell_env(daemon: DaemonProcess | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CORTEX_SOCKET"}
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env["CORTEX_SOCKET"] = daemon.socket_path if daemon else "/nonexistent/cortex.sock"
    return env


def test_the_built_in_check_tables_match_the_daemon(daemon: DaemonProcess) -> None:
    checks = daemon.call("checks.list")["checks"]
    built_in = [c for c in checks if not c["id"].startswith("plugin_")]
    assert tuple(c["id"] for c in built_in) == completion.CHECK_IDS
    assert set(completion.CATEGORIES) == {c["category"] for c in built_in}


def test_commands_subcommands_and_options() -> None:
    assert set(offered("")) == set(COMMAND_OWNERS)
    assert offered("d") == ["doctor", "dead-letter"]
    assert offered("alerts", "s") == ["show", "send", "silence"]
    assert offered("alerts", "silence", "") == ["add", "list", "rm"]
    assert offered("--json", "update", "r") == ["rollback"]
    assert set(offered("doctor", "--")) >= {"--check", "--category", "--fix", "--json", "--socket"}
    assert offered("logs", "export", "--format", "") == ["jsonl"]
    assert offered("completion", "") == ["bash", "zsh", "fish"]
    assert offered("restore", "ar") == [completion.FILES]
    assert offered("--socket", "/r") == [completion.FILES]


def test_check_ids_and_categories_need_no_daemon(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.sock")
    assert offered("doctor", "--check", "apt_", socket_path=missing) == [
        "apt_status",
        "apt_updates",
        "apt_locks",
    ]
    assert offered("doctor", "--category", "p", socket_path=missing) == [
        "packages",
        "performance",
    ]


def test_alert_ids_fix_ids_and_plugin_names_come_from_the_daemon(daemon: DaemonProcess) -> None:
    alerts = daemon.call("alerts.list")["alerts"]
    ids = [a["id"] for a in alerts]
    assert offered("alerts", "show", "", socket_path=daemon.socket_path) == ids
    first = ids[0]
    assert offered("explain", first[:6], socket_path=daemon.socket_path) == [
        i for i in ids if i.startswith(first[:6])
    ]
    fixes = [f["id"] for f in daemon.call("fixes.list")["fixes"]]
    assert offered("repair", "fix", "", socket_path=daemon.socket_path) == fixes
    assert offered("plugins", "disable", "gr", socket_path=daemon.socket_path) == ["greeter"]
    # A positional already given: nothing more to offer.
    assert offered("alerts", "show", first, "", socket_path=daemon.socket_path) == []


def test_daemon_values_are_empty_when_no_daemon_answers(tmp_path: Path) -> None:
    # A socket that accepts connections but never answers: the short timeout
    # ends the wait, and TAB shows nothing instead of hanging.
    path = str(tmp_path / "mute.sock")
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(path)
    mute.listen(8)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "cortexctl",
                "__complete",
                "--socket",
                path,
                "repair",
                "fix",
                "",
            ],
            capture_output=True,
            text=True,
            timeout=SHELL_TIMEOUT,
        )
    finally:
        mute.close()
    assert done.returncode == 0
    assert done.stdout == ""
    assert offered("repair", "fix", "", socket_path=str(tmp_path / "none.sock")) == []


def test_bash(daemon: DaemonProcess, tmp_path: Path) -> None:
    script = tmp_path / "cortexctl.bash"
    script.write_text(completion.script("bash"))
    (tmp_path / "archive.tar.gz").write_text("")

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" if w else "''" for w in ("cortexctl", *words))
        probe = (
            f"source {script}; complete -p cortexctl >/dev/null || exit 9; "
            f"COMP_WORDS=({line}); COMP_CWORD={len(words)}; _cortexctl; "
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        done = subprocess.run(
            ["bash", "--norc", "--noprofile", "-c", probe],
            capture_output=True,
            text=True,
            timeout=SHELL_TIMEOUT,
            env=shell_env(daemon),
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("heal") == ["health", "healing"]
    assert complete("alerts", "s") == ["show", "send", "silence"]
    assert complete("doctor", "--check", "time") == ["time_sync"]
    assert complete("repair", "fix", "clear") == ["clear_apt_locks"]
    assert complete("restore", "arch") == ["archive.tar.gz"]


def test_zsh(daemon: DaemonProcess, tmp_path: Path) -> None:
    # The script installed as `_cortexctl` on fpath registers with the real
    # compinit. Driving zsh's line editor needs a terminal, so the function
    # then runs with compadd and _files recording what they are given.
    zsh = shutil.which("zsh")
    assert zsh, "zsh is missing: `make test` installs it (APT_PACKAGES)"
    functions = tmp_path / "functions"
    functions.mkdir()
    (functions / "_cortexctl").write_text(completion.script("zsh"))
    probe = f"""
fpath=({functions} $fpath)
autoload -Uz compinit && compinit -u -d {tmp_path}/zcompdump
print -r -- "registered: $_comps[cortexctl]"
compadd() {{
    local name
    while (( $# )); do
        case $1 in (-a) shift; name=$1;; (-d) shift;; esac
        shift
    done
    print -rl -- ${{(P)name}}
}}
_files() {{ print -r -- FILES }}
autoload -Uz _cortexctl
words=(cortexctl alerts s); CURRENT=3; _cortexctl
words=(cortexctl doctor --category se); CURRENT=4; _cortexctl
words=(cortexctl plugins enable g); CURRENT=4; _cortexctl
words=(cortexctl backup /tm); CURRENT=3; _cortexctl
"""
    done = subprocess.run(
        [zsh, "-f", "-c", probe],
        capture_output=True,
        text=True,
        timeout=SHELL_TIMEOUT,
        env=shell_env(daemon),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == [
        "registered: _cortexctl",
        "show",
        "send",
        "silence",
        "security",
        "services",
        "greeter",
        "FILES",
        "",
    ]


def test_fish(daemon: DaemonProcess, tmp_path: Path) -> None:
    fish = shutil.which("fish")
    assert fish, "fish is missing: `make test` installs it (APT_PACKAGES)"
    script = tmp_path / "cortexctl.fish"
    script.write_text(completion.script("fish"))
    (tmp_path / "archive.tar.gz").write_text("")
    probe = (
        f"source {script}; "
        "complete -C'cortexctl alerts s'; "
        "complete -C'cortexctl repair fix clear'; "
        "complete -C'cortexctl restore arch'"
    )
    done = subprocess.run(
        [fish, "--no-config", "-c", probe],
        capture_output=True,
        text=True,
        timeout=SHELL_TIMEOUT,
        env=shell_env(daemon),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # fish shows the descriptions after a tab, sorted.
    assert lines[:3] == [
        "send\traise an alert from a script",
        "show\tshow one alert",
        "silence\tmanage silences",
    ]
    assert lines[3].startswith("clear_apt_locks\tremove stale apt/dpkg lock files")
    assert lines[4] == "archive.tar.gz"


def test_completion_scripts_work_with_no_daemon(tmp_path: Path) -> None:
    script = tmp_path / "cortexctl.bash"
    script.write_text(completion.script("bash"))
    probe = (
        f"source {script}; COMP_WORDS=(cortexctl alerts show ''); COMP_CWORD=3; _cortexctl; "
        'echo "${#COMPREPLY[@]}"'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", probe],
        capture_output=True,
        text=True,
        timeout=SHELL_TIMEOUT,
        env=shell_env(None),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"


def test_make_install_installs_the_bash_script_and_uninstall_removes_it(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    # The Makefile's own lines (from `make -n`) for the completion script, run
    # with every place pointed into tmp_path; the rest of `make install` acts
    # on the host and is not run.
    root = Path(__file__).resolve().parents[2]
    places = [f"PREFIX={sys.prefix}", f"BASHCOMPDIR={tmp_path}/completions"]
    places += [f"BINDIR={tmp_path}/bin", f"UNITDIR={tmp_path}/units", "ROOT=yes"]

    def recipe(target: str) -> list[str]:
        done = subprocess.run(
            ["make", "-n", "-s", target, *places],
            capture_output=True,
            text=True,
            timeout=SHELL_TIMEOUT,
            cwd=root,
        )
        assert done.returncode == 0, done.stderr
        return [line for line in done.stdout.splitlines() if f"{tmp_path}/completions" in line]

    install = recipe("install")
    assert len(install) == 2, install
    for line in install:
        subprocess.run(["bash", "-c", line], check=True, timeout=SHELL_TIMEOUT, cwd=root)
    installed = tmp_path / "completions" / "cortexctl"
    probe = (
        f"source {installed}; COMP_WORDS=(cortexctl version); COMP_CWORD=1; _cortexctl; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", probe],
        capture_output=True,
        text=True,
        timeout=SHELL_TIMEOUT,
        env=shell_env(daemon),
    )
    assert done.stdout.split() == ["version"], done.stderr
    (uninstall,) = recipe("uninstall")
    subprocess.run(["bash", "-c", uninstall], check=True, timeout=SHELL_TIMEOUT, cwd=root)
    assert not installed.exists()
