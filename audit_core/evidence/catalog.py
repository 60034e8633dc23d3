"""The controls the evidence pack maps records to, and the record categories it holds in
full: a catalogue, no logic beyond matching an event type.

The mapping is our reading of each control, not legal advice: it says which records a control
asks logs to show, so that an auditor finds the records behind each control without us in the
room. Sources: Regulation (EU) 2024/1689 (the EU AI Act) Art. 12(2)(a)-(c), Art. 19(1) and
Art. 26(6); ISO/IEC 42001:2023 Annex A, A.6.2.8; ISO/IEC 27001:2022 Annex A, A.8.15 (with
ISO/IEC 27002:2022 §8.15 for its sub-items); AICPA Trust Services Criteria (2017, revised
points of focus 2022) CC7.2 and CC7.3; NIST SP 800-53 Rev. 5 AU-3, AU-8, AU-9(3), AU-10 and
AU-11.

>>> in_full_category("access.denied"), in_full_category("permission.snapshot")
('access', None)
>>> [c.id for c in CONTROLS][:2]
['eu-ai-act-12-2-a', 'eu-ai-act-12-2-b']
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Final

from audit_core._report_access import CONFIG_PREFIXES

__all__ = [
    "CONFIG_CHANGES", "CONTROLS", "FAILURES", "IN_FULL", "NOT_CHANGES", "PERMISSIONS",
    "REJECTED", "SUCCESSFUL", "Control", "in_full_category",
]  # fmt: skip

#: The categories whose every record of the period the pack holds in full (records/<c>.jsonl).
IN_FULL: Final = ("failure", "access", "permission", "erasure")

#: Runs, tries and imports that failed, crashed or ended unrecorded (reconcile's gaps).
FAILURES: Final = (
    "*.failed", "*.crashed", "task.upstream_failed", "task.unrecorded", "flowrun.unrecorded",
    "dag.import_error",
)  # fmt: skip
#: Changes of who may do what: Airflow's permission records and FAB's users and roles.
#: ``permission.snapshot`` is a state, not a change: it is not here.
PERMISSIONS: Final = (
    "permission.changed", "user.created", "user.updated", "user.deleted", "user.roles",
    "role.created", "role.deleted", "role.permissions",
)  # fmt: skip
#: Configuration changes: Airflow's variables, connections and pools, Prefect's resources
#: (:data:`~audit_core._report_access.CONFIG_PREFIXES`), and DAGs paused, edited or deleted.
CONFIG_CHANGES: Final = (
    *(prefix + "*" for prefix in CONFIG_PREFIXES),
    "dag.paused", "dag.unpaused", "dag.deleted", "dag.updated",
)  # fmt: skip
#: Automation firings live under ``automation.`` but nobody changed anything.
NOT_CHANGES: Final = ("automation.triggered", "automation.resolved", "automation.action.*")
REJECTED: Final = ("access.denied", "access.login_failed")
SUCCESSFUL: Final = ("access.login", "access.token_created")


@dataclass(frozen=True, slots=True)
class Control:
    """One control: what it asks the logs to show, and what in the pack evidences it.

    ``patterns``: fnmatch patterns over event types (``()``: evidenced by a fact only);
    ``excludes``: event types the patterns take that are not evidence (automation firings);
    ``fact``: ``None`` or one of "integrity", "retention", "signatures", "timestamps",
    "content"; ``what``: the records, in words, for the note when there are none.
    """

    id: str
    framework: str
    ref: str
    title: str
    requires: str
    patterns: tuple[str, ...]
    fact: str | None
    what: str = ""
    excludes: tuple[str, ...] = ()

    def matches(self, event: str) -> bool:
        """Whether a record of type ``event`` is evidence for this control."""
        return any(fnmatchcase(event, p) for p in self.patterns) and not any(
            fnmatchcase(event, x) for x in self.excludes
        )


_AIA, _ISO42, _ISO27 = "EU AI Act", "ISO/IEC 42001:2023", "ISO/IEC 27001:2022"
_SOC2, _NIST = "SOC 2 (AICPA TSC 2017)", "NIST SP 800-53 Rev. 5"
_MODEL_DATA = ("model.*", "data.*", "dataset.*", "asset.*", "drift.*")

CONTROLS: Final[tuple[Control, ...]] = (
    Control(
        "eu-ai-act-12-2-a", _AIA, "Art. 12(2)(a)",
        "Risk situations and substantial modifications",
        "Logs must let the situations be identified that may make the system present a risk "
        "(Art. 79(1)) or that amount to a substantial modification of it.",
        (*FAILURES, "drift.*", "model.retrained", "model.deployed", *CONFIG_CHANGES,
         *PERMISSIONS),
        None,
        "failures, drift, model retrains or deploys, configuration or permission changes",
        NOT_CHANGES,
    ),
    Control(
        "eu-ai-act-12-2-b", _AIA, "Art. 12(2)(b)", "Post-market monitoring",
        "Logs must support the provider's post-market monitoring (Art. 72): which models and "
        "data the system used and how they changed.",
        _MODEL_DATA, None, "model, data, dataset, asset or drift events",
    ),
    Control(
        "eu-ai-act-12-2-c", _AIA, "Art. 12(2)(c)", "Operation monitoring",
        "Logs must support the deployer's monitoring of the system's operation (Art. 26(5)): "
        "its runs, retries and the human actions taken on it.",
        ("dagrun.*", "flowrun.*", "task.*", "run.*", "access.*", "dag.*", "cli.command",
         "backfill.*"),
        None, "runs, tasks, access or other human actions",
    ),
    Control(
        "eu-ai-act-19", _AIA, "Art. 19(1), Art. 26(6)", "Retention of logs",
        "Providers and deployers must keep the automatically generated logs for a period "
        "suited to the system's purpose, of at least six months.",
        (), "retention",
    ),
    Control(
        "iso-42001-a-6-2-8", _ISO42, "Annex A, A.6.2.8", "AI system recording of event logs",
        "The organization must decide at which life-cycle phases the AI system records event "
        "logs, at least while it is in use, and keep those logs.",
        ("model.*", "task.*", "dagrun.*", "flowrun.*"), "integrity",
        "model events or pipeline runs",
    ),
    Control(
        "iso-27001-a-8-15", _ISO27, "Annex A, A.8.15", "Logging",
        "Logs of activities, exceptions, faults and other relevant events must be produced, "
        "kept, protected and analysed, naming user ids, successful and rejected access, "
        "configuration changes and use of privileges (ISO/IEC 27002:2022 §8.15).",
        ("access.*", *PERMISSIONS, *CONFIG_CHANGES), None,
        "access, permission or configuration changes", NOT_CHANGES,
    ),
    Control(
        "soc2-cc7-2", _SOC2, "CC7.2", "Monitoring of system components for anomalies",
        "The entity must monitor its system components for anomalies that indicate malicious "
        "acts, disasters or errors, and analyse them as possible security events.",
        (*FAILURES, *REJECTED, "source.gap", "drift.*"), None,
        "failures, rejected access, source gaps or drift",
    ),
    Control(
        "soc2-cc7-3", _SOC2, "CC7.3", "Evaluation of security events",
        "The entity must evaluate security events to decide whether they are incidents, and "
        "act on those that are.",
        (*REJECTED, *PERMISSIONS, "audit.*"), None,
        "rejected access, permission changes or reviews of the log (audit.*)",
    ),
    Control(
        "nist-au-3", _NIST, "AU-3", "Content of audit records",
        "Audit records must show what happened, when, where, its source and outcome, and the "
        "identity of the individuals or subjects involved.",
        ("*",), "content", "records",
    ),
    Control(
        "nist-au-8", _NIST, "AU-8", "Time stamps",
        "Audit records must carry time stamps from the system clock, in UTC or with a fixed "
        "offset from UTC, at a stated granularity.",
        ("*",), "timestamps", "records",
    ),
    Control(
        "nist-au-9-3", _NIST, "AU-9(3)", "Cryptographic protection of audit information",
        "Cryptographic mechanisms must protect the integrity of audit information.",
        (), "integrity",
    ),
    Control(
        "nist-au-10", _NIST, "AU-10", "Non-repudiation",
        "The system must give irrefutable evidence that an individual or process performed "
        "the actions it recorded.",
        (), "signatures",
    ),
    Control(
        "nist-au-11", _NIST, "AU-11", "Audit record retention",
        "Audit records must be kept for a defined period, to support after-the-fact "
        "investigation of incidents and meet retention requirements.",
        (), "retention",
    ),
)  # fmt: skip


@lru_cache(maxsize=4096)
def in_full_category(event: str) -> str | None:
    """The :data:`IN_FULL` category of an event type, or None (held only by the sample)."""
    if event.startswith("access."):
        return "access"
    if event in PERMISSIONS:
        return "permission"
    if event == "privacy.erased":
        return "erasure"
    if any(fnmatchcase(event, p) for p in FAILURES):
        return "failure"
    return None


#: Subject keys a record's summary names, each the first of its group found: identifiers of
#: the run (Airflow's, then Prefect's), never a data value.
