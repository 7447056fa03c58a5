"""hetsched's error hierarchy, in one place.

::

    HetschedError                    base of every error raised on purpose
    ├── UsageError (ValueError)      bad user input; the message says what and how to fix it
    │   ├── ModelFileError           missing, truncated or non-ONNX model file
    │   ├── RatiosError              impossible partition ratios
    │   ├── PlanFormatError          unreadable or inconsistent plan.json
    │   ├── BusFormatError           a bus-model document of another format
    │   ├── InvalidInputError        infer() inputs of the wrong name, dtype or shape
    │   └── ModelNotFoundError       a request for a model that is not loaded (HTTP 404)
    ├── PartitionError               no valid plan could be produced
    │   └── CyclicPlanError          the graph of parts has a cycle (``.cycle``)
    ├── CalibrationUnavailable       a calibration this machine cannot run (no GPU, no cupy)
    ├── TaskFailedError              a part failed: ``.task``, ``.worker``, cause = the original error
    ├── RuntimeClosedError           work submitted to a closed runtime
    ├── OverloadedError              a model's queue is full: retry later (HTTP 503)
    ├── AccessDeniedError            a restricted request without the server's secret header (HTTP 403)
    ├── ServerError                  an error answered by a hetsched or Triton server (``.status``)
    ├── WorkerLostError              a cluster worker left holding a request's data (it is resent)
    ├── DeviceUnavailableError       a device's execution provider did not load (a GPU without CUDA)
    ├── RemoteTaskError              a part raised on a cluster worker (the message is the remote one)
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


class InvalidInputError(UsageError):
    """Inputs to ``infer``/``submit`` that do not match the model; raised before anything is queued."""


class TaskFailedError(HetschedError):
    """A task of the request failed; ``task`` and ``worker`` say where, ``__cause__`` says why."""

    def __init__(self, message: str, task: object, worker: str) -> None:
        super().__init__(message)
        self.task = task
        self.worker = worker


class RuntimeClosedError(HetschedError):
    """The runtime was closed; load models and submit requests to an open one."""


class ModelNotFoundError(UsageError):
    """No model of that name (or version) is loaded."""


class OverloadedError(HetschedError):
    """A model's queue of accepted requests is full; nothing was queued, the caller may retry."""


class AccessDeniedError(HetschedError):
    """A request to load or unload models without the header the server was started to require."""


class ServerError(HetschedError):
    """An error a server answered with; ``status`` is the HTTP status or the gRPC status code name."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


class WorkerLostError(HetschedError):
    """A cluster worker died or left while it ran, or held data of, a request: the runtime resends
    the request to the remaining workers (a few times), then answers with this error."""


class DeviceUnavailableError(HetschedError):
    """A worker's device could not be used: ONNX Runtime did not enable its execution provider."""


class RemoteTaskError(HetschedError):
    """A part raised on a cluster worker; the message carries the worker's error type and text."""


__all__ = [
    "AccessDeniedError",
    "InvalidInputError",
    "ModelNotFoundError",
    "OverloadedError",
    "RuntimeClosedError",
    "ServerError",
    "TaskFailedError",
    "WorkerLostError",
    "DeviceUnavailableError",
    "RemoteTaskError",
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
