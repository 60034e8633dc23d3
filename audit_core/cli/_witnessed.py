"""What ``verify`` and ``verify-proof`` share about witnesses: ``--witness`` keys, the
quorum a checkpoint file or bundle must carry, and how the witnessed part of a verdict is
printed and recorded (c2sp.org/tlog-cosignature). Private to :mod:`audit_core.cli`.

>>> from audit_core._cosign import Cosigner
>>> key = Cosigner.generate("w.example/w1").key
>>> [k.name for k in load_witness_keys([str(key)])]
['w.example/w1']
"""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from audit_core._chain import WitnessedCheckpoint
from audit_core._cosign import WitnessKey
from audit_core.anchor.client import WitnessEndpoint, parse_witnesses
from audit_core.errors import ConfigError, SignatureError

__all__ = [
    "MAX_KEY_FILE_BYTES",
    "add_witness_args",
    "load_witness_keys",
    "load_witnesses",
    "witness_facts",
    "witnessed_lines",
]

#: A file of witness keys holds a few lines; reading stops here (``--witness /dev/zero``).
MAX_KEY_FILE_BYTES = 64 * 1024


def add_witness_args(p: argparse.ArgumentParser, *, what: str) -> None:
    """``--witness KEY`` (repeatable) and ``--quorum K``."""
    p.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="KEY",
        help=f"trusted witness key (a tlog-cosignature 0x04 vkey from `workflow-audit witness "
        f"keygen`, or a file of them, one a line; repeatable): {what}. As 'URL KEY' (as in "
        "WORKFLOW_AUDIT_WITNESSES) the witness is also asked for the latest checkpoint it "
        "cosigned of each chain, so that deleting the newest stored cosignatures hides nothing",
    )
    p.add_argument(
        "--origin",
        default=os.environ.get("WORKFLOW_AUDIT_ORIGIN") or None,
        metavar="PREFIX",
        help="the log's origin prefix: a chain C's checkpoints have origin PREFIX/C exactly "
        "(default: $WORKFLOW_AUDIT_ORIGIN, else the name of the --key)",
    )
    p.add_argument(
        "--quorum",
        type=int,
        default=0,
        metavar="K",
        help="how many of the --witness keys must have cosigned (default: every one)",
    )


def load_witness_keys(specs: Sequence[str]) -> list[WitnessKey]:
    """Witness keys from key strings or files (one key a line), ``URL KEY`` entries
    included (their keys). :class:`ConfigError` (exit 2) for anything else, e.g. a log's
    Ed25519 (0x01) verifier key given as a witness key."""
    return load_witnesses(specs)[0]


def load_witnesses(specs: Sequence[str]) -> tuple[list[WitnessKey], list[WitnessEndpoint]]:
    """Every witness key ``specs`` give, and the witnesses among them given as ``URL KEY``
    (on the command line or as a line of a key file), which can be asked online."""
    keys: list[WitnessKey] = []
    endpoints: list[WitnessEndpoint] = []
    for spec in specs:
        if "+" in spec and not Path(spec).expanduser().exists():
            lines = [spec]
        else:
            lines = _read_key_file(spec).splitlines()
        for line in (x.strip() for x in lines):
            if not line:
                continue
            if len(line.split()) > 1:  # URL KEY
                [endpoint] = parse_witnesses([line])
                endpoints.append(endpoint)
                keys.append(endpoint.key)
                continue
            try:
                keys.append(WitnessKey.parse(line))
            except SignatureError as exc:
                raise ConfigError(f"--witness: {exc}") from exc
    if specs and not keys:
        raise ConfigError("--witness: no witness key given")
    return keys, endpoints


def _read_key_file(spec: str) -> str:
    """A regular file of at most :data:`MAX_KEY_FILE_BYTES` (never a device or a FIFO,
    which could be read for ever)."""
    path = Path(spec).expanduser()
    try:
        # O_NONBLOCK: opening a FIFO waits for no writer; a regular file reads as usual
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ConfigError(f"--witness {spec!r} is not a regular file")
            data = f.read(MAX_KEY_FILE_BYTES + 1)
        if len(data) > MAX_KEY_FILE_BYTES:
            raise ConfigError(f"--witness {spec!r} is over {MAX_KEY_FILE_BYTES} bytes")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"--witness {spec!r} is neither a witness key nor a readable file"
        ) from exc


def witnessed_lines(witnessed: Sequence[WitnessedCheckpoint], size: int) -> list[str]:
    """The text a chain's verdict adds: its latest witnessed checkpoint and the records
    appended since (valid, not yet witnessed)."""
    if not witnessed:
        return ["       witnessed: no records to witness yet"] if size == 0 else []
    latest = witnessed[-1]
    lines = [f"       witnessed: {latest.describe()}"]
    if latest.missing:
        lines.append("       (not cosigned by " + ", ".join(k.name for k in latest.missing) + ")")
    after = size - latest.size
    if after:
        lines.append(
            f"       {after} record(s) after the last witnessed checkpoint (not yet witnessed)"
        )
    return lines


def witness_facts(keys: Sequence[WitnessKey], quorum: int) -> dict[str, object]:
    """What ``audit.verified`` records of the witnesses required (public keys only)."""
    if not keys:
        return {}
    return {"witnesses": [str(k) for k in keys], "quorum": quorum or len(keys)}
