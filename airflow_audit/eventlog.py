"""Airflow's event log (the ``log`` table of the metadata DB) as a source of records.

:class:`AirflowLogSource` reads ``log`` rows by id with SQLAlchemy Core on an engine of its
own (never the scheduler's or the API server's ORM session: a slow read must not hold their
transactions), and hands them to :class:`audit_core.sources.Ingestor` as events of the record
taxonomy (:mod:`airflow_audit.eventmap`). :func:`open_source` is the ``airflow`` entry of the
``workflow_audit.sources`` entry point group (``workflow-audit ingest airflow``).

>>> source = AirflowLogSource("sqlite:///:memory:")
>>> source.name, source.chain
('airflow.log', 'airflow-events')
>>> source.close()

A ``trigger_dag_run`` row is written before the run it asks for exists (``action_logging``
commits before the endpoint runs). When neither the row nor its body names the run, the run is
looked up in ``dag_run``: the one manual run of that DAG, triggered by the same user, created
after the row and before both the DAG's next ``trigger_dag_run`` row and :data:`LINK_WINDOW_S`
later. A row younger than ``link_wait_s`` whose run is not there yet is read again on the next
step (the rows before it are recorded). Two candidates (triggers handled concurrently): no
link, ``data.run_link = "ambiguous"``; none (the request failed, the run is deleted):
``"not_found"``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_audit.eventmap import to_event
from audit_core.errors import SourceError
from audit_core.sources import SourceRow

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from audit_core import AuditConfig

__all__ = ["LINK_WINDOW_S", "NAME", "AirflowLogSource", "open_source", "utc"]

#: The source's name; its cursor in the ledger is ``source:airflow.log``.
NAME = "airflow.log"
#: Seconds after a ``trigger_dag_run`` row within which the run it created is looked for.
LINK_WINDOW_S = 60.0
_SLACK = dt.timedelta(seconds=1)
_COLUMNS = (
    "id",
    "dttm",
    "dag_id",
    "task_id",
    "map_index",
    "event",
    "logical_date",
    "run_id",
    "owner",
    "owner_display_name",
    "extra",
    "try_number",
)
_SOURCES: weakref.WeakSet[AirflowLogSource] = weakref.WeakSet()


class AirflowLogSource:
    """The ``log`` table of the Airflow metadata DB at ``url`` (``[database]
    sql_alchemy_conn``), as a :class:`audit_core.sources.Source`. Thread-safe."""

    name = NAME

    def __init__(
        self,
        url: str,
        *,
        chain: str = "airflow-events",
        ledger_url: str | None = None,
        config: AuditConfig | None = None,
        schema: str | None = None,
        record_conf: bool = False,
        link_wait_s: float = 5.0,
        engine_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        from sqlalchemy import TIMESTAMP, column, table

        self.url = url
        # Airflow's tables live in ``[database] sql_alchemy_schema`` when it is set.
        self._log = table("log", *(column(name) for name in _COLUMNS), schema=schema or None)
        self._dag_run = table(
            "dag_run",
            *(column(n) for n in ("id", "dag_id", "run_id", "run_type")),
            # typed: the linkage compares it with datetimes in SQL
            column("created_at", TIMESTAMP(timezone=True)),
            column("triggering_user_name"),
            schema=schema or None,
        )
        #: the chain and the ledger ``workflow-audit ingest airflow`` writes by default: the
        #: plugin's (``[workflow_audit] events_chain`` and ``ledger_url``)
        self.chain = chain
        self.ledger_url = ledger_url
        #: the plugin's configuration (signing key, ``redact_keys``), so the sidecar command
        #: signs and redacts as the plugin does
        self.config = config
        self.record_conf = record_conf  #: ``[workflow_audit] record_conf``
        self.link_wait_s = link_wait_s
        #: more arguments of ``create_engine``: Airflow's own (``[database]
        #: sql_alchemy_connect_args``, where TLS settings live)
        self.engine_kwargs = dict(engine_kwargs or {})
        self._engine: Engine | None = None
        _SOURCES.add(self)

    def __repr__(self) -> str:
        return f"AirflowLogSource({_masked_url(self.url)!r})"

    def rows_after(self, after: int, limit: int) -> Sequence[SourceRow]:
        """At most ``limit`` rows with ``id > after``, by id (see the module docstring for the
        one reason to return fewer)."""
        from sqlalchemy import select

        log = self._log.c
        query = select(self._log).where(log.id > after).order_by(log.id).limit(limit)
        out: list[SourceRow] = []
        now = dt.datetime.now(dt.timezone.utc)
        with self._connect() as conn:
            for values in conn.execute(query):
                row = dict(zip(_COLUMNS, values, strict=True))
                row["dttm"] = written = utc(row["dttm"]) or now
                row["logical_date"] = utc(row["logical_date"])
                linked, unlinked = None, None
                if _needs_link(row):
                    linked, unlinked = self._linked_run(conn, row)
                    age = (now - written).total_seconds()
                    if linked is None and 0 <= age < self.link_wait_s:
                        break  # the run is being created: read this row again next step
                event = to_event(
                    row, linked_run_id=linked, unlinked=unlinked, record_conf=self.record_conf
                )
                out.append(SourceRow(id=int(row["id"]), written=written, event=event))
        return out

    def oldest_id(self) -> int | None:
        from sqlalchemy import func, select

        with self._connect() as conn:
            value = conn.execute(select(func.min(self._log.c.id))).scalar()
        return None if value is None else int(value)

    def newest_id(self) -> int | None:
        """``MAX(log.id)``: how the ingestor sees ids restart below its cursor (SQLite reuses
        them once ``airflow db clean -t log`` emptied the table; a restored database)."""
        from sqlalchemy import func, select

        with self._connect() as conn:
            latest = conn.execute(select(func.max(self._log.c.id))).scalar()
        return None if latest is None else int(latest)

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    def _linked_run(self, conn: Connection, row: Mapping[str, Any]) -> tuple[str | None, str]:
        from sqlalchemy import func, select

        # The run was created after its trigger's row and before the next trigger's row of
        # the same DAG (each row is committed before its run is created): that interval, by
        # the same user, holds exactly the run when the API handled triggers one at a time.
        start: dt.datetime = row["dttm"]
        end = start + dt.timedelta(seconds=LINK_WINDOW_S)
        log, dag_run = self._log.c, self._dag_run.c
        following = conn.execute(
            select(func.min(log.dttm)).where(
                log.event == "trigger_dag_run", log.dag_id == row["dag_id"], log.id > row["id"]
            )
        ).scalar()
        end = min(end, utc(following) or end)
        # The window in SQL, however old the row (a first install reads years of them), a
        # second wider each side: SQLite compares text, whose precision varies; the exact
        # bounds are checked below. MySQL takes naive UTC (as Airflow's UtcDateTime sends).
        naive = conn.dialect.name == "mysql"
        low, high = (
            (t.replace(tzinfo=None) if naive else t) for t in (start - _SLACK, end + _SLACK)
        )
        runs = conn.execute(
            select(dag_run.run_id, dag_run.created_at, dag_run.triggering_user_name)
            .where(
                dag_run.dag_id == row["dag_id"],
                dag_run.run_type == "manual",
                dag_run.created_at >= low,
                dag_run.created_at < high,
            )
            .order_by(dag_run.created_at)
            .limit(100)  # two are already ambiguous; a bound on a pathological DAG
        )
        found = []
        for run_id, created_at, user in runs:
            created = utc(created_at)  # not queued_at: clearing a run moves it
            if created is None or not start <= created < end:
                continue
            if row["owner"] and user and user != row["owner"]:
                continue
            found.append(str(run_id))
        if len(found) == 1:
            return found[0], "dag_run"
        return None, "ambiguous" if found else "not_found"

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Connection]:
        """A connection for one read; any database error while connecting or reading (a
        dropped connection, a missing table) is a SourceError naming the URL without its
        password (the ingestor then reopens the source)."""
        from sqlalchemy.exc import SQLAlchemyError

        try:
            conn = self._get_engine().connect()
        except (SQLAlchemyError, ImportError, ValueError, TypeError) as exc:
            raise self._error(exc) from None
        try:
            with conn:
                yield conn
        except SQLAlchemyError as exc:
            raise self._error(exc) from None

    def _error(self, exc: BaseException) -> SourceError:
        return SourceError(
            f"cannot read Airflow's event log at {_masked_url(self.url)}: {_reason(exc, self.url)}"
        )

    def _get_engine(self) -> Engine:
        if self._engine is None:
            from sqlalchemy import create_engine
            from sqlalchemy.engine import make_url
            from sqlalchemy.pool import NullPool

            url = make_url(self.url)
            if url.get_backend_name() == "sqlite":
                # A file opened per read: no connection (or SQLite lock) held between steps
                # or inherited across fork.
                pool: dict[str, Any] = {"poolclass": NullPool}
                if url.database and url.database != ":memory:" and "uri" not in url.query:
                    # read-only: a mistyped path is an error, not a new empty database
                    url = url.set(
                        database=f"file:{url.database}",
                        query={**url.query, "mode": "ro", "uri": "true"},
                    )
            else:
                # One connection is all a reader needs; pre-ping survives a DB restart.
                pool = {
                    "pool_size": 1,
                    "max_overflow": 1,
                    "pool_pre_ping": True,
                    "pool_recycle": 1800,
                }
            # the pool is ours, whatever Airflow's own engine arguments say
            self._engine = create_engine(url, **{**self.engine_kwargs, **pool})
        return self._engine


def open_source() -> AirflowLogSource:
    """The ``airflow`` source of ``workflow-audit ingest``: Airflow's configured metadata DB,
    with the plugin's events chain and ledger as the defaults."""
    from airflow_audit._compat import metadata_db, metadata_engine_kwargs
    from airflow_audit.settings import load_settings

    settings = load_settings()
    url, schema = metadata_db()
    return AirflowLogSource(
        url,
        chain=settings.events_chain,
        ledger_url=settings.audit.ledger_url,
        config=settings.audit,
        schema=schema,
        record_conf=settings.record_conf,
        engine_kwargs=metadata_engine_kwargs(),
    )


def utc(value: object) -> dt.datetime | None:
    """A ``UtcDateTime`` column's value as an aware UTC datetime (SQLite hands back naive
    UTC text, PostgreSQL an aware datetime).

    >>> utc("2026-12-05 00:01:02.500000")
    datetime.datetime(2026, 12, 5, 0, 1, 2, 500000, tzinfo=datetime.timezone.utc)
    """
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, dt.datetime):
        return None
    return (
        value.replace(tzinfo=dt.timezone.utc)
        if value.tzinfo is None
        else value.astimezone(dt.timezone.utc)
    )


def _needs_link(row: Mapping[str, Any]) -> bool:
    if row["event"] != "trigger_dag_run" or row["run_id"] or not row["dag_id"]:
        return False
    try:
        body = json.loads(row["extra"] or "{}")
    except ValueError:
        return True
    # the body's dag_run_id (kept in extra by action_logging) names the run already
    return not (isinstance(body, dict) and (body.get("dag_run_id") or body.get("run_id")))


def _masked_url(url: str) -> str:
    """``url`` without its password, in the userinfo or in the query (``?password=…``,
    ``?sslpassword=…``: any query value may be one, so none is shown: ``xxx``).

    >>> _masked_url("postgresql://u:pw@h/db?password=pw2&sslmode=require")
    'postgresql://u:***@h/db?password=xxx&sslmode=xxx'
    """
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        parsed = parsed.set(query=dict.fromkeys(parsed.query, "xxx"))  # "*" is %-escaped
        return parsed.render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL: show nothing of it
        return "<unparsable database URL>"


def _reason(exc: BaseException, url: str) -> str:
    """The driver's first line, never the password (a driver may echo its connection string)."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    reason = f"{type(exc).__name__}: {text[0] if text else ''}"
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        secrets = [str(parsed.password or ""), *(str(v) for v in parsed.query.values())]
    except Exception:  # noqa: BLE001 - _masked_url said so already
        secrets = []
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        reason = reason.replace(secret, "***")
    return reason


def _after_fork() -> None:
    # A forked child (LocalExecutor workers of the scheduler) must not use, nor close, the
    # parent's pooled connections: drop them without closing (SQLAlchemy's pooling advice).
    for source in list(_SOURCES):
        engine = source._engine
        if engine is not None:
            engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
