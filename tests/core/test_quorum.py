"""audit_core.quorum: witnessed checkpoints against the records (c2sp.org/tlog-cosignature)."""

from __future__ import annotations

import base64
from functools import partial
from pathlib import Path

import pytest

from audit_core._cosign import Cosigner, WitnessKey
from audit_core._merkle import Frontier
from audit_core._record import StoredCosignature
from audit_core.checkpoint import Checkpoint
from audit_core.config import AuditConfig
from audit_core.errors import QuorumError
from audit_core.quorum import check_witnessed, group_cosignatures
from audit_core.trail import AuditTrail

W1 = Cosigner.generate("witness.example/w1")
W2 = Cosigner.generate("witness.example/w2")


@pytest.fixture
def trail(tmp_path: Path) -> AuditTrail:
    t = AuditTrail(AuditConfig(ledger_url=f"sqlite:///{tmp_path}/l.db", checkpoint_every=0))
    for i in range(7):
        t.record("step.done", {"i": i})
    return t


def _cosign(trail: AuditTrail, size: int, *by: Cosigner, root: bytes | None = None) -> None:
    read = partial(trail.ledger.node, "default")
    body = Checkpoint(trail.origin("default"), size, root or Frontier.at(read, size).root()).text()
    for n, w in enumerate(by):
        line = w.cosign(body, 1_700_000_000 + n)
        trail.ledger.add_cosignature(
            StoredCosignature("default", size, body, line, "2026-12-05T00:00:00Z")
        )


def _check(trail: AuditTrail, keys: list[WitnessKey], quorum: int, size: int = 7) -> list:
    read = partial(trail.ledger.node, "default")
    groups = group_cosignatures("default", trail.ledger.cosignatures("default"))
    return check_witnessed(
        "default",
        groups,
        keys,
        quorum,
        size=size,
        root_at=lambda n: Frontier.at(read, n).root(),
        origins={trail.origin("default")},
    )


def test_a_quorum_of_cosignatures_pins_the_size(trail: AuditTrail) -> None:
    """Two witnesses cosigning size 5 meet a quorum of 2; the later records stay valid."""
    _cosign(trail, 5, W1, W2)
    found = _check(trail, [W1.key, W2.key], 2)
    assert [5] == [w.size for w in found]
    assert {"witness.example/w1", "witness.example/w2"} == {k.name for k, _ in found[0].cosigners}


def test_a_missing_witness_is_named(trail: AuditTrail) -> None:
    """Quorum 2 with one witness's cosignature names the other witness."""
    _cosign(trail, 5, W1)
    with pytest.raises(QuorumError, match=r"witness\.example/w2"):
        _check(trail, [W1.key, W2.key], 2)
    assert 1 == len(_check(trail, [W1.key, W2.key], 1))


def test_truncation_below_a_witnessed_size_names_size_and_root(trail: AuditTrail) -> None:
    """Fewer records than a witnessed size fail, naming the witnessed size and root."""
    _cosign(trail, 7, W1)
    root = trail.ledger.tree_head("default")[1].hex()
    with pytest.raises(QuorumError, match=f"size 7 \\(root {root}\\)"):
        _check(trail, [W1.key], 1, size=5)


def test_a_rewritten_prefix_fails(trail: AuditTrail) -> None:
    """A witnessed root the records no longer produce is a rewrite."""
    _cosign(trail, 4, W1, root=bytes(32))
    with pytest.raises(QuorumError, match="rewritten"):
        _check(trail, [W1.key], 1)


def test_a_forged_cosignature_by_a_trusted_key_fails(trail: AuditTrail) -> None:
    """A line in a trusted witness's name and key ID that does not verify is tampering."""
    read = partial(trail.ledger.node, "default")
    body = Checkpoint(trail.origin("default"), 3, Frontier.at(read, 3).root()).text()
    name, b64 = W1.cosign(body, 1).rsplit(" ", 1)
    raw = bytearray(base64.b64decode(b64))
    raw[-1] ^= 1  # the key ID and the time kept, the signature no longer W1's
    tampered = f"{name} {base64.b64encode(bytes(raw)).decode()}"
    trail.ledger.add_cosignature(StoredCosignature("default", 3, body, tampered, "x"))
    with pytest.raises(QuorumError, match="does not verify"):
        _check(trail, [W1.key], 1)


def test_no_cosignature_at_all_fails_for_a_chain_with_records(trail: AuditTrail) -> None:
    """A chain whose cosignatures are gone is not witnessed."""
    with pytest.raises(QuorumError, match="no checkpoint is cosigned"):
        _check(trail, [W1.key], 1)


def test_cosignatures_by_unknown_witnesses_are_ignored(trail: AuditTrail) -> None:
    """Only trusted witnesses count toward the quorum."""
    _cosign(trail, 5, W2)
    with pytest.raises(QuorumError):
        _check(trail, [W1.key], 1)


def test_a_checkpoint_of_another_origin_fails(trail: AuditTrail) -> None:
    """A cosigned checkpoint of another log proves nothing about this chain."""
    read = partial(trail.ledger.node, "default")
    body = Checkpoint("elsewhere/other", 3, Frontier.at(read, 3).root()).text()
    line = W1.cosign(body, 5)
    trail.ledger.add_cosignature(StoredCosignature("default", 3, body, line, "x"))
    with pytest.raises(QuorumError, match="origin"):
        _check(trail, [W1.key], 1)


def test_a_malformed_row_fails_clearly(trail: AuditTrail) -> None:
    """A row whose size disagrees with its body was edited outside workflow-audit."""
    read = partial(trail.ledger.node, "default")
    body = Checkpoint(trail.origin("default"), 3, Frontier.at(read, 3).root()).text()
    trail.ledger.add_cosignature(StoredCosignature("default", 4, body, W1.cosign(body, 1), "x"))
    with pytest.raises(QuorumError, match="malformed"):
        group_cosignatures("default", trail.ledger.cosignatures("default"))
