"""Alertmanager matcher syntax."""

from __future__ import annotations

import pytest

from cortexd.alerts.matchers import MatcherError, parse_matcher, parse_matchers


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ('unit="nginx.service"', {"unit": "nginx.service"}, True),
        ("unit=nginx.service", {"unit": "nginx.service"}, True),
        ('unit!="nginx.service"', {"unit": "nginx.service"}, False),
        ('unit!="nginx.service"', {}, True),
        ('unit=""', {}, True),
        ('unit=~"ngin.*"', {"unit": "nginx.service"}, True),
        ('unit=~"ngin"', {"unit": "nginx.service"}, False),  # anchored like Alertmanager
        ('unit!~"ngin.*"', {"unit": "nginx.service"}, False),
        ('title="a \\"quoted\\" word"', {"title": 'a "quoted" word'}, True),
    ],
)
def test_matching(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_matcher(text).matches(labels) is expected


def test_brace_sets_split_on_commas_outside_quotes() -> None:
    found = parse_matchers(['{a="1,2", b!~"x|y"}'])
    assert [str(m) for m in found] == ['a="1,2"', 'b!~"x|y"']


@pytest.mark.parametrize("bad", ["", "novalue", "1a=b", 'a=~"("', "a==b"])
def test_bad_matchers_are_refused(bad: str) -> None:
    with pytest.raises(MatcherError):
        parse_matchers([bad])
