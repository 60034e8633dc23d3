"""Records of what people did in Airflow, built with exactly the fields of the issue #13
taxonomy (event log rows, logins, denials, permission changes, source gaps), for the report,
OTLP and alert-rule tests. The writers (the event-log ingestor, the login middleware, the
permission watcher) produce these shapes; these tests check what the readers make of them."""

from __future__ import annotations

from typing import Any

from audit_core import Event

CHAIN = "airflow-events"
#: A value that must never reach a report: the event log masks it, the report lists keys only.
DESCRIPTION = "rotated by the on-call engineer"


def event_log(
    event: str, airflow_event: str, owner: str, extra: dict[str, Any], log_id: int, ts: str
) -> Event:
    """An Airflow ``log`` row as the ingestor records it (data always has every field)."""
    data = {
        "log_id": log_id,
        "event": airflow_event,
        "owner": owner,
        "owner_display_name": owner.title(),
        "dag_id": None,
        "task_id": None,
        "run_id": None,
        "map_index": None,
        "try_number": None,
        "logical_date": None,
        "extra": extra,
    }
    return Event(type=event, data=data, actor=("user", owner), ts=ts, chain=CHAIN)


def login(user: str, client: str, ts: str) -> Event:
    """A successful login through the REST token endpoint."""
    data = {
        "user": user,
        "authenticator": "simple",
        "client": client,
        "user_agent": "curl/8.5.0",
        "method": "POST",
        "path": "/auth/token",
        "status": 201,
    }
    return Event(type="access.login", data=data, actor=("user", user), ts=ts, chain=CHAIN)


def login_failed(username: str, client: str, ts: str) -> Event:
    """A refused login: the attempted username, never the password."""
    data = {
        "username": username,
        "status": 401,
        "client": client,
        "user_agent": "python-requests/2.32",
        "method": "POST",
        "path": "/auth/token",
        "authenticator": "simple",
    }
    return Event(
        type="access.login_failed", data=data, actor=("anonymous", "-"), ts=ts, chain=CHAIN
    )


def logout(user: str | None, client: str, ts: str) -> Event:
    """A logout (user null when the session was already gone)."""
    data = {
        "user": user,
        "client": client,
        "user_agent": "Mozilla/5.0",
        "path": "/auth/logout",
        "authenticator": "simple",
    }
    actor = ("user", user) if user else ("anonymous", "-")
    return Event(type="access.logout", data=data, actor=actor, ts=ts, chain=CHAIN)


def denied(user: str | None, client: str, path: str, status: int, ts: str) -> Event:
    """A 401/403 the API server answered."""
    data = {
        "method": "POST",
        "path": path,
        "status": status,
        "user": user,
        "client": client,
        "user_agent": "curl/8.5.0",
        "authenticator": "simple",
    }
    actor = ("user", user) if user else ("anonymous", "-")
    return Event(type="access.denied", data=data, actor=actor, ts=ts, chain=CHAIN)


def permission_changed(
    actor: str, change: str, target: str, before: Any, after: Any, ts: str
) -> Event:
    """A change of privileges seen by the permission watcher (FAB)."""
    data = {
        "authenticator": "fab",
        "change": change,
        "target": target,
        "before": before,
        "after": after,
        "digest": "5e" * 32,
    }
    return Event(type="permission.changed", data=data, actor=("user", actor), ts=ts, chain=CHAIN)


def source_gap(first_id: int, last_id: int, reason: str, ts: str) -> Event:
    """Ids of Airflow's log table that vanished before they were recorded."""
    data = {
        "source": "airflow.log",
        "first_id": first_id,
        "last_id": last_id,
        "count": last_id - first_id + 1,
        "reason": reason,
    }
    return Event(
        type="source.gap", data=data, actor=("process", "workflow-audit"), ts=ts, chain=CHAIN
    )


def at(minute: int, second: int = 0) -> str:
    """A timestamp on 2026-12-01, ``minute`` minutes after 10:00 UTC."""
    return f"2026-12-01T{10 + minute // 60:02d}:{minute % 60:02d}:{second:02d}.000000Z"


def period() -> list[Event]:
    """A day's worth of people's actions: logins, a brute force, denials, a role change,
    configuration changes and a purge of the log table."""
    return [
        login("alice", "10.0.0.5", at(0)),
        login("alice", "10.0.0.5", at(1)),
        login("bob", "10.0.0.6", at(2)),
        logout("alice", "10.0.0.5", at(3)),
        *(login_failed("admin", "203.0.113.9", at(4, s)) for s in (0, 10, 20)),
        login_failed("admin", "198.51.100.2", at(4, 30)),
        login_failed("carol", "10.0.0.8", at(5)),
        denied("viewer", "10.0.0.7", "/api/v2/variables", 403, at(6)),
        denied("viewer", "10.0.0.7", "/api/v2/variables", 403, at(6, 5)),
        denied(None, "203.0.113.9", "/api/v2/dags", 401, at(7)),
        permission_changed("admin", "user.roles", "bob", ["Viewer"], ["Admin", "Viewer"], at(8)),
        permission_changed("admin", "role.created", "auditors", None, {"permissions": []}, at(9)),
        event_log(
            "variable.updated",
            "patch_variable",
            "admin",
            {"key": "api_token", "value": "***", "description": DESCRIPTION, "method": "PATCH"},
            41,
            at(10),
        ),
        event_log(
            "connection.created",
            "post_connection",
            "admin",
            {"connection_id": "warehouse", "conn_type": "postgres", "password": "***"},
            42,
            at(11),
        ),
        event_log(
            "pool.deleted",
            "delete_pool",
            "admin",
            {"pool_name": "gpu", "method": "DELETE"},
            43,
            at(12),
        ),
        event_log(
            "variable.deleted",
            "bulk_variables",
            "admin",
            {"actions": [{"action": "delete", "entities": ["old_a", "old_b"]}], "method": "PATCH"},
            44,
            at(13),
        ),
        event_log("run.triggered", "trigger_dag_run", "alice", {"method": "POST"}, 45, at(14)),
        event_log("cli.command", "cli_dags_list", "alice", {"host_name": "h"}, 46, at(15)),
        source_gap(100, 149, "purged", at(16)),
    ]


#: The configuration changes of the taxonomy, with the Airflow endpoint each comes from.
CONFIG_EVENTS = {
    f"{kind}.{change}": f"{verb}_{kind}"
    for kind in ("variable", "connection", "pool")
    for change, verb in (("created", "post"), ("updated", "patch"), ("deleted", "delete"))
}


def config_changes() -> list[Event]:
    """One record of each configuration change type, keyed as Airflow's endpoints key them."""
    ids = {"variable": "key", "connection": "connection_id", "pool": "pool_name"}
    return [
        event_log(event, name, "admin", {ids[event.split(".")[0]]: "x"}, 100 + i, at(30 + i))
        for i, (event, name) in enumerate(CONFIG_EVENTS.items())
    ]
