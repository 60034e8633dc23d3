"""The "Access and changes" part of ``workflow-audit report``: who logged in, who failed to,
who was refused, whose privileges changed, which configuration changed (Airflow's variables,
connections and pools; Prefect's deployments, work pools and queues, variables, block
documents, automations, concurrency limits and flows), by kind and by actor, and which holes a
source left in the record. Pure functions over records.

>>> from audit_core._report_access import config_target
>>> config_target({"extra": {"key": "api_url", "value": "***", "method": "POST"}})
'api_url'

Only names are kept, never values: a configuration change is listed by the key, id or name
it changed (a variable's key, a connection id, a pool name, a Prefect resource's name) even
though the event log's masked ``extra`` also holds the rest of the request body.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import orjson

from audit_core._normalize import JSON, JSONObject
from audit_core._record import Record

__all__ = [
    "CONFIG_PREFIXES",
    "AccessSummary",
    "access_csv_rows",
    "access_json",
    "access_markdown",
    "config_target",
]

#: Event types whose records are configuration changes: the Airflow event log's names, then
#: Prefect's (prefect_audit.eventmap: ``prefect.work-pool.paused`` -> ``work_pool.paused``).
CONFIG_PREFIXES: Final = (
    "variable.",
    "connection.",
    "pool.",
    "deployment.",
    "work_pool.",
    "work_queue.",
    "block_document.",
    "automation.",
    "concurrency_limit.",
    "flow.",
)
#: Records under those prefixes that are no change anyone made: an automation firing.
_NOT_CHANGES: Final = ("automation.triggered", "automation.resolved", "automation.action.")
#: Keys naming what a configuration change changed, in order of preference: a variable's
#: key, a connection's id, a pool's name (request body first, then the URL's path parameter).
_TARGET_KEYS: Final = (
    "key",
    "variable_key",
    "connection_id",
    "conn_id",
    "pool_name",
    "pool",
    "name",
)
_NONE: Final = "None in this period."


def _text(value: JSON) -> str:
    """A JSON value as short text: strings as they are, lists joined, objects as JSON."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _actor(rec: Record) -> str:
    return f"{rec.actor.get('type')}:{rec.actor.get('id')}"


def _name(data: JSONObject, key: str) -> str:
    """``data[key]`` as text, ``-`` when absent (an anonymous request)."""
    value = data.get(key)
    return "-" if value is None or value == "" else _text(value)


def _user(rec: Record) -> str:
    """The user a record names: ``data.user``, else a person actor's id, else ``-``."""
    name = _name(rec.data, "user")
    if name == "-" and rec.actor.get("type") == "user":
        return _text(rec.actor.get("id"))
    return name


def _ids(body: JSONObject) -> list[str]:
    """The ids a request body names: its own key, or each entity's of a bulk request."""
    for key in _TARGET_KEYS:
        value = body.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "":
            return [str(value)]
    found: list[str] = []
    actions = body.get("actions")  # Airflow's bulk bodies: {"actions": [{"entities": [...]}]}
    for action in actions if isinstance(actions, list) else []:
        entities = action.get("entities") if isinstance(action, dict) else None
        for entity in entities if isinstance(entities, list) else []:
            if isinstance(entity, str):  # a bulk delete names its entities by id
                found.append(entity)
            elif isinstance(entity, dict):
                found += _ids(entity)[:1]
    return found


def config_target(data: JSONObject) -> str:
    """What a configuration change changed: the key or id in its data or its ``extra``
    (never a value), ``-`` when the record does not say."""
    ids = _ids(data)
    extra = data.get("extra")
    if not ids and isinstance(extra, dict):
        ids = _ids(extra)
    return ", ".join(ids) if ids else "-"


@dataclass
class AccessSummary:
    """Logins, failed logins, denials, permission and configuration changes, source gaps."""

    max_listed: int = 1000
    logins: Counter[str] = field(default_factory=Counter)  # by user
    logouts: int = 0
    failed_by_user: Counter[str] = field(default_factory=Counter)  # attempted username
    failed_by_client: Counter[str] = field(default_factory=Counter)
    denied_by_user: Counter[str] = field(default_factory=Counter)
    denied_by_path: Counter[str] = field(default_factory=Counter)
    denied_by_status: Counter[str] = field(default_factory=Counter)
    permission_changes: int = 0
    config_changes: int = 0
    config_by_kind: Counter[str] = field(default_factory=Counter)  # variable, work_pool, ...
    config_by_actor: Counter[str] = field(default_factory=Counter)  # type:id
    gaps: int = 0
    listed_permissions: list[dict[str, JSON]] = field(default_factory=list)
    listed_config: list[dict[str, JSON]] = field(default_factory=list)
    listed_gaps: list[dict[str, JSON]] = field(default_factory=list)

    def add(self, rec: Record) -> None:
        """Count ``rec`` if it is an access, permission, configuration or gap record."""
        event, data = rec.event, rec.data
        where: dict[str, JSON] = {"chain": rec.chain, "seq": rec.seq, "ts": rec.ts}
        if event == "access.login":
            self.logins[_user(rec)] += 1
        elif event == "access.logout":
            self.logouts += 1
        elif event == "access.login_failed":
            self.failed_by_user[_name(data, "username")] += 1
            self.failed_by_client[_name(data, "client")] += 1
        elif event == "access.denied":
            self.denied_by_user[_user(rec)] += 1
            self.denied_by_path[_name(data, "path")] += 1
            self.denied_by_status[_name(data, "status")] += 1
        elif event == "permission.changed":
            self.permission_changes += 1
            if len(self.listed_permissions) < self.max_listed:
                self.listed_permissions.append(
                    {
                        **where,
                        "actor": _actor(rec),
                        "change": _name(data, "change"),
                        "target": _name(data, "target"),
                        "before": data.get("before"),
                        "after": data.get("after"),
                    }
                )
        elif event.startswith(CONFIG_PREFIXES) and not event.startswith(_NOT_CHANGES):
            self.config_changes += 1
            actor = _actor(rec)
            self.config_by_kind[event.split(".", 1)[0]] += 1
            self.config_by_actor[actor] += 1
            if len(self.listed_config) < self.max_listed:
                self.listed_config.append(
                    {**where, "actor": actor, "event": event, "target": config_target(data)}
                )
        elif event == "source.gap":
            self.gaps += 1
            if len(self.listed_gaps) < self.max_listed:
                self.listed_gaps.append(
                    {
                        **where,
                        "source": _name(data, "source"),
                        "first_id": data.get("first_id"),
                        "last_id": data.get("last_id"),
                        "count": data.get("count"),
                        "reason": _name(data, "reason"),
                    }
                )

    @property
    def failed_logins(self) -> int:
        return sum(self.failed_by_user.values())

    @property
    def denials(self) -> int:
        return sum(self.denied_by_status.values())


def _by_count(counts: Counter[str]) -> list[tuple[str, int]]:
    """Most first (the user a brute force aims at heads the list), ties by name."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _counts(counts: Counter[str]) -> dict[str, JSON]:
    return dict(sorted(counts.items()))


def access_json(a: AccessSummary) -> dict[str, JSON]:
    """The section as a JSON object (the ``access`` key of the JSON report)."""
    return {
        "logins": {"count": a.logins.total(), "by_user": _counts(a.logins)},
        "logouts": {"count": a.logouts},
        "failed_logins": {
            "count": a.failed_logins,
            "by_username": _counts(a.failed_by_user),
            "by_client": _counts(a.failed_by_client),
        },
        "denials": {
            "count": a.denials,
            "by_user": _counts(a.denied_by_user),
            "by_path": _counts(a.denied_by_path),
            "by_status": _counts(a.denied_by_status),
        },
        "permission_changes": {
            "count": a.permission_changes,
            "items": list(a.listed_permissions),
        },
        "config_changes": {
            "count": a.config_changes,
            "by_kind": _counts(a.config_by_kind),
            "by_actor": _counts(a.config_by_actor),
            "items": list(a.listed_config),
        },
        "source_gaps": {"count": a.gaps, "items": list(a.listed_gaps)},
    }


def _ids_range(gap: dict[str, JSON]) -> str:
    return f"{_text(gap['first_id'])}-{_text(gap['last_id'])}"


def _change(p: dict[str, JSON]) -> str:
    return f"{_text(p['before'])} → {_text(p['after'])}"


def access_csv_rows(a: AccessSummary) -> list[tuple[str, str, JSON]]:
    """The section as (section, key, value) rows of the CSV report; zero counts included,
    so that "none" is stated, not left out."""
    rows: list[tuple[str, str, JSON]] = []
    for key, n in (
        ("logins", a.logins.total()),
        ("logouts", a.logouts),
        ("failed_logins", a.failed_logins),
        ("denials", a.denials),
        ("permission_changes", a.permission_changes),
        ("config_changes", a.config_changes),
        ("source_gaps", a.gaps),
    ):
        rows.append(("access", key, n))
    for section, counts in (
        ("login_user", a.logins),
        ("failed_login_username", a.failed_by_user),
        ("failed_login_client", a.failed_by_client),
        ("denied_user", a.denied_by_user),
        ("denied_path", a.denied_by_path),
        ("denied_status", a.denied_by_status),
        ("config_change_kind", a.config_by_kind),
        ("config_change_actor", a.config_by_actor),
    ):
        rows += [(section, key, n) for key, n in _by_count(counts)]
    rows += [
        (
            "permission_change",
            f"{p['chain']}#{p['seq']}",
            f"{p['ts']} {p['actor']} {p['change']} {p['target']}: {_change(p)}",
        )
        for p in a.listed_permissions
    ]
    rows += [
        (
            "config_change",
            f"{c['chain']}#{c['seq']}",
            f"{c['ts']} {c['actor']} {c['event']} {c['target']}",
        )
        for c in a.listed_config
    ]
    rows += [
        (
            "source_gap",
            f"{g['chain']}#{g['seq']}",
            f"{g['ts']} {g['source']} ids {_ids_range(g)} ({_text(g['count'])}): {g['reason']}",
        )
        for g in a.listed_gaps
    ]
    return rows


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_counts(title: str, total: int, *tables: tuple[str, Counter[str]]) -> list[str]:
    """A heading with the total, then a count table per (column, counts), most first."""
    lines = [f"### {title} ({total})", ""]
    if not total:
        return [*lines, _NONE, ""]
    for column, counts in tables:
        lines += [f"| {column} | count |", "|---|---:|"]
        lines += [f"| {_md(k)} | {n} |" for k, n in _by_count(counts)]
        lines.append("")
    return lines


def _md_listed(
    title: str,
    total: int,
    columns: tuple[str, ...],
    rows: list[list[str]],
    *,
    cap: int,
    counts: tuple[tuple[str, Counter[str]], ...] = (),
) -> list[str]:
    """A heading with the total, a count table per ``counts`` (column, counts), then a table
    of the listed items (the first ``cap``)."""
    lines = [f"### {title} ({total})", ""]
    if not rows:
        return [*lines, _NONE, ""]
    for column, counted in counts:
        lines += [f"| {column} | count |", "|---|---:|"]
        lines += [f"| {_md(k)} | {n} |" for k, n in _by_count(counted)]
        lines.append("")
    if total > len(rows):
        lines += [f"The first {cap} are listed.", ""]
    header = ("chain#seq", "time", *columns)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md(cell)[:300] for cell in row) + " |" for row in rows]
    return [*lines, ""]


#: A listed part of the section: title, total, columns, items, an item's cells, counts.
_Listed = tuple[
    str,
    int,
    tuple[str, ...],
    list[dict[str, JSON]],
    Callable[[dict[str, JSON]], list[JSON]],
    tuple[tuple[str, Counter[str]], ...],
]


def _where(item: dict[str, JSON]) -> list[str]:
    return [f"{item['chain']}#{item['seq']}", str(item["ts"])]


def access_markdown(a: AccessSummary) -> list[str]:
    """The section as Markdown lines; each part says "None in this period." when empty."""
    lines = ["## Access and changes", ""]
    lines += _md_counts("Logins", a.logins.total(), ("user", a.logins))
    lines += [f"Logouts: {a.logouts}.", ""]
    lines += _md_counts(
        "Failed logins",
        a.failed_logins,
        ("username", a.failed_by_user),
        ("client", a.failed_by_client),
    )
    lines += _md_counts(
        "Access denied",
        a.denials,
        ("user", a.denied_by_user),
        ("path", a.denied_by_path),
        ("status", a.denied_by_status),
    )
    parts: list[_Listed] = [
        (
            "Permission changes",
            a.permission_changes,
            ("actor", "change", "target", "before → after"),
            a.listed_permissions,
            lambda p: [p["actor"], p["change"], p["target"], _change(p)],
            (),
        ),
        (
            "Configuration changes",
            a.config_changes,
            ("actor", "change", "key, id or name"),
            a.listed_config,
            lambda c: [c["actor"], c["event"], c["target"]],
            (("kind", a.config_by_kind), ("actor", a.config_by_actor)),
        ),
        (
            "Source gaps: source rows never recorded",
            a.gaps,
            ("source", "ids", "count", "reason"),
            a.listed_gaps,
            lambda g: [g["source"], _ids_range(g), _text(g["count"]), g["reason"]],
            (),
        ),
    ]
    for title, total, columns, items, cells, counts in parts:
        rows = [[*_where(item), *map(str, cells(item))] for item in items]
        lines += _md_listed(title, total, columns, rows, cap=a.max_listed, counts=counts)
    return lines
