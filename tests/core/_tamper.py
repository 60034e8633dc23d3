"""Tamper with a SQLite ledger file directly, as someone with write access to it could.

Each helper opens its own ``sqlite3`` connection, drops the append-only triggers (and, where a
change needs it, the ``UNIQUE (chain, seq)`` index), changes rows, commits and closes. Close every
trail and ledger on the file first. Nothing here goes through ``audit_core``'s ledger: the point
is to change the file behind its back. ``canonical_bytes`` and ``leaf_hash`` are used only to
forge records that are as good as real ones (proven equal to the rfc8785 reference elsewhere).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from audit_core import canonical_bytes, leaf_hash

__all__ = [
    "NONCANONICAL_STYLES",
    "cast_column",
    "cut_tail",
    "delete",
    "duplicate_seq",
    "edit_body",
    "flip_byte",
    "insert_forged",
    "move_chain",
    "record",
    "reencode_noncanonical",
    "row",
    "set_body",
    "set_hash",
    "set_text",
    "swap",
]


@contextmanager
def _tampering(path: Path, *, drop_index: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection to ``path`` with the triggers (and optionally the unique index) dropped."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DROP TRIGGER IF EXISTS records_no_update")
        conn.execute("DROP TRIGGER IF EXISTS records_no_delete")
        if drop_index:
            conn.execute("DROP INDEX IF EXISTS records_chain_seq")
        yield conn
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def row(path: Path, chain: str, seq: int) -> tuple[bytes, bytes]:
    """The stored ``(hash, body)`` of one record."""
    conn = sqlite3.connect(str(path))
    try:
        found = conn.execute(
            "SELECT hash, body FROM records WHERE chain = ? AND seq = ?", (chain, seq)
        ).fetchone()
    finally:
        conn.close()
    if found is None:
        raise LookupError(f"no record {chain!r} seq {seq} in {path}")
    return bytes(found[0]), bytes(found[1])


def record(path: Path, chain: str, seq: int) -> dict[str, Any]:
    """The parsed body of one record."""
    value: dict[str, Any] = orjson.loads(row(path, chain, seq)[1])
    return value


def set_body(path: Path, chain: str, seq: int, body: bytes, *, rehash: bool = False) -> None:
    """Replace a record's stored bytes; with ``rehash`` also store their correct hash."""
    with _tampering(path) as conn:
        if rehash:
            conn.execute(
                "UPDATE records SET body = ?, hash = ? WHERE chain = ? AND seq = ?",
                (body, leaf_hash(body), chain, seq),
            )
        else:
            conn.execute(
                "UPDATE records SET body = ? WHERE chain = ? AND seq = ?", (body, chain, seq)
            )


def edit_body(
    path: Path,
    chain: str,
    seq: int,
    fn: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    rehash: bool = False,
) -> bytes:
    """Rewrite a record's JSON with ``fn`` and store it canonically encoded; returns the bytes."""
    body = canonical_bytes(fn(record(path, chain, seq)))
    set_body(path, chain, seq, body, rehash=rehash)
    return body


def set_hash(path: Path, chain: str, seq: int, digest: bytes) -> None:
    """Replace a record's stored hash, leaving its bytes alone."""
    with _tampering(path) as conn:
        conn.execute(
            "UPDATE records SET hash = ? WHERE chain = ? AND seq = ?", (digest, chain, seq)
        )


def flip_byte(
    path: Path, chain: str, seq: int, index: int, mask: int, *, rehash: bool = False
) -> bytes:
    """XOR byte ``index`` of a record's stored bytes with ``mask``; returns the new bytes."""
    body = bytearray(row(path, chain, seq)[1])
    body[index] ^= mask
    set_body(path, chain, seq, bytes(body), rehash=rehash)
    return bytes(body)


def delete(path: Path, chain: str, seq: int) -> None:
    """Delete one record."""
    with _tampering(path) as conn:
        conn.execute("DELETE FROM records WHERE chain = ? AND seq = ?", (chain, seq))


def cover_tracks(path: Path, chain: str) -> None:
    """What a careful attacker adds to a cut or rewrite: delete the chain's stored checkpoints
    and Merkle frontier, so only a checkpoint or head kept elsewhere can tell."""
    with _tampering(path) as conn:
        conn.execute("DROP TRIGGER IF EXISTS checkpoints_no_delete")
        conn.execute("DELETE FROM checkpoints WHERE chain = ?", (chain,))
        conn.execute("DELETE FROM merkle_subtrees WHERE chain = ?", (chain,))


def cut_tail(path: Path, chain: str, size: int) -> None:
    """Delete records ``seq >= size`` and every stored checkpoint of the chain, but leave its
    Merkle subtrees: a cut that forgets the derived data."""
    with _tampering(path) as conn:
        conn.execute("DROP TRIGGER IF EXISTS checkpoints_no_delete")
        conn.execute("DELETE FROM records WHERE chain = ? AND seq >= ?", (chain, size))
        conn.execute("DELETE FROM checkpoints WHERE chain = ?", (chain,))


def cover_tracks_frontier_only(path: Path, chain: str) -> None:
    """Delete the chain's Merkle subtrees (so the next append rebuilds them from the records)."""
    with _tampering(path) as conn:
        conn.execute("DELETE FROM merkle_subtrees WHERE chain = ?", (chain,))


def delete_chain(path: Path, chain: str) -> None:
    """Delete every trace of a chain: records, Merkle frontier and nodes, checkpoints."""
    with _tampering(path) as conn:
        conn.execute("DROP TRIGGER IF EXISTS checkpoints_no_delete")
        for table in ("records", "merkle_subtrees", "checkpoints"):
            conn.execute(f"DELETE FROM {table} WHERE chain = ?", (chain,))  # noqa: S608


def swap(path: Path, chain: str, seq_a: int, seq_b: int) -> None:
    """Exchange the stored ``(hash, body)`` of two records; their row seqs stay."""
    a, b = row(path, chain, seq_a), row(path, chain, seq_b)
    with _tampering(path) as conn:
        for (digest, body), seq in ((b, seq_a), (a, seq_b)):
            conn.execute(
                "UPDATE records SET hash = ?, body = ? WHERE chain = ? AND seq = ?",
                (digest, body, chain, seq),
            )


def insert_forged(path: Path, chain: str, seq: int, data: dict[str, Any]) -> bytes:
    """Insert a forged record at ``seq``, shifting the rows from ``seq`` on by one.

    The forgery is a copy of record ``seq - 1`` with ``data`` replaced; it names its seq, links
    to record ``seq - 1`` and carries its correct hash, so only the record after it can tell.
    Returns the forged record's hash.
    """
    if seq == 0:
        raise ValueError("forge from seq 1 on: the template is the previous record")
    prev_hash, prev_body = row(path, chain, seq - 1)
    value = orjson.loads(prev_body)
    value.update(data=data, seq=seq, prev=prev_hash.hex())
    body = canonical_bytes(value)
    digest = leaf_hash(body)
    with _tampering(path, drop_index=True) as conn:
        conn.execute("UPDATE records SET seq = seq + 1 WHERE chain = ? AND seq >= ?", (chain, seq))
        conn.execute(
            "INSERT INTO records (chain, seq, hash, body) VALUES (?, ?, ?, ?)",
            (chain, seq, digest, body),
        )
    return digest


def duplicate_seq(path: Path, chain: str, seq: int) -> None:
    """Store a second, identical copy of record ``seq`` (needs the unique index dropped)."""
    digest, body = row(path, chain, seq)
    with _tampering(path, drop_index=True) as conn:
        conn.execute(
            "INSERT INTO records (chain, seq, hash, body) VALUES (?, ?, ?, ?)",
            (chain, seq, digest, body),
        )


def move_chain(path: Path, chain: str, seq: int, to_chain: str) -> None:
    """Move a record's row to another chain, bytes and hash unchanged."""
    with _tampering(path) as conn:
        conn.execute(
            "UPDATE records SET chain = ? WHERE chain = ? AND seq = ?", (to_chain, chain, seq)
        )


def set_text(path: Path, chain: str, seq: int, column: str, text: str) -> None:
    """Store ``text`` as a record's ``hash`` or ``body`` with SQLite type TEXT, not BLOB."""
    if column not in ("hash", "body"):
        raise ValueError(f"no column {column!r} to store text in")
    with _tampering(path) as conn:
        conn.execute(
            f"UPDATE records SET {column} = ? WHERE chain = ? AND seq = ?",  # noqa: S608 (checked)
            (text, chain, seq),
        )


def cast_column(path: Path, chain: str, seq: int, column: str) -> None:
    """Re-type a record's ``hash`` or ``body`` as SQLite TEXT, its bytes unchanged."""
    if column not in ("hash", "body"):
        raise ValueError(f"no column {column!r} to cast")
    with _tampering(path) as conn:
        conn.execute(
            f"UPDATE records SET {column} = CAST({column} AS TEXT) "  # noqa: S608 (checked)
            "WHERE chain = ? AND seq = ?",
            (chain, seq),
        )


def _spaced(body: bytes) -> bytes:
    return body.replace(b'":', b'": ', 1)


def _reordered(body: bytes) -> bytes:
    value = orjson.loads(body)
    members = [canonical_bytes(k) + b":" + canonical_bytes(v) for k, v in value.items()]
    return b"{" + b",".join(reversed(members)) + b"}"


def _escaped(body: bytes) -> bytes:
    return body.replace(b'"event":', b'"\\u0065vent":', 1)


def _float_version(body: bytes) -> bytes:
    if not body.endswith(b'"v":1}'):
        raise ValueError("expected a body ending in the format version")
    return body[: -len(b"1}")] + b"1.0}"


#: Ways to write the same JSON value with other bytes than its RFC 8785 form.
NONCANONICAL_STYLES: dict[str, Callable[[bytes], bytes]] = {
    "whitespace": _spaced,
    "key order": _reordered,
    "escaped key": _escaped,
    "number form": _float_version,
}


def reencode_noncanonical(path: Path, chain: str, seq: int, style: str) -> bytes:
    """Store a record with the same meaning in non-canonical bytes, hash recomputed.

    The new hash also breaks the next record's ``prev``; the verifier must fail at this record.
    Returns the new bytes.
    """
    old = row(path, chain, seq)[1]
    new = NONCANONICAL_STYLES[style](old)
    if new == old or orjson.loads(new) != orjson.loads(old):
        raise AssertionError(f"style {style!r} must change the bytes and keep the meaning")
    set_body(path, chain, seq, new, rehash=True)
    return new
