"""Loading the layered config: precedence, the original flat keys, env, validation messages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cortexd.config import load_config
from cortexd.protocol import ConfigError
from tests.config.conftest import Layout


def problems(layout: Layout, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        layout.load(**kwargs)  # type: ignore[arg-type]
    return caught.value.errors


# -- precedence ------------------------------------------------------------


def test_each_layer_overrides_the_one_below(layout: Layout) -> None:
    layout.write_system(
        {
            "server": {
                "request_timeout": 1.0,
                "idle_timeout": 11.0,
                "write_timeout": 21.0,
                "shutdown_timeout": 31.0,
            }
        }
    )
    layout.write_user(
        {"server": {"idle_timeout": 12.0, "write_timeout": 22.0, "shutdown_timeout": 32.0}}
    )
    loaded = layout.load(
        env={"CORTEXD_SERVER__WRITE_TIMEOUT": "23", "CORTEXD_SERVER__SHUTDOWN_TIMEOUT": "33"},
        overrides={"server": {"shutdown_timeout": 34.0}},
    )
    server = loaded.config.server
    assert server.request_timeout == 1.0  # system file
    assert server.idle_timeout == 12.0  # user file over system
    assert server.write_timeout == 23.0  # environment over files
    assert server.shutdown_timeout == 34.0  # command line over everything
    assert server.max_request_bytes == 65536  # built-in default
    assert loaded.sources == (str(layout.system), str(layout.user), "environment", "command line")


def test_missing_system_and_user_files_mean_defaults(layout: Layout) -> None:
    loaded = layout.load()
    assert loaded.sources == ()
    assert loaded.config.server.request_timeout == 5.0
    assert loaded.warnings == ()


def test_explicit_config_names_the_only_file_read(layout: Layout) -> None:
    layout.write_system({"server": {"request_timeout": 1.0}})
    layout.write_user({"server": {"idle_timeout": 12.0}})
    explicit = layout.root / "only.conf"
    explicit.write_text("server:\n  write_timeout: 9\n")
    loaded = layout.load(explicit=str(explicit))
    assert loaded.sources == (str(explicit),)
    assert loaded.config.server.write_timeout == 9.0
    assert loaded.config.server.request_timeout == 5.0
    assert loaded.config.server.idle_timeout == 300.0


def test_explicit_config_that_does_not_exist_is_an_error(layout: Layout) -> None:
    missing = str(layout.root / "nope.conf")
    assert problems(layout, explicit=missing) == [f"{missing}: file not found"]


def test_user_file_is_found_through_home(layout: Layout) -> None:
    layout.write_user("log_level: 3\n")
    assert layout.load().config.logging.level == "ERROR"


def test_environment_is_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    explicit = tmp_path / "c.conf"
    explicit.write_text("{}\n")
    monkeypatch.setenv("CORTEXD_SERVER__IDLE_TIMEOUT", "42")
    assert load_config(str(explicit)).config.server.idle_timeout == 42.0


# -- the original daemon's flat keys ------------------------------------------------


def test_seed_flat_keys_map_to_their_sections(layout: Layout) -> None:
    layout.write_user(
        """
socket_path: /run/seed.sock
model_path: ~/.cortex/models/default.gguf
monitoring_interval_seconds: 60
enable_cve_scanning: false
enable_journald_logging: true
log_level: 2
n_threads: 3
n_ctx: 1024
use_mmap: false
"""
    )
    loaded = layout.load()
    config = loaded.config
    assert config.server.socket_path == "/run/seed.sock"
    assert config.inference.model_path == "~/.cortex/models/default.gguf"
    assert config.monitor.interval_seconds == 60.0
    assert config.monitor.enable_cve_scanning is False
    assert config.logging.target == "journal"
    assert config.logging.level == "WARN"
    assert config.inference.n_threads == 3
    assert config.inference.n_ctx == 1024
    assert config.inference.use_mmap is False
    assert loaded.warnings == ()


@pytest.mark.parametrize(("number", "name"), [(0, "DEBUG"), (1, "INFO"), (2, "WARN"), (3, "ERROR")])
def test_seed_numeric_log_levels(layout: Layout, number: int, name: str) -> None:
    layout.write_user({"log_level": number})
    assert layout.load().config.logging.level == name


def test_seed_log_level_out_of_range(layout: Layout) -> None:
    path = layout.write_user("log_level: 4\n")
    assert problems(layout) == [f"{path}:1: log_level: must be 0-3, got 4"]


def test_journald_flag_false_means_stderr(layout: Layout) -> None:
    layout.write_user({"enable_journald_logging": False})
    assert layout.load().config.logging.target == "stderr"


def test_journald_flag_must_be_boolean(layout: Layout) -> None:
    path = layout.write_user('enable_journald_logging: "sometimes"\n')
    (problem,) = problems(layout)
    assert problem.startswith(f"{path}:1: enable_journald_logging: expected true or false")


def test_seed_key_and_section_together_later_wins_in_a_later_layer(layout: Layout) -> None:
    layout.write_system({"socket_path": "/run/a.sock"})
    layout.write_user({"server": {"socket_path": "/run/b.sock"}})
    assert layout.load().config.server.socket_path == "/run/b.sock"


def test_level_spellings(layout: Layout) -> None:
    layout.write_user({"logging": {"level": "warning"}})
    assert layout.load().config.logging.level == "WARN"


# -- environment ------------------------------------------------------------


def test_environment_values_are_typed_by_their_key(layout: Layout) -> None:
    loaded = layout.load(
        env={
            "CORTEXD_SERVER__SOCKET_GROUP": "123",  # a string key keeps the text
            "CORTEXD_SERVER__MAX_CONNECTIONS": "50",
            "CORTEXD_MONITOR__ENABLE_CVE_SCANNING": "off",
            "CORTEXD_LOGGING__LEVEL": "debug",
            "CORTEXD_STATE_DIR": "/srv/cortex",
        }
    )
    config = loaded.config
    assert config.server.socket_group == "123"
    assert config.server.max_connections == 50
    assert config.monitor.enable_cve_scanning is False
    assert config.logging.level == "DEBUG"
    assert config.state_dir == "/srv/cortex"


def test_seed_keys_through_the_environment(layout: Layout) -> None:
    loaded = layout.load(env={"CORTEXD_LOG_LEVEL": "3", "CORTEXD_N_CTX": "512"})
    assert loaded.config.logging.level == "ERROR"
    assert loaded.config.inference.n_ctx == 512


def test_a_bad_environment_value_names_the_variable(layout: Layout) -> None:
    (problem,) = problems(layout, env={"CORTEXD_SERVER__REQUEST_TIMEOUT": "soon"})
    assert problem == (
        "environment variable CORTEXD_SERVER__REQUEST_TIMEOUT: server.request_timeout: "
        "expected a number, got a string 'soon'"
    )


def test_unknown_environment_key_is_a_warning(layout: Layout) -> None:
    loaded = layout.load(env={"CORTEXD_SERVER__COLOUR": "blue"})
    assert loaded.warnings == (
        "environment variable CORTEXD_SERVER__COLOUR: server.colour: unknown key, ignored",
    )


# -- validation messages -------------------------------------------------------


def test_wrong_type_names_file_line_key_and_problem(layout: Layout) -> None:
    path = layout.write_user("server:\n  max_connections: many\n")
    assert problems(layout) == [
        f"{path}:2: server.max_connections: expected an integer, got a string 'many'"
    ]


def test_out_of_range(layout: Layout) -> None:
    path = layout.write_user("inference:\n  n_ctx: 8\nserver:\n  request_timeout: 99999\n")
    assert problems(layout) == [
        f"{path}:4: server.request_timeout: must be at most 3600, got 99999",
        f"{path}:2: inference.n_ctx: must be at least 16, got 8",
    ]


def test_bad_enum(layout: Layout) -> None:
    path = layout.write_user("logging:\n  target: syslog\n")
    assert problems(layout) == [
        f"{path}:2: logging.target: must be one of auto, journal, stderr; got 'syslog'"
    ]


def test_boolean_is_not_a_number(layout: Layout) -> None:
    path = layout.write_user("server:\n  idle_timeout: yes\n")
    assert problems(layout) == [
        f"{path}:2: server.idle_timeout: expected a number, got a boolean True"
    ]


def test_invalid_yaml_names_the_line(layout: Layout) -> None:
    path = layout.write_user("server:\n  request_timeout: 5\n  idle_timeout: [1, 2\n")
    (problem,) = problems(layout)
    assert problem.startswith(f"{path}: invalid YAML at line 4")


def test_top_level_must_be_a_mapping(layout: Layout) -> None:
    path = layout.write_user("- socket_path\n- /run/x.sock\n")
    assert problems(layout) == [f"{path}: the top level must be a mapping of sections, not a list"]


def test_a_section_must_be_a_mapping(layout: Layout) -> None:
    path = layout.write_user("server: /run/cortex.sock\n")
    assert problems(layout) == [f"{path}:1: server: must be a mapping, not a string"]


def test_unreadable_file(layout: Layout) -> None:
    layout.user.mkdir(parents=True)  # a directory where the file should be
    assert problems(layout) == [f"{layout.user}: cannot read: Is a directory"]


def test_not_utf8(layout: Layout) -> None:
    layout.user.parent.mkdir(parents=True)
    layout.user.write_bytes(b"socket_path: /run/\xff.sock\n")
    assert problems(layout) == [f"{layout.user}: not UTF-8 text (byte 18)"]


def test_every_problem_is_reported_at_once_across_layers(layout: Layout) -> None:
    system = layout.write_system({"server": {"idle_timeout": -1}})
    user = layout.write_user({"inference": {"use_mmap": "maybe"}})
    found = problems(layout, overrides={"logging": {"level": "LOUD"}})
    assert found == [
        f"{system}:2: server.idle_timeout: must be at least 0.1, got -1",
        "command line: logging.level: must be one of DEBUG, INFO, WARN, ERROR; got 'LOUD'",
        f"{user}:2: inference.use_mmap: expected true or false, got a string 'maybe'",
    ]


def test_the_message_names_the_layer_that_set_the_bad_value(layout: Layout) -> None:
    layout.write_system({"server": {"request_timeout": "soon"}})
    user = layout.write_user({"server": {"request_timeout": "later"}})
    assert problems(layout) == [
        f"{user}:2: server.request_timeout: expected a number, got a string 'later'"
    ]


def test_empty_file_is_fine(layout: Layout) -> None:
    layout.write_user("# nothing here yet\n")
    loaded = layout.load()
    assert loaded.sources == (str(layout.user),)
    assert loaded.config.server.request_timeout == 5.0


# -- unknown keys ------------------------------------------------------------


def test_unknown_keys_are_warnings_not_errors(layout: Layout) -> None:
    path = layout.write_user("colour: blue\nserver:\n  request_timeout: 2\n  speed: 11\n")
    loaded = layout.load()
    assert loaded.config.server.request_timeout == 2.0
    assert set(loaded.warnings) == {
        f"{path}:1: colour: unknown key, ignored",
        f"{path}:4: server.speed: unknown key, ignored",
    }


def test_state_dir_expands_home(layout: Layout) -> None:
    layout.write_user({"state_dir": "~/cortex-state"})
    assert layout.load().config.state_dir == os.path.expanduser("~/cortex-state")


@pytest.mark.root
@pytest.mark.skipif(os.getuid() != 0, reason="the warning is about a root daemon's files")
@pytest.mark.parametrize(("owner", "mode"), [(0, 0o666), (0, 0o620), (65534, 0o644)])
def test_a_config_others_can_write_is_warned_about(layout: Layout, owner: int, mode: int) -> None:
    path = layout.write_user("log_level: 1\n")
    os.chown(path, owner, owner)
    os.chmod(path, mode)
    loaded = layout.load()
    assert loaded.config.logging.level == "INFO"  # still loaded: a warning, not an error
    assert loaded.warnings == (
        f"{path}: writable by someone other than root (owner uid {owner}, mode {mode:04o}); "
        "anyone who can write it controls the daemon",
    )


def test_a_root_owned_private_config_draws_no_warning(layout: Layout) -> None:
    path = layout.write_user("log_level: 1\n")
    os.chmod(path, 0o640)
    assert layout.load().warnings == ()
