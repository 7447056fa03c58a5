"""Inputs copied to their worker's NUMA node while the worker is still busy (machines of several nodes).

When dmda assigns a task to a core worker, its inputs may sit on another node: a request's arrive
wherever the receiving thread first touched them, a part's outputs are on the node of the worker
that made them.  :class:`NumaPlacer` then copies each input of at least ``MIN_BYTES`` into the
worker's node (:func:`hetsched.numa.copy_to`), on a thread pinned to that node's cores, and swaps
the copy into the request's tensors once it is whole.  Nothing waits for it: a task that starts
before its copy is done reads the original, remote but the same numbers, so placement can only
change where memory is read from, never what is computed.  Off unless asked for
(``Runtime(numa_copies=True)``): each copy costs fresh pages (a fault per 4 KiB, an mmap and an
munmap) and a copier thread on cores whose workers may be running, and it has not been measured
on a machine of several nodes yet.  One node, or no ``mbind`` here: no placer at all.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np

from hetsched import numa
from hetsched.affinity import name_os_thread
from hetsched.clock import MonotonicClock
from hetsched.platform import TransferReport
from hetsched.task import Task, WorkerSpec

log = logging.getLogger(__name__)
# Smaller tensors fit in a cache, and a copy (a page fault per 4 KiB) costs more than reading them
# across the interconnect once.
MIN_BYTES = 64 * 1024
_STOP = None


def host_node(worker: WorkerSpec) -> int:
    """The NUMA node of a core worker's memory (``host:<node>``)."""
    return int(worker.memory_node.partition(":")[2] or 0)


class NumaPlacer:
    """One copier thread per NUMA node (pinned to its cores): ``prefetch`` queues the copies."""

    def __init__(self, node_cores: Mapping[int, Sequence[int]]) -> None:
        self.copies = 0  # inputs copied and swapped in, for tests and the log
        self.skipped = 0  # copies that failed (the node's memory refused, say): their inputs stayed put
        self._inbox = {node: queue.SimpleQueue[Any]() for node in node_cores}
        self._threads = [threading.Thread(target=self._loop, args=(node, tuple(cores)), daemon=True,
                                          name=f"hetsched-numa{node}")
                         for node, cores in node_cores.items()]
        for thread in self._threads:
            thread.start()

    def prefetch(self, task: Task, values: MutableMapping[str, Any], names: Sequence[str], node: int,
                 report: TransferReport | None = None) -> None:
        """Copy those of ``values[names]`` (``task``'s inputs) that are big enough and on another
        node to ``node``; ``report`` hears of each copy swapped in."""
        inbox = self._inbox.get(node)
        if inbox is None:
            return
        for name in names:
            array = values.get(name)
            if not isinstance(array, np.ndarray) or array.nbytes < MIN_BYTES or array.dtype.hasobject:
                continue  # small, or strings (object arrays: pointers, nothing to place)
            where = numa.node_of(array)
            if where is not None and where != node:
                inbox.put((task, values, name, array, where, report))

    def _loop(self, node: int, cores: tuple[int, ...]) -> None:
        name_os_thread()
        try:
            os.sched_setaffinity(0, cores)  # the copy's reads and writes run on the node it fills
        except (AttributeError, OSError) as exc:
            log.warning("numa copier for node %d: could not pin to %s (%s)", node, cores, exc)
        inbox = self._inbox[node]
        while (item := inbox.get()) is not _STOP:
            task, values, name, array, where, report = item
            if values.get(name) is not array:
                continue  # answered already, or swapped for a copy meanwhile
            started = MonotonicClock.now()
            try:
                local = numa.copy_to(array, node)
            except Exception as exc:  # the input stays where it is; this thread keeps serving
                self.skipped += 1
                if self.skipped == 1:
                    log.warning("inputs stay where they are: %s", exc)
                continue
            # Still wanted: a finished request's tensors are cleared.  (Cleared between this test and
            # the store, the dict keeps the copy until the request's data is dropped: no one reads it.)
            if values.get(name) is array:
                values[name] = local
                self.copies += 1
                if report is not None:
                    report(task, f"host:{where}", f"host:{node}", array.nbytes, started, MonotonicClock.now())

    def stop(self) -> None:
        for inbox in self._inbox.values():
            inbox.put(_STOP)
        for thread in self._threads:
            thread.join(timeout=10)
