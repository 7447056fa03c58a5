"""A Dask cluster of separate processes on this machine, as a deployment has it: a ``dask scheduler``
and ``dask worker --no-nanny`` processes, so the client's process holds only the client (a
LocalCluster would run the scheduler and the nannies inside it and bill their CPU to the client)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

START_TIMEOUT_S = 60.0


class DaskProcesses:
    """``with DaskProcesses(workers=2) as client:`` — a connected ``distributed.Client``."""

    def __init__(self, workers: int, threads: int = 1) -> None:
        self.workers = workers
        self.threads = threads
        self._scratch = tempfile.TemporaryDirectory(prefix="hetsched-dask-")
        self.scheduler_file = Path(self._scratch.name) / "scheduler.json"
        self._processes: list[subprocess.Popen[bytes]] = []
        self.client: Any = None

    def _spawn(self, module: str, *args: str) -> None:
        command = [sys.executable, "-m", module, "--scheduler-file", str(self.scheduler_file), *args]
        self._processes.append(
            subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ}
            )
        )

    def __enter__(self) -> Any:
        from distributed import Client

        self._spawn("distributed.cli.dask_scheduler", "--port", "0", "--dashboard-address", ":0")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.scheduler_file.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the Dask scheduler did not start")
            time.sleep(0.1)
        for _ in range(self.workers):
            self._spawn(
                "distributed.cli.dask_worker", "--nthreads", str(self.threads), "--no-nanny", "--no-dashboard"
            )
        self.client = Client(scheduler_file=str(self.scheduler_file))
        self.client.wait_for_workers(self.workers, timeout=START_TIMEOUT_S)
        return self.client

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.client is not None:
            self.client.close()
        for process in reversed(self._processes):
            process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self._scratch.cleanup()
