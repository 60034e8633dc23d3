"""The status page's data: per chain its size, head, last record, checkpoint and whether
its signature verifies, the latest ``audit.verified`` verdicts, the health problems and the
count of unrecorded gaps, narrowed to the chains a viewer may learn of.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from audit_core.checkpoint import open_checkpoint
from audit_core.config import AuditConfig
from audit_core.errors import AuditError
from audit_core.health import check
from audit_core.ledgers import LedgerReader
from audit_core.query import IndexedReader, Query, count, search
from audit_core.readlog import AUDIT_CHAIN
from audit_core.web import Viewer
from audit_core.web.params import COUNT_CAP, readable_chains
from audit_core.web.site import Site, count_text

#: Without a complete query index, the status page counts gaps only on ledgers this small.
_SCAN_LIMIT = 100_000


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172_800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


@dataclass(frozen=True, slots=True)
class _ChainStatus:
    chain: str
    records: int
    head: str
    last_record: str
    last_record_age: str
    checkpoint: str
    checkpoint_age: str
    signature: str
    unsigned: int
    sinks: dict[str, int]
    verified: str


def _signature(site: Site, note: str | None) -> str:
    if note is None:
        return "-"
    if not site.verifiers:
        return "not checked (no verifier key configured)"
    for key in site.verifiers:
        try:
            open_checkpoint(note, [key])
        except AuditError:
            continue
        return f"verifies under {key.name}"
    return "DOES NOT VERIFY under the configured keys"


def _latest_verified(view: LedgerReader, chains: Sequence[str], *, by: bool) -> dict[str, str]:
    """Per chain, the verdict and time of the latest ``audit.verified`` record naming it, and
    who verified it when ``by`` (the actor is of the audit chain: every-DAG viewers only)."""
    out: dict[str, str] = {}
    if view.head(AUDIT_CHAIN) is None:
        return out
    q = Query(events=("audit.verified",), chains=(AUDIT_CHAIN,))
    before = None
    for _ in range(10):  # at most 500 verifications back
        page = search(view, q, limit=50, before=before)
        for rec in page.records:
            named = rec.data.get("chains")
            if not isinstance(named, dict):
                continue
            for chain in named:
                if chain in chains and chain not in out:
                    verdict = rec.data.get("verdict", "?")
                    actor = rec.actor.get("id", "?")
                    out[chain] = f"{verdict} at {rec.ts[:19]}" + (f" by {actor}" if by else "")
        if page.next is None or len(out) == len(chains):
            break
        before = page.next
    return out


def status_of(
    site: Site, v: Viewer
) -> tuple[list[_ChainStatus], Any, list[str], dict[str, str], str]:
    """The status page's chains, health, problems, verifications and gap count; a DAG-limited
    viewer sees only the chains holding records they may read (:func:`readable_chains`)."""
    with site.ledger().snapshot() as view:
        # The spool of this app's ledger (beside a SQLite file unless configured elsewhere).
        config = (site.config or AuditConfig.from_env()).evolve(ledger_url=site.ledger_url)
        health = check(view, name=site.name, config=config)
        every = [c.chain for c in health.chains]
        names = readable_chains(view, v, every)
        hidden = [f"chain {c!r}" for c in every if c not in names]
        problems = [p for p in health.problems if not any(h in p for h in hidden)]
        verified = _latest_verified(view, names, by=v.dags is None)
        rows = []
        total = 0
        for c in health.chains:
            total += c.records
            if c.chain not in names:
                continue
            head = view.head(c.chain)
            latest = view.latest_checkpoint(c.chain)
            rows.append(
                _ChainStatus(
                    chain=c.chain,
                    records=c.records,
                    head=head.hash.hex() if head is not None else "-",
                    last_record=(c.last_record_ts or "-")[:19],
                    last_record_age=_age(c.last_record_age_s),
                    checkpoint=f"{c.checkpoint_size:,} records" if c.checkpoint_size else "none",
                    checkpoint_age=_age(c.checkpoint_age_s),
                    signature=_signature(site, latest.note if latest is not None else None),
                    unsigned=c.unsigned,
                    sinks=c.sinks,
                    verified=verified.get(c.chain, "never"),
                )
            )
        gap_q = Query(events=("*.unrecorded",), dags=v.dags)
        indexed = isinstance(view, IndexedReader) and view.index_complete(())
        if indexed or total <= _SCAN_LIMIT:
            gaps = count_text(count(view, gap_q, cap=COUNT_CAP), COUNT_CAP)
        else:
            gaps = "not counted (the query index is not complete; see `workflow-audit index`)"
    return rows, health, problems, verified, gaps
