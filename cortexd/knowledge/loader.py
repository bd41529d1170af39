"""Reading and validating runbook files.

Every problem is collected with where it is (`disk.yaml: entries[0] (disk_space):
causes[1].when[0].at_least: unknown field 'shares' of disk.file (fields: bytes,
share)`), so one run of the loader lists them all. The fact kinds, their
fields and the gatherer names come from the caller: the runbook is data and
does not know the code that gathers facts.
"""

from __future__ import annotations

import re
import shlex
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from cortexd.knowledge.model import Cause, Condition, Entry, FixRef, KnowledgeBase, Scalar

# libyaml's loader when PyYAML was built with it: ten times faster than the pure one.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_FILE_BYTES = 256 * 1024
# What a command may name in braces; filled from the alert's labels, shell-quoted.
PLACEHOLDERS = frozenset({"mountpoint", "unit", "check", "id"})
# A command an operator is told to run to *look* must not change anything.
MUTATING_PROGRAMS = frozenset(
    {"rm", "chmod", "chown", "chgrp", "kill", "pkill", "killall", "truncate", "dd", "mkfs",
     "reboot", "shutdown", "mv", "cp", "tee", "sed", "ln", "mount", "umount", "swapoff"}
)  # fmt: skip
MUTATING_VERBS = {
    "systemctl": {"start", "stop", "restart", "reload", "enable", "disable", "mask", "kill"},
    "apt": {"install", "remove", "purge", "upgrade", "full-upgrade", "autoremove"},
    "apt-get": {"install", "remove", "purge", "upgrade", "dist-upgrade", "autoremove", "clean"},
    "dpkg": {"--configure", "-i", "--install", "-r", "--remove", "-P", "--purge"},
    "journalctl": {"--vacuum-size", "--vacuum-time", "--vacuum-files", "--rotate", "--flush"},
}
SEPARATORS = frozenset({"|", "||", "&&", ";", "&", "(", ")"})
REDIRECTS = frozenset({">", ">>", ">|", "&>", "&>>"})
# apt-get's simulation flags make any verb a dry run.
SIMULATE = frozenset({"-s", "--simulate", "--dry-run", "--just-print", "--no-act"})
ENTRY_KEYS = frozenset(
    {"id", "match", "title", "meaning", "keywords", "facts", "causes", "commands", "fixes"}
)
CAUSE_KEYS = frozenset({"id", "text", "advice", "when", "fixes"})
CONDITION_KEYS = frozenset({"fact", "top", "at_least", "at_most", "equals", "matches", "weight"})
TEXT_FIELDS = frozenset({"text", "subject"})


class KnowledgeError(Exception):
    """A runbook file is invalid; `problems` says every way it is, each with its place."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"{len(problems)} problem(s) in the runbook: {shown}{more}")


@dataclass(frozen=True, slots=True)
class Schema:
    """What entries may refer to: gatherers, the fact kinds each produces, and their fields."""

    gatherers: Mapping[str, Mapping[str, frozenset[str]]]

    def kinds_of(self, names: Iterable[str]) -> dict[str, frozenset[str]]:
        kinds: dict[str, frozenset[str]] = {}
        for name in names:
            kinds.update(self.gatherers.get(name, {}))
        return kinds


class _Reader:
    """Collects problems while turning one file's YAML into entries."""

    def __init__(self, origin: str, schema: Schema) -> None:
        self.origin = origin
        self.schema = schema
        self.problems: list[str] = []

    def problem(self, where: str, text: str) -> None:
        self.problems.append(f"{self.origin}: {where}: {text}")

    def keys(self, where: str, data: Mapping[str, Any], allowed: frozenset[str]) -> None:
        for key in data:
            if key not in allowed:
                self.problem(where, f"unknown key {key!r} (accepted: {', '.join(sorted(allowed))})")

    def text(self, where: str, data: Mapping[str, Any], key: str, *, required: bool = True) -> str:
        value = data.get(key)
        if value is None:
            if required:
                self.problem(where, f"{key} is required")
            return ""
        if not isinstance(value, str) or not value.strip():
            self.problem(where, f"{key} must be a non-empty string")
            return ""
        return " ".join(value.split())

    def strings(self, where: str, value: Any) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.problem(where, "must be a list of non-empty strings")
            return []
        return list(value)

    def ident(self, where: str, value: Any) -> str:
        if not isinstance(value, str) or not ID.match(value):
            self.problem(where, f"id {value!r} must be lower-case letters, digits and _")
            return ""
        return value

    # -- entries ------------------------------------------------------------------

    def entries(self, data: Any) -> list[Entry]:
        if not isinstance(data, dict) or set(data) != {"entries"}:
            self.problem("top level", "expected a mapping with one key, entries")
            return []
        raw = data["entries"]
        if not isinstance(raw, list):
            self.problem("entries", "must be a list")
            return []
        out = []
        for i, item in enumerate(raw):
            entry = self.entry(f"entries[{i}]", item)
            if entry is not None:
                out.append(entry)
        return out

    def entry(self, where: str, data: Any) -> Entry | None:
        if not isinstance(data, dict):
            self.problem(where, "must be a mapping")
            return None
        entry_id = self.ident(f"{where}.id", data.get("id"))
        where = f"{where} ({entry_id or '?'})"
        self.keys(where, data, ENTRY_KEYS)
        source, labels = self.match(f"{where}.match", data.get("match"))
        facts = self.strings(f"{where}.facts", data.get("facts"))
        for name in facts:
            if name not in self.schema.gatherers:
                known = ", ".join(sorted(self.schema.gatherers))
                self.problem(f"{where}.facts", f"no gatherer {name!r} (known: {known})")
        kinds = self.schema.kinds_of(facts)
        fixes = self.fixes(f"{where}.fixes", data.get("fixes"))
        fix_ids = {f.id for f in fixes}
        causes = self.causes(f"{where}.causes", data.get("causes"), kinds, fix_ids)
        commands = self.strings(f"{where}.commands", data.get("commands"))
        if not commands:
            self.problem(where, "commands: at least one read-only command is required")
        for j, command in enumerate(commands):
            self.command(f"{where}.commands[{j}]", command)
        keywords = self.strings(f"{where}.keywords", data.get("keywords"))
        for word in keywords:
            if word != word.lower() or " " in word:
                self.problem(f"{where}.keywords", f"{word!r} must be one lower-case word")
        return Entry(
            id=entry_id,
            source=source,
            labels=labels,
            title=self.text(where, data, "title"),
            meaning=self.text(where, data, "meaning"),
            keywords=tuple(keywords),
            facts=tuple(facts),
            causes=tuple(causes),
            commands=tuple(commands),
            fixes=tuple(fixes),
            origin=self.origin,
        )

    def match(self, where: str, data: Any) -> tuple[str, dict[str, str]]:
        if not isinstance(data, dict):
            self.problem(where, "is required: a mapping with source (and labels)")
            return "", {}
        self.keys(where, data, frozenset({"source", "labels"}))
        source = self.text(where, data, "source")
        labels = data.get("labels") or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            self.problem(f"{where}.labels", "must map label names to strings")
            labels = {}
        return source, dict(labels)

    def fixes(self, where: str, data: Any) -> list[FixRef]:
        if data is None:
            return []
        if not isinstance(data, list):
            self.problem(where, "must be a list")
            return []
        out = []
        for i, item in enumerate(data):
            here = f"{where}[{i}]"
            if not isinstance(item, dict):
                self.problem(here, "must be a mapping with id and command")
                continue
            self.keys(here, item, frozenset({"id", "command"}))
            fix_id = self.ident(f"{here}.id", item.get("id"))
            command = self.text(here, item, "command")
            if command and not command.startswith("cortexctl "):
                self.problem(here, f"command must be a cortexctl command, got {command!r}")
            self.placeholders(here, command)
            out.append(FixRef(fix_id, command))
        return out

    def causes(
        self, where: str, data: Any, kinds: Mapping[str, frozenset[str]], fix_ids: set[str]
    ) -> list[Cause]:
        if not isinstance(data, list) or not data:
            self.problem(where, "at least one cause is required")
            return []
        out = []
        seen: set[str] = set()
        for i, item in enumerate(data):
            here = f"{where}[{i}]"
            if not isinstance(item, dict):
                self.problem(here, "must be a mapping")
                continue
            self.keys(here, item, CAUSE_KEYS)
            cause_id = self.ident(f"{here}.id", item.get("id"))
            if cause_id in seen:
                self.problem(here, f"cause id {cause_id!r} is used twice")
            seen.add(cause_id)
            when = item.get("when") or []
            if not isinstance(when, list):
                self.problem(f"{here}.when", "must be a list of conditions")
                when = []
            conditions = [
                c
                for j, raw in enumerate(when)
                if (c := self.condition(f"{here}.when[{j}]", raw, kinds)) is not None
            ]
            fixes = self.strings(f"{here}.fixes", item.get("fixes"))
            for fix_id in fixes:
                if fix_id not in fix_ids:
                    self.problem(f"{here}.fixes", f"{fix_id!r} is not in the entry's fixes")
            out.append(
                Cause(
                    id=cause_id,
                    text=self.text(here, item, "text"),
                    advice=self.text(here, item, "advice", required=False),
                    when=tuple(conditions),
                    fixes=tuple(fixes),
                )
            )
        return out

    def condition(
        self, where: str, data: Any, kinds: Mapping[str, frozenset[str]]
    ) -> Condition | None:
        if not isinstance(data, dict):
            self.problem(where, "must be a mapping")
            return None
        self.keys(where, data, CONDITION_KEYS)
        kind = data.get("fact")
        if not isinstance(kind, str) or kind not in kinds:
            self.problem(
                where,
                f"fact {kind!r} is not gathered for this entry "
                f"(its facts give: {', '.join(sorted(kinds)) or 'nothing'})",
            )
            return None
        fields = kinds[kind]
        at_least = self.numbers(f"{where}.at_least", data.get("at_least"), kind, fields)
        at_most = self.numbers(f"{where}.at_most", data.get("at_most"), kind, fields)
        equals: dict[str, Scalar] = {}
        raw_equals = data.get("equals") or {}
        if not isinstance(raw_equals, dict):
            self.problem(f"{where}.equals", "must map fields to values")
        else:
            for name, value in raw_equals.items():
                self.field_name(f"{where}.equals", name, kind, fields)
                if not isinstance(value, str | int | float | bool):
                    self.problem(f"{where}.equals.{name}", "must be a string, number or boolean")
                equals[name] = value
        matches: dict[str, re.Pattern[str]] = {}
        raw_matches = data.get("matches") or {}
        if not isinstance(raw_matches, dict):
            self.problem(f"{where}.matches", "must map fields to regular expressions")
        else:
            for name, pattern in raw_matches.items():
                self.field_name(f"{where}.matches", name, kind, fields | TEXT_FIELDS)
                try:
                    matches[name] = re.compile(str(pattern))
                except re.error as exc:
                    self.problem(f"{where}.matches.{name}", f"bad regular expression: {exc}")
        top = data.get("top", False)
        if not isinstance(top, bool):
            self.problem(f"{where}.top", "must be true or false")
            top = False
        weight = data.get("weight", 1.0)
        if not isinstance(weight, int | float) or isinstance(weight, bool) or weight <= 0:
            self.problem(f"{where}.weight", "must be a number greater than 0")
            weight = 1.0
        return Condition(kind, top, at_least, at_most, equals, matches, float(weight))

    def numbers(self, where: str, data: Any, kind: str, fields: frozenset[str]) -> dict[str, float]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.problem(where, "must map fields to numbers")
            return {}
        out = {}
        for name, value in data.items():
            self.field_name(where, name, kind, fields)
            if not isinstance(value, int | float) or isinstance(value, bool):
                self.problem(f"{where}.{name}", "must be a number")
                continue
            out[name] = float(value)
        return out

    def field_name(self, where: str, name: Any, kind: str, fields: frozenset[str]) -> None:
        if name not in fields:
            self.problem(
                where,
                f"unknown field {name!r} of {kind} (fields: {', '.join(sorted(fields)) or 'none'})",
            )

    def placeholders(self, where: str, text: str) -> None:
        for _, name, _, _ in string.Formatter().parse(text):
            if name is not None and name not in PLACEHOLDERS:
                self.problem(
                    where,
                    f"unknown placeholder {{{name}}} (known: {', '.join(sorted(PLACEHOLDERS))})",
                )

    def command(self, where: str, command: str) -> None:
        self.placeholders(where, command)
        try:
            lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            tokens = list(lexer)
        except ValueError as exc:
            self.problem(where, f"cannot be read as a shell command: {exc}")
            return
        for i, token in enumerate(tokens):
            if token in REDIRECTS and tokens[i + 1 : i + 2] != ["/dev/null"]:
                self.problem(where, "writes a file (>); commands here only look")
        words: list[str] = []
        for token in [*tokens, ";"]:
            if token not in SEPARATORS:
                words.append(token)
                continue
            if words and words[0] in MUTATING_PROGRAMS:
                self.problem(where, f"{words[0]!r} changes the host; commands here only look")
            elif words:
                verbs = MUTATING_VERBS.get(words[0], set())
                simulated = words[0] == "apt-get" and any(w in SIMULATE for w in words)
                if not simulated and any(w.split("=")[0] in verbs for w in words[1:]):
                    self.problem(where, f"{command!r} changes the host; commands here only look")
            words = []


def parse(text: str, origin: str, schema: Schema) -> list[Entry]:
    """Entries from one runbook file's text. Raises KnowledgeError listing every problem."""
    reader = _Reader(origin, schema)
    try:
        data = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        raise KnowledgeError([f"{origin}: not valid YAML: {exc}"]) from None
    entries = reader.entries(data)
    if reader.problems:
        raise KnowledgeError(reader.problems)
    return entries


def load_file(path: str, schema: Schema) -> list[Entry]:
    """Entries from a runbook file on disk (a plugin's). Raises KnowledgeError."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise KnowledgeError([f"{path}: {exc.strerror}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise KnowledgeError([f"{path}: larger than {MAX_FILE_BYTES} bytes"])
    return parse(raw.decode("utf-8", errors="replace"), path, schema)


def load_builtin(schema: Schema) -> KnowledgeBase:
    """The runbook shipped with the package. Raises KnowledgeError."""
    # importlib.resources brings pathlib and zipfile support: only when the
    # runbook is first read (the first explanation), not at every start.
    from importlib import resources

    problems: list[str] = []
    entries: list[Entry] = []
    files = sorted(
        (f for f in resources.files("cortexd.knowledge").iterdir() if f.name.endswith(".yaml")),
        key=lambda f: f.name,
    )
    for item in files:
        try:
            entries.extend(parse(item.read_text(encoding="utf-8"), item.name, schema))
        except KnowledgeError as exc:
            problems.extend(exc.problems)
    problems.extend(_duplicates(entries))
    if problems:
        raise KnowledgeError(problems)
    return KnowledgeBase(entries)


def _duplicates(entries: list[Entry]) -> list[str]:
    seen: dict[str, str] = {}
    out = []
    for entry in entries:
        if entry.id in seen:
            out.append(f"{entry.origin}: entry id {entry.id!r} is also used in {seen[entry.id]}")
        seen.setdefault(entry.id, entry.origin)
    return out


def check_fixes(kb: KnowledgeBase, known: Callable[[str], bool]) -> list[str]:
    """Problems with fix ids the fix registry does not know."""
    return [
        f"{entry.origin}: {entry.id}: fix {fix.id!r} is not registered"
        for entry in kb.entries.values()
        for fix in entry.fixes
        if not known(fix.id)
    ]
