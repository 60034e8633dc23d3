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
from collections.abc import Sequence
from pathlib import Path

from audit_core._chain import WitnessedCheckpoint
from audit_core._cosign import WitnessKey
from audit_core.errors import ConfigError, SignatureError

__all__ = [
    "add_witness_args",
    "load_witness_keys",
    "witness_facts",
    "witnessed_lines",
]


def add_witness_args(p: argparse.ArgumentParser, *, what: str) -> None:
    """``--witness KEY`` (repeatable) and ``--quorum K``."""
    p.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="KEY",
        help=f"trusted witness key (a tlog-cosignature 0x04 vkey from `workflow-audit witness "
        f"keygen`, or a file of them, one a line; repeatable): {what}",
    )
    p.add_argument(
        "--quorum",
        type=int,
        default=0,
        metavar="K",
        help="how many of the --witness keys must have cosigned (default: every one)",
    )


def load_witness_keys(specs: Sequence[str]) -> list[WitnessKey]:
    """Witness keys from key strings or files (one key a line). :class:`ConfigError` (exit 2)
    for anything else, e.g. a log's Ed25519 (0x01) verifier key given as a witness key."""
    keys: list[WitnessKey] = []
    for spec in specs:
        if "+" in spec and not Path(spec).expanduser().exists():
            lines = [spec]
        else:
            try:
                lines = Path(spec).expanduser().read_text(encoding="utf-8").split()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"--witness {spec!r} is neither a witness key nor a readable file"
                ) from exc
        for line in lines:
            try:
                keys.append(WitnessKey.parse(line))
            except SignatureError as exc:
                raise ConfigError(f"--witness: {exc}") from exc
    if specs and not keys:
        raise ConfigError("--witness: no witness key given")
    return keys


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
