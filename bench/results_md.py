"""bench/RESULTS.md is shared by every bench: each rewrites only its own marked section."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_section(text: str, results: Path, marker: str) -> None:
    """Replace this bench's section of RESULTS.md, keeping the other benches' sections."""
    begin, end = f"<!-- begin {marker} -->", f"<!-- end {marker} -->"
    old = results.read_text() if results.exists() else "# Bench results\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in old:
        old = old[: old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        old = old.rstrip() + "\n\n" + block + "\n"
    results.write_text(old)


def publish(results: dict[str, Any], section: str, report: Callable[[dict[str, Any], str], str]) -> None:
    """Write a bench's results to bench/results/<section>.json and its report, headed by the
    command that ran it (this process's own), to the console and its section of RESULTS.md."""
    here = Path(__file__).parent
    (here / "results").mkdir(exist_ok=True)
    (here / "results" / f"{section}.json").write_text(json.dumps(results, indent=1) + "\n")
    script = Path(sys.argv[0]).name
    command = f"PYTHONPATH=.:bench python bench/{script} " + " ".join(sys.argv[1:])
    text = report(results, command.strip())
    print(text)
    write_section(text, here / "RESULTS.md", section)


def package_version(package: str) -> str:
    """The installed version of ``package``, for the line that says what a result was measured with."""
    from importlib.metadata import version

    return version(package)
