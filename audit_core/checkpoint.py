"""Signed checkpoints: a chain's tree size and Merkle root, signed, so that truncating the
tail or rewriting the whole chain cannot go unnoticed.

>>> from audit_core.checkpoint import Checkpoint
>>> cp = Checkpoint(origin="workflow-audit.local/ci/default", size=2, root=bytes(32))
>>> print(cp.text(), end="")
workflow-audit.local/ci/default
2
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
>>> Checkpoint.parse(cp.text()) == cp
True

Format: c2sp.org/tlog-checkpoint (origin line, decimal tree size, base64 RFC 9162 root) as the
text of a c2sp.org/signed-note signed with Ed25519 (:mod:`audit_core._note`). One key may
sign many chains: the origin is ``<origin prefix>/<chain>`` (the spec's SHOULD that the key
name equal the origin holds only for a key dedicated to one chain).

A log must never sign two inconsistent checkpoints (tlog-checkpoint, "Signatures"):
:func:`write_checkpoint` proves consistency with the latest stored checkpoint (RFC 9162
§2.1.4) before it signs, and refuses otherwise. :class:`CheckpointSigner` is the key and
origin a configuration names, for the trail and for the sinks that sign (S3 segments).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import os
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from audit_core._merkle import Frontier, consistency_proof, verify_consistency
from audit_core._metrics import COUNTERS
from audit_core._normalize import format_timestamp
from audit_core._note import Signer, Verifier, open_note, sign_note
from audit_core._record import StoredCheckpoint
from audit_core.config import AuditConfig, default_ledger_url
from audit_core.errors import (
    CheckpointError,
    ConfigError,
    ProofError,
    SignatureError,
)
from audit_core.ledgers import Ledger, ledger_path

__all__ = [
    "MAX_TREE_SIZE",
    "ROTATE_KEY_ENV",
    "Checkpoint",
    "CheckpointSigner",
    "check_stored",
    "ledger_checkpoints",
    "load_signer",
    "load_verifiers",
    "open_checkpoint",
    "write_checkpoint",
]

logger = logging.getLogger("workflow_audit")
_SIZE = re.compile(r"0|[1-9][0-9]*", re.ASCII)
#: Tree sizes are uint64: RFC 9162 §4.3 (``uint64 tree_size``), and the reference
#: checkpoint parser (golang.org/x/mod/sumdb/tlog ParseTree, strconv.ParseUint(…, 10, 64)).
MAX_TREE_SIZE = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head: ``origin``, ``size`` and RFC 9162 ``root`` (c2sp.org/tlog-checkpoint)."""

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise CheckpointError("a checkpoint origin is one non-empty line", chain="?", seq=None)
        if type(self.size) is not int or not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError(
                f"checkpoint tree size {self.size!r} is not a uint64 (0 to 2^64-1)",
                chain="?",
                seq=None,
            )
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise CheckpointError("checkpoint root is not a SHA-256 hash", chain="?", seq=None)

    def text(self) -> str:
        """The checkpoint's note text."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint's note text; extension lines are allowed and ignored."""
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "" or any(not line for line in lines[:-1]):
            raise CheckpointError(
                "a checkpoint is at least three non-empty lines, each ending in a newline",
                chain="?",
                seq=None,
            )
        origin, size, root_b64 = lines[0], lines[1], lines[2]
        # No leading zeroes (c2sp.org/tlog-checkpoint "Note text"); at most 20 digits, so
        # that no huge number is ever converted, then at most 2^64-1.
        if not _SIZE.fullmatch(size) or len(size) > 20 or int(size) > MAX_TREE_SIZE:
            raise CheckpointError(
                f"checkpoint tree size {size[:24]!r} is not a decimal uint64 (0 to 2^64-1)",
                chain="?",
                seq=None,
            )
        try:
            root = base64.b64decode(root_b64, validate=True)
        except (binascii.Error, ValueError):
            root = b""
        if len(root) != 32:
            raise CheckpointError(
                "checkpoint root is not a base64 SHA-256 hash", chain="?", seq=None
            )
        return cls(origin, int(size), root)

    def describe(self) -> str:
        return f"checkpoint {self.origin} at tree size {self.size} (root {self.root.hex()[:16]}…)"


def check_stored(chain: str, stored: StoredCheckpoint) -> None:
    """Raise :class:`CheckpointError` unless a checkpoint row read from a ledger holds the
    types its columns declare: an integer size, a 32-byte root and a text note (SQLite
    keeps any type in any column; a row edited outside workflow-audit may hold another)."""
    if (
        type(stored.size) is int
        and isinstance(stored.root, bytes)
        and len(stored.root) == 32
        and isinstance(stored.note, str)
    ):
        return
    found = ", ".join(
        f"{name} {type(value).__name__} {value!r:.40}"
        for name, value in (("size", stored.size), ("root", stored.root), ("note", stored.note))
    )
    raise CheckpointError(
        f"chain {chain!r}: a stored checkpoint row is malformed ({found}): the ledger was "
        "edited outside workflow-audit",
        chain=chain,
        seq=None,
        expected="size INTEGER, root BLOB of 32 bytes, note TEXT",
        found=found,
    )


def open_checkpoint(note: str, trusted: Sequence[Verifier]) -> Checkpoint:
    """Verify a signed checkpoint against ``trusted`` keys (every one must have signed)."""
    opened = open_note(note, trusted)
    return Checkpoint.parse(opened.text)


def write_checkpoint(
    ledger: Ledger, chain: str, signer: Signer, *, origin: str
) -> StoredCheckpoint | None:
    """Sign and store a checkpoint of the chain's current tree; None if the chain is empty.

    Returns the latest stored checkpoint unchanged when the tree has not grown since.
    Raises :class:`CheckpointError` rather than sign a tree inconsistent with the latest
    stored checkpoint (the records were rewritten or cut since it was signed).
    """
    # The latest checkpoint first, then the tree: trees only grow, so a checkpoint another
    # process signs in between can never look newer than the tree read after it.
    last = ledger.latest_checkpoint(chain)
    size, root = ledger.tree_head(chain)
    if size == 0:
        return None
    if last is not None:
        if last.size >= size:
            if last.size == size and last.root != root:
                raise _fork(chain, last, size, root)
            if last.size == size:
                return last
            # the frontier is older than the newest checkpoint: never sign backwards
            raise CheckpointError(
                f"chain {chain!r}: the tree has {size} leaves but a checkpoint at size "
                f"{last.size} exists: records were removed",
                chain=chain,
                seq=size,
                expected=str(last.size),
                found=str(size),
            )
        proof = consistency_proof(partial(ledger.node, chain), last.size, size)
        try:
            verify_consistency(last.size, size, proof, last.root, root)
        except ProofError as exc:
            raise _fork(chain, last, size, root) from exc
    text = Checkpoint(origin, size, root).text()
    checkpoint = StoredCheckpoint(
        chain=chain,
        size=size,
        root=root,
        note=sign_note(text, [signer]),
        created=format_timestamp(dt.datetime.now(dt.timezone.utc)),
    )
    ledger.add_checkpoint(checkpoint)
    return checkpoint


def ledger_checkpoints(
    ledger: Ledger, signer: Signer, origin: Callable[[str], str]
) -> Callable[[str, int], str]:
    """A ``checkpoint`` callable for :class:`~audit_core.sinks.s3.S3SegmentSink`: the signed
    note of the chain's tree at any size the ledger holds, its RFC 9162 root folded from the
    ledger's stored subtrees (``ledger_checkpoints(trail.ledger, trail.signer, trail.origin)``).

    A root at an earlier size of the same tree is consistent with every checkpoint of that
    tree by construction, so this never signs two inconsistent checkpoints (tlog-checkpoint,
    "Signatures"). Ed25519 signatures are deterministic (RFC 8032), so a re-signed checkpoint
    is byte-identical and its re-upload a no-op."""

    def sign(chain: str, size: int) -> str:
        root = Frontier.at(partial(ledger.node, chain), size).root()
        return sign_note(Checkpoint(origin(chain), size, root).text(), [signer])

    return sign


def _fork(chain: str, last: StoredCheckpoint, size: int, root: bytes) -> CheckpointError:
    return CheckpointError(
        f"chain {chain!r}: the tree at size {size} (root {root.hex()[:16]}…) is not an "
        f"extension of the checkpoint at size {last.size} (root {last.root.hex()[:16]}…): "
        "the records were rewritten; refusing to sign",
        chain=chain,
        seq=last.size - 1,
        expected=last.root.hex(),
        found=root.hex(),
    )


# -- keys ---------------------------------------------------------------------------------


#: Set to 1 to let a writer mint a new local signing key for a ledger whose chains already
#: hold checkpoints signed by a key that is now missing (README, "Rotating the local key").
ROTATE_KEY_ENV = "WORKFLOW_AUDIT_ROTATE_KEY"


def load_signer(
    spec: str | None,
    *,
    default_path: Path | None,
    name: str,
    signed_before: Callable[[], bool] | None = None,
    rotate: bool | None = None,
) -> Signer:
    """The signing key: ``spec`` is a ``PRIVATE+KEY+…`` string or a key file's path; without
    one, a local key at ``default_path`` is created on first use (and announced loudly).

    A missing local key is re-created only for a ledger that holds no checkpoint yet
    (``signed_before()`` false): a key minted silently for a ledger whose checkpoints were
    signed by the lost one would make every verifier holding the old key report tampering.
    Then :class:`ConfigError` is raised (and ``checkpoint_key_missing`` counted) unless
    ``rotate`` (default: ``$WORKFLOW_AUDIT_ROTATE_KEY`` is 1): a rotation mints a key under
    the old key's name and appends its verifier key to ``<key>.pub`` after the old one, so
    that one file verifies checkpoints of both (:func:`audit_core._note.open_note`).
    """
    if spec:
        if spec.startswith("PRIVATE+KEY+"):
            return Signer.parse(spec)
        try:
            return Signer.parse(Path(spec).expanduser().read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            # A mistyped key string lands here as a "path": never echo it (STYLE rule 18).
            shown = "(not shown: it looks like key material)" if "+" in spec else spec
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"cannot read signing key file {shown}: {why}") from exc
    if default_path is None:
        signer = Signer.generate(name)
        logger.warning(
            "workflow-audit: signing checkpoints with a throw-away key (in-memory ledger): %s",
            signer.verifier,
        )
        return signer
    if rotate is None:
        rotate = os.environ.get(ROTATE_KEY_ENV, "").strip() == "1"
    try:
        if default_path.exists():
            return Signer.parse(default_path.read_text(encoding="utf-8"))
        rotating = signed_before is not None and signed_before()
        if rotating and not rotate:
            COUNTERS.incr("checkpoint_key_missing")
            raise ConfigError(
                f"the local signing key {default_path} is missing, but this ledger holds "
                "checkpoints signed with it: no new key is minted (verifiers holding the old "
                "verifier key would see a tamper verdict). Records are still written; "
                "checkpoints are not signed until the key is restored, or rotated on purpose "
                f"with {ROTATE_KEY_ENV}=1 or `workflow-audit checkpoint --rotate-key`"
            )
        public = default_path.with_name(default_path.name + ".pub")
        previous = _verifier_lines(public) if rotating else []
        signer = Signer.generate(previous[0].name if previous else name)
        try:
            write_key_files(signer, default_path, keep=previous)
        except FileExistsError:  # another process created it first: use theirs
            return Signer.parse(default_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:  # an unreadable key, a read-only directory
        raise ConfigError(f"cannot read or create the signing key {default_path}: {exc}") from exc
    if rotating:
        COUNTERS.incr("checkpoint_key_rotations")
        logger.warning(
            "workflow-audit: ROTATED the local signing key %s: new checkpoints are signed by "
            "%s. Verifiers need the old and the new verifier key (both in %s).",
            default_path,
            signer.verifier,
            public,
        )
        return signer
    logger.warning(
        "workflow-audit: created a LOCAL signing key %s for checkpoints. Fine for a demo; in "
        "production set WORKFLOW_AUDIT_SIGNING_KEY to a key kept away from the ledger, and keep "
        "the verifier key %s where the ledger's writers cannot change it.",
        default_path,
        signer.verifier,
    )
    return signer


class CheckpointSigner:
    """The checkpoint key and origin a configuration names for ``ledger``: the key of
    ``config.signing_key``, else the local key beside the ledger (``<ledger file>.key``),
    loaded (or created) on first use by :func:`load_signer`; the origin ``config.origin``,
    else the key's name, followed by ``/CHAIN``.

    ``rotate`` is :func:`load_signer`'s (None: ask ``$WORKFLOW_AUDIT_ROTATE_KEY``); it may be
    set until the key is first used.
    """

    def __init__(self, config: AuditConfig, ledger: Ledger, *, rotate: bool | None = None) -> None:
        self.config = config
        self.ledger = ledger
        self.rotate = rotate
        self._signer: Signer | None = None

    @classmethod
    def from_config(
        cls, config: AuditConfig, ledger: Ledger, *, rotate: bool | None = None
    ) -> CheckpointSigner:
        """The signer ``config`` names for ``ledger`` (no key is read before first use)."""
        return cls(config, ledger, rotate=rotate)

    @property
    def signer(self) -> Signer:
        """The signing key (loaded, or created beside the ledger, on first use)."""
        if self._signer is None:
            self._signer = load_signer(
                self.config.signing_key,
                default_path=_default_key_path(self.config.ledger_url),
                name=f"workflow-audit.local/{socket.gethostname()}",
                signed_before=self._signed_before,
                rotate=self.rotate,
            )
        return self._signer

    def _signed_before(self) -> bool:
        # asked only when the local key is missing: was any chain signed (by that key)?
        return any(self.ledger.latest_checkpoint(c) is not None for c in self.ledger.chains())

    def verifiers(self) -> list[Verifier]:
        """Every verifier key of this signer: the key's own, and for the local key each other
        line of ``<key>.pub`` (a rotated key's earlier ones, which signed older checkpoints)."""
        keys = [self.signer.verifier]
        path = None if self.config.signing_key else _default_key_path(self.config.ledger_url)
        public = None if path is None else path.with_name(path.name + ".pub")
        if public is not None and public.is_file():
            keys += [v for v in _verifier_lines(public) if v != keys[0]]
        return keys

    def origin(self, chain: str) -> str:
        """The origin line of ``chain``'s checkpoints."""
        return f"{self.config.origin or self.signer.name}/{chain}"

    def write(self, chain: str) -> StoredCheckpoint | None:
        """Sign and store a checkpoint of ``chain``'s current tree (:func:`write_checkpoint`)."""
        return write_checkpoint(self.ledger, chain, self.signer, origin=self.origin(chain))

    def at_size(self) -> Callable[[str, int], str]:
        """The signed note of any chain at any size the ledger holds, for a sink
        (:func:`ledger_checkpoints`; the key is loaded now)."""
        return ledger_checkpoints(self.ledger, self.signer, self.origin)


def _default_key_path(ledger_url: str) -> Path | None:
    """``<ledger file>.key`` for a SQLite ledger; None (a throw-away key) for one in memory;
    ``signing.key`` in the user's data directory for any other ledger."""
    try:
        path = ledger_path(ledger_url)
    except ConfigError:  # not a file ledger: the user's data directory
        return Path(default_ledger_url()[len("sqlite:///") :]).with_name("signing.key")
    return None if path is None else path.with_name(path.name + ".key")


def _verifier_lines(public: Path) -> list[Verifier]:
    """The verifier keys in a ``.pub`` file (none if it is gone or unreadable)."""
    try:
        lines = public.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return []
    keys = []
    for line in lines:
        try:
            keys.append(Verifier.parse(line))
        except SignatureError:
            continue  # not a key: not carried over
    return keys


def _write_new(path: Path, text: str, mode: int) -> Path:
    """Write ``text`` to a new file aside ``path``, with exactly ``mode`` whatever the umask
    (fchmod after open: the umask only narrows open()'s mode), fsync'd; returns that file."""
    aside = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        aside.unlink(missing_ok=True)
        raise
    return aside


def write_key_files(signer: Signer, path: Path, *, keep: Sequence[Verifier] = ()) -> Path:
    """Write the signer key (mode 0600) and ``<path>.pub`` (mode 0644: the verifier key,
    after the ``keep`` keys of a rotation), whatever the umask; returns the latter. Raises
    FileExistsError rather than overwrite a key. The key appears whole or not at all
    (written aside, then hard-linked into place), so concurrent first users agree."""
    path.parent.mkdir(parents=True, exist_ok=True)
    public = path.with_name(path.name + ".pub")
    aside = _write_new(path, str(signer) + "\n", 0o600)
    try:
        os.link(aside, path)  # atomic, and fails if the key exists
    finally:
        aside.unlink()
    keys = [str(v) for v in keep if v != signer.verifier] + [str(signer.verifier)]
    text = "".join(f"{key}\n" for key in dict.fromkeys(keys))
    os.replace(_write_new(public, text, 0o644), public)
    return public


def load_verifiers(specs: Sequence[str]) -> list[Verifier]:
    """Verifier keys from key strings or files (one key a line)."""
    keys: list[Verifier] = []
    for spec in specs:
        if "+" in spec and not Path(spec).exists():
            keys.append(Verifier.parse(spec))
            continue
        try:
            lines = Path(spec).expanduser().read_text(encoding="utf-8").split()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{spec!r} is neither a verifier key nor a readable file") from exc
        keys += [Verifier.parse(line) for line in lines if line]
    if not keys:
        raise SignatureError("no verifier key given")
    return keys
