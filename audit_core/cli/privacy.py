"""``workflow-audit privacy erase|open|verify|status|policy``: the erasable privacy store.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="workflow-audit")
>>> add_parsers(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["privacy", "erase", "alice", "--reason", "ticket 42"])
>>> args.privacy_command, args.subject, args.basis
('erase', 'alice', 'GDPR Art. 17(1)')

Exit codes: ``erase`` 0 when erased, 2 when there is no such subject (nothing appended) or
the store cannot be used; ``open`` 0 when every field opened or is unavailable (erased), 1
when an opening does not match its commitment or a marker was copied from another record;
``verify`` 0 when every commitment of the chains read matches its opening (erased ones are
counted, not failures), 1 otherwise; with ``--pointer`` and ``--value``, 0 when the value is
the one committed, 1 when it is not (or the commitment was copied), 3 when it can no longer
be checked (erased), 2 when the record holds no commitment there. Every command: 2 for a
usage error or a store that cannot be read. ``open`` and ``verify`` read personal data, and
each read is recorded on the ledger's ``audit`` chain: ``audit.opened`` (the fields opened;
for a claim its answer, never the claimed value) or ``audit.verified`` (the counts).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import orjson

from audit_core.cli._common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_PENDING,
    add_group,
    default_ledger_url,
    open_ledger_arg,
)
from audit_core.config import AuditConfig
from audit_core.errors import ConfigError, PrivacyError, SubjectNotFound
from audit_core.ledgers import ledger_path, masked_url
from audit_core.trail import AuditTrail

if TYPE_CHECKING:
    from audit_core.privacy.apply import Privacy

# The privacy services (and cryptography's AES) are imported by the commands that use them:
# `workflow-audit verify` starts no faster for them.

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``privacy`` command group."""
    commands = add_group(sub, "privacy", help="personal data: erase, open, verify commitments")
    er = commands.add_parser(
        "erase",
        help="erase a data subject (GDPR Art. 17): destroy its key and openings",
        description="Destroy the subject's key and every opening of its values, and append "
        "a privacy.erased record (pseudonym, method, key check value, legal basis, number of "
        "records). Every chain, checkpoint, proof and S3 segment still verifies. Exit 2, "
        "appending nothing, for a subject the store does not know.",
    )
    er.add_argument(
        "subject", nargs="?", help="the data subject's identifier as recorded (e.g. a username)"
    )
    er.add_argument("--reason", help="why (a ticket number; no personal data); required")
    er.add_argument(
        "--finish",
        action="store_true",
        help="only finish erasures a crash or an unwritable ledger left pending, and compact "
        "the store (an erasure does this first anyway)",
    )
    er.add_argument("--basis", default="GDPR Art. 17(1)", help="legal basis (default: %(default)s)")
    _store_args(er)
    er.set_defaults(func=_cmd_erase)
    op = commands.add_parser(
        "open",
        help="show what a record's commitments hide (needs the store and its keys)",
        description="Open every commitment and sealed value of one record and check each "
        "against its commitment. Exit 1 when an opening does not match.",
    )
    _record_args(op)
    op.add_argument("--pointer", help="only this field (a JSON pointer, e.g. /actor/id)")
    _store_args(op)
    op.set_defaults(func=_cmd_open)
    ve = commands.add_parser(
        "verify",
        help="check commitments against their openings (all, or one claimed value)",
        description="Without --seq: open every commitment of the chains and check it; "
        "erased ones are counted. With --seq, --pointer and --value: is VALUE (JSON) the "
        "value committed there? Exit 0 yes, 1 no.",
    )
    ve.add_argument("--ledger", help="ledger URL (default: $WORKFLOW_AUDIT_LEDGER)")
    ve.add_argument("--chain", action="append", help="chain (repeatable; default: every chain)")
    ve.add_argument("--seq", type=_seq, help="one record (with --pointer and --value)")
    ve.add_argument("--pointer", help="the committed field's JSON pointer, e.g. /actor/id")
    ve.add_argument("--value", help="the claimed value, as JSON (a string is '\"alice\"')")
    _store_args(ve, ledger=False)
    ve.set_defaults(func=_cmd_verify)
    st = commands.add_parser("status", help="subjects, openings and erasures in the store")
    _store_args(st)
    st.set_defaults(func=_cmd_status)
    po = commands.add_parser(
        "policy",
        help="check a policy file and print its effective rules and digest",
        description="Read FILE (or the configured policy, else the built-in defaults), "
        "print its digest and effective rules. Exit 2 when it is malformed.",
    )
    po.add_argument("file", nargs="?", help="policy file (.toml, .yaml) or 'default'")
    po.add_argument("--json", action="store_true", help="the effective policy as JSON")
    po.set_defaults(func=_cmd_policy)


def _record_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--ledger", help="ledger URL (default: $WORKFLOW_AUDIT_LEDGER)")
    sp.add_argument("--chain", required=True, help="the record's chain")
    sp.add_argument("--seq", type=_seq, required=True, help="the record's seq")


def _seq(text: str) -> int:
    """An argparse type: a record's seq, 0 to 2**63 - 1 (SQLite's INTEGER)."""
    try:
        seq = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seq is a whole number, not {text!r}") from None
    if not 0 <= seq < 2**63:
        raise argparse.ArgumentTypeError(f"a seq is 0 to 2**63 - 1, not {text}")
    return seq


def _store_args(sp: argparse.ArgumentParser, *, ledger: bool = True) -> None:
    if ledger and not any(a.dest == "ledger" for a in sp._actions):
        sp.add_argument("--ledger", help="ledger URL (default: $WORKFLOW_AUDIT_LEDGER)")
    sp.add_argument("--store", help="privacy store URL (default: $WORKFLOW_AUDIT_PRIVACY_STORE)")
    sp.add_argument("--keys", help="key store (default: $WORKFLOW_AUDIT_PRIVACY_KEYS)")
    sp.add_argument("--json", action="store_true", help="JSON output")


def _config(args: argparse.Namespace) -> AuditConfig:
    # The ledger's URL as given (or found), fixed once: the store and keys default beside it.
    args.ledger = args.ledger or default_ledger_url()
    overrides: dict[str, Any] = {"ledger_url": args.ledger}
    if args.store:
        overrides["privacy_store"] = args.store
    if args.keys:
        overrides["privacy_keys"] = args.keys
    return AuditConfig.from_env(**overrides)


def _privacy(config: AuditConfig, *, read_only: bool) -> Privacy:
    from audit_core.privacy.apply import Privacy, load_configured_policy, privacy_urls
    from audit_core.privacy.keys import open_keystore
    from audit_core.privacy.policy import default_policy
    from audit_core.privacy.store import PrivacyStore

    store_url, keys_url = privacy_urls(config)
    policy = (
        load_configured_policy(config.privacy_policy) if config.privacy_policy else default_policy()
    )
    store = PrivacyStore(store_url, read_only=read_only)
    try:
        keys = open_keystore(keys_url, read_only=read_only)
    except PrivacyError:
        store.close()
        raise
    return Privacy(policy, store_url=store_url, keys_url=keys_url, store=store, keys=keys)


def _emit(args: argparse.Namespace, doc: object, text: str) -> None:
    if args.json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode() + "\n")
    else:
        print(text)


def _cmd_erase(args: argparse.Namespace) -> int:
    from audit_core.privacy.erase import erase_subject, finish_pending

    if args.finish == (args.subject is not None):
        raise ConfigError("give a SUBJECT (with --reason), or --finish alone")
    if args.subject is not None and not args.reason:
        raise ConfigError("--reason is required: a ticket number or request id")
    config = _config(args)
    ledger, _ = open_ledger_arg(args, write=True)  # first: a mistyped ledger creates no store
    try:
        _must_exist(config)  # never a new, empty store answering "no such subject"
        privacy = _privacy(config, read_only=False)
    except Exception:
        ledger.close()
        raise
    with AuditTrail(config, ledger=ledger, privacy=privacy) as trail:
        try:
            finished = finish_pending(trail)
        except PrivacyError as exc:
            if args.finish:
                raise
            print(f"workflow-audit: warning: {exc}", file=sys.stderr)
            finished = []
        for f in finished:
            print(f"finished the interrupted erasure of {f.erasure.pseudonym}: recorded as "
                  f"{f.record.chain}:{f.record.seq}")  # fmt: skip
        if args.finish:
            if not finished:
                print("no erasure was pending; the store is compacted")
            return EXIT_OK
        try:
            result = erase_subject(trail, args.subject, reason=args.reason, basis=args.basis)
        except SubjectNotFound as exc:
            where = masked_url(privacy.store_url)
            raise SubjectNotFound(f"{exc} (store {where})") from None
    e = result.erasure
    doc = {
        "erased": e.pseudonym,
        "key_check_value": e.kcv,
        "records": e.records,
        "values": e.values,
        "record": {"chain": result.record.chain, "seq": result.record.seq},
        "finished_pending": len(finished),
    }
    _emit(
        args,
        doc,
        f"erased {e.pseudonym} (key check value {e.kcv}): {e.values} value(s) in "
        f"{e.records} record(s) can no longer be opened; recorded as "
        f"{result.record.chain}:{result.record.seq}",
    )
    return EXIT_OK


def _must_exist(config: AuditConfig) -> None:
    from audit_core.privacy.apply import privacy_urls

    store, keys = privacy_urls(config)
    for what, url in (("privacy store", store), ("key store", keys)):
        local = url.startswith("sqlite:") or "://" not in url
        path = ledger_path(url) if local else None
        if path is not None and not path.is_file():
            raise ConfigError(
                f"no {what} at {path}: this ledger was never written with a privacy policy "
                "here (its values are on the chain as recorded and cannot be erased), or the "
                "store is elsewhere (--store, --keys, WORKFLOW_AUDIT_PRIVACY_STORE/_KEYS)"
            )


def _read(args: argparse.Namespace) -> tuple[Any, Privacy]:
    privacy = _privacy(_config(args), read_only=True)
    try:
        ledger, _ = open_ledger_arg(args)
    except Exception:
        privacy.close()
        raise
    return ledger, privacy


def _stored(ledger: Any, chain: str, seq: int) -> Any:
    for stored in ledger.read(chain, seq, seq + 1):
        return stored
    raise ConfigError(f"chain {chain!r} has no record {seq}")


def _cmd_open(args: argparse.Namespace) -> int:
    from audit_core.privacy.erase import PROBLEMS, open_record

    ledger, privacy = _read(args)
    try:
        opened = open_record(_stored(ledger, args.chain, args.seq), privacy)
        if args.pointer is not None:
            opened = [o for o in opened if o.pointer == args.pointer]
            if not opened:
                raise ConfigError(f"{args.chain}:{args.seq} has no commitment at {args.pointer}")
    finally:
        ledger.close()
        privacy.close()
    fields = [o.pointer for o in opened]
    _record_read(args, "opened", chain=args.chain, seq=args.seq, privacy="open", fields=fields)
    doc = [
        {"pointer": o.pointer, "status": o.status, "kind": o.kind, "value": o.value} for o in opened
    ]
    lines = [f"{args.chain}:{args.seq}: {len(opened)} committed or sealed field(s)"] + [
        f"  {o.pointer}: {o.status}"
        + (f" = {orjson.dumps(o.value).decode()}" if o.status == "ok" else "")
        + (" (erased, or its opening was never stored)" if o.status == "unavailable" else "")
        + (
            " (its nonce is not this record's: copied from another record)"
            if o.status == "foreign"
            else ""
        )
        for o in opened
    ]
    _emit(args, doc, "\n".join(lines))
    return EXIT_INVALID if any(o.status in PROBLEMS for o in opened) else EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from audit_core.privacy.erase import verify_openings

    claim = (args.seq, args.pointer, args.value)
    if any(x is not None for x in claim) and any(x is None for x in claim):
        raise ConfigError("checking one value needs --chain, --seq, --pointer and --value")
    ledger, privacy = _read(args)
    try:
        if args.seq is not None:
            return _verify_claim(args, ledger, privacy)
        unknown = sorted(set(args.chain or ()) - set(ledger.chains()))
        if unknown:  # a typo must not read as VALID
            raise ConfigError(f"the ledger has no chain {', '.join(map(repr, unknown))}")
        report = verify_openings(ledger, privacy, args.chain)
    finally:
        ledger.close()
        privacy.close()
    _record_read(args, "verified", privacy="verify", counts=dict(report.counts))
    c = report.counts
    doc = {
        "records": report.records,
        "counts": c,
        "ok": report.ok,
        "problems": [
            {"chain": p.chain, "seq": p.seq, "pointer": p.pointer, "status": p.status}
            for p in report.problems
        ],
    }
    text = (
        f"{'VALID' if report.ok else 'INVALID'}: {report.records} record(s) read; "
        f"{c['ok']} commitment(s) match their openings, {c['unavailable']} unavailable "
        f"(erased, or never stored), {c['mismatch']} mismatched, {c['malformed']} malformed, "
        f"{c['foreign']} copied from another record, {c['duplicate']} in a copied record"
    )
    for p in report.problems:
        text += f"\n  {p.chain}:{p.seq} {p.pointer}: {p.status}"
    _emit(args, doc, text)
    return EXIT_OK if report.ok else EXIT_INVALID


def _verify_claim(args: argparse.Namespace, ledger: Any, privacy: Privacy) -> int:
    from audit_core.privacy.erase import check_claim

    if not args.chain or len(args.chain) != 1:
        raise ConfigError("checking one value needs exactly one --chain")
    if not args.pointer.startswith("/"):
        raise ConfigError(f"--pointer is a JSON pointer starting with '/': {args.pointer!r}")
    try:
        value = orjson.loads(args.value)
    except orjson.JSONDecodeError as exc:
        raise ConfigError("--value is JSON: a string is written '\"alice\"'") from exc
    stored = _stored(ledger, args.chain[0], args.seq)
    where = f"{stored.chain}:{stored.seq} {args.pointer}"
    status = check_claim(stored, args.pointer, value, privacy)
    # the claimed value itself is not recorded: only that it was checked, and the answer
    _record_read(
        args,
        "opened",
        chain=stored.chain,
        seq=stored.seq,
        privacy="claim",
        fields=[args.pointer],
        answer=status,
    )
    texts = {
        "match": f"MATCH: the value is the one committed at {where}",
        "mismatch": f"NO MATCH: the value is not the one committed at {where}",
        "foreign": f"NO MATCH: the commitment at {where} was copied from another record",
        "unavailable": f"NOT CHECKED: {where} can no longer be opened (erased, or its "
        "opening was never stored)",
    }
    _emit(args, {"match": status == "match", "status": status}, texts[status])
    return {"match": EXIT_OK, "unavailable": EXIT_PENDING}.get(status, EXIT_INVALID)


def _record_read(args: argparse.Namespace, kind: str, **facts: Any) -> None:
    """An ``audit.*`` record of this read of personal data on the ledger's audit chain (one
    line on standard error when the ledger cannot take it, as for every CLI read)."""
    from audit_core.cli.records import record_cli_read
    from audit_core.readlog import os_user, read_event

    record_cli_read(args.ledger, read_event(kind, user=os_user(), via="cli", **facts))


def _cmd_status(args: argparse.Namespace) -> int:
    from audit_core.privacy.apply import privacy_urls
    from audit_core.privacy.store import PrivacyStore

    config = _config(args)
    # status reads the store alone: a PostgreSQL ledger's keys need not be configured for it
    store_url, _ = privacy_urls(config.evolve(privacy_keys=config.privacy_keys or "unused"))
    store = PrivacyStore(store_url, read_only=True)
    try:
        stats, erasures = store.stats(), store.erasures()
    finally:
        store.close()
    pending = [e.pseudonym for e in erasures if e.state == "pending"]
    where = masked_url(store_url)
    doc = {"url": where, "store": stats, "erasures": len(erasures), "pending": pending}
    text = f"{where}: " + ", ".join(f"{k}: {v}" for k, v in sorted(stats.items()))
    if pending:
        text += f"\n{len(pending)} erasure(s) interrupted: `privacy erase --finish` finishes them"
    _emit(args, doc, text)
    return EXIT_OK


def _cmd_policy(args: argparse.Namespace) -> int:
    from audit_core.privacy.apply import load_configured_policy

    name = args.file or AuditConfig.from_env().privacy_policy or "default"
    policy = load_configured_policy(name)
    if args.json:
        doc = {"digest": policy.digest, "source": policy.source, "policy": policy.to_json()}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode() + "\n")
        return EXIT_OK
    print(f"{policy.source}: {policy.digest}")
    print(orjson.dumps(policy.to_json(), option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK
