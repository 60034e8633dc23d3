"""``workflow-audit verify``: every record, link and hash of a ledger's chains, or of the
segments shipped to an S3 bucket (``verify s3://BUCKET/PREFIX --key K``).

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="workflow-audit")
>>> add_parsers(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["verify", "--chain", "etl", "--expect-size", "3", "--json"])
>>> args.source, args.chain, args.expect_size, args.json, args.jobs
(None, ['etl'], 3, True, 1)

The S3 client is configured from the environment, as the AWS CLI's is: credentials
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance role), region
(``AWS_REGION``), and ``AWS_ENDPOINT_URL_S3`` for an S3-compatible server.

With ``--witness KEY`` (repeatable; c2sp.org/tlog-cosignature 0x04 keys) and ``--quorum K``
(default: every witness given), each chain must hold a checkpoint cosigned by K of them, and
every checkpoint a trusted witness cosigned must still match the records: a writer holding
the ledger and its local key cannot cut, rewrite or back-date what a witness saw. The verdict
shows the latest witnessed checkpoint (cosigners and times) and the records appended since
(valid, not yet witnessed). A witnessed checkpoint must have exactly the chain's origin
``PREFIX/CHAIN`` (``--origin``, default ``$WORKFLOW_AUDIT_ORIGIN``, else the ``--key`` name).
A witness given as ``--witness "URL KEY"`` is also asked for the latest checkpoint it
cosigned of each chain (:mod:`audit_core.anchor.online`): the ledger's own rows cannot hide
what it saw. One that cannot be reached is a warning, never a verdict.

Verifying a ledger is itself recorded, after the verdict is printed, on that ledger's
``audit`` chain (``audit.verified``: the verdict, each chain's size, head and validity, whether
signatures were checked, the witness keys, quorum and witnessed sizes;
:mod:`audit_core.readlog`); one line on standard error says when it could not be (a read-only
copy, a locked ledger). Verifying a bucket records nothing: a bucket
is written by the shipper only.

Exit codes: 0 every chain is valid, 1 the trail is invalid, 2 usage error, or the ledger or
S3 cannot be read (credentials, permissions, no such bucket).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from audit_core._chain import ChainHead, check_head, stored_size
from audit_core._cosign import WitnessKey
from audit_core._note import Verifier
from audit_core.anchor.client import WitnessEndpoint
from audit_core.anchor.online import WitnessQuery
from audit_core.checkpoint import Checkpoint, load_verifiers
from audit_core.cli._common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_USAGE,
    add_ledger_args,
    default_ledger_url,
    open_ledger_arg,
    print_invalid,
    print_valid,
    read_checkpoint,
)
from audit_core.cli._witnessed import (
    add_witness_args,
    load_witnesses,
    witness_facts,
    witnessed_lines,
)
from audit_core.cli.records import record_cli_read
from audit_core.errors import AuditError, ConfigError, VerificationError
from audit_core.ledgers import Ledger
from audit_core.proofs import note_quorum
from audit_core.query import Query
from audit_core.readlog import os_user, read_event
from audit_core.verify import check_quorum, origin_prefixes, verify_ledger

__all__ = ["add_parsers", "verify_bucket"]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``verify`` to the ``workflow-audit`` subcommands ``sub``."""
    v = sub.add_parser("verify", help="check every record, link and hash of the chains")
    v.add_argument(
        "source",
        nargs="?",
        metavar="s3://BUCKET/PREFIX",
        help="verify shipped segments from an S3 bucket alone (needs --key) instead of a "
        "ledger; not recorded on the audit chain (a ledger's verification is)",
    )
    add_ledger_args(v, chain_help="chain to verify (repeatable; default: every chain)")
    v.add_argument("--expect-size", type=int, help="the chain must hold exactly N records")
    v.add_argument("--expect-head", help="hex hash the chain's last record must have")
    v.add_argument("--json", action="store_true", help="print the verdict as JSON")
    v.add_argument(
        "--key",
        action="append",
        default=[],
        help="trusted verifier key (string or file); checks every stored "
        "checkpoint's signature (repeatable: every key name must have signed; keys sharing "
        "a name, as after a key rotation, are alternatives)",
    )
    v.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="FILE",
        help="a signed checkpoint kept elsewhere: the ledger must still contain "
        "its tree (catches truncation and rewrites); needs --key",
    )
    v.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="verify large chains in N processes (0: one per CPU); a failure found there is "
        "re-verified in one process for the exact message",
    )
    add_witness_args(
        v,
        what="every chain must hold a checkpoint cosigned by --quorum of them that its "
        "records still match, and so must each --checkpoint file",
    )
    v.add_argument(
        "--min-retention-days",
        type=int,
        default=365,
        help="s3: each object must be locked at least this long (default 365)",
    )
    v.set_defaults(func=_cmd_verify)


#: Seconds one online question to a witness may take, all of it (connect to last byte).
ONLINE_TIMEOUT_S = 5.0


def _jobs(jobs: int) -> int:
    if jobs < 0:
        raise ConfigError(f"--jobs must be 0 (one per CPU) or more, not {jobs}")
    return jobs or (os.cpu_count() or 1)


def _query(endpoints: Sequence[WitnessEndpoint]) -> WitnessQuery | None:
    return WitnessQuery(endpoints, timeout_s=ONLINE_TIMEOUT_S) if endpoints else None


def _warn_unreached(query: WitnessQuery | None) -> None:
    """One line per witness asked online that did not answer: never a silent pass."""
    for asked in query.asked if query is not None else ():
        if asked.error is not None:
            print(
                f"workflow-audit: warning: {asked.endpoint.describe()} not reached: only the "
                f"stored cosignatures were checked ({asked.error})",
                file=sys.stderr,
            )


def _print_valid(
    kind: str, where: str, total: int, signed: bool, chains: list[Any], query: WitnessQuery | None
) -> None:
    """The JSON verdict; with witnesses asked online, which were asked and what each said
    (``witnesses_asked``: witness, url, answered, known, unseen, error)."""
    if query is None:
        print_valid(kind, where, total, signed, chains)
        return
    verdict = {
        "valid": True,
        kind: where,
        "records": total,
        "signatures_checked": signed,
        "chains": chains,
        "witnesses_asked": [a.to_json() for a in query.asked],
    }
    print(orjson.dumps(verdict).decode())


def _rate_line(total: int, chains: int, where: str, elapsed: float) -> None:
    rate = f", {total / elapsed:,.0f} records/s" if elapsed > 0 and total else ""
    line = f"verified {total} records in {chains} chain(s){where} in {elapsed:.2f}s{rate}"
    print(line, file=sys.stderr)


def _progress_verify(
    ledger: Ledger,
    chains: list[str] | None,
    keys: Sequence[Verifier] = (),
    external: Sequence[tuple[Checkpoint, str]] = (),
    jobs: int = 1,
    witnesses: Sequence[WitnessKey] = (),
    quorum: int = 0,
    origin: str | None = None,
    online: WitnessQuery | None = None,
) -> list[ChainHead]:
    """verify_ledger with a rich progress bar when standard error is a terminal."""
    if not sys.stderr.isatty():
        return verify_ledger(
            ledger,
            chains,
            keys=keys,
            external=external,
            jobs=jobs,
            witnesses=witnesses,
            quorum=quorum,
            origin=origin,
            online=online,
        )
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    names = chains if chains is not None else ledger.chains()
    totals = {c: stored_size(c, ledger.head(c)) for c in names}
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        tasks = {c: bar.add_task(f"verify {c}", total=totals[c]) for c in names}

        def on_progress(chain: str, n: int) -> None:
            # verify_ledger also verifies chains only its Merkle tables name (deleted ones)
            if chain not in tasks:
                tasks[chain] = bar.add_task(f"verify {chain}", total=None)
            bar.update(tasks[chain], completed=n)

        return verify_ledger(
            ledger,
            chains,
            keys=keys,
            external=external,
            on_progress=on_progress,
            jobs=jobs,
            witnesses=witnesses,
            quorum=quorum,
            origin=origin,
            online=online,
        )


def _cmd_verify(args: argparse.Namespace) -> int:
    if args.source is not None:
        if not args.source.startswith("s3://"):
            raise ConfigError(f"verify takes an s3://BUCKET/PREFIX source, not {args.source!r}")
        return verify_bucket(
            args.source,
            args.key,
            args.json,
            chains=args.chain,
            min_retention_days=args.min_retention_days,
            jobs=args.jobs,
            witnesses=args.witness,
            quorum=args.quorum,
            origin=args.origin,
        )
    args.ledger = args.ledger or default_ledger_url()  # resolved once: read and record agree
    ledger, where = open_ledger_arg(args)
    chains: list[str] | None = list(args.chain) if args.chain else None
    if (args.expect_size is not None or args.expect_head) and (chains is None or len(chains) != 1):
        raise ConfigError("--expect-size/--expect-head need exactly one --chain")
    keys = load_verifiers(args.key) if args.key else []
    if args.checkpoint and not keys:
        raise ConfigError(
            "--checkpoint needs --key: a checkpoint is only evidence once its signature is checked"
        )
    witnesses, endpoints = load_witnesses(args.witness)
    quorum = check_quorum(witnesses, args.quorum)
    if witnesses:
        origin_prefixes(args.origin, keys)  # exit 2 before anything is read
    jobs = _jobs(args.jobs)
    online = _query(endpoints)
    external = [(read_checkpoint(path, keys), f"checkpoint {path}") for path in args.checkpoint]
    started = time.perf_counter()
    try:
        for path in args.checkpoint if witnesses else ():
            note = Path(path).read_text(encoding="utf-8")  # read_checkpoint could read it
            note_quorum(note, witnesses, quorum, what=f"checkpoint {path}")
        heads = _progress_verify(
            ledger, chains, keys, external, jobs, witnesses, quorum, args.origin, online
        )
        if chains is not None and len(chains) == 1:
            check_head(heads[0], expect_size=args.expect_size, expect_head=args.expect_head)
    except VerificationError as exc:
        _warn_unreached(online)
        print_invalid("ledger", where, exc, args.json)
        ledger.close()
        _record(args, keys=bool(keys), heads=[], error=exc, witnesses=(witnesses, quorum))
        return EXIT_INVALID
    elapsed = time.perf_counter() - started
    total = sum(h.size for h in heads)
    _warn_unreached(online)
    if args.json:
        _print_valid("ledger", where, total, bool(keys), [h.to_json() for h in heads], online)
    else:
        if not heads:
            print(f"valid: {where} holds no records yet")
        signed = "signatures checked" if keys else "signatures NOT checked: pass --key"
        for h in heads:
            print(f"valid: chain {h.chain!r}: {h.size} records, head {h.head}")
            print(f"       Merkle root {h.root}, {h.checkpoints} checkpoint(s) matched ({signed})")
            for line in witnessed_lines(h.witnessed, h.size) if witnesses else ():
                print(line)
        _rate_line(total, len(heads), "", elapsed)
    ledger.close()
    _record(args, keys=bool(keys), heads=heads, error=None, witnesses=(witnesses, quorum))
    return EXIT_OK


def _record(
    args: argparse.Namespace,
    *,
    keys: bool,
    heads: Sequence[ChainHead],
    error: VerificationError | None,
    witnesses: tuple[Sequence[WitnessKey], int] = ((), 0),
) -> None:
    """``audit.verified`` on the verified ledger's audit chain (after the verdict is out):
    with witnesses, their public keys, the quorum and each chain's witnessed size."""
    chains: dict[str, dict[str, Any]] = {
        h.chain: {"size": h.size, "head": h.head, "valid": True} for h in heads
    }
    if witnesses[0]:
        for h in heads:
            chains[h.chain]["witnessed"] = h.witnessed[-1].size if h.witnessed else None
    facts: dict[str, Any] = {
        "verdict": "valid" if error is None else "invalid",
        "chains": chains,
        "key_checked": keys,
        **witness_facts(*witnesses),
    }
    if error is not None:
        facts["error"] = {"chain": error.chain, "seq": error.seq, "reason": error.reason}
        if error.chain:
            chains[error.chain] = {"size": None, "head": None, "valid": False}
    asked = Query(chains=tuple(args.chain or ()))
    event = read_event("verified", user=os_user(), via="cli", query=asked, **facts)
    record_cli_read(args.ledger, event)


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
    witnesses: Sequence[str] = (),
    quorum: int = 0,
    origin: str | None = None,
) -> int:
    """``workflow-audit verify s3://BUCKET/PREFIX --key K``: print the verdict, return the
    exit code. The policy defaults to what the sink writes: COMPLIANCE, 365 days. ``jobs``
    as for ``verify --jobs`` (0: one process per CPU); ``witnesses`` (key strings or files)
    and ``quorum`` as for ``verify --witness --quorum``."""
    # boto3 and the bucket checker load only when a bucket is verified
    from audit_core import bucket as checker
    from audit_core.sinks.s3 import MIN_RETENTION_DAYS, boto_errors, parse_s3_url, s3_client

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
        witness_keys, endpoints = load_witnesses(witnesses)
        quorum = check_quorum(witness_keys, quorum)
        online = _query(endpoints)
        started = time.perf_counter()
        found = checker.verify_bucket(
            s3_client(),
            bucket,
            prefix,
            keys=verifiers,
            chains=chains,
            policy=policy,
            jobs=_jobs(jobs),
            client_factory=s3_client,
            witnesses=witness_keys,
            quorum=quorum,
            origin=origin,
            online=online,
        )
    except VerificationError as exc:
        _warn_unreached(online)
        print_invalid("bucket", url, exc, json)
        return EXIT_INVALID
    except AuditError as exc:
        print(f"workflow-audit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except boto_errors() as exc:
        print(f"workflow-audit: error: cannot read {url}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    elapsed = time.perf_counter() - started
    total = sum(c.head.size for c in found)
    _warn_unreached(online)
    if json:
        _print_valid("bucket", url, total, True, [c.to_json() for c in found], online)
        return EXIT_OK
    if not found:
        print(f"valid: {url} holds no segments yet")
    for c in found:
        h = c.head
        print(f"valid: chain {h.chain!r}: {h.size} records in {c.segments} segments, head {h.head}")
        matched = f"{h.checkpoints} checkpoint(s) matched (signatures checked)"
        print(f"       Merkle root {h.root}, {matched}")
        for line in witnessed_lines(c.witnessed, h.size) if witness_keys else ():
            print(line)
        if c.modes:
            until = "" if c.retained_until is None else c.retained_until.strftime("%Y-%m-%d")
            modes = "/".join(c.modes)
            print(f"       Object Lock {modes}, every object retained until {until} or later")
        else:
            print("       NO Object Lock (development bucket)")
    _rate_line(total, len(found), f" from {url}", elapsed)
    return EXIT_OK
