"""The admission line: what waits for room in the runtime, one first-come-first-served line per
model, the models with something waiting served in turn.

One line for every model made a light model wait for an overloaded neighbour's whole backlog
before it (tests/test_runtime.py: one core, the batch entered 20th behind the 20 requests held
before it; before the shared line, 40th).  Triton gives each model its own queue and instances;
here the models share the workers, so when room frees up the next model in turn sends its
oldest waiting item: a light model waits about one job per other busy model, whatever their
backlogs, and each model's own requests keep their order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

Item = TypeVar("Item")


class Lines(Generic[Item]):
    """Per-key FIFO lines, popped round robin across the keys with something waiting."""

    def __init__(self) -> None:
        # key -> its waiting items, never empty; the dict's order is the turn order
        self._lines: dict[Hashable, deque[Item]] = {}

    def __bool__(self) -> bool:
        return bool(self._lines)

    def __iter__(self) -> Iterator[Item]:
        for line in self._lines.values():
            yield from line

    def append(self, key: Hashable, item: Item) -> None:
        line = self._lines.get(key)
        if line is None:  # a key that starts waiting takes its turn after those waiting already
            line = self._lines[key] = deque()
        line.append(item)

    def popleft(self) -> Item:
        """The oldest item of the key whose turn it is; that key goes to the back of the turn order."""
        key = next(iter(self._lines))
        line = self._lines.pop(key)
        item = line.popleft()
        if line:
            self._lines[key] = line
        return item

    def remove(self, key: Hashable, item: Item) -> bool:
        """Take ``item`` (compared by identity) out of ``key``'s line; whether it was there."""
        line = self._lines.get(key)
        if line is None:
            return False
        for index, waiting in enumerate(line):
            if waiting is item:
                del line[index]
                if not line:
                    del self._lines[key]
                return True
        return False

    def clear(self) -> None:
        self._lines.clear()
