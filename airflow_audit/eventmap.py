"""Rows of Airflow's event log (the ``log`` table) as audit events: pure functions, no I/O.

Airflow writes a ``log`` row for every audited REST call (``action_logging()``: event = the
endpoint's name, owner = the user, ``extra`` = query, path and body, masked by key name), for
every ``airflow`` CLI command (``cli_<command>``, ``extra`` = host name and the command line,
masked only for keys that look sensitive) and for some of its own bookkeeping (task states,
scheduler notes). :func:`to_event` turns one row into one event of the record taxonomy
(``docs/AIRFLOW.md`` "The event log"), with the person as the actor; values never go on the
chain: variable values, connection passwords and extras, XCom values and the secrets of CLI
command lines become :data:`~audit_core.REDACTED`, with no digest: an unkeyed SHA-256 of a
short secret ("true", a 10-character password) is a brute-force oracle for anyone who reads a
sink. DAG run confs, which are not secrets but may be large or personal, keep the ``sha256:``
digest the task chain records for them (``record_conf``).

>>> event = to_event({"id": 7, "event": "patch_dag", "owner": "alice", "dag_id": "etl",
...                   "extra": '{"is_paused": true, "method": "PATCH"}'})
>>> event.type, event.actor, event.subject
('dag.paused', ('user', 'alice'), {'dag_id': 'etl'})
>>> to_event({"id": 8, "event": "post_variable", "owner": "bob",
...           "extra": '{"key": "k", "val": "***", "method": "POST"}'}).data["extra"]
{'key': 'k', 'val': '[REDACTED]', 'method': 'POST'}
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Any

from audit_core import REDACTED, redact
from audit_core.hooks import digest
from audit_core.trail import Event

__all__ = ["FIXED_TYPES", "SYSTEM_EVENTS", "TASK_STATES", "command_line", "event_type", "to_event"]

#: Airflow's event name -> record type, for names that alone decide it (REST endpoints of
#: ``api_fastapi/core_api/routes``, Airflow 3.3; the rest are decided by :func:`event_type`).
FIXED_TYPES: Mapping[str, str] = {
    "trigger_dag_run": "run.triggered",
    "clear_dag_run": "run.cleared",
    "clear_dag_runs": "run.cleared",
    "clear_dag_run_partitions": "run.cleared",
    "delete_dag_run": "run.deleted",
    "post_clear_task_instances": "task.cleared",
    "get_task_instances_batch": "task.listed",
    "update_hitl_detail": "task.hitl_responded",
    "delete_dag": "dag.deleted",
    "favorite_dag": "dag.favorited",
    "unfavorite_dag": "dag.unfavorited",
    "reparse_dag_file": "dag.reparse_requested",
    "post_variable": "variable.created",
    "patch_variable": "variable.updated",
    "delete_variable": "variable.deleted",
    "post_connection": "connection.created",
    "patch_connection": "connection.updated",
    "delete_connection": "connection.deleted",
    "enqueue_connection_test": "connection.tested",
    "test_connection": "connection.tested",  # the synchronous test of Airflow < 3.3
    "create_default_connections": "connection.defaults_created",
    "post_pool": "pool.created",
    "patch_pool": "pool.updated",
    "delete_pool": "pool.deleted",
    "create_backfill": "backfill.created",
    "pause_backfill": "backfill.paused",
    "unpause_backfill": "backfill.unpaused",
    "cancel_backfill": "backfill.cancelled",
    "create_asset_event": "asset.event_created",
    "materialize_asset": "asset.materialize_requested",
    "delete_asset_queued_events": "asset.queued_events_deleted",
    "delete_dag_asset_queued_events": "asset.queued_events_deleted",
    "delete_dag_asset_queued_event": "asset.queued_events_deleted",
    "create_xcom_entry": "xcom.created",
    "update_xcom_entry": "xcom.updated",
    "delete_xcom_entry": "xcom.deleted",
    "generate_token": "access.token_created",  # POST /ui/auth/token
}
#: Bulk endpoints: one record per row, typed by the body's actions when they are all alike.
_BULK = {
    "bulk_variables": "variable",
    "bulk_connections": "connection",
    "bulk_pools": "pool",
    "bulk_dag_runs": "run",
}
_BULK_ACTIONS = {"create": "created", "update": "updated", "delete": "deleted"}
#: Task states Airflow logs when a task instance changes state (its own bookkeeping).
TASK_STATES = frozenset(
    {
        "queued",
        "scheduled",
        "running",
        "success",
        "failed",
        "skipped",
        "upstream_failed",
        "up_for_retry",
        "up_for_reschedule",
        "deferred",
        "removed",
        "restarting",
    }
)
#: Notes the scheduler, the executors and the asset manager write about tasks: no person.
SYSTEM_EVENTS = frozenset(
    {
        "state mismatch",
        "fail task",
        "skip task",
        "stuck in queued reschedule",
        "stuck in queued tries exceeded",
        "heartbeat timeout",
        "missing partition key",
        "failed to map partition_key",
        "partition fan-out exceeded",
    }
)
_SUBJECT = ("dag_id", "task_id", "run_id", "map_index", "try_number")
_COLUMNS = ("owner", "owner_display_name", *_SUBJECT, "logical_date")
#: A value Airflow masked already ("***", "********", "[REDACTED]"): nothing to digest.
_MASKS = frozenset({"***", REDACTED, "[redacted]"})
_STARS = "*" * 8
#: CLI options whose value is a secret, in every command group (``connections add``, FAB's
#: ``users create|reset-password``, ``tasks test --env-vars``: environment variables).
_SECRET_OPTIONS = (
    "--password",
    "--conn-password",
    "--conn-uri",
    "--conn-extra",
    "--conn-json",
    "--env-vars",
)
#: Short secret options by command group (``-p``: ``--password``).
_SECRET_SHORT = {"users": "p", "connections": "p"}
#: DAG run confs and task params: a digest only by default, as the task chain records confs
#: (record_conf); by command group (``airflow dags trigger|test``, ``backfill create``,
#: ``tasks test``).
_CONF_KEYS = ("conf", "dag_run_conf")
_CONF_OPTIONS = {
    "dags": ("--conf",),
    "backfill": ("--dag-run-conf",),
    "tasks": ("--task-params",),
}
#: Short conf options by "group subcommand" or group (``tasks clear -t`` is a task regex).
_CONF_SHORT = {"dags": "c", "tasks test": "t"}
#: CLI commands that change configuration: their record type (as the REST API's would be; the
#: CLI cannot tell a created variable from an updated one) and the data key naming what.
_CLI_CHANGES = {
    "cli_variables_set": ("variable.set", "key"),
    "cli_variables_delete": ("variable.deleted", "key"),
    "cli_variables_import": ("variable.imported", "file"),
    "cli_connections_add": ("connection.created", "connection_id"),
    "cli_connections_delete": ("connection.deleted", "connection_id"),
    "cli_connections_import": ("connection.imported", "file"),
    "cli_pool_set": ("pool.set", "pool_name"),
    "cli_pool_delete": ("pool.deleted", "pool_name"),
    "cli_pool_import": ("pool.imported", "file"),
}
#: What argparse (3.11, ``_negative_number_matcher``) takes for a negative number: a value.
_NEGATIVE_NUMBER = re.compile(r"-\d+|-\d*\.\d+")
_MAX_COMMAND_CHARS = 65536  # a longer full_command is not kept (not parsed either)
_redact_keys = redact()


def to_event(
    row: Mapping[str, Any],
    *,
    linked_run_id: str | None = None,
    unlinked: str | None = None,
    record_conf: bool = False,
) -> Event:
    """The event of one ``log`` row (its columns by name; ``extra`` as Airflow stored it).

    ``linked_run_id``: the DAG run a ``trigger_dag_run`` row created, found by the caller when
    neither the row nor its body names it; ``unlinked``: why none was found. ``data.run_link``
    says where the run id came from: ``row``, ``body``, ``dag_run``, or ``unlinked``.
    ``record_conf`` (``[workflow_audit] record_conf``): keep DAG run confs (redacted) instead
    of their digest, as the task chain's ``dagrun.started`` does.
    """
    name = str(row.get("event") or "")
    extra = _masked_extra(name, row.get("extra"), record_conf)
    data: dict[str, Any] = {"log_id": row.get("id"), "event": name}
    data.update({key: _plain(row.get(key)) for key in _COLUMNS})
    data["extra"] = extra
    run_link = "row" if row.get("run_id") else None
    if run_link is None and isinstance(extra, dict):
        from_body = extra.get("dag_run_id") or extra.get("run_id")
        if isinstance(from_body, str) and from_body:
            data["run_id"], run_link = from_body, "body"
    if run_link is None and linked_run_id:
        data["run_id"], run_link = linked_run_id, "dag_run"
    run_link = run_link or unlinked
    if run_link is not None:
        data["run_link"] = run_link
    if name.startswith("cli_"):
        data["command"] = name[4:]
        target = _cli_target(name, extra)
        if target is not None:  # what a configuration command changed, for the report
            data[_CLI_CHANGES[name][1]] = target
    subject = {key: data[key] for key in _SUBJECT if data.get(key) is not None}
    ts = row.get("dttm")
    return Event(
        type=event_type(name, extra),
        data=_redact_keys(data),
        subject=subject or None,
        actor=_actor(name, row.get("owner"), extra),
        ts=ts if isinstance(ts, dt.datetime) else None,
    )


def event_type(name: str, extra: object) -> str:
    """The record type of Airflow's event ``name`` (``extra`` parsed: it decides a few).

    >>> event_type("cli_dags_list", None), event_type("success", None)
    ('cli.command', 'airflow.task_state')
    >>> event_type("cli_variables_set", None)  # a configuration change, like post_variable
    'variable.set'
    >>> event_type("patch_task_instance", {"new_state": "failed"}), event_type("my_own", None)
    ('task.state_set', 'airflow.event')
    """
    body = extra if isinstance(extra, dict) else {}
    if name in FIXED_TYPES:
        return FIXED_TYPES[name]
    if name.startswith("cli_"):
        return _CLI_CHANGES[name][0] if name in _CLI_CHANGES else "cli.command"
    if name in ("patch_dag", "patch_dags", "paused"):
        paused = True if name == "paused" else _flag(body.get("is_paused"))
        return "dag.updated" if paused is None else ("dag.paused" if paused else "dag.unpaused")
    if name == "patch_dag_run":
        return "run.state_set" if body.get("state") else "run.updated"
    if name in ("patch_task_instance", "patch_task_group_instances"):
        return "task.state_set" if body.get("new_state") else "task.updated"
    if name in _BULK:
        kinds = {a.get("action") for a in body.get("actions") or () if isinstance(a, dict)}
        verb = _BULK_ACTIONS.get(str(kinds.pop())) if len(kinds) == 1 else None
        return f"{_BULK[name]}.{verb or 'changed'}"
    if name in TASK_STATES:
        return "airflow.task_state"
    return "airflow.event"


def _actor(name: str, owner: object, extra: object) -> tuple[str, str]:
    if not isinstance(owner, str) or not owner:
        return ("process", "airflow")
    if owner == "scheduler":  # DagRun pauses a DAG after too many failed runs
        return ("process", "scheduler")
    # A person acted only through the REST API (action_logging adds the request's method to
    # every row) or the CLI (cli_<command>); on other rows (task states, the scheduler's and
    # the executors' notes: log_task_event) owner is the task's owner, the DAG author's
    # "owner" argument, not who acted. It stays in data.owner.
    by_request = isinstance(extra, dict) and isinstance(extra.get("method"), str)
    if name in TASK_STATES or name in SYSTEM_EVENTS or not (by_request or name.startswith("cli_")):
        return ("process", "airflow")
    # action_logging without a user, or SimpleAuthManager's all-admins user "Anonymous"
    if owner.lower() == "anonymous":
        return ("anonymous", "-")
    return ("user", owner)


def _flag(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _plain(value: object) -> object:
    return (
        value.astimezone(dt.timezone.utc)
        if isinstance(value, dt.datetime) and value.tzinfo
        else value
    )


# -- values that never go on the chain ---------------------------------------------------------


def _masked_extra(name: str, text: object, record_conf: bool) -> object:
    if not isinstance(text, str) or not text:
        return text
    try:
        extra: object = json.loads(text)
    except ValueError:
        return text  # a scheduler note in prose; the trail's processors scrub strings
    if not isinstance(extra, dict):
        return extra
    if name.startswith("cli_") and "full_command" in extra:
        line = command_line(name[4:], extra["full_command"], record_conf=record_conf)
        return {**extra, **line}
    if not record_conf:
        extra = _hide(extra, _CONF_KEYS, digests=True)
    if "variable" in name:
        return _entities(extra, _variable)
    if "connection" in name:
        return _entities(extra, _connection)
    if "xcom" in name:
        return _variable(extra)
    return extra


def _entities(body: dict[str, Any], mask: Any) -> dict[str, Any]:
    """A bulk body's ``actions[].entities[]`` (delete actions list bare ids), or one entity."""
    actions = body.get("actions")
    if not isinstance(actions, list):
        return mask(body)  # type: ignore[no-any-return]
    out = []
    for action in actions:
        if isinstance(action, dict) and isinstance(action.get("entities"), list):
            entities = [mask(e) if isinstance(e, dict) else e for e in action["entities"]]
            action = {**action, "entities": entities}
        out.append(action)
    return {**body, "actions": out}


def _variable(entity: dict[str, Any]) -> dict[str, Any]:
    """A variable's (or an XCom's) body without its value: whatever the key's name, a value
    may be a secret."""
    return _hide(entity, ("val", "value"), digests=False)


def _connection(entity: dict[str, Any]) -> dict[str, Any]:
    """A connection's body without its password and extra; the extra's field names stay (what
    Airflow itself keeps of it)."""
    out = _hide(entity, ("password", "extra"), digests=False)
    extra = entity.get("extra")
    if isinstance(extra, dict):
        out["extra_keys"] = sorted(str(k) for k in extra)
    return out


def _hide(entity: dict[str, Any], keys: tuple[str, ...], *, digests: bool) -> dict[str, Any]:
    """``entity`` with the values of ``keys`` replaced by the marker; with ``digests`` (confs
    only, never secrets: see the module docstring) their SHA-256 under ``value_sha256``."""
    out = dict(entity)
    kept = {}
    for key in keys:
        if key in out and out[key] is not None:
            if digests and not _masked(out[key]):
                kept[key] = digest(out[key])
            out[key] = REDACTED
    if kept:
        earlier = out.get("value_sha256")
        out["value_sha256"] = {**earlier, **kept} if isinstance(earlier, dict) else kept
    return out


def _masked(value: object) -> bool:
    if isinstance(value, dict):  # Airflow's masked connection extra: {"field": "***"}
        return all(_masked(v) for v in value.values())
    # "postgres://u:********@h": Airflow's CLI masked the secret inside the value
    return isinstance(value, str) and (value in _MASKS or set(value) == {"*"} or _STARS in value)


def command_line(
    command: str, full_command: object, *, record_conf: bool = False
) -> dict[str, Any]:
    """``full_command`` of a ``cli_<command>`` row (the repr of ``sys.argv``) as a list, with
    the value of ``variables set KEY VALUE`` and of every secret option replaced by the marker
    (``--password``, ``--conn-password|uri|extra|json``, ``--env-vars``, ``-p`` of ``users``
    and ``connections``; the confs ``-c``/``--conf`` of ``dags``, ``--dag-run-conf`` of
    ``backfill`` and ``-t``/``--task-params`` of ``tasks test`` too); a conf's digest is kept
    by argument index, or with ``record_conf`` its value, under ``conf``.

    Airflow's argparse takes more forms than the exact option, and so does this: a unique
    prefix (``--passw S``, ``--conn-pass=S``: ``allow_abbrev``) and a short option with its
    value attached (``-pS``, ``-vpS``). A prefix that could also be a secret's is one (fail
    closed: ``--con`` of ``dags trigger`` is hidden as a secret, with no digest).

    >>> command_line("variables_set", "['airflow', 'variables', 'set', 'k', 'v']")
    {'full_command': ['airflow', 'variables', 'set', 'k', '[REDACTED]']}
    >>> command_line("users_create", ['airflow', 'users', 'create', '--passw', 'S', '-pS'])
    {'full_command': ['airflow', 'users', 'create', '--passw', '[REDACTED]', '-p[REDACTED]']}
    """
    argv = _argv(full_command)
    if argv is None:  # not the list Airflow writes: keep nothing of it
        return {"full_command": REDACTED}
    group = argv[1] if len(argv) > 1 else ""
    sub = f"{group} {argv[2]}" if len(argv) > 2 else group
    confs = _CONF_OPTIONS.get(group, ())
    short_conf = _CONF_SHORT.get(sub, _CONF_SHORT.get(group, ""))
    short_secret = _SECRET_SHORT.get(group, "")
    # index -> (the part of the argument kept before the marker, is the value a conf)
    hidden: dict[int, tuple[str, bool]] = {}
    if command == "variables_set":
        hidden.update((i, ("", False)) for i in _variable_value(argv))
    for i, arg in enumerate(argv[1:], start=1):
        if i in hidden:
            continue
        found = _option_value(arg, confs, short_secret, short_conf)
        if found is None:
            continue
        head, conf = found
        if head is None:  # the value is the next argument
            if i + 1 < len(argv):
                hidden[i + 1] = ("", conf)
        else:
            hidden[i] = (head, conf)
    out = list(argv)
    digests, kept = {}, {}
    for i, (head, conf) in sorted(hidden.items()):
        value = argv[i][len(head) :]
        if conf and record_conf:
            # kept beside the command, under "conf" (by argument index): a node a privacy
            # policy knows to commit, where an argument list would hide it in plain text
            kept[str(i)] = value
        elif conf and not _masked(value):  # a conf's digest, never a secret's (module docs)
            digests[str(i)] = digest(value)
        out[i] = head + REDACTED
    result: dict[str, Any] = {"full_command": out}
    if digests:
        result["value_sha256"] = digests
    if kept:
        result["conf"] = kept
    return result


def _option_value(
    arg: str, confs: tuple[str, ...], short_secret: str, short_conf: str
) -> tuple[str | None, bool] | None:
    """Is ``arg`` a secret or conf option? ``(head, conf)``: ``head`` is None when the value
    is the next argument, else the part of ``arg`` before its value; None: neither."""
    if arg.startswith("--"):
        name, eq, _ = arg.partition("=")
        if len(name) <= 2:  # "--" ends the options; "--=x" is no option
            return None
        head = name + eq if eq else None
        # an exact name first (argparse's order), then any prefix: a secret's wins
        if name in _SECRET_OPTIONS:
            return head, False
        if name in confs:
            return head, True
        if any(option.startswith(name) for option in _SECRET_OPTIONS):
            return head, False
        if any(option.startswith(name) for option in confs):
            return head, True
        return None
    if not arg.startswith("-") or len(arg) < 2:
        return None
    # a short option, alone (-p), with its value (-pS, -p=S) or after flags (-vpS)
    for at, char in enumerate(arg[1:], start=2):
        if char in (short_secret, short_conf):
            conf = char != short_secret
            if at == len(arg):
                return None, conf
            return arg[: at + 1] if arg[at] == "=" else arg[:at], conf
    return None


def _argv(full_command: object) -> list[str] | None:
    if isinstance(full_command, list):
        parsed: object = full_command
    elif isinstance(full_command, str) and len(full_command) <= _MAX_COMMAND_CHARS:
        try:
            parsed = ast.literal_eval(full_command)  # literals only: never runs code
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    else:
        return None
    if isinstance(parsed, list) and all(isinstance(a, str) for a in parsed):
        return list(parsed)
    return None


def _variable_value(argv: list[str]) -> list[int]:
    """Indexes of ``airflow variables set [options] KEY VALUE``'s VALUE (and of any further
    positional: an option we do not know taking a value can only shift the key into hiding)."""
    if "set" not in argv:
        return list(range(2, len(argv)))
    return _set_positionals(argv)[1:]


def _cli_target(name: str, extra: object) -> str | None:
    """The key, connection id or pool a configuration command named (never a value): the
    first positional argument after the subcommand when the command line says it plainly."""
    line = extra.get("full_command") if isinstance(extra, dict) else None
    if name not in _CLI_CHANGES or not isinstance(line, list) or len(line) < 4:
        return None
    if name == "cli_variables_set":
        found = _set_positionals(line)
        return str(line[found[0]]) if found else None
    first = line[3]  # airflow GROUP SUBCOMMAND FIRST: an option first and we say nothing
    return first if isinstance(first, str) and not first.startswith("-") else None


def _set_positionals(argv: list[str]) -> list[int]:
    """Indexes of the positional arguments of ``airflow variables set``, as argparse sees them."""
    start = argv.index("set") + 1
    positional: list[int] = []
    i = start
    while i < len(argv):
        arg = argv[i]
        if len(arg) > 2 and "--description".startswith(arg):  # or a prefix of it
            i += 2
            continue
        if arg == "--":  # argparse: everything after it is positional, "-x" values too
            positional.extend(range(i + 1, len(argv)))
            break
        if not arg.startswith("-") or arg == "-" or _NEGATIVE_NUMBER.fullmatch(arg):
            positional.append(i)  # argparse takes "-987654" as a value, not an option
        i += 1
    return positional
