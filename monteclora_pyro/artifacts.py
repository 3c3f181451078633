"""Writing results safely: every file is written to a temporary sibling, then renamed into place, and
a run's folder is built beside the old one and swapped in only when the run has finished."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["atomic_output", "atomic_run_dir", "atomic_write_bytes", "atomic_write_csv", "atomic_write_json",
           "atomic_write_jsonl"]


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    A reader never sees a half-written file, and a failed write leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_jsonl(path: str | Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``records`` as JSON lines (one object a line) atomically."""
    return atomic_write_bytes(path, "".join(json.dumps(record) + "\n" for record in records).encode())


def atomic_write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` as a CSV with a header of ``columns`` atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_bytes(path, buffer.getvalue().encode())


@contextlib.contextmanager
def atomic_run_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh staging folder beside ``path`` for everything one run writes.

    On success the staging folder replaces ``path`` (an older run there is removed only then), so
    ``path`` always holds the files of one finished run.  On an error or an interrupt ``path`` is
    left as it was; the staging folder gets ``failed.json`` (the error) and is kept as
    ``<path>.failed`` for inspection, replacing an older one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial"))
    try:
        yield staging
    except BaseException as error:
        atomic_write_json(staging / "failed.json", {"error": f"{type(error).__name__}: {error}"})
        failed = path.with_name(path.name + ".failed")
        shutil.rmtree(failed, ignore_errors=True)
        os.replace(staging, failed)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        os.replace(path, old)
    os.replace(staging, path)
    os.chmod(path, 0o755)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
