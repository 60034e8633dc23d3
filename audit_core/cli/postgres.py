"""``workflow-audit postgres init``: the PostgreSQL ledger's schema, append-only triggers and
roles (the work is :func:`audit_core.ledgers.postgres_admin.init`; psycopg loads when it runs).

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="workflow-audit")
>>> add_parsers(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["postgres", "init", "--url", "postgresql://owner@db/audit",
...                           "--writer-role", "etl_writer"])
>>> args.url, args.writer_role, args.auditor_role
('postgresql://owner@db/audit', 'etl_writer', None)
"""

from __future__ import annotations

import argparse
import os
import sys

from audit_core.cli._common import EXIT_OK, add_group
from audit_core.ledgers.postgres_admin import AUDITOR_ROLE, SCHEMA_VERSION, WRITER_ROLE, init

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``postgres init`` to the ``workflow-audit`` subcommands ``sub``."""
    commands = add_group(sub, "postgres", help="PostgreSQL ledgers")
    cmd = commands.add_parser(
        "init",
        help="create the ledger schema, append-only triggers and roles",
        description="Create the ledger tables, the triggers that refuse UPDATE, DELETE and "
        f"TRUNCATE on records, Merkle subtrees and checkpoints, the group roles {WRITER_ROLE} "
        f"(SELECT, INSERT) and {AUDITOR_ROLE} (SELECT), and optionally login roles that are "
        "members of them. Idempotent. Run it as the role that will own the tables (never the "
        "writers' role). Passwords may come from $WORKFLOW_AUDIT_WRITER_PASSWORD and "
        "$WORKFLOW_AUDIT_AUDITOR_PASSWORD instead of the command line.",
    )
    cmd.add_argument("--url", required=True, help="postgresql://OWNER@HOST:PORT/DB")
    cmd.add_argument("--writer-role", help=f"login role to create as a member of {WRITER_ROLE}")
    cmd.add_argument("--writer-password", help="its password (else $WORKFLOW_AUDIT_WRITER_…)")
    cmd.add_argument("--auditor-role", help=f"login role to create as a member of {AUDITOR_ROLE}")
    cmd.add_argument("--auditor-password", help="its password (else $WORKFLOW_AUDIT_AUDITOR_…)")
    cmd.set_defaults(func=_cmd_init)


def _cmd_init(args: argparse.Namespace) -> int:
    result = init(
        args.url,
        writer=args.writer_role,
        writer_password=args.writer_password or os.environ.get("WORKFLOW_AUDIT_WRITER_PASSWORD"),
        auditor=args.auditor_role,
        auditor_password=args.auditor_password or os.environ.get("WORKFLOW_AUDIT_AUDITOR_PASSWORD"),
    )
    tables = "records, chain_heads, merkle_subtrees, checkpoints, cursors, meta"
    print(f"schema v{SCHEMA_VERSION}: {tables}")
    print(f"roles: {WRITER_ROLE} (SELECT, INSERT), {AUDITOR_ROLE} (SELECT)")
    for login in result.logins:
        print(f"login role: {login}")
    if not result.pgaudit:
        print(
            "warning: pgaudit is not in shared_preload_libraries: attempted changes are refused "
            "but not written to the server's audit log",
            file=sys.stderr,
        )
    return EXIT_OK
