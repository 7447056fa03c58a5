"""What the OS knows of the calling thread: the cores it may run on, and its name.

Pinning, without holding the GIL while the thread moves.

``os.sched_setaffinity`` keeps the GIL for the whole system call, and a thread pinned to a core
it is not on returns only once that core runs it: behind whatever that core is running, which in
the daemon is often the client or another of its threads.  Meanwhile no other Python thread of
the process runs.  A caller that runs its own task (``run_here``) pins itself twice a request, so
in the daemon under load (py-spy ``--gil``) the pin was the line holding the GIL longest outside
ONNX Runtime.  ctypes drops the GIL around a foreign call, so the same system call made through
it lets the other threads run while this one waits for its core.

Naming: Python 3.11 keeps a thread's name to itself, so ``top -H``, ``ps -L``, py-spy and
``/proc/<pid>/task/<tid>/comm`` showed every thread of the daemon as ``python``.  Its threads
give the OS their names (the first 15 characters, Linux's limit), which is also how
bench/overload.py splits the daemon's CPU by role.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

_WORDS = 16  # a glibc cpu_set_t: 1024 CPUs in 64-bit words


@lru_cache(maxsize=1)
def libc() -> Any:
    """The C library, errno kept (its system calls here and in hetsched.numa); found once, as
    ``find_library`` runs ``ldconfig``."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setaffinity() -> Any:
    if platform.system() != "Linux":
        return None
    try:
        call = libc().sched_setaffinity
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p]
    return call


_sched_setaffinity = _setaffinity()
_PR_SET_NAME = 15  # prctl option (linux/prctl.h)


@lru_cache(maxsize=256)
def _mask(cores: frozenset[int]) -> Any:
    mask = (ctypes.c_ulong * _WORDS)()
    for core in cores:
        if not 0 <= core < _WORDS * 64:
            raise OSError(f"core {core} is outside the {_WORDS * 64} CPUs a cpu_set_t holds")
        mask[core // 64] |= 1 << (core % 64)
    return mask


def pin_thread(cores: Iterable[int]) -> None:
    """Pin the calling thread to ``cores`` (``os.sched_setaffinity(0, cores)``, without the GIL
    where libc is at hand).  Raises OSError as os does: e.g. a core outside the cpuset."""
    wanted = frozenset(cores)
    if _sched_setaffinity is None:
        os.sched_setaffinity(0, wanted)
        return
    mask = _mask(wanted)
    if _sched_setaffinity(0, ctypes.sizeof(mask), ctypes.addressof(mask)) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"sched_setaffinity to cores {sorted(wanted)}: {os.strerror(error)}")


def name_os_thread() -> None:
    """Give the calling thread's Python name to the OS (Linux; elsewhere, nothing)."""
    if platform.system() != "Linux":
        return
    name = threading.current_thread().name.encode("utf-8", "replace")[:15]
    try:
        libc().prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
    except (OSError, AttributeError):  # no libc at hand: the thread keeps the process's name
        pass
