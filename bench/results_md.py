"""bench/RESULTS.md is shared by every bench: each rewrites only its own marked section."""

from __future__ import annotations

from pathlib import Path


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


def package_version(package: str) -> str:
    """The installed version of ``package``, for the line that says what a result was measured with."""
    from importlib.metadata import version

    return version(package)
