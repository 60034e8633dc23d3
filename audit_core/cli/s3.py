"""``workflow-audit s3 init-bucket``: a bucket with versioning and S3 Object Lock for shipped
segments (see :mod:`audit_core.sinks.s3_admin`; ``verify s3://…`` is in :mod:`.verify`).

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="workflow-audit")
>>> add_parsers(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["s3", "init-bucket", "audit-archive", "--prefix", "prod"])
>>> args.bucket, args.prefix, args.allow_no_lock
('audit-archive', 'prod', False)

The S3 client is configured from the environment, as the AWS CLI's is: credentials
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance role), region
(``AWS_REGION``), and ``AWS_ENDPOINT_URL_S3`` for an S3-compatible server.

Exit codes, as for every command: 0 the bucket is ready; 1 the bucket lacks versioning or
Object Lock; 2 usage error, or S3 cannot be reached or refuses (credentials, permissions).
"""

from __future__ import annotations

import argparse
import sys

from audit_core.cli._common import EXIT_INVALID, EXIT_OK, EXIT_USAGE, add_group

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``s3 init-bucket`` to the ``workflow-audit`` subcommands ``sub``."""
    commands = add_group(sub, "s3", help="S3 Object Lock buckets for shipped segments")
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


def _cmd_init_bucket(args: argparse.Namespace) -> int:
    # boto3 loads only when the command runs, never for --help
    from audit_core.sinks.s3 import boto_errors, s3_client
    from audit_core.sinks.s3_admin import init_bucket

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
