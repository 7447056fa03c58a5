"""hetsched's error hierarchy, in one place.

::

    HetschedError                    base of every error raised on purpose
    ├── UsageError (ValueError)      bad user input; the message says what and how to fix it
    │   ├── ModelFileError           missing, truncated or non-ONNX model file
    │   ├── RatiosError              impossible partition ratios
    │   ├── PlanFormatError          unreadable or inconsistent plan.json
    │   └── BusFormatError           a bus-model document of another format
    ├── PartitionError               no valid plan could be produced
    │   └── CyclicPlanError          the graph of parts has a cycle (``.cycle``)
    ├── CalibrationUnavailable       a calibration this machine cannot run (no GPU, no cupy)
    └── InternalError                a broken invariant: a bug of ours

The classes are defined in :mod:`partitioner.errors` (the lowest layer, so the
offline partitioner and the runtime share one root) or, for the bus model, in
:mod:`perfmodels.transfer`, and re-exported here.
"""

from partitioner.errors import (
    CyclicPlanError,
    HetschedError,
    InternalError,
    ModelFileError,
    PartitionError,
    PlanFormatError,
    RatiosError,
    UsageError,
)
from perfmodels.transfer import BusFormatError, CalibrationUnavailable

__all__ = [
    "BusFormatError",
    "CalibrationUnavailable",
    "CyclicPlanError",
    "HetschedError",
    "InternalError",
    "ModelFileError",
    "PartitionError",
    "PlanFormatError",
    "RatiosError",
    "UsageError",
]
