"""Sinks by name, for the CLI (``workflow-audit ship --sink NAME``) and the adapters'
background flush (``WORKFLOW_AUDIT_FLUSH_SINKS``).

>>> sorted(SINK_NAMES)
['otlp', 's3', 'structlog']
"""

from __future__ import annotations

from audit_core.checkpoint import CheckpointSigner
from audit_core.config import AuditConfig
from audit_core.errors import ConfigError
from audit_core.ledgers import Ledger
from audit_core.sinks import Sink

__all__ = ["SINK_NAMES", "make_sink", "sink_names"]

SINK_NAMES = ("otlp", "s3", "structlog")


def sink_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """``names`` with ``all`` expanded to the network sinks (otlp, s3), duplicates removed."""
    out: list[str] = []
    for name in names:
        for one in ("otlp", "s3") if name == "all" else (name,):
            if one not in SINK_NAMES:
                raise ConfigError(f"unknown sink {one!r}; known: {', '.join(SINK_NAMES)}, all")
            if one not in out:
                out.append(one)
    return out


def make_sink(
    name: str,
    ledger: Ledger,
    config: AuditConfig,
    *,
    endpoint: str | None = None,
    s3_url: str | None = None,
) -> Sink:
    """The sink called ``name`` (its optional dependencies are imported here)."""
    if name == "otlp":
        from audit_core.sinks.otlp import OtlpSink

        return OtlpSink(endpoint or None)
    if name == "structlog":
        from audit_core.sinks.structlog import StructlogSink

        return StructlogSink()
    if name == "s3":
        from audit_core.sinks.s3 import S3SegmentSink

        url = s3_url or config.s3_url
        if not url:
            raise ConfigError("the s3 sink needs --s3 s3://BUCKET/PREFIX or WORKFLOW_AUDIT_S3_URL")
        # Each segment ends with a checkpoint signed at its size: the shipper holds the key
        # (WORKFLOW_AUDIT_SIGNING_KEY, else `<ledger>.key`, as for `workflow-audit checkpoint`).
        checkpoint = CheckpointSigner.from_config(config, ledger).at_size()
        return S3SegmentSink.from_url(url, checkpoint=checkpoint)
    raise ConfigError(f"unknown sink {name!r}; known: {', '.join(SINK_NAMES)}")
