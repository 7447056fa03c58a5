"""hetsched: serve one ONNX model on every processor of a machine at once.

The public names are re-exported here; everything else is internal.

    with hetsched.Runtime(workers="auto", policy="dmda") as rt:
        model = rt.load("model.onnx", ratios=(0.8, 0.2), name="resnet")
        out = model.infer({"input": x})

    with hetsched.Client("localhost:8001") as client:      # a `hetsched serve` daemon
        out = client.infer("resnet", {"input": x})
"""

from hetsched.client import Client
from hetsched.errors import (
    AccessDeniedError,
    BusFormatError,
    CalibrationUnavailable,
    CyclicPlanError,
    HetschedError,
    InternalError,
    InvalidInputError,
    ModelFileError,
    ModelNotFoundError,
    OverloadedError,
    PartitionError,
    PlanFormatError,
    RatiosError,
    RuntimeClosedError,
    ServerError,
    TaskFailedError,
    UsageError,
)
from hetsched.runtime import Model, Runtime

__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError",
    "BusFormatError",
    "CalibrationUnavailable",
    "Client",
    "CyclicPlanError",
    "HetschedError",
    "InternalError",
    "InvalidInputError",
    "Model",
    "ModelFileError",
    "ModelNotFoundError",
    "OverloadedError",
    "PartitionError",
    "PlanFormatError",
    "RatiosError",
    "Runtime",
    "RuntimeClosedError",
    "ServerError",
    "TaskFailedError",
    "UsageError",
    "__version__",
]
