"""Output hashes and the Merkle commitment settled on chain.

An output hash commits to exactly the bytes served: the float32 little-endian
vectors (the OpenAI `base64` encoding; the JSON floats are the same float32
values, so a client recomputes the hash from either). A settlement commits to a
period's `(request id, output hash)` pairs with a keccak Merkle root, so that an
auditor holding one response can later prove it was, or was not, accounted for.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from eth_utils import keccak

_OUTPUT_DOMAIN = b"vigil.output.v1"
_LEAF_DOMAIN = b"\x00"
_NODE_DOMAIN = b"\x01"
ZERO_ROOT = "0x" + "00" * 32


class CommitmentError(ValueError):
    """A hash or proof is malformed."""


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _bytes32(h: str) -> bytes:
    raw = bytes.fromhex(h.removeprefix("0x"))
    if len(raw) != 32:
        raise CommitmentError(f"expected a 32-byte hash, got {len(raw)} bytes")
    return raw


def output_hash(vectors: npt.ArrayLike) -> str:
    """Hash of served vectors (rows x dim), computed on their float32 LE bytes."""
    arr = np.ascontiguousarray(np.asarray(vectors, dtype="<f4"))
    if arr.ndim != 2:
        raise CommitmentError(f"vectors must be 2-D (rows, dim), got shape {arr.shape}")
    header = struct.pack(">II", arr.shape[0], arr.shape[1])
    return _hex(keccak(_OUTPUT_DOMAIN + header + arr.tobytes()))


def leaf_hash(request_id: str, out_hash: str) -> bytes:
    """Leaf of one served request (domain-separated from inner nodes)."""
    rid = request_id.encode("utf-8")
    return keccak(_LEAF_DOMAIN + struct.pack(">H", len(rid)) + rid + _bytes32(out_hash))


def _parent(left: bytes, right: bytes) -> bytes:
    return keccak(_NODE_DOMAIN + left + right)


def _levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        nxt = [_parent(cur[i], cur[i + 1]) for i in range(0, len(cur) - 1, 2)]
        if len(cur) % 2:
            nxt.append(cur[-1])  # odd node moves up unchanged (no duplication games)
        levels.append(nxt)
    return levels


def merkle_root(pairs: Sequence[tuple[str, str]]) -> str:
    """Root over `(request_id, output_hash)` pairs in order; ZERO_ROOT when empty."""
    if not pairs:
        return ZERO_ROOT
    return _hex(_levels([leaf_hash(r, h) for r, h in pairs])[-1][0])


@dataclass(frozen=True)
class ProofStep:
    sibling: str
    sibling_is_left: bool


def merkle_proof(pairs: Sequence[tuple[str, str]], index: int) -> list[ProofStep]:
    """Inclusion proof of `pairs[index]` under `merkle_root(pairs)`."""
    if not 0 <= index < len(pairs):
        raise CommitmentError(f"index {index} out of range for {len(pairs)} leaves")
    proof: list[ProofStep] = []
    for level in _levels([leaf_hash(r, h) for r, h in pairs])[:-1]:
        sib = index ^ 1
        if sib < len(level):
            proof.append(ProofStep(_hex(level[sib]), sib < index))
        index //= 2
    return proof


def verify_proof(root: str, request_id: str, out_hash: str, proof: Sequence[ProofStep]) -> bool:
    """Whether `(request_id, out_hash)` is committed under `root` by `proof`."""
    node = leaf_hash(request_id, out_hash)
    for step in proof:
        sib = _bytes32(step.sibling)
        node = _parent(sib, node) if step.sibling_is_left else _parent(node, sib)
    return _hex(node) == root.lower()
