"""Ship a chain to S3 as sealed, write-once segments under Object Lock.

>>> from audit_core.sinks.s3 import LOCK_MODES, MIN_RETENTION_DAYS
>>> LOCK_MODES, MIN_RETENTION_DAYS
(('COMPLIANCE', 'GOVERNANCE'), 184)

The objects and their bytes (``PREFIX/CHAIN/FIRST-LAST.jsonl.gz`` and its
``….checkpoint``) are the segment format of :mod:`audit_core._segment`, which bucket
verification (:mod:`audit_core.bucket`) reads too; this module is the writer.

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

Witness-cosigned checkpoints (:meth:`S3SegmentSink.export_cosigned`, the optional
:class:`~audit_core.sinks.CosignedSink` capability) are written the same way, once each,
under content-addressed names (``CHAIN/cosigned/SIZE-DIGEST.checkpoint``); the sink lists a
chain's ``cosigned/`` once per process and skips what is there.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from audit_core._metrics import COUNTERS
from audit_core._segment import (
    LOCK_MODES,
    MIN_RETENTION_DAYS,
    chain_dir,
    checkpoint_key,
    cosigned_dir,
    cosigned_key,
    decode_segment,
    encode_segment,
    parse_key,
    segment_key,
    sha256_b64,
)
from audit_core.checkpoint import ledger_checkpoints
from audit_core.errors import ConfigError
from audit_core.ledgers import masked_url
from audit_core.sinks import Batch, Cosigned, ExportResult

# The segment format's names (audit_core/_segment.py) and ledger_checkpoints (checkpoint.py)
# stay importable from here, where users of the sink found them before #12.
__all__ = [
    "LOCK_MODES",
    "MIN_RETENTION_DAYS",
    "S3SegmentSink",
    "boto_errors",
    "decode_segment",
    "encode_segment",
    "error_code",
    "ledger_checkpoints",
    "parse_key",
    "parse_s3_url",
    "s3_client",
    "segment_key",
]

logger = logging.getLogger("workflow_audit")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://BUCKET/PREFIX`` (the prefix may be empty).

    >>> parse_s3_url("s3://audit-archive/prod/eu")
    ('audit-archive', 'prod/eu')
    """
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise ConfigError(f"{masked_url(url)!r} is not an s3://BUCKET[/PREFIX] URL")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix.strip("/")


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
    ``size`` (:func:`audit_core.checkpoint.ledger_checkpoints` makes one from a ledger). A
    bucket without Object Lock is refused with :class:`~audit_core.errors.ConfigError`
    unless ``allow_no_lock`` (development only); a retention shorter than
    :data:`MIN_RETENTION_DAYS` unless ``allow_short_retention``.
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
        self._cosigned: dict[str, set[str]] = {}  # chain -> cosigned objects known to be there
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

    def export_cosigned(self, cosigned: Sequence[Cosigned]) -> ExportResult:
        """Write each cosigned checkpoint under its content-addressed name unless the bucket
        holds it; FAILURE when S3 cannot be reached or refuses (nothing is overwritten)."""
        try:
            self._check_bucket()
            for item in cosigned:
                data = item.note.encode("utf-8")
                key = cosigned_key(self.prefix, item.chain, item.size, data)
                held = self._cosigned_held(item.chain)
                if key in held:
                    continue
                written = self._put_once(key, data, "text/plain; charset=utf-8")
                if not written and self._get(key) != data:  # 64 bits of SHA-256 agree
                    COUNTERS.incr("s3_conflicts")
                    logger.error(
                        "workflow-audit: REFUSING to overwrite s3://%s/%s", self.bucket, key
                    )
                    return ExportResult.FAILURE
                held.add(key)
                COUNTERS.incr("s3_cosigned_shipped")
        except self._errors as exc:
            logger.warning(
                "workflow-audit: S3 upload of cosigned checkpoints to s3://%s failed: %s",
                self.bucket,
                exc,
            )
            return ExportResult.FAILURE
        return ExportResult.SUCCESS

    def _cosigned_held(self, chain: str) -> set[str]:
        """The chain's cosigned objects in the bucket: listed once, then remembered."""
        held = self._cosigned.get(chain)
        if held is None:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=cosigned_dir(self.prefix, chain)
            )
            held = {item["Key"] for page in pages for item in page.get("Contents", ())}
            self._cosigned[chain] = held
        return held

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
