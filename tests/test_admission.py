"""The admission line: one FIFO line per model, the models with something waiting served in turn."""

from __future__ import annotations

from hetsched.admission import Lines


def test_keys_take_turns_and_each_keeps_its_order() -> None:
    lines: Lines[str] = Lines()
    for item in ("a1", "a2", "a3"):
        lines.append("a", item)
    lines.append("b", "b1")
    lines.append("a", "a4")
    lines.append("c", "c1")
    popped = []
    while lines:
        popped.append(lines.popleft())
    assert popped == ["a1", "b1", "c1", "a2", "a3", "a4"]


def test_a_key_that_starts_waiting_goes_after_those_waiting_already() -> None:
    lines: Lines[str] = Lines()
    lines.append("a", "a1")
    lines.append("a", "a2")
    assert lines.popleft() == "a1"  # a is alone: it keeps the turn, at the back of the order
    lines.append("b", "b1")
    assert [lines.popleft(), lines.popleft()] == ["a2", "b1"]
    assert not lines


def test_remove_takes_that_very_item_and_empties_its_key() -> None:
    lines: Lines[object] = Lines()
    same, other = [1], [1]  # equal, not identical
    lines.append("a", other)
    lines.append("b", same)
    assert not lines.remove("a", same) and lines.remove("b", same)
    assert list(lines) == [other]
    assert not lines.remove("b", same)
    lines.clear()
    assert not lines and list(lines) == []
