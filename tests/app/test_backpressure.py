"""Inference off the request threads: a bounded model queue answers 503 ``overloaded`` when full, and the
probes answer while the model is saturated.

The model is gated (its forward blocks until the test opens the gate), so the tests wait for states, never
for durations: nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
import httpx
import numpy as np
import pytest
from api_testkit import FreshDatabase, block_files, noise_blocks, wait_until
from fastapi.testclient import TestClient
from PIL import Image

from app.db.migrations import upgrade_to_head
from app.main import create_app
from app.model_runner import ModelOverloadedError, ModelRunner
from models.runtime.inference import Embedder
from models.runtime.voting import GeometryParameters

LIVENESS_DEADLINE_S = 120.0
"""How long a test waits for a state before failing instead of hanging (not a speed requirement)."""


class GatedModel:
    """The real tiny model behind a gate: every forward waits until the gate opens."""

    def __init__(self, model: Embedder) -> None:
        self._model = model
        self.model_id = model.model_id
        self.embedding_dim = model.embedding_dim
        self.image_size = model.image_size
        self.metadata = model.metadata
        self.precision = model.precision
        self.gate = threading.Event()
        self.entered = threading.Event()

    def embed(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        self.entered.set()
        if not self.gate.wait(LIVENESS_DEADLINE_S):
            raise RuntimeError("the test never opened the gate")
        return self._model.embed(images, batch_size)


def test_the_runner_admits_a_bounded_number_of_requests(tiny_checkpoint: Path) -> None:
    model = GatedModel(Embedder.load(tiny_checkpoint))
    runner = ModelRunner(model, max_queued=2)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 96, 3), dtype=np.uint8))

    async def scenario() -> None:
        first = asyncio.ensure_future(runner.analyse([image], GeometryParameters()))
        second = asyncio.ensure_future(runner.analyse([image, image], GeometryParameters()))
        await asyncio.to_thread(model.entered.wait, LIVENESS_DEADLINE_S)
        assert runner.admitted == 2
        with pytest.raises(ModelOverloadedError) as refused:
            await runner.analyse([image], GeometryParameters())
        assert refused.value.status_code == 503
        assert refused.value.headers == {"Retry-After": "1"}

        second.cancel()  # queued, its client went away: it leaves the queue, its forward never runs
        await asyncio.to_thread(wait_until, lambda: runner.admitted == 1, "the cancelled request left")
        first.cancel()  # running: the forward cannot be stopped and keeps the model busy until it ends
        await asyncio.sleep(0)
        assert runner.admitted == 1
        model.gate.set()
        await asyncio.to_thread(wait_until, lambda: runner.admitted == 0, "the running forward ended")

        analysis = await runner.analyse([image, image], GeometryParameters())
        assert analysis.fingerprints.shape == (2, 512)
        assert len(analysis.features) == 2
        assert analysis.at_side_scale is not None and len(analysis.at_side_scale.get()) == 2  # block images
        from_sides = await runner.analyse([image], GeometryParameters(), from_side_views=True)
        assert from_sides.at_side_scale is None
        assert len(from_sides.features[0]) > len(analysis.features[0])  # 1,000 corners kept, not 500

    try:
        asyncio.run(scenario())
    finally:
        model.gate.set()
        runner.close()


@dataclass
class Served:
    client: TestClient
    model: GatedModel
    runner: ModelRunner


QUEUE = 4
REQUEST_THREADS = 2
"""The request threadpool is shrunk below the queue: queued requests must not hold threads."""


@pytest.fixture
def served(
    fresh_database: FreshDatabase, tiny_checkpoint: Path, make_settings: Callable[..., object]
) -> Iterator[Served]:
    with fresh_database() as url:
        upgrade_to_head(url)
        app = create_app(make_settings(url, tiny_checkpoint, max_queued_requests=QUEUE))  # type: ignore[arg-type]
        with TestClient(app, raise_server_exceptions=False) as client:
            loaded = app.state.model_runner
            model = GatedModel(Embedder.load(tiny_checkpoint))
            runner = ModelRunner(model, max_queued=QUEUE)
            app.state.model_runner = runner
            client.portal.call(_limit_request_threads)  # type: ignore[union-attr]
            try:
                yield Served(client, model, runner)
            finally:
                model.gate.set()
                app.state.model_runner = loaded
                runner.close()


def _limit_request_threads() -> None:
    anyio.to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS


def test_a_full_model_queue_is_refused_and_the_probes_still_answer(served: Served) -> None:
    client = served.client
    with ThreadPoolExecutor(max_workers=QUEUE + 2) as callers:
        queued: list[Future[httpx.Response]] = [
            callers.submit(
                client.post, "/v1/dispatches", files=block_files(noise_blocks(seed=200 + i, count=1))
            )
            for i in range(QUEUE)
        ]
        wait_until(lambda: served.runner.admitted == QUEUE, f"{QUEUE} requests admitted to the model")
        assert served.model.entered.is_set()

        refused = client.post("/v1/dispatches", files=block_files(noise_blocks(seed=299, count=1)))
        assert refused.status_code == 503
        assert refused.json()["type"] == "overloaded"
        assert refused.headers["Retry-After"] == "1"

        # More requests wait for the model than there are request threads, yet both probes answer.
        health = callers.submit(client.get, "/healthz").result(timeout=LIVENESS_DEADLINE_S)
        ready = callers.submit(client.get, "/readyz").result(timeout=LIVENESS_DEADLINE_S)
        assert health.status_code == 200
        assert ready.status_code == 200, ready.text
        assert all(not request.done() for request in queued), "the queued requests are still waiting"

        served.model.gate.set()
        responses = [request.result(timeout=LIVENESS_DEADLINE_S) for request in queued]
    assert [response.status_code for response in responses] == [201] * QUEUE, [r.text for r in responses]
    assert served.runner.admitted == 0
