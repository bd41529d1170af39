"""Stop strings: streamed text never shows part of a stop string, and cuts at the first."""

from __future__ import annotations

from cortexd.inference.runner import _StopScanner


def stream(stops: list[str], pieces: list[str]) -> tuple[list[str], str, bool]:
    scanner = _StopScanner(stops)
    sent: list[str] = []
    for piece in pieces:
        out, hit = scanner.feed(piece)
        if out:
            sent.append(out)
        if hit:
            return sent, scanner.text, True
    tail = scanner.flush("")
    if tail:
        sent.append(tail)
    return sent, scanner.text, False


def test_without_stops_everything_streams_at_once() -> None:
    assert stream([], ["a", "b"]) == (["a", "b"], "ab", False)


def test_a_stop_split_over_pieces_is_held_back_then_cut() -> None:
    sent, text, hit = stream(["END"], ["hello E", "N", "D more"])
    assert hit
    assert text == "hello "
    assert "".join(sent) == "hello "


def test_a_false_start_is_released() -> None:
    sent, text, hit = stream(["END"], ["an E", "xample"])
    assert not hit
    assert "".join(sent) == text == "an Example"


def test_the_earliest_of_several_stops_wins() -> None:
    _, text, hit = stream(["zz", "b"], ["a b zz"])
    assert hit
    assert text == "a "
