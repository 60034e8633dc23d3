"""Verify chains from an S3 bucket alone: objects, Object Lock, segments, records, checkpoints.

>>> from audit_core.bucket import RetentionPolicy
>>> policy = RetentionPolicy()
>>> policy.mode, policy.min_retention_days
('COMPLIANCE', 365)

:func:`verify_bucket` reads what :class:`~audit_core.sinks.s3.S3SegmentSink` wrote under
``s3://BUCKET/PREFIX`` (layout in :mod:`audit_core._segment`) and returns one
:class:`BucketChain` per chain, or raises the precise
:class:`~audit_core.errors.VerificationError` for the first problem, naming the object, the
chain and the seq. In this order:

1. Versions. Every object has exactly one version and no delete marker. Under Object Lock
   nobody can remove a locked version, so a replacement shows as a second version and a
   deletion as a delete marker (S3 User Guide, "How S3 Versioning works"): both fail here
   (:class:`SegmentError`), with the original version named.
2. Ranges. Per chain, the segments' names cover seq 0, 1, 2, … with no gap and no overlap,
   and each segment has its checkpoint and each checkpoint its segment.
3. Checkpoints: Object Lock, the signature of every trusted key (C2SP signed-note), origin
   ``…/CHAIN``, tree size = the segment's last seq + 1.
4. Segments, in seq order: Object Lock; the stored ``x-amz-checksum-sha256`` is the SHA-256
   of the bytes; exactly one gzip member with nothing after it (RFC 1952); then every record
   through the same checks as a ledger (:func:`audit_core._chain.verify_records`: seq, hash,
   canonical form, format, ``prev`` link) and the RFC 9162 Merkle root at each checkpoint.
5. With ``witnesses`` (``verify s3://… --witness KEY --quorum K``): the chain's cosigned
   objects (``CHAIN/cosigned/…``, Object Lock checked as above, each signed by the log's
   keys) must give one checkpoint ``quorum`` valid cosignatures, and every checkpoint a
   trusted witness cosigned must match the records' root at its size
   (:mod:`audit_core._bucket_witness`, :func:`audit_core.quorum.check_witnessed`).

Object Lock is checked against a :class:`RetentionPolicy`: no lock, GOVERNANCE mode (which
users with ``s3:BypassGovernanceRetention`` can lift) where COMPLIANCE is required, or a
retain-until date less than ``min_retention_days`` after the object was written fail with
:class:`RetentionError`. Segments are downloaded by a few threads ahead of the one that
verifies, in order, so memory stays bounded by the window, not the chain; with ``jobs`` > 1
a large chain's records are verified in several processes, as ``verify --jobs`` does for a
ledger (:mod:`audit_core._parallel`), and any failure there again in one, for the exact error.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import multiprocessing
import threading
from collections import deque
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from audit_core._bucket_witness import (
    bucket_witnessed,
    cosigned_claims,
    cosigned_groups,
    cosigned_sizes,
)
from audit_core._chain import ChainHead, TreeHeadClaim, scan_records, verify_records_at
from audit_core._cosign import WitnessKey
from audit_core._merkle import EMPTY_ROOT
from audit_core._note import Verifier, unverified_text
from audit_core._parallel import MIN_RECORDS_PER_JOB, RANGES_PER_JOB, RangeResult, combine
from audit_core._record import StoredRecord
from audit_core._segment import (
    LOCK_MODES,
    checkpoint_key,
    decode_segment,
    parse_cosigned_key,
    parse_key,
    segment_key,
    sha256_b64,
)
from audit_core.checkpoint import Checkpoint, open_checkpoint
from audit_core.errors import (
    CheckpointError,
    ConfigError,
    HeadMismatchError,
    RetentionError,
    SegmentError,
    SequenceError,
    SignatureError,
    VerificationError,
)
from audit_core.quorum import CosignedCheckpoint, Witnessed, chain_origins, merge_cosigned
from audit_core.verify import (  # one quorum and origin rule for ledger and bucket alike
    OnlineCosigned,
    check_quorum,
    origin_prefixes,
)

__all__ = [
    "BucketChain",
    "RetentionError",
    "RetentionPolicy",
    "SegmentError",
    "list_versions",
    "verify_bucket",
]

logger = logging.getLogger("workflow_audit")
T = TypeVar("T")
R = TypeVar("R")

#: Clock skew allowed between the writer (which computes retain-until) and the server
#: (which stamps LastModified).
_CLOCK_SLACK = dt.timedelta(hours=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionPolicy:
    """What Object Lock every object must carry. ``mode="GOVERNANCE"`` accepts either mode;
    ``require_lock=False`` skips the lock checks (development buckets only)."""

    mode: str = "COMPLIANCE"
    min_retention_days: int = 365
    require_lock: bool = True

    def __post_init__(self) -> None:
        if self.mode not in LOCK_MODES:
            raise ConfigError(f"Object Lock mode {self.mode!r} must be one of {LOCK_MODES}")


@dataclass(frozen=True, slots=True)
class BucketChain:
    """A chain verified from a bucket: its head, how many segments, the Object Lock seen
    (the modes, and the earliest retain-until date of its objects), and with witnesses the
    checkpoints a quorum cosigned, smallest first (also in ``head.witnessed``)."""

    head: ChainHead
    segments: int
    modes: tuple[str, ...] = ()
    retained_until: dt.datetime | None = None
    witnessed: tuple[Witnessed, ...] = ()

    def to_json(self) -> dict[str, object]:
        # the head's JSON carries "witnessed" (the latest, and how many) when there are any
        return {
            **replace(self.head, witnessed=self.witnessed).to_json(),
            "segments": self.segments,
            "lock_modes": list(self.modes),
            "retained_until": None if self.retained_until is None else _iso(self.retained_until),
        }


@dataclass(frozen=True, slots=True)
class _Object:
    key: str
    version: str
    written: dt.datetime
    chain: str
    first: int


@dataclass(slots=True)
class _Range:
    first: int
    last: int
    segment: _Object | None = None
    checkpoint: _Object | None = None


@dataclass(slots=True)
class _Lock:
    modes: set[str] = field(default_factory=set)
    until: dt.datetime | None = None

    def merge(self, modes: Iterable[str], until: dt.datetime | None) -> None:
        self.modes.update(modes)
        if until is not None and (self.until is None or until < self.until):
            self.until = until


@dataclass(frozen=True, slots=True)
class _Run:
    """One verification's settings."""

    client: Any
    bucket: str
    prefix: str
    keys: Sequence[Verifier]
    policy: RetentionPolicy
    workers: int
    jobs: int
    client_factory: Callable[[], Any] | None
    witnesses: Sequence[WitnessKey] = ()
    quorum: int = 0
    origin: str | None = None
    online: OnlineCosigned | None = None


#: The ``hash`` of a record read from a segment: segments store no record hashes, so the
#: chain checks run with ``stored_hashes=False`` and never read it.
_NO_STORED_HASH = b""


def verify_bucket(
    client: Any,
    bucket: str,
    prefix: str = "",
    *,
    keys: Sequence[Verifier] = (),
    chains: Sequence[str] | None = None,
    policy: RetentionPolicy | None = None,
    workers: int = 8,
    jobs: int = 1,
    client_factory: Callable[[], Any] | None = None,
    on_progress: Callable[[str, int], None] | None = None,
    witnesses: Sequence[WitnessKey] = (),
    quorum: int = 0,
    origin: str | None = None,
    online: OnlineCosigned | None = None,
) -> list[BucketChain]:
    """Verify every chain under ``s3://bucket/prefix`` (or ``chains``, each of which must be
    there) with ``client`` (boto3, S3). With ``keys``, each checkpoint must be signed by every
    one; without, signatures are not checked (only roots).

    ``workers`` threads download ahead of verification. ``jobs`` > 1 verifies the records of
    a large chain in that many processes, each with its own client from ``client_factory``
    (picklable: a module-level function such as :func:`audit_core.sinks.s3.s3_client`); any
    failure there is verified again in this process, for the exact error.

    With ``witnesses``, each chain must hold, in its cosigned objects, a checkpoint
    cosigned by ``quorum`` of them (0: all), and every checkpoint a trusted witness cosigned
    must match the records (:class:`~audit_core.errors.QuorumError` otherwise); the
    witnessed checkpoints are in :attr:`BucketChain.witnessed`. ``origin`` and ``online``
    as for :func:`audit_core.verify.verify_chain`; a chain with cosigned objects but no
    segments was deleted (invalid)."""
    policy = policy or RetentionPolicy()
    if jobs > 1 and client_factory is None:
        raise ConfigError("jobs > 1 needs a client_factory: each process makes its own client")
    quorum = check_quorum(witnesses, quorum)
    if witnesses:
        origin_prefixes(origin, keys)  # a usage error before anything is read
    run = _Run(
        client,
        bucket,
        prefix,
        keys,
        policy,
        workers,
        jobs,
        client_factory,
        witnesses,
        quorum,
        origin,
        online,
    )
    found, cosigned = _list(client, bucket, prefix)
    if chains is None:  # with witnesses, a chain that kept only its cosigned objects counts
        names = sorted(set(found) | (set(cosigned) if witnesses else set()))
    else:
        names = list(chains)
    out = []
    for chain in names:
        ranges = found.get(chain)
        if not ranges:
            raise HeadMismatchError(
                f"s3://{bucket}/{prefix}: no segments of chain {chain!r} (never shipped, or "
                "another prefix)",
                chain=chain,
                seq=None,
                expected="at least one segment",
                found="none",
            )
        progress = None if on_progress is None else _bind(on_progress, chain)
        out.append(_verify_chain(run, chain, ranges, cosigned.get(chain, []), progress))
    return out


def list_versions(
    client: Any, bucket: str, under: str
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """Every version and every delete marker of the objects whose key starts with ``under``
    (S3 ListObjectVersions, 1,000 a request), each as S3 lists it, per key: ``(versions,
    markers)``. Shared by bucket verification and the evidence pack's retention check."""
    versions: dict[str, list[dict[str, Any]]] = {}
    markers: dict[str, list[dict[str, Any]]] = {}
    pages = client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=under)
    for page in pages:
        for item in page.get("Versions", ()):
            versions.setdefault(item["Key"], []).append(item)
        for item in page.get("DeleteMarkers", ()):
            markers.setdefault(item["Key"], []).append(item)
    return versions, markers


def _list(
    client: Any, bucket: str, prefix: str
) -> tuple[dict[str, list[_Range]], dict[str, list[_Object]]]:
    """Our objects under the prefix, per chain: the segments' ranges in seq order and the
    cosigned checkpoints by size; step 1 (versions) on the way."""
    base = prefix.strip("/")
    versions, markers = list_versions(client, bucket, f"{base}/" if base else "")
    by_chain: dict[str, dict[tuple[int, int], _Range]] = {}
    cosigned: dict[str, list[_Object]] = {}
    problems: list[tuple[str, int, SegmentError]] = []
    for key in sorted(versions.keys() | markers.keys()):
        parsed = parse_key(base, key)
        cosigned_as = parse_cosigned_key(base, key) if parsed is None else None
        if parsed is not None:
            chain, first, last, kind = parsed
        elif cosigned_as is not None:  # seq: the cosigned checkpoint's size
            chain, first, last, kind = cosigned_as[0], cosigned_as[1], -1, "cosigned"
        else:
            continue  # not ours: nothing a verifier of this layout can say about it
        held = sorted(versions.get(key, ()), key=lambda v: v["LastModified"])
        problem = _version_problem(key, chain, first, held, markers.get(key, []))
        if problem is not None:
            problems.append((chain, first, problem))
            continue
        if kind == "cosigned":
            obj = _Object(key, str(held[0]["VersionId"]), held[0]["LastModified"], chain, first)
            cosigned.setdefault(chain, []).append(obj)
            continue
        ranges = by_chain.setdefault(chain, {})
        entry = ranges.setdefault((first, last), _Range(first, last))
        obj = _Object(key, str(held[0]["VersionId"]), held[0]["LastModified"], chain, first)
        if kind == "segment":
            entry.segment = obj
        else:
            entry.checkpoint = obj
    if problems:
        raise min(problems, key=lambda p: (p[0], p[1]))[2]
    ranges_of = {c: [r[k] for k in sorted(r)] for c, r in by_chain.items()}
    return ranges_of, {c: sorted(o, key=lambda x: x.key) for c, o in cosigned.items()}


def _version_problem(
    key: str,
    chain: str,
    first: int,
    held: list[dict[str, Any]],
    markers: list[dict[str, Any]],
) -> SegmentError | None:
    found = f"{len(held)} version(s), {len(markers)} delete marker(s)"
    expected = "exactly one version, no delete marker"
    if markers:
        marker = max(markers, key=lambda m: m["LastModified"])
        kept = (
            f"its version {held[0]['VersionId']} of {_iso(held[0]['LastModified'])} is still in "
            "the bucket: read it with --version-id, and find who deleted it"
            if held
            else "no version of it is left (the bucket did not protect it)"
        )
        return SegmentError(
            f"object {key}: hidden by a delete marker of {_iso(marker['LastModified'])} "
            f"(version {marker['VersionId']}): someone deleted it; {kept}",
            chain=chain,
            seq=first,
            expected=expected,
            found=found,
        )
    if len(held) > 1:
        return SegmentError(
            f"object {key}: replaced by a new version on {_iso(held[-1]['LastModified'])} "
            f"(version {held[-1]['VersionId']}); the original, version {held[0]['VersionId']} "
            f"of {_iso(held[0]['LastModified'])}, is still in the bucket: compare the two and "
            "find who wrote the new one",
            chain=chain,
            seq=first,
            expected=expected,
            found=found,
        )
    return None


def _verify_chain(
    run: _Run,
    chain: str,
    ranges: list[_Range],
    cosigned: list[_Object],
    on_progress: Callable[[int], None] | None,
) -> BucketChain:
    segments = _check_ranges(run.prefix, chain, ranges)
    lock = _Lock()
    client, bucket = run.client, run.bucket

    def fetch(obj: _Object) -> tuple[bytes, dict[str, Any]]:
        return _get(client, bucket, obj)

    def done(head: ChainHead, roots: dict[int, bytes]) -> BucketChain:
        found: tuple[Witnessed, ...] = ()
        if run.witnesses:
            found = tuple(
                bucket_witnessed(
                    chain,
                    groups,
                    run.witnesses,
                    run.quorum,
                    size=size,
                    roots=roots,
                    origins=origins,
                    unseen=unseen,
                )
            )
        head = replace(head, witnessed=found)
        return BucketChain(head, len(segments), tuple(sorted(lock.modes)), lock.until, found)

    size = segments[-1][0].last + 1
    origins = (
        chain_origins(chain, origin_prefixes(run.origin, run.keys))
        if run.witnesses
        else frozenset()
    )
    groups = _cosigned_groups(run, chain, cosigned, lock, fetch, origins) if run.witnesses else []
    unseen = False
    if run.witnesses and run.online is not None:
        fetched_online, unseen = run.online(chain, origins)
        groups = merge_cosigned(groups, fetched_online)
    sizes = cosigned_sizes(groups, size)
    with ExitStack() as stack:
        started = None
        if run.jobs > 1 and run.client_factory is not None and size >= 2 * MIN_RECORDS_PER_JOB:
            # the processes start now, while this one checks the checkpoints
            started = _start_processes(run, chain, segments, stack, sizes)
        claims: list[TreeHeadClaim] = []
        checkpoints = [(r, r.checkpoint) for r in ranges if r.checkpoint is not None]
        fetched_checkpoints = stack.enter_context(
            closing(_ahead(fetch, [o for _, o in checkpoints], run.workers))
        )
        for (rng, obj), (data, meta) in zip(checkpoints, fetched_checkpoints, strict=True):
            _check_object(run.policy, chain, rng.first, obj, data, meta, lock)
            claims.append(_claim(chain, rng, obj.key, data, run.keys))
        if started is not None:
            # each cosigned size is a claim there: all hold, or the run below names which not
            extra = cosigned_claims(groups, size)
            head = _finish_processes(chain, size, [*claims, *extra], lock, on_progress, *started)
            if head is not None:
                roots = {g.checkpoint.size: g.checkpoint.root for g in groups}
                roots[0] = EMPTY_ROOT  # the claims were the sizes above 0
                return done(replace(head, checkpoints=len(claims)), roots)

    current: list[_Range] = []
    fetched = _ahead(fetch, [obj for _, obj in segments], run.workers)
    records = _segment_records(chain, segments, fetched, run.policy, lock, current)
    try:
        with closing(fetched):  # its threads end here, also when verification fails
            head, roots = verify_records_at(
                chain,
                records,
                claims=claims,
                sizes=sizes,
                on_progress=on_progress,
                stored_hashes=False,
            )
    except (SegmentError, RetentionError, CheckpointError):
        raise
    except VerificationError as exc:
        where = current[0] if current else None
        if where is None or exc.seq is None or not where.first <= exc.seq <= where.last:
            raise
        key = segment_key(run.prefix, chain, where.first, where.last)
        raise type(exc)(
            f"object {key}: {exc}",
            chain=exc.chain,
            seq=exc.seq,
            expected=exc.expected,
            found=exc.found,
        ) from exc
    return done(head, roots)


def _cosigned_groups(
    run: _Run,
    chain: str,
    cosigned: list[_Object],
    lock: _Lock,
    fetch: Callable[[_Object], tuple[bytes, dict[str, Any]]],
    origins: Collection[str],
) -> list[CosignedCheckpoint]:
    """Step 5's objects: each locked and checksummed as a segment is, then grouped."""
    objects = []
    with closing(_ahead(fetch, cosigned, run.workers)) as fetched:
        for obj, (data, meta) in zip(cosigned, fetched, strict=True):
            _check_object(run.policy, chain, obj.first, obj, data, meta, lock)
            objects.append((obj.key, data))
    return cosigned_groups(chain, run.prefix, objects, run.keys, origins)


def _segment_records(
    chain: str,
    segments: Sequence[tuple[_Range, _Object]],
    fetched: Iterable[tuple[bytes, dict[str, Any]]],
    policy: RetentionPolicy,
    lock: _Lock,
    current: list[_Range],
    start: int = 0,
    stop: int | None = None,
) -> Iterator[StoredRecord]:
    """Step 4 per segment (lock, checksum, one gzip member, record count), then its records
    with ``start <= seq < stop``; ``current`` holds the segment being read."""
    for (rng, obj), (data, meta) in zip(segments, fetched, strict=True):
        current[:] = [rng]
        first, last = rng.first, rng.last
        _check_object(policy, chain, first, obj, data, meta, lock)
        try:
            lines = decode_segment(data)
        except ValueError as exc:
            raise SegmentError(
                f"object {obj.key}: {exc}",
                chain=chain,
                seq=first,
                expected="exactly one gzip member of newline-terminated records",
                found=f"{len(data)} bytes",
            ) from exc
        skip = max(0, start - first)  # a segment that began in the range before
        seq = first + skip
        for body in lines[skip:] if skip else lines:
            if stop is not None and seq >= stop:
                return  # the rest belongs to the next range
            yield StoredRecord(chain, seq, _NO_STORED_HASH, body)
            seq += 1
        if len(lines) != last - first + 1:
            raise SegmentError(
                f"object {obj.key} holds {len(lines)} records, its name says "
                f"{last - first + 1} (seq {first}-{last}): records were cut or added",
                chain=chain,
                seq=min(first + len(lines), last),
                expected=str(last - first + 1),
                found=str(len(lines)),
            )


# (client factory, bucket, chain, start, stop, segments, policy, checkpoint sizes, workers)
_Span = tuple[
    Callable[[], Any],
    str,
    str,
    int,
    int,
    list[tuple[_Range, _Object]],
    RetentionPolicy,
    list[int],
    int,
]


def _start_processes(
    run: _Run,
    chain: str,
    segments: list[tuple[_Range, _Object]],
    stack: ExitStack,
    cosigned: Sequence[int] = (),
) -> tuple[int, list[_Span], list[Future[_SpanResult]]]:
    """Verify the records of a large chain in ``run.jobs`` processes, over ranges aligned to
    a power of two (as :mod:`audit_core._parallel` does for a ledger: each full range is one
    subtree of the Merkle tree, combined by this process). Each process also keeps its
    range's frontier at the ``cosigned`` sizes (witnessed checkpoints) within it."""
    assert run.client_factory is not None
    size = segments[-1][0].last + 1
    span = 1 << max(12, (size // (run.jobs * RANGES_PER_JOB) - 1).bit_length())
    # every checkpoint is at a segment's end; cosigned ones anywhere
    sizes = sorted({rng.last + 1 for rng, _ in segments} | {s for s in cosigned if s > 0})
    tasks: list[_Span] = []
    for a in range(0, size, span):
        b = min(a + span, size)
        mine = [s for s in segments if s[0].last >= a and s[0].first < b]
        inside = [x for x in sizes if a < x <= b]
        tasks.append(
            (run.client_factory, run.bucket, chain, a, b, mine, run.policy, inside, run.workers)
        )
    context = multiprocessing.get_context("spawn")  # no inherited sockets, threads or locks
    pool = ProcessPoolExecutor(max_workers=min(run.jobs, len(tasks)), mp_context=context)
    stack.callback(pool.shutdown, wait=True, cancel_futures=True)
    return span, tasks, [pool.submit(_verify_span, task) for task in tasks]


def _finish_processes(
    chain: str,
    size: int,
    claims: Sequence[TreeHeadClaim],
    lock: _Lock,
    on_progress: Callable[[int], None] | None,
    span: int,
    tasks: list[_Span],
    futures: list[Future[_SpanResult]],
) -> ChainHead | None:
    """The chain's head from the processes' ranges; None if anything failed (then the
    caller verifies in one process, for the exact error)."""
    try:
        results = [f.result() for f in futures]
    except Exception:  # noqa: BLE001 - a process died or could not start: verify here
        logger.warning("workflow-audit: parallel verification failed; verifying in one process")
        return None
    for _, modes, until in results:
        lock.merge(modes, until)
    return combine(
        chain,
        size,
        span,
        claims,
        [("", chain, t[3], t[4], t[7]) for t in tasks],
        [r for r, _, _ in results],
        on_progress,
    )


_SpanResult = tuple[RangeResult, list[str], "dt.datetime | None"]


def _verify_span(task: _Span) -> _SpanResult:
    factory, bucket, chain, start, stop, segments, policy, sizes, workers = task
    snapshots: dict[int, list[bytes]] = {}

    def keep(at: int, nodes: list[bytes]) -> None:
        snapshots[at] = list(nodes)

    lock = _Lock()
    try:
        client = factory()
        fetched = _ahead(lambda o: _get(client, bucket, o), [o for _, o in segments], workers)
        records = _segment_records(chain, segments, fetched, policy, lock, [], start, stop)
        with closing(fetched):
            scan = scan_records(
                chain,
                records,
                start=start,
                prev=None,
                sizes=sizes,
                at_size=keep,
                stored_hashes=False,
            )
    except Exception:  # noqa: BLE001 - any failure: the parent verifies in one process
        return (False, None, "", start, [], {}), [], None
    result: RangeResult = (True, scan.first_prev, scan.last, scan.end, scan.nodes, snapshots)
    return result, sorted(lock.modes), lock.until


def _check_ranges(prefix: str, chain: str, ranges: list[_Range]) -> list[tuple[_Range, _Object]]:
    """Step 2: contiguous from seq 0, no overlap, every segment with its checkpoint."""
    expected, before = 0, "the start of the chain"
    out = []
    for rng in ranges:
        key = segment_key(prefix, chain, rng.first, rng.last)
        if rng.segment is None:
            raise SequenceError(
                f"chain {chain!r}: segment {key} is missing (deleted?): its checkpoint "
                f"{checkpoint_key(prefix, chain, rng.first, rng.last)} is there",
                chain=chain,
                seq=rng.first,
                expected=key,
                found="no such object",
            )
        if rng.first > rng.last:
            raise SegmentError(
                f"object {key}: its range is empty (first seq after last)",
                chain=chain,
                seq=rng.first,
                expected="first <= last",
                found=f"{rng.first}-{rng.last}",
            )
        if rng.first > expected:
            raise SequenceError(
                f"chain {chain!r}: no segment holds seq {expected}..{rng.first - 1}, between "
                f"{before} and {key}: a segment is missing",
                chain=chain,
                seq=expected,
                expected=f"a segment starting at seq {expected}",
                found=f"{key}",
            )
        if rng.first < expected:
            raise SequenceError(
                f"chain {chain!r}: segment {key} repeats seq {rng.first}.."
                f"{min(rng.last, expected - 1)}, already in {before}: duplicate range",
                chain=chain,
                seq=rng.first,
                expected=f"a segment starting at seq {expected}",
                found=key,
            )
        if rng.checkpoint is None:
            raise CheckpointError(
                f"chain {chain!r}: segment {key} has no checkpoint object "
                f"{checkpoint_key(prefix, chain, rng.first, rng.last)} (an upload cut short: "
                "if a shipper is running, verify again; else it was removed)",
                chain=chain,
                seq=rng.last,
                expected="a checkpoint at tree size " + str(rng.last + 1),
                found="none",
            )
        out.append((rng, rng.segment))
        expected, before = rng.last + 1, key
    return out


def _get(client: Any, bucket: str, obj: _Object) -> tuple[bytes, dict[str, Any]]:
    """The listed version of the object (never "the latest", which could change meanwhile);
    botocore checks the bytes against the stored checksum (``ChecksumMode``)."""
    try:
        found = client.get_object(
            Bucket=bucket, Key=obj.key, VersionId=obj.version, ChecksumMode="ENABLED"
        )
        data: bytes = found.pop("Body").read()
    except _checksum_error() as exc:
        raise SegmentError(
            f"object {obj.key}: the bytes read do not match its stored SHA-256 checksum "
            f"(corrupted in storage): {exc}",
            chain=obj.chain,
            seq=obj.first,
            expected="the stored checksum",
            found="other bytes",
        ) from exc
    return data, found


def _check_object(
    policy: RetentionPolicy,
    chain: str,
    seq: int,
    obj: _Object,
    data: bytes,
    meta: dict[str, Any],
    lock: _Lock,
) -> None:
    stored = meta.get("ChecksumSHA256")
    if stored != sha256_b64(data):
        raise SegmentError(
            f"object {obj.key}: "
            + (
                "stored without a SHA-256 checksum (not written by workflow-audit)"
                if stored is None
                else "its bytes do not match its stored SHA-256 checksum (corrupted in storage)"
            ),
            chain=chain,
            seq=seq,
            expected=sha256_b64(data),
            found=str(stored),
        )
    mode, until = meta.get("ObjectLockMode"), meta.get("ObjectLockRetainUntilDate")
    lock.merge(() if mode is None else (str(mode),), until)
    if not policy.require_lock:
        return
    if mode is None or until is None:
        raise RetentionError(
            f"object {obj.key} has no Object Lock retention: anyone with write access can "
            "delete or replace it (ship to a bucket made by `workflow-audit s3 init-bucket`)",
            chain=chain,
            seq=seq,
            expected=f"{policy.mode} retention",
            found="none",
        )
    if policy.mode == "COMPLIANCE" and mode != "COMPLIANCE":
        raise RetentionError(
            f"object {obj.key} is locked in {mode} mode: users with "
            "s3:BypassGovernanceRetention can delete it or shorten its retention; the policy "
            "requires COMPLIANCE",
            chain=chain,
            seq=seq,
            expected="COMPLIANCE",
            found=str(mode),
        )
    need = obj.written + dt.timedelta(days=policy.min_retention_days)
    if until < need - _CLOCK_SLACK:
        days = (until - obj.written).days
        raise RetentionError(
            f"object {obj.key} is retained until {_iso(until)}, {days} days after it was "
            f"written ({_iso(obj.written)}); the policy requires at least "
            f"{policy.min_retention_days} days",
            chain=chain,
            seq=seq,
            expected=f"retain until {_iso(need)} or later",
            found=_iso(until),
        )


def _claim(
    chain: str, rng: _Range, key: str, data: bytes, keys: Sequence[Verifier]
) -> TreeHeadClaim:
    """Step 3 for one checkpoint object: signature, origin, size."""
    try:
        note = data.decode("utf-8")
        checkpoint = (
            open_checkpoint(note, keys) if keys else Checkpoint.parse(unverified_text(note))
        )
    except (UnicodeDecodeError, SignatureError, CheckpointError) as exc:
        raise CheckpointError(
            f"chain {chain!r}: checkpoint object {key} does not verify: {exc} (forged, or "
            "signed by another key than the one given)",
            chain=chain,
            seq=rng.last,
            expected="a checkpoint signed by " + ", ".join(map(str, keys)) if keys else None,
            found=data.split(b"\n", 1)[0].decode("utf-8", "replace"),
        ) from exc
    if not checkpoint.origin.endswith("/" + chain):
        raise CheckpointError(
            f"checkpoint object {key} is for origin {checkpoint.origin!r}, not chain {chain!r}",
            chain=chain,
            seq=rng.last,
            expected=f".../{chain}",
            found=checkpoint.origin,
        )
    if checkpoint.size != rng.last + 1:
        raise CheckpointError(
            f"checkpoint object {key} is at tree size {checkpoint.size}, but its segment ends "
            f"at seq {rng.last} (size {rng.last + 1})",
            chain=chain,
            seq=rng.last,
            expected=str(rng.last + 1),
            found=str(checkpoint.size),
        )
    return TreeHeadClaim(checkpoint.size, checkpoint.root, f"checkpoint object {key}")


_FETCH_THREADS = "wa-s3-get"


def _ahead(fn: Callable[[T], R], items: Sequence[T], workers: int) -> Generator[R, None, None]:
    """``map(fn, items)`` in order, computed by ``workers`` threads at most ``2 * workers``
    items ahead of the consumer (downloads overlap verification; memory stays bounded)."""
    if not items:
        return
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=_FETCH_THREADS)
    try:
        window: deque[Future[R]] = deque()
        source: Iterable[T] = iter(items)
        for item in source:
            window.append(pool.submit(fn, item))
            if len(window) >= 2 * max(1, workers):
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        # Callers close this generator; one left to the garbage collector may be finalized
        # in one of the pool's own threads, which cannot join itself.
        in_pool = threading.current_thread().name.startswith(_FETCH_THREADS)
        pool.shutdown(wait=not in_pool, cancel_futures=True)


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bind(fn: Callable[[str, int], None], chain: str) -> Callable[[int], None]:
    return lambda n: fn(chain, n)


def _checksum_error() -> type[BaseException]:
    """botocore's ``FlexibleChecksumError`` (a response whose bytes fail their checksum)."""
    exceptions = importlib.import_module("botocore.exceptions")
    error: type[BaseException] = exceptions.FlexibleChecksumError
    return error
