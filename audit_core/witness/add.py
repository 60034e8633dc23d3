"""The witness's decision on one ``add-checkpoint`` request, without HTTP: bytes in, status
and body out (c2sp.org/tlog-witness, "add-checkpoint").

The checks, in the spec's order:

- a malformed body (old size line, proof lines, empty line, signed note): 400
- the checkpoint's origin matches no configured log: 404
- no signature verifies under a key trusted for that origin (unknown keys are ignored): 403
- old size larger than the checkpoint's size: 400
- old size is not the size of the latest cosigned checkpoint (0 if none): 409, body
  ``<latest size>\\n``, ``Content-Type: text/x.tlog.size``
- old size equal to the checkpoint's size but another root: 409 (a fork)
- the RFC 6962 §2.1.2 consistency proof from the latest cosigned root does not verify: 422
- else the checkpoint is stored (committed to disk) and the answer is one c2sp.org/
  tlog-cosignature ``cosignature/v1`` line over the checkpoint's whole note text (extension
  lines included, as the spec requires), timestamped now.

A refusal that shows the log misbehaving (a 422 bad proof, a 409 fork at the cosigned size)
is kept (:meth:`WitnessState.refuse`, once per checkpoint, only the trusted keys' signature
lines): the spec says such a request "might be proof of log misbehavior". A stale old size
(409) or a bad signature (403) is not kept: anyone can replay a log's checkpoint that way.
Sizes above 2^63-1 are refused (400): the state stores SQLite (signed 64-bit) integers.

Cosignature timestamps of an origin never go back (:meth:`WitnessState.check_and_update`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from audit_core._cosign import Cosigner
from audit_core._merkle import EMPTY_ROOT, verify_consistency
from audit_core._note import Verifier, note_parts, open_note
from audit_core._witness_wire import SIZE_CONTENT_TYPE, AddCheckpoint, parse_add_checkpoint
from audit_core.checkpoint import Checkpoint
from audit_core.errors import CheckpointError, ProofError, SignatureError, WitnessError
from audit_core.witness.logs import TrustedLogs
from audit_core.witness.state import LatestCheckpoint, WitnessState

__all__ = ["MAX_SIZE", "TEXT_CONTENT_TYPE", "Reply", "Witness"]

logger = logging.getLogger("workflow_audit.witness")
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
#: The largest tree size kept: the state's sizes are SQLite INTEGERs (signed 64-bit).
MAX_SIZE = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer, and what a log line says of it (never a key)."""

    status: int
    body: bytes
    content_type: str = TEXT_CONTENT_TYPE
    origin: str | None = None
    old_size: int | None = None
    size: int | None = None
    reason: str = ""

    def describe(self) -> str:
        """One log line: status, origin, sizes, why."""
        return (
            f"add-checkpoint {self.status} origin={self.origin!r} old={self.old_size} "
            f"size={self.size}" + (f": {self.reason}" if self.reason else "")
        )


class _Refused(Exception):  # noqa: N818 - an answer, raised out of the state's transaction
    def __init__(self, status: int, reason: str, latest: int, *, evidence: bool = False) -> None:
        super().__init__(reason)
        self.status, self.reason, self.latest = status, reason, latest
        #: does the refusal show the log misbehaving (kept), or only a stale client (not)?
        self.evidence = evidence


@dataclass(frozen=True)
class Witness:
    """A witness: the logs it trusts, its key, its state and its clock (POSIX seconds)."""

    logs: TrustedLogs
    cosigner: Cosigner
    state: WitnessState
    clock: Callable[[], float] = field(default=time.time)

    def add_checkpoint(self, body: bytes) -> Reply:
        """The answer to an ``add-checkpoint`` request with this ``body``."""
        try:
            request = parse_add_checkpoint(body)
            text, _ = note_parts(request.note)
            checkpoint = Checkpoint.parse(text)
        except (WitnessError, SignatureError, CheckpointError) as exc:
            return Reply(400, _line(f"malformed request: {exc}"), reason=str(exc))
        said = partial(_reply, request.old_size, checkpoint)
        if max(request.old_size, checkpoint.size) > MAX_SIZE:
            # the state stores sizes as SQLite INTEGER, a signed 64-bit number
            return said(400, "sizes beyond 2^63-1 are not supported")
        trusted = self.logs.verifiers(checkpoint.origin)
        if not trusted:
            return said(404, "unknown log origin")
        try:
            signed_by = open_note(request.note, trusted, require_all=False).verified
        except SignatureError as exc:
            return said(403, f"no valid signature by a key trusted for this origin: {exc}")
        old = request.old_size
        if old > checkpoint.size:
            reason = f"old size {old} is larger than the checkpoint's size {checkpoint.size}"
            return said(400, reason)

        def check(latest: LatestCheckpoint | None) -> None:
            _check(latest, request, checkpoint)

        kept = _trusted_only(request.note, signed_by)  # what is stored: the log's lines only
        try:
            timestamp = self.state.check_and_update(
                checkpoint.origin,
                check,
                checkpoint.size,
                checkpoint.root,
                kept,
                now=int(self.clock()),
            )
        except _Refused as refused:
            if refused.evidence:
                self._keep(checkpoint, refused, old, kept)
            if refused.status != 409:
                return said(refused.status, refused.reason)
            size_body = f"{refused.latest}\n".encode()
            return said(409, refused.reason, size_body, SIZE_CONTENT_TYPE)
        except WitnessError as exc:  # the state file failed: nothing was cosigned
            return said(exc.status or 503, str(exc))
        line = self.cosigner.cosign(text, timestamp)
        return said(200, "", (line + "\n").encode())

    def latest_checkpoint(self, origin: str) -> Reply:
        """The latest checkpoint cosigned for ``origin`` as a signed note: its body, the
        log's signature lines as received, then this witness's cosignature line made at its
        stored time (Ed25519 is deterministic: the line it answered then); 404 when none.

        Not part of c2sp.org/tlog-witness (its monitor retrieval is "TBD"): a verifier asks
        here what the witness holds, so that a writer who deletes the newest cosignatures
        from the ledger cannot hide a rewrite after them. It needs no trust in the channel:
        the answer is signed by the witness key the verifier holds."""
        if not self.logs.verifiers(origin):
            return Reply(404, b"unknown log origin\n")
        try:
            latest = self.state.latest(origin)
        except WitnessError as exc:
            return Reply(exc.status or 503, _line(str(exc)))
        if latest is None:
            return Reply(404, b"nothing cosigned for this origin\n")
        text, lines = note_parts(latest.note)
        note = text + "\n" + "".join(f"{line}\n" for line in lines)
        line = self.cosigner.cosign(text, latest.cosigned)
        return Reply(200, (note + line + "\n").encode())

    def _keep(self, checkpoint: Checkpoint, refused: _Refused, old: int, note: str) -> None:
        try:
            self.state.refuse(
                checkpoint.origin,
                refused.status,
                old,
                checkpoint.size,
                checkpoint.root,
                note,
                refused.reason,
            )
        except WitnessError as exc:  # evidence lost is said, the answer stays the same
            logger.warning("workflow-audit witness: a refusal was not kept: %s", exc)


def _trusted_only(note: str, signed_by: Sequence[Verifier]) -> str:
    """``note`` with only the signature lines of the trusted keys that verified: lines by
    unknown keys are anyone's bytes, not the log's (they would make each replay unique)."""
    text, lines = note_parts(note)
    kept = []
    for line in lines:
        name = line.removeprefix("\u2014 ").partition(" ")[0]
        try:
            key_id = base64.b64decode(line.rpartition(" ")[2], validate=True)[:4]
        except (binascii.Error, ValueError):
            continue
        if any((v.name, v.key_id) == (name, key_id) for v in signed_by):
            kept.append(line)
    return text + "\n" + "".join(f"{line}\n" for line in kept)


def _check(latest: LatestCheckpoint | None, request: AddCheckpoint, new: Checkpoint) -> None:
    """Raise :class:`_Refused` unless ``new`` may follow ``latest`` (inside the transaction)."""
    stored = 0 if latest is None else latest.size
    if request.old_size != stored:
        raise _Refused(
            409, f"old size {request.old_size} is not the latest cosigned size {stored}", stored
        )
    if latest is not None and new.size == latest.size and new.root != latest.root:
        raise _Refused(
            409, f"another root at the cosigned size {stored}: a fork", stored, evidence=True
        )
    old_root = EMPTY_ROOT if latest is None else latest.root
    try:
        verify_consistency(stored, new.size, request.proof, old_root, new.root)
    except ProofError as exc:
        raise _Refused(
            422, f"consistency proof does not verify: {exc}", stored, evidence=True
        ) from exc


def _reply(
    old_size: int,
    checkpoint: Checkpoint,
    status: int,
    reason: str,
    body: bytes | None = None,
    content_type: str = TEXT_CONTENT_TYPE,
) -> Reply:
    return Reply(
        status,
        _line(reason) if body is None else body,
        content_type,
        checkpoint.origin,
        old_size,
        checkpoint.size,
        reason,
    )


def _line(message: str) -> bytes:
    return (message.replace("\n", " ") + "\n").encode()
