"""Everything workflow-audit raises derives from :class:`AuditError`.

The core raises precise subclasses; the orchestrator adapters catch ``Exception`` exactly once
per hook, log it and count it (fail-open), so these never reach a user's task through a hook.

>>> from audit_core.errors import AuditError, InvalidRecordError
>>> issubclass(InvalidRecordError, AuditError)
True
"""

from __future__ import annotations

__all__ = [
    "AuditError",
    "BrokenLinkError",
    "CheckpointError",
    "ConfigError",
    "CursorMoved",
    "EvidenceError",
    "FormatError",
    "HashMismatchError",
    "HeadMismatchError",
    "InvalidRecordError",
    "LedgerError",
    "NonCanonicalError",
    "PolicyError",
    "PrivacyError",
    "ProofError",
    "QuorumError",
    "RetentionError",
    "SegmentError",
    "SequenceError",
    "SignatureError",
    "SourceError",
    "SubjectNotFound",
    "VerificationError",
    "WitnessError",
]


class AuditError(Exception):
    """Base class of every error workflow-audit raises."""


class ConfigError(AuditError):
    """A configuration value (argument or ``WORKFLOW_AUDIT_*`` variable) is invalid."""


class InvalidRecordError(AuditError):
    """A record cannot be built from what was given (bad event type, or, with ``strict=True``,
    a payload that would need a lossy conversion)."""


class LedgerError(AuditError):
    """The ledger cannot be opened, read or written."""


class CursorMoved(LedgerError):  # noqa: N818 - the name the shared design fixed: an event, not a fault
    """A cursor was not where a writer expected it (another writer advanced it first), so
    :meth:`~audit_core.ledgers.Ledger.append_advancing` appended nothing.

    ``cursor`` and ``chain`` name it; ``expected`` is what the writer compared against,
    ``found`` what the ledger held (-1: no cursor)."""

    def __init__(self, message: str, *, cursor: str, chain: str, expected: int, found: int) -> None:
        super().__init__(message)
        self.cursor = cursor
        self.chain = chain
        self.expected = expected
        self.found = found


class SourceError(AuditError):
    """A source of events (:mod:`audit_core.sources`) cannot be read: unreachable, or it
    answered something that is not a row."""


class PrivacyError(AuditError):
    """The privacy store, its keys or a commitment: a store that cannot be opened or written,
    a key that is gone, an opening that does not match its commitment. Never names a key or a
    committed value."""


class PolicyError(PrivacyError):
    """A privacy policy file that cannot be read or is not well formed (named by file and
    rule)."""


class SubjectNotFound(PrivacyError):  # noqa: N818 - a lookup's answer, named as the CLI says it
    """No data subject of that identifier in the privacy store (never existed, or erased)."""


class EvidenceError(AuditError):
    """The evidence report cannot be rendered: WeasyPrint (the ``evidence`` extra) or the system
    libraries it loads are missing, or the report given is not the shape it renders."""


class VerificationError(AuditError):
    """The trail is not what it claims to be.

    ``chain`` and ``seq`` name the first record that fails; ``expected`` and ``found`` say what
    the verifier computed and what the ledger holds.
    """

    #: short machine-readable reason, stable across releases (used by ``verify --json``)
    reason = "invalid"

    def __init__(
        self,
        message: str,
        *,
        chain: str,
        seq: int | None,
        expected: str | None = None,
        found: str | None = None,
    ) -> None:
        super().__init__(message)
        self.chain = chain
        self.seq = seq
        self.expected = expected
        self.found = found


class SequenceError(VerificationError):
    """A sequence number is missing, duplicated or out of order."""

    reason = "sequence"


class HashMismatchError(VerificationError):
    """A record's stored hash is not the hash of its stored bytes."""

    reason = "hash"


class BrokenLinkError(VerificationError):
    """A record's ``prev`` is not the hash of the record before it."""

    reason = "link"


class NonCanonicalError(VerificationError):
    """A record's stored bytes are not their own RFC 8785 canonical form."""

    reason = "canonical"


class FormatError(VerificationError):
    """A record does not follow the record format (fields, types, version, chain id)."""

    reason = "format"


class HeadMismatchError(VerificationError):
    """The chain's size or head hash differs from what the caller expected (truncation)."""

    reason = "head"


class ProofError(AuditError):
    """A Merkle inclusion or consistency proof does not verify (RFC 9162 §2.1.3.2, §2.1.4.2)."""


class SignatureError(AuditError):
    """A key is malformed, or a signed note has no valid signature from a trusted key."""


class CheckpointError(VerificationError):
    """The records do not match a signed checkpoint: the tail was cut, or the chain was
    rewritten or forked after the checkpoint was signed."""

    reason = "checkpoint"


class SegmentError(VerificationError):
    """An object in the bucket is not what the sink wrote: replaced by a new version,
    hidden by a delete marker, bytes after its gzip member, a wrong checksum or record count."""

    reason = "segment"


class RetentionError(VerificationError):
    """An object's Object Lock does not meet the retention policy (no lock, GOVERNANCE where
    COMPLIANCE is required, or a retain-until date too soon)."""

    reason = "retention"


class WitnessError(AuditError):
    """A witness exchange failed: a malformed add-checkpoint request or answer, a witness
    that refused (``status``: 400, 403, 404, 409, 422) or could not be reached (``status``
    None). c2sp.org/tlog-witness."""

    def __init__(self, message: str, *, status: int | None = None, size: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        #: on a 409 Conflict: the size of the witness's latest cosigned checkpoint
        self.size = size


class QuorumError(VerificationError):
    """A checkpoint the verdict relies on lacks the required witness cosignatures, or the
    records contradict a checkpoint the witnesses cosigned (c2sp.org/tlog-cosignature)."""

    reason = "witness"
