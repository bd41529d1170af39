"""Debian version strings: which are valid, and how they order (as dpkg orders them).

A release manifest names versions that dpkg will compare when it installs
them, so "newer" must mean what it means to dpkg: epoch first, then the
upstream version, then the revision, each compared by dpkg's rule (runs of
non-digits by character, `~` before everything, even the end; runs of digits
as numbers). tests/updates/test_debversion.py checks this against
`dpkg --compare-versions`.
"""

from __future__ import annotations

import functools
import re

_VERSION = re.compile(
    r"^(?:(?P<epoch>\d+):)?(?P<upstream>[0-9][A-Za-z0-9.+~-]*?)(?:-(?P<revision>[A-Za-z0-9.+~]+))?$"
)
MAX_LENGTH = 256


def valid(version: str) -> bool:
    """Whether dpkg would accept `version` (epoch, upstream starting with a digit, revision)."""
    # A trailing `-` would be an empty revision, which dpkg refuses.
    return (
        len(version) <= MAX_LENGTH
        and not version.endswith("-")
        and _VERSION.match(version) is not None
    )


def _parts(version: str) -> tuple[int, str, str]:
    match = _VERSION.match(version)
    if match is None:
        raise ValueError(f"not a Debian version: {version!r}")
    return int(match["epoch"] or 0), match["upstream"], match["revision"] or ""


def _order(char: str) -> int:
    # dpkg's weights: digits and the end of the string 0, letters first, then
    # other symbols, and `~` below all of them.
    if not char or char.isdigit():
        return 0
    if char.isalpha():
        return ord(char)
    if char == "~":
        return -1
    return ord(char) + 256


def _compare_part(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i] if i < len(a) else "")
            bc = _order(b[j] if j < len(b) else "")
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        start_a, start_b = i, j
        while i < len(a) and a[i].isdigit():
            i += 1
        while j < len(b) and b[j].isdigit():
            j += 1
        na, nb = int(a[start_a:i] or 0), int(b[start_b:j] or 0)
        if na != nb:
            return -1 if na < nb else 1
    return 0


def compare(a: str, b: str) -> int:
    """Negative when `a` is older than `b`, 0 when equal, positive when newer.

    Raises:
        ValueError: either is not a Debian version.
    """
    epoch_a, upstream_a, revision_a = _parts(a)
    epoch_b, upstream_b, revision_b = _parts(b)
    if epoch_a != epoch_b:
        return -1 if epoch_a < epoch_b else 1
    return _compare_part(upstream_a, upstream_b) or _compare_part(revision_a, revision_b)


sort_key = functools.cmp_to_key(compare)
