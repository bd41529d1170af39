"""`cortexd --check-config` and the command-line layer, through the real entry point."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from cortexctl.client import Client
from tests.daemon import running_daemon, short_tmpdir

EXIT_CONFIG = 2
WAIT = 60.0


def cortexd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CORTEXD_")}
    return subprocess.run(
        [sys.executable, "-m", "cortexd", *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env={**clean, **(env or {})},
        check=False,
    )


def test_check_config_exits_2_and_prints_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "daemon.conf"
    path.write_text("server:\n  request_timeout: soon\nlogging:\n  level: LOUD\n")
    result = cortexd("--config", str(path), "--check-config")
    assert result.returncode == EXIT_CONFIG
    assert "invalid configuration" in result.stderr
    assert f"{path}:2: server.request_timeout: expected a number" in result.stderr
    assert f"{path}:4: logging.level: must be one of DEBUG, INFO, WARN, ERROR" in result.stderr
    assert result.stdout == ""


def test_check_config_on_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "daemon.conf"
    path.write_text("server: {request_timeout: 5\n")
    result = cortexd("--config", str(path), "--check-config")
    assert result.returncode == EXIT_CONFIG
    assert f"{path}: invalid YAML at line 2" in result.stderr


def test_check_config_ok_prints_sources_and_warnings(tmp_path: Path) -> None:
    path = tmp_path / "daemon.conf"
    path.write_text("log_level: 1\ncolour: blue\n")
    result = cortexd("--config", str(path), "--check-config")
    assert result.returncode == 0, result.stderr
    assert f"configuration OK ({path})" in result.stdout
    assert f"warning: {path}:2: colour: unknown key, ignored" in result.stderr


def test_the_daemon_refuses_to_start_on_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "daemon.conf"
    path.write_text("inference:\n  n_ctx: 1\n")
    result = cortexd("--config", str(path))
    assert result.returncode == EXIT_CONFIG
    assert f"{path}:2: inference.n_ctx: must be at least 16, got 1" in result.stderr


def test_a_bad_environment_variable_is_named(tmp_path: Path) -> None:
    path = tmp_path / "daemon.conf"
    path.write_text("{}\n")
    result = cortexd(
        "--config", str(path), "--check-config", env={"CORTEXD_SERVER__IDLE_TIMEOUT": "x"}
    )
    assert result.returncode == EXIT_CONFIG
    assert "environment variable CORTEXD_SERVER__IDLE_TIMEOUT: server.idle_timeout" in (
        result.stderr
    )


def test_flags_beat_environment_which_beats_the_file() -> None:
    env = {
        "CORTEXD_LOGGING__LEVEL": "ERROR",  # the flag below wins
        "CORTEXD_SERVER__IDLE_TIMEOUT": "200",  # beats the file
    }
    with running_daemon(
        {"server": {"idle_timeout": 100, "write_timeout": 4}},
        env=env,
        args=["--log-level", "warning"],
    ) as daemon:
        result = daemon.call("config.get")
    config = result["config"]
    assert config["logging"]["level"] == "WARN"
    assert config["server"]["idle_timeout"] == 200.0
    assert config["server"]["write_timeout"] == 4.0
    assert result["sources"] == [daemon.config_path, "environment", "command line"]


def test_socket_flag_sets_the_path() -> None:
    flag_dir = short_tmpdir()
    flag_path = os.path.join(flag_dir, "flag.sock")
    try:
        with running_daemon(args=["--socket", flag_path]) as daemon:
            assert not os.path.exists(daemon.socket_path)  # the file's path goes unused
            with Client(flag_path) as client:
                shown = client.call("config.get")["config"]["server"]["socket_path"]
            assert shown == flag_path
    finally:
        shutil.rmtree(flag_dir, ignore_errors=True)


def test_flags_read_without_argparse_match_argparse() -> None:
    """The daemon reads well-formed flags itself; argparse, built from the same
    table, must read them the same way (it handles help and usage errors)."""
    from cortexd.main import build_parser, parse_args

    cases = [
        [],
        ["--config", "/etc/x.conf"],
        ["--config=/etc/x.conf", "--check-config"],
        ["--socket", "/run/a.sock", "--log-level", "warn", "--model", ""],
        ["--log-level=DEBUG", "--state-dir", "/var/lib/c", "--model=/m.gguf"],
        ["--config", "a", "--config", "b"],
    ]
    for argv in cases:
        assert parse_args(argv) == vars(build_parser().parse_args(argv)), argv


def test_a_bad_flag_is_a_usage_error_from_argparse() -> None:
    for argv, message in (
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--config"], "argument --config: expected one argument"),
        (["--log-level", "loud"], "argument --log-level: invalid choice: 'LOUD'"),
        (["--check-config=yes"], "ignored explicit argument 'yes'"),
    ):
        result = cortexd(*argv)
        assert result.returncode == EXIT_CONFIG, argv
        assert result.stderr.startswith("usage: cortexd"), argv
        assert message in result.stderr, (argv, result.stderr)


def test_help_and_version() -> None:
    result = cortexd("--help")
    assert result.returncode == 0
    assert "--check-config" in result.stdout and "--state-dir PATH" in result.stdout
    version = cortexd("--version")
    assert version.returncode == 0 and version.stdout.startswith("cortexd ")
