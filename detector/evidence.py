"""Canonical evidence documents and their keccak hash (what goes on chain).

The hash must be reproducible by anyone holding the document, so the JSON form is
canonical: sorted keys, no whitespace, floats rounded to a fixed precision.
"""

from __future__ import annotations

import json
import math
from typing import Any

from eth_utils import keccak


def _normalise(obj: Any) -> Any:
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        return round(obj, 9)
    if isinstance(obj, dict):
        return {str(k): _normalise(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_normalise(v) for v in obj]
    return obj


def canonical_json(doc: dict[str, Any]) -> str:
    """The one JSON text of `doc` that every party hashes."""
    return json.dumps(_normalise(doc), sort_keys=True, separators=(",", ":"), allow_nan=False)


def evidence_hash(doc: dict[str, Any]) -> str:
    """0x-prefixed keccak256 of the canonical JSON of `doc`."""
    return "0x" + keccak(text=canonical_json(doc)).hex()
