"""``workflow-audit witness keygen``, ``witness serve``, ``witness status``: a c2sp.org/
tlog-witness witness anyone can run (:mod:`audit_core.witness`).

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="workflow-audit")
>>> add_parsers(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["witness", "serve", "--key", "w.key", "--state", "s.db",
...                           "--log", "KEY"])
>>> args.host, args.port, args.log, args.prefix
('127.0.0.1', 7380, ['KEY'], '')

``serve`` binds 127.0.0.1 unless ``--host`` says otherwise (and warns then: the protocol has
no authentication beyond the log's signature, c2sp.org/tlog-witness), prints one line
``witness NAME (KEYID) listening on URL`` on standard error when it accepts requests, one line
per decision after it, and exits 0 on SIGTERM or SIGINT. Key material is never printed: a key
file that cannot be read or is of the wrong kind is named by its path only (not even that
when the "path" looks like a key); a key file readable by group or others is refused.
``status`` opens the state read-only; both refuse a file that is not a witness state.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

from audit_core.cli._common import EXIT_OK, add_group
from audit_core.cli._reader import stopped_by_signals
from audit_core.errors import ConfigError, SignatureError, WitnessError
from audit_core.witness import Cosigner, TrustedLogs, Witness, WitnessState, read_logs_file
from audit_core.witness.server import DEFAULT_PORT, WitnessServer, is_loopback

__all__ = ["add_parsers", "load_cosigner"]

logger = logging.getLogger("workflow_audit.witness")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``witness keygen|serve|status`` to the ``workflow-audit`` subcommands ``sub``."""
    group = add_group(sub, "witness", help="run a C2SP tlog-witness that cosigns checkpoints")
    k = group.add_parser("keygen", help="create a witness key (0x04); print its public key")
    k.add_argument("name", help="the witness's name, e.g. witness.example.com/w1")
    k.add_argument("--out", required=True, help="private key file to create (mode 0600)")
    k.set_defaults(func=_cmd_keygen)

    s = group.add_parser(
        "serve",
        help="answer POST /add-checkpoint (c2sp.org/tlog-witness)",
        description="Cosign the checkpoints of the configured logs, each only when consistent "
        "with the last one cosigned for its origin (kept in --state).",
    )
    s.add_argument("--key", required=True, help="the witness's private key file (keygen)")
    s.add_argument("--state", required=True, help="the state file (SQLite; created 0600)")
    s.add_argument(
        "--log",
        action="append",
        default=[],
        metavar="ENTRY",
        help="a trusted log (repeatable): VKEY (origin = the key's name or NAME/…), "
        "ORIGIN=VKEY (that origin), PREFIX/*=VKEY (origins under PREFIX/)",
    )
    s.add_argument("--logs-file", metavar="FILE", help="--log entries, one a line, # comments")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    s.add_argument("--prefix", default="", help="URL path prefix of add-checkpoint")
    s.set_defaults(func=_cmd_serve)

    st = group.add_parser("status", help="each log origin's latest cosigned checkpoint")
    st.add_argument("--state", required=True, help="the state file")
    st.set_defaults(func=_cmd_status)


def _port(text: str) -> int:
    value = int(text) if text.isdigit() else -1
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text[:20]!r}")
    return value


def _looks_like_key(text: str) -> bool:
    """Could ``text`` be key material rather than a path (never echoed, then)?"""
    return "PRIVATE+KEY" in text or "+" in text


def load_cosigner(path: str, option: str = "--key") -> Cosigner:
    """The witness key in file ``path``; :class:`ConfigError` naming the path only (not even
    that when it looks like a key given by mistake), never the key. A key file readable by
    group or others is refused (``witness keygen`` writes 0600)."""
    shown = "(not shown: it looks like a key)" if _looks_like_key(path) else path
    if path.strip().startswith("PRIVATE+KEY+") or "\n" in path:
        raise ConfigError(f"{option} takes a key file, not the key itself (not shown)")
    file = Path(path).expanduser()
    try:
        mode = file.stat().st_mode
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read the witness key file {shown}: {why}") from None
    if mode & 0o077:
        raise ConfigError(
            f"the witness key file {shown} is readable by others (mode {mode & 0o777:o}): "
            f"run `chmod 600` on it (`witness keygen` writes 0600)"
        )
    try:
        return Cosigner.parse(text)
    except SignatureError:
        raise ConfigError(
            f"{shown} is not a witness private key (signature type 0x04; "
            "`workflow-audit witness keygen` makes one; a log's Ed25519 (0x01) key from "
            "`workflow-audit keygen` cannot cosign)"
        ) from None


def _write_new(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _cmd_keygen(args: argparse.Namespace) -> int:
    try:
        cosigner = Cosigner.generate(args.name)
    except SignatureError as exc:
        raise ConfigError(f"witness name: {exc}") from exc
    path = Path(args.out).expanduser()
    public = path.with_name(path.name + ".pub")
    for existing in (path, public):
        if existing.exists():
            raise ConfigError(f"{existing} exists; not overwriting a key")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write_new(path, f"{cosigner}\n", 0o600)
    except FileExistsError as exc:
        raise ConfigError(f"{path} exists; not overwriting a key") from exc
    _write_new(public, f"{cosigner.key}\n", 0o644)
    print(str(cosigner.key))
    print(
        f"witness key written to {path} (mode 0600); its public key also in {public}.\n"
        f"Run it: workflow-audit witness serve --key {path} --state STATE --log LOG_VKEY; "
        "give logs the public key and the URL.",
        file=sys.stderr,
    )
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    cosigner = load_cosigner(args.key)
    entries = list(args.log) + (list(read_logs_file(args.logs_file)) if args.logs_file else [])
    logs = TrustedLogs.parse(entries)
    if not is_loopback(args.host):
        print(
            f"workflow-audit witness: warning: listening on {args.host}, not loopback: anyone "
            "reaching it may submit checkpoints (only the configured logs' are cosigned)",
            file=sys.stderr,
        )
    _log_to_stderr()
    with WitnessState.open(args.state) as state:
        witness = Witness(logs, cosigner, state)
        server = WitnessServer((args.host, args.port), witness, args.prefix)
        thread = threading.Thread(target=server.serve_forever, name="workflow-audit-witness")
        with stopped_by_signals() as stop:
            thread.start()
            host, port = str(server.server_address[0]), server.server_address[1]
            shown = f"[{host}]" if ":" in host else host
            print(
                f"witness: {logs.count} trusted log key(s); public key {cosigner.key}",
                file=sys.stderr,
            )
            print(  # the last line printed at start: tests and scripts wait for it
                f"witness {cosigner.key.describe()} listening on http://{shown}:{port}"
                + server.prefix,
                file=sys.stderr,
                flush=True,
            )
            stop.wait()
            server.shutdown()
            server.server_close()
            thread.join()
    print("workflow-audit witness: stopped", file=sys.stderr)
    return EXIT_OK


def _log_to_stderr() -> None:
    """Decision lines (origin, sizes, status) on standard error, once."""
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s witness: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _cmd_status(args: argparse.Namespace) -> int:
    # read-only: status on a running witness's state changes nothing, and a file that is not
    # a witness state (a ledger given by mistake) is refused, not given witness tables
    try:
        with WitnessState.open_readonly(args.state) as state:
            latest, counts = state.origins(), state.counts()
    except WitnessError as exc:
        raise ConfigError(f"{args.state}: {exc}") from None
    for cp in latest:
        print(f"{cp.origin}\tsize {cp.size}\troot {cp.root.hex()}\tupdated {cp.updated}")
    print(
        f"{counts.origins} origin(s); {counts.refused} refused request(s) kept as evidence "
        f"({counts.refused_bytes} bytes)"
    )
    return EXIT_OK
