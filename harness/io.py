"""File I/O with the two guarantees every stage relies on.

1. Nothing half-written: files are written to a temporary name in the same folder, fsynced and renamed.
2. Bad input is named precisely: JSON/JSONL errors carry the file and the 1-based row.

Long stages append JSONL rows with :class:`JsonlAppender` (flushed per batch); a torn last line from a killed
process is dropped with a warning when the file is reopened.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

from harness.errors import HarnessError

log = logging.getLogger(__name__)


def _open_text(path: Path, mode: str = "rt"):
    if path.suffix == ".gz":
        return gzip.open(path, mode, encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def _unreadable(path: Path, e: BaseException) -> HarnessError:
    """One line for a file that cannot be read as text: not gzip (or cut short) though named .gz, not UTF-8, or an
    OS error (a directory, no permission)."""
    if isinstance(e, (gzip.BadGzipFile, EOFError, zlib.error)):
        return HarnessError(f"not a valid gzip file, though the name ends in .gz ({e})", path)
    if isinstance(e, UnicodeDecodeError):
        return HarnessError(f"not UTF-8 text ({e.reason} at byte {e.start})", path)
    return HarnessError(f"cannot read: {getattr(e, 'strerror', None) or e}", path)


READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError)  # what _unreadable explains


def check_gzip(path: str | Path) -> None:
    """A file whose name ends in .gz must start with gzip's magic bytes: checked in two bytes, without reading it."""
    path = Path(path)
    if path.suffix != ".gz":
        return
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError as e:
        raise _unreadable(path, e) from None
    if head != b"\x1f\x8b":
        raise HarnessError("not a valid gzip file, though the name ends in .gz", path)


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """Refuse, before any work is done, an output path that cannot become a file: an existing directory, a parent
    that is a file, or a folder that cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise HarnessError(f"{what} is a directory; give a file name", path)
    parent = next(p for p in path.absolute().parents if p.exists())  # the nearest existing folder above it
    if not parent.is_dir():
        raise HarnessError(f"{what}: {parent} is not a folder", path)
    if not os.access(parent, os.W_OK):
        raise HarnessError(f"{what}: the folder {parent} is not writable", path)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    from harness.timing import phase

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with phase("write"):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def dumps(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False, sort_keys=False)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, dumps(obj) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(dumps(r, indent=None) + "\n" for r in rows))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise HarnessError("file does not exist", path)
    try:
        with _open_text(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise HarnessError(f"malformed JSON: {e.msg} (column {e.colno})", path, e.lineno) from None
    except READ_ERRORS as e:
        raise _unreadable(path, e) from None


def iter_jsonl(path: str | Path, tolerate_torn_tail: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield (row number, object). Blank lines are skipped; a non-object row is an error.

    With ``tolerate_torn_tail`` a malformed *last* line without a trailing newline (a write cut by a kill) is
    dropped with a warning instead of raising.
    """
    path = Path(path)
    if not path.exists():
        raise HarnessError("file does not exist", path)
    try:
        with _open_text(path) as fh:
            lines = fh.readlines()
    except READ_ERRORS as e:
        raise _unreadable(path, e) from None
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if tolerate_torn_tail and i == len(lines) and not line.endswith("\n"):
                log.warning("%s:%d: dropping a torn last line (interrupted write)", path, i)
                return
            raise HarnessError(f"malformed JSON line: {e.msg} (column {e.colno})", path, i) from None
        if not isinstance(obj, dict):
            raise HarnessError(f"expected a JSON object, got {type(obj).__name__}", path, i)
        yield i, obj


def read_jsonl(path: str | Path) -> list[dict]:
    return [obj for _, obj in iter_jsonl(path)]


class JsonlAppender:
    """Append-only JSONL file for resumable stages. ``rows`` holds what a previous, interrupted run wrote."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix == ".gz":
            raise HarnessError("cannot append to a compressed file: resumable JSONL files are plain .jsonl", path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        if self.path.exists():
            try:
                text = self.path.read_text(encoding="utf-8")
            except READ_ERRORS as e:
                raise _unreadable(self.path, e) from None
            self.rows = [obj for _, obj in iter_jsonl(self.path, tolerate_torn_tail=True)]
            if text and not text.endswith("\n"):  # drop the torn tail so appends start on a clean line
                atomic_write_jsonl(self.path, self.rows)
        self._fh = open(self.path, "a", encoding="utf-8")

    def pending_chunks(self, keys: list, size: int, key_of) -> list[list[int]]:
        """Split item positions 0..len(keys)-1 into fixed chunks of ``size``; return those not finished.

        Rows of a chunk that was only partly written (a kill during a write) are dropped, so every chunk is
        recomputed whole and batch-dependent numerics equal those of an uninterrupted run.
        """
        have = {key_of(r) for r in self.rows}
        chunks = [list(range(i, min(i + size, len(keys)))) for i in range(0, len(keys), size)]
        complete = [c for c in chunks if all(keys[j] in have for j in c)]
        keep = {keys[j] for c in complete for j in c}
        if len(keep) != len(self.rows):
            self._fh.close()
            self.rows = [r for r in self.rows if key_of(r) in keep]
            atomic_write_jsonl(self.path, self.rows)
            self._fh = open(self.path, "a", encoding="utf-8")
        return [c for c in chunks if c not in complete]

    def append(self, rows: Iterable[dict]) -> None:
        from harness.timing import phase

        rows = list(rows)
        with phase("write"):
            for r in rows:
                self._fh.write(dumps(r, indent=None) + "\n")
                self.rows.append(r)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def stable_hash(obj: Any, n: int = 16) -> str:
    """sha256 prefix of sorted-key JSON: the key of every completion record and cache."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def file_hash(path: str | Path, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]

