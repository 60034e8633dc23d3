"""``evidence`` (make a signed evidence pack of a period) and ``verify-evidence`` (check one
with the pack and the verifier key alone).

Exit codes: ``evidence`` 0 when the pack states PASS, 1 when it was written but states FAIL
(the findings are printed), 2 when no pack could be made (a usage error, no records in the
period, an existing output file without ``--force``); ``verify-evidence`` 0 for an authentic
pack stating PASS, 1 for anything wrong with the file (each problem named by its file in the
pack; also a file that is no pack at all), 2 for a usage error (no such file, no key, a
ledger given with ``--ledger`` that cannot be read).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from audit_core.checkpoint import CheckpointSigner, load_verifiers
from audit_core.cli._common import (
    EXIT_INVALID,
    EXIT_OK,
    add_ledger_args,
    default_ledger_url,
    open_ledger_arg,
    time_arg,
)
from audit_core.cli.records import record_cli_read
from audit_core.config import AuditConfig
from audit_core.errors import AuditError, ConfigError, EvidenceError
from audit_core.evidence.collect import PackRequest
from audit_core.evidence.pack import PackResult, Reconcile, Retention, make_pack
from audit_core.ledgers import Ledger
from audit_core.readlog import os_user, read_event

__all__ = ["add_parsers"]

#: Characters kept in the default file name's origin part; others become "_".
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = sub.add_parser(
        "evidence",
        help="write a signed evidence pack of a period (zip: manifest, report PDF/HTML, proofs)",
        description="Verify the ledger, then write one zip an auditor checks offline with "
        "`verify-evidence` and the verifier key: the signed manifest, report.pdf/.html "
        "mapped to EU AI Act Art. 12/19, ISO/IEC 42001, ISO/IEC 27001 A.8.15, SOC 2 CC7 and "
        "NIST AU controls, checkpoints and consistency proofs, sampled inclusion proofs, "
        "every failure/access/permission/erasure record in full, completeness and retention. "
        "Appends an audit.exported record.",
    )
    ev.add_argument("--since", required=True, type=time_arg, help="period start (RFC 3339)")
    ev.add_argument("--until", type=time_arg, help="period end, exclusive (default: now)")
    add_ledger_args(
        ev,
        chain_help="chain to include (repeatable; default: every chain with records in the period)",
    )
    ev.add_argument("--s3", metavar="s3://BUCKET/PREFIX", help="check the segments' Object Lock")
    ev.add_argument(
        "--reconcile",
        metavar="SOURCE",
        help="compare with the orchestrator's runs (airflow, prefect: an installed adapter)",
    )
    ev.add_argument("--sample", type=int, default=200, help="sampled proofs per chain (200)")
    ev.add_argument(
        "--cadence",
        type=int,
        default=86_400,
        metavar="SECONDS",
        help="list spans of records unsigned for longer than this (default: one day)",
    )
    ev.add_argument(
        "--key",
        action="append",
        help="verifier key(s) the checkpoints must verify with (default: the signing key's)",
    )
    ev.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="do not sign a checkpoint of chains whose records are not yet covered by one",
    )
    ev.add_argument("-o", "--output", help="pack file (default: evidence-ORIGIN-FROM_TO.zip)")
    ev.add_argument("--force", action="store_true", help="replace an existing pack file")
    ev.set_defaults(func=_cmd_evidence)

    ve = sub.add_parser(
        "verify-evidence",
        help="check an evidence pack offline with the verifier key",
        description="Check a pack with nothing but the pack and the verifier key: the "
        "manifest's signature, every file's SHA-256, checkpoints, consistency and inclusion "
        "proofs, the sample's indices, and the verdict the pack states. With --ledger, also "
        "that the ledger still extends the pack (no rewrite since).",
    )
    ve.add_argument("pack", help="the evidence pack (.zip)")
    ve.add_argument("--key", action="append", required=True, help="trusted verifier key")
    ve.add_argument("--ledger", help="also check this ledger still extends the pack")
    ve.add_argument(
        "--no-pdf",
        action="store_true",
        help="do not render report.pdf again to compare (its SHA-256 is still checked)",
    )
    ve.add_argument("-v", "--verbose", action="store_true", help="print every check")
    ve.set_defaults(func=_cmd_verify_evidence)


def default_name(origin: str, since: str, until: str) -> str:
    """``evidence-ORIGIN-FROM_TO.zip`` with compact UTC times.

    >>> default_name("acme/prod", "2026-12-01T00:00:00.000000Z", "2026-12-02T00:00:00.000000Z")
    'evidence-acme_prod-20261201T000000Z_20261202T000000Z.zip'
    """

    def compact(ts: str) -> str:
        return ts[:19].replace("-", "").replace(":", "") + "Z"

    return f"evidence-{_UNSAFE.sub('_', origin)}-{compact(since)}_{compact(until)}.zip"


def _now() -> str:
    import datetime as dt

    from audit_core._normalize import format_timestamp

    return format_timestamp(dt.datetime.now(dt.timezone.utc))


def ledger_name(url: str, shown: str) -> str:
    """How the report names the ledger: a file's name, or a PostgreSQL URL without its user
    and password (the same for the writer's and the auditor's pack of one period).

    >>> ledger_name("postgresql://w:pw@db.example:5432/ledger?sslmode=require", "")
    'postgresql://db.example:5432/ledger'
    >>> ledger_name("sqlite:////var/lib/audit/ledger.db", "/var/lib/audit/ledger.db")
    'ledger.db'
    """
    if "://" not in shown and not url.startswith(("postgresql://", "postgres://")):
        return Path(shown).name
    scheme, _, rest = url.partition("://")
    host = rest.rpartition("@")[2].split("?", 1)[0]
    return f"{scheme}://{host}"


def _cmd_evidence(args: argparse.Namespace) -> int:
    if args.sample < 0 or args.sample > 100_000:
        raise ConfigError("--sample is 0 to 100000 proofs per chain")
    if args.cadence <= 0:
        raise ConfigError("--cadence is a positive number of seconds")
    now = _now()
    until = args.until or now
    if until <= args.since:
        raise ConfigError(f"--until {until} is not after --since {args.since}")
    if until > now:
        raise ConfigError(
            f"--until {until} is in the future: a pack of a period not over yet would differ "
            "from every later pack of it (leave --until out for 'until now')"
        )
    # Every usage error before anything is written (a checkpoint signed, a key made).
    retention = _retention(args.s3) if args.s3 else None
    reconcile = _reconcile(args) if args.reconcile else None
    url = args.ledger = args.ledger or default_ledger_url()
    chains = tuple(dict.fromkeys(args.chain or ()))
    config = AuditConfig.from_env(ledger_url=url)
    ledger, name = open_ledger_arg(args)
    with closing(ledger):
        unknown = [c for c in chains if c not in ledger.chains()]
        if unknown:
            raise ConfigError(f"the ledger has no chain {', '.join(map(repr, unknown))}")
        origin = config.origin or ""
        output = Path(args.output) if args.output else None
        if output is not None:
            check_output(output, url, force=args.force, signing_key=config.signing_key)
        if not args.no_checkpoint:
            _sign_uncovered(args, config, chains or tuple(ledger.chains()))
        if not any(ledger.latest_checkpoint(c) for c in ledger.chains()):
            raise ConfigError(
                "no chain of this ledger has a signed checkpoint: nothing to prove with "
                "(`workflow-audit checkpoint` signs one; this ledger could not be written)"
            )
        signer = CheckpointSigner.from_config(config, ledger)
        keys = load_verifiers(args.key) if args.key else signer.verifiers()
        origin = origin or signer.signer.name
        if output is None:
            output = Path(default_name(origin, args.since, until))
            check_output(output, url, force=args.force, signing_key=config.signing_key)
        request = PackRequest(
            since=args.since, until=until, chains=chains, sample=args.sample, cadence_s=args.cadence
        )
        result = make_pack(
            ledger,
            request,
            output,
            signer=signer.signer,
            origin=origin,
            keys=keys,
            ledger_name=ledger_name(url, name),
            reconcile=reconcile,
            retention=retention,
            redaction_digest=_policy_digest(config),
        )
    _record(url, args.since, until, result)
    return _print_result(result)


def check_output(
    output: Path, ledger_url: str, *, force: bool, signing_key: str | None = None
) -> None:
    """Refuse an output that is not a new regular file (``--force`` replaces a pack), and
    any file of the ledger itself or its keys (the local key, a configured key file):
    ``-o ledger.db`` must not destroy the trail, however the ledger was named."""
    from audit_core.ledgers import ledger_path

    postgres = ledger_url.startswith(("postgresql://", "postgres://"))
    path = None if postgres else ledger_path(ledger_url)
    own = [] if path is None else [path.with_name(path.name + s) for s in _LEDGER_FILES]
    if signing_key and not signing_key.startswith("PRIVATE+KEY+"):
        key = Path(signing_key).expanduser()
        own += [key, key.with_name(key.name + ".pub")]
    if any(_same(output, p) for p in own):
        raise ConfigError(f"-o {output} is a file of the ledger or its key: refused")
    if output.exists() or output.is_symlink():
        if not output.is_file() or output.is_symlink():
            raise ConfigError(f"-o {output} exists and is not a regular file: refused")
        if not force:
            raise ConfigError(f"{output} exists: pass --force to replace it, or another -o")
    if output.parent.exists() and not output.parent.is_dir():
        raise ConfigError(f"-o {output}: {output.parent} is not a directory")


#: The ledger file and what lives beside it: WAL, shared memory, the local key pair.
_LEDGER_FILES = ("", "-wal", "-shm", "-journal", ".key", ".key.pub")


def _same(a: Path, b: Path) -> bool:
    """One file, whatever the spelling (relative, symlinked, hard-linked)."""
    try:
        return (a.exists() and b.exists() and a.samefile(b)) or a.resolve() == b.resolve()
    except OSError:
        return a.absolute() == b.absolute()


def _sign_uncovered(args: argparse.Namespace, config: AuditConfig, chains: Sequence[str]) -> None:
    """Sign a checkpoint of each chain whose head no checkpoint covers yet, so that the
    period's records can be proven; a read-only ledger is left alone (the pack then says
    which records no checkpoint covers)."""
    from audit_core.trail import AuditTrail

    try:
        writable, _ = open_ledger_arg(args, write=True)
        with AuditTrail(config, ledger=writable) as trail:
            for chain in chains:
                latest = writable.latest_checkpoint(chain)
                size = writable.tree_head(chain)[0]
                if size and (latest is None or latest.size < size):
                    trail.checkpoint(chain)
    # A read-only or locked ledger, a read-only key directory: the pack says what no
    # checkpoint covers.
    except (AuditError, OSError) as exc:
        print(f"workflow-audit: no checkpoint signed before the pack: {exc}", file=sys.stderr)


def _reconcile(args: argparse.Namespace) -> Reconcile:
    from audit_core.reconcile import load, reconcile
    from audit_core.trail import AuditTrail

    source = str(args.reconcile)
    reconciler = load(source)

    def run(since: str, until: str) -> dict[str, Any]:
        config = reconciler.config(args.ledger, None)
        base: dict[str, Any] = {"ran": True, "source": source, "note": f"chain {config.chain!r}"}
        try:
            with AuditTrail(config) as trail:
                result = reconcile(trail, reconciler, since=since, until=until, dry_run=True)
        except AuditError as exc:
            return {**base, "expected": 0, "missing": 0, "listed": [], "error": str(exc)}
        listed = [
            {"event": e.type, **{k: v for k, v in (e.subject or {}).items() if v is not None}}
            for e in result.missing[:20]
        ]
        return {
            **base,
            "expected": result.checked,
            "missing": len(result.missing),
            "listed": listed,
            "error": None,
        }

    return run


def _retention(url: str) -> Retention:
    from audit_core.evidence.collect import LatestTs
    from audit_core.evidence.retention import (
        ChainSpan,
        RetentionResult,
        check_retention,
        parse_bucket_url,
    )
    from audit_core.sinks.s3 import s3_client

    bucket, prefix = parse_bucket_url(url)  # bucket-name rules: never a secret in a URL

    def run(spans: Sequence[ChainSpan], ts: LatestTs) -> RetentionResult:
        return check_retention(s3_client(), bucket, prefix, spans, ts)

    return run


def _record(url: str, since: str, until: str, result: PackResult) -> None:
    event = read_event(
        "exported",
        user=os_user(),
        via="cli",
        count=result.records,
        kind="evidence",
        format="zip",
        since=since,
        until=until,
        chains=list(result.chains),
        manifest_sha256=result.manifest_sha256,
        file=result.path.name,
        verdict=result.verdict,
    )
    record_cli_read(url, event)


def _policy_digest(config: AuditConfig) -> str | None:
    """The configured privacy policy's digest (the one its records carry in
    ``data._privacy.policy``), for the manifest's ``redaction_policy_digest``."""
    if not config.privacy_policy:
        return None
    from audit_core.privacy.apply import load_configured_policy

    return load_configured_policy(config.privacy_policy).digest


def _print_result(result: PackResult) -> int:
    for finding in result.findings:
        print(f"FAIL {finding}", file=sys.stderr)
    print(
        f"wrote {result.path}: {result.records} records of {len(result.chains)} chain(s), "
        f"verdict {result.verdict}, manifest SHA-256 {result.manifest_sha256}"
    )
    return EXIT_OK if result.verdict == "PASS" else EXIT_INVALID


def _cmd_verify_evidence(args: argparse.Namespace) -> int:
    from audit_core.evidence.check import verify_pack

    keys = load_verifiers(args.key)
    path = Path(args.pack)
    if not path.is_file():
        raise ConfigError(f"no evidence pack at {path}")
    ledger: Ledger | None = None
    if args.ledger:
        ledger, _ = open_ledger_arg(args)
    try:
        checked = verify_pack(path, keys, ledger=ledger, pdf=not args.no_pdf)
    except EvidenceError as exc:
        print(f"INVALID evidence pack {path}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    finally:
        if ledger is not None:
            ledger.close()
    if args.verbose:
        for result, what in checked.checks:
            print(f"{result:<4} {what}")
    if not checked.valid:
        for problem in checked.problems:
            print(f"INVALID {problem}", file=sys.stderr)
        return EXIT_INVALID
    m = checked.manifest
    sampled = ", ".join(f"{c['chain']} {c['sample']['n']}" for c in m["chains"])
    print(
        f"valid evidence pack {path}: period {m['period']['since']} to {m['period']['until']}, "
        f"{len(m['chains'])} chain(s), {len(m['files'])} files, verdict {m['verdict']}; "
        f"sampled proofs per chain: {sampled}"
    )
    for what in getattr(checked, "skipped", ()):
        print(f"NOT CHECKED {what}")
    if ledger is None:
        print(
            "(offline: what the pack holds is proven in the signed log; that it holds "
            "everything the period had needs --ledger, or a checkpoint kept elsewhere)"
        )
    return EXIT_OK
