"""The operator documents stay true to the code.

Every config key of the schema is in docs/config.md's key table (with its real
type, default, bounds and restart flag) and in config/daemon.conf; the default
config file loads cleanly with the built-in defaults; every method, alias,
access level and param a real daemon registers is in docs/protocol.md, and so
is every error code; the README's make targets exist. A capability that adds a
key, a method or an error without documenting it fails here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
import yaml

from cortexctl.cli import build_parser
from cortexd.app import Daemon
from cortexd.config import Config, load_config
from cortexd.config.loader import FLAT_ALIASES
from cortexd.protocol import ErrorCode
from cortexd.server import Method
from tests.daemon import DaemonProcess
from tests.protocol_examples import Example, compare_frames, examples
from tests.protocol_world import World, example_world

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CONFIG_MD = ROOT / "docs" / "config.md"
PROTOCOL_MD = ROOT / "docs" / "protocol.md"
DAEMON_CONF = ROOT / "config" / "daemon.conf"
MAKEFILE = ROOT / "Makefile"

# The one value config/daemon.conf sets away from the built-in default: the
# model `make install` fetches (the built-in default is no model).
INSTALLED_MODEL = "/var/lib/cortex/models/SmolLM2-135M-Instruct.Q4_1.gguf"

_TYPE_WORDS: dict[Any, str] = {int: "integer", float: "number", bool: "boolean", str: "string"}
_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|(.*)\|\s*$")


@dataclasses.dataclass(frozen=True)
class Key:
    """One leaf of the config schema, e.g. `server.max_connections`."""

    dotted: str
    field: dataclasses.Field[Any]
    hint: Any

    @property
    def static_default(self) -> bool:
        return self.field.default is not dataclasses.MISSING

    @property
    def computed_default(self) -> bool:
        """The default depends on the environment (uid, XDG dirs): the file leaves it out."""
        factory = self.field.default_factory
        return not self.static_default and factory not in (dict, list, tuple)


def repeated_settings(cls: type[Any]) -> type[Any] | None:
    """The one settings dataclass of a section made of many alike entries, else None.

    `checks` is such a section: `checks.<id>` has the same keys for every
    check, so the docs describe `checks.<id>.warning` once, not per check.
    """
    hints = typing.get_type_hints(cls)
    kinds = {hints[f.name] for f in dataclasses.fields(cls)}
    if len(dataclasses.fields(cls)) > 1 and len(kinds) == 1:
        (kind,) = kinds
        if dataclasses.is_dataclass(kind):
            return typing.cast(type[Any], kind)
    return None


def repeated_sections(cls: type[Any] = Config, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted section, its entry names) for every section of alike entries."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if not dataclasses.is_dataclass(hint):
            continue
        section_cls = typing.cast(type[Any], hint)
        if repeated_settings(section_cls) is not None:
            yield f"{prefix}{f.name}", [e.name for e in dataclasses.fields(section_cls)]
        else:
            yield from repeated_sections(section_cls, f"{prefix}{f.name}.")


def schema_keys(cls: type[Any] = Config, prefix: str = "") -> Iterator[Key]:
    """Every leaf key of `cls`, recursing into section dataclasses."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if not dataclasses.is_dataclass(hint):
            yield Key(f"{prefix}{f.name}", f, hint)
            continue
        section_cls = typing.cast(type[Any], hint)
        entry = repeated_settings(section_cls)
        if entry is not None:
            yield from schema_keys(entry, f"{prefix}{f.name}.<id>.")
        else:
            yield from schema_keys(section_cls, f"{prefix}{f.name}.")


def section(text: str, heading: str) -> str:
    """The body of the `## heading` section of a Markdown text, up to the next `## `."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no '## {heading}' section"
    return match.group(1)


def table_rows(text: str) -> dict[str, list[str]]:
    """Rows of Markdown tables whose first cell is a `code` name: name -> other cells."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = _ROW.match(line)
        if match:
            rows[match.group(1)] = [c.strip() for c in match.group(2).split("|")]
    return rows


def plain(value: Any) -> Any:
    """A default as YAML reads it back: tuples are lists."""
    return list(value) if isinstance(value, tuple) else value


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# -- docs/config.md --------------------------------------------------------------------


def key_table() -> dict[str, list[str]]:
    return table_rows(section(CONFIG_MD.read_text(), "Keys"))


def test_every_config_key_is_in_the_key_table() -> None:
    documented = set(key_table())
    keys = {k.dotted for k in schema_keys()}
    assert not keys - documented, f"keys missing from docs/config.md: {sorted(keys - documented)}"
    assert not documented - keys, f"docs/config.md lists unknown keys: {documented - keys}"


@pytest.mark.parametrize("key", list(schema_keys()), ids=lambda k: k.dotted)
def test_key_table_row_matches_the_schema(key: Key) -> None:
    row = key_table().get(key.dotted)
    assert row is not None, f"{key.dotted} is not in docs/config.md"
    assert len(row) == 5, f"{key.dotted}: expected type|default|bounds|restart|meaning: {row}"
    type_cell, default_cell, bounds_cell, restart_cell, meaning = row
    if key.hint in _TYPE_WORDS:
        assert type_cell.startswith(_TYPE_WORDS[key.hint]), f"{key.dotted}: type {type_cell!r}"
    if get_origin(key.hint) is Literal:
        for choice in get_args(key.hint):
            assert f"`{choice}`" in type_cell, f"{key.dotted}: choice {choice!r} not listed"
    if key.static_default:
        literal = re.match(r"`([^`]*)`", default_cell)
        assert literal, f"{key.dotted}: default should be a `literal`, got {default_cell!r}"
        documented = yaml.safe_load(literal.group(1) or '""')
        assert documented == plain(key.field.default), f"{key.dotted}: default {default_cell}"
    for bound in ("min", "max"):
        value = key.field.metadata.get(bound)
        if value is not None:
            assert number(value) in bounds_cell, f"{key.dotted}: {bound} {value} not in bounds"
    needs_restart = "yes" if key.field.metadata.get("restart") else "no"
    assert restart_cell == needs_restart, f"{key.dotted}: restart should be {needs_restart}"
    assert meaning, f"{key.dotted}: no meaning given"


def test_every_entry_of_repeated_sections_is_named() -> None:
    text = CONFIG_MD.read_text()
    for dotted, entries in repeated_sections():
        for entry in entries:
            assert f"`{entry}`" in text, f"{dotted}: {entry} not named in docs/config.md"


def test_every_flat_alias_is_documented() -> None:
    rows = table_rows(section(CONFIG_MD.read_text(), "Flat keys of the original daemon"))
    for alias, (sect, name) in FLAT_ALIASES.items():
        assert alias in rows, f"flat key {alias} missing from docs/config.md"
        assert rows[alias][0] == f"`{sect}.{name}`", f"{alias} documented as {rows[alias][0]}"


# -- config/daemon.conf ----------------------------------------------------------------


def test_default_config_loads_with_the_built_in_defaults() -> None:
    loaded = load_config(str(DAEMON_CONF), environ={})
    assert loaded.warnings == ()
    assert loaded.sources == (str(DAEMON_CONF),)
    defaults = Config()
    expected = dataclasses.replace(
        defaults,
        inference=dataclasses.replace(defaults.inference, model_path=INSTALLED_MODEL),
    )
    assert loaded.config == expected


def listed(text: str, data: Any, dotted: str, *, commented: bool) -> bool:
    """Whether daemon.conf sets `dotted`, or with `commented` shows it as `# key: value`."""
    *sections, name = dotted.split(".")
    if not commented:
        node = data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True
    block = text
    for sect in sections:
        found = re.search(rf"^\s*{sect}:\n((?:[ \t#].*\n|\n)*)", block, re.M)
        if not found:
            return False
        block = found.group(1)
    return re.search(rf"^\s*#\s*{name}:", block, re.M) is not None


def test_default_config_lists_every_key() -> None:
    text = DAEMON_CONF.read_text()
    data = yaml.safe_load(text)
    for key in schema_keys():
        if "<id>" in key.dotted:
            continue  # entries of repeated sections: checked by name below
        # A default computed per host (uid, XDG dirs, systemd) is shown commented out.
        assert listed(text, data, key.dotted, commented=key.computed_default), (
            f"{key.dotted} is not in config/daemon.conf"
        )
    for dotted, entries in repeated_sections():
        for entry in entries:
            name = f"{dotted}.{entry}"
            assert listed(text, data, name, commented=False) or listed(
                text, data, name, commented=True
            ), f"{name} is not in config/daemon.conf"


def test_installed_model_path_is_where_make_install_puts_the_model() -> None:
    assert INSTALLED_MODEL in MAKEFILE.read_text()
    assert INSTALLED_MODEL in DAEMON_CONF.read_text()


def test_cortexd_check_config_accepts_the_default_config() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cortexd", "--config", str(DAEMON_CONF), "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "configuration OK" in done.stdout
    assert "warning" not in done.stderr.lower(), done.stderr


# -- docs/protocol.md ------------------------------------------------------------------


@pytest.fixture
def methods(tmp_path: Path) -> list[Method]:
    """The methods a real daemon registers: built by the composition root, not listed here."""
    overrides = {
        "state_dir": str(tmp_path / "state"),
        "server": {"socket_path": str(tmp_path / "c.sock")},
        "inference": {"model_path": ""},
    }
    daemon = Daemon(load_config(str(DAEMON_CONF), overrides, environ={}))
    daemon.install_features()
    registered = daemon.registry.methods()
    assert registered, "the daemon registered no methods"
    return registered


def method_sections() -> dict[str, str]:
    """`### `name`` sections under any `## Methods…` heading: name -> body.

    A chapter's introduction (before its first `###`) belongs to each of its
    methods, so params shared by a family of methods are described once.
    """
    text = PROTOCOL_MD.read_text()
    out: dict[str, str] = {}
    for chapter in re.finditer(r"^## Methods[^\n]*\n(.*?)(?=^## |\Z)", text, re.M | re.S):
        intro = re.split(r"^### ", chapter.group(1), maxsplit=1, flags=re.M)[0]
        for match in re.finditer(
            r"^### `([^`]+)`\n(.*?)(?=^### |\Z)", chapter.group(1), re.M | re.S
        ):
            assert match.group(1) not in out, f"{match.group(1)} documented twice"
            out[match.group(1)] = f"{match.group(2)}\n{intro}"
    return out


def test_every_registered_method_is_documented(methods: list[Method]) -> None:
    documented = method_sections()
    names = {m.name for m in methods}
    assert not names - documented.keys(), (
        f"undocumented methods: {sorted(names - documented.keys())}"
    )
    assert not documented.keys() - names, (
        f"documented but not registered: {documented.keys() - names}"
    )


def test_each_method_section_has_access_aliases_params_and_example(methods: list[Method]) -> None:
    documented = method_sections()
    for method in methods:
        body = documented.get(method.name, "")
        assert f"**Access:** {method.access}" in body, f"{method.name}: access {method.access}"
        for alias in method.aliases:
            assert f"`{alias}`" in body, f"{method.name}: alias {alias} not documented"
        for param in method.params:
            assert f"`{param.name}`" in body, f"{method.name}: param {param.name} not documented"
        assert re.search(r"socat (-t \d+ )?- UNIX-CONNECT:", body), (
            f"{method.name}: no socat example"
        )
        assert f'"method":"{method.name}"' in body or any(
            f'"method":"{alias}"' in body for alias in method.aliases
        ), f"{method.name}: the example does not call it"


def test_every_alias_appears_in_the_protocol(methods: list[Method]) -> None:
    text = PROTOCOL_MD.read_text()
    for method in methods:
        for alias in method.aliases:
            assert f"`{alias}`" in text


def test_error_table_matches_the_error_codes() -> None:
    text = section(PROTOCOL_MD.read_text(), "Errors")
    rows = dict(re.findall(r"^\| (-\d+) \| ([A-Z_]+)\b", text, re.M))
    assert rows == {str(int(code)): code.name for code in ErrorCode}


def test_documented_results_name_every_member_a_daemon_returns(daemon: DaemonProcess) -> None:
    documented = method_sections()
    for method, params in (
        ("ping", None),
        ("version", None),
        ("status", None),
        ("config.get", None),
        ("config.get", {"section": "server"}),
    ):
        result = daemon.call(method, params)
        for member in result:
            body = documented[method]
            assert f"`{member}`" in body or f'"{member}"' in body, f"{method}: {member}"
    status = daemon.call("status")
    body = documented["status"]
    for member in (*status["components"]["server"], *status["server"]):
        assert f"`{member}`" in body or f'"{member}"' in body, f"status: {member}"


# -- README.md -------------------------------------------------------------------------


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    first_block = re.search(r"```\w*\n(.*?)```", text, re.S)
    assert first_block
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands[:2] == ["make run", "make test"]
    assert text.index(first_block.group(0)) < text.index("\n## ")


def test_readme_lists_every_cortexctl_command() -> None:
    parser = build_parser()
    commands = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = README.read_text()
    for name in commands:
        assert f"`cortexctl {name}" in text, f"README.md does not list cortexctl {name}"


def test_documented_make_targets_exist() -> None:
    targets = set(re.findall(r"^([a-z][\w-]*):", MAKEFILE.read_text(), re.M))
    for doc in (README, CONFIG_MD, PROTOCOL_MD):
        for target in re.findall(r"`make ([a-z][\w-]*)", doc.read_text()):
            assert target in targets, f"{doc.name} mentions make {target}, which does not exist"


# -- the socat examples of docs/protocol.md, run as printed ------------------------------

# A server-side id (an upload, an inference request) lives only in the daemon that
# handed it out: an example naming one can only be told NOT_FOUND, naming that id.
SERVER_SIDE_ID = re.compile(r"\b[0-9a-f]{16}\b")


def run_order(found: list[Example]) -> list[Example]:
    """Document order, except that the examples calling `shutdown` come last, a denied one first."""
    stops = [e for e in found if e.method == "shutdown"]
    stops.sort(key=lambda e: not any(isinstance(f, dict) and "error" in f for f in e.printed))
    return [e for e in found if e.method != "shutdown"] + stops


@contextlib.contextmanager
def precondition(world: World, example: Example) -> Iterator[None]:
    """What an example's printed answer assumes beyond the world: a reload of a bad file."""
    errors = [
        f["error"]["data"]["name"] for f in example.printed if isinstance(f, dict) and "error" in f
    ]
    if "CONFIG_ERROR" not in errors:
        yield
        return
    path = Path(world.daemon.config_path)
    good = path.read_text()
    path.write_text(good + "server:\n  request_timeout: -1\n  idle_timeout: lots\n")
    try:
        yield
    finally:
        path.write_text(good)


def example_problems(example: Example, done: subprocess.CompletedProcess[str]) -> list[str]:
    if done.returncode != 0:
        return [f"exit status {done.returncode}: {done.stderr.strip()[-500:]}"]
    try:
        actual = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    except ValueError as exc:
        return [f"printed something that is not JSON lines ({exc}): {done.stdout[:500]!r}"]
    named = set(SERVER_SIDE_ID.findall(example.command))
    if named and len(actual) == 1 and "error" in actual[0]:
        error = actual[0]["error"]
        if error["data"]["name"] == "NOT_FOUND" and any(i in json.dumps(error) for i in named):
            return []
    problems = compare_frames(example.printed, actual)
    return [*problems, f"the daemon printed: {done.stdout[:1500]}"] if problems else []


def test_the_examples_are_found() -> None:
    found = examples(PROTOCOL_MD)
    assert len(found) > 60
    assert {"ping", "status", "inference.chat", "updates.apply"} <= {e.method for e in found}


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_every_socat_example_in_the_protocol_runs_as_printed() -> None:
    if os.getuid() != 0:
        pytest.skip("root-only: a journald of its own, setpriv to nobody, root-owned plugins")
    assert os.path.isfile(INSTALLED_MODEL), f"{INSTALLED_MODEL} is missing: run `make model`"
    found = examples(PROTOCOL_MD)
    failures: list[str] = []
    with example_world(found, INSTALLED_MODEL) as world:
        for example in run_order(found):
            with precondition(world, example):
                done = world.run(example)
            problems = example_problems(example, done)
            if problems:
                failures.append(f"{example}\n    " + "\n    ".join(problems))
    assert not failures, f"{len(failures)} of {len(found)} examples differ:\n" + "\n".join(failures)
