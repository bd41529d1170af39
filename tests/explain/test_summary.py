"""The guard on the model's summary: whole sentences only, and a stop at the first repeat."""

from __future__ import annotations

from cortexd.explain.summary import Guard


def test_text_is_passed_on_in_whole_sentences() -> None:
    guard = Guard()
    assert guard.feed("The disk is") == ""
    assert guard.feed(" full. One log") == "The disk is full. "
    assert guard.feed(" grew.") == ""
    assert guard.finish() == "One log grew."
    assert guard.kept == "The disk is full. One log grew."
    assert not guard.stopped


def test_a_repeated_sentence_stops_the_summary_before_it() -> None:
    guard = Guard()
    shown = guard.feed("Check the network. The host has no route. Check  the network. More.")
    assert shown == "Check the network. The host has no route. "
    assert guard.stopped
    assert guard.feed("Anything else.") == "" and guard.finish() == ""
    assert guard.kept == "Check the network. The host has no route. "


def test_one_word_over_and_over_stops_it_too() -> None:
    guard = Guard()
    assert guard.feed("It is fine. A permission permission permission") == "It is fine. "
    assert not guard.stopped
    assert guard.feed(" permission") == ""
    assert guard.stopped and guard.finish() == ""
