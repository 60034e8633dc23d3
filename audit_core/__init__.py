"""workflow-audit core: tamper-evident audit records for workflow orchestrators.

>>> from audit_core import AuditConfig, AuditTrail, verify_ledger
>>> with AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:")) as trail:
...     _ = trail.record("data.uploaded", {"uri": "s3://bucket/train.csv", "rows": 1000})
...     [head.size for head in verify_ledger(trail.ledger)]
[1]

The record format is documented in docs/FORMAT.md and implemented in ``_record.py``.
"""

from importlib.metadata import PackageNotFoundError, version

from audit_core._chain import ChainHead
from audit_core._jcs import canonical_bytes
from audit_core._metrics import COUNTERS
from audit_core._normalize import (
    REDACTED,
    Normalized,
    Processor,
    normalize,
    parse_timestamp,
    redact,
)
from audit_core._note import Signer, Verifier
from audit_core._record import (
    FORMAT_VERSION,
    PreparedRecord,
    Record,
    StoredRecord,
    genesis,
    leaf_hash,
)
from audit_core._trace import trace_context
from audit_core.config import AuditConfig
from audit_core.errors import AuditError, InvalidRecordError, LedgerError, VerificationError
from audit_core.ledgers import Ledger, LedgerReader, open_ledger
from audit_core.trail import AuditTrail, Event
from audit_core.verify import verify_chain, verify_ledger

try:
    __version__ = version("workflow-audit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "COUNTERS",
    "FORMAT_VERSION",
    "REDACTED",
    "AuditConfig",
    "AuditError",
    "AuditTrail",
    "ChainHead",
    "Event",
    "InvalidRecordError",
    "Ledger",
    "LedgerError",
    "LedgerReader",
    "Normalized",
    "PreparedRecord",
    "Processor",
    "Record",
    "Signer",
    "StoredRecord",
    "VerificationError",
    "Verifier",
    "__version__",
    "canonical_bytes",
    "genesis",
    "leaf_hash",
    "normalize",
    "open_ledger",
    "parse_timestamp",
    "redact",
    "trace_context",
    "verify_chain",
    "verify_ledger",
]
