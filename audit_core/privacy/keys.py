"""Per data subject keys: the :class:`KeyStore` protocol, a local SQLite file, and the seams.

>>> import tempfile, os
>>> from audit_core.privacy.keys import open_keystore
>>> keys = open_keystore(os.path.join(tempfile.mkdtemp(), "keys.db"))
>>> keys.create("ps-demo")
>>> len(keys.mac("ps-demo", b"message"))
32
>>> keys.destroy("ps-demo"), keys.destroy("ps-demo")
(True, False)
>>> keys.close()

A key store holds one random 256-bit key per pseudonym and offers *operations only*
(``mac``, ``seal``, ``unseal``): no method returns a key, so a backend whose keys never leave
it fits the same protocol. Destroying a subject's key is the erasure (docs/PRIVACY.md):
every commitment made under it stays on the chain, and nobody can ever again tell what it
hid. ``create`` is insert-if-absent: it never replaces a key (that would make every value
sealed under the old one unopenable).

**LocalKeyStore** (development, tests, one host): one SQLite file, created mode 0600 before
SQLite opens it; a group- or world-readable key file is refused (as ssh refuses such a
private key): ``chmod 600`` it. WAL with ``synchronous=FULL``: a key lost on power failure
would leave every value committed under it unopenable. ``secure_delete=ON`` zeroes a
deleted key's bytes in the file, and :meth:`LocalKeyStore.destroy` ends with
``PRAGMA wal_checkpoint(TRUNCATE)``, so no copy stays in the write-ahead log either (a
backup or a file-system snapshot taken before is out of reach: keep the key file out of
them, or accept that erasure waits for their expiry). Derived keys (:func:`derive_keys`) are
cached in memory; the cache is dropped whenever another connection committed to the file
(``PRAGMA data_version``), so a key destroyed by another process is not used from a cache.

**Other backends** come from the ``workflow_audit.keystores`` entry point group: the URL's
scheme names an entry point, a ``callable(url, read_only) -> KeyStore``. The seams:

- *HashiCorp Vault Transit*: ``create`` = ``POST transit/keys/<pseudonym>-seal`` with
  ``type=aes256-gcm96`` and ``POST transit/keys/<pseudonym>-mac`` with ``type=hmac``
  (two keys, so the commitment key never encrypts); ``mac`` =
  ``POST transit/hmac/<pseudonym>-mac/sha2-256`` (``input`` base64; the ``vault:v1:``
  prefix stripped from the answer); ``seal``/``unseal`` = ``POST transit/encrypt/<name>`` /
  ``transit/decrypt/<name>`` with ``associated_data`` = base64 of the AAD; ``destroy`` =
  ``POST transit/keys/<name>/config`` with ``deletion_allowed=true``, then
  ``DELETE transit/keys/<name>`` (immediate).
- *AWS KMS*: per subject one ``KeySpec=HMAC_256`` / ``KeyUsage=GENERATE_VERIFY_MAC`` key
  and one ``SYMMETRIC_DEFAULT`` key (``CreateKey``; aliases ``alias/<prefix>/<pseudonym>``);
  ``mac`` = ``GenerateMac`` with ``MacAlgorithm=HMAC_SHA_256``; ``seal``/``unseal`` =
  ``Encrypt``/``Decrypt`` with the AAD as ``EncryptionContext`` (``{"aad": base64}``);
  ``destroy`` = ``ScheduleKeyDeletion`` (``PendingWindowInDays`` 7 to 30; KMS deletes no
  key sooner, and ``DisableKey`` stops its use meanwhile), so such a backend's erasure record
  must state the waiting period and the date the key is gone.

A key, derived or not, never appears in a log line, an error or a repr; a pseudonym may.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from audit_core._forklock import renew_after_fork
from audit_core.errors import PrivacyError
from audit_core.privacy._sqlite import PrivateFile
from audit_core.privacy.commitment import (
    KCV_MESSAGE,
    SubjectKeys,
    derive_keys,
    mac,
    seal,
    unseal,
)

__all__ = [
    "KEYSTORE_ENTRY_POINTS",
    "KeyStore",
    "LocalKeyStore",
    "key_check_value",
    "open_keystore",
]

logger = logging.getLogger("workflow_audit")

#: Entry point group of key store backends: name = URL scheme, value = ``(url, read_only)``
#: -> :class:`KeyStore`.
KEYSTORE_ENTRY_POINTS = "workflow_audit.keystores"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    pseudonym TEXT PRIMARY KEY,
    key       BLOB NOT NULL CHECK (length(key) = 32),
    created   TEXT NOT NULL
) WITHOUT ROWID;
"""


@runtime_checkable
class KeyStore(Protocol):
    """Per data subject keys, by pseudonym; operations only, no key ever returned."""

    def create(self, pseudonym: str) -> None:
        """A new random key for ``pseudonym``; nothing when it has one already."""
        ...

    def mac(self, pseudonym: str, message: bytes) -> bytes:
        """HMAC-SHA256 of ``message`` under the subject's commitment key."""
        ...

    def seal(self, pseudonym: str, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM under the subject's sealing key, bound to ``aad``."""
        ...

    def unseal(self, pseudonym: str, sealed: bytes, aad: bytes) -> bytes:
        """The plaintext of :meth:`seal`; PrivacyError when altered or ``aad`` differs."""
        ...

    def destroy(self, pseudonym: str) -> bool:
        """Destroy the subject's key for good; True when there was one."""
        ...

    def close(self) -> None:
        """Release connections; idempotent."""
        ...


def key_check_value(keys: KeyStore, pseudonym: str) -> str:
    """The key check value an erasure record names: the first 8 bytes, hex, of the
    commitment key's MAC of :data:`KCV_MESSAGE` (identifies the key, reveals nothing)."""
    return keys.mac(pseudonym, KCV_MESSAGE)[:8].hex()


def _missing(pseudonym: str) -> PrivacyError:
    return PrivacyError(f"no key for {pseudonym} (erased?)")


class LocalKeyStore:
    """A :class:`KeyStore` in one SQLite file (see the module docstring).

    ``read_only=True``: an auditor's copy, opened ``mode=ro``; ``create`` and ``destroy``
    raise PrivacyError."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.path = Path(path)
        if self.path.name in ("", ":memory:"):
            raise PrivacyError("a key store needs a file: keys in memory would die with it")
        self.read_only = read_only
        self._lock = threading.Lock()
        renew_after_fork(self)  # a child forked while a thread held the lock gets a free one
        self._file = PrivateFile(
            self.path,
            what="key store",
            schema=_SCHEMA,
            probe="SELECT count(*) FROM keys",
            synchronous="FULL",
            read_only=read_only,
            check=_check_not_world if read_only else _check_private,
            busy_timeout_s=busy_timeout_s,
        )
        self._cache: dict[str, SubjectKeys] = {}
        self._version = -1
        with self._lock:
            self._connection()  # fail at open, not at the first use

    def __repr__(self) -> str:
        return f"LocalKeyStore({str(self.path)!r}{', read_only=True' if self.read_only else ''})"

    # -- connections -----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn, new = self._file.connection()
        if new:  # a first open, or a forked child's: nothing cached belongs to it
            self._cache.clear()
            self._version = -1
        return conn

    def close(self) -> None:
        """Close this process's connection and forget the cached keys; idempotent."""
        with self._lock:
            self._file.close()
            self._cache.clear()

    # -- keys ------------------------------------------------------------------------------

    def _keys(self, pseudonym: str, *, fresh: bool = True) -> SubjectKeys:
        """The subject's derived keys (under the lock). ``fresh=False`` (mac, seal) trusts a
        cached key: a writer reaches a key only through its subject's row in the privacy
        store's write transaction, and an erasure deletes that row before it destroys the key
        (pseudonyms are never reused), so a key cached there was not destroyed. Opening
        (unseal) always checks whether another process destroyed it."""
        conn = self._connection()
        try:
            cached = None if fresh else self._cache.get(pseudonym)
            if cached is not None:
                return cached
            # another connection's commit (a destroy elsewhere) changes data_version: the
            # cache may hold a destroyed key, so it is dropped
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._version:
                self._cache.clear()
                self._version = version
            keys = self._cache.get(pseudonym)
            if keys is None:
                row = conn.execute(
                    "SELECT key FROM keys WHERE pseudonym = ?", (pseudonym,)
                ).fetchone()
                if row is None:
                    raise _missing(pseudonym)
                keys = self._cache[pseudonym] = derive_keys(bytes(row[0]))
        except sqlite3.Error as exc:
            raise PrivacyError(f"cannot read key store {self.path}: {exc}") from exc
        return keys

    def create(self, pseudonym: str) -> None:
        """A new random 32-byte key for ``pseudonym`` (nothing when it has one)."""
        self._writable("create a key")
        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        with self._lock:
            conn = self._connection()
            try:
                conn.execute(
                    "INSERT INTO keys (pseudonym, key, created) VALUES (?, ?, ?) "
                    "ON CONFLICT (pseudonym) DO NOTHING",
                    (pseudonym, os.urandom(32), created),
                )
            except sqlite3.Error as exc:
                raise PrivacyError(f"cannot write key store {self.path}: {exc}") from exc

    def mac(self, pseudonym: str, message: bytes) -> bytes:
        """HMAC-SHA256 under the subject's commitment key."""
        with self._lock:
            keys = self._keys(pseudonym, fresh=False)
        return mac(keys.mac, message)

    def seal(self, pseudonym: str, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM under the subject's sealing key."""
        with self._lock:
            keys = self._keys(pseudonym, fresh=False)
        return seal(keys.seal, plaintext, aad)

    def unseal(self, pseudonym: str, sealed: bytes, aad: bytes) -> bytes:
        """The plaintext of :meth:`seal`; PrivacyError when it does not open."""
        with self._lock:
            keys = self._keys(pseudonym)
        return unseal(keys.seal, sealed, aad)

    def destroy(self, pseudonym: str) -> bool:
        """Delete the key (zeroed by ``secure_delete``), drop it from the cache, then
        checkpoint and truncate the write-ahead log so no copy stays in it. Also run when
        there was no key, so a destroy interrupted before its checkpoint completes on a
        second call. PrivacyError when a reader keeps the log from being truncated."""
        self._writable("destroy a key")
        with self._lock:
            conn = self._connection()
            self._cache.pop(pseudonym, None)
            try:
                gone = conn.execute("DELETE FROM keys WHERE pseudonym = ?", (pseudonym,))
                existed = gone.rowcount > 0
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error as exc:
                raise PrivacyError(f"cannot destroy a key in {self.path}: {exc}") from exc
        if busy:
            raise PrivacyError(
                f"the key of {pseudonym} is deleted, but a reader of {self.path} kept its "
                "write-ahead log from being truncated, which may still hold a copy: run the "
                "erasure again when the reader is done"
            )
        return existed

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise PrivacyError(f"{self!r} is read-only: cannot {what}")


def _check_private(path: Path) -> None:
    """Refuse a key file group or world may read or write (as ssh refuses a private key left
    open): a writer's key file is 0600."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PrivacyError(
            f"key store {path} is open to group or world (mode {mode:o}): run chmod 600 {path}"
        )


def _check_not_world(path: Path) -> None:
    """An auditor's read-only copy may be shared with a group (root:auditors 0440), never
    with the world."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o007:
        raise PrivacyError(
            f"key store {path} is open to the world (mode {mode:o}): copy it to a file only "
            "you (or your group) can read, mode 0400 or 0440"
        )


def _local_path(url: str) -> Path | None:
    """The file of ``file:PATH``, ``sqlite:///PATH`` or a plain path; None for another
    scheme."""
    if url.startswith("file:") and not url.startswith("file://"):
        return Path(unquote(url[5:])).expanduser()
    if "://" not in url:
        return Path(url).expanduser()
    parts = urlsplit(url)
    if parts.scheme == "file" and not parts.netloc:
        return Path(unquote(parts.path))
    if parts.scheme == "sqlite" and not parts.netloc and len(parts.path) > 1:
        return Path(unquote(parts.path)[1:]).expanduser()
    return None


def open_keystore(url: str, *, read_only: bool = False, busy_timeout_s: float = 30.0) -> KeyStore:
    """The key store a URL names: ``file:PATH``, ``sqlite:///PATH`` or a plain path (a
    :class:`LocalKeyStore`), else the ``workflow_audit.keystores`` entry point named by the
    URL's scheme (``vault://…`` -> entry point ``vault``)."""
    if not url:
        raise PrivacyError("no key store URL given")
    path = _local_path(url)
    if path is not None:
        return LocalKeyStore(path, read_only=read_only, busy_timeout_s=busy_timeout_s)
    from importlib.metadata import entry_points

    scheme = url.partition(":")[0].lower()
    found = {ep.name: ep for ep in entry_points(group=KEYSTORE_ENTRY_POINTS)}
    if scheme not in found:
        known = ", ".join(sorted(found)) or "none installed"
        raise PrivacyError(
            f"unknown key store scheme {scheme!r}: expected file:PATH, sqlite:///PATH or a "
            f"{KEYSTORE_ENTRY_POINTS} entry point ({known}); see docs/PRIVACY.md"
        )
    store = found[scheme].load()(url, read_only)
    if not isinstance(store, KeyStore):
        raise PrivacyError(f"key store entry point {scheme!r} did not return a KeyStore")
    return store
