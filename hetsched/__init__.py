"""hetsched: serve one ONNX model on every processor of a machine at once.

The public names are re-exported here; everything else is internal.  Today:
the error hierarchy and the reference executor; the runtime comes next.
"""

from hetsched.errors import (
    BusFormatError,
    CalibrationUnavailable,
    CyclicPlanError,
    HetschedError,
    InternalError,
    ModelFileError,
    PartitionError,
    PlanFormatError,
    RatiosError,
    UsageError,
)

__version__ = "0.1.0"

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
    "__version__",
]
