"""``workflow-audit keygen``, ``checkpoint``, ``prove``, ``verify-proof``, ``cosign`` and
``consistency``: signed checkpoints of the chains and the RFC 9162 proofs built on them.

``cosign`` adds a c2sp.org/tlog-cosignature ``cosignature/v1`` line (timestamped, signature
type 0x04, a key from ``witness keygen``) after checking the log's signature; it checks no
consistency with earlier checkpoints, which a witness server (``witness serve``) does.
``prove`` bundles carry the stored cosignatures of their checkpoint; ``verify-proof
--witness K --quorum N`` requires them.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="workflow-audit")
>>> add_parsers(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["prove", "--seq", "7", "--chain", "etl", "-o", "proof.json"])
>>> args.seq, args.chain, args.size, args.output
(7, 'etl', None, 'proof.json')
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import orjson

from audit_core._cosign import add_cosignatures, cosignature_lines
from audit_core._note import Signer, note_parts
from audit_core._record import StoredCheckpoint, StoredCosignature
from audit_core.checkpoint import CheckpointSigner, load_verifiers, write_key_files
from audit_core.cli._common import (
    EXIT_INVALID,
    EXIT_OK,
    add_ledger_args,
    default_ledger_url,
    open_ledger_arg,
    read_checkpoint,
)
from audit_core.cli._witnessed import add_witness_args, load_witness_keys
from audit_core.cli.witness import load_cosigner
from audit_core.config import AuditConfig
from audit_core.errors import (
    CheckpointError,
    ConfigError,
    ProofError,
    QuorumError,
    SignatureError,
)
from audit_core.ledgers import LedgerReader
from audit_core.proofs import (
    BUNDLE_FORMAT,
    make_inclusion_bundle,
    prove_consistency,
    verify_inclusion_bundle,
)
from audit_core.quorum import utc_time
from audit_core.trail import AuditTrail
from audit_core.verify import chain_of, check_quorum, origin_prefixes

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keygen``, ``checkpoint``, ``prove``, ``verify-proof``, ``cosign`` and
    ``consistency`` to the ``workflow-audit`` subcommands ``sub``."""
    k = sub.add_parser("keygen", help="create a checkpoint signing key; print its verifier key")
    k.add_argument(
        "--name", required=True, help="key name, a schema-less URL such as example.com/audit/prod"
    )
    k.add_argument("-o", "--output", help="key file to write (default: NAME.key, mode 0600)")
    k.set_defaults(func=_cmd_keygen)

    c = sub.add_parser("checkpoint", help="sign a checkpoint of each chain now")
    add_ledger_args(c, chain_help="chain to checkpoint (repeatable; default: every chain)")
    c.add_argument(
        "--all",
        action="store_true",
        help="every chain (the default without --chain; spelled out for scripts)",
    )
    c.add_argument(
        "--rotate-key",
        action="store_true",
        help="the local signing key is lost: mint a new one even though the ledger holds "
        "checkpoints signed by the old one (its verifier key is added to <key>.pub; "
        "verifiers then need both keys)",
    )
    c.set_defaults(func=_cmd_checkpoint)

    pr = sub.add_parser("prove", help="write an inclusion proof bundle for one record")
    pr.add_argument("--ledger", help="ledger URL (default: $WORKFLOW_AUDIT_LEDGER)")
    pr.add_argument("--chain", default=None, help="chain (default: $WORKFLOW_AUDIT_CHAIN)")
    pr.add_argument("--seq", type=int, required=True, help="the record's seq")
    pr.add_argument(
        "--size",
        type=int,
        help="tree size of a stored checkpoint (default: the latest cosigned by witnesses, "
        "else the latest)",
    )
    pr.add_argument(
        "--witnessed",
        action="store_true",
        help="use a checkpoint witnesses cosigned, or fail (exit 2)",
    )
    pr.add_argument("-o", "--output", help="bundle file (default: standard output)")
    pr.set_defaults(func=_cmd_prove)

    vp = sub.add_parser("verify-proof", help="check an inclusion proof bundle offline")
    vp.add_argument("bundle", help="bundle file written by `prove`")
    vp.add_argument("--key", action="append", required=True, help="trusted verifier key")
    add_witness_args(vp, what="the bundle's checkpoint must carry --quorum of their cosignatures")
    vp.set_defaults(func=_cmd_verify_proof)

    co = sub.add_parser(
        "cosign",
        help="add a timestamped witness cosignature (c2sp.org/tlog-cosignature) to a signed "
        "checkpoint",
    )
    co.add_argument("checkpoint", help="signed checkpoint file (rewritten with the new line)")
    co.add_argument(
        "--witness-key",
        "--signing-key",  # its name before cosignatures were timestamped (0x04)
        dest="witness_key",
        required=True,
        metavar="FILE",
        help="witness private key file, from `workflow-audit witness keygen`",
    )
    co.add_argument(
        "--key",
        action="append",
        required=True,
        help="verifier key the checkpoint must already be signed by (the log's)",
    )
    co.set_defaults(func=_cmd_cosign)

    cs = sub.add_parser("consistency", help="prove append-only growth between two checkpoints")
    cs.add_argument("old", help="older signed checkpoint file (cosignature lines are ignored)")
    cs.add_argument("new", help="newer signed checkpoint file")
    cs.add_argument("--ledger", help="ledger URL to build the proof from")
    cs.add_argument(
        "--key",
        action="append",
        default=[],
        help="trusted verifier key (without one, signatures are NOT checked)",
    )
    cs.set_defaults(func=_cmd_consistency)


def _only_chain(ledger: LedgerReader) -> str | None:
    """The ledger's chain when it has exactly one (then --chain may be left out)."""
    chains = ledger.chains()
    return chains[0] if len(chains) == 1 else None


def _cmd_keygen(args: argparse.Namespace) -> int:
    signer = Signer.generate(args.name)
    path = Path(args.output or re.sub(r"[^A-Za-z0-9._-]+", "_", args.name) + ".key")
    try:
        public = write_key_files(signer, path)
    except FileExistsError as exc:
        raise ConfigError(f"{path} exists; not overwriting a key") from exc
    print(str(signer.verifier))
    print(
        f"signer key written to {path} (mode 0600); verifier key also in {public}.\n"
        f"Use it: WORKFLOW_AUDIT_SIGNING_KEY={path}; keep the verifier key where the "
        "ledger's writers cannot change it.",
        file=sys.stderr,
    )
    return EXIT_OK


def _cmd_checkpoint(args: argparse.Namespace) -> int:
    if args.all and args.chain:
        raise ConfigError("--all signs every chain: leave out --chain")
    # The ledger must exist and be one: never create one here, nor a schema in another file.
    ledger, _ = open_ledger_arg(args, write=True)
    url = args.ledger or default_ledger_url()
    trail = AuditTrail(AuditConfig.from_env(ledger_url=url), ledger=ledger)
    if args.rotate_key:
        trail.rotate_key = True
    chains = args.chain or trail.ledger.chains()
    signed = [s for s in map(trail.checkpoint, chains) if s is not None]
    if trail.config.witnesses:  # WORKFLOW_AUDIT_WITNESSES: cosigned before it is printed
        signed = _witnessed(trail, chains, signed)
    for stored in signed:
        print(stored.note, end="")
    return EXIT_OK


def _witnessed(
    trail: AuditTrail, chains: Sequence[str], signed: list[StoredCheckpoint]
) -> list[StoredCheckpoint]:
    """Ask the configured witnesses to cosign each chain's latest checkpoint (one anchor
    round over ``chains``); the checkpoints returned carry every stored cosignature."""
    from audit_core.anchor import Anchor, parse_witnesses

    config = trail.config
    signing = CheckpointSigner.from_config(config, trail.ledger, rotate=trail.rotate_key)
    anchor = Anchor(
        trail.ledger,
        signing,
        witnesses=parse_witnesses(config.witnesses),  # a malformed one: exit 2, named
        timeout_s=config.witness_timeout_s,
        name="workflow-audit-checkpoint",
    )
    report = anchor.tick(chains)
    said = [
        f"{n} {what}"
        for n, what in (
            (report.conflicts, "refusal(s): a witness cosigned a history this ledger lacks"),
            (report.failures, "witness exchange(s) failed"),
        )
        if n
    ]
    if said:
        print(
            f"workflow-audit: warning: {'; '.join(said)} (see above). The checkpoints are "
            "signed; `workflow-audit health` shows what each witness cosigned",
            file=sys.stderr,
        )
    return [
        replace(s, note=add_cosignatures(s.note, _lines(trail.ledger.cosignatures(s.chain), s)))
        for s in signed
    ]


def _lines(rows: Sequence[StoredCosignature], stored: StoredCheckpoint) -> list[str]:
    body, _ = note_parts(stored.note)
    return [r.line for r in rows if r.size == stored.size and r.body == body]


def _cmd_prove(args: argparse.Namespace) -> int:
    ledger, _ = open_ledger_arg(args)
    chain = args.chain or _only_chain(ledger) or AuditConfig.from_env().chain
    try:
        with ledger.snapshot() as view:  # checkpoint, record and audit path of one instant
            bundle = make_inclusion_bundle(
                view, chain, args.seq, args.size, witnessed=args.witnessed
            )
    except ProofError as exc:
        raise ConfigError(str(exc)) from exc
    text = orjson.dumps(bundle, option=orjson.OPT_INDENT_2).decode() + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        cosigs = len(cosignature_lines(bundle["checkpoint"]))
        print(
            f"wrote inclusion proof of chain {chain!r} seq {args.seq} at tree size "
            f"{bundle['tree_size']} ({cosigs} cosignature(s)) to {args.output}",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _cmd_verify_proof(args: argparse.Namespace) -> int:
    keys = load_verifiers(args.key)
    witnesses = load_witness_keys(args.witness)
    quorum = check_quorum(witnesses, args.quorum)
    if witnesses:
        origin_prefixes(args.origin, keys)  # the bundle's origin must be this log's
    try:
        bundle = orjson.loads(Path(args.bundle).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read bundle {args.bundle}: {exc}") from exc
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise ConfigError(f"{args.bundle} is not a {BUNDLE_FORMAT} bundle (written by `prove`)")
    try:
        proven = verify_inclusion_bundle(
            bundle, keys, witnesses=witnesses, quorum=quorum, origin=args.origin
        )
    except (ProofError, SignatureError, CheckpointError, QuorumError) as exc:
        print(f"INVALID proof {args.bundle}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    rec, cp = proven.record, proven.checkpoint
    print(
        f"valid: chain {rec.chain!r} seq {rec.seq} ({rec.event} at {rec.ts}) is leaf "
        f"{rec.seq} of {cp.origin} at tree size {cp.size}, signed by "
        + ", ".join(v.name for v in proven.signed_by)
    )
    for key, cosig in proven.cosigned:
        print(f"       cosigned by witness {key.describe()} at {utc_time(cosig.timestamp)}")
    return EXIT_OK


def _cmd_cosign(args: argparse.Namespace) -> int:
    # A witness cosigns only what it has checked: the log's signature first. This command
    # checks no consistency with earlier checkpoints (a witness server does: `witness
    # serve`); its cosignature/v1 line states the time it was made (c2sp.org/tlog-cosignature).
    keys = load_verifiers(args.key)
    witness = load_cosigner(args.witness_key, "--witness-key")
    path = Path(args.checkpoint)
    checkpoint = read_checkpoint(str(path), keys)  # exit 2 if unreadable, 1 if unsigned
    note = path.read_text(encoding="utf-8")
    # tlog-cosignature: the signed message holds the whole note text, extension lines too
    body, _ = note_parts(note)
    line = witness.cosign(body, int(time.time()))
    try:
        cosigned = add_cosignatures(note, [line])
    except SignatureError as exc:
        raise ConfigError(f"cannot cosign {path}: {exc}") from exc
    _replace_file(path, cosigned)
    print(
        "warning: `cosign` checks no consistency with checkpoints cosigned before "
        "(`workflow-audit witness serve` does)",
        file=sys.stderr,
    )
    print(
        f"cosigned {checkpoint.describe()} as {witness.name} (cosignature/v1); witness key "
        f"{witness.key}",
        file=sys.stderr,
    )
    return EXIT_OK


def _replace_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file renamed over it): a crash
    leaves the old checkpoint or the new one, never half a note."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        mode = path.stat().st_mode & 0o777
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.fchmod(fd, mode)  # the checkpoint file keeps its mode
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


def _cmd_consistency(args: argparse.Namespace) -> int:
    keys = load_verifiers(args.key) if args.key else []
    if not keys:
        print("warning: no --key: checkpoint signatures are NOT checked", file=sys.stderr)
    try:
        old, new = (read_checkpoint(p, keys) for p in (args.old, args.new))
    except (SignatureError, CheckpointError) as exc:
        print(f"INVALID: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if old.origin != new.origin:
        raise ConfigError(f"checkpoints are of different logs: {old.origin!r}, {new.origin!r}")
    ledger, _ = open_ledger_arg(args)
    chain = chain_of(old, ledger.chains())  # the longest chain id the origin ends with
    if chain is None:
        print(
            f"INVALID: no chain of the ledger matches origin {old.origin!r} (deleted?)",
            file=sys.stderr,
        )
        return EXIT_INVALID
    try:
        with ledger.snapshot() as view:
            proof = prove_consistency(view, chain, old, new)
    except (ProofError, CheckpointError) as exc:
        print(f"INVALID: {old.describe()} -> {new.describe()}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(
        orjson.dumps(
            {
                "origin": old.origin,
                "old_size": min(old.size, new.size),
                "new_size": max(old.size, new.size),
                "proof": [h.hex() for h in proof],
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
    )
    print(
        f"valid: the tree at size {min(old.size, new.size)} is a prefix of the tree at size "
        f"{max(old.size, new.size)} (RFC 9162 consistency proof, {len(proof)} hashes)",
        file=sys.stderr,
    )
    return EXIT_OK
