"""An evidence pack held against the ledger it was made from (``verify-evidence --ledger``).

The pack alone proves what it holds is in the signed log; it cannot prove that it holds
everything the period had (the operator made it). An auditor with read access to the ledger
closes that gap here: every chain is verified in full with the pack's last checkpoint as an
external claim (a rewrite since the pack fails, even with the stored Merkle nodes left alone),
and the period is derived again from the ledger's records up to the pack's tree size — the seq
range, the record count, the exact set of failure, access, permission and erasure records, and
each control's count per event type — and compared with what the pack states.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from audit_core._note import Verifier
from audit_core.checkpoint import Checkpoint
from audit_core.errors import VerificationError
from audit_core.evidence.collect import PackRequest, collect_chain, pick_checkpoints
from audit_core.evidence.controls import IN_FULL, ControlFacts, ControlTally
from audit_core.ledgers import LedgerReader
from audit_core.verify import verify_ledger

__all__ = ["InFull", "against_ledger"]

#: Per category, the (chain, seq) of every record the pack holds in full.
InFull = Mapping[str, set[tuple[str, int]]]
#: A control's figures that depend on the records alone (not on the verification's facts).
_ANY_FACTS = ControlFacts(
    verified=True,
    consistent=True,
    signed_checkpoints=0,
    verifier_keys=(),
    retention="NOT CHECKED",
    retention_detail="",
    records=0,
)


def against_ledger(
    ledger: LedgerReader,
    manifest: Mapping[str, Any],
    report: Mapping[str, Any],
    roots: Mapping[str, Checkpoint],
    in_full: InFull,
    keys: Sequence[Verifier],
) -> list[tuple[bool, str]]:
    """(passed, what) for each check; a failed check names the chain and what differs.
    Raises :class:`~audit_core.errors.LedgerError` when the ledger cannot be read (that is
    no rewrite: the caller reports it as an error, not a finding)."""
    results: list[tuple[bool, str]] = []
    for chain, cp in roots.items():
        try:
            (head,) = verify_ledger(ledger, [chain], keys=keys, external=[(cp, "the pack's")])
        except VerificationError as exc:
            results.append(
                (
                    False,
                    f"ledger: chain {chain!r} no longer holds the pack's checkpoint at size "
                    f"{cp.size} (root {cp.root.hex()[:16]}…): {exc}",
                )
            )
            continue
        results.append((True, f"ledger: chain {chain!r} ({head.size} records) extends the pack"))
    if all(ok for ok, _ in results):
        results += _derived_again(ledger, manifest, report, roots, in_full)
    return results


def _derived_again(
    ledger: LedgerReader,
    manifest: Mapping[str, Any],
    report: Mapping[str, Any],
    roots: Mapping[str, Checkpoint],
    in_full: InFull,
) -> list[tuple[bool, str]]:
    period = manifest["period"]
    request = PackRequest(since=period["since"], until=period["until"])
    tally = ControlTally()
    results: list[tuple[bool, str]] = []
    with ledger.snapshot() as view:
        for c in manifest.get("chains", ()):
            chain = c["chain"]
            if chain not in roots:
                if not c["records"]:  # claimed empty: the ledger must agree
                    results += _claimed_empty(view, chain, request, tally)
                continue  # else its checkpoints failed, and the pack says so already
            ev = collect_chain(view, chain, request, tally, stop=roots[chain].size)
            results += _checkpoints_again(view, c, request.since, ev.hi)
            stated = (c["lo"], c["hi"], c["records"])
            if (ev.lo, ev.hi, ev.records) != stated:
                results.append(
                    (
                        False,
                        f"ledger: chain {chain!r} has {ev.records} records of the period in seqs "
                        f"[{ev.lo}, {ev.hi}); the pack states {stated[2]} in [{stated[0]}, "
                        f"{stated[1]}): records were left out",
                    )
                )
            for category in IN_FULL:
                held = {seq for ch, seq in in_full.get(category, set()) if ch == chain}
                missing = sorted(set(ev.in_full[category]) - held)
                extra = sorted(held - set(ev.in_full[category]))
                if missing or extra:
                    results.append(
                        (
                            False,
                            f"records/{category}.jsonl: chain {chain!r} seqs {missing[:10]} of "
                            f"the period are missing from the pack"
                            + (f", and {extra[:10]} are not the period's" if extra else ""),
                        )
                    )
        if not manifest.get("requested_chains"):
            results += _chains_left_out(view, manifest, request)
    results += _controls_again(report, tally)
    if all(ok for ok, _ in results):
        results.append(
            (True, "ledger: the period's records, in-full files and control counts derived again")
        )
    return results


def _claimed_empty(
    view: LedgerReader, chain: str, request: PackRequest, tally: ControlTally
) -> list[tuple[bool, str]]:
    """A chain the pack lists with no records of the period, read to its end."""
    if chain not in view.chains():
        return []
    ev = collect_chain(view, chain, request, tally)
    if not ev.records:
        return []
    return [
        (
            False,
            f"ledger: chain {chain!r} has {ev.records} records of the period (seqs "
            f"[{ev.lo}, {ev.hi})); the pack states none",
        )
    ]


def _checkpoints_again(
    view: LedgerReader, c: Mapping[str, Any], since: str, hi: int
) -> list[tuple[bool, str]]:
    """The pack's first and last checkpoints must be the ones the rule picks from the
    ledger's (:func:`~audit_core.evidence.collect.pick_checkpoints`): a later "last" would
    let the operator pick the root the sample derives from."""
    first, last = pick_checkpoints(view.checkpoints(c["chain"]), since, hi)
    picked = (first.size if first else None, last.size if last else None)
    stated = tuple((c.get(k) or {}).get("size") for k in ("first_checkpoint", "last_checkpoint"))
    if picked == stated:
        return []
    return [
        (
            False,
            f"ledger: chain {c['chain']!r}: the pack's checkpoints are at sizes {stated}, the "
            f"rule picks {picked} (the latest signed by the period's start, the earliest "
            "covering its records): the sample's root was chosen",
        )
    ]


def _chains_left_out(
    view: LedgerReader, manifest: Mapping[str, Any], request: PackRequest
) -> list[tuple[bool, str]]:
    """A pack of every chain must hold every chain with records in the period."""
    held = {c["chain"] for c in manifest.get("chains", ())}
    out = []
    for chain in view.chains():
        if chain in held:
            continue
        ev = collect_chain(view, chain, request, ControlTally())
        if ev.records:
            out.append(
                (
                    False,
                    f"ledger: chain {chain!r} has {ev.records} records of the period and is not "
                    "in the pack (a pack of every chain left it out, or they were written "
                    "since with earlier times)",
                )
            )
    return out


def _controls_again(report: Mapping[str, Any], tally: ControlTally) -> list[tuple[bool, str]]:
    """Each control's figures that follow from the records alone (count, per event type,
    first and last time, the records listed) as the ledger's period gives them."""

    def figures(c: Mapping[str, Any]) -> tuple[Any, ...]:
        listed = [(r.get("chain"), r.get("seq")) for r in c.get("records") or ()]
        return (c.get("count"), c.get("by_event"), c.get("first"), c.get("last"), listed)

    derived = {c["id"]: figures(c) for c in tally.result(_ANY_FACTS)}
    stated = {c.get("id"): figures(c) for c in report.get("controls", ()) if isinstance(c, dict)}
    out = []
    for cid, want in derived.items():
        got = stated.get(cid)
        if got != want:
            what = (
                "is missing" if got is None else f"states {got[0]} records ({got[2]} to {got[3]})"
            )
            out.append(
                (
                    False,
                    f"report.json: control {cid!r} {what}; the ledger's period has {want[0]} "
                    f"({want[2]} to {want[3]}), listed {want[4][:5]}…",
                )
            )
    return out
