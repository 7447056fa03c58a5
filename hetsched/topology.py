"""The machine's processors: CPU packages, NUMA nodes and cores (from /sys and psutil), GPUs, and
the worker layout built on them.

Accelerators (a DPU, an NPU) are named by their ONNX Runtime execution provider, as in a
session's ``providers`` list (``"VitisAIExecutionProvider"`` or ``(name, {options})``): one
coreless worker each, whose sessions use that provider with the CPU's behind it.

GPUs are the CUDA devices ONNX Runtime can use: none unless its CUDA execution provider is
available (the ``onnxruntime-gpu`` build), numbered and named by the CUDA driver as this
process sees them.  Each GPU yields ``streams`` workers
(``cuda:<name>``): a session's CUDA provider runs on a stream of its own, so workers with
their own sessions on one GPU are its streams, whose tasks the scheduler runs at the same time
(how much the GPU overlaps them is not measured: no GPU was at hand).

Core groups come from the NUMA nodes (``"numa"``), the sockets (``"socket"``),
an explicit ``"NxK"`` (N groups of K cores, in core order) or explicit core lists
(``"0-3;4-7"``: groups split by ``;``, each in the kernel's cpulist format).  Each group of more than one
core yields one *wide* worker (all its cores, ``cpu:<K>t``) and K *narrow*
workers (one core each, ``cpu:1t``) over the same cores; the scheduler never
runs two of them on one core at once.  ``"auto"`` groups by NUMA node.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hetsched.errors import UsageError
from hetsched.task import WorkerSpec

log = logging.getLogger(__name__)
SYS_CPU = Path("/sys/devices/system/cpu")
SYS_NODE = Path("/sys/devices/system/node")


@dataclass(frozen=True)
class Core:
    id: int  # OS logical CPU number
    package: int
    numa_node: int


@dataclass(frozen=True)
class Topology:
    """What this process may run on: its allowed cores, with their package and NUMA node."""

    cores: tuple[Core, ...]

    @property
    def numa_nodes(self) -> list[int]:
        return sorted({c.numa_node for c in self.cores})

    def node_cores(self) -> dict[int, list[int]]:
        """Each NUMA node's cores (of those this process may use)."""
        return {node: [c.id for c in self.cores if c.numa_node == node] for node in self.numa_nodes}

    @property
    def packages(self) -> list[int]:
        return sorted({c.package for c in self.cores})


def parse_cpu_list(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    out: list[int] = []
    for chunk in text.strip().split(","):
        if not chunk:
            continue
        low, _, high = chunk.partition("-")
        out.extend(range(int(low), int(high or low) + 1))
    return out


def discover(sys_cpu: Path = SYS_CPU, sys_node: Path = SYS_NODE) -> Topology:
    """Read the topology of the cores this process may use (its affinity mask)."""
    allowed = sorted(os.sched_getaffinity(0))
    node_of: dict[int, int] = {}
    for node_dir in sorted(sys_node.glob("node[0-9]*")):
        cpulist = node_dir / "cpulist"
        if cpulist.is_file():
            for cpu in parse_cpu_list(cpulist.read_text()):
                node_of[cpu] = int(node_dir.name[4:])
    cores = []
    for cpu in allowed:
        package_file = sys_cpu / f"cpu{cpu}" / "topology" / "physical_package_id"
        package = int(package_file.read_text()) if package_file.is_file() else 0
        cores.append(Core(cpu, package, node_of.get(cpu, 0)))
    return Topology(tuple(cores))


def core_groups(topology: Topology, spec: str = "auto") -> list[tuple[int, ...]]:
    """Cores per group for ``spec``: "auto" | "numa" | "socket" | "NxK" | core lists ("0-3;4-7")."""
    if spec in ("auto", "numa"):
        return [tuple(c.id for c in topology.cores if c.numa_node == n) for n in topology.numa_nodes]
    if spec == "socket":
        return [tuple(c.id for c in topology.cores if c.package == p) for p in topology.packages]
    if spec and spec[0].isdigit() and "x" not in spec:
        return _listed_groups(topology, spec)
    count, sep, size = spec.partition("x")
    if not sep or not count.isdigit() or not size.isdigit() or int(count) < 1 or int(size) < 1:
        raise UsageError(f"core groups {spec!r}: use auto, numa, socket, NxK (e.g. 2x1 for two 1-core "
                         "groups) or core lists (e.g. 0-1;2,3)")
    ids = [c.id for c in topology.cores]
    need = int(count) * int(size)
    if need > len(ids):
        raise UsageError(f"core groups {spec!r} need {need} cores but this process may use {len(ids)}; "
                         f"ask for at most {len(ids)} in all")
    return [tuple(ids[i * int(size):(i + 1) * int(size)]) for i in range(int(count))]


def _listed_groups(topology: Topology, spec: str) -> list[tuple[int, ...]]:
    """Groups given core by core (``"0-1;2,3"``): a layout NxK cannot say, such as groups that cross
    NUMA nodes, or cores left to something else."""
    allowed = {c.id for c in topology.cores}
    groups: list[tuple[int, ...]] = []
    for text in spec.split(";"):
        try:
            cores = tuple(parse_cpu_list(text))
        except ValueError:
            cores = ()
        if not cores:
            raise UsageError(f"core groups {spec!r}: {text!r} is not a core list; write e.g. 0-3;4-7 "
                             "(or NxK, e.g. 2x1)")
        groups.append(cores)
    counts = Counter(core for group in groups for core in group)
    repeated = sorted(core for core, count in counts.items() if count > 1)
    if repeated:
        raise UsageError(f"core groups {spec!r}: cores {repeated} are in more than one group; "
                         "a core belongs to one group")
    outside = sorted(set(counts) - allowed)
    if outside:
        raise UsageError(f"core groups {spec!r}: this process may not use cores {outside}; "
                         f"it may use {sorted(allowed)}")
    return groups


def cpu_workers(topology: Topology, spec: str = "auto", narrow: bool = True) -> list[WorkerSpec]:
    """Per group: a wide worker over all its cores (listed first, so an idle machine offers it
    first) and, with ``narrow``, one worker per core; a one-core group has just one worker."""
    node_of = {c.id: c.numa_node for c in topology.cores}
    workers: list[WorkerSpec] = []
    for index, cores in enumerate(core_groups(topology, spec)):
        memory = f"host:{node_of[cores[0]]}"
        workers.append(WorkerSpec(f"cpu{index}", f"cpu:{len(cores)}t", memory, cores))
        if narrow and len(cores) > 1:
            # a narrow worker's memory is its own core's node (a listed group may cross nodes)
            workers += [WorkerSpec(f"cpu{index}.{core}", "cpu:1t", f"host:{node_of[core]}", (core,))
                        for core in cores]
    log.info("workers %s: %s", spec, ", ".join(f"{w.name}={w.cores}" for w in workers))
    return workers


def _first_host_node(topology: Topology) -> str:
    """The memory node of a device worker's host arrays (not yet placed near its device)."""
    return f"host:{topology.numa_nodes[0] if topology.cores else 0}"


@dataclass(frozen=True)
class Gpu:
    index: int  # the CUDA device number this process sees (after CUDA_VISIBLE_DEVICES)
    name: str


def discover_gpus() -> list[Gpu]:
    """The CUDA GPUs ONNX Runtime's CUDA provider can run on (none without that provider), numbered
    and named by the CUDA driver itself, so as CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER show them
    to this process (UUIDs and MIG slices included)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return []
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        log.warning("the CUDA provider is available but the CUDA driver is not (%s): no GPU workers", exc)
        return []
    count, device = ctypes.c_int(0), ctypes.c_int(0)
    name = ctypes.create_string_buffer(256)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        log.warning("the CUDA driver found no usable GPU: no GPU workers")
        return []
    gpus = []
    for index in range(count.value):
        found = driver.cuDeviceGet(ctypes.byref(device), index) == 0
        if found and driver.cuDeviceGetName(name, 256, device) == 0:
            gpus.append(Gpu(index, name.value.decode(errors="replace")))
    return gpus


def gpu_workers(gpus: list[Gpu], streams: int, topology: Topology) -> list[WorkerSpec]:
    """``streams`` workers per GPU.  Their tensors are host arrays (ORT copies them to the device
    and back within a run), so their memory node is the host's; they hold no cores."""
    if streams < 0:
        raise UsageError(f"gpu_streams={streams}: use 0 (no GPU workers) or more streams per GPU")
    host = _first_host_node(topology)
    workers = [WorkerSpec(f"gpu{gpu.index}.s{stream}", f"cuda:{gpu.name}", host, (), "cuda", gpu.index)
               for gpu in gpus for stream in range(streams)]
    if workers:
        log.info("GPU workers: %s", ", ".join(w.name for w in workers))
    return workers


Provider = str | tuple[str, Mapping[str, Any]]  # as in a session's providers list


def accelerator_workers(accelerators: Sequence[Provider], topology: Topology) -> list[WorkerSpec]:
    """One worker per accelerator, named ``acc<i>``, its arch the provider's name (which keys its
    perf models); its tensors are host arrays, as a GPU worker's."""
    host = _first_host_node(topology)
    workers = []
    for index, accelerator in enumerate(accelerators):
        name, options = (accelerator, {}) if isinstance(accelerator, str) else accelerator
        if not isinstance(name, str) or not name.endswith("ExecutionProvider"):
            raise UsageError(f"accelerator {accelerator!r}: name it by its ONNX Runtime execution provider, "
                             "e.g. 'VitisAIExecutionProvider' or ('OpenVINOExecutionProvider', "
                             "{'device_type': 'NPU'})")
        pairs = tuple(sorted((str(key), str(value)) for key, value in options.items()))
        workers.append(WorkerSpec(f"acc{index}", name, host, (), "accelerator", provider_options=pairs))
    return workers
