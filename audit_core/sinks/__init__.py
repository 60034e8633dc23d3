"""Sinks: where the shipper delivers records. One protocol, the OpenTelemetry SDK's export
layer in shape (``export(batch) -> ExportResult``, ``force_flush(timeout)``, idempotent
``shutdown()``), so a shipper knows nothing about a sink's internals.

>>> from audit_core.sinks import Batch, ExportResult
>>> Batch("prod", ()).empty, ExportResult.SUCCESS.name
(True, 'SUCCESS')

Delivery is at-least-once: the ledger is the durable spool, the shipper advances a sink's
cursor only after ``export`` returned ``SUCCESS``, and re-sends after a crash. So every sink
must make a re-sent batch harmless (idempotent object names, or records a receiver can
de-duplicate by ``audit.chain`` + ``audit.seq``), and must return ``FAILURE`` rather than
raise when its destination is down (a raise is treated as a failure too, and logged).

A sink that keeps the records' evidence beside them (the S3 sink) may also take the chains'
witness-cosigned checkpoints: it then has an ``export_cosigned`` method (:class:`CosignedSink`,
checked with ``isinstance`` at run time; still one :class:`Sink` protocol, the method is an
optional capability). The shipper hands it a :class:`Cosigned` only after the sink confirmed
the records up to its size, and again after a failure; the sink makes a re-send harmless.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from audit_core._record import StoredRecord

__all__ = ["Batch", "Cosigned", "CosignedSink", "ExportResult", "Sink"]


class ExportResult(enum.Enum):
    """What a sink says of a batch (OpenTelemetry SDK's ``SpanExportResult`` in shape)."""

    SUCCESS = 0
    FAILURE = 1


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive records of one chain, oldest first."""

    chain: str
    records: Sequence[StoredRecord]

    @property
    def empty(self) -> bool:
        return not self.records

    @property
    def first(self) -> int:
        """seq of the first record."""
        return self.records[0].seq

    @property
    def last(self) -> int:
        """seq of the last record."""
        return self.records[-1].seq


class Sink(Protocol):
    """A destination. ``name`` names its cursor in the ledger: keep it stable per destination
    (``otlp:<endpoint>``, ``s3:<bucket>/<prefix>``), or the shipper starts over."""

    name: str

    def export(self, batch: Batch) -> ExportResult:
        """Deliver ``batch`` durably (the destination confirmed it), or return FAILURE."""
        ...

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Push out anything buffered; True if it all went out within ``timeout_s``."""
        ...

    def shutdown(self) -> None:
        """Release resources; idempotent."""
        ...


@dataclass(frozen=True, slots=True)
class Cosigned:
    """A checkpoint of ``chain`` at tree ``size``: the log's signed note with every witness
    cosignature line stored for it appended (c2sp.org/tlog-cosignature)."""

    chain: str
    size: int
    note: str


@runtime_checkable
class CosignedSink(Protocol):
    """The optional capability of a :class:`Sink` that keeps cosigned checkpoints."""

    def export_cosigned(self, cosigned: Sequence[Cosigned]) -> ExportResult:
        """Store each cosigned checkpoint durably (once: a re-send is a no-op), or return
        FAILURE (then all of them are sent again later)."""
        ...
