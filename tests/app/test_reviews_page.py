"""The review page through HTTP as a browser uses it: login into a signed cookie, the queue rendered with the
blocks, candidates and thresholds, actions only with the CSRF token of the session."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from api_testkit import block_files, noise_blocks
from fastapi.testclient import TestClient

from app.images.store import ImageStore
from app.main import create_app
from app.reviews.session import COOKIE_NAME, SessionSigner
from app.security import KeyRing
from app.settings import Settings

ADMIN_KEY = "page-admin-secret-0123456789"
READER_KEY = "page-reader-secret-0123456789"


@pytest.fixture(scope="module")
def keyed_app_client(
    database_url: str, tiny_checkpoint: Path, make_settings: Callable[..., Settings]
) -> Iterator[TestClient]:
    settings = make_settings(
        database_url, tiny_checkpoint, api_keys=f"admin:lead:{ADMIN_KEY}, reader:{READER_KEY}"
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def browser(
    keyed_app_client: TestClient,
    bind_to_test_connection: Callable[[TestClient], AbstractContextManager[TestClient]],
    tmp_path: Path,
) -> Iterator[TestClient]:
    app = keyed_app_client.app
    previous = app.state.image_store  # type: ignore[attr-defined]
    app.state.image_store = ImageStore(tmp_path / "images")  # type: ignore[attr-defined]
    keyed_app_client.cookies.clear()
    with bind_to_test_connection(keyed_app_client) as client:
        yield client
    keyed_app_client.cookies.clear()
    app.state.image_store = previous  # type: ignore[attr-defined]


def flagged_review(client: TestClient, seed: int, headers: dict[str, str]) -> tuple[str, dict[str, object]]:
    blobs = noise_blocks(seed, count=6)
    known = client.post("/v1/receipts", files=block_files(blobs), headers=headers).json()["pallet_id"]
    single = client.post("/v1/dispatches", files=block_files(blobs[:1]), headers=headers).json()
    assert single["review"], single
    return known, single


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match is not None, "every form carries the CSRF token"
    return match.group(1)


def test_login_queue_and_merge_with_csrf(browser: TestClient) -> None:
    api = {"X-API-Key": ADMIN_KEY}
    known, single = flagged_review(browser, 121, api)
    event = single["event_id"]

    assert browser.get("/review", follow_redirects=False).headers["location"] == "/review/login"
    assert browser.post("/review/login", data={"api_key": READER_KEY}).status_code == 401
    assert browser.post("/review/login", data={"api_key": "no-such-key"}).status_code == 401
    login = browser.post("/review/login", data={"api_key": ADMIN_KEY}, follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/review"
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/review" in cookie

    page = browser.get("/review")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    html = page.text
    assert f'id="event-{event}"' in html and known in html and "Logged in as lead" in html
    assert f'src="/review/images/{event}/0"' in html
    assert html.count('alt="candidate block') == 6, "the candidate's stored blocks beside the query's"
    assert "summed inliers" in html and 'data-key="m"' in html
    image = browser.get(f"/review/images/{event}/0")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"

    forged = browser.post(f"/review/{event}", data={"action": "merge", "pallet_id": known, "csrf": "guess"})
    assert forged.status_code == 403
    assert browser.get(f"/v1/pallets/{single['pallet_id']}", headers=api).json()["status"] == "dispatched"

    done = browser.post(
        f"/review/{event}",
        data={"action": "merge", "pallet_id": known, "csrf": csrf_of(html)},
        follow_redirects=False,
    )
    assert done.status_code == 303 and "merged" in done.headers["location"]
    merged = browser.get(f"/v1/pallets/{single['pallet_id']}", headers=api).json()
    assert (merged["status"], merged["merged_into"]) == ("merged", known)
    history = browser.get(f"/v1/pallets/{known}/events", headers=api).json()["data"]
    assert (history[0]["kind"], history[0]["actor"]) == ("merge", "lead")
    after = browser.get(done.headers["location"]).text
    assert "Nothing to review." in after and "merged into" in after

    browser.cookies.clear()
    anonymous = browser.post(
        f"/review/{event}", data={"action": "keep_new", "csrf": csrf_of(html)}, follow_redirects=False
    )
    assert anonymous.headers["location"] == "/review/login", "without the session cookie nothing happens"
    assert browser.get(f"/review/images/{event}/0").status_code == 401


def test_a_refused_action_is_shown_not_applied(browser: TestClient) -> None:
    _, single = flagged_review(browser, 122, {"X-API-Key": ADMIN_KEY})
    browser.post("/review/login", data={"api_key": ADMIN_KEY})
    token = csrf_of(browser.get("/review").text)
    refused = browser.post(f"/review/{single['event_id']}", data={"action": "detach", "csrf": token})
    assert refused.status_code == 200 and "only receipt or dispatch" in refused.text
    kept = browser.post(f"/review/{single['event_id']}", data={"action": "keep_new", "csrf": token})
    assert "kept as a new pallet" in kept.text and "Nothing to review." in kept.text


def test_signed_sessions_expire_and_end_with_the_key() -> None:
    signer = SessionSigner(b"k" * 32)
    ring = KeyRing.from_settings(Settings.model_validate({"api_keys": f"admin:lead:{ADMIN_KEY}"}))
    cookie, session = signer.issue("lead", now=1000.0)
    assert signer.read(cookie, ring, now=1001.0) == session
    assert signer.read(cookie, ring, now=session.expires + 1.0) is None
    assert signer.read(cookie.replace(".", "x."), ring, now=1001.0) is None
    assert SessionSigner(b"o" * 32).read(cookie, ring, now=1001.0) is None, "another secret"
    revoked = KeyRing.from_settings(Settings.model_validate({"api_keys": f"reader:lead:{READER_KEY}"}))
    assert signer.read(cookie, revoked, now=1001.0) is None


def test_without_keys_the_page_opens_directly(client: TestClient, tmp_path: Path) -> None:
    client.cookies.clear()
    page = client.get("/review")
    assert page.status_code == 200 and "Logged in as anonymous" in page.text
    assert COOKIE_NAME in page.headers.get("set-cookie", ""), "a session for the CSRF token"
    client.cookies.clear()


def test_a_candidate_merged_since_is_shown_as_its_survivor(browser: TestClient) -> None:
    api = {"X-API-Key": ADMIN_KEY}
    known, _ = flagged_review(browser, 123, api)
    other = browser.post("/v1/receipts", files=block_files(noise_blocks(124, count=2)), headers=api).json()
    assert (
        browser.post(f"/v1/pallets/{known}/merge", json={"into": other["pallet_id"]}, headers=api).status_code
        == 200
    )
    browser.post("/review/login", data={"api_key": ADMIN_KEY})
    html = browser.get("/review").text
    assert f"was {known}, merged" in html and other["pallet_id"] in html
    assert html.count('alt="candidate block') == 2, "the blocks of the survivor's latest event"
