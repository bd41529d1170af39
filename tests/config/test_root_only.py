"""Which keys only root may change, read from the schema's metadata.

A key added later that names a program, a directory of code, a file to read
or who may connect must be marked root-only: the name test below catches the
usual spellings, so forgetting the mark fails here rather than in a review.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from cortexd.config.rootonly import changed_keys, root_only_keys, root_only_values
from cortexd.config.schema import Config

# Key names that say "a path, a program or a group" in this schema.
_LOOKS_ROOT_ONLY = re.compile(r"(^|_)(path|paths|dir|dirs|directory|command|file|root|group)$")


def _all_keys(cls: type[Any], prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        factory = f.default_factory
        if isinstance(factory, type) and dataclasses.is_dataclass(factory):
            keys.extend(_all_keys(factory, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_the_keys_that_name_what_root_runs_are_root_only() -> None:
    keys = set(root_only_keys())
    assert {
        "state_dir",
        "server.socket_path",
        "server.socket_group",
        "server.admin_group",
        "inference.model_path",
        "notify.rules_path",
        "metrics.textfile_path",
        "repair.root",
        "repair.config_dir",
        "repair.runtime_dir",
        "plugins.directory",
        "updates.apt_command",
        "updates.apt_lists_dir",
        "checks.disk_space.data_path",
    } <= keys


def test_every_key_named_like_a_path_program_or_group_is_root_only() -> None:
    unmarked = [
        key
        for key in _all_keys(Config)
        if _LOOKS_ROOT_ONLY.search(key.rsplit(".", 1)[-1]) and key not in root_only_keys()
    ]
    assert unmarked == [], f"mark these with metadata=_root_only() in schema.py: {unmarked}"


def test_what_a_file_sets_is_read_with_the_seed_aliases() -> None:
    document = {
        "model_path": "/m.gguf",
        "socket_path": "/run/x.sock",
        "updates": {"apt_command": ["apt-get"], "check_interval_hours": 1},
        "checks": {"memory": {"data_path": "/proc/x", "warning": 80}},
        "alerts": {"coalesce_seconds": 3},
    }
    assert root_only_values(document) == {
        "inference.model_path": "/m.gguf",
        "server.socket_path": "/run/x.sock",
        "updates.apt_command": ["apt-get"],
        "checks.memory.data_path": "/proc/x",
    }
    assert root_only_values(None) == {}
    assert root_only_values(["not", "a", "mapping"]) == {}


def test_changed_keys_counts_set_unset_and_different() -> None:
    before = {"a": 1, "b": 2, "c": 3}
    after = {"a": 1, "b": 5, "d": 4}
    assert changed_keys(before, after) == ["b", "c", "d"]


def test_docs_list_exactly_the_root_only_keys() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    block = text.split("## Root-only keys", 1)[1].split("\n## ", 1)[0]
    documented = set(
        re.findall(
            r"`([a-z_<>.]+)`",
            "\n".join(line for line in block.splitlines() if line.startswith("- ")),
        )
    )
    expected = {re.sub(r"^checks\.[a-z_]+\.", "checks.<id>.", k) for k in root_only_keys()}
    assert documented == expected
