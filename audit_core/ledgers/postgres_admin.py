"""The PostgreSQL ledger's schema, triggers and roles (``workflow-audit postgres init``).

>>> from audit_core.ledgers.postgres_admin import WRITER_ROLE, AUDITOR_ROLE
>>> (WRITER_ROLE, AUDITOR_ROLE)
('workflow_audit_writer', 'workflow_audit_auditor')

Append-only is enforced by the database, twice:

* triggers refuse UPDATE, DELETE (``BEFORE … FOR EACH ROW``) and TRUNCATE (``BEFORE TRUNCATE
  FOR EACH STATEMENT``) on ``records``, ``merkle_subtrees``, ``checkpoints`` and
  ``record_keys`` (idempotency keys), for every role, the owner included (only the owner can
  drop or disable them, and ``workflow-audit verify`` catches what that would allow);
* the group role ``workflow_audit_writer`` may only SELECT and INSERT those tables (no UPDATE,
  DELETE or TRUNCATE privilege at all), and ``workflow_audit_auditor`` may only SELECT.

The query index (``record_index``, ``index_state``; :mod:`audit_core.query`) is not evidence
and has no append-only trigger: it is derived from ``records``, rebuilt by ``workflow-audit
index rebuild`` (which deletes and rewrites its rows, so the writer may DELETE and UPDATE
them), and never read by ``verify``. A query re-reads and re-filters every record it returns
from ``records``, so an edited index can hide a record from a page but never show a false one.
The auditor may only SELECT it.

The writer may UPDATE two things: ``cursors`` (a sink's progress, which moves by design) and
the ``seq``/``hash`` columns of ``chain_heads``. ``chain_heads`` is the row each append locks
(``SELECT … FOR UPDATE`` needs the UPDATE privilege) and a cache of each chain's head; it is
not evidence. Appends take the head from ``records`` inside the locked transaction and only
compare it with ``chain_heads``, and verification reads ``records`` alone, so a rewritten
``chain_heads`` row can delay a writer but cannot change, hide or fork a record.

Login users get the group roles (``--writer-role etl_writer --writer-password …``); the ledger
tables stay owned by the role that ran ``init``, which the writers must not be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from audit_core.errors import LedgerError
from audit_core.ledgers import check_url_password, masked_error

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "AUDITOR_ROLE",
    "SCHEMA_SQL",
    "SCHEMA_VERSION",
    "WRITER_ROLE",
    "InitResult",
    "create_cosignature_table",
    "create_index_tables",
    "create_key_table",
    "create_schema",
    "init",
]

SCHEMA_VERSION = 1
WRITER_ROLE = "workflow_audit_writer"
AUDITOR_ROLE = "workflow_audit_auditor"

# Idempotency keys (docs/FORMAT.md): also added on its own to a ledger made before them.
_KEYS_SQL = """
-- Idempotency keys (docs/FORMAT.md): at most one record per (chain, key). Not evidence.
CREATE TABLE IF NOT EXISTS record_keys (
    chain text   NOT NULL,
    key   text   NOT NULL,
    seq   bigint NOT NULL,  -- the record stored under the key
    PRIMARY KEY (chain, key)
);
"""

# Witness cosignatures (c2sp.org/tlog-cosignature), as in audit_core/ledgers/sqlite.py: evidence,
# append-only; also added on its own to a ledger made before them.
_COSIGN_SQL = """
CREATE TABLE IF NOT EXISTS cosignatures (
    chain   text   NOT NULL,
    size    bigint NOT NULL,
    body    text   NOT NULL,  -- the checkpoint text cosigned (c2sp.org/tlog-checkpoint)
    line    text   NOT NULL,  -- the witness's note signature line
    created text   NOT NULL,
    PRIMARY KEY (chain, size, line)
);
"""

# The query index, as in audit_core/ledgers/sqlite.py. COLLATE "C": byte order, the order
# Python compares strings in, so a page's keyset (ts, chain, seq) means the same everywhere.
_INDEX_TABLES_SQL = """
CREATE TABLE IF NOT EXISTS record_index (
    chain text COLLATE "C" NOT NULL,
    seq   bigint NOT NULL,
    ts    text COLLATE "C" NOT NULL,
    event text COLLATE "C" NOT NULL,
    dag   text COLLATE "C" NOT NULL,  -- "" for a record about no DAG
    run   text COLLATE "C",
    task  text COLLATE "C",
    actor text COLLATE "C",
    PRIMARY KEY (chain, seq)
);
CREATE INDEX IF NOT EXISTS record_index_ts ON record_index (ts, chain, seq);
CREATE INDEX IF NOT EXISTS record_index_event ON record_index (event, ts, chain, seq);
CREATE INDEX IF NOT EXISTS record_index_dag_event ON record_index (dag, event, ts, chain, seq);
CREATE INDEX IF NOT EXISTS record_index_run ON record_index (run, dag, ts, chain, seq);
CREATE INDEX IF NOT EXISTS record_index_actor ON record_index (actor, ts, chain, seq);
CREATE TABLE IF NOT EXISTS index_state (
    chain text COLLATE "C" PRIMARY KEY,
    size  bigint NOT NULL  -- records 0..size-1 of the chain are indexed
);
"""
_INDEX_GRANTS = f"""
GRANT SELECT, INSERT, UPDATE, DELETE ON record_index, index_state TO {WRITER_ROLE};
GRANT SELECT ON record_index, index_state TO {AUDITOR_ROLE};
"""

# Same shapes and meanings as audit_core/ledgers/sqlite.py, plus chain_heads (the lock row)
# and records.idem (the idempotency key of an append, so a retry never appends twice).
SCHEMA_SQL = (
    """
CREATE TABLE IF NOT EXISTS records (
    chain text   NOT NULL,
    seq   bigint NOT NULL,
    hash  bytea  NOT NULL,  -- SHA-256(0x00 || body), RFC 9162 leaf hash
    body  bytea  NOT NULL,  -- the RFC 8785 canonical bytes that were hashed, exactly
    idem  bytea  NOT NULL,  -- 16 random bytes chosen by the writer, kept across its retries
    PRIMARY KEY (chain, seq),
    UNIQUE (idem)
);
-- One row per chain: locked FOR UPDATE by every append (the sequencer), and a cache of the
-- head. Not evidence: appends and verification take the head from records.
CREATE TABLE IF NOT EXISTS chain_heads (
    chain text   PRIMARY KEY,
    seq   bigint NOT NULL,  -- -1: no record yet
    hash  bytea  NOT NULL
);
-- RFC 9162 complete subtrees, exactly as in SQLite: the row of an odd seq holds the hashes of
-- levels 1..k it completes, concatenated (32 bytes each, level 1 first).
CREATE TABLE IF NOT EXISTS merkle_subtrees (
    chain  text   NOT NULL,
    last   bigint NOT NULL,
    hashes bytea  NOT NULL,
    PRIMARY KEY (chain, last)
);
-- Signed checkpoints (c2sp.org/tlog-checkpoint in a c2sp.org/signed-note).
CREATE TABLE IF NOT EXISTS checkpoints (
    chain   text   NOT NULL,
    size    bigint NOT NULL,
    root    bytea  NOT NULL,
    note    text   NOT NULL,
    created text   NOT NULL,
    PRIMARY KEY (chain, size)
);
-- Consumers' (sinks') progress: updatable by design, never evidence.
CREATE TABLE IF NOT EXISTS cursors (
    name  text   NOT NULL,
    chain text   NOT NULL,
    seq   bigint NOT NULL,
    PRIMARY KEY (name, chain)
);"""
    + _KEYS_SQL
    + _COSIGN_SQL
    + _INDEX_TABLES_SQL
    + """CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO meta (key, value) VALUES ('schema_version', '1') ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION workflow_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'workflow-audit % are append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'records are evidence; append a correcting record instead';
END
$$;
"""
)

_APPEND_ONLY_TABLES = ("records", "merkle_subtrees", "checkpoints", "record_keys", "cosignatures")


def _trigger_sql(table: str) -> str:
    return (
        f"CREATE OR REPLACE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION workflow_audit_append_only();\n"
        f"CREATE OR REPLACE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION workflow_audit_append_only();\n"
    )


_GRANTS = f"""
GRANT SELECT, INSERT ON records, merkle_subtrees, checkpoints, record_keys, cosignatures
    TO {WRITER_ROLE};
GRANT SELECT, INSERT, UPDATE ON cursors TO {WRITER_ROLE};
GRANT SELECT, INSERT ON chain_heads TO {WRITER_ROLE};
GRANT UPDATE (seq, hash) ON chain_heads TO {WRITER_ROLE};
GRANT SELECT ON meta TO {WRITER_ROLE};
GRANT SELECT ON records, chain_heads, merkle_subtrees, checkpoints, cursors, meta, record_keys,
    cosignatures TO {AUDITOR_ROLE};
{_INDEX_GRANTS}"""

# Concurrent first writers must not race on CREATE TABLE IF NOT EXISTS (it is not atomic
# against another transaction creating the same table): one advisory lock serializes them.
_SCHEMA_LOCK = 0x77_61_75_64_69_74  # "waudit"


@dataclass(frozen=True, slots=True)
class InitResult:
    """What ``init`` did."""

    pgaudit: bool  # the pgaudit extension is installed in this database
    logins: tuple[str, ...]  # login roles created or updated


def create_schema(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Create the tables and append-only triggers (idempotent), in one transaction."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(SCHEMA_SQL.encode())
        for table in _APPEND_ONLY_TABLES:
            conn.execute(_trigger_sql(table).encode())


def create_key_table(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Add ``record_keys``, its triggers and its grants to a ledger made before idempotency
    keys, in one transaction; nothing else. Run as the tables' owner (the ledger does it for
    a role that owns ``records``): a writer must never own the table, or the auditor would
    have no grant on it and the writer could delete its rows."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(_KEYS_SQL.encode())
        conn.execute(_trigger_sql("record_keys").encode())
        # the group roles exist when `postgres init` made the ledger
        if _role_exists(conn, WRITER_ROLE):
            conn.execute(f"GRANT SELECT, INSERT ON record_keys TO {WRITER_ROLE}".encode())
        if _role_exists(conn, AUDITOR_ROLE):
            conn.execute(f"GRANT SELECT ON record_keys TO {AUDITOR_ROLE}".encode())


def create_index_tables(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Add the (empty) query index tables and their grants to a ledger made before them, in
    one transaction; ``workflow-audit index rebuild`` then fills them. Run as the tables'
    owner, as :func:`create_key_table`."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(_INDEX_TABLES_SQL.encode())
        if _role_exists(conn, WRITER_ROLE) and _role_exists(conn, AUDITOR_ROLE):
            conn.execute(_INDEX_GRANTS.encode())


def create_cosignature_table(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Add ``cosignatures``, its triggers and grants to a ledger made before witness
    cosignatures, in one transaction. Run as the tables' owner, as :func:`create_key_table`."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(_COSIGN_SQL.encode())
        conn.execute(_trigger_sql("cosignatures").encode())
        if _role_exists(conn, WRITER_ROLE):
            conn.execute(f"GRANT SELECT, INSERT ON cosignatures TO {WRITER_ROLE}".encode())
        if _role_exists(conn, AUDITOR_ROLE):
            conn.execute(f"GRANT SELECT ON cosignatures TO {AUDITOR_ROLE}".encode())


def _role_exists(conn: psycopg.Connection[tuple[object, ...]], role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def _ensure_role(
    conn: psycopg.Connection[tuple[object, ...]],
    role: str,
    *,
    login: bool,
    password: str | None = None,
    member_of: str | None = None,
) -> None:
    from psycopg import sql

    name = sql.Identifier(role)
    if not _role_exists(conn, role):
        conn.execute(sql.SQL("CREATE ROLE {} " + ("LOGIN" if login else "NOLOGIN")).format(name))
    if password is not None:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(name, sql.Literal(password)))
    if member_of is not None:
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(member_of), name))


def init(
    url: str,
    *,
    writer: str | None = None,
    writer_password: str | None = None,
    auditor: str | None = None,
    auditor_password: str | None = None,
) -> InitResult:
    """Create the schema, triggers, group roles and grants in the database ``url`` names, and
    optionally login roles for a writer and an auditor. Idempotent; run as the tables' owner.
    Installs pgaudit (``CREATE EXTENSION``) when the server preloads it."""
    import psycopg

    check_url_password(url)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            create_schema(conn)
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                _ensure_role(conn, WRITER_ROLE, login=False)
                _ensure_role(conn, AUDITOR_ROLE, login=False)
                schema = conn.execute("SELECT current_schema()").fetchone()
                from psycopg import sql

                for role in (WRITER_ROLE, AUDITOR_ROLE):
                    conn.execute(
                        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                            sql.Identifier(str(schema[0] if schema else "public")),
                            sql.Identifier(role),
                        )
                    )
                conn.execute(_GRANTS.encode())
                logins = []
                if writer:
                    _ensure_role(
                        conn, writer, login=True, password=writer_password, member_of=WRITER_ROLE
                    )
                    logins.append(writer)
                if auditor:
                    _ensure_role(
                        conn,
                        auditor,
                        login=True,
                        password=auditor_password,
                        member_of=AUDITOR_ROLE,
                    )
                    logins.append(auditor)
            preload = conn.execute("SHOW shared_preload_libraries").fetchone()
            pgaudit = preload is not None and "pgaudit" in str(preload[0])
            if pgaudit:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pgaudit")
    except psycopg.Error as exc:
        why = masked_error(str(exc), url)
        for secret in (writer_password, auditor_password):  # a role's password in a statement
            if secret:
                why = why.replace(secret, "***")
        raise LedgerError(f"cannot initialize the PostgreSQL ledger: {why}") from exc
    return InitResult(pgaudit=pgaudit, logins=tuple(logins))
