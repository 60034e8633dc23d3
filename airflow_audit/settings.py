"""The ``[workflow_audit]`` section of Airflow's configuration, mapped onto the core config.

Precedence, highest first (README "Airflow"):

1. ``AIRFLOW__WORKFLOW_AUDIT__<OPTION>`` environment variables,
2. ``[workflow_audit] <option>`` in ``airflow.cfg``,
3. the core's ``WORKFLOW_AUDIT_*`` environment variables (``WORKFLOW_AUDIT_LEDGER``, …),
4. Airflow defaults: ledger ``sqlite:///$AIRFLOW_HOME/workflow_audit/ledger.db``, chain
   ``airflow``; then the core's defaults.

Options left empty (the default for ledger_url, chain, signing_key, redact_keys) fall through
to level 3, so one ``WORKFLOW_AUDIT_LEDGER`` serves the Airflow plugin and the CLI alike.
``OPTIONS`` is the single table behind both this module and ``airflow config list``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit_core import AuditConfig
from audit_core.config import ENV_PREFIX
from audit_core.errors import ConfigError
from audit_core.hooks import EventFilter

__all__ = [
    "OPTIONS",
    "SECTION",
    "AirflowAuditSettings",
    "Option",
    "load_settings",
    "parse_boolean",
    "split_witnesses",
]

SECTION = "workflow_audit"
DEFAULT_CHAIN = "airflow"


@dataclass(frozen=True, slots=True)
class Option:
    """One ``[workflow_audit]`` option, as ``provider_info.schema.json`` describes options."""

    description: str
    type: str  # string | boolean | integer | float
    default: str
    example: str | None = None
    sensitive: bool = False


OPTIONS: Mapping[str, Option] = {
    "enabled": Option(
        "Record Airflow events on the audit chain. When False the plugin registers no listener "
        "and airflow_audit.audit.record() writes nothing.",
        "boolean",
        "True",
    ),
    "ledger_url": Option(
        "Ledger URL. Empty: $WORKFLOW_AUDIT_LEDGER, else "
        "sqlite:///$AIRFLOW_HOME/workflow_audit/ledger.db. Every process that runs tasks, the "
        "scheduler and the API server must reach the same ledger.",
        "string",
        "",
        "sqlite:////var/lib/airflow/workflow_audit/ledger.db",
    ),
    "chain": Option(
        "Chain id of Airflow's records. Empty: $WORKFLOW_AUDIT_CHAIN, else 'airflow'.",
        "string",
        "",
        "airflow-prod",
    ),
    "signing_key": Option(
        "Checkpoint signing key: a PRIVATE+KEY+... string or the path of a file holding one. "
        "Empty: $WORKFLOW_AUDIT_SIGNING_KEY, else a local key created beside the ledger.",
        "string",
        "",
        "/run/secrets/workflow-audit.key",
        sensitive=True,
    ),
    "privacy_policy": Option(
        "Privacy policy: a .toml or .yaml file, or 'default' (the built-in rules). Personal "
        "fields (triggering users, conf, model inputs, ...) are then recorded as keyed "
        "commitments, their values kept in an erasable store (docs/PRIVACY.md). Empty: "
        "$WORKFLOW_AUDIT_PRIVACY_POLICY, else none.",
        "string",
        "",
        "/etc/workflow-audit/privacy.toml",
    ),
    "privacy_store": Option(
        "The erasable privacy store's URL. Empty: $WORKFLOW_AUDIT_PRIVACY_STORE, else beside "
        "a SQLite ledger (<ledger>.privacy.db), or a PostgreSQL ledger's own database.",
        "string",
        "",
        "postgresql://audit@db/audit",
        sensitive=True,
    ),
    "privacy_keys": Option(
        "The per-subject key store: a file, or a URL of a workflow_audit.keystores backend. "
        "Empty: $WORKFLOW_AUDIT_PRIVACY_KEYS, else <ledger>.privacy-keys.db beside a SQLite "
        "ledger (a PostgreSQL ledger needs it set).",
        "string",
        "",
        "/var/lib/workflow-audit/privacy-keys.db",
        sensitive=True,
    ),
    "redact_keys": Option(
        "Comma-separated regular expressions of payload keys to redact, added to the built-in "
        "list (password, secret, token, api_key, ...) and to $WORKFLOW_AUDIT_REDACT_KEYS. "
        "Airflow's own secrets masker also runs on every record.",
        "string",
        "",
        "customer_email,iban",
    ),
    "hook_timeout": Option(
        "Seconds a listener hook waits for its records to be durable before returning to "
        "Airflow; the write then finishes in the background (logged and counted).",
        "float",
        "5.0",
    ),
    "events": Option(
        "Which events to record: comma-separated patterns, '!' excludes. Events: task.started, "
        "task.succeeded, task.failed, task.retry_scheduled, task.skipped, "
        "task.upstream_failed, dagrun.started, dagrun.succeeded, dagrun.failed, "
        "asset.updated, dag.import_error, and the task-side API's own.",
        "string",
        "*",
        "task.*,dagrun.*,!task.started",
    ),
    "record_not_run": Option(
        "When a DAG run ends, record task.skipped / task.upstream_failed for task instances "
        "that never ran (Airflow fires no task hook for them).",
        "boolean",
        "True",
    ),
    "record_conf": Option(
        "Record DAG run conf values in dagrun.started (redacted). False: only its SHA-256.",
        "boolean",
        "False",
    ),
    "events_chain": Option(
        "Chain of what people did: Airflow's event log (the log table), logins, failed logins, "
        "access denied and permission changes. Kept apart from the task chain so the event "
        "log's cursor and order are its own.",
        "string",
        "airflow-events",
        "airflow-prod-events",
    ),
    "ingest_event_log": Option(
        "Copy every row of Airflow's event log (the log table) onto the events chain, from "
        "the scheduler and the API server (each row exactly once, however many run). False: "
        "run `workflow-audit ingest airflow --follow` as a sidecar instead, or not at all.",
        "boolean",
        "True",
    ),
    "ingest_interval": Option(
        "Seconds between two reads of Airflow's event log by the plugin's ingester.",
        "float",
        "1.0",
    ),
    "ingest_grace": Option(
        "Seconds a hole in the event log's ids may stay open (a row not yet committed) before "
        "it is recorded as a source.gap and ingestion moves past it.",
        "float",
        "10.0",
    ),
    "record_access": Option(
        "Record logins, failed logins, logouts and every 401/403 the API server answers "
        "(access.*), and permission changes (permission.changed).",
        "boolean",
        "True",
    ),
    "ui": Option(
        "Show the audit trail in Airflow's UI (Browse > Audit trail, and an Audit tab on DAG, "
        "DAG run and task instance pages) to users who may read Airflow's audit log; records "
        "about a DAG only to users who may read that DAG. Each view is itself recorded on the "
        "'audit' chain.",
        "boolean",
        "True",
    ),
    "anchor_interval": Option(
        "Seconds between two anchoring rounds of the scheduler and each API server worker: "
        "a signed checkpoint of every chain that grew, also on a clean shutdown, offered to "
        "the witnesses. Empty: $WORKFLOW_AUDIT_ANCHOR_INTERVAL, else 60.",
        "float",
        "",
        "30",
    ),
    "witnesses": Option(
        "Witnesses asked to cosign each new checkpoint (c2sp.org/tlog-witness): 'URL VKEY' "
        "entries separated by ';', VKEY the witness's verifier key. A witness down never "
        "blocks recording (retried, counted). Empty: $WORKFLOW_AUDIT_WITNESSES, else none.",
        "string",
        "",
        "http://witness.example:7380 witness.example+1a2b3c4d+BASE64KEY",
    ),
    "verifier_key": Option(
        "Comma-separated checkpoint verifier keys (or paths of files holding them) the audit "
        "trail's status panel checks checkpoint signatures with. Empty: signatures are shown "
        "as not checked.",
        "string",
        "",
        "/etc/workflow-audit/ledger.pub",
    ),
}

_TRUE = {"true", "t", "1", "yes", "y", "on"}
_FALSE = {"false", "f", "0", "no", "n", "off"}


@dataclass(frozen=True, slots=True, kw_only=True)
class AirflowAuditSettings:
    """What the Airflow adapter needs: the core config plus the adapter's own options."""

    enabled: bool = True
    audit: AuditConfig = field(default_factory=AuditConfig)
    hook_timeout_s: float = 5.0
    events: EventFilter = field(default_factory=EventFilter)
    record_not_run: bool = True
    record_conf: bool = False
    events_chain: str = "airflow-events"
    ingest_event_log: bool = True
    ingest_interval_s: float = 1.0
    ingest_grace_s: float = 10.0
    record_access: bool = True
    ui: bool = True
    verifier_keys: tuple[str, ...] = ()


def load_settings(
    get: Callable[[str, str, str], str] | None = None,
    env: Mapping[str, str] | None = None,
    home: str | None = None,
) -> AirflowAuditSettings:
    """Read Airflow's configuration (``get(section, key, fallback)``) and the environment."""
    if get is None or home is None:
        from airflow_audit._compat import airflow_conf_get, airflow_home

        get = get or airflow_conf_get
        home = home or airflow_home()
    env = os.environ if env is None else env

    def option(key: str) -> str:
        return get(SECTION, key, OPTIONS[key].default).strip()

    overrides: dict[str, Any] = {}
    ledger = option("ledger_url") or env.get(ENV_PREFIX + "LEDGER")
    overrides["ledger_url"] = ledger or "sqlite:///" + str(
        Path(home) / "workflow_audit" / "ledger.db"
    )
    overrides["chain"] = option("chain") or env.get(ENV_PREFIX + "CHAIN") or DEFAULT_CHAIN
    if key := option("signing_key"):
        overrides["signing_key"] = key
    for name in ("privacy_policy", "privacy_store", "privacy_keys"):
        if value := option(name):
            overrides[name] = value
    if interval := option("anchor_interval"):
        overrides["anchor_interval_s"] = _positive("anchor_interval", interval)
    if witnesses := option("witnesses"):
        overrides["witnesses"] = split_witnesses(witnesses)
    audit = AuditConfig.from_env(env, **overrides)
    if extra := option("redact_keys"):
        patterns = tuple(p.strip() for p in extra.split(",") if p.strip())
        audit = audit.evolve(redact_keys=audit.redact_keys + patterns)
    return AirflowAuditSettings(
        enabled=parse_boolean("enabled", option("enabled")),
        audit=audit,
        hook_timeout_s=_positive("hook_timeout", option("hook_timeout")),
        events=EventFilter(option("events")),
        record_not_run=parse_boolean("record_not_run", option("record_not_run")),
        record_conf=parse_boolean("record_conf", option("record_conf")),
        events_chain=option("events_chain") or OPTIONS["events_chain"].default,
        ingest_event_log=parse_boolean("ingest_event_log", option("ingest_event_log")),
        ingest_interval_s=_positive("ingest_interval", option("ingest_interval")),
        ingest_grace_s=_positive("ingest_grace", option("ingest_grace")),
        record_access=parse_boolean("record_access", option("record_access")),
        ui=parse_boolean("ui", option("ui")),
        verifier_keys=tuple(k.strip() for k in option("verifier_key").split(",") if k.strip()),
    )


def parse_boolean(key: str, text: str) -> bool:
    """The boolean option ``key`` written as ``text`` (Airflow's spellings, any case).

    >>> parse_boolean("enabled", " Off ")
    False
    """
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(
        f"[{SECTION}] {key} must be True or False (or 1/0, yes/no, on/off, t/f, y/n), not {text!r}"
    )


def split_witnesses(text: str) -> tuple[str, ...]:
    """The ``URL VKEY`` entries of a witnesses option: separated by ';' or newlines, as in
    ``WORKFLOW_AUDIT_WITNESSES`` (the core config checks each: a malformed one is a
    :class:`ConfigError` naming it).

    >>> split_witnesses("http://a:1 a+01+K ; http://b:2 b+02+L;")
    ('http://a:1 a+01+K', 'http://b:2 b+02+L')
    """
    return tuple(w.strip() for w in text.replace("\n", ";").split(";") if w.strip())


def _positive(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise ConfigError(f"[{SECTION}] {key} must be a number of seconds, not {text!r}") from exc
    # threading's waits overflow past TIMEOUT_MAX; a hook budget of hours is a mistake anyway
    if not 0 < value <= 3600:
        raise ConfigError(f"[{SECTION}] {key} must be between 0 and 3600 seconds, not {text!r}")
    return value


def provider_config() -> dict[str, Any]:
    """The ``config`` entry of the provider info (``airflow config list`` shows it)."""
    options = {}
    for key, opt in OPTIONS.items():
        entry: dict[str, Any] = {
            "description": opt.description,
            "version_added": "0.1.0",
            "type": opt.type,
            "example": opt.example,
            "default": opt.default,
        }
        if opt.sensitive:
            entry["sensitive"] = True
        options[key] = entry
    return {
        SECTION: {
            "description": "workflow-audit: tamper-evident audit trail of every task, DAG run "
            "and asset event (see the workflow-audit README).",
            "options": options,
        }
    }


def default_ledger_url() -> str:
    """The ledger the Airflow plugin writes by default, found without importing Airflow:
    ``$AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL``, else ``$AIRFLOW_HOME/workflow_audit/ledger.db``
    (``~/airflow`` when unset). Entry point ``workflow_audit.ledgers``: the core CLI opens it
    when no other ledger is configured, so ``workflow-audit verify`` on an Airflow host finds
    Airflow's trail."""
    url = os.environ.get("AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL")
    if url:
        return url
    home = Path(os.environ.get("AIRFLOW_HOME") or "~/airflow").expanduser()
    return "sqlite:///" + str(home / "workflow_audit" / "ledger.db")
