"""Errors of the offline partitioner, and the root of hetsched's error tree.

The root class lives here, in the lowest layer, so that ``partitioner`` (which
imports nothing of ``hetsched``) and the runtime above it share one hierarchy.
Users import these names from :mod:`hetsched.errors`, which draws the whole tree.
"""

from __future__ import annotations


class HetschedError(Exception):
    """Base of every error hetsched raises on purpose."""


class UsageError(HetschedError, ValueError):
    """Bad user input rejected at a boundary; the message names the value and the fix."""


class ModelFileError(UsageError):
    """A model file is missing, not ONNX, truncated, or invalid."""


class RatiosError(UsageError):
    """Partition ratios that cannot be honoured (negative, not summing to 1, too many parts)."""


class PartitionError(HetschedError):
    """The partitioner could not produce a valid plan."""


class CyclicPlanError(PartitionError):
    """The graph of parts has a cycle; ``cycle`` is the path of part indices, first repeated last."""

    def __init__(self, message: str, cycle: list[int]) -> None:
        super().__init__(f"{message}: cycle {' -> '.join(map(str, cycle))}")
        self.cycle = cycle


class PlanFormatError(UsageError):
    """A plan.json that is unreadable, of another format version, or inconsistent."""


class InternalError(HetschedError):
    """A bug of ours: an invariant we promise was broken. Please report it."""
