"""What the anchoring tests of every component check on a ledger: each chain's latest
checkpoint covers its last record, and every stored checkpoint is signed and consistent with
the chain's final tree (RFC 9162 §2.1.4: one log, never a fork, whoever signed)."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from audit_core._merkle import consistency_proof, verify_consistency
from audit_core.checkpoint import load_verifiers, open_checkpoint
from audit_core.ledgers import open_ledger

#: Generous: a loaded 2-core machine; the wait ends at the event, this only bounds a failure.
DEADLINE_S = 300.0


def uncovered(ledger: Path) -> dict[str, tuple[int, int | None]]:
    """Chains whose latest checkpoint does not cover their last record: chain -> (records,
    latest checkpoint's size or None); {} when every chain is covered."""
    db = open_ledger(f"sqlite:///{ledger}", read_only=True)
    try:
        found: dict[str, tuple[int, int | None]] = {}
        for chain in db.chains():
            size, _ = db.tree_head(chain)
            latest = db.latest_checkpoint(chain)
            if latest is None or latest.size != size:
                found[chain] = (size, None if latest is None else latest.size)
        return found
    finally:
        db.close()


def wait_covered(ledger: Path, alive: Callable[[], bool] = lambda: True, chains: int = 1) -> None:
    """Wait until the ledger holds at least ``chains`` chains and each one's latest checkpoint
    covers its last record (fails at once if ``alive()`` turns false)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        left = uncovered(ledger) if ledger.exists() else {"(no ledger)": (0, None)}
        if not left and len(chain_sizes(ledger)) >= chains:
            return
        assert alive(), f"the anchoring process ended; uncovered: {left}"
        assert time.monotonic() < deadline, f"not covered after {DEADLINE_S}s: {left}"
        time.sleep(0.1)  # polling the ledger for the checkpoints (the event waited for)


def chain_sizes(ledger: Path) -> dict[str, int]:
    """Each chain's number of records."""
    db = open_ledger(f"sqlite:///{ledger}", read_only=True)
    try:
        return {chain: db.tree_head(chain)[0] for chain in db.chains()}
    finally:
        db.close()


def check_checkpoints(ledger: Path, verifier_key: object) -> int:
    """Every stored checkpoint of every chain: signed by ``verifier_key`` (a key, or its
    file), its size and root those of its note, and consistent with the chain's final tree;
    returns how many."""
    keys = load_verifiers([str(verifier_key)])
    db = open_ledger(f"sqlite:///{ledger}", read_only=True)
    checked = 0
    try:
        for chain in db.chains():
            size, root = db.tree_head(chain)
            for stored in db.checkpoints(chain):
                opened = open_checkpoint(stored.note, keys)
                assert (stored.size, stored.root) == (opened.size, opened.root)
                assert stored.size <= size
                proof = consistency_proof(partial(db.node, chain), stored.size, size)
                verify_consistency(stored.size, size, proof, stored.root, root)  # ProofError
                checked += 1
    finally:
        db.close()
    return checked
