"""Process-local counters: every failure and every lossy conversion is counted, never hidden.

>>> from audit_core._metrics import COUNTERS
>>> COUNTERS.incr("example")
>>> COUNTERS.snapshot()["example"] >= 1
True
"""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["COUNTERS", "Counters"]


class Counters:
    """Thread-safe named counters (exported to OTLP metrics by the sinks' issue)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


COUNTERS = Counters()
