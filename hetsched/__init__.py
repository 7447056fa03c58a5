"""hetsched: serve one ONNX model on every processor of a machine at once.

The public names are re-exported here; everything else is internal.

    with hetsched.Runtime(workers="auto", policy="dmda") as rt:
        model = rt.load("model.onnx", ratios=(0.8, 0.2), name="resnet")
        out = model.infer({"input": x})
"""

from hetsched.errors import (
    BusFormatError,
    CalibrationUnavailable,
    CyclicPlanError,
    HetschedError,
    InternalError,
    InvalidInputError,
    ModelFileError,
    PartitionError,
    PlanFormatError,
    RatiosError,
    RuntimeClosedError,
    TaskFailedError,
    UsageError,
)
from hetsched.runtime import Model, Runtime

__version__ = "0.1.0"

__all__ = [
    "BusFormatError",
    "CalibrationUnavailable",
    "CyclicPlanError",
    "HetschedError",
    "InternalError",
    "InvalidInputError",
    "Model",
    "ModelFileError",
    "PartitionError",
    "PlanFormatError",
    "RatiosError",
    "Runtime",
    "RuntimeClosedError",
    "TaskFailedError",
    "UsageError",
    "__version__",
]
