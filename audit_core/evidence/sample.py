"""The evidence pack's sample: record indices the operator cannot choose.

Each chain's sample is derived from the root of the pack's last signed checkpoint of that
chain, which the operator cannot steer without rewriting (and re-signing) the log itself. An
auditor recomputes the indices from three numbers in ``manifest.json`` and the root:

    index_i = lo + int(SHA-256("sample/v1" ‖ root ‖ uint64_be(i))) mod (hi - lo),  i = 0 … n-1

``root`` is the 32 raw bytes of the RFC 9162 root, ``int(…)`` reads the 32-byte digest as an
unsigned big-endian integer, and ``[lo, hi)`` is the chain's seq range of the period (the
first and one past the last record whose time is in it). The last checkpoint itself is
fixed by a rule (the earliest stored one covering the period, checked again by
``verify-evidence --ledger``); an operator holding the signing key could still append and sign
until some root pleased them — a witness cosignature on the checkpoints closes that. Indices
may repeat: the rule stays one line an auditor can recompute in any language. A range of at
most ``n`` records is sampled whole: every index ``lo … hi-1`` once, in order.

>>> root = bytes(32)
>>> sample_indices(root, 0, 10, 3)
[2, 6, 4]
>>> sample_indices(root, 7, 10, 5)
[7, 8, 9]
>>> sample_indices(root, 5, 5, 3)
[]
"""

from __future__ import annotations

import hashlib

__all__ = ["SAMPLE_DOMAIN", "SAMPLE_RULE", "sample_indices"]

#: Domain separation, so that a sample index is never some other hash of the same root.
SAMPLE_DOMAIN = b"sample/v1"
#: The rule as the manifest states it, for an auditor reading the pack without this code.
SAMPLE_RULE = (
    'index_i = lo + int_be(SHA-256("sample/v1" || root || uint64_be(i))) mod (hi - lo), '
    "i = 0..n-1; root = the last checkpoint's 32-byte RFC 9162 root; when hi - lo <= n, "
    "every index lo..hi-1 once, in order"
)


def sample_indices(root: bytes, lo: int, hi: int, n: int) -> list[int]:
    """The ``n`` sampled seqs of ``[lo, hi)`` for a tree of root ``root`` (none if empty)."""
    if hi <= lo or n <= 0:
        return []
    span = hi - lo
    if span <= n:
        return list(range(lo, hi))
    return [
        lo
        + int.from_bytes(
            hashlib.sha256(SAMPLE_DOMAIN + root + i.to_bytes(8, "big")).digest(), "big"
        )
        % span
        for i in range(n)
    ]
