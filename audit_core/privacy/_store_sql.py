"""The privacy store's SQL, for SQLite and PostgreSQL (:mod:`audit_core.privacy.store`).

One text per statement, written with ``?`` placeholders and ``{subjects}``, ``{openings}``,
``{erasures}`` table names; :func:`dialect` fills them in for a database (PostgreSQL: ``%s``
and tables prefixed ``wa_privacy_``, so the store can share a database with a ledger).

>>> dialect("postgresql").pseudonym
'SELECT pseudonym FROM wa_privacy_subjects WHERE identifier = %s'
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

__all__ = ["Dialect", "dialect"]

# "values" is an SQL keyword: quoted. kind 'sealed': the value is on the chain (a policy's
# encrypt) and the row only says whose key sealed it (sealed IS NULL).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS {subjects} (
    pseudonym  TEXT PRIMARY KEY,
    identifier TEXT NOT NULL UNIQUE,
    created    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {openings} (
    nonce     {blob} NOT NULL,
    pointer   TEXT NOT NULL,
    chain     TEXT NOT NULL,
    pseudonym TEXT NOT NULL,
    kind      TEXT NOT NULL CHECK (kind IN ('commit', 'sealed')),
    sealed    {blob},
    PRIMARY KEY (nonce, pointer)
);
CREATE INDEX IF NOT EXISTS {openings}_pseudonym ON {openings} (pseudonym);
CREATE TABLE IF NOT EXISTS {erasures} (
    pseudonym    TEXT PRIMARY KEY,
    kcv          TEXT NOT NULL,
    records      INTEGER NOT NULL,
    "values"     INTEGER NOT NULL,
    basis        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'done'))
);
"""
_ERASURE_COLUMNS = 'pseudonym, kcv, records, "values", basis, reason, requested_at, state'
_OPENING_COLUMNS = "nonce, pointer, chain, pseudonym, kind, sealed"


@dataclass(frozen=True, slots=True)
class Dialect:
    """Every statement of the store, for one database."""

    schema: str
    pseudonym: str
    new_subject: str
    add_opening: str
    opening: str
    openings: str
    openings_of: str
    count_openings: str
    delete_subject: str
    add_erasure: str
    erasure: str
    erasures: str
    pending: str
    delete_openings: str
    discard: str
    erasure_done: str
    stats: str


_STATEMENTS = Dialect(
    schema=_SCHEMA,
    pseudonym="SELECT pseudonym FROM {subjects} WHERE identifier = ?",
    new_subject="INSERT INTO {subjects} (pseudonym, identifier, created) VALUES (?, ?, ?) "
    "ON CONFLICT DO NOTHING",
    add_opening="INSERT INTO {openings} ({ocols}) VALUES (?, ?, ?, ?, ?, ?)",
    opening="SELECT {ocols} FROM {openings} WHERE nonce = ? AND pointer = ?",
    openings="SELECT {ocols} FROM {openings} ORDER BY nonce, pointer",
    openings_of="SELECT {ocols} FROM {openings} WHERE pseudonym = ? ORDER BY nonce, pointer",
    count_openings="SELECT count(DISTINCT nonce), count(*) FROM {openings} WHERE pseudonym = ?",
    delete_subject="DELETE FROM {subjects} WHERE pseudonym = ?",
    add_erasure="INSERT INTO {erasures} ({ecols}) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
    erasure="SELECT {ecols} FROM {erasures} WHERE pseudonym = ?",
    erasures="SELECT {ecols} FROM {erasures} ORDER BY requested_at, pseudonym",
    pending="SELECT {ecols} FROM {erasures} WHERE state = 'pending' "
    "ORDER BY requested_at, pseudonym",
    delete_openings="DELETE FROM {openings} WHERE pseudonym = ?",
    discard="DELETE FROM {openings} WHERE nonce = ?",
    erasure_done="UPDATE {erasures} SET state = 'done' WHERE pseudonym = ?",
    stats="SELECT (SELECT count(*) FROM {subjects}), (SELECT count(*) FROM {openings}), "
    "(SELECT count(*) FROM {erasures} WHERE state = 'pending'), "
    "(SELECT count(*) FROM {erasures} WHERE state = 'done')",
)


def dialect(kind: Literal["sqlite", "postgresql"]) -> Dialect:
    """The statements for SQLite or PostgreSQL."""
    prefix, blob = ("", "BLOB") if kind == "sqlite" else ("wa_privacy_", "BYTEA")
    names = {
        "subjects": prefix + "subjects",
        "openings": prefix + "openings",
        "erasures": prefix + "erasures",
        "blob": blob,
        "ocols": _OPENING_COLUMNS,
        "ecols": _ERASURE_COLUMNS,
    }
    texts = {}
    for field in fields(Dialect):
        text = getattr(_STATEMENTS, field.name).format(**names)
        texts[field.name] = text if kind == "sqlite" else text.replace("?", "%s")
    return Dialect(**texts)
