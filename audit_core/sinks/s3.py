"""Ship a chain to S3 as sealed, write-once segments under Object Lock.

>>> key = segment_key("audit/prod", "airflow", 0, 999)
>>> key
'audit/prod/airflow/00000000000000000000-00000000000000000999.jsonl.gz'
>>> parse_key("audit/prod", key)
('airflow', 0, 999, 'segment')
>>> decode_segment(encode_segment([b'{"seq":0}', b'{"seq":1}']))
[b'{"seq":0}', b'{"seq":1}']

Layout of a bucket (``s3://BUCKET/PREFIX``), one pair of objects per segment:

- ``PREFIX/CHAIN/FIRST-LAST.jsonl.gz`` (FIRST and LAST: seqs, 20 digits, so names sort by
  position): records FIRST..LAST of the chain, each its canonical RFC 8785 bytes followed by
  ``\\n`` (canonical JSON escapes every control character, so a record never holds a raw
  newline), compressed as exactly one RFC 1952 gzip member (mtime 0, no file name). The
  record hashes are not stored: a verifier recomputes them from the bytes.
- ``PREFIX/CHAIN/FIRST-LAST.checkpoint``: the chain's C2SP tlog-checkpoint at tree size
  LAST + 1 as a C2SP signed-note: the RFC 9162 root of every record up to the segment's end.
  Written after its segment: a segment without one is an upload cut short.

CHAIN is percent-encoded (RFC 3986), so a ``/`` in a chain id never makes a sub-directory.
Names derive from chain and range only, so a re-upload is a no-op. Every object is written
once: ``If-None-Match: *`` (S3 conditional writes) makes the server refuse to replace an
existing key; the sink then compares what is there, and a difference is a loud FAILURE,
never an overwrite. Each PUT carries ``ObjectLockMode`` (COMPLIANCE by default) and
``ObjectLockRetainUntilDate`` = now + ``retention_days`` (S3 User Guide, "Locking objects
with Object Lock": in compliance mode no user, root included, can delete or overwrite the
version or shorten its retention), and ``x-amz-checksum-sha256``, which the server checks
against the bytes it received. Segments never overlap: after a crash the shipper re-sends
from its cursor, possibly a longer or shorter batch than the one in flight; the sink then
lists what the bucket already holds of the chain (one LIST request per 1,000 objects, only
at a process's first batch of a chain and after a failed one), checks those records are
byte-identical, and writes only the remainder. One shipper per sink name: two writing the
same prefix at once could leave overlapping segments (``verify s3://…`` reports them).
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import importlib
import logging
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import quote, unquote

from audit_core._merkle import Frontier
from audit_core._metrics import COUNTERS
from audit_core._note import Signer, sign_note
from audit_core.checkpoint import Checkpoint
from audit_core.errors import ConfigError
from audit_core.ledgers import Ledger, masked_url
from audit_core.sinks import Batch, ExportResult

__all__ = [
    "LOCK_MODES",
    "MIN_RETENTION_DAYS",
    "S3SegmentSink",
    "decode_segment",
    "encode_segment",
    "ledger_checkpoints",
    "parse_key",
    "parse_s3_url",
    "s3_client",
    "segment_key",
]

logger = logging.getLogger("workflow_audit")

#: EU AI Act Art. 19(1): logs of high-risk AI systems are kept "for a period appropriate to
#: the intended purpose …, of at least six months". Six calendar months are at most 184
#: days (July-December), so 184 days is six months whenever the clock starts.
MIN_RETENTION_DAYS = 184
#: S3 Object Lock retention modes (PutObject ``x-amz-object-lock-mode``).
LOCK_MODES = ("COMPLIANCE", "GOVERNANCE")

_NAME = re.compile(r"(\d{20})-(\d{20})\.(jsonl\.gz|checkpoint)")
_SUFFIX = {"jsonl.gz": "segment", "checkpoint": "checkpoint"}
_COMPRESSLEVEL = 6  # zlib's default: ~3 µs a record; level 9 halves the speed for 0.5 % less


def chain_dir(prefix: str, chain: str) -> str:
    """``PREFIX/CHAIN/``: where a chain's objects live (the chain percent-encoded)."""
    enc = quote(chain, safe="")
    return f"{prefix.strip('/')}/{enc}/" if prefix.strip("/") else f"{enc}/"


def segment_key(prefix: str, chain: str, first: int, last: int) -> str:
    """The object name of the segment holding records ``first..last`` of ``chain``."""
    return f"{chain_dir(prefix, chain)}{first:020d}-{last:020d}.jsonl.gz"


def checkpoint_key(prefix: str, chain: str, first: int, last: int) -> str:
    """The object name of the checkpoint at the end of segment ``first..last``."""
    return f"{chain_dir(prefix, chain)}{first:020d}-{last:020d}.checkpoint"


def parse_key(prefix: str, key: str) -> tuple[str, int, int, str] | None:
    """``(chain, first, last, "segment" | "checkpoint")`` of one of our object names, or None
    for anything else (a foreign object, or a chain not in its canonical encoding)."""
    base = prefix.strip("/")
    rel = key[len(base) + 1 :] if base else key
    if base and not key.startswith(base + "/"):
        return None
    enc, sep, name = rel.partition("/")
    found = _NAME.fullmatch(name)
    if not sep or found is None:
        return None
    chain = unquote(enc)
    if quote(chain, safe="") != enc:
        return None
    return chain, int(found[1]), int(found[2]), _SUFFIX[found[3]]


def parse_s3_url(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://BUCKET/PREFIX`` (the prefix may be empty).

    >>> parse_s3_url("s3://audit-archive/prod/eu")
    ('audit-archive', 'prod/eu')
    """
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise ConfigError(f"{masked_url(url)!r} is not an s3://BUCKET[/PREFIX] URL")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix.strip("/")


def encode_segment(bodies: Sequence[bytes]) -> bytes:
    """One gzip member (RFC 1952) of the records' bytes, a ``\\n`` after each; mtime 0 and
    no file name, so the same records give the same object with the same zlib."""
    return gzip.compress(b"\n".join(bodies) + b"\n", compresslevel=_COMPRESSLEVEL, mtime=0)


def decode_segment(data: bytes) -> list[bytes]:
    """The record bytes in a segment; ValueError unless ``data`` is exactly one complete gzip
    member of newline-terminated lines.

    RFC 1952 §2.2 lets a gzip file hold several members, and Python's ``gzip`` module reads
    them all (and skips trailing zeros): bytes appended after our one member would pass
    unseen, as they did for years in the CloudTrail log file validator. So zlib is driven
    directly (``wbits=31``: gzip framing, CRC-32 and ISIZE checked) and anything left after
    the member is an error.
    """
    # RFC 1952 §2.3.1: ID1 ID2 CM=8 (deflate), FLG=0: no extra field, file name or comment
    # (the sink writes none, so nothing can hide in the header).
    if data[:4] != b"\x1f\x8b\x08\x00":
        raise ValueError("not a gzip member as the sink writes it (magic, deflate, no flags)")
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data) + inflater.flush()
    except zlib.error as exc:
        raise ValueError(f"not a valid gzip member: {exc}") from exc
    if not inflater.eof:
        raise ValueError("the gzip member is truncated (no end of stream, CRC-32 or length)")
    if inflater.unused_data:
        extra = len(inflater.unused_data)
        raise ValueError(
            f"{extra} byte(s) after the end of the gzip member (a segment is exactly one "
            "member: bytes were appended, or a second member was concatenated)"
        )
    if not out.endswith(b"\n"):
        raise ValueError("the records do not end with a newline (truncated or altered)")
    return out[:-1].split(b"\n")


def sha256_b64(data: bytes) -> str:
    """The value of ``x-amz-checksum-sha256``: base64 of the SHA-256 digest."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def s3_client() -> Any:
    """A boto3 S3 client configured from the environment (``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL``, credentials, region), with bounded timeouts and retries."""
    # Imported here: audit_core must import without boto3 (the `s3` extra). boto3 ships no
    # type information, hence Any.
    boto3 = importlib.import_module("boto3")
    config = importlib.import_module("botocore.config").Config(
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=5,
        read_timeout=30,
    )
    return boto3.client("s3", config=config)


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError`` ("" for anything else)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


def boto_errors() -> tuple[type[BaseException], ...]:
    """botocore's two exception roots: ``ClientError`` (the server answered with an error)
    and ``BotoCoreError`` (no answer: connection refused or reset, timeouts, …)."""
    exceptions = importlib.import_module("botocore.exceptions")
    return (exceptions.ClientError, exceptions.BotoCoreError)


def ledger_checkpoints(
    ledger: Ledger, signer: Signer, origin: Callable[[str], str]
) -> Callable[[str, int], str]:
    """A ``checkpoint`` callable for :class:`S3SegmentSink`: the signed note of the chain's
    tree at any size the ledger holds, its RFC 9162 root folded from the ledger's stored
    subtrees (``ledger_checkpoints(trail.ledger, trail.signer, trail.origin)``).

    A root at an earlier size of the same tree is consistent with every checkpoint of that
    tree by construction, so this never signs two inconsistent checkpoints (tlog-checkpoint,
    "Signatures"). Ed25519 signatures are deterministic (RFC 8032), so a re-signed checkpoint
    is byte-identical and its re-upload a no-op."""

    def sign(chain: str, size: int) -> str:
        root = Frontier.at(partial(ledger.node, chain), size).root()
        return sign_note(Checkpoint(origin(chain), size, root).text(), [signer])

    return sign


class _ConflictError(Exception):
    """An object already holds other bytes than the ones this sink would write."""


@dataclass(frozen=True, slots=True)
class _Existing:
    first: int
    last: int
    has_checkpoint: bool


class S3SegmentSink:
    """Delivers each batch as sealed segments in ``s3://bucket/prefix`` (see the module).

    ``checkpoint(chain, size)`` returns the signed checkpoint note of ``chain`` at tree size
    ``size`` (:func:`ledger_checkpoints` makes one from a trail). A bucket without Object
    Lock is refused with :class:`~audit_core.errors.ConfigError` unless ``allow_no_lock``
    (development only); a retention shorter than :data:`MIN_RETENTION_DAYS` unless
    ``allow_short_retention``.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        checkpoint: Callable[[str, int], str],
        mode: str = "COMPLIANCE",
        retention_days: int = 365,
        allow_short_retention: bool = False,
        allow_no_lock: bool = False,
    ) -> None:
        if mode not in LOCK_MODES:
            raise ConfigError(f"Object Lock mode {mode!r} must be one of {', '.join(LOCK_MODES)}")
        if retention_days < 1:
            raise ConfigError(f"retention_days must be at least 1, not {retention_days}")
        if retention_days < MIN_RETENTION_DAYS and not allow_short_retention:
            raise ConfigError(
                f"retention of {retention_days} days is below the EU AI Act Art. 19(1) floor "
                f"of six months ({MIN_RETENTION_DAYS} days); pass allow_short_retention=True "
                "only where that floor does not apply"
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.name = f"s3:{bucket}/{self.prefix}"
        self.mode = mode
        self.retention_days = retention_days
        self.allow_no_lock = allow_no_lock
        self._own_client = client is None
        self._client = s3_client() if client is None else client
        self._checkpoint = checkpoint
        self._errors = boto_errors()
        self._locked: bool | None = None  # None: not checked yet
        # chain -> the seq after the last segment this process wrote or matched, when
        # nothing is known to lie beyond it: the next batch may then be written directly.
        self._next: dict[str, int] = {}
        try:
            self._check_bucket()
        except self._errors as exc:  # the bucket cannot be reached now: check at export
            logger.warning(
                "workflow-audit: cannot check Object Lock on s3://%s yet (%s); "
                "checking before the first upload",
                bucket,
                exc,
            )

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> S3SegmentSink:
        """A sink for ``s3://BUCKET/PREFIX`` (keyword arguments as for the constructor)."""
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, **kwargs)

    # -- Sink protocol ------------------------------------------------------------------

    def export(self, batch: Batch) -> ExportResult:
        """Write the batch's records as segment(s) and checkpoint(s); FAILURE when S3 cannot
        be reached or refuses, or when the bucket already holds different records there."""
        if batch.empty:
            return ExportResult.SUCCESS
        try:
            self._check_bucket()  # ConfigError (no Object Lock) is raised, never retried quietly
            if self._next.get(batch.chain) == batch.first:
                self._put_segment(batch.chain, [r.body for r in batch.records], batch.first)
                self._next[batch.chain] = batch.last + 1
            else:
                self._next.pop(batch.chain, None)
                if self._reconcile(batch):
                    self._next[batch.chain] = batch.last + 1
            return ExportResult.SUCCESS
        except _ConflictError as exc:
            self._next.pop(batch.chain, None)
            COUNTERS.incr("s3_conflicts")
            logger.error(
                "workflow-audit: REFUSING to overwrite in s3://%s: %s. The bucket holds other "
                "records for chain %r than this ledger: another ledger ships to this prefix, "
                "or the ledger was rewritten. Nothing was overwritten; run `workflow-audit "
                "verify` on the ledger and on s3://%s/%s.",
                self.bucket,
                exc,
                batch.chain,
                self.bucket,
                self.prefix,
            )
            return ExportResult.FAILURE
        except self._errors as exc:
            self._next.pop(batch.chain, None)  # the PUT may have landed: look before writing
            logger.warning(
                "workflow-audit: S3 upload to s3://%s failed for chain %r seq %d-%d: %s",
                self.bucket,
                batch.chain,
                batch.first,
                batch.last,
                exc,
            )
            return ExportResult.FAILURE

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Nothing is buffered: each export is durable in S3 when it returns SUCCESS."""
        return True

    def shutdown(self) -> None:
        """Close the client if this sink created it; idempotent."""
        if self._own_client and self._client is not None:
            self._client.close()
        self._client = None

    # -- internals ----------------------------------------------------------------------

    def _check_bucket(self) -> None:
        if self._locked is not None:
            return
        try:
            found = self._client.get_object_lock_configuration(Bucket=self.bucket)
            enabled = found["ObjectLockConfiguration"].get("ObjectLockEnabled") == "Enabled"
        except self._errors as exc:
            code = error_code(exc)
            if code == "NoSuchBucket":
                raise ConfigError(
                    f"bucket {self.bucket!r} does not exist: create it with "
                    f"`workflow-audit s3 init-bucket {self.bucket}`"
                ) from exc
            if code != "ObjectLockConfigurationNotFoundError":
                raise
            enabled = False
        if not enabled and not self.allow_no_lock:
            raise ConfigError(
                f"bucket {self.bucket!r} has no S3 Object Lock: records shipped there could be "
                "deleted or overwritten. Object Lock is set when a bucket is created: use "
                f"`workflow-audit s3 init-bucket BUCKET` for a new bucket (allow_no_lock / "
                "--allow-no-lock is for development only)"
            )
        if not enabled:
            logger.warning(
                "workflow-audit: shipping to s3://%s WITHOUT Object Lock (development only): "
                "these objects can be deleted or overwritten",
                self.bucket,
            )
        self._locked = enabled

    def _put_segment(self, chain: str, bodies: Sequence[bytes], first: int) -> None:
        last = first + len(bodies) - 1
        data = encode_segment(bodies)
        key = segment_key(self.prefix, chain, first, last)
        if not self._put_once(key, data, "application/gzip"):
            existing = self._get(key)
            try:
                same = decode_segment(existing) == list(bodies)
            except ValueError:
                same = False
            if not same:
                raise _ConflictError(f"{key} exists with other records (seq {first}-{last})")
        self._put_checkpoint(chain, first, last)
        COUNTERS.incr("s3_segments_shipped")

    def _put_checkpoint(self, chain: str, first: int, last: int) -> None:
        note = self._checkpoint(chain, last + 1).encode("utf-8")
        key = checkpoint_key(self.prefix, chain, first, last)
        if not self._put_once(key, note, "text/plain; charset=utf-8") and self._get(key) != note:
            raise _ConflictError(f"{key} exists with another checkpoint at tree size {last + 1}")

    def _put_once(self, key: str, data: bytes, content_type: str) -> bool:
        """PUT unless the key exists (If-None-Match: *); False when it does."""
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": data,
            "ContentType": content_type,
            "ChecksumSHA256": sha256_b64(data),
            "IfNoneMatch": "*",
        }
        if self._locked:
            until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=self.retention_days)
            args["ObjectLockMode"] = self.mode
            args["ObjectLockRetainUntilDate"] = until
        try:
            self._client.put_object(**args)
        except self._errors as exc:
            if error_code(exc) == "PreconditionFailed":
                return False
            raise
        return True

    def _get(self, key: str) -> bytes:
        found = self._client.get_object(Bucket=self.bucket, Key=key)
        body: bytes = found["Body"].read()
        return body

    def _existing(self, chain: str) -> list[_Existing]:
        """The chain's segments in the bucket, by first seq (one listing of its prefix)."""
        segments: dict[tuple[int, int], bool] = {}
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=chain_dir(self.prefix, chain)
        )
        for page in pages:
            for item in page.get("Contents", ()):
                parsed = parse_key(self.prefix, item["Key"])
                if parsed is None or parsed[0] != chain:
                    continue
                _, first, last, kind = parsed
                segments[first, last] = segments.get((first, last), False) or (kind == "checkpoint")
        return [_Existing(a, b, cp) for (a, b), cp in sorted(segments.items())]

    def _reconcile(self, batch: Batch) -> bool:
        """Write what the bucket lacks of ``batch`` after checking what it has; True when
        nothing lies in the bucket beyond the batch (the next one may be written directly).

        Needed after a crash or a failed upload: a segment may have landed without the
        shipper's cursor moving, and the batch re-read from the cursor may be longer (more
        records arrived) or shorter (a smaller batch size) than that segment.
        """
        chain, first, end = batch.chain, batch.first, batch.last
        bodies = [r.body for r in batch.records]
        pos, clear = first, True
        for seg in self._existing(chain):
            if seg.last < pos:
                continue
            if seg.first > end:
                clear = False
                break
            if seg.first > pos:  # a hole before a later segment: fill exactly the hole
                self._put_segment(chain, bodies[pos - first : seg.first - first], pos)
                pos = seg.first
            key = segment_key(self.prefix, chain, seg.first, seg.last)
            try:
                held = decode_segment(self._get(key))
            except ValueError as exc:
                raise _ConflictError(f"{key} is not a readable segment ({exc})") from exc
            upto = min(seg.last, end)
            if (
                len(held) != seg.last - seg.first + 1
                or held[pos - seg.first : upto - seg.first + 1]
                != bodies[pos - first : upto - first + 1]
            ):
                raise _ConflictError(
                    f"{key} holds other records than seq {pos}-{upto} of the ledger"
                )
            if not seg.has_checkpoint:
                self._put_checkpoint(chain, seg.first, seg.last)
            logger.info(
                "workflow-audit: s3://%s/%s already holds seq %d-%d (an upload whose "
                "confirmation was lost); not written again",
                self.bucket,
                key,
                pos,
                upto,
            )
            if seg.last > end:
                clear = False
            pos = seg.last + 1
        if pos <= end:
            self._put_segment(chain, bodies[pos - first :], pos)
        return clear
