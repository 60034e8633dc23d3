"""Process-local counters: every failure and every lossy conversion is counted, never hidden.

>>> from audit_core._metrics import COUNTERS
>>> COUNTERS.incr("example")
>>> COUNTERS.snapshot()["example"] >= 1
True

The counts also leave the process as OpenTelemetry metrics (``workflow_audit.<count>``):
:mod:`audit_core.metrics` says where to and how.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable

__all__ = ["COUNTERS", "Counters"]


class Counters:
    """Thread-safe named counters of this process (a forked child starts from zero);
    ``on_new`` hears of each name's first increment."""

    def __init__(self, on_new: Callable[[str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._on_new = on_new
        if hasattr(os, "register_at_fork"):
            # A fork while another thread holds the lock would leave the child a lock nobody
            # releases (the OpenTelemetry SDK's processors reset theirs the same way).
            os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        # A forked child counts its own: exported as its own series (service.instance.id),
        # the parent's counts must not be sent twice.
        self._lock = threading.Lock()
        self._counts = Counter()

    def incr(self, name: str, amount: int = 1) -> None:
        # Per record on the hot path: one lock and two dict operations. The metrics are read
        # from snapshot() when the SDK collects, never pushed from here.
        with self._lock:
            new = name not in self._counts
            self._counts[name] += amount
        if new and self._on_new is not None:
            self._on_new(name)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def _make() -> Counters:
    from audit_core import metrics

    counters = Counters(on_new=metrics._BRIDGE.observe)
    metrics._BRIDGE.attach(counters.snapshot)
    return counters


COUNTERS = _make()
