"""``workflow-audit s3 init-bucket`` and ``workflow-audit verify s3://BUCKET/PREFIX``.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="workflow-audit")
>>> add_parsers(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["s3", "init-bucket", "audit-archive", "--prefix", "prod"])
>>> args.bucket, args.prefix, args.allow_no_lock
('audit-archive', 'prod', False)

The S3 client is configured from the environment, as the AWS CLI's is: credentials
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance role), region
(``AWS_REGION``), and ``AWS_ENDPOINT_URL_S3`` for an S3-compatible server.

Exit codes, as for every command: 0 success (the bucket is ready; every chain is valid);
1 the bucket lacks versioning or Object Lock (``init-bucket``), or the trail in the bucket
is invalid (``verify``); 2 usage error, or S3 cannot be reached or refuses (credentials,
permissions, no such bucket).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from audit_core.checkpoint import load_verifiers
from audit_core.errors import AuditError, ConfigError, VerificationError
from audit_core.sinks.s3 import (
    MIN_RETENTION_DAYS,
    boto_errors,
    error_code,
    parse_s3_url,
    s3_client,
)

__all__ = ["BucketState", "add_parsers", "init_bucket", "verify_bucket"]

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2

_WHAT_TO_DO = {
    "retention": "What to do: this copy is not protected as the policy requires; ship to a "
    "bucket made by `workflow-audit s3 init-bucket` (COMPLIANCE mode, retention of at least "
    "the policy's days), or pass the policy this bucket is meant to meet.",
}
_WHAT_TO_DO_DEFAULT = (
    "What to do: treat this copy as untrustworthy from the named object on; compare it with "
    "the ledger (`workflow-audit verify`) and with the bucket's object versions, and find who "
    "had write access to the bucket."
)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``s3 init-bucket`` to the ``workflow-audit`` subcommands ``sub``."""
    s3 = sub.add_parser("s3", help="S3 Object Lock buckets for shipped segments")
    commands = s3.add_subparsers(dest="s3_command", metavar="COMMAND", required=True)
    init = commands.add_parser(
        "init-bucket",
        help="create a bucket with versioning and Object Lock, or check an existing one",
        description="Create BUCKET with versioning and S3 Object Lock (COMPLIANCE retention is "
        "set per object by the shipper), or check that an existing bucket has both. Exit code "
        "1 when an existing bucket lacks them.",
    )
    init.add_argument("bucket", help="bucket name")
    init.add_argument("--prefix", default="", help="key prefix segments will be shipped under")
    init.add_argument(
        "--allow-no-lock",
        action="store_true",
        help="development only: create or accept a bucket without Object Lock",
    )
    init.set_defaults(func=_cmd_init_bucket)


@dataclass(frozen=True, slots=True)
class BucketState:
    """What ``init-bucket`` found or made."""

    bucket: str
    created: bool
    versioning: str  # "Enabled", "Suspended" or "" (never enabled)
    object_lock: bool
    default_retention: str  # "COMPLIANCE 365 days", or "" when none is set

    def problems(self, *, allow_no_lock: bool) -> list[str]:
        """What stops this bucket from holding a tamper-evident copy (empty: ready)."""
        out = []
        if self.versioning != "Enabled" and not allow_no_lock:
            out.append(
                f"versioning is {self.versioning or 'not enabled'}: enable it with `aws s3api "
                f"put-bucket-versioning --bucket {self.bucket} --versioning-configuration "
                "Status=Enabled`"
            )
        if not self.object_lock and not allow_no_lock:
            out.append(
                "Object Lock is not enabled: shipping there is refused. Enable it with `aws "
                f"s3api put-object-lock-configuration --bucket {self.bucket} "
                "--object-lock-configuration ObjectLockEnabled=Enabled` (versioning first; "
                "this cannot be undone), or create a new bucket with this command"
            )
        return out


def init_bucket(client: Any, bucket: str, *, allow_no_lock: bool = False) -> BucketState:
    """Create ``bucket`` with versioning and Object Lock (only versioning with
    ``allow_no_lock``) unless it exists, then read back what it has."""
    created = False
    try:
        client.head_bucket(Bucket=bucket)
    except boto_errors() as exc:
        if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise
        args: dict[str, Any] = {"Bucket": bucket}
        region = client.meta.region_name
        if region and region != "us-east-1":  # us-east-1 takes no LocationConstraint
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        if not allow_no_lock:
            # S3 User Guide, "Object Lock considerations": enabling Object Lock at creation
            # also enables versioning, and neither can be turned off afterwards.
            args["ObjectLockEnabledForBucket"] = True
        client.create_bucket(**args)
        if allow_no_lock:
            client.put_bucket_versioning(
                Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
            )
        created = True
    versioning = str(client.get_bucket_versioning(Bucket=bucket).get("Status", ""))
    lock, retention = False, ""
    try:
        config = client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    except boto_errors() as exc:
        if error_code(exc) != "ObjectLockConfigurationNotFoundError":
            raise
    else:
        lock = config.get("ObjectLockEnabled") == "Enabled"
        default = config.get("Rule", {}).get("DefaultRetention", {})
        if default:
            amount = default.get("Days") or default.get("Years")
            unit = "days" if "Days" in default else "years"
            retention = f"{default.get('Mode')} {amount} {unit}"
    return BucketState(bucket, created, versioning, lock, retention)


def _cmd_init_bucket(args: argparse.Namespace) -> int:
    try:
        state = init_bucket(s3_client(), args.bucket, allow_no_lock=args.allow_no_lock)
    except boto_errors() as exc:
        print(f"workflow-audit: error: s3://{args.bucket}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    what = "created" if state.created else "exists"
    lock = "Object Lock enabled" if state.object_lock else "NO Object Lock"
    print(f"bucket {state.bucket!r} {what}: versioning {state.versioning or 'off'}, {lock}")
    print(
        "  default retention: "
        + (state.default_retention or "none (each object carries its own, set by the shipper)")
    )
    problems = state.problems(allow_no_lock=args.allow_no_lock)
    for problem in problems:
        print(f"  NOT READY: {problem}", file=sys.stderr)
    if problems:
        return EXIT_INVALID
    if not state.object_lock:
        print(
            "  WARNING: without Object Lock, shipped segments can be deleted or overwritten "
            "(development only)",
            file=sys.stderr,
        )
    url = f"s3://{state.bucket}/{args.prefix.strip('/')}".rstrip("/")
    print(f"  ready: ship to {url}; verify with `workflow-audit verify {url} --key KEY`")
    return EXIT_OK


def verify_bucket(
    url: str,
    keys: list[str],
    json: bool,
    *,
    chains: Sequence[str] | None = None,
    min_retention_days: int = 365,
    allow_governance: bool = False,
    allow_no_lock: bool = False,
    jobs: int = 1,
) -> int:
    """``workflow-audit verify s3://BUCKET/PREFIX --key K``: print the verdict, return the
    exit code. The policy defaults to what the sink writes: COMPLIANCE, 365 days. ``jobs``
    as for ``verify --jobs`` (0: one process per CPU)."""
    from audit_core import bucket as checker

    try:
        bucket, prefix = parse_s3_url(url)
        if not keys:
            raise ConfigError(
                "verifying a bucket needs --key: its checkpoints are the only evidence that "
                "these records are the ones the ledger signed"
            )
        if min_retention_days < MIN_RETENTION_DAYS:
            print(
                f"workflow-audit: warning: a policy of {min_retention_days} days is below the "
                f"EU AI Act Art. 19 floor of six months ({MIN_RETENTION_DAYS} days)",
                file=sys.stderr,
            )
        policy = checker.RetentionPolicy(
            mode="GOVERNANCE" if allow_governance else "COMPLIANCE",
            min_retention_days=min_retention_days,
            require_lock=not allow_no_lock,
        )
        verifiers = load_verifiers(keys)
        started = time.perf_counter()
        found = checker.verify_bucket(
            s3_client(),
            bucket,
            prefix,
            keys=verifiers,
            chains=chains,
            policy=policy,
            jobs=(os.cpu_count() or 1) if jobs <= 0 else jobs,
            client_factory=s3_client,
        )
    except VerificationError as exc:
        _print_invalid(url, exc, json)
        return EXIT_INVALID
    except AuditError as exc:
        print(f"workflow-audit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except boto_errors() as exc:
        print(f"workflow-audit: error: cannot read {url}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    elapsed = time.perf_counter() - started
    total = sum(c.head.size for c in found)
    if json:
        print(
            orjson.dumps(
                {
                    "valid": True,
                    "bucket": url,
                    "records": total,
                    "signatures_checked": True,
                    "chains": [c.to_json() for c in found],
                }
            ).decode()
        )
        return EXIT_OK
    if not found:
        print(f"valid: {url} holds no segments yet")
    for c in found:
        h = c.head
        print(f"valid: chain {h.chain!r}: {h.size} records in {c.segments} segments, head {h.head}")
        matched = f"{h.checkpoints} checkpoint(s) matched (signatures checked)"
        print(f"       Merkle root {h.root}, {matched}")
        if c.modes:
            until = "" if c.retained_until is None else c.retained_until.strftime("%Y-%m-%d")
            modes = "/".join(c.modes)
            print(f"       Object Lock {modes}, every object retained until {until} or later")
        else:
            print("       NO Object Lock (development bucket)")
    rate = f", {total / elapsed:,.0f} records/s" if elapsed > 0 and total else ""
    print(
        f"verified {total} records in {len(found)} chain(s) from {url} in {elapsed:.2f}s{rate}",
        file=sys.stderr,
    )
    return EXIT_OK


def _print_invalid(url: str, exc: VerificationError, json: bool) -> None:
    if json:
        error = {
            "reason": exc.reason,
            "chain": exc.chain,
            "seq": exc.seq,
            "expected": exc.expected,
            "found": exc.found,
            "message": str(exc),
        }
        print(orjson.dumps({"valid": False, "bucket": url, "error": error}).decode())
        return
    print(f"INVALID {exc}", file=sys.stderr)
    if exc.expected is not None:
        print(f"  expected: {exc.expected}\n  found:    {exc.found}", file=sys.stderr)
    print(f"  {_WHAT_TO_DO.get(exc.reason, _WHAT_TO_DO_DEFAULT)}", file=sys.stderr)
