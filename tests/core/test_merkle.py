"""RFC 9162 Merkle tree: roots, frontiers, inclusion and consistency proofs.

Golden vectors: tests/assets/rfc6962_merkle_vectors.json (transparency-dev/merkle, the Certificate
Transparency reference data). Properties: any change to a proof, or to what it is checked
against, makes verification raise ProofError.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_core import leaf_hash
from audit_core._merkle import (
    EMPTY_ROOT,
    Frontier,
    NodeReader,
    consistency_proof,
    inclusion_proof,
    node_hash,
    root_of,
    subtree_hash,
    verify_consistency,
    verify_inclusion,
)
from audit_core.errors import ProofError

ASSETS = Path(__file__).parent.parent / "assets"
GOLDEN = json.loads((ASSETS / "rfc6962_merkle_vectors.json").read_text())
GOLDEN_LEAVES = [leaf_hash(bytes.fromhex(x)) for x in GOLDEN["leaves_hex"]]

MAX_SIZE = 300
LEAVES = [leaf_hash(i.to_bytes(4, "big")) for i in range(MAX_SIZE)]
#: MTH(D[n]) for every n, straight from the RFC's recursive definition.
ROOTS = [root_of(LEAVES[:n]) for n in range(MAX_SIZE + 1)]

Completed = list[tuple[int, int, bytes]]


def _range_node(leaves: Sequence[bytes]) -> Callable[[int, int], bytes]:
    """(level, index) → root_of the leaves that subtree covers, memoised."""

    @functools.cache
    def node(level: int, index: int) -> bytes:
        span = 1 << level
        assert (index + 1) * span <= len(leaves), f"no complete subtree ({level}, {index})"
        return root_of(leaves[index * span : (index + 1) * span])

    return node


_NODE = _range_node(LEAVES)
_GOLDEN_NODE = _range_node(GOLDEN_LEAVES)


def _bounded(node: Callable[[int, int], bytes], size: int) -> NodeReader:
    """A reader that, like a ledger holding ``size`` leaves, has only the complete subtrees
    inside ``[0, size)``: a generator reading past the tree fails the test."""

    def read(level: int, index: int) -> bytes:
        assert level >= 0, f"read of level {level}"
        assert 0 <= index, f"read of index {index}"
        assert (index + 1) << level <= size, (
            f"read ({level}, {index}) lies outside a tree of size {size}"
        )
        return node(level, index)

    return read


def _frontier_store(leaves: Sequence[bytes]) -> tuple[dict[tuple[int, int], bytes], Completed]:
    """The nodes a ledger stores: every leaf, plus what Frontier.append reports as completed."""
    completed: Completed = []
    Frontier.empty().extend(leaves, completed)
    store = {(0, i): h for i, h in enumerate(leaves)}
    for level, index, h in completed:
        assert (level, index) not in store, f"({level}, {index}) completed twice"
        store[(level, index)] = h
    return store, completed


_STORE, _ = _frontier_store(LEAVES)


def range_reader(size: int) -> NodeReader:
    """Subtree hashes computed from the leaves (root_of), limited to a tree of ``size``."""
    return _bounded(_NODE, size)


def store_reader(size: int) -> NodeReader:
    """Subtree hashes from the Frontier-completed store, limited to a tree of ``size``."""
    return _bounded(lambda level, index: _STORE[(level, index)], size)


def _complete_subtrees(size: int) -> set[tuple[int, int]]:
    """Every (level ≥ 1, index) whose subtree lies inside ``[0, size)``."""
    return {
        (level, index) for level in range(1, size.bit_length()) for index in range(size >> level)
    }


def _flip_bit(h: bytes, bit: int) -> bytes:
    flipped = bytearray(h)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


bits = st.integers(min_value=0, max_value=255)
hashes = st.binary(min_size=32, max_size=32)


@st.composite
def size_and_index(draw: st.DrawFn, min_size: int = 1) -> tuple[int, int]:
    size = draw(st.integers(min_value=min_size, max_value=MAX_SIZE))
    return size, draw(st.integers(min_value=0, max_value=size - 1))


@st.composite
def size_pair(draw: st.DrawFn, max_size: int = MAX_SIZE) -> tuple[int, int]:
    """1 <= old < new <= max_size."""
    new = draw(st.integers(min_value=2, max_value=max_size))
    return draw(st.integers(min_value=1, max_value=new - 1)), new


#: (size, index) and (old, new) whose proofs have two hashes or more: something to swap.
_LONG_INCLUSION = [
    (size, index)
    for size in range(1, 65)
    for index in range(size)
    if len(inclusion_proof(range_reader(size), index, size)) >= 2
]
_LONG_CONSISTENCY = [
    (old, new)
    for new in range(1, 65)
    for old in range(1, new)
    if len(consistency_proof(range_reader(new), old, new)) >= 2
]


class TestGoldenVectors:
    """Our roots and proofs equal the transparency-dev/merkle reference vectors."""

    @pytest.mark.parametrize("size", range(9))
    def test_root(self, size: int) -> None:
        """root_of and Frontier.root of the first `size` golden leaves equal the golden root."""
        expected = bytes.fromhex(GOLDEN["roots"][str(size)])
        assert expected == root_of(GOLDEN_LEAVES[:size])
        assert expected == Frontier.empty().extend(GOLDEN_LEAVES[:size]).root()

    def test_empty_root(self) -> None:
        """EMPTY_ROOT is the golden empty-tree root, SHA-256 of nothing."""
        assert bytes.fromhex(GOLDEN["empty_tree_root"]) == EMPTY_ROOT
        assert bytes.fromhex(GOLDEN["roots"]["0"]) == EMPTY_ROOT

    @pytest.mark.parametrize(
        "vector", GOLDEN["inclusion"], ids=lambda v: f"{v['leaf_index']}-of-{v['tree_size']}"
    )
    def test_inclusion(self, vector: dict[str, object]) -> None:
        """inclusion_proof equals the golden path, which verify_inclusion accepts."""
        index, size = vector["leaf_index"], vector["tree_size"]
        assert isinstance(index, int)
        assert isinstance(size, int)
        assert isinstance(vector["path"], list)
        path = [bytes.fromhex(h) for h in vector["path"]]
        assert path == inclusion_proof(_bounded(_GOLDEN_NODE, size), index, size)
        root = bytes.fromhex(GOLDEN["roots"][str(size)])
        verify_inclusion(GOLDEN_LEAVES[index], index, size, path, root)

    @pytest.mark.parametrize(
        "vector", GOLDEN["consistency"], ids=lambda v: f"{v['size1']}-to-{v['size2']}"
    )
    def test_consistency(self, vector: dict[str, object]) -> None:
        """consistency_proof equals the golden proof, which verify_consistency accepts."""
        old, new = vector["size1"], vector["size2"]
        assert isinstance(old, int)
        assert isinstance(new, int)
        assert isinstance(vector["proof"], list)
        proof = [bytes.fromhex(h) for h in vector["proof"]]
        assert proof == consistency_proof(_bounded(_GOLDEN_NODE, new), old, new)
        roots = GOLDEN["roots"]
        verify_consistency(
            old, new, proof, bytes.fromhex(roots[str(old)]), bytes.fromhex(roots[str(new)])
        )


class TestNodeHash:
    """node_hash is RFC 9162 §2.1.1's interior hash."""

    @given(hashes, hashes)
    def test_domain_separated(self, left: bytes, right: bytes) -> None:
        """node_hash(l, r) is SHA-256(0x01 || l || r), never the leaf hash of l || r."""
        assert hashlib.sha256(b"\x01" + left + right).digest() == node_hash(left, right)
        assert leaf_hash(left + right) != node_hash(left, right)


class TestRootOf:
    """root_of follows the RFC's split at the largest power of two below n."""

    @pytest.mark.parametrize("size", [2, 3, 5, 7, 8, 100, 255, 256, 257])
    def test_split(self, size: int) -> None:
        """MTH(D[n]) = node_hash(MTH(D[0:k]), MTH(D[k:n])) with k the largest power of 2 < n."""
        k = 1 << ((size - 1).bit_length() - 1)
        assert node_hash(root_of(LEAVES[:k]), root_of(LEAVES[k:size])) == ROOTS[size]

    def test_single_leaf(self) -> None:
        """The root of a one-leaf tree is that leaf's hash."""
        assert LEAVES[0] == root_of(LEAVES[:1])


class TestSubtreeHash:
    """subtree_hash over every range the RFC's recursions can visit."""

    def test_equals_root_of_range(self) -> None:
        """On every range whose start is a multiple of the largest power of two ≤ its length, it
        equals root_of(leaves[start:end])."""
        checked = 0
        for end in range(1, 65):
            for start in range(end):
                n = end - start
                if start % (1 << (n.bit_length() - 1)):
                    continue
                read = range_reader(end)
                assert root_of(LEAVES[start:end]) == subtree_hash(read, start, end), (start, end)
                checked += 1
        assert checked > 200


class TestFrontier:
    """Frontier: the compact range of a growing tree."""

    def test_root_every_size(self) -> None:
        """Frontier.root() after n appends equals root_of the n leaves, for n = 0..200."""
        frontier = Frontier.empty()
        for n in range(201):
            assert ROOTS[n] == frontier.root(), n
            assert n == frontier.size
            if n < 200:
                frontier = frontier.append(LEAVES[n])

    @pytest.mark.parametrize("size", [0, 1, 2, 3, 6, 7, 8, 13, 64, 255, 300])
    def test_nodes_are_maximal_subtrees(self, size: int) -> None:
        """The nodes are the roots of the maximal complete subtrees, one per set bit, largest
        first."""
        expected, start = [], 0
        for level in reversed(range(size.bit_length())):
            if size >> level & 1:
                expected.append(root_of(LEAVES[start : start + (1 << level)]))
                start += 1 << level
        assert tuple(expected) == Frontier.empty().extend(LEAVES[:size]).nodes

    @pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 7, 8, 9, 100, 127, 128, 255, 256, 300])
    def test_completed_are_exactly_the_complete_subtrees(self, size: int) -> None:
        """After n appends, `completed` holds each complete subtree of level ≥ 1 once, with the
        hash root_of gives its range: n - popcount(n) of them."""
        completed: Completed = []
        Frontier.empty().extend(LEAVES[:size], completed)
        assert size - size.bit_count() == len(completed)
        assert _complete_subtrees(size) == {(level, index) for level, index, _ in completed}
        for level, index, h in completed:
            assert root_of(LEAVES[index << level : (index + 1) << level]) == h, (level, index)

    @given(st.integers(min_value=0, max_value=MAX_SIZE - 1))
    def test_append_reports_subtrees_ending_at_the_new_leaf(self, size: int) -> None:
        """One append reports exactly the subtrees that end at the new leaf, smallest first:
        as many as size has trailing one bits."""
        frontier = Frontier.empty().extend(LEAVES[:size])
        completed: Completed = []
        frontier.append(LEAVES[size], completed)
        trailing_ones = (size ^ (size + 1)).bit_length() - 1
        expected = [(level, ((size + 1) >> level) - 1) for level in range(1, trailing_ones + 1)]
        assert expected == [(level, index) for level, index, _ in completed]

    def test_append_does_not_mutate(self) -> None:
        """append returns a new frontier and leaves the old one as it was."""
        before = Frontier.empty().extend(LEAVES[:7])
        after = before.append(LEAVES[7])
        assert (7, ROOTS[7]) == (before.size, before.root())
        assert (8, ROOTS[8]) == (after.size, after.root())


class TestInclusionProof:
    """inclusion_proof / verify_inclusion (RFC 9162 §2.1.3)."""

    def test_every_leaf_up_to_64(self) -> None:
        """For every size 1..64 and every index, the proof verifies, and a reader backed by the
        Frontier's completed nodes gives the same proof."""
        for size in range(1, 65):
            for index in range(size):
                proof = inclusion_proof(range_reader(size), index, size)
                assert proof == inclusion_proof(store_reader(size), index, size)
                verify_inclusion(LEAVES[index], index, size, proof, ROOTS[size])

    @settings(max_examples=300, deadline=None)
    @given(size_and_index())
    def test_verifies(self, case: tuple[int, int]) -> None:
        """For any size up to 300 and any index, the proof verifies, and both readers agree."""
        size, index = case
        proof = inclusion_proof(range_reader(size), index, size)
        assert proof == inclusion_proof(store_reader(size), index, size)
        verify_inclusion(LEAVES[index], index, size, proof, ROOTS[size])

    @pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 1), (5, 5), (6, 5), (-1, 5)])
    def test_index_out_of_range(self, index: int, size: int) -> None:
        """A leaf index outside [0, size) raises ProofError in generation and verification."""
        with pytest.raises(ProofError, match="not in a tree"):
            inclusion_proof(range_reader(max(size, 0)), index, size)
        with pytest.raises(ProofError, match="not in a tree"):
            verify_inclusion(LEAVES[0], index, size, [], ROOTS[max(size, 0)])

    @settings(max_examples=200, deadline=None)
    @given(size_and_index(min_size=2), st.data())
    def test_flipped_bit_fails(self, case: tuple[int, int], data: st.DataObject) -> None:
        """Flipping any bit of any hash in the proof raises ProofError."""
        size, index = case
        proof = inclusion_proof(range_reader(size), index, size)
        at = data.draw(st.integers(0, len(proof) - 1))
        proof[at] = _flip_bit(proof[at], data.draw(bits))
        with pytest.raises(ProofError):
            verify_inclusion(LEAVES[index], index, size, proof, ROOTS[size])

    @settings(max_examples=200, deadline=None)
    @given(size_and_index(min_size=2), st.data())
    def test_dropped_hash_fails(self, case: tuple[int, int], data: st.DataObject) -> None:
        """Removing any one hash from the proof raises ProofError."""
        size, index = case
        proof = inclusion_proof(range_reader(size), index, size)
        del proof[data.draw(st.integers(0, len(proof) - 1))]
        with pytest.raises(ProofError):
            verify_inclusion(LEAVES[index], index, size, proof, ROOTS[size])

    @settings(max_examples=200, deadline=None)
    @given(size_and_index(), st.data())
    def test_added_hash_fails(self, case: tuple[int, int], data: st.DataObject) -> None:
        """Inserting a hash anywhere in the proof (even a genuine node) raises ProofError."""
        size, index = case
        proof = inclusion_proof(range_reader(size), index, size)
        extra = data.draw(hashes | st.sampled_from([*proof, LEAVES[index], ROOTS[size]]))
        proof.insert(data.draw(st.integers(0, len(proof))), extra)
        with pytest.raises(ProofError):
            verify_inclusion(LEAVES[index], index, size, proof, ROOTS[size])

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(_LONG_INCLUSION), st.data())
    def test_swapped_hashes_fail(self, case: tuple[int, int], data: st.DataObject) -> None:
        """Swapping any two hashes of a proof with at least two raises ProofError."""
        size, index = case
        proof = inclusion_proof(range_reader(size), index, size)
        i = data.draw(st.integers(0, len(proof) - 2))
        j = data.draw(st.integers(i + 1, len(proof) - 1))
        proof[i], proof[j] = proof[j], proof[i]
        with pytest.raises(ProofError):
            verify_inclusion(LEAVES[index], index, size, proof, ROOTS[size])

    @settings(max_examples=200, deadline=None)
    @given(size_and_index(min_size=2), st.data())
    def test_wrong_index_fails(self, case: tuple[int, int], data: st.DataObject) -> None:
        """The proof of leaf i does not prove the same leaf at any other index."""
        size, index = case
        proof = inclusion_proof(range_reader(size), index, size)
        other = data.draw(st.integers(-1, size).filter(lambda j: j != index))
        with pytest.raises(ProofError):
            verify_inclusion(LEAVES[index], other, size, proof, ROOTS[size])

    @settings(max_examples=200, deadline=None)
    @given(size_and_index(), st.data())
    def test_wrong_tree_fails(self, case: tuple[int, int], data: st.DataObject) -> None:
        """A proof for tree size n does not verify for any other size m with m's root.

        (With n's root kept, another size can verify, e.g. leaf 0 of 5 as leaf 0 of 6: the
        same hashes in the same order. RFC 9162 binds size to root in the signed tree head,
        not in the proof.)"""
        size, index = case
        proof = inclusion_proof(range_reader(size), index, size)
        other = data.draw(st.integers(1, MAX_SIZE).filter(lambda m: m != size))
        with pytest.raises(ProofError):
            verify_inclusion(LEAVES[index], index, other, proof, ROOTS[other])

    @pytest.mark.parametrize(
        ("index", "size", "claimed", "error"),
        [(0, 4, 5, "shorter"), (3, 4, 6, "shorter"), (0, 8, 4, "longer"), (4, 6, 5, "longer")],
    )
    def test_size_of_another_depth_fails(
        self, index: int, size: int, claimed: int, error: str
    ) -> None:
        """A size that puts the leaf at another depth raises ProofError, even with the true
        root."""
        proof = inclusion_proof(range_reader(size), index, size)
        with pytest.raises(ProofError, match=error):
            verify_inclusion(LEAVES[index], index, claimed, proof, ROOTS[size])

    @settings(max_examples=200, deadline=None)
    @given(size_and_index(), st.data())
    def test_wrong_leaf_fails(self, case: tuple[int, int], data: st.DataObject) -> None:
        """The proof of leaf i does not prove any other leaf hash at index i."""
        size, index = case
        proof = inclusion_proof(range_reader(size), index, size)
        leaf = data.draw((hashes | st.sampled_from(LEAVES)).filter(lambda h: h != LEAVES[index]))
        with pytest.raises(ProofError):
            verify_inclusion(leaf, index, size, proof, ROOTS[size])

    @settings(max_examples=200, deadline=None)
    @given(size_and_index(), st.data())
    def test_wrong_root_fails(self, case: tuple[int, int], data: st.DataObject) -> None:
        """A proof checked against any other root raises ProofError."""
        size, index = case
        proof = inclusion_proof(range_reader(size), index, size)
        root = data.draw((hashes | st.sampled_from(ROOTS)).filter(lambda h: h != ROOTS[size]))
        with pytest.raises(ProofError, match="leads to root"):
            verify_inclusion(LEAVES[index], index, size, proof, root)


class TestConsistencyProof:
    """consistency_proof / verify_consistency (RFC 9162 §2.1.4)."""

    def test_all_pairs_up_to_64(self) -> None:
        """For every 1 <= m <= n <= 64 the proof verifies, and a reader backed by the Frontier's
        completed nodes gives the same proof."""
        for new in range(1, 65):
            for old in range(1, new + 1):
                proof = consistency_proof(range_reader(new), old, new)
                assert proof == consistency_proof(store_reader(new), old, new), (old, new)
                verify_consistency(old, new, proof, ROOTS[old], ROOTS[new])

    @settings(max_examples=200, deadline=None)
    @given(size_pair())
    def test_verifies_up_to_300(self, pair: tuple[int, int]) -> None:
        """For any 1 <= m < n <= 300 the proof verifies."""
        old, new = pair
        proof = consistency_proof(range_reader(new), old, new)
        assert proof == consistency_proof(store_reader(new), old, new)
        verify_consistency(old, new, proof, ROOTS[old], ROOTS[new])

    @settings(max_examples=200, deadline=None)
    @given(size_pair(64), st.data())
    def test_flipped_bit_fails(self, pair: tuple[int, int], data: st.DataObject) -> None:
        """Flipping any bit of any hash in the proof raises ProofError."""
        old, new = pair
        proof = consistency_proof(range_reader(new), old, new)
        at = data.draw(st.integers(0, len(proof) - 1))
        proof[at] = _flip_bit(proof[at], data.draw(bits))
        with pytest.raises(ProofError):
            verify_consistency(old, new, proof, ROOTS[old], ROOTS[new])

    @settings(max_examples=200, deadline=None)
    @given(size_pair(64), st.data())
    def test_dropped_hash_fails(self, pair: tuple[int, int], data: st.DataObject) -> None:
        """Removing any one hash from the proof raises ProofError."""
        old, new = pair
        proof = consistency_proof(range_reader(new), old, new)
        del proof[data.draw(st.integers(0, len(proof) - 1))]
        with pytest.raises(ProofError):
            verify_consistency(old, new, proof, ROOTS[old], ROOTS[new])

    @settings(max_examples=200, deadline=None)
    @given(size_pair(64), st.data())
    def test_added_hash_fails(self, pair: tuple[int, int], data: st.DataObject) -> None:
        """Inserting a hash anywhere in the proof (even a genuine root) raises ProofError."""
        old, new = pair
        proof = consistency_proof(range_reader(new), old, new)
        extra = data.draw(hashes | st.sampled_from([*proof, ROOTS[old], ROOTS[new]]))
        proof.insert(data.draw(st.integers(0, len(proof))), extra)
        with pytest.raises(ProofError):
            verify_consistency(old, new, proof, ROOTS[old], ROOTS[new])

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(_LONG_CONSISTENCY), st.data())
    def test_swapped_hashes_fail(self, pair: tuple[int, int], data: st.DataObject) -> None:
        """Swapping any two hashes of a proof with at least two raises ProofError."""
        old, new = pair
        proof = consistency_proof(range_reader(new), old, new)
        i = data.draw(st.integers(0, len(proof) - 2))
        j = data.draw(st.integers(i + 1, len(proof) - 1))
        proof[i], proof[j] = proof[j], proof[i]
        with pytest.raises(ProofError):
            verify_consistency(old, new, proof, ROOTS[old], ROOTS[new])

    @settings(max_examples=200, deadline=None)
    @given(size_pair(64))
    def test_swapped_roots_fail(self, pair: tuple[int, int]) -> None:
        """The old and new roots given the other way round raise ProofError."""
        old, new = pair
        proof = consistency_proof(range_reader(new), old, new)
        with pytest.raises(ProofError):
            verify_consistency(old, new, proof, ROOTS[new], ROOTS[old])

    @settings(max_examples=200, deadline=None)
    @given(size_pair(64), st.data())
    def test_wrong_roots_fail(self, pair: tuple[int, int], data: st.DataObject) -> None:
        """Any other old root, or any other new root, raises ProofError ("rewritten or forked")."""
        old, new = pair
        proof = consistency_proof(range_reader(new), old, new)
        other = data.draw(hashes | st.sampled_from(ROOTS))
        if other != ROOTS[old]:
            with pytest.raises(ProofError, match="forked"):
                verify_consistency(old, new, proof, other, ROOTS[new])
        if other != ROOTS[new]:
            with pytest.raises(ProofError, match="forked"):
                verify_consistency(old, new, proof, ROOTS[old], other)

    @settings(max_examples=200, deadline=None)
    @given(size_pair(64), st.data())
    def test_wrong_sizes_fail(self, pair: tuple[int, int], data: st.DataObject) -> None:
        """A proof for (m, n) does not verify for other sizes (m', n') with their roots.

        (With the roots of m and n kept, other sizes can verify, e.g. (2, 4) as (2, 3): RFC 9162
        binds size to root in the signed tree head, not in the proof.)"""
        old, new = pair
        proof = consistency_proof(range_reader(new), old, new)
        other = data.draw(
            st.tuples(st.integers(0, 65), st.integers(0, 65)).filter(lambda p: p != pair)
        )
        with pytest.raises(ProofError):
            verify_consistency(*other, proof, ROOTS[other[0]], ROOTS[other[1]])

    @pytest.mark.parametrize(("old", "new"), [(1, 8), (3, 7), (4, 9), (6, 8), (7, 64)])
    def test_length_is_checked(self, old: int, new: int) -> None:
        """A proof with a hash too many or too few is refused for its length, before any root
        comparison."""
        proof = consistency_proof(range_reader(new), old, new)
        with pytest.raises(ProofError, match="longer than needed"):
            verify_consistency(old, new, [*proof, ROOTS[new]], ROOTS[old], ROOTS[new])
        with pytest.raises(ProofError, match="shorter than needed"):
            verify_consistency(old, new, proof[:-1], ROOTS[old], ROOTS[new])

    @pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 64, 300])
    def test_equal_sizes(self, size: int) -> None:
        """m == n: the proof is empty and verifies when both roots are equal."""
        assert [] == consistency_proof(range_reader(size), size, size)
        verify_consistency(size, size, [], ROOTS[size], ROOTS[size])

    @pytest.mark.parametrize("size", [1, 2, 3, 64])
    def test_equal_sizes_different_roots_is_a_fork(self, size: int) -> None:
        """m == n with two different roots raises ProofError naming a fork."""
        with pytest.raises(ProofError, match="forked"):
            verify_consistency(size, size, [], ROOTS[size], ROOTS[size - 1])

    def test_equal_sizes_with_nonempty_proof(self) -> None:
        """m == n with a non-empty proof raises ProofError."""
        with pytest.raises(ProofError, match="must be empty"):
            verify_consistency(5, 5, [ROOTS[5]], ROOTS[5], ROOTS[5])

    @pytest.mark.parametrize(("old", "new"), [(1, 2), (2, 4), (3, 5), (63, 64)])
    def test_empty_proof_fails(self, old: int, new: int) -> None:
        """m < n with an empty proof raises ProofError, even with the true roots."""
        with pytest.raises(ProofError, match="empty"):
            verify_consistency(old, new, [], ROOTS[old], ROOTS[new])

    @pytest.mark.parametrize(("old", "new"), [(0, 5), (-1, 5), (6, 5), (0, 0)])
    def test_generation_needs_0_lt_m_le_n(self, old: int, new: int) -> None:
        """consistency_proof raises ProofError unless 0 < m <= n."""
        with pytest.raises(ProofError, match="no consistency proof"):
            consistency_proof(range_reader(max(new, 0)), old, new)

    @pytest.mark.parametrize(("old", "new"), [(-1, 5), (6, 5)])
    def test_verification_needs_0_le_m_le_n(self, old: int, new: int) -> None:
        """verify_consistency raises ProofError for m < 0 or m > n, whatever the proof."""
        proof = consistency_proof(range_reader(5), 1, 5)
        with pytest.raises(ProofError, match="no consistency"):
            verify_consistency(old, new, proof, ROOTS[max(old, 0)], ROOTS[new])


class TestFromEmptyTree:
    """Consistency from size 0: the empty tree is a prefix of every tree, with no proof."""

    @pytest.mark.parametrize("new", [0, 1, 5, 64])
    def test_empty_proof_accepted(self, new: int) -> None:
        """From size 0 with the empty root, the empty proof verifies."""
        verify_consistency(0, new, [], EMPTY_ROOT, ROOTS[new])

    @pytest.mark.parametrize("new", [0, 1, 5, 64])
    def test_non_empty_proof_rejected(self, new: int) -> None:
        """From size 0, any non-empty proof raises ProofError."""
        proof = [ROOTS[max(new, 1)]]
        with pytest.raises(ProofError, match="from size 0 must be empty"):
            verify_consistency(0, new, proof, EMPTY_ROOT, ROOTS[new])

    def test_golden_proof_from_zero_rejected(self) -> None:
        """A real proof (1 → 8 of the golden vectors) offered from size 0 raises ProofError."""
        vector = next(v for v in GOLDEN["consistency"] if v["size1"] == 1 and v["size2"] == 8)
        proof = [bytes.fromhex(h) for h in vector["proof"]]
        root8 = bytes.fromhex(GOLDEN["roots"]["8"])
        with pytest.raises(ProofError, match="from size 0"):
            verify_consistency(0, 8, proof, EMPTY_ROOT, root8)

    @pytest.mark.parametrize("new", [0, 5])
    def test_other_root_at_size_zero_rejected(self, new: int) -> None:
        """A size-0 root other than SHA-256 of nothing raises ProofError."""
        with pytest.raises(ProofError, match="size 0"):
            verify_consistency(0, new, [], ROOTS[1], ROOTS[new])


class TestHashLengths:
    """Every hash given to a verifier is 32 bytes, or it raises before any hashing."""

    @pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
    def test_inclusion_rejects_wrong_lengths(self, length: int) -> None:
        """A leaf, root or path hash of another length raises ProofError naming it."""
        size, index = 5, 2
        path = inclusion_proof(range_reader(size), index, size)
        bad = bytes(length)
        with pytest.raises(ProofError, match="leaf hash"):
            verify_inclusion(bad, index, size, path, ROOTS[size])
        with pytest.raises(ProofError, match="root hash"):
            verify_inclusion(LEAVES[index], index, size, path, bad)
        with pytest.raises(ProofError, match="inclusion proof hash 1"):
            verify_inclusion(LEAVES[index], index, size, [path[0], bad, *path[2:]], ROOTS[size])

    @pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
    def test_consistency_rejects_wrong_lengths(self, length: int) -> None:
        """An old root, new root or proof hash of another length raises ProofError."""
        proof = consistency_proof(range_reader(7), 3, 7)
        bad = bytes(length)
        with pytest.raises(ProofError, match="old root hash"):
            verify_consistency(3, 7, proof, bad, ROOTS[7])
        with pytest.raises(ProofError, match="new root hash"):
            verify_consistency(3, 7, proof, ROOTS[3], bad)
        with pytest.raises(ProofError, match="consistency proof hash 0"):
            verify_consistency(3, 7, [bad, *proof[1:]], ROOTS[3], ROOTS[7])

    def test_prefix_of_a_hash_is_not_a_hash(self) -> None:
        """A proof hash that is a 32-byte hash with one byte appended raises, not verifies."""
        path = inclusion_proof(range_reader(4), 0, 4)
        with pytest.raises(ProofError, match="33 bytes"):
            verify_inclusion(LEAVES[0], 0, 4, [path[0] + b"\x00", path[1]], ROOTS[4])
