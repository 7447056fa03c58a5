"""Network links of a Dask cluster, calibrated like StarPU's bus: a few sizes each way, fitted to
``latency + bytes / bandwidth`` (perfmodels.transfer), then refined from the transfers tasks make.

Links measured: this process to each worker (a request's inputs travel that way, inline in the
task's message) and each worker to each other (a part's outputs read by the next part's worker,
peer to peer).  Addresses change when workers restart, so links are measured at start and when a
worker joins rather than stored.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from distributed.protocol import to_serialize

from perfmodels.transfer import BusModel, fit_latency_bandwidth

SIZES = (1024, 64 * 1024, 1024 * 1024)  # spans latency-bound to bandwidth-bound on a LAN
REPEATS = 3
NETWORK = "network"


def memory_node(address: str) -> str:
    """The memory node of the Dask worker at ``address`` (perfmodels.transfer's naming)."""
    return f"worker:{address}"


async def _client_to_worker(rpc: Any, address: str, sizes: Sequence[int], repeats: int) -> list[float]:
    medians = []
    await rpc(address).hetsched_echo(payload=None)  # opens the connection
    for nbytes in sizes:
        payload = np.zeros(nbytes, np.uint8)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            await rpc(address).hetsched_echo(payload=to_serialize(payload))
            times.append(time.perf_counter() - start)
        medians.append(statistics.median(times))
    return medians


async def calibrate_links(
    rpc: Any,
    bus: BusModel,
    client_node: str,
    new: Sequence[str],
    known: Sequence[str] = (),
    sizes: Sequence[int] = SIZES,
    repeats: int = REPEATS,
) -> None:
    """Measure the links of workers ``new`` to this process and to each other and ``known``."""
    everyone = list(known) + [a for a in new if a not in known]
    for address in new:
        seconds = await _client_to_worker(rpc, address, sizes, repeats)
        latency, bandwidth = fit_latency_bandwidth(list(zip(sizes, seconds)))
        bus.set_link(client_node, memory_node(address), NETWORK, latency, bandwidth)
        bus.set_link(memory_node(address), client_node, NETWORK, latency, bandwidth)
    pairs = [(src, dst) for src in everyone for dst in everyone if src != dst and (src in new or dst in new)]
    for src, dst in pairs:
        answer = await rpc(dst).hetsched_pull(peer=src, sizes=list(sizes), repeats=repeats)
        latency, bandwidth = fit_latency_bandwidth(list(zip(sizes, answer["seconds"])))
        bus.set_link(memory_node(src), memory_node(dst), NETWORK, latency, bandwidth)
