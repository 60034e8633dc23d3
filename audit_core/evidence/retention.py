"""The evidence pack's retention section: is every object holding the period's records locked
long enough, in a mode nobody can lift?

EU AI Act Art. 19(1) and 26(6) ask that logs be kept at least six months
(:data:`~audit_core._segment.MIN_RETENTION_DAYS` days); NIST SP 800-53 AU-11 asks for a
retention the organisation defines. The ledger alone cannot prove its own retention: the
shipped copy in S3 can, when S3 Object Lock guards it (S3 User Guide, "Locking objects with
Object Lock"). :func:`check_retention` reads, for each chain's seq range of the period
(:class:`ChainSpan`), every segment object ``PREFIX/CHAIN/FIRST-LAST.jsonl.gz`` whose range
overlaps it and its ``.checkpoint`` (layout in :mod:`audit_core._segment`), and asks S3 for
each object's retention (GetObjectRetention) and legal hold (GetObjectLegalHold). An object
passes when:

- its mode is ``COMPLIANCE`` ("no user, including the root user, can overwrite or delete a
  protected object version ... or shorten its retention"); ``GOVERNANCE`` fails, since a user
  with ``s3:BypassGovernanceRetention`` can delete it;
- its retain-until date is at least ``min_days`` days after the latest record time among the
  period's records it holds (a checkpoint object: those of its segment), so every record of
  the period stays protected six months past its own time.

Seqs of the period that no segment object holds were never shipped: listed as
``uncovered`` (inclusive ``from``/``to`` seqs), and the section fails. A bucket without
Object Lock, a missing bucket, denied access or an unreachable endpoint fail the section with
a plain sentence in ``error`` (never an exception's text: it may name the endpoint).

The cost is one listing (ListObjectVersions) per chain and two small requests per object,
made by a few threads. The version read is the object's first (the one the sink wrote and
Object Lock protects; a later version is what :func:`audit_core.bucket.verify_bucket`
reports as a replacement).

>>> parse_bucket_url("s3://audit-archive/prod/eu")
('audit-archive', 'prod/eu')
>>> not_checked("no --s3 bucket given")["verdict"]
'NOT CHECKED'
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from audit_core._segment import MIN_RETENTION_DAYS, chain_dir, parse_key
from audit_core.bucket import list_versions
from audit_core.errors import ConfigError
from audit_core.ledgers import masked_url
from audit_core.sinks.s3 import boto_errors, error_code, parse_s3_url

__all__ = ["ChainSpan", "RetentionResult", "check_retention", "not_checked", "parse_bucket_url"]

#: Objects listed in the section (the pack's ``retention/objects.jsonl`` holds them all).
LISTED = 20
#: Threads reading retention and legal hold (boto3 clients are thread-safe).
WORKERS = 8
REQUIRED_MODE = "COMPLIANCE"
#: S3 bucket naming rules (S3 User Guide, "Bucket naming rules"), general-purpose buckets.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
#: "Nothing set" answers: AWS says NoSuchObjectLockConfiguration for an object without
#: retention; SeaweedFS says ObjectLockConfigurationNotFoundError; no legal hold:
#: NoSuchObjectLegalHold (both).
_ABSENT = frozenset(
    {
        "NoSuchObjectLockConfiguration",
        "ObjectLockConfigurationNotFoundError",
        "NoSuchObjectLegalHold",
    }
)
_DENIED = frozenset({"AccessDenied", "403", "AllAccessDisabled"})
_BAD_CREDENTIALS = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
)
_DENIED_HINT = (
    "the credentials need s3:ListBucketVersions, s3:GetBucketVersioning, "
    "s3:GetBucketObjectLockConfiguration, s3:GetObjectRetention and s3:GetObjectLegalHold"
)


@dataclass(frozen=True, slots=True)
class ChainSpan:
    """A chain's seq range of the period: ``[lo, hi)``."""

    chain: str
    lo: int  # first seq of the period on this chain
    hi: int  # one past the last


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """The report's ``retention`` section, and every object checked (sorted by key: the
    pack's ``retention/objects.jsonl``)."""

    section: dict[str, Any]
    objects: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class _Found:
    """One listed segment or checkpoint object overlapping a span."""

    key: str
    chain: str
    first: int
    last: int
    kind: str
    version: str
    lo: int  # the overlap with the span, inclusive
    hi: int


def parse_bucket_url(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://BUCKET[/PREFIX]``; :class:`ConfigError` otherwise
    (the URL masked in the message: it may hold credentials)."""
    bucket, prefix = parse_s3_url(url)
    if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"{masked_url(url)!r}: not an S3 bucket name (3-63 lowercase letters, digits, "
            "dots and hyphens): expected s3://BUCKET[/PREFIX]"
        )
    return bucket, prefix


def not_checked(reason: str) -> dict[str, Any]:
    """The section when no bucket was checked (every key present, values empty)."""
    return {
        "checked": False,
        "verdict": "NOT CHECKED",
        "reason": reason,
        "bucket": "",
        "versioning": "",
        "lock_configuration": {"enabled": False, "mode": None, "days": None, "years": None},
        "required": {"mode": REQUIRED_MODE, "min_days": MIN_RETENTION_DAYS},
        "objects": 0,
        "ok": 0,
        "problem_count": 0,
        "problems": [],
        "uncovered": [],
        "listed": [],
        "error": None,
    }


def check_retention(
    client: Any,
    bucket: str,
    prefix: str,
    spans: Sequence[ChainSpan],
    latest_ts: Callable[[str, int, int], str | None],
    *,
    min_days: int = MIN_RETENTION_DAYS,
    max_listed: int = 50,
) -> RetentionResult:
    """Check the Object Lock of every object under ``s3://bucket/prefix`` holding a seq of
    ``spans`` (see the module). ``latest_ts(chain, first, last)`` is the latest record time
    of seqs ``first..last`` (inclusive) of the chain, from the ledger; it is called in this
    thread only."""
    prefix = prefix.strip("/")
    section = not_checked("")
    section.update(
        checked=True,
        bucket=f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}",
        required={"mode": REQUIRED_MODE, "min_days": min_days},
    )
    try:
        status = client.get_bucket_versioning(Bucket=bucket).get("Status")
        section["versioning"] = str(status or "Disabled")
        section["lock_configuration"] = _lock_configuration(client, bucket)
        found, uncovered = _list(client, bucket, prefix, spans)
        section["uncovered"] = uncovered
        locked = bool(section["lock_configuration"]["enabled"])
        if not locked:
            section["error"] = (
                f"bucket {bucket!r} has no S3 Object Lock: its objects can be deleted or "
                "overwritten by anyone with write access, so their retention is not proven"
            )
        required = _required(found, latest_ts, min_days)
        locks = _read_locks(client, bucket, found) if locked else [(None, None, False)] * len(found)
    except boto_errors() as exc:
        section.update(verdict="FAIL", error=_error_sentence(exc, bucket))
        section["reason"] = section["error"]
        return RetentionResult(section, ())
    objects = [
        _judge(obj, mode, until, hold, required[obj.chain, obj.lo, obj.hi], locked)
        for obj, (mode, until, hold) in zip(found, locks, strict=True)
    ]
    objects.sort(key=lambda o: str(o["key"]))
    return RetentionResult(_summary(section, objects, min_days, max_listed), tuple(objects))


def _lock_configuration(client: Any, bucket: str) -> dict[str, Any]:
    """The bucket's Object Lock configuration (GetObjectLockConfiguration)."""
    out: dict[str, Any] = {"enabled": False, "mode": None, "days": None, "years": None}
    try:
        config = client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    except boto_errors()[0] as exc:  # ClientError: S3 said no
        if error_code(exc) != "ObjectLockConfigurationNotFoundError":
            raise
        return out
    default = config.get("Rule", {}).get("DefaultRetention", {})
    enabled = config.get("ObjectLockEnabled") == "Enabled"
    return {"enabled": enabled, **{k.lower(): default.get(k) for k in ("Mode", "Days", "Years")}}


def _list(
    client: Any, bucket: str, prefix: str, spans: Sequence[ChainSpan]
) -> tuple[list[_Found], list[dict[str, Any]]]:
    """The objects overlapping each span (one listing per chain), and the spans' seqs that
    no segment object holds."""
    found: list[_Found] = []
    uncovered: list[dict[str, Any]] = []
    listed: dict[str, dict[str, list[dict[str, Any]]]] = {}
    seen: set[str] = set()  # one span per chain is expected; never one object twice
    for span in spans:
        if span.hi <= span.lo:
            continue
        if span.chain not in listed:
            listed[span.chain] = list_versions(client, bucket, chain_dir(prefix, span.chain))[0]
        segments: list[tuple[int, int]] = []
        for key, held in sorted(listed[span.chain].items()):
            parsed = parse_key(prefix, key)
            if parsed is None or parsed[0] != span.chain or not held:
                continue  # not ours, or every version deleted (no delete marker hides one)
            chain, first, last, kind = parsed
            if first > last or last < span.lo or first >= span.hi or key in seen:
                continue
            seen.add(key)
            oldest = min(held, key=lambda v: v["LastModified"])
            lo, hi = max(first, span.lo), min(last, span.hi - 1)
            found.append(_Found(key, chain, first, last, kind, str(oldest["VersionId"]), lo, hi))
            if kind == "segment":
                segments.append((first, last))
        uncovered += _holes(span, sorted(segments))
    return found, sorted(uncovered, key=lambda u: (u["chain"], u["from"]))


def _holes(span: ChainSpan, segments: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """The seqs of ``[span.lo, span.hi)`` outside every segment, as inclusive ranges."""
    out, pos = [], span.lo
    for first, last in segments:
        if first > pos:
            out.append({"chain": span.chain, "from": pos, "to": first - 1})
        pos = max(pos, last + 1)
    if pos < span.hi:
        out.append({"chain": span.chain, "from": pos, "to": span.hi - 1})
    return out


def _required(
    found: Sequence[_Found], latest_ts: Callable[[str, int, int], str | None], min_days: int
) -> dict[tuple[str, int, int], tuple[str | None, dt.datetime | None]]:
    """Per overlap: the latest record time and the date retention must reach."""
    out: dict[tuple[str, int, int], tuple[str | None, dt.datetime | None]] = {}
    for obj in found:
        where = (obj.chain, obj.lo, obj.hi)
        if where not in out:
            ts = latest_ts(*where)
            # to the second: S3 keeps retain-until dates to the second (ISO 8601 in the API)
            need = None
            if ts is not None:
                need = (_parse_ts(ts) + dt.timedelta(days=min_days)).replace(microsecond=0)
            out[where] = (ts, need)
    return out


def _read_locks(
    client: Any, bucket: str, found: Sequence[_Found]
) -> list[tuple[str | None, dt.datetime | None, bool]]:
    """Each object's (mode, retain-until, legal hold), read by a few threads."""

    def read(obj: _Found) -> tuple[str | None, dt.datetime | None, bool]:
        where = {"Bucket": bucket, "Key": obj.key, "VersionId": obj.version}
        mode, until, hold = None, None, False
        try:
            retention = client.get_object_retention(**where).get("Retention", {})
            mode, until = retention.get("Mode"), retention.get("RetainUntilDate")
        except boto_errors()[0] as exc:  # ClientError: S3 said no
            if error_code(exc) not in _ABSENT:
                raise
        try:
            hold = client.get_object_legal_hold(**where).get("LegalHold", {}).get("Status") == "ON"
        except boto_errors()[0] as exc:  # ClientError: S3 said no
            if error_code(exc) not in _ABSENT:
                raise
        return (None if mode is None else str(mode)), until, hold

    if not found:
        return []
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="wa-retention") as pool:
        return list(pool.map(read, found))


def _judge(
    obj: _Found,
    mode: str | None,
    until: dt.datetime | None,
    hold: bool,
    required: tuple[str | None, dt.datetime | None],
    locked: bool,
) -> dict[str, Any]:
    """One line of ``retention/objects.jsonl``: the object, its lock, and the verdict."""
    ts, need = required
    reason = ""
    if not locked:
        reason = "the bucket has no Object Lock: anyone with write access can delete it"
    elif mode is None or until is None:
        reason = "no Object Lock retention: anyone with write access can delete it"
        if hold:
            reason += " once its legal hold is lifted (s3:PutObjectLegalHold)"
    elif mode == "GOVERNANCE":
        reason = "GOVERNANCE mode: a user with s3:BypassGovernanceRetention can delete it"
    elif mode != REQUIRED_MODE:
        reason = f"{mode} mode: only COMPLIANCE mode keeps every user from deleting it"
    elif need is None:
        reason = (
            f"the ledger holds no record time for seqs {obj.lo}-{obj.hi} of chain "
            f"{obj.chain!r}: the retention it needs cannot be computed"
        )
    elif until < need:
        reason = (
            f"retained until {_iso(until)}, before {_iso(need)} (its latest record of the "
            f"period, at {ts}, plus the required days)"
        )
    return {
        "key": obj.key,
        "chain": obj.chain,
        "first": obj.first,
        "last": obj.last,
        "kind": obj.kind,
        "version": obj.version,
        "mode": mode,
        "retain_until": None if until is None else _iso(until),
        "legal_hold": hold,
        "required_until": None if need is None else _iso(need),
        "ok": not reason,
        "reason": reason,
    }


def _summary(
    section: dict[str, Any], objects: list[dict[str, Any]], min_days: int, max_listed: int
) -> dict[str, Any]:
    problems = [o for o in objects if not o["ok"]]
    uncovered = section["uncovered"]
    section.update(
        objects=len(objects),
        ok=len(objects) - len(problems),
        problem_count=len(problems),
        problems=problems[:max_listed],
        listed=[
            {"key": o["key"], "mode": o["mode"], "retain_until": o["retain_until"]}
            for o in objects[:LISTED]
        ],
    )
    if section["error"] is None and not problems and not uncovered:
        section["verdict"] = "PASS"
        section["reason"] = (
            f"all {len(objects)} segment and checkpoint objects holding the period's records "
            f"are locked in COMPLIANCE mode at least {min_days} days past their latest record"
        )
        return section
    section["verdict"] = "FAIL"
    parts = [] if section["error"] is None else [section["error"]]
    if problems:
        parts.append(
            f"{len(problems)} of {len(objects)} objects holding the period's records "
            f"{'is' if len(problems) == 1 else 'are'} not locked in COMPLIANCE mode "
            f"{min_days} days past their latest record"
        )
    if uncovered:
        seqs = sum(u["to"] - u["from"] + 1 for u in uncovered)
        parts.append(f"{seqs} record(s) of the period were never shipped to the bucket")
    section["reason"] = "; ".join(parts)
    return section


def _error_sentence(exc: BaseException, bucket: str) -> str:
    """A plain sentence for a failed S3 request: the error code and operation, never the
    exception's text (it may name the endpoint URL)."""
    code = error_code(exc)
    operation = str(getattr(exc, "operation_name", "") or "the request")
    if code in ("NoSuchBucket", "404", "NotFound"):
        return f"bucket {bucket!r} does not exist (or is in another account or region)"
    if code in _BAD_CREDENTIALS:
        return (
            f"S3 did not accept the credentials for bucket {bucket!r} ({code}): check "
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN"
        )
    if code in _DENIED:
        return f"S3 denied {operation} on bucket {bucket!r} ({code}): {_DENIED_HINT}"
    if code:
        return f"S3 refused {operation} on bucket {bucket!r} ({code})"
    if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
        return (
            f"no AWS credentials found for bucket {bucket!r} ({type(exc).__name__}): set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile or role)"
        )
    return (
        f"cannot reach the S3 endpoint for bucket {bucket!r} ({type(exc).__name__}): check "
        "AWS_ENDPOINT_URL_S3, the network and the region"
    )


def _parse_ts(ts: str) -> dt.datetime:
    """A record time (RFC 3339, UTC, ``Z``) as an aware datetime."""
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(dt.timezone.utc)


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
