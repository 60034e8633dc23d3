"""RFC 9162 §2.1 Merkle tree: roots, compact frontiers, inclusion and consistency proofs.

>>> from audit_core import leaf_hash
>>> from audit_core._merkle import Frontier, root_of
>>> leaves = [leaf_hash(bytes([i])) for i in range(5)]
>>> f = Frontier.empty()
>>> for h in leaves:
...     f = f.append(h)
>>> f.root() == root_of(leaves)
True

Leaves are record hashes, which already are RFC 9162 leaf hashes ``SHA-256(0x00 || bytes)``;
interior nodes are ``SHA-256(0x01 || left || right)`` (§2.1.1). A subtree is named by
``(level, index)``: it covers leaves ``[index * 2**level, (index + 1) * 2**level)``.

Proof *generation* needs subtree hashes; it takes a ``NodeReader`` (the ledger stores every
complete subtree as it is formed), so a proof costs O(log² n) reads, never a rescan.
Proof *verification* is the RFC's own algorithm (§2.1.3.2, §2.1.4.2), with nothing else,
after checking its inputs: every hash is 32 bytes (SHA-256, RFC 9162 §2.1), and the only
proof from the empty tree (size 0, consistent with every tree) is the empty one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from audit_core.errors import ProofError

__all__ = [
    "EMPTY_ROOT",
    "Frontier",
    "NodeReader",
    "consistency_proof",
    "fold",
    "frontier_positions",
    "inclusion_proof",
    "node_hash",
    "push",
    "root_of",
    "subtree_hash",
    "verify_consistency",
    "verify_inclusion",
]

_NODE_HASH_PREFIX = b"\x01"  # RFC 9162 §2.1.1; leaves use 0x00 (audit_core._record.leaf_hash)
#: MTH({}) = SHA-256() (RFC 9162 §2.1.1)
EMPTY_ROOT = hashlib.sha256(b"").digest()

#: ``reader(level, index)`` → hash of the complete subtree ``(level, index)``; level 0: a leaf.
NodeReader = Callable[[int, int], bytes]


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1 interior node hash."""
    return hashlib.sha256(_NODE_HASH_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1): RFC 9162's k."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH of a list of leaf hashes, straight from the definition (tests and small trees)."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


def push(
    nodes: list[bytes],
    size: int,
    leaf: bytes,
    completed: list[tuple[int, int, bytes]] | None = None,
) -> None:
    """Append ``leaf`` to the compact frontier ``nodes`` of a tree of ``size`` leaves, in
    place. Each complete subtree this forms, of level ≥ 1, is added to ``completed`` as
    ``(level, index, hash)``: exactly the subtrees whose last leaf is the new one."""
    h, n, level = leaf, size, 0
    while n & 1:  # the lowest subtree is as tall as the new one: merge them
        h = node_hash(nodes.pop(), h)
        n >>= 1
        level += 1
        if completed is not None:
            completed.append((level, ((size + 1) >> level) - 1, h))
    nodes.append(h)


def fold(nodes: Sequence[bytes]) -> bytes:
    """MTH of a tree from its compact frontier: the nodes folded from the right (§2.1.1)."""
    if not nodes:
        return EMPTY_ROOT
    h = nodes[-1]
    for left in reversed(nodes[:-1]):
        h = node_hash(left, h)
    return h


def frontier_positions(size: int) -> list[tuple[int, int]]:
    """``(level, index)`` of the maximal complete subtrees of a tree of ``size`` leaves, left to
    right: one per set bit of ``size``, largest first."""
    positions, start = [], 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            positions.append((level, start >> level))
            start += 1 << level
    return positions


@dataclass(frozen=True, slots=True)
class Frontier:
    """The compact range of a tree of ``size`` leaves: the roots of its maximal complete
    subtrees, left to right (:func:`frontier_positions`). O(log n) hashes are all it takes to
    append a leaf and to compute the root."""

    size: int
    nodes: tuple[bytes, ...]

    @classmethod
    def empty(cls) -> Frontier:
        return cls(0, ())

    @classmethod
    def at(cls, read: NodeReader, size: int) -> Frontier:
        """The frontier of a tree of ``size`` leaves, from its stored subtrees."""
        return cls(size, tuple(read(level, index) for level, index in frontier_positions(size)))

    def append(
        self, leaf: bytes, completed: list[tuple[int, int, bytes]] | None = None
    ) -> Frontier:
        """The frontier after one more leaf (see :func:`push` for ``completed``)."""
        return self.extend((leaf,), completed)

    def extend(
        self, leaves: Iterable[bytes], completed: list[tuple[int, int, bytes]] | None = None
    ) -> Frontier:
        """The frontier after ``leaves`` (see :func:`push` for ``completed``)."""
        nodes, size = list(self.nodes), self.size
        for leaf in leaves:
            push(nodes, size, leaf, completed)
            size += 1
        return Frontier(size, tuple(nodes))

    def root(self) -> bytes:
        """MTH of the tree (RFC 9162 §2.1.1)."""
        return fold(self.nodes)


def subtree_hash(read: NodeReader, start: int, end: int) -> bytes:
    """MTH of leaves ``[start, end)`` where ``start`` is a multiple of the largest power of two
    ≤ ``end - start`` (true of every range RFC 9162's recursions visit)."""
    n = end - start
    if n & (n - 1) == 0:  # a complete subtree: stored
        level = n.bit_length() - 1
        return read(level, start >> level)
    k = _split(n)
    return node_hash(read((k.bit_length() - 1), start // k), subtree_hash(read, start + k, end))


def inclusion_proof(read: NodeReader, index: int, size: int) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 §2.1.3.1, leaf to root."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(subtree_hash(read, start + k, end))
            end = start + k
        else:
            path.append(subtree_hash(read, start, start + k))
            start += k
    path.reverse()
    return path


def consistency_proof(read: NodeReader, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[new_size]) of RFC 9162 §2.1.4.1."""
    if not 0 < old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to {new_size}")
    proof: list[bytes] = []
    # SUBPROOF(m, D[start:end], b), unrolled; the recursion only ever descends.
    m, start, end, complete = old_size, 0, new_size, True
    while True:
        n = end - start
        if m == n:
            if not complete:
                proof.append(subtree_hash(read, start, end))
            break
        k = _split(n)
        if m <= k:
            proof.append(subtree_hash(read, start + k, end))
            end = start + k
        else:
            proof.append(subtree_hash(read, start, start + k))
            m -= k
            start += k
            complete = False
    proof.reverse()
    return proof


_HASH_SIZE = 32  # SHA-256 (RFC 9162 §2.1: "HASH_SIZE" of the log's hash algorithm)


def _check_hashes(what: str, hashes: Sequence[object]) -> None:
    # A shorter or longer "hash" can never be a node of this tree; refuse it before hashing,
    # so that a malformed proof is reported as such rather than as a wrong root.
    for i, h in enumerate(hashes):
        if not isinstance(h, bytes) or len(h) != _HASH_SIZE:
            size = f"{len(h)} bytes" if isinstance(h, (bytes, bytearray)) else type(h).__name__
            raise ProofError(f"{what} {i}: expected a {_HASH_SIZE}-byte SHA-256 hash, got {size}")


def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2; returns None or raises :class:`ProofError`."""
    _check_hashes("leaf hash", [leaf])
    _check_hashes("root hash", [root])
    _check_hashes("inclusion proof hash", path)
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    if r != root:
        raise ProofError(
            f"inclusion proof for leaf {index} leads to root {r.hex()[:16]}…, "
            f"expected {root.hex()[:16]}… (tree size {size})"
        )


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """RFC 9162 §2.1.4.2; returns None or raises :class:`ProofError`.

    From size 0 (the empty tree, a prefix of every tree) only the empty proof is accepted, and
    only with the empty tree's root, as transparency-dev/merkle's verifier does."""
    _check_hashes("old root hash", [old_root])
    _check_hashes("new root hash", [new_root])
    _check_hashes("consistency proof hash", proof)
    if not 0 <= old_size <= new_size:
        raise ProofError(f"no consistency from size {old_size} to {new_size}")
    if old_size == 0:
        if proof:
            raise ProofError(
                f"a consistency proof from size 0 must be empty, got {len(proof)} hash(es)"
            )
        if old_root != EMPTY_ROOT or (new_size == 0 and new_root != EMPTY_ROOT):
            raise ProofError("the root at size 0 must be the empty tree's, SHA-256 of nothing")
        return
    if old_size == new_size:
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError(f"two different roots for tree size {old_size}: the log forked")
        return
    if not 0 < old_size < new_size:
        raise ProofError(f"no consistency from size {old_size} to {new_size}")
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than needed")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than needed")
    if fr != old_root:
        raise ProofError(
            f"consistency proof does not reproduce the old root at size {old_size}: "
            "the log was rewritten or forked"
        )
    if sr != new_root:
        raise ProofError(
            f"consistency proof does not reproduce the new root at size {new_size}: "
            "the log was rewritten or forked"
        )
