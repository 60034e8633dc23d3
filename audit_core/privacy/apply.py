"""A privacy policy applied to a record before it is hashed: :class:`Privacy`.

>>> import tempfile, pathlib
>>> from audit_core import AuditConfig, AuditTrail
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> config = AuditConfig(ledger_url=f"sqlite:///{d}/ledger.db", privacy_policy="default")
>>> with AuditTrail(config) as trail:
...     stored = trail.record("dagrun.started", {"triggering_user": "alice"})
>>> b"alice" in stored.body, b'"$commit"' in stored.body
(False, True)

:class:`~audit_core.AuditTrail` calls :meth:`Privacy.shape` on every record's view
(``{"actor", "subject", "data"}``, normalized, secrets already redacted) when a policy is
configured (``WORKFLOW_AUDIT_PRIVACY_POLICY``). The policy (:mod:`audit_core.privacy.policy`)
names the nodes to transform; each ``commit`` becomes a keyed commitment under its data
subject's key and its value an AES-GCM opening in the erasable store, written *before* the
record is appended (so a record never names an opening that was not stored first); each
``encrypt`` a sealed value on the chain; each ``redact`` the ``[REDACTED]`` marker. One
random nonce serves the whole record (docs/PRIVACY.md, commitment.py).

Fail closed: when the store or the key store cannot be written, the values the policy would
have committed are redacted instead (counted ``privacy_failures``, logged without values):
the record is still written, never with the value in the clear.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from audit_core._metrics import COUNTERS
from audit_core._normalize import JSON, REDACTED, JSONObject, fit, now_timestamp
from audit_core._record import PreparedRecord, prepare
from audit_core.config import AuditConfig
from audit_core.errors import AuditError, ConfigError
from audit_core.ledgers import ledger_path
from audit_core.privacy import PRIVACY_CHAIN
from audit_core.privacy.commitment import (
    Commitment,
    Sealed,
    encode_b64,
    message_of,
    new_nonce,
    opening_aad,
    value_bytes,
)
from audit_core.privacy.keys import KeyStore, open_keystore
from audit_core.privacy.pointer import get, replace
from audit_core.privacy.policy import Decision, Policy, default_policy
from audit_core.privacy.policyfile import load_policy
from audit_core.privacy.store import Opening, PrivacyStore

__all__ = ["STORE_RETRY_S", "Privacy", "load_configured_policy", "privacy_urls"]

logger = logging.getLogger("workflow_audit")

#: Seconds a store that failed (locked past the busy timeout, unwritable) is not tried again:
#: meanwhile records redact what the policy would commit, so no record waits for it twice.
STORE_RETRY_S: Final = 5.0
#: Nodes the record format needs as strings: a commitment there takes the text form.
_STRING_SLOTS: Final = frozenset({"/actor/id", "/actor/type"})


def load_configured_policy(name: str) -> Policy:
    """``default`` (the built-in rules) or a policy file."""
    return default_policy() if name == "default" else load_policy(name)


def privacy_urls(config: AuditConfig) -> tuple[str, str]:
    """The privacy store's URL and the key store's, configured or beside a SQLite ledger.

    A PostgreSQL ledger serves many hosts: its store defaults to the same database, but its
    keys must be configured (a key file on one host would leave the others unable to open,
    and an erasure on one host would miss the others' keys)."""
    store, keys = config.privacy_store, config.privacy_keys
    try:
        path = ledger_path(config.ledger_url)
    except ConfigError:
        path = None
        if store is None and config.ledger_url.startswith(("postgresql:", "postgres:")):
            store = config.ledger_url
    if path is not None:
        store = store or f"sqlite:///{path.with_name(path.name + '.privacy.db')}"
        keys = keys or str(path.with_name(path.name + ".privacy-keys.db"))
    if path is not None and _same_file(_local(store), path):
        raise ConfigError("the privacy store cannot be the ledger's own file")
    if path is not None and _same_file(_local(keys), path):
        raise ConfigError("the privacy key store cannot be the ledger's own file")
    store_file = _local(store)
    if store_file is not None and _same_file(_local(keys), store_file):
        raise ConfigError("the privacy key store cannot be the privacy store's own file")
    if store is None or keys is None:
        raise ConfigError(
            "a privacy policy needs WORKFLOW_AUDIT_PRIVACY_STORE and WORKFLOW_AUDIT_PRIVACY_KEYS "
            "for this ledger (they default only beside a SQLite ledger file; a PostgreSQL "
            "ledger's store defaults to its database, its keys never)"
        )
    return store, keys


def _same_file(one: Path | None, other: Path) -> bool:
    # Erasable rows must never live in the ledger file (an auditor's copy, a backup, WORM),
    # nor keys beside the openings they open.
    return one is not None and one.expanduser().resolve() == other.expanduser().resolve()


def _local(url: str | None) -> Path | None:
    if url is None or not (url.startswith(("sqlite:", "file:")) or "://" not in url):
        return None
    return ledger_path(url[5:] if url.startswith("file:") else url)


class Privacy:
    """A policy, the privacy store and the key store; thread-safe. Opened lazily, so a
    trail whose store is unreachable still records (fail closed, see the module)."""

    def __init__(
        self,
        policy: Policy,
        *,
        store_url: str,
        keys_url: str,
        store: PrivacyStore | None = None,
        keys: KeyStore | None = None,
        synchronous: str = "NORMAL",
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.policy = policy
        self.busy_timeout_s = busy_timeout_s  # the trail's: a hook's waits 1 s (hooks.py)
        self.store_url, self.keys_url = store_url, keys_url
        self.synchronous = synchronous
        self._store, self._keys = store, keys
        self._lock = threading.Lock()
        self._down_until = 0.0  # time.monotonic() before which the store is not tried

    @classmethod
    def from_config(cls, config: AuditConfig) -> Privacy | None:
        """None without a policy; :class:`~audit_core.errors.PolicyError` for a bad one (a
        policy that cannot be read must stop the writer's start, not shape records wrongly)."""
        if not config.privacy_policy:
            return None
        policy = load_configured_policy(config.privacy_policy)
        store_url, keys_url = privacy_urls(config)
        return cls(
            policy,
            store_url=store_url,
            keys_url=keys_url,
            synchronous=config.privacy_synchronous,
            busy_timeout_s=config.busy_timeout_s,
        )

    @property
    def store(self) -> PrivacyStore:
        """The erasable store of openings (opened on first use)."""
        with self._lock:
            if self._store is None:
                self._store = PrivacyStore(
                    self.store_url,
                    synchronous=self.synchronous,
                    busy_timeout_s=self.busy_timeout_s,
                )
            return self._store

    @property
    def keys(self) -> KeyStore:
        """The per-subject key store (opened on first use)."""
        with self._lock:
            if self._keys is None:
                self._keys = open_keystore(self.keys_url, busy_timeout_s=self.busy_timeout_s)
            return self._keys

    def close(self) -> None:
        """Close the stores that were opened; idempotent."""
        with self._lock:
            store, keys, self._store, self._keys = self._store, self._keys, None, None
        if store is not None:
            store.close()
        if keys is not None:
            keys.close()

    def marker(self, nonce: bytes | None = None) -> JSONObject:
        """``data._privacy`` of every record this policy shaped: the policy's digest, and the
        record's nonce when it holds commitments (a commitment copied into another record
        then names a nonce that is not that record's: ``privacy verify`` says so)."""
        meta: JSONObject = {"policy": self.policy.digest}
        if nonce is not None:
            meta["n"] = encode_b64(nonce)
        return {"_privacy": meta}

    def announcement(self, actor: tuple[str, str]) -> PreparedRecord:
        """The ``privacy.policy`` record that announces this policy on the privacy chain, keyed
        by its digest (so many writers append it once). Not shaped by the policy: it holds
        rules, no one's data."""
        source = self.policy.source
        name = source if source.startswith("<") else Path(source).name  # no home directories
        return prepare(
            chain=PRIVACY_CHAIN,
            event="privacy.policy",
            ts=now_timestamp(),
            # not the process's USER@HOST (a person's login, unshaped here): the library
            actor={"type": "service", "id": "workflow-audit"},
            subject={},
            trace=None,
            data={"digest": self.policy.digest, "source": name, "policy": self.policy.to_json()},
            key=f"privacy.policy:{self.policy.digest}",
        )

    def shape(
        self,
        chain: str,
        event: str,
        view: Mapping[str, JSON],
        nonces: list[bytes] | None = None,
        max_sealed: int | None = None,
    ) -> dict[str, JSON]:
        """``view`` as the record will hold it; the openings are durable in the store when
        this returns (before the record is appended: a record never names an opening that
        was not stored first). The record's nonce is added to ``nonces``, which a caller
        whose append fails hands to :meth:`discard`."""
        decisions = [_fix_actor(d) for d in self.policy.decide(event, view)]
        out: JSON = dict(view)
        if not decisions:
            return out  # type: ignore[return-value]
        committed: dict[str, JSON] = {}
        wanted = [d for d in decisions if d.action != "redact"]
        if wanted and time.monotonic() < self._down_until:
            # the store failed a moment ago: redact at once rather than wait for its lock
            # again at every record (a hook's records spill one after another)
            COUNTERS.incr("privacy_failures")
            logger.warning(
                "workflow-audit: privacy store unavailable a moment ago; %d personal value(s) "
                "of %s redacted instead of committed",
                len(wanted),
                event,
            )
        elif wanted:
            try:
                committed = self._commit(chain, view, wanted, nonces, max_sealed)
            except AuditError as exc:
                self._down_until = time.monotonic() + STORE_RETRY_S
                COUNTERS.incr("privacy_failures")
                logger.warning(
                    "workflow-audit: privacy store unavailable (%s: %s); %d personal value(s) "
                    "of %s redacted instead of committed (tried again in %.0f s)",
                    type(exc).__name__,
                    exc,
                    len(wanted),
                    event,
                    STORE_RETRY_S,
                )
        for decision in decisions:
            out = replace(out, decision.pointer, committed.get(decision.pointer, REDACTED))
        return out  # type: ignore[return-value]

    def shape_record(
        self,
        chain: str,
        event: str,
        members: tuple[JSONObject, JSONObject, JSONObject],
        *,
        max_value_bytes: int,
        strict: bool,
        nonces: list[bytes] | None,
    ) -> tuple[JSONObject, JSONObject, JSONObject, tuple[str, ...]]:
        """A record's normalized (actor, subject, data) as the record holds them: shaped
        (:meth:`shape`), the record's size limits applied to what stays on the chain, and
        ``data._privacy`` added; plus the conversions the limits made."""
        actor, subject, data = members
        drawn = [] if nonces is None else nonces
        before = len(drawn)
        record_view: dict[str, JSON] = {"actor": actor, "subject": subject, "data": data}
        view = self.shape(chain, event, record_view, drawn, max_value_bytes)
        fitted = fit(_object(view["data"]), max_value_bytes=max_value_bytes, strict=strict)
        nonce = drawn[-1] if len(drawn) > before else None
        shaped = {**fitted.value, **self.marker(nonce)}
        return _object(view["actor"]), _object(view["subject"]), shaped, fitted.issues

    def discard(self, nonces: list[bytes]) -> None:
        """Delete the openings of records whose append failed (never raises: logged and
        counted; what stays is erased with its subject)."""
        if not nonces:
            return
        try:
            self.store.discard(nonces)
        except AuditError as exc:
            COUNTERS.incr("privacy_failures")
            logger.warning(
                "workflow-audit: could not discard the openings of %d unwritten record(s) (%s: %s)",
                len(nonces),
                type(exc).__name__,
                exc,
            )

    def _commit(
        self,
        chain: str,
        view: Mapping[str, JSON],
        decisions: list[Decision],
        nonces: list[bytes] | None,
        max_sealed: int | None = None,
    ) -> dict[str, JSON]:
        # One store transaction: the subjects are looked up (or made) and the openings stored
        # together, so an erasure (which deletes the subject row first) is either wholly
        # before this record's openings or wholly after them.
        keys, nonce = self.keys, new_nonce()
        out: dict[str, JSON] = {}
        openings: list[Opening] = []
        with self.store.writing() as writer:
            for d in decisions:
                # nothing names a subject (a number, a batch without its data_subject): the
                # value is keyed for this record alone, erasable as record:<nonce>
                subject = d.subject or f"record:{encode_b64(nonce)}"
                pseudonym, created = writer.pseudonym(subject)
                if created:
                    keys.create(pseudonym)
                raw = value_bytes(get(dict(view), d.pointer))
                sealed = keys.seal(pseudonym, raw, opening_aad(chain, nonce, d.pointer))
                marker: Commitment | Sealed
                # a ciphertext too large for the record would be cut to a digest there: such a
                # value is committed instead (its opening off the chain)
                too_large = max_sealed is not None and len(sealed) * 4 // 3 > max_sealed
                if d.action == "commit" or too_large:
                    digest = keys.mac(pseudonym, message_of(nonce, d.pointer, raw))
                    marker = Commitment(nonce, digest)
                    openings.append(Opening(nonce, d.pointer, chain, pseudonym, "commit", sealed))
                else:
                    marker = Sealed(nonce, sealed)
                    openings.append(Opening(nonce, d.pointer, chain, pseudonym, "sealed", None))
                slot = d.pointer in _STRING_SLOTS
                out[d.pointer] = marker.to_text() if slot else marker.to_json()
            writer.add_all(openings)
        if nonces is not None:
            nonces.append(nonce)
        return out


def _object(value: JSON) -> JSONObject:
    # A policy may commit a whole top-level member: its marker is an object too.
    return value if isinstance(value, dict) else {"value": value}


def _fix_actor(decision: Decision) -> Decision:
    # The record format needs actor {"type", "id"} as strings: a rule on the whole actor
    # commits its id (the type says "user", "service": no one in particular).
    if decision.pointer == "/actor":
        return Decision(pointer="/actor/id", action=decision.action, subject=decision.subject)
    return decision
