"""A witness anyone can run: c2sp.org/tlog-witness ``add-checkpoint`` answered with
c2sp.org/tlog-cosignature ``cosignature/v1`` cosignatures, its state durable per log origin.

A witness remembers, for each log origin it is configured for, the latest checkpoint it
cosigned, and cosigns a new one only when the log proves it consistent with that one (RFC
6962 §2.1.2). A log that rewrites or truncates its history, or shows two views, then cannot
get the rewritten checkpoint cosigned: a verifier requiring the witness's cosignature
(``verify --witness KEY``) catches the rewrite even when the log's own key was used for it.

- :class:`WitnessState` (:mod:`.state`): the SQLite state file, updated atomically
- :class:`TrustedLogs` (:mod:`.logs`): which log keys sign which origins
- :class:`Witness` (:mod:`.add`): one request's decision, without HTTP
- :func:`start_witness` (:mod:`.server`): the HTTP server in a thread; the CLI's
  ``workflow-audit witness serve`` runs it as a process
"""

from __future__ import annotations

from audit_core._cosign import (
    Cosignature,
    Cosigner,
    WitnessKey,
    cosigned_message,
    parse_cosignature,
    verify_cosignature,
)
from audit_core._witness_wire import (
    MAX_REQUEST_BYTES,
    SIZE_CONTENT_TYPE,
    encode_add_checkpoint,
    parse_size_body,
)
from audit_core.witness.add import Reply, Witness
from audit_core.witness.logs import LogRule, TrustedLogs, read_logs_file
from audit_core.witness.server import RunningWitness, start_witness, status_text
from audit_core.witness.state import LatestCheckpoint, Refusal, WitnessState

__all__ = [
    "MAX_REQUEST_BYTES",
    "SIZE_CONTENT_TYPE",
    "Cosignature",
    "Cosigner",
    "LatestCheckpoint",
    "LogRule",
    "Refusal",
    "Reply",
    "RunningWitness",
    "TrustedLogs",
    "Witness",
    "WitnessKey",
    "WitnessState",
    "cosigned_message",
    "encode_add_checkpoint",
    "parse_cosignature",
    "parse_size_body",
    "read_logs_file",
    "start_witness",
    "status_text",
    "verify_cosignature",
]
