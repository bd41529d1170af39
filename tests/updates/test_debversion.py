"""Debian versions compared and validated as dpkg does, checked against dpkg itself."""

from __future__ import annotations

import itertools
import shutil
import subprocess

import pytest

from cortexd.updates.debversion import compare, sort_key, valid

VERSIONS = [
    "0.1.0",
    "0.1.0-1",
    "0.1.0+1",
    "0.1.0+2",
    "0.1.0~rc1",
    "0.1.0~~",
    "0.1.0.1",
    "0.1",
    "0.1.00",
    "0.10.0",
    "0.9.9",
    "1:0.0.1",
    "2:1.0-1~bpo12+1",
    "1.0a",
    "1.0+",
    "1.0-0",
    "1.0-1.1",
    "1.0-1a",
    "1.0-1-2",
]
CANDIDATES = ["1.0", "1:2", "1.0-1-2", "1.0-", "a1", "x:1", "1.0 1", "1_0", "", "1:", "1.0-a.b"]


def _dpkg() -> str:
    dpkg = shutil.which("dpkg")
    if dpkg is None:
        pytest.skip("dpkg is missing: not a Debian system")
    return dpkg


def dpkg_order(dpkg: str, a: str, b: str) -> int:
    for op, sign in (("lt", -1), ("eq", 0), ("gt", 1)):
        done = subprocess.run([dpkg, "--compare-versions", a, op, b], check=False, timeout=30)
        if done.returncode == 0:
            return sign
    raise AssertionError(f"dpkg orders neither way: {a} {b}")


def test_every_pair_orders_as_dpkg_orders_it() -> None:
    dpkg = _dpkg()
    wrong = []
    for a, b in itertools.product(VERSIONS, VERSIONS):
        ours = compare(a, b)
        if (ours > 0) - (ours < 0) != dpkg_order(dpkg, a, b):
            wrong.append((a, b))
    assert wrong == []


def test_valid_is_what_dpkg_accepts() -> None:
    dpkg = _dpkg()
    for version in [*VERSIONS, *CANDIDATES]:
        done = subprocess.run(
            [dpkg, "--validate-version", version], capture_output=True, check=False, timeout=30
        )
        assert valid(version) is (done.returncode == 0), version


def test_sort_key_puts_the_newest_last() -> None:
    assert sorted(["0.1.0+1", "0.1.0~rc1", "1:0.0.1", "0.1.0"], key=sort_key) == [
        "0.1.0~rc1",
        "0.1.0",
        "0.1.0+1",
        "1:0.0.1",
    ]
    with pytest.raises(ValueError):
        compare("not a version", "1.0")
