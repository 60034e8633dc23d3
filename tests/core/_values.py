"""Values that behave as third-party ones do, for tests that must not need the package."""

from __future__ import annotations

import datetime as dt


class NaTLike(dt.datetime):
    """Behaves as pandas.NaT does: a datetime that is no point in time."""

    def __new__(cls) -> NaTLike:
        return super().__new__(cls, 1970, 1, 1)

    @property
    def year(self) -> int:
        return float("nan")  # type: ignore[return-value]  # pandas.NaT.year is nan

    def strftime(self, fmt: str) -> str:
        raise ValueError("NaTType does not support strftime")

    def __str__(self) -> str:
        return "NaT"

    def __repr__(self) -> str:
        return "NaT"
