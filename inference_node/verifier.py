"""The trusted side of a spot check: challenge a node, recompute locally, judge.

A node's challenge answer carries the re-run output and its hash. The verifier
checks that the hash really is the hash of the vectors sent (a node must hash
consistently), optionally that the node's committed hash is the one a client
was served, and that every vector is within a cosine tolerance of the
verifier's own computation: GPU kernels are not bit-exact, so equality of bytes
cannot be asked of an honest node, but garbage is nowhere near the tolerance.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import numpy as np

from inference_node.commitments import CommitmentError, output_hash
from inference_node.model import Embedder

DEFAULT_TOLERANCE = 0.995


class ChallengeFailed(RuntimeError):
    """The node could not be challenged at all (unreachable, unknown request, bad reply)."""


@dataclass(frozen=True)
class Verdict:
    """Outcome of one spot check; what the monitor publishes to `node.challenges.v1`."""

    node_id: str
    request_id: str
    passed: bool
    cosine: float  # smallest cosine over the request's inputs (-1 when none could be computed)
    ts: float
    reason: str = ""
    hash_ok: bool = True
    schema_version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Verifier:
    """Judges challenge answers against a trusted local model."""

    def __init__(self, embedder: Embedder, *, tolerance: float = DEFAULT_TOLERANCE) -> None:
        if not 0 < tolerance <= 1:
            raise ValueError("tolerance must be in (0, 1]")
        self.embedder = embedder
        self.tolerance = tolerance

    def verify(
        self,
        answer: dict[str, Any],
        *,
        node_id: str | None = None,
        expected_hash: str | None = None,
        expected_inputs: list[str] | None = None,
    ) -> Verdict:
        """Judge a `/v1/challenge` answer.

        `expected_hash`: the output hash the challenger was served (then the node's
        committed hash must match it). `expected_inputs`: the inputs the
        challenger sent (then the node must have re-run exactly those).
        """
        rid = str(answer.get("request_id", ""))
        nid = node_id or str(answer.get("node_id", ""))

        def verdict(passed: bool, cosine: float, reason: str, hash_ok: bool = True) -> Verdict:
            return Verdict(nid, rid, passed, cosine, time.time(), reason, hash_ok)

        try:
            inputs = [str(t) for t in answer["input"]]
            vectors = np.asarray([d["embedding"] for d in answer["data"]], dtype=np.float32)
            claimed = str(answer["output_hash"])
            committed = str(answer.get("committed_hash", claimed))
        except (KeyError, TypeError, ValueError) as exc:
            return verdict(False, -1.0, f"malformed challenge answer: {exc}", False)
        if expected_inputs is not None and inputs != list(expected_inputs):
            return verdict(False, -1.0, "node re-ran different inputs than were sent", False)
        if vectors.ndim != 2 or vectors.shape[0] != len(inputs):
            return verdict(
                False, -1.0, f"{vectors.shape[0]} vectors for {len(inputs)} inputs", False
            )
        try:
            hash_ok = output_hash(vectors) == claimed.lower()
        except CommitmentError:
            hash_ok = False
        if expected_hash is not None and committed.lower() != expected_hash.lower():
            return verdict(False, -1.0, "committed hash differs from the hash served", False)
        reference = self.embedder.encode(inputs).vectors
        if reference.shape != vectors.shape:
            return verdict(
                False, -1.0, f"dimension {vectors.shape[1]} != {reference.shape[1]}", hash_ok
            )
        norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1)
        cos = np.sum(vectors * reference, axis=1) / np.clip(norms, 1e-12, None)
        worst = float(cos.min()) if len(cos) else 1.0
        if not hash_ok:
            return verdict(False, worst, "output hash does not match the vectors sent", False)
        if worst < self.tolerance:
            return verdict(False, worst, f"cosine {worst:.4f} below tolerance {self.tolerance}")
        return verdict(True, worst, "")

    async def spot_check(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        request_id: str,
        *,
        token: str | None = None,
        node_id: str | None = None,
        expected_hash: str | None = None,
        expected_inputs: list[str] | None = None,
    ) -> Verdict:
        """Challenge `request_id` at the node `base_url` and judge the answer."""
        headers = {"authorization": f"Bearer {token}"} if token else {}
        try:
            resp = await client.post(
                f"{base_url.rstrip('/')}/v1/challenge",
                json={"request_id": request_id},
                headers=headers,
            )
        except httpx.HTTPError as exc:
            raise ChallengeFailed(f"challenge of {request_id} failed: {exc}") from exc
        if resp.status_code != 200:
            raise ChallengeFailed(f"challenge of {request_id}: HTTP {resp.status_code}")
        return self.verify(
            resp.json(),
            node_id=node_id,
            expected_hash=expected_hash,
            expected_inputs=expected_inputs,
        )
