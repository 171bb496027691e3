"""Output hashes and Merkle commitments: what a client or auditor recomputes."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_node.commitments import (
    ZERO_ROOT,
    CommitmentError,
    merkle_proof,
    merkle_root,
    output_hash,
    verify_proof,
)

HASHES = st.binary(min_size=32, max_size=32).map(lambda b: "0x" + b.hex())
PAIRS = st.lists(st.tuples(st.text(min_size=1, max_size=40), HASHES), min_size=1, max_size=40)


def test_hash_survives_the_json_and_base64_encodings() -> None:
    v = np.random.default_rng(0).standard_normal((3, 384)).astype(np.float32)
    h = output_hash(v)
    from_json = json.loads(json.dumps(v.tolist()))
    assert output_hash(from_json) == h
    rows = [np.frombuffer(base64.b64decode(base64.b64encode(r.tobytes())), "<f4") for r in v]
    assert output_hash(rows) == h


def test_hash_changes_with_any_bit_and_with_shape() -> None:
    v = np.ones((2, 4), dtype=np.float32)
    w = v.copy()
    w[1, 3] = np.nextafter(w[1, 3], np.float32(2))
    assert output_hash(v) != output_hash(w)
    assert output_hash(v) != output_hash(v.reshape(4, 2))
    with pytest.raises(CommitmentError):
        output_hash(np.ones(4))


def test_empty_period_has_the_zero_root() -> None:
    assert merkle_root([]) == ZERO_ROOT


@settings(max_examples=60, deadline=None)
@given(PAIRS)
def test_every_leaf_has_a_proof_and_other_leaves_do_not_fit(pairs: list[tuple[str, str]]) -> None:
    root = merkle_root(pairs)
    for i, (rid, h) in enumerate(pairs):
        proof = merkle_proof(pairs, i)
        assert verify_proof(root, rid, h, proof)
        assert not verify_proof(root, rid + "x", h, proof)


def test_root_depends_on_order_and_content() -> None:
    a, b = ("r1", "0x" + "11" * 32), ("r2", "0x" + "22" * 32)
    assert merkle_root([a, b]) != merkle_root([b, a])
    assert merkle_root([a]) != merkle_root([a, a])
