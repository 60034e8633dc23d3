"""The spool file format and its writer (docs/FORMAT.md "Spool"; :mod:`audit_core.spool`).

>>> rec = mark({"model": "churn"}, "0" * 32, "2026-12-04T10:00:00.000000Z")
>>> rec[SPOOL_KEY]["id"] == "0" * 32
True
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from audit_core._jcs import canonical_bytes, canonical_loaded
from audit_core._record import PreparedRecord, check_key
from audit_core.errors import InvalidRecordError, LedgerError

__all__ = [
    "QUARANTINE",
    "SPOOL_KEY",
    "Contents",
    "FileWriter",
    "SpooledRecord",
    "fsync_dir",
    "hold",
    "mark",
    "new_id",
    "read_spool_file",
    "release",
    "spool_files",
]

#: The reserved key of ``data`` that marks a record that went through the spool.
SPOOL_KEY = "_spool"
#: The subdirectory corrupt lines are moved to (never deleted).
QUARANTINE = "quarantine"

_SUFFIX = ".spool"
#: Line numbers ``n`` reserved per numbered batch (FileWriter.append's ``order``).
_PER_BATCH = 1 << 20
_LINE_VERSION = 1


def spool_files(directory: Path, key: str | None) -> list[Path]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    prefix = "" if key is None else key + "."
    return [
        directory / n
        for n in sorted(names)
        if n.endswith(_SUFFIX) and n.startswith(prefix) and not n.startswith(".")
    ]


# -- lines ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    """One record read back from a spool file."""

    id: str
    origin: str
    n: int
    chain: str
    event: str
    ts: str
    head: bytes
    tail: bytes
    unmarked: tuple[bytes, bytes] | None = None  # the bytes an uncertain write would have
    key: str | None = None  # its idempotency key: the drain skips it if the key landed

    @property
    def prepared(self) -> PreparedRecord:
        """The record as the ledger appends it (marked with its spool id)."""
        return PreparedRecord(self.chain, self.event, self.ts, self.head, self.tail, self.key)


@dataclass(slots=True)
class Contents:
    records: list[SpooledRecord] = field(default_factory=list)
    landed: set[str] = field(default_factory=set)
    corrupt: list[tuple[int, bytes, str]] = field(default_factory=list)  # (line no, raw, why)


def _line(body: dict[str, Any]) -> bytes:
    body["sum"] = hashlib.sha256(canonical_bytes(body)).hexdigest()
    return canonical_bytes(body) + b"\n"


def read_spool_file(path: Path, data: bytes | None = None) -> Contents:
    out = Contents()
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            out.corrupt.append((0, b"", f"unreadable: {exc}"))
            return out
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline, as every complete write does
    for number, raw in enumerate(lines, 1):
        try:
            _parse(raw, out)
        except ValueError as exc:
            out.corrupt.append((number, raw, str(exc)))
    if torn:
        out.corrupt.append((len(lines) + 1, torn, "torn: no end of line (a write cut short)"))
    return out


def _parse(raw: bytes, out: Contents) -> None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict) or value.get("v") != _LINE_VERSION:
        raise ValueError("not a version 1 spool line")
    claimed = value.pop("sum", None)
    if claimed != hashlib.sha256(canonical_loaded(value)).hexdigest():
        raise ValueError("checksum mismatch")
    if "landed" in value:
        out.landed.add(str(value["landed"]))
        return
    try:
        rec = SpooledRecord(
            id=value["id"],
            origin=value["origin"],
            n=value["n"],
            chain=value["chain"],
            event=value["event"],
            ts=value["ts"],
            head=value["head"].encode("utf-8"),
            tail=value["tail"].encode("utf-8"),
            unmarked=(
                (value["unmarked"][0].encode("utf-8"), value["unmarked"][1].encode("utf-8"))
                if value.get("unmarked")
                else None
            ),
            key=value.get("key"),
        )
        if rec.key is not None:
            check_key(rec.key)
        _check(rec)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"missing or mistyped member: {exc!r}") from exc
    except InvalidRecordError as exc:
        raise ValueError(str(exc)) from exc
    out.records.append(rec)


def _check(rec: SpooledRecord) -> None:
    """The line's bytes make a canonical record of its chain, event and ts, marked with its id
    (checked before anything reaches a chain, not only by a later ``verify``)."""
    sealed = rec.prepared.seal(0, "0" * 64)
    try:
        value = orjson.loads(sealed)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the record is not JSON: {exc}") from exc
    if canonical_loaded(value) != sealed:
        raise ValueError("the record is not canonical")
    mark = value.get("data", {}).get(SPOOL_KEY) if isinstance(value.get("data"), dict) else None
    if (value.get("chain"), value.get("event"), value.get("ts")) != (rec.chain, rec.event, rec.ts):
        raise ValueError("the record's chain, event or ts differ from the line's")
    if not isinstance(mark, dict) or mark.get("id") != rec.id:
        raise ValueError(f"the record is not marked data.{SPOOL_KEY}.id = {rec.id}")


# -- writing --------------------------------------------------------------------------------


#: File descriptors that carry a lock (a process's own spool file, a drainer's locks). A
#: forked child closes its copies at once: an flock belongs to the open file, so a child that
#: kept them would hold the parent's locks for as long as it lives (a LocalExecutor worker:
#: the whole run), and every other drainer would wait for it.
_HELD: set[int] = set()


def hold(fd: int) -> int:
    _HELD.add(fd)
    return fd


def release(fd: int) -> None:
    _HELD.discard(fd)
    os.close(fd)


def _close_held_in_child() -> None:
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileWriter:
    """Appends records of one ledger to this process's spool file, durably.

    Thread-safe and fork-safe (a forked child writes its own file). :meth:`seal` closes the
    current file (releasing its lock: a drainer may take it) so the next write starts another.
    """

    def __init__(self, directories: Sequence[Path], key: str) -> None:
        self.directories = list(directories)  # tried in order (spool.spool_dirs)
        self.key = key  # spool.ledger_key
        self._lock = threading.Lock()
        self._pid = -1
        self._fd = -1
        self._path: Path | None = None
        self._count = 0  # lines in the current file
        self._files = 0
        self._n = 0
        self._origin = ""
        if hasattr(os, "register_at_fork"):  # a lock held by a thread at fork stays held
            os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._pid, self._fd, self._path, self._count = -1, -1, None, 0  # fd: closed already

    @property
    def origin(self) -> str:
        """``<host>.<pid>.<random>``: this process's part of its spool file names."""
        with self._lock:
            if self._pid != os.getpid():
                self._ensure_origin()
            return self._origin

    @property
    def unsealed(self) -> int:
        """Records in the current (not yet sealed) file of this process."""
        with self._lock:
            return self._count if self._pid == os.getpid() else 0

    def append(
        self,
        ids: Sequence[str],
        records: Sequence[PreparedRecord],
        *,
        unmarked: Sequence[PreparedRecord] | None = None,
        order: int | None = None,
    ) -> Path:
        """Append ``records`` (marked with ``ids``), ``fsync``; return the file. Raises
        :class:`~audit_core.errors.LedgerError` when no spool directory can be written.

        ``order``: the batch's number (from 1) when the caller numbers every batch it spools
        (the runner numbers its hooks as they run); the drain then takes batches in that
        order, not in the order they were appended. Without it, append order."""
        with self._lock:
            fd, path = self._ensure_file()
            if order is not None:
                self._n = order * _PER_BATCH
            lines = []
            for i, (rid, rec) in enumerate(zip(ids, records, strict=True)):
                body: dict[str, Any] = {
                    "v": _LINE_VERSION,
                    "id": rid,
                    "origin": self._origin,
                    "n": self._n,
                    "ledger": self.key,
                    "chain": rec.chain,
                    "event": rec.event,
                    "ts": rec.ts,
                    "head": rec.head.decode("utf-8"),
                    "tail": rec.tail.decode("utf-8"),
                }
                if rec.key is not None:
                    body["key"] = rec.key
                if unmarked is not None:
                    body["unmarked"] = [unmarked[i].head.decode(), unmarked[i].tail.decode()]
                self._n += 1
                lines.append(_line(body))
            self._write(fd, b"".join(lines))
            self._count += len(lines)
            return path

    def landed(self, rid: str) -> None:
        """Record that the uncertain write spooled as ``rid`` did land after all."""
        with self._lock:
            fd, _ = self._ensure_file()
            self._write(fd, _line({"v": _LINE_VERSION, "landed": rid}))

    def seal(self) -> None:
        """Close the current file (a drainer may take it now); the next append opens another."""
        with self._lock:
            if self._pid == os.getpid() and self._fd >= 0:
                release(self._fd)  # releases the flock
            self._fd, self._path, self._count = -1, None, 0

    close = seal

    def _write(self, fd: int, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as exc:
            # A short write may have left part of a line: seal the file, so the fragment stays
            # its torn last line (quarantined by the drain) and is never glued to the next one.
            path = self._path
            with contextlib.suppress(OSError):
                release(fd)
            self._fd, self._path, self._count = -1, None, 0
            raise LedgerError(f"cannot write the spool file {path}: {exc}") from exc

    def _ensure_file(self) -> tuple[int, Path]:
        if self._pid != os.getpid():  # first use, or a forked child: never write the parent's
            self._ensure_origin()
        if self._fd >= 0 and self._path is not None:
            return self._fd, self._path
        errors = []
        for directory in self.directories:
            try:
                return self._open_in(directory)
            except OSError as exc:
                errors.append(f"{directory}: {exc}")
        raise LedgerError("cannot create a spool file: " + "; ".join(errors))

    def _ensure_origin(self) -> None:
        pid = os.getpid()
        self._pid, self._fd, self._path, self._count, self._files = pid, -1, None, 0, 0
        self._origin = f"{socket.gethostname()}.{pid}.{uuid.uuid4().hex[:8]}"

    def _open_in(self, directory: Path) -> tuple[int, Path]:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        while True:
            self._files += 1
            path = directory / f"{self.key}.{self._origin}.{self._files}{_SUFFIX}"
            fd = hold(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600))
            try:
                # Held while this process may write: a drainer skips the file until it is
                # sealed. Between the create and the lock a drainer may have taken the empty
                # file and unlinked it (or still hold it): then it is no longer ours to write
                # (records written there would be lost); the next name is tried.
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    release(fd)
                    continue
                if os.fstat(fd).st_nlink == 0:
                    release(fd)
                    continue
                fsync_dir(directory)  # the new name is durable before a record is in it
            except OSError:
                release(fd)
                raise
            self._fd, self._path, self._count = fd, path, 0
            return fd, path


def new_id() -> str:
    """A spool id: 128 random bits, hex."""
    return uuid.uuid4().hex


def mark(data: object, rid: str, at: str) -> dict[Any, object]:
    """``data`` as a record's data object, with the spool marker ``{"id", "at"}`` added
    (a non-object payload becomes ``{"value": payload}``, as :func:`normalize` does)."""
    marker = {"id": rid, "at": at}
    if data is None:
        return {SPOOL_KEY: marker}
    if isinstance(data, Mapping):
        out = dict(data)
        out[SPOOL_KEY] = marker
        return out
    return {"value": data, SPOOL_KEY: marker}
