"""Ask the witnesses themselves what they cosigned, for ``verify --witness "URL VKEY"``.

A ledger's ``cosignatures`` table is written by the log, so a writer who holds the ledger
can delete its newest rows and then cut or rewrite the records after the last size still
stored: verification from the table alone would find nothing wrong. The witness keeps its
own state (c2sp.org/tlog-witness: the latest checkpoint it cosigned of each origin), and
``GET <prefix>/checkpoint?origin=<origin>`` returns it as a signed note with its
cosignature (c2sp.org/tlog-cosignature). :class:`WitnessQuery` asks every configured witness
for each chain verified, checks the cosignature with the witness's key (a line by its key
that does not verify is tampering: :class:`~audit_core.errors.QuorumError`), and gives the
checkpoints to :func:`audit_core.quorum.check_witnessed` beside the stored ones.

A witness that cannot be reached is recorded, never a silent pass nor a verdict: the caller
prints a warning that only the stored cosignatures were checked.

>>> WitnessQuery([], timeout_s=1.0)("default", frozenset({"log.example/default"}))
([], False)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from audit_core._cosign import witnessed
from audit_core._note import note_parts
from audit_core.anchor.client import WitnessEndpoint, latest
from audit_core.checkpoint import Checkpoint
from audit_core.errors import AuditError, QuorumError, SignatureError, WitnessError
from audit_core.quorum import CosignedCheckpoint

__all__ = ["WitnessAsked", "WitnessQuery"]


@dataclass(slots=True)
class WitnessAsked:
    """What one witness answered during a verification: chains it knew, chains it had not
    seen (404), and the error when it could not be reached."""

    endpoint: WitnessEndpoint
    known: list[str] = field(default_factory=list)
    unseen: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.error is None and bool(self.known or self.unseen)

    def to_json(self) -> dict[str, object]:
        return {
            "witness": str(self.endpoint.key),
            "url": self.endpoint.url,
            "answered": self.answered,
            "known": list(self.known),
            "unseen": list(self.unseen),
            "error": self.error,
        }


class WitnessQuery:
    """``query(chain, origins)`` → ``(cosigned checkpoints the witnesses hold, unseen)``:
    the shape :data:`audit_core.verify.OnlineCosigned` takes. ``unseen`` is True when every
    witness asked answered 404 for every origin (none has seen the chain). A witness that
    fails once is not asked again during this verification (one deadline lost, not one per
    chain); :attr:`asked` says what each did."""

    def __init__(self, endpoints: Sequence[WitnessEndpoint], *, timeout_s: float) -> None:
        self.asked = [WitnessAsked(e) for e in endpoints]
        self.timeout_s = timeout_s

    def __call__(
        self, chain: str, origins: frozenset[str]
    ) -> tuple[list[CosignedCheckpoint], bool]:
        groups: list[CosignedCheckpoint] = []
        answers = 0
        for asked in self.asked:
            if asked.error is not None:
                continue
            try:
                found = [g for o in sorted(origins) if (g := self._one(asked, chain, o))]
            except WitnessError as exc:
                asked.error = str(exc)
                continue
            answers += 1
            (asked.known if found else asked.unseen).append(chain)
            groups += found
        return groups, answers > 0 and not groups and answers == len(self.asked)

    def _one(self, asked: WitnessAsked, chain: str, origin: str) -> CosignedCheckpoint | None:
        endpoint = asked.endpoint
        note = latest(endpoint, origin, self.timeout_s)
        if note is None:
            return None
        what = f"{endpoint.describe()}: its latest checkpoint of {origin!r}"
        try:
            body, _ = note_parts(note)
            checkpoint = Checkpoint.parse(body)
        except AuditError as exc:
            raise WitnessError(f"{what} is not a checkpoint note: {exc}") from exc
        if checkpoint.origin != origin:
            raise WitnessError(f"{what} is of origin {checkpoint.origin!r}")
        try:
            valid = witnessed(note, [endpoint.key])
        except SignatureError as exc:
            raise QuorumError(
                f"chain {chain!r}: {what} carries a cosignature by its key that does not "
                f"verify: {exc}",
                chain=chain,
                seq=None,
                expected="a valid cosignature",
                found=checkpoint.describe(),
            ) from exc
        if not valid:
            raise WitnessError(f"{what} carries no cosignature by its key")
        return CosignedCheckpoint(chain, checkpoint, body, tuple(c.line for _, c in valid))
