"""Verify the chains a ledger holds.

>>> from audit_core import AuditConfig, AuditTrail, verify_chain
>>> trail = AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:"))
>>> _ = trail.record("task.started", {"task": "train"})
>>> verify_chain(trail.ledger, "default").size
1

Each function returns what it verified (:class:`~audit_core._chain.ChainHead`) or raises the
precise :class:`~audit_core.errors.VerificationError` for the first failing record; it never
returns a bool (the sigstore-python habit: a verdict cannot be ignored by accident).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from audit_core._chain import ChainHead, check_head, verify_records
from audit_core.errors import HeadMismatchError
from audit_core.ledgers import Ledger

__all__ = ["ChainHead", "verify_chain", "verify_ledger"]


def verify_chain(
    ledger: Ledger,
    chain: str,
    *,
    expect_size: int | None = None,
    expect_head: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ChainHead:
    """Verify one chain; with ``expect_size``/``expect_head`` also detect a cut-off tail."""
    head = verify_records(chain, ledger.read(chain), on_progress=on_progress)
    check_head(head, expect_size=expect_size, expect_head=expect_head)
    return head


def verify_ledger(
    ledger: Ledger,
    chains: Sequence[str] | None = None,
    *,
    on_progress: Callable[[str, int], None] | None = None,
) -> list[ChainHead]:
    """Verify ``chains`` (default: every chain in the ledger). A chain named explicitly
    that has no records fails: deleting a whole chain must not pass as an empty one."""
    names = ledger.chains() if chains is None else list(chains)
    heads = []
    for name in names:
        progress = None if on_progress is None else _bind(on_progress, name)
        head = verify_chain(ledger, name, on_progress=progress)
        if chains is not None and head.size == 0:
            raise HeadMismatchError(
                f"chain {name!r} has no records (never written, or deleted)",
                chain=name,
                seq=None,
                expected="at least 1 record",
                found="0",
            )
        heads.append(head)
    return heads


def _bind(fn: Callable[[str, int], None], chain: str) -> Callable[[int], None]:
    return lambda n: fn(chain, n)
