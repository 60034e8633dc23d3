"""Who may do what in Airflow, and every change of it, on the events chain.

A *snapshot* is plain JSON: with the FAB auth manager, its users (name, active flag, role
names; never a password hash or an e-mail) and roles (name, sorted ``action:resource``
permission names), read with SQLAlchemy Core from the ``ab_*`` tables of Airflow's metadata
DB; with SimpleAuthManager, ``[core] simple_auth_manager_users`` (user -> role) and
``simple_auth_manager_all_admins`` (never the passwords file).

:func:`diff` turns two snapshots into the ``permission.changed`` changes (``user.created``,
``user.deleted``, ``user.updated``, ``user.roles``, ``role.created``, ``role.deleted``,
``role.permissions``, ``config``). :class:`PermissionChecker` records them exactly once across
processes: the digest of the last recorded snapshot is the value of the ledger cursor
``source:airflow.permissions`` of the events chain, and records are appended only if that
cursor still holds the digest the process diffed against (compare-and-set in the append's
transaction). The first snapshot ever is one ``permission.snapshot`` record.

To diff after a restart a process needs the previous snapshot's content: the last record of
every batch carries it (``snapshot.*`` data members, split so that no member exceeds the
trail's value size limit), and a starting process finds it by reading the chain backwards
from its head, at most :data:`SCAN_LIMIT` records. Not found (or not intact): a new
``permission.snapshot`` with ``reason`` "previous snapshot unavailable" — never a silent hole.

:class:`PermissionWatcher` runs checks in a daemon thread: at start, every poll interval
(10 times the ingest interval), and at once after a mutating request under ``/auth/``
(:func:`after_request`, for the access middleware), whose user is then the records' actor. A
poll leaves a change it has seen for less than the settle time to that request-triggered
check of the worker that served the request (other workers' requests cannot be seen from
here: attribution by polls is best effort). Otherwise the actor is the latest ``airflow
users|roles`` CLI row of Airflow's ``log`` table naming the target within the poll window,
else ``("process", "airflow")``.

SimpleAuthManager's configuration is the process's own (read at its start; the scheduler and
an API server may differ): it is checked once per process start, never polled. A process
never records a switch of auth manager except in its first check: processes configured with
different auth managers record at their starts, they do not flip the record every poll.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_audit import access
from airflow_audit.access import RequestDone
from airflow_audit.eventlog import utc
from audit_core import (
    COUNTERS,
    AuditTrail,
    Event,
    Record,
    StoredRecord,
    canonical_bytes,
)
from audit_core.errors import CursorMoved

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = [
    "CURSOR",
    "FAB_AUTH_MANAGER",
    "POLL_INTERVAL_FACTOR",
    "SCAN_LIMIT",
    "SETTLE_S",
    "Change",
    "PermissionChecker",
    "PermissionWatcher",
    "Request",
    "Snapshot",
    "after_request",
    "airflow_snapshot_reader",
    "auth_manager_kind",
    "cli_attribution",
    "diff",
    "digest",
    "digest_int",
    "fab_snapshot",
    "find_snapshot",
    "pack",
    "requests_in_flight",
    "simple_snapshot",
    "start_permission_checks",
    "stop_permission_checks",
    "unpack",
    "wants_request",
]

logger = logging.getLogger("workflow_audit.airflow")

CURSOR = "source:airflow.permissions"
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
#: How many records a starting process reads back from the chain head for the last snapshot.
SCAN_LIMIT = 100_000
_SCAN_WINDOW = 2_000
_PROCESS_ACTOR = ("process", "airflow")
#: A request's user stays the actor of changes seen this long after the request.
_REQUEST_WINDOW_S = 60.0
#: Polls run every this many ingest intervals (10 s by default): a FAB snapshot is a join of
#: seven tables, read by the scheduler and every API server worker.
POLL_INTERVAL_FACTOR = 10
#: A poll records a change only once it has seen the same snapshot this long (at most half a
#: poll interval): the request-triggered check of the worker that served the change records
#: it first, with its user. Or once the recorded snapshot has been outdated for
#: ``_SETTLE_CAP`` settle times, whatever changed meanwhile (changes every few seconds must
#: not postpone their records forever).
SETTLE_S = 5.0
_SETTLE_CAP = 6
#: Snapshots of the process's own configuration: checked once per process start.
_LOCAL_KINDS = frozenset({"simple"})
_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Snapshot = dict[str, Any]
Change = dict[str, Any]


def auth_manager_kind(path: str) -> str | None:
    """``"fab"``, ``"simple"`` or None (an auth manager whose users we cannot read).

    >>> auth_manager_kind(FAB_AUTH_MANAGER), auth_manager_kind("x.SimpleAuthManager")
    ('fab', 'simple')
    """
    name = path.strip().rsplit(".", 1)[-1]
    return {"FabAuthManager": "fab", "SimpleAuthManager": "simple"}.get(name)


def digest(snapshot: Snapshot) -> str:
    """SHA-256 (hex) of the snapshot's canonical JSON."""
    return hashlib.sha256(canonical_bytes(snapshot)).hexdigest()


def digest_int(hex_digest: str) -> int:
    """The cursor value of a digest: its first 8 bytes, top bit cleared.

    >>> digest_int("ff" * 32) == 2**63 - 1
    True
    """
    return int(hex_digest[:16], 16) & (2**63 - 1)


# -- snapshots ---------------------------------------------------------------------------------


def simple_snapshot(users: str, all_admins: bool) -> Snapshot:
    """SimpleAuthManager's configuration: ``user:role[:teams]`` entries, comma-separated.

    >>> simple_snapshot(" bob:viewer, alice:admin ", False)["users"]
    [{'user': 'alice', 'role': 'admin'}, {'user': 'bob', 'role': 'viewer'}]
    """
    entries = []
    for item in users.split(","):
        parts = [p.strip() for p in item.strip().split(":")]
        if not parts[0]:
            continue
        entry: dict[str, Any] = {"user": parts[0], "role": parts[1] if len(parts) > 1 else None}
        if len(parts) > 2:
            entry["teams"] = parts[2]
        entries.append(entry)
    entries.sort(key=lambda e: (e["user"], str(e["role"])))
    return {"kind": "simple", "all_admins": all_admins, "users": entries}


def fab_snapshot(engine: Engine, schema: str | None = None) -> Snapshot:
    """Users and roles of the FAB auth manager, read in one transaction (no password hash,
    no e-mail, no login counters: only what decides access); ``schema``: Airflow's
    ``[database] sql_alchemy_schema``, where its tables live when set."""
    import sqlalchemy as sa

    t = {
        n: sa.table(n, *(sa.column(c) for c in cols), schema=schema or None)
        for n, cols in _FAB_TABLES.items()
    }
    user, role, user_role = t["ab_user"], t["ab_role"], t["ab_user_role"]
    pv, pvr, perm, view = (
        t["ab_permission_view"],
        t["ab_permission_view_role"],
        t["ab_permission"],
        t["ab_view_menu"],
    )
    conn_opts = (
        {"isolation_level": "REPEATABLE READ"} if engine.dialect.name == "postgresql" else {}
    )
    with engine.connect().execution_options(**conn_opts) as conn, conn.begin():
        roles: dict[str, set[str]] = {
            str(name): set() for (name,) in conn.execute(sa.select(role.c.name))
        }
        grants = sa.select(role.c.name, perm.c.name, view.c.name).select_from(
            pvr.join(role, pvr.c.role_id == role.c.id)
            .join(pv, pvr.c.permission_view_id == pv.c.id)
            .join(perm, pv.c.permission_id == perm.c.id)
            .join(view, pv.c.view_menu_id == view.c.id)
        )
        for role_name, action, resource in conn.execute(grants):
            roles.setdefault(str(role_name), set()).add(f"{action}:{resource}")
        users: dict[str, dict[str, Any]] = {
            str(name): {"user": str(name), "active": bool(active), "roles": set()}
            for name, active in conn.execute(sa.select(user.c.username, user.c.active))
        }
        member = sa.select(user.c.username, role.c.name).select_from(
            user_role.join(user, user_role.c.user_id == user.c.id).join(
                role, user_role.c.role_id == role.c.id
            )
        )
        for user_name, role_name in conn.execute(member):
            if str(user_name) in users:
                users[str(user_name)]["roles"].add(str(role_name))
    return {
        "kind": "fab",
        "roles": [{"role": r, "permissions": sorted(roles[r])} for r in sorted(roles)],
        "users": [{**users[u], "roles": sorted(users[u]["roles"])} for u in sorted(users)],
    }


_FAB_TABLES = {
    "ab_user": ("id", "username", "active"),
    "ab_role": ("id", "name"),
    "ab_user_role": ("user_id", "role_id"),
    "ab_permission_view": ("id", "permission_id", "view_menu_id"),
    "ab_permission_view_role": ("permission_view_id", "role_id"),
    "ab_permission": ("id", "name"),
    "ab_view_menu": ("id", "name"),
}


# -- diff --------------------------------------------------------------------------------------


def diff(before: Snapshot, after: Snapshot) -> list[Change]:
    """The changes from ``before`` to ``after``, each a ``permission.changed`` data object
    without its digest: roles created first, then changed, users created, updated and
    re-roled, users deleted, roles deleted last (each group by name).

    >>> a = simple_snapshot("bob:viewer", False)
    >>> [c["change"] for c in diff(a, simple_snapshot("bob:op", False))]
    ['config']
    >>> old = {"kind": "fab", "roles": [], "users": []}
    >>> new = {"kind": "fab", "roles": [{"role": "Ops", "permissions": ["can_read:DAGs"]}],
    ...        "users": [{"user": "bob", "active": True, "roles": ["Ops"]}]}
    >>> [(c["change"], c["target"]) for c in diff(old, new)]
    [('role.created', 'Ops'), ('user.created', 'bob')]
    """
    kind = after["kind"]
    if kind != before.get("kind"):
        return [_change(kind, "config", "auth_manager", before.get("kind"), kind)]
    if kind == "simple":
        old, new = _simple_config(before), _simple_config(after)
        return [] if old == new else [_change(kind, "config", "simple_auth_manager", old, new)]
    roles_a, roles_b = _by(before["roles"], "role"), _by(after["roles"], "role")
    users_a, users_b = _by(before["users"], "user"), _by(after["users"], "user")
    changes: list[Change] = []
    for name in sorted(roles_b.keys() - roles_a.keys()):
        changes.append(_change(kind, "role.created", name, None, _role(roles_b[name])))
    for name in sorted(roles_a.keys() & roles_b.keys()):
        old_p, new_p = roles_a[name]["permissions"], roles_b[name]["permissions"]
        if old_p != new_p:
            change = _change(kind, "role.permissions", name, old_p, new_p)
            change["added"] = sorted(set(new_p) - set(old_p))
            change["removed"] = sorted(set(old_p) - set(new_p))
            changes.append(change)
    for name in sorted(users_b.keys() - users_a.keys()):
        changes.append(_change(kind, "user.created", name, None, _user(users_b[name])))
    for name in sorted(users_a.keys() & users_b.keys()):
        old_u, new_u = users_a[name], users_b[name]
        if old_u["active"] != new_u["active"]:
            changes.append(
                _change(
                    kind,
                    "user.updated",
                    name,
                    {"active": old_u["active"]},
                    {"active": new_u["active"]},
                )
            )
        if old_u["roles"] != new_u["roles"]:
            changes.append(_change(kind, "user.roles", name, old_u["roles"], new_u["roles"]))
    for name in sorted(users_a.keys() - users_b.keys()):
        changes.append(_change(kind, "user.deleted", name, _user(users_a[name]), None))
    for name in sorted(roles_a.keys() - roles_b.keys()):
        changes.append(_change(kind, "role.deleted", name, _role(roles_a[name]), None))
    return changes


def _change(kind: str, change: str, target: str, before: object, after: object) -> Change:
    return {
        "authenticator": kind,
        "change": change,
        "target": target,
        "before": before,
        "after": after,
    }


def _by(items: Iterable[Mapping[str, Any]], key: str) -> dict[str, Mapping[str, Any]]:
    return {str(item[key]): item for item in items}


def _user(user: Mapping[str, Any]) -> dict[str, Any]:
    return {"active": user["active"], "roles": list(user["roles"])}


def _role(role: Mapping[str, Any]) -> dict[str, Any]:
    return {"permissions": list(role["permissions"])}


def _simple_config(snapshot: Snapshot) -> dict[str, Any]:
    return {"all_admins": snapshot.get("all_admins"), "users": snapshot.get("users", [])}


# -- the snapshot inside records ---------------------------------------------------------------


def pack(snapshot: Snapshot, limit: int) -> dict[str, Any]:
    """The snapshot as top-level data members none larger than ``limit`` bytes (the trail's
    ``max_value_bytes``, beyond which a value becomes a digest): ``snapshot`` holds its
    scalars, ``snapshot.<list>``, ``snapshot.<list>.1``, … its lists in pieces; a role whose
    permissions alone are too large appears in several pieces (:func:`unpack` merges them).

    >>> s = simple_snapshot("a:admin,b:viewer,c:op", True)
    >>> unpack(pack(s, 64)) == s
    True
    """
    budget = max(limit - 64, 32)
    out: dict[str, Any] = {
        "snapshot": {k: v for k, v in snapshot.items() if not isinstance(v, list)}
    }
    for key, items in snapshot.items():
        if not isinstance(items, list):
            continue
        pieces: list[list[Any]] = [[]]
        size = 2
        for item in _split_items(items, budget):
            item_size = _size(item) + 1
            if pieces[-1] and size + item_size > budget:
                pieces.append([])
                size = 2
            pieces[-1].append(item)
            size += item_size
        for i, piece in enumerate(pieces):
            out[f"snapshot.{key}" + (f".{i}" if i else "")] = piece
    return out


def _split_items(items: list[Any], budget: int) -> Iterable[Any]:
    """Each item; a role too large for one piece as several, each with part of its list."""
    for item in items:
        perms = item.get("permissions") if isinstance(item, dict) else None
        if perms is None or _size(item) <= budget:
            yield item
            continue
        base = _size({**item, "permissions": []})
        part: list[str] = []
        size = base
        for perm in perms:
            if part and size + _size(perm) + 1 > budget:
                yield {**item, "permissions": part}
                part, size = [], base
            part.append(perm)
            size += _size(perm) + 1
        yield {**item, "permissions": part}


def _size(value: object) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def unpack(data: Mapping[str, Any]) -> Snapshot | None:
    """The snapshot :func:`pack` stored in a record's data; None if absent or damaged."""
    head = data.get("snapshot")
    if not isinstance(head, dict) or "kind" not in head or head.get("truncated"):
        return None
    snapshot: Snapshot = dict(head)
    for key in sorted(k for k in data if k.startswith("snapshot.")):
        name, _, index = key[len("snapshot.") :].partition(".")
        piece = data[key]
        if not isinstance(piece, list):
            return None  # replaced by its digest: too large after all
        snapshot.setdefault(name, []).append((int(index or 0), piece))
    for name, value in list(snapshot.items()):
        if isinstance(value, list):
            items = [i for _, piece in sorted(value, key=lambda p: p[0]) for i in piece]
            snapshot[name] = _merge_roles(items) if name == "roles" else items
    return snapshot


def _merge_roles(items: list[Any]) -> list[Any]:
    merged: dict[str, dict[str, Any]] = {}
    for item in items:
        if item["role"] in merged:
            merged[item["role"]]["permissions"] += item["permissions"]
        else:
            merged[item["role"]] = {**item, "permissions": list(item["permissions"])}
    return list(merged.values())


def find_snapshot(trail: AuditTrail, chain: str, want: int) -> Snapshot | None:
    """The snapshot the cursor value ``want`` names (:func:`digest_int`), from the newest
    permission record of ``chain`` that carries one, reading back at most :data:`SCAN_LIMIT`
    records from the head; None when that record is not ``want``'s or is damaged."""
    head = trail.ledger.head(chain)
    if head is None:
        return None
    stop = head.seq + 1
    floor = max(0, stop - SCAN_LIMIT)
    while stop > floor:
        start = max(floor, stop - _SCAN_WINDOW)
        newest: Mapping[str, Any] | None = None
        for stored in trail.ledger.read(chain, start, stop):
            if b'"permission.' not in stored.body:  # cheap: most records are not ours
                continue
            record = Record.from_stored(stored)
            if record.event.startswith("permission.") and "snapshot" in record.data:
                newest = record.data
        if newest is not None:
            # the newest snapshot-carrying record is the state the cursor names, or it is lost
            named = newest.get("digest")
            if not isinstance(named, str) or len(named) != 64 or digest_int(named) != want:
                return None
            snapshot = unpack(newest)
            if snapshot is None or digest_int(digest(snapshot)) != want:
                return None
            return snapshot
        stop = start
    return None


# -- attribution of CLI changes ----------------------------------------------------------------


def cli_attribution(
    engine: Engine, since: dt.datetime, changes: Sequence[Change], schema: str | None = None
) -> list[dict[str, Any] | None]:
    """For each change, the newest ``cli_users_*``/``cli_roles_*`` row of Airflow's ``log``
    table (in ``schema``) written at or after ``since`` whose command names the change's
    target: ``{"owner", "log_id", "event"}``, or None when there is none (never an unrelated
    row: its owner did not make this change, a REST or UI request may have)."""
    import sqlalchemy as sa

    names = ("id", "dttm", "event", "owner", "extra")
    log = sa.table("log", *(sa.column(c) for c in names), schema=schema or None)
    query = (
        sa.select(log.c.id, log.c.dttm, log.c.event, log.c.owner, log.c.extra)
        .where(sa.or_(log.c.event.like("cli_users_%"), log.c.event.like("cli_roles_%")))
        .order_by(log.c.id.desc())
        .limit(50)
    )
    with engine.connect() as conn:
        rows = [r for r in conn.execute(query) if (t := utc(r[1])) is not None and t >= since]
    result: list[dict[str, Any] | None] = []
    for change in changes:
        target = repr(str(change["target"]))  # full_command is the repr of argv
        hit = next((r for r in rows if target in str(r[4] or "")), None)
        result.append(
            None if hit is None else {"owner": str(hit[3]), "log_id": hit[0], "event": hit[2]}
        )
    return result


# -- recording ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """A mutating request under ``/auth/`` the API server answered (for the actor)."""

    user: str | None
    method: str
    path: str
    at: float  # time.monotonic()


class PermissionChecker:
    """Compares the current snapshot with the last recorded one and records the difference,
    exactly once across processes (module docstring). Thread-safe.

    ``settle_s``: how long a poll (a check without requests) leaves a change it sees to a
    request-triggered check (0: record at once). ``schema``: where the ``log`` table of the
    CLI attribution lives (``[database] sql_alchemy_schema``)."""

    def __init__(
        self,
        open_trail: Callable[[], AuditTrail],
        read_snapshot: Callable[[], Snapshot],
        *,
        chain: str,
        engine: Engine | None = None,
        window_s: float = 60.0,
        settle_s: float = 0.0,
        schema: str | None = None,
    ) -> None:
        self._open_trail = open_trail
        self._read = read_snapshot
        self.chain = chain
        self._engine = engine  # Airflow's DB, for the CLI rows of its log table
        self._schema = schema
        self._window_s = window_s
        self.settle_s = settle_s
        self._trail: AuditTrail | None = None
        self._known: tuple[int, Snapshot] | None = None
        # (cursor, digest, digest first seen, cursor first seen outdated) of a deferred change
        self._pending: tuple[int, str, float, float] | None = None
        self._checked = False  # a check of this process completed
        self._foreign: int | None = None  # a cursor naming another auth manager's snapshot
        #: A process-local snapshot was checked: nothing more to check in this process.
        self.finished = False
        self._lock = threading.Lock()

    @property
    def deferred(self) -> bool:
        """Did the last poll leave a change to settle (the next poll is due sooner)?"""
        return self._pending is not None

    def close(self) -> None:
        with self._lock:
            if self._trail is not None:
                self._trail.close()
                self._trail = None

    def check(self, requests: Sequence[Request] = ()) -> list[StoredRecord]:
        """Record what changed since the last recorded snapshot (nothing when nothing did).
        ``requests``: API requests answered since the last check, which probably made the
        changes (the one naming a change's target in its path, else the latest, is its actor).
        """
        with self._lock:
            if self.finished:
                return []  # the configuration of this process was read at its start
            if self._trail is None:
                self._trail = self._open_trail()
            trail = self._trail
            for _ in range(5):
                # One attempt reads the cursor, then the snapshot, diffs and appends. The
                # snapshot read after the cursor is at least as new as the one the cursor
                # names: a slow process never records a revert; after CursorMoved, all again.
                expect = trail.ledger.get_cursor(CURSOR, self.chain)
                if expect == self._foreign:
                    return []
                # A CLI command writes its log row when it starts, seconds before its change
                # commits (and maybe before an earlier check): look back a whole window.
                since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=self._window_s)
                snapshot = self._read()
                new_digest = digest(snapshot)
                stored: list[StoredRecord] = []
                if expect != digest_int(new_digest):
                    if not requests and self._settling(expect, new_digest, snapshot["kind"]):
                        return []
                    previous = self._previous(trail, expect)
                    if (
                        self._checked
                        and previous is not None
                        and previous["kind"] != snapshot["kind"]
                    ):
                        self._other_kind(expect, previous["kind"], snapshot["kind"])
                        return []
                    events = self._events(
                        trail, expect, previous, snapshot, new_digest, requests, since
                    )
                    try:
                        stored = trail.record_advancing(
                            events,
                            cursor=CURSOR,
                            chain=self.chain,
                            expect=expect,
                            to=digest_int(new_digest),
                        )
                    except CursorMoved:
                        continue  # another process recorded a change meanwhile
                self._known = (digest_int(new_digest), snapshot)
                self._pending = None
                self._checked = True
                self.finished = snapshot["kind"] in _LOCAL_KINDS
                return stored
            return []

    def _settling(self, expect: int, new_digest: str, kind: str) -> bool:
        """Should this poll leave the change to a request-triggered check for now?"""
        if self.settle_s <= 0 or expect < 0 or kind in _LOCAL_KINDS:
            return False
        now = time.monotonic()
        pending = self._pending
        if pending is None or pending[0] != expect:
            pending = (expect, new_digest, now, now)
        elif pending[1] != new_digest:
            pending = (expect, new_digest, now, pending[3])
        self._pending = pending
        return now - pending[2] < self.settle_s and now - pending[3] < _SETTLE_CAP * self.settle_s

    def _other_kind(self, expect: int, recorded: str, ours: str) -> None:
        # Processes with different auth managers (a rolling change of [core] auth_manager):
        # each records its own at its start; polls would flip the record back and forth.
        self._foreign = expect
        if "permission_kind_conflict" not in _failures_logged:
            _failures_logged.add("permission_kind_conflict")
            logger.warning(
                "workflow-audit: another process recorded the %s auth manager's snapshot, this "
                "one runs %s; permission changes are recorded again once the processes agree",
                recorded,
                ours,
            )
        COUNTERS.incr("permission_kind_conflicts")

    def _previous(self, trail: AuditTrail, expect: int) -> Snapshot | None:
        if self._known is not None and self._known[0] == expect:
            return self._known[1]
        if expect < 0:
            return None
        return find_snapshot(trail, self.chain, expect)

    def _events(
        self,
        trail: AuditTrail,
        expect: int,
        previous: Snapshot | None,
        snapshot: Snapshot,
        new_digest: str,
        requests: Sequence[Request],
        since: dt.datetime,
    ) -> list[Event]:
        packed = pack(snapshot, trail.config.max_value_bytes)
        changes = [] if previous is None else diff(previous, snapshot)
        if previous is None or not changes:
            data: dict[str, Any] = {
                "authenticator": snapshot["kind"],
                "digest": new_digest,
                **packed,
            }
            if previous is None and expect >= 0:
                data["reason"] = "previous snapshot unavailable"
            return [Event(type="permission.snapshot", data=data, actor=_PROCESS_ACTOR)]
        actors = self._actors(changes, requests, since)
        events = []
        for i, (change, (actor, how)) in enumerate(zip(changes, actors, strict=True)):
            data = {**change, "digest": new_digest, **how}
            if i == len(changes) - 1:
                data.update(packed)  # the last record of the batch carries the snapshot
            events.append(Event(type="permission.changed", data=data, actor=actor))
        return events

    def _actors(
        self, changes: Sequence[Change], requests: Sequence[Request], since: dt.datetime
    ) -> list[tuple[tuple[str, str], dict[str, Any]]]:
        out: list[tuple[tuple[str, str], dict[str, Any]]] = []
        known = [r for r in requests if r.user]
        if known:
            for change in changes:
                tail = "/" + str(change["target"])
                request = next((r for r in reversed(known) if r.path.endswith(tail)), known[-1])
                how = {
                    "observed": "request",
                    "request": {"method": request.method, "path": request.path},
                }
                out.append((("user", str(request.user)), how))
            return out
        cli: list[dict[str, Any] | None] = [None] * len(changes)
        if self._engine is not None and changes[0]["authenticator"] == "fab":
            try:
                cli = cli_attribution(self._engine, since, changes, self._schema)
            except Exception:  # noqa: BLE001 - attribution is best effort; the change is not
                _failed("permission_attribution_failures", "could not read Airflow's log table")
        for row in cli:
            if row is None:
                out.append((_PROCESS_ACTOR, {"observed": "poll"}))
            else:
                out.append((("user", row["owner"]), {"observed": "poll", "cli": row}))
        return out


# -- running in an Airflow process ------------------------------------------------------------

_failures_logged: set[str] = set()


def _failed(counter: str, what: str) -> None:
    """Count a failure; log it with its traceback the first time of its kind only."""
    COUNTERS.incr(counter)
    if counter in _failures_logged:
        logger.debug("workflow-audit: %s", what, exc_info=True)
    else:
        _failures_logged.add(counter)
        logger.exception("workflow-audit: %s (logged once; counted in %s)", what, counter)


class PermissionWatcher:
    """A daemon thread running :meth:`PermissionChecker.check` at start, every
    ``interval_s`` (a settle time later when a poll deferred a change) and at once when
    :meth:`notify` reports a mutating request; for a process-local snapshot, until one check
    completed. Fail-open: a failed check is logged once per kind, counted, and tried again an
    interval later."""

    def __init__(self, checker: PermissionChecker, *, interval_s: float) -> None:
        self.checker = checker
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._requests: collections.deque[Request] = collections.deque(maxlen=64)
        self._thread = threading.Thread(
            target=self._run, name="workflow-audit-permissions", daemon=True
        )

    def start(self) -> PermissionWatcher:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        """Is the thread checking (False once a process-local snapshot was checked)?"""
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        self.checker.close()

    def notify(self, request: Request) -> None:
        """A mutating request under ``/auth/`` was answered: check now, with its user."""
        self._requests.append(request)
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            requests = self._take_requests()
            if not requests and requests_in_flight():
                # a user or role request is being answered: its callback checks, with its user
                self._wake.wait(0.1)
                continue
            try:
                self.checker.check(requests)
            except Exception:  # noqa: BLE001 - fail-open: never into Airflow's process
                _failed("permission_check_failures", "permission check failed")
            if self.checker.finished:
                return  # SimpleAuthManager: this process's configuration, checked at its start
            wait = self.interval_s
            if self.checker.deferred:
                wait = min(wait, self.checker.settle_s)
            self._wake.wait(wait)

    def _take_requests(self) -> list[Request]:
        # Each request attributes the check it woke, once: a later poll that sees a CLI
        # change must not name that request's user. Stale ones (a check failed) expire.
        cutoff = time.monotonic() - _REQUEST_WINDOW_S
        taken = []
        while self._requests:
            request = self._requests.popleft()
            if request.at >= cutoff:
                taken.append(request)
        return taken


_watcher: PermissionWatcher | None = None
_watcher_pid = 0
_registered: list[bool] = []  # the request callback, registered once per process


def wants_request(method: str, path: str) -> bool:
    """A request that may change users or roles: mutating, under ``/auth/`` (FAB's user and
    role API and views), not a login. Runs on the event loop for every request, before the
    app: cheap. While a wanted request is being answered this process's polls wait (at most
    :data:`_REQUEST_WINDOW_S`), so that its change is recorded with its user."""
    if method not in _MUTATING or not path.startswith("/auth/"):
        return False
    return not path.startswith(("/auth/token", "/auth/login", "/auth/logout"))


def requests_in_flight() -> bool:
    """Is this process answering a wanted request (begun within the window)?"""
    return access.watched_in_flight(_REQUEST_WINDOW_S)


def after_request(done: RequestDone) -> None:
    """:func:`airflow_audit.access.on_request_done`'s callback for every request of
    :func:`wants_request`: a successful one triggers a check now, its user the actor of what
    it changed."""
    watcher = _watcher
    if watcher is not None and done.status < 400:
        watcher.notify(Request(done.user, done.method, done.path, time.monotonic()))


def airflow_snapshot_reader() -> tuple[Callable[[], Snapshot], Engine | None, str | None] | None:
    """The snapshot reader of this Airflow's auth manager (and, for FAB, the engine on its
    metadata DB and the schema of its tables), or None for an auth manager whose users
    cannot be read."""
    from airflow_audit._compat import airflow_conf_get, metadata_db, metadata_db_url
    from airflow_audit.settings import parse_boolean

    kind = auth_manager_kind(airflow_conf_get("core", "auth_manager", ""))
    if kind == "simple":

        def read_simple() -> Snapshot:
            users = airflow_conf_get("core", "simple_auth_manager_users", "admin:admin")
            admins = airflow_conf_get("core", "simple_auth_manager_all_admins", "False")
            return simple_snapshot(users, parse_boolean("all_admins", admins))

        return read_simple, None, None
    if kind == "fab":
        schema = metadata_db()[1]  # [database] sql_alchemy_schema
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        url = metadata_db_url()
        # SQLite: a file opened per check, no lock held between checks nor inherited by a
        # fork; else one pooled connection, pre-pinged to survive a DB restart.
        sqlite = url.startswith("sqlite")
        pool: dict[str, Any] = (
            {"poolclass": NullPool}
            if sqlite
            else {"pool_size": 1, "max_overflow": 0, "pool_pre_ping": True}
        )
        # Airflow's [database] sql_alchemy_connect_args (TLS settings), with our own pool
        from airflow_audit._compat import metadata_engine_kwargs

        engine = create_engine(url, **{**metadata_engine_kwargs(), **pool})
        return (lambda: fab_snapshot(engine, schema)), engine, schema
    return None


def start_permission_checks(
    open_trail: Callable[[], AuditTrail], *, chain: str, interval_s: float
) -> PermissionWatcher | None:
    """Start this process's watcher (one per process: a second call returns the first),
    polling every :data:`POLL_INTERVAL_FACTOR` times ``interval_s`` (the ingest interval); None,
    with a warning, when the auth manager's users cannot be read. Never raises."""
    global _watcher, _watcher_pid
    if _watcher is not None and _watcher_pid == os.getpid():
        return _watcher
    try:
        reader = airflow_snapshot_reader()
    except Exception:  # noqa: BLE001 - fail-open
        _failed("permission_check_failures", "cannot read the auth manager's configuration")
        return None
    if reader is None:
        logger.warning(
            "workflow-audit: the configured auth manager is neither FAB nor SimpleAuthManager; "
            "permission changes are not recorded"
        )
        return None
    read, engine, schema = reader
    poll_s = POLL_INTERVAL_FACTOR * interval_s
    checker = PermissionChecker(
        open_trail,
        read,
        chain=chain,
        engine=engine,
        window_s=max(60.0, 2 * poll_s),
        settle_s=min(SETTLE_S, poll_s / 2),
        schema=schema,
    )
    _watcher, _watcher_pid = PermissionWatcher(checker, interval_s=poll_s).start(), os.getpid()
    if not _registered:
        _registered.append(True)
        access.on_request_done(after_request, wants=wants_request)
    return _watcher


def stop_permission_checks(timeout_s: float = 10.0) -> None:
    """Stop this process's watcher after its current check (bounded wait)."""
    global _watcher
    watcher, _watcher = _watcher, None
    if watcher is not None and _watcher_pid == os.getpid():
        watcher.stop(timeout_s)
