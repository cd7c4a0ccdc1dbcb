"""The review page in a real headless Chromium (Debian's ``chromium`` driven by Playwright): an operator logs
in with an admin key, sees the queue with the block images, resolves one review with the keyboard shortcut
and one with a button, and a form without the session's CSRF token changes nothing.

The app runs under uvicorn on loopback against its own freshly migrated database, so the browser, the API
and the database check all see committed rows. Without Chromium or Playwright the test is skipped on a
developer machine and fails in CI (``CI`` set), where ``.ci/run`` installs both.

``PALLETREID_REVIEW_SCREENSHOT=docs/img/review-page.png`` makes the run write the screenshot the
documentation shows (otherwise it goes to the test's temporary folder).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from api_testkit import FreshDatabase, block_files, free_port
from sqlalchemy import create_engine, select

from app.db.migrations import upgrade_to_head
from app.db.tables import Review
from app.main import create_app
from app.settings import Settings
from models.synth.dataset import SynthConfig, render_pallet

ADMIN_KEY = "browser-admin-secret-0123456789"
SYNTH = SynthConfig(pallets=1, cameras=1, frames=1, width=240, height=150, seed=7)
"""Synthetic block captures: what a camera station sends, so the screenshot shows block-like images."""


@pytest.fixture
def chromium() -> str:
    """Path of the Chromium executable; a missing browser or Playwright skips locally and fails in CI."""
    executable = shutil.which("chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "the playwright package is not installed (pip install -e '.[dev]')"
    else:
        problem = "" if executable else "no chromium executable on PATH (apt-get install chromium)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {problem}")
        pytest.skip(problem)
    assert executable is not None
    return executable


@pytest.fixture
def migrated_database(fresh_database: FreshDatabase) -> Iterator[str]:
    with fresh_database() as url:
        upgrade_to_head(url)
        yield url


@pytest.fixture
def live_server(
    migrated_database: str, tiny_checkpoint: Path, make_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[str]:
    """uvicorn serving the app with an admin key in a thread on 127.0.0.1; yields its base URL."""
    images = tmp_path / "images"
    settings = make_settings(
        migrated_database, tiny_checkpoint, api_keys=f"admin:lead:{ADMIN_KEY}", image_store=images
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None, workers=1)
    )
    thread = threading.Thread(target=server.run, name="uvicorn-review-page", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _synthetic_blocks(pallet_index: int) -> list[bytes]:
    return [capture.jpeg for capture in render_pallet(SYNTH, pallet_index)]


def _flagged_review(api: httpx.Client, pallet_index: int) -> tuple[str, dict[str, Any]]:
    """A pallet received with its six blocks, then dispatched showing one of them only: strong one-block
    evidence is registered as new and flagged for review. Returns the known pallet and the dispatch."""
    blobs = _synthetic_blocks(pallet_index)
    receipt = api.post("/v1/receipts", files=block_files(blobs, "image/jpeg"))
    assert receipt.status_code == 201, receipt.text
    dispatch = api.post("/v1/dispatches", files=block_files(blobs[:1], "image/jpeg"))
    assert dispatch.status_code == 201, dispatch.text
    body: dict[str, Any] = dispatch.json()
    assert body["decision"] == "registered" and body["review"], body
    return str(receipt.json()["pallet_id"]), body


def _resolution(database_url: str, event_id: int) -> tuple[Any, ...] | None:
    """The stored (resolved_at, resolved_by, action) of an event's review; ``None`` while untouched."""
    engine = create_engine(database_url)
    with engine.connect() as connection:
        row = connection.execute(
            select(Review.resolved_at, Review.resolved_by, Review.action).where(Review.event_id == event_id)
        ).one_or_none()
    engine.dispose()
    return None if row is None else tuple(row)


def test_operator_resolves_reviews_in_chromium(
    chromium: str, live_server: str, migrated_database: str, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    with httpx.Client(base_url=live_server, headers={"X-API-Key": ADMIN_KEY}, timeout=60) as api:
        first_known, first = _flagged_review(api, 0)
        second_known, second = _flagged_review(api, 1)
        assert [item["event_id"] for item in api.get("/v1/reviews").json()["data"]] == [
            first["event_id"],
            second["event_id"],
        ]

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(30_000)

            page.goto(f"{live_server}/review")
            assert page.url == f"{live_server}/review/login", "the queue needs a login"
            page.fill("#api_key", ADMIN_KEY)
            with page.expect_navigation():
                page.click("button[type=submit]")
            assert page.url == f"{live_server}/review"
            [cookie] = [c for c in context.cookies() if c["name"] == "palletreid_review"]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/review"
            assert page.evaluate("document.cookie") == "", "scripts cannot read the session"

            item = page.locator(f"#event-{first['event_id']}")
            assert item.is_visible() and first_known in item.inner_text()
            assert page.locator(f"#event-{second['event_id']}").is_visible()
            # Every block image (the dispatch's one and the candidate's six) was served and decoded.
            page.wait_for_load_state("load")
            loaded = "images => images.map(image => image.complete && image.naturalWidth)"
            widths = item.locator("img").evaluate_all(loaded)
            assert widths == [SYNTH.width] * 7, widths

            screenshot = Path(os.environ.get("PALLETREID_REVIEW_SCREENSHOT", tmp_path / "review-page.png"))
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)

            # Forms of the page's origin without the session's token change nothing.
            action = f"/review/{first['event_id']}"
            for fields, status in (({"action": "keep_new"}, 422), ({"action": "keep_new", "csrf": "x"}, 403)):
                with page.expect_navigation() as refused:
                    page.evaluate(
                        """([action, fields]) => {
                            const form = document.createElement("form");
                            form.method = "post";
                            form.action = action;
                            for (const [name, value] of Object.entries(fields)) {
                                const input = document.createElement("input");
                                input.type = "hidden"; input.name = name; input.value = value;
                                form.appendChild(input);
                            }
                            document.body.appendChild(form);
                            form.submit();
                        }""",
                        [action, fields],
                    )
                response = refused.value
                assert response is not None and response.status == status, fields
            assert _resolution(migrated_database, first["event_id"]) is None, "still untouched"

            # The keyboard shortcut merges the first item into its best candidate.
            page.goto(f"{live_server}/review")
            with page.expect_navigation():
                page.keyboard.press("m")
            assert "merged into" in page.get_by_role("status").inner_text()
            assert page.locator(f"#event-{first['event_id']}").count() == 0

            # The button keeps the other dispatch as a new pallet.
            with page.expect_navigation():
                page.locator(f"#event-{second['event_id']}").get_by_role(
                    "button", name="Keep as new pallet"
                ).click()
            assert "kept as a new pallet" in page.get_by_role("status").inner_text()
            assert page.locator("#empty").is_visible()
            browser.close()

        merged = api.get(f"/v1/pallets/{first['pallet_id']}").json()
        assert (merged["status"], merged["merged_into"]) == ("merged", first_known)
        history = api.get(f"/v1/pallets/{first_known}/events").json()["data"]
        assert (history[0]["kind"], history[0]["actor"]) == ("merge", "lead")
        kept = api.get(f"/v1/pallets/{second['pallet_id']}").json()
        assert (kept["status"], kept["merged_into"]) == ("dispatched", None)
        assert second_known != second["pallet_id"]
        resolved = {
            item["event_id"]: item["resolution"]
            for item in api.get("/v1/reviews", params={"status": "resolved"}).json()["data"]
        }
        assert resolved[first["event_id"]]["action"] == "merge"
        assert resolved[first["event_id"]]["pallet_id"] == first_known
        assert resolved[second["event_id"]]["action"] == "keep_new"
        assert api.get("/v1/reviews").json()["data"] == []
    for event_id, action in ((first["event_id"], "merge"), (second["event_id"], "keep_new")):
        stored = _resolution(migrated_database, event_id)
        assert stored is not None and stored[0] is not None and stored[1:] == ("lead", action)
