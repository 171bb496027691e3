"""Shared fixtures: one real model for the whole folder, and an in-process node runner."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference_node.model import MiniLMEmbedder
from inference_node.server import NodeService, create_app
from inference_node.settings import NodeSettings


@pytest.fixture(scope="session")
def embedder() -> Iterator[MiniLMEmbedder]:
    """The real all-MiniLM-L6-v2, loaded once (offline).

    CPU by default; `VIGIL_TEST_DEVICE=cuda` runs the serving tests on a GPU, and
    `VIGIL_NODE_MODEL_PATH` points at another copy of the weights.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = os.environ.get("VIGIL_NODE_MODEL_PATH")
    yield MiniLMEmbedder(
        device=os.environ.get("VIGIL_TEST_DEVICE", "cpu"),
        model_path=Path(path) if path else None,
    )


@asynccontextmanager
async def running_node(
    settings: NodeSettings, **kwargs: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, NodeService]]:
    """Start a node app (lifespan included) and yield an httpx client bound to it."""
    app = create_app(settings, **kwargs)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            yield client, app.state.node
