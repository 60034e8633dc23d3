"""airflow_audit.permissions: snapshots of who may do what, their diff, and exactly one
``permission.changed`` record per change however many processes check (unit tests on a real
SQLite ledger), then real Airflow: the FAB auth manager driven through its REST API and the
``airflow users``/``airflow roles`` CLI, and SimpleAuthManager's configuration across restarts."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import getpass
import json
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy

from airflow_audit.permissions import (
    CURSOR,
    PermissionChecker,
    PermissionWatcher,
    Request,
    Snapshot,
    cli_attribution,
    diff,
    digest,
    digest_int,
    fab_snapshot,
    find_snapshot,
    pack,
    simple_snapshot,
    unpack,
)
from audit_core import COUNTERS, AuditConfig, AuditTrail, Record, verify_ledger
from audit_core.ledgers.sqlite import SqliteLedger
from testkit import free_port
from testkit.airflow import home_env
from tests.airflow._airflow import BIN, AirflowHome, events, records, serving

CHAIN = "airflow-events"


def fab(roles: dict[str, list[str]], users: dict[str, tuple[bool, list[str]]]) -> Snapshot:
    """A FAB snapshot from ``{role: permissions}`` and ``{user: (active, roles)}``."""
    return {
        "kind": "fab",
        "roles": [{"role": r, "permissions": sorted(p)} for r, p in sorted(roles.items())],
        "users": [
            {"user": u, "active": a, "roles": sorted(rs)} for u, (a, rs) in sorted(users.items())
        ],
    }


BASE = fab(
    {"Admin": ["can_read:DAGs", "can_edit:DAGs"], "Viewer": ["can_read:DAGs"]},
    {"admin": (True, ["Admin"]), "ann": (True, ["Viewer"])},
)


# -- diff ---------------------------------------------------------------------------------------


class TestDiff:
    def test_same_snapshot_no_change(self) -> None:
        assert [] == diff(BASE, copy.deepcopy(BASE))

    def test_each_kind_of_change(self) -> None:
        after = fab(
            {
                "Admin": ["can_read:DAGs", "can_edit:DAGs", "can_delete:DAGs"],
                "Ops": ["can_read:Pools"],
            },
            {"admin": (False, ["Admin"]), "bob": (True, ["Ops"]), "ann": (True, ["Ops"])},
        )
        got = [(c["change"], c["target"], c["before"], c["after"]) for c in diff(BASE, after)]
        assert got == [
            ("role.created", "Ops", None, {"permissions": ["can_read:Pools"]}),
            (
                "role.permissions",
                "Admin",
                ["can_edit:DAGs", "can_read:DAGs"],
                ["can_delete:DAGs", "can_edit:DAGs", "can_read:DAGs"],
            ),
            ("user.created", "bob", None, {"active": True, "roles": ["Ops"]}),
            ("user.updated", "admin", {"active": True}, {"active": False}),
            ("user.roles", "ann", ["Viewer"], ["Ops"]),
            ("role.deleted", "Viewer", {"permissions": ["can_read:DAGs"]}, None),
        ]
        perms = next(c for c in diff(BASE, after) if c["change"] == "role.permissions")
        assert (perms["added"], perms["removed"]) == (["can_delete:DAGs"], [])
        assert {c["authenticator"] for c in diff(BASE, after)} == {"fab"}

    def test_user_deleted(self) -> None:
        after = fab({"Admin": ["can_read:DAGs", "can_edit:DAGs"], "Viewer": ["can_read:DAGs"]}, {})
        got = [(c["change"], c["target"], c["before"]) for c in diff(BASE, after)]
        assert got == [
            ("user.deleted", "admin", {"active": True, "roles": ["Admin"]}),
            ("user.deleted", "ann", {"active": True, "roles": ["Viewer"]}),
        ]

    def test_simple_config(self) -> None:
        before = simple_snapshot("admin:admin,viewer:viewer", False)
        after = simple_snapshot("admin:admin, viewer:op ,new:viewer", False)
        (change,) = diff(before, after)
        assert change["change"] == "config"
        assert change["before"]["users"] == [
            {"user": "admin", "role": "admin"},
            {"user": "viewer", "role": "viewer"},
        ]
        assert change["after"]["users"] == [
            {"user": "admin", "role": "admin"},
            {"user": "new", "role": "viewer"},
            {"user": "viewer", "role": "op"},
        ]
        assert [] == diff(after, simple_snapshot("viewer:op,new:viewer,admin:admin", False))
        (flag,) = diff(after, simple_snapshot("admin:admin,viewer:op,new:viewer", True))
        assert (flag["before"]["all_admins"], flag["after"]["all_admins"]) == (False, True)

    def test_auth_manager_switched(self) -> None:
        (change,) = diff(simple_snapshot("a:admin", False), BASE)
        assert (change["change"], change["before"], change["after"]) == ("config", "simple", "fab")


class TestPack:
    def test_round_trip_in_small_pieces(self) -> None:
        big = fab(
            {f"Role{i}": [f"can_read:DAG:dag_{j}" for j in range(300)] for i in range(4)},
            {f"user{i}": (i % 2 == 0, [f"Role{i % 4}"]) for i in range(500)},
        )
        packed = pack(big, 1024)
        assert len(packed) > 10
        assert all(len(orjson.dumps(v)) <= 1024 for v in packed.values())
        assert unpack(packed) == big
        assert digest(unpack(packed) or {}) == digest(big)

    def test_damaged_piece(self) -> None:
        packed = pack(BASE, 16 * 1024)
        packed["snapshot.users"] = {"sha256": "00", "len": 1, "truncated": True}
        assert unpack(packed) is None
        assert unpack({}) is None

    def test_digest_int_is_a_cursor_value(self) -> None:
        value = digest_int(digest(BASE))
        assert 0 <= value < 2**63


# -- recording, on a real ledger ------------------------------------------------------------------


class State:
    """The "auth manager" of the unit tests: a snapshot the test changes."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def __call__(self) -> Snapshot:
        return copy.deepcopy(self.snapshot)


def opener(ledger: Path) -> Callable[[], AuditTrail]:
    return lambda: AuditTrail(AuditConfig(ledger_url=f"sqlite:///{ledger}", checkpoint_every=0))


def permission_records(ledger: Path) -> list[Record]:
    return [r for r in records(ledger, CHAIN) if r.event.startswith("permission.")]


class TestChecker:
    def test_first_snapshot_then_changes(self, tmp_path: Path) -> None:
        ledger = tmp_path / "ledger.db"
        state = State(BASE)
        checker = PermissionChecker(opener(ledger), state, chain=CHAIN)
        try:
            checker.check()
            assert [] == checker.check()  # nothing changed: nothing recorded
            state.snapshot = fab(
                {"Admin": ["can_read:DAGs", "can_edit:DAGs"], "Viewer": ["can_read:DAGs"]},
                {"admin": (True, ["Admin"]), "ann": (True, ["Admin", "Viewer"])},
            )
            request = Request("admin", "PATCH", "/auth/fab/v1/users/ann", 0.0)
            checker.check([request])
        finally:
            checker.close()
        snap, rec = permission_records(ledger)
        assert snap.event == "permission.snapshot"
        assert snap.data["digest"] == digest(BASE)
        assert unpack(snap.data) == BASE
        assert "reason" not in snap.data
        assert rec.event == "permission.changed"
        assert rec.actor == {"type": "user", "id": "admin"}
        assert rec.data["observed"] == "request"
        assert rec.data["request"] == {"method": "PATCH", "path": "/auth/fab/v1/users/ann"}
        assert (rec.data["change"], rec.data["target"]) == ("user.roles", "ann")
        assert (rec.data["before"], rec.data["after"]) == (["Viewer"], ["Admin", "Viewer"])
        assert rec.data["digest"] == digest(state.snapshot)
        assert [h.size for h in verify_ledger(AuditTrail(opener(ledger)().config).ledger)] == [2]

    def test_restart_diffs_against_the_ledger(self, tmp_path: Path) -> None:
        ledger = tmp_path / "ledger.db"
        state = State(BASE)
        first = PermissionChecker(opener(ledger), state, chain=CHAIN)
        first.check()
        first.close()
        # much else on the chain since (the event log's records)
        with opener(ledger)() as trail:
            for i in range(50):
                trail.record("cli.command", {"i": i}, chain=CHAIN)
        state.snapshot = fab({"Admin": ["can_read:DAGs"]}, {"admin": (True, ["Admin"])})
        second = PermissionChecker(opener(ledger), state, chain=CHAIN)
        second.check()
        second.close()
        changes = [(r.data["change"], r.data["target"]) for r in permission_records(ledger)[1:]]
        assert changes == [
            ("role.permissions", "Admin"),
            ("user.deleted", "ann"),
            ("role.deleted", "Viewer"),
        ]
        for rec in permission_records(ledger)[1:]:
            assert rec.actor == {"type": "process", "id": "airflow"}
            assert rec.data["observed"] == "poll"
        # only the last record of the batch carries the snapshot
        assert ["snapshot" in r.data for r in permission_records(ledger)[1:]] == [
            False,
            False,
            True,
        ]
        with opener(ledger)() as trail:
            found = find_snapshot(trail, CHAIN, trail.ledger.get_cursor(CURSOR, CHAIN))
        assert found == state.snapshot

    def test_lost_previous_snapshot_gives_a_snapshot(self, tmp_path: Path) -> None:
        ledger = tmp_path / "ledger.db"
        with opener(ledger)() as trail:  # a cursor whose snapshot no record holds
            trail.record_advancing([], cursor=CURSOR, chain=CHAIN, expect=-1, to=12345)
            trail.record("cli.command", {}, chain=CHAIN)
        checker = PermissionChecker(opener(ledger), State(BASE), chain=CHAIN)
        checker.check()
        checker.close()
        (rec,) = permission_records(ledger)
        assert (rec.event, rec.data["reason"]) == (
            "permission.snapshot",
            "previous snapshot unavailable",
        )

    def test_snapshot_in_pieces_survives_a_restart(self, tmp_path: Path) -> None:
        ledger = tmp_path / "ledger.db"
        big = fab(
            {"Admin": [f"can_read:DAG:dag_{j}" for j in range(200)], "Viewer": ["can_read:DAGs"]},
            {f"user{i}": (True, ["Viewer"]) for i in range(100)},
        )

        def small() -> AuditTrail:  # values over 512 bytes would become digests
            config = AuditConfig(
                ledger_url=f"sqlite:///{ledger}", checkpoint_every=0, max_value_bytes=512
            )
            return AuditTrail(config)

        state = State(big)
        first = PermissionChecker(small, state, chain=CHAIN)
        first.check()
        first.close()
        state.snapshot = copy.deepcopy(big)
        state.snapshot["users"][0]["roles"] = ["Admin"]
        second = PermissionChecker(small, state, chain=CHAIN)
        second.check()
        second.close()
        snap, changed = permission_records(ledger)
        assert unpack(snap.data) == big
        assert (changed.data["change"], changed.data["target"]) == ("user.roles", "user0")
        assert not any(isinstance(v, dict) and v.get("truncated") for v in changed.data.values())

    def test_failing_check_is_counted_and_the_watcher_goes_on(self, tmp_path: Path) -> None:
        calls: list[int] = []

        def broken() -> Snapshot:
            calls.append(1)
            raise RuntimeError("metadata DB unreachable")

        before = COUNTERS.snapshot().get("permission_check_failures", 0)
        checker = PermissionChecker(opener(tmp_path / "ledger.db"), broken, chain=CHAIN)
        watcher = PermissionWatcher(checker, interval_s=0.05).start()
        try:
            deadline = time.monotonic() + 30
            while len(calls) < 3:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        finally:
            watcher.stop()
        assert COUNTERS.snapshot()["permission_check_failures"] >= before + 2

    @pytest.mark.parametrize("writers", [2, 4])
    def test_concurrent_checkers_record_each_change_once(
        self, tmp_path: Path, writers: int
    ) -> None:
        ledger = tmp_path / "ledger.db"
        state = State(BASE)
        barrier = threading.Barrier(writers)

        first = threading.local()  # a thread per check: its first read waits for the others

        def read() -> Snapshot:
            if not getattr(first, "done", False):
                first.done = True
                barrier.wait(timeout=30)  # every checker reads the same state, then all append
            return state()  # a loser reads again after CursorMoved

        checkers = [PermissionChecker(opener(ledger), read, chain=CHAIN) for _ in range(writers)]
        versions = [
            BASE,
            fab({"Admin": ["can_read:DAGs"]}, {"admin": (True, ["Admin"])}),
            fab({"Admin": ["can_read:DAGs"]}, {"admin": (True, ["Admin"]), "b": (True, [])}),
        ]
        try:
            for version in versions:
                state.snapshot = version
                threads = [threading.Thread(target=c.check) for c in checkers]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(60)
        finally:
            for c in checkers:
                c.close()
        got = [
            (r.event, r.data.get("change"), r.data.get("target"))
            for r in permission_records(ledger)
        ]
        assert got == [
            ("permission.snapshot", None, None),
            ("permission.changed", "role.permissions", "Admin"),
            ("permission.changed", "user.deleted", "ann"),
            ("permission.changed", "role.deleted", "Viewer"),
            ("permission.changed", "user.created", "b"),
        ]


V1 = fab({"Admin": ["can_read:DAGs"]}, {"admin": (True, ["Admin"])})
V2 = fab({"Admin": ["can_read:DAGs"]}, {"admin": (True, ["Admin"]), "b": (True, [])})


def changes_of(ledger: Path) -> list[tuple[str, Any, Any]]:
    return [
        (r.event, r.data.get("change"), r.data.get("target")) for r in permission_records(ledger)
    ]


class TestOrdering:
    def test_a_stale_snapshot_is_never_recorded_as_a_revert(self, tmp_path: Path) -> None:
        """A process that read its snapshot while others recorded newer ones records nothing
        (it read the cursor first; after CursorMoved it reads the snapshot again): no
        revert, and no change recorded a second time by the next poll."""
        ledger = tmp_path / "ledger.db"
        state = State(BASE)
        other = PermissionChecker(opener(ledger), state, chain=CHAIN)
        other.check()
        slow_reads: list[int] = []

        def slow_read() -> Snapshot:
            snapshot = state()  # V1 ...
            if not slow_reads:
                other.check()  # ... which the other process records,
                state.snapshot = V2
                other.check()  # and the next change too, before this one goes on
            slow_reads.append(1)
            return snapshot

        state.snapshot = V1
        slow = PermissionChecker(opener(ledger), slow_read, chain=CHAIN)
        try:
            assert [] == slow.check()
            assert [] == other.check()
            assert [] == slow.check()
        finally:
            slow.close()
            other.close()
        assert changes_of(ledger) == [
            ("permission.snapshot", None, None),
            ("permission.changed", "role.permissions", "Admin"),
            ("permission.changed", "user.deleted", "ann"),
            ("permission.changed", "role.deleted", "Viewer"),
            ("permission.changed", "user.created", "b"),
        ]


class TestProcessLocal:
    def test_simple_config_is_checked_once_per_process_start(self, tmp_path: Path) -> None:
        """The scheduler and an API server with different SimpleAuthManager users (an
        environment variable on one only): one record each at start, no flip every poll."""
        ledger = tmp_path / "ledger.db"
        reads: list[str] = []

        def config(users: str) -> Callable[[], Snapshot]:
            return lambda: reads.append(users) or simple_snapshot(users, False)

        scheduler = PermissionChecker(opener(ledger), config("bob:viewer"), chain=CHAIN)
        api = PermissionChecker(opener(ledger), config("bob:admin"), chain=CHAIN)
        try:
            for _ in range(10):
                scheduler.check()
                api.check()
        finally:
            scheduler.close()
            api.close()
        assert changes_of(ledger) == [
            ("permission.snapshot", None, None),
            ("permission.changed", "config", "simple_auth_manager"),
        ]
        assert sorted(reads) == ["bob:admin", "bob:viewer"]  # each read once
        # a restarted scheduler (a new process) with the API server's users: nothing new
        restarted = PermissionChecker(opener(ledger), config("bob:admin"), chain=CHAIN)
        restarted.check()
        restarted.close()
        assert len(changes_of(ledger)) == 2

    def test_processes_with_other_auth_managers_record_at_start_only(self, tmp_path: Path) -> None:
        """A FAB process polls on while a SimpleAuthManager process recorded its
        configuration: the switch is recorded by each process's first check, never flipped
        back and forth by the FAB polls."""
        ledger = tmp_path / "ledger.db"
        fab_process = PermissionChecker(opener(ledger), State(BASE), chain=CHAIN)
        before = COUNTERS.snapshot().get("permission_kind_conflicts", 0)
        try:
            fab_process.check()
            simple_process = PermissionChecker(
                opener(ledger), lambda: simple_snapshot("bob:viewer", False), chain=CHAIN
            )
            simple_process.check()
            simple_process.close()
            for _ in range(5):
                assert [] == fab_process.check()
                assert [] == fab_process.check([Request("admin", "POST", "/auth/x", 0.0)])
        finally:
            fab_process.close()
        assert changes_of(ledger) == [
            ("permission.snapshot", None, None),
            ("permission.changed", "config", "auth_manager"),
        ]
        assert COUNTERS.snapshot()["permission_kind_conflicts"] > before
        # a FAB process starting now records the switch back, once
        restarted = PermissionChecker(opener(ledger), State(BASE), chain=CHAIN)
        restarted.check()
        restarted.check()
        restarted.close()
        assert len(changes_of(ledger)) == 3

    def test_the_watcher_of_a_simple_config_stops_after_one_check(self, tmp_path: Path) -> None:
        reads: list[int] = []

        def read() -> Snapshot:
            reads.append(1)
            return simple_snapshot("admin:admin", False)

        checker = PermissionChecker(opener(tmp_path / "ledger.db"), read, chain=CHAIN)
        watcher = PermissionWatcher(checker, interval_s=0.01).start()
        try:
            deadline = time.monotonic() + 30
            while watcher.alive:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        finally:
            watcher.stop()
        assert reads == [1]
        assert [r.event for r in permission_records(tmp_path / "ledger.db")] == [
            "permission.snapshot"
        ]


class TestSettle:
    def test_a_poll_leaves_a_fresh_change_to_the_request_check(self, tmp_path: Path) -> None:
        """Another worker's poll sees a REST change first: it leaves it to the serving
        worker's request-triggered check, which names the user."""
        ledger = tmp_path / "ledger.db"
        state = State(BASE)
        poller = PermissionChecker(opener(ledger), state, chain=CHAIN, settle_s=600.0)
        server = PermissionChecker(opener(ledger), state, chain=CHAIN, settle_s=600.0)
        try:
            poller.check()  # the first snapshot is not deferred
            state.snapshot = V1
            assert [] == poller.check()
            assert poller.deferred
            request = Request("admin", "DELETE", "/auth/fab/v1/users/ann", 0.0)
            assert server.check([request])
            assert [] == poller.check()
            assert not poller.deferred
        finally:
            poller.close()
            server.close()
        for rec in permission_records(ledger)[1:]:
            assert rec.actor == {"type": "user", "id": "admin"}
            assert rec.data["observed"] == "request"

    def test_a_poll_records_a_settled_change(self, tmp_path: Path) -> None:
        ledger = tmp_path / "ledger.db"
        state = State(BASE)
        checker = PermissionChecker(opener(ledger), state, chain=CHAIN, settle_s=0.2)
        try:
            checker.check()
            state.snapshot = V1
            first = time.monotonic()
            while not checker.check():
                assert time.monotonic() < first + 30
                time.sleep(0.02)
            assert time.monotonic() - first >= 0.2
        finally:
            checker.close()
        assert changes_of(ledger)[1:] == [
            ("permission.changed", "role.permissions", "Admin"),
            ("permission.changed", "user.deleted", "ann"),
            ("permission.changed", "role.deleted", "Viewer"),
        ]

    def test_changes_every_poll_are_recorded_all_the_same(self, tmp_path: Path) -> None:
        """A change every poll, never the same snapshot twice: recorded after a few settle
        times at most, not postponed for as long as the changes go on."""
        ledger = tmp_path / "ledger.db"
        state = State(BASE)
        checker = PermissionChecker(opener(ledger), state, chain=CHAIN, settle_s=0.1)
        try:
            checker.check()
            start = time.monotonic()
            for i in range(100_000):
                state.snapshot = fab({"Admin": [f"can_read:DAG:{i}"]}, {})
                if checker.check():
                    break
                assert time.monotonic() < start + 30
                time.sleep(0.01)
        finally:
            checker.close()
        assert len(changes_of(ledger)) > 1

    def test_polls_every_ten_ingest_intervals(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from airflow_audit import permissions

        reader = (State(BASE), None, None)
        monkeypatch.setattr(permissions, "airflow_snapshot_reader", lambda: reader)
        permissions.stop_permission_checks()
        watcher = permissions.start_permission_checks(
            opener(tmp_path / "ledger.db"), chain=CHAIN, interval_s=1.0
        )
        try:
            assert watcher is not None
            assert (watcher.interval_s, watcher.checker.settle_s) == (10.0, 5.0)
        finally:
            permissions.stop_permission_checks()


def sqlite_tables(path: Path, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    """Airflow's tables (only the columns read here) in the SQLite file ``path``."""
    columns = {
        "ab_user": "id, username, active",
        "ab_role": "id, name",
        "ab_user_role": "user_id, role_id",
        "ab_permission_view": "id, permission_id, view_menu_id",
        "ab_permission_view_role": "permission_view_id, role_id",
        "ab_permission": "id, name",
        "ab_view_menu": "id, name",
        "log": "id, dttm, event, owner, extra",
    }
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for table, cols in columns.items():
            db.execute(f"CREATE TABLE {table} ({cols})")
            marks = ", ".join("?" * len(cols.split(",")))
            insert = f"INSERT INTO {table} VALUES ({marks})"  # noqa: S608 - our own names
            db.executemany(insert, rows.get(table, []))


AIRFLOW_ROWS: dict[str, list[tuple[Any, ...]]] = {
    "ab_user": [(1, "admin", True), (2, "ann", True)],
    "ab_role": [(1, "Admin"), (2, "Viewer")],
    "ab_user_role": [(1, 1), (2, 2)],
    "ab_permission": [(1, "can_read"), (2, "can_edit")],
    "ab_view_menu": [(1, "DAGs")],
    "ab_permission_view": [(1, 1, 1), (2, 2, 1)],
    "ab_permission_view_role": [(1, 1), (2, 1), (1, 2)],
}


class TestAirflowTables:
    def test_tables_in_the_configured_schema(self, tmp_path: Path) -> None:
        """``[database] sql_alchemy_schema``: the tables are read from that schema (SQLite:
        an attached database of that name), not from the default one."""
        sqlite_tables(tmp_path / "main.db", {})  # empty tables where no schema is named
        sqlite_tables(tmp_path / "airflow.db", AIRFLOW_ROWS)
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'main.db'}")

        @sqlalchemy.event.listens_for(engine, "connect")
        def attach(connection: Any, record: Any) -> None:
            connection.execute(f"ATTACH DATABASE '{tmp_path / 'airflow.db'}' AS airflow")

        try:
            assert fab_snapshot(engine, "airflow") == BASE
            assert fab_snapshot(engine)["users"] == []
        finally:
            engine.dispose()

    def test_cli_rows_name_only_their_own_target(self, tmp_path: Path) -> None:
        """The CLI row of another target is not this change's actor (a REST or UI request
        may have made it): no row, ("process", "airflow")."""
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        command = json.dumps({"full_command": "['airflow', 'users', 'create', '-u', 'dave']"})
        sqlite_tables(
            tmp_path / "airflow.db", {"log": [(7, now, "cli_users_create", "root", command)]}
        )
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'airflow.db'}")
        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=60)
        changes = [
            {"authenticator": "fab", "change": "user.created", "target": "carol"},
            {"authenticator": "fab", "change": "user.created", "target": "dave"},
        ]
        try:
            got = cli_attribution(engine, since, changes)
        finally:
            engine.dispose()
        assert got == [None, {"owner": "root", "log_id": 7, "event": "cli_users_create"}]


def test_no_hash_or_email_in_snapshot_keys() -> None:
    keys: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            keys.update(value)
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(BASE)
    assert keys == {"kind", "roles", "role", "permissions", "users", "user", "active"}


# -- real Airflow ---------------------------------------------------------------------------------

FAB_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
ADMIN_PW = "Adm1n-pw-never-on-chain"
USER_PW = "Us3r-pw-never-on-chain"
DEADLINE_S = 180.0


@dataclass(frozen=True)
class FabServer:
    url: str
    env: dict[str, str]
    home: Path
    ledger: Path


@pytest.fixture(scope="module")
def fab_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh Airflow home with the FAB auth manager: ``airflow db migrate`` (which creates
    FAB's ``ab_*`` tables too: no ``airflow fab-db migrate`` needed) and an admin."""
    home = tmp_path_factory.mktemp("fab_home")
    (home / "dags").mkdir()
    ledger = home / "ledger.db"
    env = {
        **home_env(home, home / "dags"),
        "AIRFLOW__CORE__AUTH_MANAGER": FAB_MANAGER,
        "AIRFLOW__API_AUTH__JWT_SECRET": "workflow-audit-tests-" + "f" * 32,
        "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{ledger}",
        # polls every 3 s (10 ingest intervals), a change settles for 1.5 s: the CLI steps
        "AIRFLOW__WORKFLOW_AUDIT__INGEST_INTERVAL": "0.3",
        "AIRFLOW__API__HOST": "127.0.0.1",
    }
    migrate = airflow(env, "db", "migrate")
    assert 0 == migrate.returncode, migrate.stderr[-3000:]
    admin = airflow(
        env,
        "users",
        "create",
        "-u",
        "admin",
        "-p",
        ADMIN_PW,
        "-r",
        "Admin",
        "-f",
        "Ada",
        "-l",
        "Min",
        "-e",
        "admin@example.com",
    )
    assert 0 == admin.returncode, admin.stderr[-3000:]
    return home, env


def airflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "airflow"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@contextlib.contextmanager
def fab_server(home: Path, env: dict[str, str]) -> Iterator[FabServer]:
    port = free_port()
    env = {**env, "AIRFLOW__API__PORT": str(port)}
    with serving(env, port):
        yield FabServer(f"http://127.0.0.1:{port}", env, home, home / "ledger.db")


def call(server: FabServer, method: str, path: str, token: str, body: object = None) -> int:
    request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1, built by the fixture
        server.url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=120) as answer:  # noqa: S310 - 127.0.0.1
        return int(answer.status)


def fab_token(server: FabServer) -> str:
    request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1
        server.url + "/auth/token",
        data=json.dumps({"username": "admin", "password": ADMIN_PW}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as answer:  # noqa: S310 - 127.0.0.1
        return str(json.load(answer)["access_token"])


def current(home: Path) -> Snapshot:
    """What Airflow's metadata DB says now."""
    engine = sqlalchemy.create_engine(f"sqlite:///{home / 'airflow.db'}")
    try:
        return fab_snapshot(engine)
    finally:
        engine.dispose()


def wait_recorded(ledger: Path, home: Path) -> Snapshot:
    """Wait until the ledger's permission cursor names the metadata DB's current snapshot."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        snapshot = current(home)
        if ledger.exists():
            db = SqliteLedger(ledger, create=False)
            try:
                if db.get_cursor(CURSOR, CHAIN) == digest_int(digest(snapshot)):
                    return snapshot
            finally:
                db.close()
        assert time.monotonic() < deadline, "the change was not recorded in time"
        time.sleep(0.2)


class Model:
    """Replays permission records: each record's ``before`` must be what the previous ones
    left, so a change recorded twice, or with a wrong before, fails."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.roles = {r["role"]: r["permissions"] for r in snapshot["roles"]}
        self.users = {
            u["user"]: {"active": u["active"], "roles": u["roles"]} for u in snapshot["users"]
        }

    def apply(self, data: dict[str, Any]) -> None:
        change, name, before, after = data["change"], data["target"], data["before"], data["after"]
        if change == "role.created":
            assert name not in self.roles
            self.roles[name] = after["permissions"]
        elif change == "role.deleted":
            assert self.roles.pop(name) == before["permissions"]
        elif change == "role.permissions":
            assert self.roles[name] == before
            assert sorted(set(after) - set(before)) == data["added"]
            assert sorted(set(before) - set(after)) == data["removed"]
            self.roles[name] = after
        elif change == "user.created":
            assert name not in self.users
            self.users[name] = after
        elif change == "user.deleted":
            assert self.users.pop(name) == before
        elif change == "user.roles":
            assert self.users[name]["roles"] == before
            self.users[name]["roles"] = after
        else:
            assert change == "user.updated"
            assert self.users[name]["active"] == before["active"]
            self.users[name]["active"] = after["active"]

    def matches(self, snapshot: Snapshot) -> bool:
        return Model(snapshot).__dict__ == self.__dict__


@dataclass
class Step:
    name: str
    run: Callable[[], object]
    expected: set[tuple[str, str]]  # (change, target) that must be recorded
    tolerated: set[tuple[str, str]] = field(default_factory=set)  # may be, as a side effect
    records: list[Record] = field(default_factory=list)


@dataclass
class Scripted:
    steps: list[Step]
    first: Record
    ledger: Path


def perms(*pairs: str) -> list[dict[str, Any]]:
    return [
        {"action": {"name": p.split(":")[0]}, "resource": {"name": p.split(":", 1)[1]}}
        for p in pairs
    ]


@pytest.fixture(scope="module")
def fab_script(fab_home: tuple[Path, dict[str, str]]) -> Scripted:
    """REST steps against one API server, then CLI steps with two API servers checking."""
    home, env = fab_home
    ledger = home / "ledger.db"
    v1 = "/auth/fab/v1"
    # Every FAB app start (a CLI command, a server) gives custom roles can_read:Website.
    website = {("role.permissions", "Auditors"), ("role.permissions", "Keepers")}
    with fab_server(home, env) as one:
        token = fab_token(one)
        rest = [
            Step(
                "create user",
                lambda: call(
                    one,
                    "POST",
                    f"{v1}/users",
                    token,
                    {
                        "username": "carol",
                        "password": USER_PW,
                        "first_name": "C",
                        "last_name": "R",
                        "email": "carol@example.com",
                        "roles": [{"name": "Viewer"}],
                    },
                ),
                {("user.created", "carol")},
            ),
            Step(
                "change user's roles",
                lambda: call(
                    one,
                    "PATCH",
                    f"{v1}/users/carol?update_mask=roles",
                    token,
                    {"roles": [{"name": "Op"}, {"name": "Viewer"}]},
                ),
                {("user.roles", "carol")},
            ),
            Step(
                "create role",
                lambda: call(
                    one,
                    "POST",
                    f"{v1}/roles",
                    token,
                    {"name": "Auditors", "actions": perms("can_read:DAGs")},
                ),
                {("role.created", "Auditors")},
            ),
            Step(
                "change role's permissions",
                lambda: call(
                    one,
                    "PATCH",
                    f"{v1}/roles/Auditors?update_mask=actions",
                    token,
                    {"name": "Auditors", "actions": perms("can_read:DAGs", "can_read:Pools")},
                ),
                {("role.permissions", "Auditors")},
            ),
            Step(
                "delete user",
                lambda: call(one, "DELETE", f"{v1}/users/carol", token),
                {("user.deleted", "carol")},
            ),
        ]
        first = run_steps(rest, ledger, home)
        with fab_server(home, env):  # a second API server checks too: each change once
            cli = [
                Step(
                    "cli users create",
                    lambda: airflow(
                        env,
                        "users",
                        "create",
                        "-u",
                        "dave",
                        "-p",
                        USER_PW,
                        "-r",
                        "Viewer",
                        "-f",
                        "D",
                        "-l",
                        "V",
                        "-e",
                        "dave@example.com",
                    ),
                    {("user.created", "dave")},
                    website,
                ),
                Step(
                    "cli users add-role",
                    lambda: airflow(env, "users", "add-role", "-u", "dave", "-r", "Op"),
                    {("user.roles", "dave")},
                    website,
                ),
                Step(
                    "cli users remove-role",
                    lambda: airflow(env, "users", "remove-role", "-u", "dave", "-r", "Viewer"),
                    {("user.roles", "dave")},
                    website,
                ),
                Step(
                    "cli roles create",
                    lambda: airflow(env, "roles", "create", "Keepers"),
                    {("role.created", "Keepers")},
                    website,
                ),
                Step(
                    "cli roles add-perms",
                    lambda: airflow(
                        env,
                        "roles",
                        "add-perms",
                        "Keepers",
                        "-r",
                        "Pools",
                        "DAGs",
                        "-a",
                        "can_read",
                    ),
                    {("role.permissions", "Keepers")},
                    website,
                ),
                Step(
                    "cli roles del-perms",
                    lambda: airflow(
                        env, "roles", "del-perms", "Keepers", "-r", "Pools", "-a", "can_read"
                    ),
                    {("role.permissions", "Keepers")},
                    website,
                ),
                Step(
                    "cli users delete",
                    lambda: airflow(env, "users", "delete", "-u", "dave"),
                    {("user.deleted", "dave")},
                    website,
                ),
                Step(
                    "cli roles delete",
                    lambda: airflow(env, "roles", "delete", "Keepers", "Auditors"),
                    {("role.deleted", "Keepers"), ("role.deleted", "Auditors")},
                    website,
                ),
            ]
            run_steps(cli, ledger, home)
    return Scripted(rest + cli, first, ledger)


def run_steps(steps: list[Step], ledger: Path, home: Path) -> Record:
    wait_recorded(ledger, home)
    seen = len(events(ledger, "permission.*"))
    for step in steps:
        done = step.run()
        if isinstance(done, subprocess.CompletedProcess):
            assert 0 == done.returncode, (step.name, done.stderr[-2000:])
        wait_recorded(ledger, home)
        now = events(ledger, "permission.*")
        step.records, seen = now[seen:], len(now)
    return events(ledger, "permission.*")[0]


class TestFab:
    def test_first_record_is_the_snapshot(self, fab_script: Scripted) -> None:
        first = fab_script.first
        assert first.event == "permission.snapshot"
        snapshot = unpack(first.data)
        assert snapshot is not None
        assert {"admin"} == {u["user"] for u in snapshot["users"]}
        assert {"Admin", "Op", "User", "Viewer", "Public"} <= {r["role"] for r in snapshot["roles"]}

    def test_each_change_once_right_before_and_after(self, fab_script: Scripted) -> None:
        for step in fab_script.steps:
            got = [(r.data["change"], r.data["target"]) for r in step.records]
            assert step.expected <= set(got) <= step.expected | step.tolerated, step.name
            for key in step.expected - step.tolerated:
                assert got.count(key) == 1, (step.name, key)
        # every record's before is what the ones before it left; the last, what Airflow has
        model = Model(unpack(fab_script.first.data) or {})
        for record in events(fab_script.ledger, "permission.*")[1:]:
            assert record.event == "permission.changed"
            model.apply(record.data)
        assert model.matches(current(fab_script.ledger.parent))

    def test_rest_changes_name_the_user(self, fab_script: Scripted) -> None:
        for step in fab_script.steps[:5]:
            for record in step.records:
                assert record.actor == {"type": "user", "id": "admin"}, step.name
                assert record.data["observed"] == "request"
                assert record.data["request"]["path"].startswith("/auth/fab/v1/")

    def test_cli_changes_name_the_cli_user(self, fab_script: Scripted) -> None:
        owner = getpass.getuser()
        for step in fab_script.steps[5:]:
            for record in step.records:
                if (record.data["change"], record.data["target"]) not in step.expected:
                    continue
                assert record.actor == {"type": "user", "id": owner}, step.name
                assert record.data["observed"] == "poll"
                assert record.data["cli"]["event"].startswith(("cli_users_", "cli_roles_"))

    def test_data_fields(self, fab_script: Scripted) -> None:
        created = fab_script.steps[0].records[0].data
        assert created["after"] == {"active": True, "roles": ["Viewer"]}
        assert created["digest"] == digest(unpack(created) or {})
        roles = fab_script.steps[1].records[0].data
        assert (roles["before"], roles["after"]) == (["Viewer"], ["Op", "Viewer"])
        perms_changed = fab_script.steps[3].records[0].data
        assert perms_changed["added"] == ["can_read:Pools"]

    def test_authenticator_named(self, fab_script: Scripted) -> None:
        # "authenticator", not "auth_manager": the default redaction pattern (^|_)auth($|_)
        # would mask that key
        assert {r.data["authenticator"] for s in fab_script.steps for r in s.records} == {"fab"}

    def test_no_password_hash_or_email_in_ledger(self, fab_script: Scripted) -> None:
        raw = b"".join(p.read_bytes() for p in fab_script.ledger.parent.glob("ledger.db*"))
        for secret in (ADMIN_PW, USER_PW):
            assert secret.encode() not in raw
        # no e-mail in our records (the event log's copy of `airflow users create -e ...`
        # is the event log's business)
        ours = json.dumps([r.data for r in events(fab_script.ledger, "permission.*")])
        for email in ("admin@example.com", "carol@example.com", "dave@example.com"):
            assert email not in ours
        (admin_hash,) = (
            row[0]
            for row in sqlite3.connect(fab_script.ledger.parent / "airflow.db").execute(
                "SELECT password FROM ab_user WHERE username = 'admin'"
            )
        )
        assert admin_hash
        assert admin_hash.encode() not in raw
        assert admin_hash.split("$")[-1].encode() not in raw

    def test_chain_verifies(self, fab_script: Scripted) -> None:
        db = SqliteLedger(fab_script.ledger, create=False)
        try:
            assert all(head.size > 0 for head in verify_ledger(db))
        finally:
            db.close()


def test_simple_auth_manager_config_across_restarts(
    airflow_home: AirflowHome, tmp_path: Path
) -> None:
    """SimpleAuthManager: the first API server records the configuration's snapshot; one
    restarted with other users records one ``config`` change, user -> role before and after;
    no password of the passwords file reaches the ledger."""
    ledger = tmp_path / "ledger.db"
    passwords = {"admin": "simple-admin-pw-7", "viewer": "simple-viewer-pw-7", "eve": "eve-pw-77"}
    (tmp_path / "passwords.json").write_text(json.dumps(passwords))
    base = {
        **airflow_home.env,
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": "workflow-audit-tests-" + "p" * 32,
        "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{ledger}",
        "AIRFLOW__API__HOST": "127.0.0.1",
    }

    def serve_until(users: str, count: int) -> list[Record]:
        port = free_port()
        env = {
            **base,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": users,
            "AIRFLOW__API__PORT": str(port),
        }
        with serving(env, port):
            deadline = time.monotonic() + DEADLINE_S
            while len(found := events(ledger, "permission.*")) < count:
                assert time.monotonic() < deadline, f"no permission record {count} in time"
                time.sleep(0.2)
        return found

    (snapshot,) = serve_until("admin:admin,viewer:viewer", 1)
    assert snapshot.event == "permission.snapshot"
    assert snapshot.actor == {"type": "process", "id": "airflow"}
    assert unpack(snapshot.data) == simple_snapshot("admin:admin,viewer:viewer", False)
    _, changed = serve_until("admin:admin, viewer:op, eve:viewer", 2)
    assert changed.event == "permission.changed"
    assert (changed.data["change"], changed.data["target"]) == ("config", "simple_auth_manager")
    assert changed.data["before"] == {
        "all_admins": False,
        "users": [{"user": "admin", "role": "admin"}, {"user": "viewer", "role": "viewer"}],
    }
    assert changed.data["after"]["users"] == [
        {"user": "admin", "role": "admin"},
        {"user": "eve", "role": "viewer"},
        {"user": "viewer", "role": "op"},
    ]
    assert changed.data["observed"] == "poll"
    db = SqliteLedger(ledger, create=False)
    try:
        assert db.get_cursor(CURSOR, CHAIN) == digest_int(changed.data["digest"])
    finally:
        db.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("ledger.db*"))
    for password in passwords.values():
        assert password.encode() not in raw


def test_wanted_requests_hold_polls_until_they_end() -> None:
    """A user or role request holds this process's polls back while it is answered, and not
    after it failed (a count leaked by a failing app held every later one back 60 s)."""
    import asyncio

    from airflow_audit import access, permissions

    assert not permissions.wants_request("GET", "/auth/fab/v1/users")
    assert not permissions.wants_request("POST", "/auth/token")
    assert not permissions.wants_request("POST", "/auth/login/")
    assert not permissions.wants_request("POST", "/api/v2/variables")
    assert permissions.wants_request("PATCH", "/auth/fab/v1/roles/Ops")
    assert not permissions.requests_in_flight()  # a filter: asking does not count
    during: list[bool] = []

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        during.append(permissions.requests_in_flight())
        raise RuntimeError("the app failed")

    scope = {"type": "http", "method": "PATCH", "path": "/auth/fab/v1/roles/Ops", "headers": []}

    async def nothing() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def drop(message: Any) -> None:
        pass

    stop = access.on_request_done(permissions.after_request, wants=permissions.wants_request)
    try:
        middleware = access.AccessMiddleware(failing, submit=lambda w, b: True, chain=CHAIN)
        for _ in range(2):
            with pytest.raises(RuntimeError):
                asyncio.run(middleware(scope, nothing, drop))
            assert not permissions.requests_in_flight()
    finally:
        stop()
    assert during == [True, True]
