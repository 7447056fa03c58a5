"""Measured per-node costs and their file, ``costs.json``: what ``hetsched profile`` writes
and ``hetsched partition --costs`` reads.

The file is versioned (``"format": "hetsched.costs/1"``) and written atomically
(temporary file in the same directory, then ``os.replace``), so a reader never
sees half a file even if profiling is killed while saving.  It records how the
numbers were obtained (method, threads, batch) and the sha256 of the model they
belong to (as read), so a consumer can tell costs of another model or another
processor kind apart instead of silently mixing them.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from partitioner.errors import UsageError

FORMAT = "hetsched.costs/1"
_FIX = "re-run `hetsched profile MODEL --out costs.json`"


@dataclass(frozen=True)
class NodeCosts:
    """Per-node seconds of one model on one processor kind, as one profiling method saw them.

    Fields:
        arch: processor kind the costs key, ``"cpu:<threads>t"`` (e.g. ``"cpu:1t"``).
        method: how they were measured, a key of :data:`perfmodels.profile.METHODS`.
        batch: batch size the model ran at.
        threads: ONNX Runtime intra-op threads.
        seconds: node name -> median seconds per run (0 for nodes ORT fused away).
        whole_model_s: median seconds of one run of the whole model, same session options;
            ``sum(seconds.values())`` against it shows how far a plain sum is off.
        model_sha256: sha256 of the model as read (``OpGraph.source_sha256``).
    """

    arch: str
    method: str
    batch: int
    threads: int
    seconds: dict[str, float]
    whole_model_s: float
    model_sha256: str

    def total_s(self) -> float:
        """Sum of the node costs (what a naive per-part prediction adds up)."""
        return float(sum(self.seconds.values()))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the costs as versioned JSON, atomically (tmp file + ``os.replace``)."""
        target = Path(path)
        payload = json.dumps({"format": FORMAT, **asdict(self)}, indent=1)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(payload + "\n")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NodeCosts:
        """Read a costs file; any problem is a one-line :class:`UsageError` naming the fix."""
        source = Path(path)
        if not source.is_file():
            raise UsageError(f"{source}: no such costs file; {_FIX}")
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
            raise UsageError(f"{source}: not a JSON costs file ({reason}); {_FIX}") from exc
        found = data.get("format") if isinstance(data, dict) else None
        if found != FORMAT:
            raise UsageError(f"{source}: costs format is {found!r}, expected {FORMAT!r}; {_FIX}")
        return cls._from_dict(data, source)

    @classmethod
    def _from_dict(cls, data: dict[str, Any], source: Path) -> NodeCosts:
        def bad(what: str) -> UsageError:
            return UsageError(f"{source}: malformed costs file ({what}); {_FIX}")

        fields: dict[str, Any] = {}
        for name, kind in (("arch", str), ("method", str), ("model_sha256", str),
                           ("batch", int), ("threads", int)):
            value = data.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise bad(f"field {name!r} must be a {kind.__name__}, got {value!r}")
            fields[name] = value
        fields["whole_model_s"] = _seconds(data.get("whole_model_s"), "whole_model_s", bad)
        seconds = data.get("seconds")
        if not isinstance(seconds, dict):
            raise bad("field 'seconds' must map node names to seconds")
        fields["seconds"] = {
            str(k): _seconds(v, f"seconds[{k!r}]", bad) for k, v in seconds.items()
        }
        return cls(**fields)


def _seconds(value: object, what: str, bad: Callable[[str], UsageError]) -> float:
    """A finite, non-negative number of seconds, or the loader's error."""
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    if not math.isfinite(number) or number < 0:
        raise bad(f"{what} must be a non-negative number, got {value!r}")
    return float(number)
