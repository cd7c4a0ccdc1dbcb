"""Logs: every line of a request carries its id (the client's X-Request-ID when sane, echoed back), one line
per request with its outcome and stage timings, JSON or text; ``palletreid serve`` starts with a few lines and
none of the embedded database's, Alembic's or uvicorn's internals."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_testkit import block_files, free_port, noise_blocks
from conftest import FreshDatabase, SettingsFactory
from fastapi.testclient import TestClient

from app.logging_setup import LogFormat, build_handler
from app.main import create_app
from models.runtime.checkpoint import read_metadata

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGES = {"decode", "forward", "features", "search", "verify", "store", "commit"}
Capture = Callable[[LogFormat], Callable[[], list[str]]]


@pytest.fixture
def capture_logs() -> Iterator[Capture]:
    """Route the root logger (INFO) through the service's handler into a buffer; returns its lines."""
    root = logging.getLogger()
    level = root.level
    handlers: list[logging.Handler] = []

    def start(log_format: LogFormat) -> Callable[[], list[str]]:
        buffer = io.StringIO()
        handler = build_handler(log_format, buffer)
        handlers.append(handler)
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        return lambda: buffer.getvalue().splitlines()

    yield start
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(level)


def test_json_lines_carry_the_request_id_from_the_header(client: TestClient, capture_logs: Capture) -> None:
    lines = capture_logs("json")
    request_id = "dock7:2026-12-04T09:41:00Z/0001"
    response = client.post(
        "/v1/dispatches",
        files=block_files(noise_blocks(1601, 3)),
        data={"site": "HAM"},
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 201, response.text
    assert response.headers["X-Request-ID"] == request_id

    entries = [json.loads(line) for line in lines()]  # every line is one JSON object
    ours = [entry for entry in entries if entry.get("request_id") == request_id]
    by_logger = {entry["logger"]: entry for entry in ours}
    assert {"app.matching.router", "app.requests"} <= set(by_logger), entries
    assert not [e for e in entries if e["logger"] in by_logger and e.get("request_id") != request_id]
    request = by_logger["app.requests"]
    assert request["level"] == "INFO"
    assert (request["method"], request["path"], request["status"]) == ("POST", "/v1/dispatches", 201)
    assert request["duration_ms"] > 0
    result = response.json()
    assert (request["kind"], request["decision"], request["review"], request["event_id"]) == (
        "dispatch",
        result["decision"],
        result["review"],
        result["event_id"],
    )
    # forward runs on the model's thread, commit after the route returned: the request's context reaches both
    assert set(request["stages_ms"]) == STAGES
    beside_forward = request["stages_ms"]["features"]  # runs on the feature pool while the model runs
    assert beside_forward <= request["duration_ms"] + 1
    assert sum(request["stages_ms"].values()) - beside_forward <= request["duration_ms"] + 1


def test_an_unusable_request_id_is_replaced_by_a_new_one(client: TestClient, capture_logs: Capture) -> None:
    lines = capture_logs("json")
    for sent in ("two words", "x" * 129, 'quote"d'):
        returned = client.get("/v1/events", headers={"X-Request-ID": sent}).headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", returned), returned
    first, second = (client.get("/v1/events").headers["X-Request-ID"] for _ in range(2))
    assert first != second
    logged = [json.loads(line) for line in lines() if '"app.requests"' in line]
    assert [entry["request_id"] for entry in logged][-2:] == [first, second]


def test_text_lines_tag_the_request_and_probes_stay_quiet(client: TestClient, capture_logs: Capture) -> None:
    lines = capture_logs("text")
    client.get("/healthz", headers={"X-Request-ID": "probe-1"})
    client.get("/v1/pallets/not-a-uuid", headers={"X-Request-ID": "reader-1"})
    assert not [line for line in lines() if "probe-1" in line], "successful probes are logged at DEBUG"
    (line,) = [line for line in lines() if "reader-1" in line]
    assert re.fullmatch(
        r"\S+ \S+ INFO app\.requests \[reader-1\]: GET /v1/pallets/not-a-uuid 422 [0-9.]+ ms", line
    ), line


def test_an_unexpected_error_is_logged_and_answered_under_the_request_id(
    database_url: str, tiny_checkpoint: Path, make_settings: SettingsFactory, capture_logs: Capture
) -> None:
    app = create_app(make_settings(database_url, tiny_checkpoint))

    def explode() -> None:
        raise RuntimeError("disk full")

    app.add_api_route("/explode", explode)
    lines = capture_logs("json")
    response = TestClient(app).get("/explode", headers={"X-Request-ID": "boom-1"})  # no lifespan needed

    assert response.status_code == 500  # answered, not raised into the client
    assert response.json() == {"type": "internal_error", "detail": "internal server error"}
    assert response.headers["X-Request-ID"] == "boom-1"
    entries = [json.loads(line) for line in lines()]
    (error,) = [entry for entry in entries if entry["level"] == "ERROR"]
    assert error["request_id"] == "boom-1"
    assert "RuntimeError: disk full" in error["exception"]
    (request,) = [entry for entry in entries if entry["logger"] == "app.requests"]
    assert (request["request_id"], request["status"]) == ("boom-1", 500)


def test_serve_starts_with_a_few_json_lines(
    fresh_database: FreshDatabase, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    port = free_port()
    environment = {
        **os.environ,
        "PALLETREID_LOG_FORMAT": "json",
        "PALLETREID_MODEL_PATH": str(tiny_checkpoint),
        "PALLETREID_MODEL_THREADS": "1",
        "PALLETREID_WEBHOOK_WORKER": "false",
        "PALLETREID_IMAGE_STORE": str(tmp_path / "images"),
        # The random-weight test model carries no calibrated decision parameters: all three thresholds.
        "PALLETREID_BLOCK_THRESHOLD": "0.995",
        "PALLETREID_MIN_VOTES": "2",
        "PALLETREID_SCORE_THRESHOLD": "0.995",
    }
    for name in ("PALLETREID_API_KEYS", "PALLETREID_API_KEYS_FILE", "PALLETREID_LOG_LEVEL"):
        environment.pop(name, None)
    log_path = tmp_path / "serve.log"
    with fresh_database() as database_url, log_path.open("w") as log:
        environment["DATABASE_URL"] = database_url
        command = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        server = subprocess.Popen(
            command, cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180  # a cold start imports torch; CI machines can be slow
            while True:
                assert server.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "server did not become ready"
                try:
                    if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            start_up = log_path.read_text().splitlines()
            response = httpx.get(
                f"{base_url}/v1/events", headers={"X-Request-ID": "after-start-1"}, timeout=10
            )
            assert response.headers["X-Request-ID"] == "after-start-1"
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)

    entries: list[dict[str, Any]] = [json.loads(line) for line in log_path.read_text().splitlines()]
    messages = "\n".join(entry["message"] for entry in entries[: len(start_up)])
    assert len(start_up) <= 8, messages
    assert not [e for e in entries if e["logger"].split(".")[0] in ("alembic", "pgserver", "py")], messages
    assert "Application startup complete." not in messages and "Started server process" not in messages
    assert "schema migrated from an empty schema to" in messages
    assert read_metadata(tiny_checkpoint).model_id in messages
    assert "decision parameters from environment" in messages
    assert f"Uvicorn running on http://127.0.0.1:{port}" in messages
    (request,) = [entry for entry in entries if entry.get("request_id") == "after-start-1"]
    assert (request["logger"], request["path"], request["status"]) == ("app.requests", "/v1/events", 200)
    assert server.returncode == 0, messages
