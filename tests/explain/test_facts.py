"""Fact gathering: the bounded walk on a real directory tree, the deadline, and isolation."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from cortexd.explain.facts import Context, Found, Gatherer, Host
from cortexd.explain.facts.disk import _telling_dirs, walk
from cortexd.explain.facts.model import MAX_FACTS_PER_KIND, MAX_TEXT
from cortexd.explain.facts.system import unit_journal
from cortexd.explain.gather import gather
from cortexd.host.commands import CommandResult, run_command

MIB = 1024 * 1024


def _tree(root: Path) -> None:
    (root / "a/b/c").mkdir(parents=True)
    (root / "a/b/c/big").write_bytes(b"x" * MIB)
    os.link(root / "a/b/c/big", root / "a/b/link")
    (root / "a/small").write_bytes(b"y" * 4096)
    (root / "top.txt").write_bytes(b"z" * 100)


def test_the_walk_sizes_directories_and_counts_a_hard_link_once(tmp_path: Path) -> None:
    _tree(tmp_path)
    seen = walk(str(tmp_path), time.monotonic() + 10)
    assert seen.complete
    a, ab = seen.dirs[str(tmp_path / "a")], seen.dirs[str(tmp_path / "a/b")]
    assert MIB <= ab < 2 * MIB, "the hard link must not count twice"
    assert a >= ab + 4096
    big = [path for _, path in seen.files if path.endswith(("/big", "/link"))]
    assert len(big) == 1
    assert seen.entries[str(tmp_path / "a")] == 2


def test_the_walk_keeps_to_its_depth_entry_and_time_limits(tmp_path: Path) -> None:
    _tree(tmp_path)
    shallow = walk(str(tmp_path), time.monotonic() + 10, max_depth=1)
    # a/b is seen (its own block counts) but not entered: the big file below is not counted.
    assert shallow.too_deep == 1 and shallow.dirs[str(tmp_path / "a/b")] < MIB
    few = walk(str(tmp_path), time.monotonic() + 10, max_entries=2)
    assert not few.complete and few.count <= 2 + 2
    late = walk(str(tmp_path), time.monotonic() - 1)
    assert not late.complete and late.count == 0


def test_a_directory_is_shown_through_the_child_that_holds_nearly_all_of_it() -> None:
    dirs = {"/m/var": 100, "/m/var/log": 95, "/m/var/log/app": 94, "/m/srv": 50, "/m/srv/a": 20}
    assert _telling_dirs(dirs) == [("/m/var/log/app", 94), ("/m/srv", 50), ("/m/srv/a", 20)]


def test_found_keeps_a_bounded_number_of_short_facts() -> None:
    found = Found()
    kept = [found.add("k", str(i), "t" * 1000, "s") for i in range(MAX_FACTS_PER_KIND + 3)]
    assert kept.count(True) == MAX_FACTS_PER_KIND
    assert all(len(f.text) <= MAX_TEXT for f in found.facts)
    assert found.add("other", "x", "multi\nline   text", "s")
    assert found.facts[-1].text == "multi line text"


def _ok(ctx: Context, found: Found) -> None:
    found.add("t.ok", "here", "it is fine", "test")


def _boom(ctx: Context, found: Found) -> None:
    found.add("t.ok", "before", "found before failing", "test")
    raise RuntimeError("probe broke")


def _stuck(ctx: Context, found: Found) -> None:
    time.sleep(1.5)  # ignores the deadline, as a hung read would


KINDS = {"t.ok": frozenset[str]()}
REGISTRY = {
    "ok": Gatherer("ok", _ok, KINDS),
    "boom": Gatherer("boom", _boom, KINDS),
    "stuck": Gatherer("stuck", _stuck, KINDS),
    "needs_unit": Gatherer("needs_unit", _ok, KINDS, needs="unit"),
}


async def test_one_gatherer_failing_or_hanging_costs_only_its_own_facts() -> None:
    host = Host(runner=run_command, kernel_clock=lambda: (0, 0, 0))
    started = time.monotonic()
    got = await gather(
        ["stuck", "boom", "ok", "needs_unit"],
        {},
        None,
        host,
        0.3,
        anyio.CapacityLimiter(4),
        registry=REGISTRY,
    )
    assert time.monotonic() - started < 1.2
    assert [f.subject for f in got.facts] == ["before", "here"]
    assert "needs_unit: the alert names no unit, so this was not looked at" in got.notes
    assert "boom failed: RuntimeError: probe broke" in got.notes
    assert "stuck did not finish within 0.3 s" in got.notes


def test_journal_lines_are_read_only_for_callers_who_may_read_the_journal() -> None:
    ran: list[list[str]] = []

    def runner(argv: Sequence[str], timeout: float) -> CommandResult:
        ran.append(list(argv))
        return CommandResult(0, "", "")

    host = Host(runner=runner, kernel_clock=lambda: (0, 0, 0))
    for journal in (False, True):
        found = Found()
        ctx = Context({"unit": "nginx.service"}, None, host, time.monotonic() + 5, journal)
        unit_journal(ctx, found)
        read = [argv for argv in ran if argv[0] == "journalctl"]
        if journal:
            assert read and read[-1][:3] == ["journalctl", "-u", "nginx.service"]
        else:
            assert read == []
            assert "the unit's journal lines are shown to admins" in found.notes[-1]
