"""Pinning a thread through libc (the GIL dropped meanwhile), as os.sched_setaffinity would, and
the OS names of the runtime's threads."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from hetsched import affinity

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux affinity calls")


def test_a_thread_pins_itself_only_and_unpins_again() -> None:
    cores = sorted(os.sched_getaffinity(0))
    seen: list[set[int]] = []

    def pinned() -> None:
        affinity.pin_thread([cores[-1]])
        seen.append(os.sched_getaffinity(0))
        affinity.pin_thread(cores)
        seen.append(os.sched_getaffinity(0))

    thread = threading.Thread(target=pinned)
    thread.start()
    thread.join()
    assert seen == [{cores[-1]}, set(cores)]
    assert os.sched_getaffinity(0) == set(cores), "another thread's pin moved this one"


def test_the_libc_path_is_taken_on_linux_and_a_bad_core_fails_naming_it() -> None:
    assert affinity._sched_setaffinity is not None, "on Linux the pin must go through libc (os holds the GIL)"
    before = os.sched_getaffinity(0)
    with pytest.raises(OSError, match="outside"):
        affinity.pin_thread([4096])  # past what a cpu_set_t holds
    absent = max(before) + 1
    with pytest.raises(OSError, match=f"cores \\[{absent}\\]: Invalid argument"):
        affinity.pin_thread([absent])  # no such CPU online
    assert os.sched_getaffinity(0) == before, "a failed pin moved the thread"


def comm(thread: threading.Thread) -> str:
    return Path(f"/proc/self/task/{thread.native_id}/comm").read_text().strip()


def test_the_runtimes_threads_give_the_os_their_names() -> None:
    """``top -H`` and bench/overload.py's CPU split tell the workers and the batcher apart by name."""
    from hetsched import Runtime, zoo

    with Runtime(workers="2x1") as runtime:
        runtime.load(zoo.build("lenet5"), max_batch=4)
        names = {t.name: comm(t) for t in threading.enumerate() if t.name.startswith("hetsched-")}
    assert names, "no runtime thread found"
    assert all(os_name == name[:15] for name, os_name in names.items()), names
    assert any(name.startswith("hetsched-batch") for name in names.values()), names
