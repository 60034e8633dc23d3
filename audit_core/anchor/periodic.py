"""Checkpoints without cron: a background round every ``interval_s`` that signs every chain
that grew and asks the configured witnesses to cosign the latest checkpoint of each.

>>> from audit_core import AuditConfig
>>> start_anchor(AuditConfig(ledger_url="sqlite:///:memory:", checkpoint_every=0), name="t")
... # checkpoints off: no anchor

A long-running component (the Airflow event-log ingestion, the Prefect follower,
``ship --follow``) starts one with :func:`start_anchor` and calls :meth:`Anchor.stop` when it
shuts down cleanly (a final round: the last records are covered by a checkpoint).

Several anchors may run on one ledger at once: each signs *what the ledger holds*
(:func:`audit_core.checkpoint.write_checkpoint` proves consistency with the latest stored
checkpoint before it signs, RFC 9162 §2.1.4), so a race yields two consistent checkpoints,
never a fork (c2sp.org/tlog-checkpoint, "Signatures"); Ed25519 is deterministic, so two
anchors signing the same size store identical notes.

Witnesses (c2sp.org/tlog-witness) are asked with the consistency proof from the size each
one last cosigned *according to the ledger* (so any process of the log can continue where
another left off); their cosignatures (c2sp.org/tlog-cosignature) are verified, then stored
in the ledger beside the chain. A witness down never blocks writers: the anchor runs in its
own thread with its own ledger connection, every exchange is bounded by ``timeout_s``, and a
failing witness is retried in later rounds with a backoff (doubling, at most ten intervals),
counted (``witness_failures``) and logged once per failure streak.

Fork safety: a thread does not survive ``fork()``. A forked child has no anchor running; its
:meth:`Anchor.stop` does nothing (the parent's anchor keeps running in the parent).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from audit_core._cosign import parse_cosignature
from audit_core._merkle import consistency_proof
from audit_core._metrics import COUNTERS
from audit_core._normalize import format_timestamp
from audit_core._note import note_parts
from audit_core._record import StoredCheckpoint, StoredCosignature
from audit_core.anchor.client import (
    Conflict,
    WitnessClient,
    WitnessEndpoint,
    ask,
    parse_witnesses,
)
from audit_core.checkpoint import CheckpointSigner
from audit_core.config import AuditConfig
from audit_core.errors import AuditError, CheckpointError, ConfigError, SignatureError
from audit_core.ledgers import Ledger, open_ledger

__all__ = ["MAX_BACKOFF_ROUNDS", "Anchor", "AnchorReport", "cosigned_sizes", "start_anchor"]

logger = logging.getLogger("workflow_audit")
#: A failing witness is asked again after 1, 2, 4, 8, then every 10 rounds.
MAX_BACKOFF_ROUNDS = 10


@dataclass(frozen=True, slots=True)
class AnchorReport:
    """What one round did: chains signed, cosignatures stored, and what went wrong."""

    signed: tuple[str, ...] = ()
    cosignatures: int = 0
    failures: int = 0  # checkpoints not signed + witness exchanges that failed
    conflicts: int = 0


def cosigned_sizes(
    cosignatures: Sequence[StoredCosignature], name: str, key_id: bytes
) -> list[StoredCosignature]:
    """The stored cosignatures made by the witness key ``name``/``key_id`` (smallest size
    first, as the ledger returns them); malformed lines are skipped."""
    found = []
    for c in cosignatures:
        try:
            cosig = parse_cosignature(c.line)
        except SignatureError:
            continue
        if (cosig.name, cosig.key_id) == (name, key_id):
            found.append(c)
    return found


@dataclass(slots=True)
class _Streak:
    """A witness's failures in a row and the rounds still to skip."""

    failures: int = 0
    skip: int = 0


class Anchor:
    """Signs every chain of ``ledger`` that grew and asks ``witnesses`` to cosign, once per
    :meth:`tick`; :meth:`start` ticks every ``interval_s`` in a daemon thread."""

    def __init__(
        self,
        ledger: Ledger,
        signing: CheckpointSigner,
        *,
        interval_s: float = 60.0,
        witnesses: Sequence[WitnessEndpoint] = (),
        timeout_s: float = 5.0,
        name: str = "workflow-audit-anchor",
    ) -> None:
        if not (0 < interval_s < math.inf and 0 < timeout_s < math.inf):
            raise ConfigError(
                f"anchor interval ({interval_s}) and witness timeout ({timeout_s}) must be > 0"
            )
        self.ledger = ledger
        self.signing = signing
        self.interval_s = interval_s
        self.witnesses = tuple(witnesses)
        self.timeout_s = timeout_s
        self.name = name
        self._clients = [WitnessClient(w, timeout_s=timeout_s) for w in self.witnesses]
        self._streaks = [_Streak() for _ in self.witnesses]
        self._conflicts: dict[tuple[int, str], int] = {}  # (witness, chain) -> our size then
        # (witness, chain) -> the (size, body) it last cosigned: read from the ledger once, then
        # kept here, so that a round never rereads a chain's growing list of cosignatures (a
        # size another process got cosigned meanwhile costs one 409 and its retry)
        self._cosigned: dict[tuple[int, str], tuple[int, str]] = {}
        self._sign_errors: dict[str, str] = {}  # chain -> the error last logged
        self._wake = threading.Event()
        self._round_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._stopped = False
        self._owns_ledger = False

    def __repr__(self) -> str:
        return f"Anchor({self.name!r}, every {self.interval_s}s, {len(self.witnesses)} witness(es))"

    @classmethod
    def from_config(cls, config: AuditConfig, *, name: str = "workflow-audit-anchor") -> Anchor:
        """An anchor with its own connection to ``config``'s ledger, its signer and its
        witnesses (``config.witnesses``, ``anchor_interval_s``, ``witness_timeout_s``)."""
        try:
            witnesses = parse_witnesses(config.witnesses)  # before anything is opened
        except ConfigError as exc:
            # Checkpoints still matter without witnesses: sign them, and say loudly why no
            # witness is asked (the message never holds key material: parse_witnesses).
            COUNTERS.incr("anchor_failures")
            logger.error("workflow-audit: no witness is asked: %s", exc)
            witnesses = []
        ledger = open_ledger(
            config.ledger_url,
            synchronous=config.synchronous,
            busy_timeout_s=config.busy_timeout_s,
        )
        try:
            signing = CheckpointSigner.from_config(config, ledger)
            try:
                anchor = cls(
                    ledger,
                    signing,
                    interval_s=config.anchor_interval_s,
                    witnesses=witnesses,
                    timeout_s=config.witness_timeout_s,
                    name=name,
                )
            except ConfigError as exc:
                if not witnesses:
                    raise
                # a witness the clients cannot use: checkpoints are signed all the same
                COUNTERS.incr("anchor_failures")
                logger.error("workflow-audit: no witness is asked: %s", exc)
                anchor = cls(
                    ledger,
                    signing,
                    interval_s=config.anchor_interval_s,
                    timeout_s=config.witness_timeout_s,
                    name=name,
                )
        except AuditError:
            ledger.close()
            raise
        anchor._owns_ledger = True
        return anchor

    # -- the thread ----------------------------------------------------------------------

    def start(self) -> Anchor:
        """Start the daemon thread (a round every ``interval_s``); returns ``self``."""
        if self._thread is None and not self._stopped:
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._wake.wait(self.interval_s):  # Event.wait: stop() is immediate
            self.tick()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread, run a final round (a checkpoint on clean shutdown, witnesses
        asked), close what it opened. Idempotent, never raises, bounded by ``timeout_s``
        (plus at most one witness exchange in flight)."""
        if self._stopped:
            return
        self._stopped = True
        if os.getpid() != self._pid:  # a forked child: the thread is the parent's
            return
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        if not self._round_lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            logger.warning("workflow-audit: %s: no final round (a round is still running)", self)
            return
        try:
            self._safe_round(deadline)
            for client in self._clients:
                client.close()
            if self._owns_ledger and (thread is None or not thread.is_alive()):
                self.ledger.close()
        except Exception:  # shutdown never raises; logged and counted
            COUNTERS.incr("anchor_failures")
            logger.exception("workflow-audit: %s: closing failed", self)
        finally:
            self._round_lock.release()

    # -- one round -----------------------------------------------------------------------

    def tick(self, chains: Sequence[str] | None = None) -> AnchorReport:
        """One round now: sign every chain that grew (or only ``chains``), ask every witness
        due. Never raises."""
        with self._round_lock:
            return self._safe_round(None, chains)

    def _safe_round(
        self, deadline: float | None, only: Sequence[str] | None = None
    ) -> AnchorReport:
        try:
            return self._round(deadline, only)
        except Exception:  # a round never raises into its caller
            COUNTERS.incr("anchor_failures")
            logger.exception("workflow-audit: %s: a round failed", self)
            return AnchorReport(failures=1)

    def _round(self, deadline: float | None, only: Sequence[str] | None = None) -> AnchorReport:
        chains = self.ledger.chains() if only is None else list(only)
        signed: list[str] = []
        failures = 0
        for chain in chains:
            outcome = self._sign(chain)
            if outcome is True:
                signed.append(chain)
            failures += outcome is None
        cosigned = conflicts = 0
        latest = {c: self.ledger.latest_checkpoint(c) for c in chains} if self._clients else {}
        for i, client in enumerate(self._clients):
            streak = self._streaks[i]
            if streak.skip > 0 and deadline is None:  # the final round asks every witness
                streak.skip -= 1
                continue
            for chain, checkpoint in latest.items():
                if checkpoint is None:
                    continue
                if deadline is not None and time.monotonic() > deadline:
                    break
                if deadline is None and self._wake.is_set():
                    break  # stop() is waiting: its final round asks instead, within its bound
                result = self._witness(i, client, chain, checkpoint)
                cosigned += result == "cosigned"
                conflicts += result == "conflict"
                if result == "failed":
                    failures += 1
                    break  # the witness is down: its other chains wait for a later round
        return AnchorReport(tuple(signed), cosigned, failures, conflicts)

    def _sign(self, chain: str) -> bool | None:
        """True: signed; False: nothing grew; None: failed (logged once per error)."""
        try:
            last = self.ledger.latest_checkpoint(chain)
            size, _ = self.ledger.tree_head(chain)
            if size == 0 or (last is not None and last.size == size):
                self._sign_errors.pop(chain, None)
                return False
            stored = self.signing.write(chain)
        except CheckpointError as exc:
            self._sign_failed(chain, exc, "REFUSED to sign a checkpoint")
            return None
        except AuditError as exc:
            self._sign_failed(chain, exc, "could not sign a checkpoint")
            return None
        self._sign_errors.pop(chain, None)
        if stored is None or (last is not None and stored.size <= last.size):
            return False
        COUNTERS.incr("anchor_checkpoints")
        return True

    def _sign_failed(self, chain: str, exc: AuditError, what: str) -> None:
        COUNTERS.incr("anchor_failures")
        if self._sign_errors.get(chain) != str(exc):
            self._sign_errors[chain] = str(exc)
            logger.error("workflow-audit: %s: %s of chain %r: %s", self, what, chain, exc)

    def _witness(
        self, i: int, client: WitnessClient, chain: str, checkpoint: StoredCheckpoint
    ) -> str:
        """Ask witness ``i`` to cosign ``checkpoint`` unless the ledger holds its cosignature:
        ``"skip"``, ``"cosigned"``, ``"conflict"`` or ``"failed"``."""
        key = client.endpoint.key
        if self._conflicts.get((i, chain)) == checkpoint.size:
            return "skip"  # said once; asked again when the chain grows
        body, _ = note_parts(checkpoint.note)
        known = self._cosigned.get((i, chain))
        if known is None:  # once per process: what the ledger says it cosigned last
            theirs = cosigned_sizes(self.ledger.cosignatures(chain), key.name, key.key_id)
            known = max(
                ((c.size, c.body) for c in theirs if c.size <= checkpoint.size), default=(0, "")
            )
            if any((c.size, c.body) == (checkpoint.size, body) for c in theirs):
                known = (checkpoint.size, body)
            self._cosigned[(i, chain)] = known
        if known == (checkpoint.size, body):
            return "skip"
        old = known[0]
        proof = partial(_proof, self.ledger, chain, checkpoint.size)
        try:
            answer = ask(client, checkpoint.note, checkpoint.size, old, proof)
            if isinstance(answer, Conflict):
                return self._conflict(i, client, chain, checkpoint, answer)
            created = format_timestamp(dt.datetime.now(dt.timezone.utc))
            for line in answer.lines:
                self.ledger.add_cosignature(
                    StoredCosignature(chain, checkpoint.size, body, line, created)
                )
        except AuditError as exc:
            return self._failed(i, client, exc)
        self._cosigned[(i, chain)] = (checkpoint.size, body)
        COUNTERS.incr("witness_cosignatures")
        streak = self._streaks[i]
        if streak.failures:
            logger.warning(
                "workflow-audit: %s cosigns again after %d failure(s)",
                client.endpoint.describe(),
                streak.failures,
            )
        streak.failures = streak.skip = 0
        return "cosigned"

    def _conflict(
        self,
        i: int,
        client: WitnessClient,
        chain: str,
        checkpoint: StoredCheckpoint,
        conflict: Conflict,
    ) -> str:
        latest = self.ledger.latest_checkpoint(chain)
        if conflict.size > checkpoint.size and latest is not None and latest.size >= conflict.size:
            # another process of this log signed and sent a newer one meanwhile
            self._cosigned[(i, chain)] = (conflict.size, "")
            return "skip"
        self._conflicts[(i, chain)] = checkpoint.size
        COUNTERS.incr("witness_conflicts")
        origin = checkpoint.note.split("\n", 1)[0]
        logger.error(
            "workflow-audit: %s refuses: it has cosigned size %d of %s (%s); this ledger holds "
            "size %d: this ledger was rewritten or forked? Not asked again until the chain "
            "grows; run `workflow-audit verify --witness`",
            client.endpoint.describe(),
            conflict.size,
            origin,
            conflict.reason,
            checkpoint.size,
        )
        return "conflict"

    def _failed(self, i: int, client: WitnessClient, exc: AuditError) -> str:
        COUNTERS.incr("witness_failures")
        client.close()
        streak = self._streaks[i]
        streak.failures += 1
        streak.skip = min(2 ** (streak.failures - 1), MAX_BACKOFF_ROUNDS) - 1
        if streak.failures == 1:
            logger.warning(
                "workflow-audit: %s: cannot get a cosignature, retried in later rounds (logged "
                "once until it recovers): %s",
                self,
                exc,
            )
        return "failed"


def _proof(ledger: Ledger, chain: str, size: int, old: int) -> list[bytes]:
    """The consistency proof from ``old`` to ``size`` (none from 0 or from ``size``)."""
    if old in (0, size):
        return []
    return consistency_proof(partial(ledger.node, chain), old, size)


def start_anchor(config: AuditConfig, *, name: str) -> Anchor | None:
    """A started :class:`Anchor` for ``config``; None when checkpoints are off
    (``config.checkpoint_every == 0``) or it could not start (logged, ``anchor_failures``
    counted). Never raises: anchoring never keeps a component from recording."""
    if config.checkpoint_every == 0:
        return None
    try:
        return Anchor.from_config(config, name=name).start()
    except Exception:  # fail-open: the component records without an anchor
        COUNTERS.incr("anchor_failures")
        logger.exception("workflow-audit: could not start the checkpoint anchor %r", name)
        return None
