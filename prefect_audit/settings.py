"""Settings in Prefect's style: ``PREFECT_INTEGRATIONS_WORKFLOW_AUDIT_*`` variables, or the
``[integrations.workflow_audit]`` table of ``prefect.toml``, mapped onto the core config.

>>> from prefect_audit.settings import WorkflowAuditSettings
>>> WorkflowAuditSettings(chain="ml").audit_config(env={}).chain
'ml'

Precedence, highest first: arguments to :class:`WorkflowAuditSettings`, then
``PREFECT_INTEGRATIONS_WORKFLOW_AUDIT_<FIELD>``, then ``prefect.toml`` / ``pyproject.toml``
(``[tool.prefect.integrations.workflow_audit]``), then the core's ``WORKFLOW_AUDIT_*``
variables, then defaults (the core's ledger, chain ``prefect``). Empty values fall through, so
one ``WORKFLOW_AUDIT_LEDGER`` serves Prefect, Airflow and the CLI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from prefect.settings.base import PrefectBaseSettings, build_settings_config
from pydantic import Field

from audit_core import AuditConfig
from audit_core.config import ENV_PREFIX
from audit_core.hooks import EventFilter

__all__ = ["DEFAULT_CHAIN", "WorkflowAuditSettings"]

DEFAULT_CHAIN = "prefect"


class WorkflowAuditSettings(PrefectBaseSettings):
    """Settings of the workflow-audit Prefect integration."""

    model_config = build_settings_config(("integrations", "workflow_audit"))

    enabled: bool = Field(
        default=True,
        description="Record flow and task runs on the audit chain. False: the hooks and "
        "prefect_audit.record() write nothing.",
    )
    ledger_url: str = Field(
        default="",
        description="Ledger URL. Empty: $WORKFLOW_AUDIT_LEDGER, else the core default "
        "(sqlite:///$XDG_DATA_HOME/workflow-audit/ledger.db).",
    )
    chain: str = Field(
        default="",
        description="Chain id of Prefect's records. Empty: $WORKFLOW_AUDIT_CHAIN, else 'prefect'.",
    )
    signing_key: str = Field(
        default="",
        description="Checkpoint signing key (a PRIVATE+KEY+... string or a file). Empty: "
        "$WORKFLOW_AUDIT_SIGNING_KEY, else a local key beside the ledger.",
    )
    privacy_policy: str = Field(
        default="",
        description="Privacy policy: a .toml or .yaml file, or 'default' (the built-in "
        "rules): personal fields (created_by, parameters, model inputs, ...) are recorded as "
        "keyed commitments, their values in an erasable store (docs/PRIVACY.md). Empty: "
        "$WORKFLOW_AUDIT_PRIVACY_POLICY, else none.",
    )
    privacy_store: str = Field(
        default="",
        description="The erasable privacy store's URL. Empty: $WORKFLOW_AUDIT_PRIVACY_STORE, "
        "else beside a SQLite ledger, or a PostgreSQL ledger's database.",
    )
    privacy_keys: str = Field(
        default="",
        description="The per-subject key store (a file, or a workflow_audit.keystores URL). "
        "Empty: $WORKFLOW_AUDIT_PRIVACY_KEYS, else beside a SQLite ledger.",
    )
    redact_keys: str = Field(
        default="",
        description="Comma-separated regular expressions of payload keys to redact, added to "
        "the built-in list and to $WORKFLOW_AUDIT_REDACT_KEYS.",
    )
    hook_timeout: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="Seconds a hook waits for its records to be durable before returning to "
        "Prefect; the write then finishes in the background (logged and counted).",
    )
    sync_timeout: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds the flow's end-of-run pass (in the background) waits for "
        "Prefect's API to hold every task run's final state, counted from the last progress "
        "Prefect made recording them, before recording what it holds (see prefect_audit.flows).",
    )
    exit_wait: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="Seconds the process waits at exit for its pending end-of-run passes "
        "(the task records of flow runs that returned); a pass cut short is logged and counted "
        "(run_passes_abandoned); 'workflow-audit reconcile prefect' finds the task runs it left "
        "unrecorded.",
    )
    events: str = Field(
        default="*",
        description="Which events to record: comma-separated patterns, '!' excludes "
        "(e.g. 'flowrun.*,task.*,!task.started').",
    )
    follower: bool = Field(
        default=False,
        description="A follower ('workflow-audit follow prefect') records every flow and task "
        "run from Prefect's event stream: the flow process then records only what it alone "
        "knows (failures with their exception, record() calls) and skips its end-of-run scan "
        "of Prefect's API.",
    )
    follow_overlap: float = Field(
        default=300.0,
        ge=0,
        le=7 * 86400,
        description="Seconds of events the follower reads again behind its cursor when it "
        "(re)starts: events reach Prefect late (clients send them in batches) and are "
        "deduplicated by their key, so a wider overlap costs reads, never duplicates.",
    )
    anchor_interval: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="Seconds between two anchoring rounds of the follower ('workflow-audit "
        "follow prefect'): a signed checkpoint of every chain that grew, also on a clean "
        "stop, offered to the witnesses. Unset: $WORKFLOW_AUDIT_ANCHOR_INTERVAL, else 60.",
    )
    witnesses: str = Field(
        default="",
        description="Witnesses asked to cosign each new checkpoint (c2sp.org/tlog-witness): "
        "'URL VKEY' entries separated by ';'. A witness down never blocks recording. Empty: "
        "$WORKFLOW_AUDIT_WITNESSES, else none.",
    )
    record_parameters: bool = Field(
        default=False,
        description="Record flow parameter values (redacted). False: only their SHA-256.",
    )

    def audit_config(self, env: Mapping[str, str] | None = None) -> AuditConfig:
        """The core configuration these settings select."""
        env = os.environ if env is None else env
        overrides: dict[str, Any] = {
            "chain": self.chain or env.get(ENV_PREFIX + "CHAIN") or DEFAULT_CHAIN
        }
        if self.ledger_url:
            overrides["ledger_url"] = self.ledger_url
        if self.signing_key:
            overrides["signing_key"] = self.signing_key
        for name in ("privacy_policy", "privacy_store", "privacy_keys"):
            if value := getattr(self, name):
                overrides[name] = value
        if self.anchor_interval is not None:
            overrides["anchor_interval_s"] = self.anchor_interval
        # 'URL VKEY' entries, separated as in $WORKFLOW_AUDIT_WITNESSES (AuditConfig checks
        # each: a malformed one is a ConfigError naming it)
        witnesses = self.witnesses.replace("\n", ";").split(";")
        if found := tuple(w.strip() for w in witnesses if w.strip()):
            overrides["witnesses"] = found
        config = AuditConfig.from_env(env, **overrides)
        extra = tuple(p.strip() for p in self.redact_keys.split(",") if p.strip())
        return config.evolve(redact_keys=config.redact_keys + extra) if extra else config

    def event_filter(self) -> EventFilter:
        return EventFilter(self.events)
