"""The CLI run in-process, for tests that call it many times (a subprocess costs ~0.3 s)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Run:
    """What one in-process ``main()`` call returned and printed."""

    code: int
    out: str
    err: str
