"""GET /metrics: Prometheus text with request counts and latency per route, latency per stage of receipts and
dispatches, decisions and reviews from the database, the webhook backlog and the live false-match estimate;
open on loopback, a reader key elsewhere."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from api_testkit import block_files, noise_blocks
from fastapi.testclient import TestClient

from app.main import create_app
from app.metrics.registry import Counter, Histogram
from app.metrics.stages import STAGE_SECONDS, Stage, timed
from app.settings import Settings

_SAMPLE = re.compile(r'^([a-z_]+)(\{(?:[a-z_]+="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+-]+|\+Inf|-Inf|NaN)$')
READER_KEY = "metrics-reader-key-0123456789"
STATION_KEY = "metrics-station-key-0123456789"


def parse(text: str) -> dict[str, float]:
    """``name{labels}`` → value; fails on any line that is not a comment or a valid sample."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = _SAMPLE.match(line)
        assert match is not None, line
        samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def _scrape(client: TestClient, **headers: str) -> dict[str, float]:
    client.app.state.metrics_cache = None  # type: ignore[attr-defined]  # database metrics are cached 30 s
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.text)


def test_requests_decisions_and_backlog_are_counted(client: TestClient) -> None:
    before = _scrape(client)
    created = 'palletreid_http_requests_total{method="POST",route="/v1/receipts",status="201"}'
    client.post("/v1/webhooks", json={"url": "https://wms.example.com/hooks"})
    client.post("/v1/receipts", files=block_files(noise_blocks(1501, 3)), data={"site": "HAM", "gate": "g1"})
    client.post("/v1/dispatches", files=block_files(noise_blocks(1501, 3)), data={"site": "HAM"})
    client.get("/v1/pallets/not-a-uuid")
    after = _scrape(client)

    assert after[created] == before.get(created, 0) + 1
    unprocessable = (
        'palletreid_http_requests_total{method="GET",route="/v1/pallets/{pallet_id}",status="422"}'
    )
    assert after[unprocessable] >= 1, "labelled by the route template, not the raw path"
    count = 'palletreid_http_request_duration_seconds_count{method="POST",route="/v1/receipts"}'
    infinite = 'palletreid_http_request_duration_seconds_bucket{method="POST",route="/v1/receipts",le="+Inf"}'
    assert after[count] == after[infinite] == before.get(count, 0) + 1
    receipt = (
        'palletreid_decisions_total{decision="registered",gate="g1",kind="receipt",review="false",site="HAM"}'
    )
    dispatch = (
        'palletreid_decisions_total{decision="matched",gate="",kind="dispatch",review="false",site="HAM"}'
    )
    assert after[receipt] == before.get(receipt, 0) + 1
    assert after[dispatch] == before.get(dispatch, 0) + 1
    assert after['palletreid_webhook_deliveries{status="pending"}'] == 2
    assert "palletreid_reviews_total" in after
    assert any(name.startswith("palletreid_impostor_samples{model=") for name in after)


STAGES = ("decode", "forward", "features", "search", "verify", "store", "commit")


def test_each_stage_of_a_dispatch_is_timed(client: TestClient) -> None:
    def stage(name: str, suffix: str) -> str:
        return f'palletreid_stage_duration_seconds_{suffix}{{kind="dispatch",stage="{name}"}}'

    before = _scrape(client)
    response = client.post("/v1/dispatches", files=block_files(noise_blocks(1503, 3)), data={"site": "HAM"})
    assert response.status_code == 201, response.text
    client.get("/v1/events")  # reads commit too, but are no recording: not timed
    after = _scrape(client)

    for name in STAGES:
        assert after[stage(name, "count")] == before.get(stage(name, "count"), 0) + 1, name
        assert after[stage(name, "sum")] > before.get(stage(name, "sum"), 0), name
        infinite = f'palletreid_stage_duration_seconds_bucket{{kind="dispatch",stage="{name}",le="+Inf"}}'
        assert after[infinite] == after[stage(name, "count")]
    detect = stage("detect", "count")
    assert after.get(detect, 0) == before.get(detect, 0), "block images need no detection"
    assert not any('kind=""' in name for name in after), "only receipts and dispatches are timed"


def test_a_stage_outside_a_request_is_not_counted() -> None:
    before = STAGE_SECONDS.render()
    with timed(Stage.FORWARD):
        pass
    assert STAGE_SECONDS.render() == before


def test_registry_renders_counters_and_cumulative_histograms() -> None:
    counter = Counter("c_total", "help", ("a",))
    counter.inc('x"y')
    counter.inc('x"y', amount=2)
    assert parse(counter.render()) == {'c_total{a="x\\"y"}': 3.0}
    histogram = Histogram("h_seconds", "help", ("r",), buckets=(0.1, 1.0))
    for value in (0.05, 0.5, 0.5, 5.0):
        histogram.observe(value, "r1")
    assert parse(histogram.render()) == {
        'h_seconds_bucket{r="r1",le="0.1"}': 1,
        'h_seconds_bucket{r="r1",le="1"}': 3,
        'h_seconds_bucket{r="r1",le="+Inf"}': 4,
        'h_seconds_sum{r="r1"}': 6.05,
        'h_seconds_count{r="r1"}': 4,
    }


@pytest.fixture
def keyed_app(
    database_url: str, tiny_checkpoint: Path, make_settings: Callable[..., Settings]
) -> Iterator[Callable[[str], TestClient]]:
    settings = make_settings(
        database_url,
        tiny_checkpoint,
        api_keys=[f"reader:wms:{READER_KEY}", f"station:dock:{STATION_KEY}"],
        webhook_worker=False,
    )
    clients: list[TestClient] = []

    def client_from(host: str) -> TestClient:
        """An app of its own (lifespan included) seen from ``host``."""
        client = TestClient(create_app(settings), raise_server_exceptions=False, client=(host, 50000))
        clients.append(client.__enter__())
        return client

    yield client_from
    for client in clients:
        client.__exit__(None, None, None)


def test_loopback_scrapes_without_a_key_others_need_a_reader_key(
    keyed_app: Callable[[str], TestClient],
) -> None:
    local = keyed_app("127.0.0.1")
    assert local.get("/metrics").status_code == 200
    remote = keyed_app("10.1.2.3")
    assert remote.get("/metrics").json()["type"] == "unauthenticated"
    assert remote.get("/metrics", headers={"X-API-Key": STATION_KEY}).json()["type"] == "forbidden"
    assert remote.get("/metrics", headers={"X-API-Key": READER_KEY}).status_code == 200
    assert remote.get("/metrics", headers={"Authorization": f"Bearer {READER_KEY}"}).status_code == 200
