"""Timing ONNX Runtime sessions the way a CPU worker runs them: the one place sessions are made.

Profiling, calibration, the reference executor and the benches all build CPU
sessions here, so what is measured is what runs: ``intra_op_num_threads`` =
the core group's size (never more: two sessions spinning on the same cores
halve throughput), one inter-op thread, sequential execution, intra-op threads
that block when idle (a local worker's spin during a run and stop when it returns),
all graph optimizations on.
onnxruntime is imported lazily, so importing :mod:`perfmodels` stays free of it.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import onnx

if TYPE_CHECKING:
    import onnxruntime as ort

Progress = Callable[[int, int], None]
Feeds = Mapping[str, Any]
ModelSource = str | os.PathLike[str] | bytes | onnx.ModelProto

WARMUP_RUNS = 2  # the first run allocates; the second is timed to plan the count
MIN_RUNS = 3  # fewer samples make the median meaningless
MAX_RUNS = 25  # with repeats=None, never more timed runs than this or than fit the budget


def session_options(threads: int = 1, spin: bool = False) -> ort.SessionOptions:
    """The options of every CPU session hetsched makes (workers, profiling, calibration, benches).

    ``spin``: the intra-op threads spin between operators during a run and stop when it returns,
    for sessions whose cores nothing else uses meanwhile (a local worker's: the scheduler reserves
    them); otherwise they block whenever they find no work."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # ORT's own warnings (unused initializers...) are noise here
    # Several sessions share each core (one per stage; wide and narrow workers; the profiler's
    # plain and profiled sessions), and an ORT pool whose threads spin after a run steals the core
    # from the next session: GoogLeNet's 0.8/0.2 parts ran in 46 ms one after another instead of
    # the whole model's 25 ms, and 2-thread profiles timed the whole model ~2x too slow.  Spinning
    # within a run makes a multi-thread run up to ~15% faster (bench/session_spinning.py), so
    # exclusive sessions spin during a run and stop when it returns.  Sessions of other processes
    # on the same cores (Dask workers sharing a machine) must not spin at all: each one's spinning
    # threads hold the cores the other's threads wait for, and the suite's Dask tests then lost
    # their workers' heartbeats.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if spin:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def cpu_session(model: ModelSource, threads: int = 1, profile_prefix: str | None = None
                ) -> ort.InferenceSession:
    """A CPU session with a worker's options; ONNX Runtime profiling on when ``profile_prefix`` is set."""
    import onnxruntime as ort

    options = session_options(threads)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if isinstance(model, onnx.ModelProto):
        source: str | bytes = model.SerializeToString()
    else:
        source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def warm_up(session: ort.InferenceSession, feeds: Feeds, repeats: int | None, budget_s: float) -> int:
    """Run :data:`WARMUP_RUNS` runs and return how many timed runs to do.

    The first run allocates and is ignored; the second, timed, says how many
    runs fit ``budget_s`` (clamped to MIN_RUNS..MAX_RUNS) unless ``repeats`` is fixed.
    """
    session.run(None, dict(feeds))
    start = time.perf_counter()
    session.run(None, dict(feeds))
    once_s = time.perf_counter() - start
    if repeats is not None:
        return repeats
    return int(min(MAX_RUNS, max(MIN_RUNS, budget_s // max(once_s, 1e-9))))


def timed_runs(session: ort.InferenceSession, feeds: Feeds, runs: int,
               progress: Progress | None = None) -> list[float]:
    """Seconds of each of ``runs`` calls to ``session.run``."""
    samples = []
    inputs = dict(feeds)
    for done in range(1, runs + 1):
        start = time.perf_counter()
        session.run(None, inputs)
        samples.append(time.perf_counter() - start)
        if progress is not None:
            progress(done, runs)
    return samples


def median_seconds(model: ModelSource, feeds: Feeds, threads: int = 1, repeats: int | None = None,
                   budget_s: float = 1.0) -> tuple[float, list[float]]:
    """Median seconds of one run of ``model`` on ``feeds`` (and the samples), after warm-up."""
    session = cpu_session(model, threads)
    runs = warm_up(session, feeds, repeats, budget_s)
    samples = timed_runs(session, feeds, runs)
    return statistics.median(samples), samples
