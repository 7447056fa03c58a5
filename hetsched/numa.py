"""Arrays in the memory of a chosen NUMA node, and which node an array's memory is on (Linux).

A worker reads its inputs fastest from its own node's memory.  The memory of a request's inputs
is wherever the thread that received them touched it first, and a part's outputs are on the node
of the worker that made them.  :func:`copy_to` places a copy by ``mbind(2)`` on fresh anonymous
pages (preferred node, not bound), so the copy lands on the node whichever thread writes it;
:func:`node_of` asks the kernel (``move_pages(2)`` without moving anything) where an array's
first page is.  Both are syscalls through libc, with no dependency on libnuma, and only where
their numbers are known (x86-64, arm64) and allowed; elsewhere placement is off
(``supported()`` False).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from hetsched.affinity import libc

_SYSCALLS = {"x86_64": (237, 279), "aarch64": (235, 239)}  # (mbind, move_pages) by machine
# Preferred, not bound: a node short of memory then spills to another rather than wake the OOM killer.
_MPOL_PREFERRED = 1
_PAGE = mmap.PAGESIZE


# (the kernel's machine: a 32-bit userland on a 64-bit kernel has other numbers)
_numbers = (_SYSCALLS.get(platform.machine())
            if platform.system() == "Linux" and ctypes.sizeof(ctypes.c_void_p) == 8 else None)
_lib = libc() if _numbers else None


@functools.cache
def supported() -> bool:
    """Whether this process can place and locate memory by node: the syscalls exist here, and no
    sandbox refuses them (Docker's default seccomp profile allows them only with CAP_SYS_NICE)."""
    if _lib is None:
        return False
    nodes = sorted(int(p.name[4:]) for p in Path("/sys/devices/system/node").glob("node[0-9]*"))
    try:
        probe = copy_to(np.zeros(1), nodes[0] if nodes else 0)
    except OSError:
        return False
    return node_of(probe) is not None


def _address(buffer: Any) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def empty_on(node: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """An uninitialized array whose pages the kernel allocates on ``node`` (``MPOL_PREFERRED``:
    elsewhere only when that node's memory is full); OSError when the node does not exist or may
    not be used (say, outside this cpuset)."""
    if _lib is None or _numbers is None:
        raise OSError("NUMA placement needs Linux on x86-64 or arm64")
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = max(count * np.dtype(dtype).itemsize, 1)
    buffer = mmap.mmap(-1, -(-nbytes // _PAGE) * _PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    words = node // 64 + 1
    mask = (ctypes.c_ulong * words)()
    mask[node // 64] = 1 << (node % 64)
    if _lib.syscall(_numbers[0], ctypes.c_void_p(_address(buffer)), ctypes.c_size_t(len(buffer)),
                    _MPOL_PREFERRED, mask, ctypes.c_ulong(words * 64 + 1), 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"mbind to NUMA node {node}: {os.strerror(error)}")
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def copy_to(array: np.ndarray, node: int) -> np.ndarray:
    """A copy of ``array`` in ``node``'s memory (OSError as :func:`empty_on`)."""
    out = empty_on(node, array.shape, array.dtype)
    np.copyto(out, array)
    return out


def node_of(array: np.ndarray) -> int | None:
    """The NUMA node of ``array``'s first page; None where unknown (not supported, an empty array,
    a page not touched yet)."""
    if _lib is None or _numbers is None or array.nbytes == 0:
        return None
    pages = (ctypes.c_void_p * 1)(array.ctypes.data // _PAGE * _PAGE)
    status = (ctypes.c_int * 1)(-1)
    if _lib.syscall(_numbers[1], 0, ctypes.c_ulong(1), pages, None, status, 0) != 0:
        return None
    return status[0] if status[0] >= 0 else None
