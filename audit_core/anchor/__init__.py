"""Anchoring a ledger: checkpoints signed without cron, cosigned by independent witnesses.

>>> from audit_core.anchor import parse_witnesses
>>> parse_witnesses([])
[]

:mod:`audit_core.anchor.periodic` runs the rounds (:class:`Anchor`, :func:`start_anchor`);
:mod:`audit_core.anchor.client` speaks c2sp.org/tlog-witness to each configured witness
(:class:`WitnessEndpoint`, :func:`parse_witnesses`).
"""

from __future__ import annotations

from audit_core.anchor.client import WitnessEndpoint, parse_witnesses
from audit_core.anchor.periodic import Anchor, AnchorReport, cosigned_sizes, start_anchor

__all__ = [
    "Anchor",
    "AnchorReport",
    "WitnessEndpoint",
    "cosigned_sizes",
    "parse_witnesses",
    "start_anchor",
]
