"""The on-disk home of the perf models: one directory per host, one versioned JSON file
per model, written atomically and merged under a file lock.

Layout of the directory (``default_dir()`` unless given)::

    history.json          {"format": "hetsched.history/2", "host": ..., "min_samples": ...,
                           "entries": [...]}          (HistoryModel.to_dict)
    <name>.json           {"format": <caller's>, "host": ..., "payload": {...}}
    <file>.lock           sidecar lock of each file (never deleted: unlinking a lock file
                          while another process waits on it would split the lock in two)
    <file>.corrupt-<utc>  a file that could not be read, set aside for a human

Why it is built this way:

- *Per host*, as StarPU's are: timings of another machine are not this machine's.
- *Atomic*: a temporary file in the same directory, fsync, ``os.replace``; a reader sees
  the old file or the new one, never half of one, even if the writer is killed.
- *Merged, not overwritten*: :meth:`PerfModelStore.add_history` holds an exclusive
  ``fcntl.flock`` on the sidecar lock across read, merge and write, so two processes that
  add samples at once lose none (Welford statistics merge exactly).
- *Never fatal*: a corrupt file, another format version or ill-typed fields are logged,
  renamed aside and replaced by a fresh, empty model; a daemon keeps serving and simply
  calibrates again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from perfmodels.history import HistoryModel

__all__ = ["ENV_DIR", "HISTORY_FORMAT", "PerfModelStore", "default_dir"]

ENV_DIR = "HETSCHED_PERFMODEL_DIR"
HISTORY_FORMAT = "hetsched.history/2"  # /1 had no window of recent samples
_HISTORY_NAME = "history"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

_log = logging.getLogger(__name__)


class _BadFile(Exception):
    """A model file exists but cannot be used; the message says why."""


def _host() -> str:
    """This machine's name, made safe as one path component."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "localhost"


def default_dir() -> Path:
    """``$HETSCHED_PERFMODEL_DIR`` if set, else ``<cache>/hetsched/perfmodels/<hostname>``.

    ``<cache>`` is ``$XDG_CACHE_HOME`` when it is an absolute path (as the XDG spec
    asks), else ``~/.cache``.  Models are per host because timings are.
    """
    explicit = os.environ.get(ENV_DIR)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    cache = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return cache / "hetsched" / "perfmodels" / _host()


class PerfModelStore:
    """One directory of perf-model files; see the module docstring for the guarantees.

    Each call opens, locks and closes what it needs, so one store may be shared by
    threads and any number of processes may use the same directory.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._directory = Path(directory) if directory is not None else default_dir()

    @property
    def directory(self) -> Path:
        """Where the files live (created, parents too, on the first write)."""
        return self._directory

    def load_history(self) -> HistoryModel:
        """The stored history; an empty model when there is none or it was unusable."""
        path = self._path(_HISTORY_NAME)
        try:
            return _history_from_doc(_read_doc(path, HISTORY_FORMAT))
        except FileNotFoundError:
            return HistoryModel()
        except _BadFile:
            pass
        with self._locked(path):  # re-check under the lock: a writer may have just fixed it
            return self._read_history_locked(path, HistoryModel())

    def add_history(self, delta: HistoryModel) -> HistoryModel:
        """Merge ``delta`` into the stored history and write it back; returns the result.

        Read, merge and write happen under one exclusive lock, so concurrent callers in
        any process serialise and none of their samples is lost.  A fresh store takes
        ``delta.min_samples``; an existing one keeps its own.
        """
        path = self._path(_HISTORY_NAME)
        self._directory.mkdir(parents=True, exist_ok=True)
        with self._locked(path):
            model = self._read_history_locked(path, HistoryModel(delta.min_samples))
            model.merge(delta)
            doc = {"format": HISTORY_FORMAT, "host": _host(), **model.to_dict()}
            _write_atomically(path, doc)
        return model

    def load_json(self, name: str, format: str) -> dict[str, Any] | None:
        """The payload last saved as ``name`` with this ``format``; None when absent or unusable.

        For other models that live here (the bus model, composition coefficients).  A
        file of another format version is set aside like a corrupt one: the caller's
        code no longer reads it, so it must recalibrate.
        """
        path = self._path(_checked_name(name))
        try:
            return _payload(_read_doc(path, format))
        except FileNotFoundError:
            return None
        except _BadFile:
            pass
        with self._locked(path):
            try:
                return _payload(_read_doc(path, format))
            except FileNotFoundError:
                return None
            except _BadFile as exc:
                _set_aside(path, exc)
                return None

    def save_json(self, name: str, format: str, payload: dict[str, Any]) -> None:
        """Write ``payload`` as ``name`` with ``format``, atomically (strict JSON: no NaN)."""
        path = self._path(_checked_name(name))
        if not isinstance(payload, dict):
            raise TypeError(f"payload of {name!r} must be a dict, got {type(payload).__name__}")
        if not isinstance(format, str) or not format:
            raise ValueError(f"format of {name!r} must be a non-empty string, got {format!r}")
        self._directory.mkdir(parents=True, exist_ok=True)
        with self._locked(path):
            _write_atomically(path, {"format": format, "host": _host(), "payload": payload})

    def _path(self, name: str) -> Path:
        return self._directory / f"{name}.json"

    def _read_history_locked(self, path: Path, fresh: HistoryModel) -> HistoryModel:
        """The stored history, or ``fresh`` after setting a bad file aside; lock held."""
        try:
            return _history_from_doc(_read_doc(path, HISTORY_FORMAT))
        except FileNotFoundError:
            return fresh
        except _BadFile as exc:
            _set_aside(path, exc)
            return fresh

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        """Exclusive ``flock`` on ``<path>.lock``; blocks until other holders finish."""
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the only descriptor releases the flock


def _checked_name(name: str) -> str:
    """A model name is one plain path component; ``history`` belongs to the store itself."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name == _HISTORY_NAME:
        raise ValueError(
            f"model name {name!r} must be letters, digits, '_', '.', '-' (not starting "
            f"with '.' or '-') and not {_HISTORY_NAME!r}"
        )
    return name


def _read_doc(path: Path, format: str) -> dict[str, Any]:
    """The parsed file if it is a JSON object of ``format``; FileNotFoundError or _BadFile."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _BadFile(f"unreadable ({exc})") from exc
    try:
        doc = json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError both
        raise _BadFile(f"not JSON ({exc})") from exc
    found = doc.get("format") if isinstance(doc, dict) else None
    if found != format:
        raise _BadFile(f"format is {found!r}, expected {format!r}")
    return doc


def _history_from_doc(doc: dict[str, Any]) -> HistoryModel:
    try:
        return HistoryModel.from_dict(doc)
    except (TypeError, ValueError) as exc:
        raise _BadFile(f"malformed history ({exc})") from exc


def _payload(doc: dict[str, Any]) -> dict[str, Any]:
    payload = doc.get("payload")
    if not isinstance(payload, dict):
        raise _BadFile(f"payload must be a JSON object, got {type(payload).__name__}")
    return payload


def _set_aside(path: Path, why: _BadFile) -> None:
    """Rename a bad file to ``<file>.corrupt-<utc time>`` and say so; never raises."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, target)
    except OSError as exc:
        _log.warning("perf model %s is unusable (%s) and could not be set aside (%s); "
                     "starting afresh", path, why, exc)
        return
    _log.warning("perf model %s is unusable (%s); set aside as %s, starting afresh",
                 path, why, target.name)


def _write_atomically(path: Path, doc: dict[str, Any]) -> None:
    """Temp file in the same directory, fsync, ``os.replace``, then fsync the directory."""
    text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
