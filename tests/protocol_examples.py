"""The `socat` examples of docs/protocol.md: reading them, and comparing what they print.

An example is a `$ command` line in a ```console block, followed by the lines
it prints; a command with no lines after it, the last of its block, prints the
```json block that follows (the pretty `status`), and any other command with no
lines prints nothing. Printed answers shorten long values with `…` (an elided
member, array item or string tail) or with a `"...": "..."` member; those parts
are not compared.

What is compared is what a reader relies on: the same frames (answers and
stream notifications, by `id` and `seq`), result or error, the error's code
and name, and the members of every object printed in full — not values that
belong to the moment and the machine (times, ids, counts, paths).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from json.decoder import scanstring
from pathlib import Path
from typing import Any

ELLIPSIS = "…"
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


class Partial(dict[str, Any]):
    """An object printed with some members left out (`…`)."""


class PartialList(list[Any]):
    """An array printed with some items left out (`…`)."""


@dataclass
class Example:
    """One `$ command` and what the documentation says it prints."""

    command: str
    printed: list[Any]  # the decoded frames, in order
    heading: str
    line: int  # 1-based line of the command in the file
    raw_output: list[str] = field(default_factory=list)

    @property
    def request(self) -> Any:
        """The JSON request the command sends, when it is one `echo`/`printf` of JSON."""
        match = re.search(r"(?:echo|printf) '(.*?)(?:\\n)?' \|", self.command)
        if not match:
            return None
        try:
            return json.loads(match.group(1).replace("\\n", "\n").split("\n")[0])
        except ValueError:
            return None

    @property
    def method(self) -> str | None:
        request = self.request
        return request.get("method") if isinstance(request, dict) else None

    def __str__(self) -> str:
        return f"docs/protocol.md:{self.line} ({self.heading}): {self.command}"


def examples(path: Path) -> list[Example]:
    """Every `$ …socat…` command of the file's console blocks, in document order."""
    text = path.read_text()
    found: list[Example] = []
    blocks = list(_FENCE.finditer(text))
    for index, block in enumerate(blocks):
        if block.group(1) != "console":
            continue
        start_line = text.count("\n", 0, block.start()) + 2
        heading = _heading_before(text, block.start())
        lines = block.group(2).splitlines()
        commands: list[tuple[int, str, list[str]]] = []
        for offset, line in enumerate(lines):
            if line.startswith("$ "):
                commands.append((start_line + offset, line[2:], []))
            elif commands:
                commands[-1][2].append(line)
        for position, (line_no, command, output) in enumerate(commands):
            if "socat" not in command:
                continue
            last = position == len(commands) - 1
            if not output and last and index + 1 < len(blocks):
                following = blocks[index + 1]
                between = text[block.end() : following.start()]
                if following.group(1) == "json" and not between.strip():
                    found.append(Example(command, [parse(following.group(2))], heading, line_no))
                    continue
            printed = [parse(out) for out in output if out.strip()]
            found.append(Example(command, printed, heading, line_no, output))
    return found


def _heading_before(text: str, pos: int) -> str:
    headings = re.findall(r"^#+ (.+)$", text[:pos], re.M)
    return headings[-1] if headings else ""


# -- reading printed JSON, `…` included --------------------------------------------


def parse(text: str) -> Any:
    """Decode printed JSON in which `…` may stand for members, items or a value."""
    reader = _Reader(text.strip())
    value = reader.value()
    reader.space()
    if reader.pos != len(reader.text):
        raise ValueError(
            f"trailing text at {reader.pos}: {reader.text[reader.pos : reader.pos + 40]}"
        )
    return value


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def peek(self) -> str:
        self.space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise ValueError(
                f"expected {char!r} at {self.pos}: {self.text[self.pos : self.pos + 40]}"
            )
        self.pos += 1

    def value(self) -> Any:
        char = self.peek()
        if char == "{":
            return self.object()
        if char == "[":
            return self.array()
        if char == '"':
            value, self.pos = scanstring(self.text, self.pos + 1)
            return value
        if char == ELLIPSIS:
            self.pos += 1
            return ELLIPSIS
        for word, value in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return value
        match = _NUMBER.match(self.text, self.pos)
        if not match:
            raise ValueError(f"no value at {self.pos}: {self.text[self.pos : self.pos + 40]}")
        self.pos = match.end()
        number = match.group(0)
        return float(number) if any(c in number for c in ".eE") else int(number)

    def object(self) -> dict[str, Any]:
        self.expect("{")
        members: dict[str, Any] = {}
        elided = False
        while self.peek() != "}":
            if self.peek() == ELLIPSIS:
                self.pos += 1
                elided = True
            else:
                key = self.value()
                if not isinstance(key, str):
                    raise ValueError(f"object key is not a string at {self.pos}")
                self.expect(":")
                if key == "...":
                    self.value()
                    elided = True
                else:
                    members[key] = self.value()
            if self.peek() == ",":
                self.pos += 1
        self.expect("}")
        return Partial(members) if elided else members

    def array(self) -> list[Any]:
        self.expect("[")
        items: list[Any] = []
        elided = False
        while self.peek() != "]":
            if self.peek() == ELLIPSIS:
                self.pos += 1
                elided = True
            else:
                items.append(self.value())
            if self.peek() == ",":
                self.pos += 1
        self.expect("]")
        return PartialList(items) if elided else items


# -- comparing -----------------------------------------------------------------------


# Members whose value is a map keyed by data — labels, check ids, method names,
# error names, units — rather than a fixed set of fields: any keys may appear.
KEYED_BY_DATA = frozenset(
    {"labels", "annotations", "details", "checks", "methods", "errors", "by_severity"}
    | {"by_unit", "hooks", "thresholds", "counts", "totals", "config"}
)


def differences(printed: Any, actual: Any, where: str = "") -> list[str]:
    """How `actual` departs from what was printed, in the respects the docs promise.

    Objects printed whole must have the same members; a `Partial` one, an
    empty one or one keyed by data (`KEYED_BY_DATA`) at least those it shows,
    whose values are compared alike. Arrays are compared by their first item,
    when both have one. A printed `null` or `…` stands for any value (a field
    the moment fills in); other scalars must have the same JSON type.
    """
    if printed is None or printed == ELLIPSIS:
        return []
    if isinstance(printed, dict):
        if not isinstance(actual, dict):
            return [f"{where or 'value'}: printed an object, got {_kind(actual)}"]
        problems: list[str] = []
        keyed_by_data = where.rsplit(".", 1)[-1] in KEYED_BY_DATA
        missing = [k for k in printed if k not in actual]
        if missing and not keyed_by_data:
            problems.append(f"{where or 'object'}: missing members {missing}")
        if printed and not keyed_by_data and not isinstance(printed, Partial):
            extra = [k for k in actual if k not in printed]
            if extra:
                problems.append(f"{where or 'object'}: members not printed {extra}")
        for key, value in printed.items():
            if key in actual:
                problems += differences(value, actual[key], f"{where}.{key}" if where else key)
        return problems
    if isinstance(printed, list):
        if not isinstance(actual, list):
            return [f"{where or 'value'}: printed an array, got {_kind(actual)}"]
        if printed and actual:
            return differences(printed[0], actual[0], f"{where}[0]")
        return []
    if actual is None:
        return []
    if _kind(printed) != _kind(actual):
        return [f"{where or 'value'}: printed {_kind(printed)} {printed!r}, got {actual!r}"]
    return []


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


def is_stream(frame: Any) -> bool:
    return isinstance(frame, dict) and frame.get("method") == "stream" and "id" not in frame


def compare_frames(printed: list[Any], actual: list[Any]) -> list[str]:
    """Frame by frame: answers in the printed order, stream messages by (`id`, `seq`).

    A stream may run longer or shorter than printed (tokens, chunks, journal
    lines), but streams where one was printed and only then.
    """
    problems: list[str] = []
    printed_answers = [f for f in printed if not is_stream(f)]
    actual_answers = [f for f in actual if not is_stream(f)]
    if len(printed_answers) != len(actual_answers):
        return [f"printed {len(printed_answers)} answer(s), got {len(actual_answers)}: {actual}"]
    for want, got in zip(printed_answers, actual_answers, strict=True):
        problems += _compare_answer(want, got)
    printed_streams = [f for f in printed if is_stream(f)]
    actual_streams = {(f["params"]["id"], f["params"]["seq"]): f for f in actual if is_stream(f)}
    if bool(printed_streams) != bool(actual_streams):
        problems.append(
            f"printed {len(printed_streams)} stream message(s), got {len(actual_streams)}"
        )
    for want in printed_streams:
        key = (want["params"]["id"], want["params"]["seq"])
        if key in actual_streams:
            problems += differences(want, actual_streams[key], f"stream {key}")
        elif key[1] == 0:
            problems.append(f"no stream message {key}")
    return problems


def _compare_answer(want: Any, got: Any) -> list[str]:
    if isinstance(want, list):  # a batch's answer: members in any order, matched by id
        if not isinstance(got, list) or len(got) != len(want):
            return [f"printed a batch answer of {len(want)}, got {got}"]
        problems: list[str] = []
        remaining = list(got)
        for member in want:
            match = next((g for g in remaining if g.get("id") == member.get("id")), None)
            if match is None:
                problems.append(f"no answer with id {member.get('id')!r} in {got}")
                continue
            remaining.remove(match)
            problems += _compare_answer(member, match)
        return problems
    if not isinstance(got, dict):
        return [f"printed an answer object, got {got!r}"]
    if want.get("id") != got.get("id"):
        return [f"printed id {want.get('id')!r}, got {got.get('id')!r}"]
    if ("error" in want) != ("error" in got):
        return [f"printed {'an error' if 'error' in want else 'a result'}, got {got}"]
    if "error" in want:
        printed_error, actual_error = want["error"], got["error"]
        if (printed_error["code"], printed_error["data"]["name"]) != (
            actual_error["code"],
            actual_error["data"]["name"],
        ):
            return [f"printed error {printed_error['data']['name']}, got {actual_error}"]
    return differences(want, got)
