"""The runbook shipped with the package: it covers every check and alert source, and only
names fixes the repair registry has. A broken runbook file is refused with every problem
named by its place."""

from __future__ import annotations

import os
from typing import Any

import pytest
import yaml

from cortexd.config.schema import Config
from cortexd.explain.facts import schema
from cortexd.knowledge import KnowledgeBase, KnowledgeError, load_builtin, parse
from cortexd.logs.watcher import BUILTIN_PATTERNS
from cortexd.monitor.registry import build_checks
from cortexd.repair.methods import build_checks as repair_checks
from cortexd.repair.methods import build_fixes
from cortexd.repair.runner import FixRunner


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return load_builtin(schema())


def all_checks() -> list[Any]:
    return [*build_checks(Config()), *repair_checks(Config())]


def test_every_check_has_its_own_entry(kb: KnowledgeBase) -> None:
    for check in all_checks():
        entry = kb.find(check.id, {"check": check.id})
        assert entry is not None and entry.source == check.id, check.id


def test_every_alert_source_has_an_entry(kb: KnowledgeBase) -> None:
    specific = {
        ("monitor", ("check", "disk_space")): "monitor",
        ("healing", ("unit", "nginx.service")): "healing",
        ("repair", ("fix", "vacuum_journal")): "repair",
        ("updates", ("outcome", "failed")): "updates_failed",
        ("updates", ("outcome", "ok")): "updates_applied",
        ("journal", ("pattern", "my_own_pattern")): "journal_pattern",
        ("plugin_port_check", ("check", "plugin_port_check")): "plugin_check",
        ("backup-script", ("job", "nightly")): "external",
    }
    for pattern in BUILTIN_PATTERNS:
        entry = kb.find("journal", {"unit": "x.service", "pattern": pattern.name})
        assert entry is not None and entry.labels == {"pattern": pattern.name}, pattern.name
    for (source, (key, value)), wanted in specific.items():
        entry = kb.find(source, {key: value})
        assert entry is not None and entry.id == wanted, source


def test_every_fix_is_registered_and_every_check_fix_is_offered(kb: KnowledgeBase) -> None:
    registered = {f.id: f for f in build_fixes(Config(), FixRunner())}
    for entry in kb.entries.values():
        for fix in entry.fixes:
            assert fix.id in registered, f"{entry.id}: {fix.id}"
        for cause in entry.causes:
            assert set(cause.fixes) <= {f.id for f in entry.fixes}
    for check in all_checks():
        if check.fix_id:
            entry = kb.find(check.id, {})
            assert entry is not None
            assert check.fix_id in {f.id for f in entry.fixes}, check.id


def test_every_entry_lists_causes_and_commands_and_most_causes_have_signals(
    kb: KnowledgeBase,
) -> None:
    with_facts = [e for e in kb.entries.values() if e.facts]
    for entry in kb.entries.values():
        assert entry.causes and entry.commands, entry.id
    for entry in with_facts:
        assert any(c.when for c in entry.causes), f"{entry.id}: no cause any fact points to"


GOOD: dict[str, Any] = {
    "id": "thing",
    "match": {"source": "disk_space"},
    "title": "A thing",
    "meaning": "It means a thing.",
    "facts": ["disk_usage"],
    "causes": [
        {
            "id": "full",
            "text": "It is full",
            "when": [{"fact": "disk.usage", "at_least": {"used_percent": 90}}],
            "fixes": ["vacuum_journal"],
        }
    ],
    "commands": ["df -h {mountpoint}"],
    "fixes": [{"id": "vacuum_journal", "command": "cortexctl doctor --check disk_space --fix"}],
}


def _with(**changes: Any) -> str:
    entry = {**GOOD, **changes}
    return yaml.safe_dump({"entries": [entry]})


def _cause(**changes: Any) -> list[dict[str, Any]]:
    return [{**GOOD["causes"][0], **changes}]


def test_a_good_entry_parses() -> None:
    (entry,) = parse(_with(), "t.yaml", schema())
    assert entry.causes[0].when[0].at_least == {"used_percent": 90.0}
    assert entry.origin == "t.yaml"
    (entry,) = parse(
        _with(commands=["apt-get -s dist-upgrade", "df -h 2>/dev/null"]), "t", schema()
    )


BAD = [
    (_with(colour="red"), "entries[0] (thing): unknown key 'colour'"),
    (_with(commands=[]), "entries[0] (thing): commands: at least one read-only command"),
    (_with(facts=["crystal_ball"]), "entries[0] (thing).facts: no gatherer 'crystal_ball'"),
    (
        _with(causes=_cause(when=[{"fact": "proc.rss"}])),
        "causes[0].when[0]: fact 'proc.rss' is not gathered for this entry",
    ),
    (
        _with(causes=_cause(when=[{"fact": "disk.usage", "at_least": {"shares": 1}}])),
        "causes[0].when[0].at_least: unknown field 'shares' of disk.usage",
    ),
    (
        _with(causes=_cause(when=[{"fact": "disk.usage", "at_least": {"used_percent": "x"}}])),
        "causes[0].when[0].at_least.used_percent: must be a number",
    ),
    (
        _with(causes=_cause(when=[{"fact": "disk.usage", "matches": {"text": "(unclosed"}}])),
        "causes[0].when[0].matches.text: bad regular expression",
    ),
    (_with(commands=["rm -rf /var/log"]), "'rm' changes the host; commands here only look"),
    (
        _with(commands=["systemctl restart nginx"]),
        "'systemctl restart nginx' changes the host",
    ),
    (_with(commands=["journalctl --vacuum-size=1G"]), "changes the host"),
    (_with(commands=["df -h > /tmp/out"]), "writes a file (>)"),
    (_with(commands=["ls | sed -i s/a/b/ x"]), "'sed' changes the host"),
    (_with(commands=["df -h {disk}"]), "unknown placeholder {disk}"),
    (_with(commands=["echo 'unclosed"]), "cannot be read as a shell command"),
    (_with(causes=_cause(fixes=["restart_unit"])), "'restart_unit' is not in the entry's fixes"),
    (_with(causes=[*_cause(), *_cause()]), "cause id 'full' is used twice"),
    (
        _with(fixes=[{"id": "vacuum_journal", "command": "journalctl --vacuum-size=1G"}]),
        "command must be a cortexctl command",
    ),
    (_with(keywords=["Disk"]), "'Disk' must be one lower-case word"),
    (_with(id="Bad Id"), "id 'Bad Id' must be lower-case letters"),
    (_with(match="disk_space"), "match: is required: a mapping with source"),
    (_with(causes=[]), "causes: at least one cause is required"),
    (yaml.safe_dump({"entry": []}), "top level: expected a mapping with one key, entries"),
    ("entries: [unclosed", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "problem"), BAD, ids=[p for _, p in BAD])
def test_a_bad_runbook_is_refused_naming_the_place(text: str, problem: str) -> None:
    with pytest.raises(KnowledgeError) as caught:
        parse(text, "t.yaml", schema())
    assert any(problem in p for p in caught.value.problems), caught.value.problems
    assert all(p.startswith("t.yaml: ") for p in caught.value.problems)


def test_every_problem_is_listed_at_once() -> None:
    text = _with(colour="red", commands=["rm x"], facts=["nope"])
    with pytest.raises(KnowledgeError) as caught:
        parse(text, "t.yaml", schema())
    assert len(caught.value.problems) >= 3
    assert str(caught.value).startswith(f"{len(caught.value.problems)} problem(s) in the runbook")


def test_the_shipped_files_are_what_the_package_installs() -> None:
    here = os.path.join(os.path.dirname(load_builtin.__code__.co_filename))
    shipped = sorted(n for n in os.listdir(here) if n.endswith(".yaml"))
    origins = sorted({e.origin for e in load_builtin(schema()).entries.values()})
    assert origins == shipped
