"""``/review``: the review queue as a server-rendered page (Jinja2, plain forms, no script from elsewhere).

Per open review: the event's block images beside the stored blocks of each candidate, the per-block
similarities, each candidate's votes, score and geometric evidence, the thresholds in force, and buttons
merge / keep new / detach (keys ``m``, ``k``, ``d`` act on the first item). Login with an admin API key
(``app.reviews.session``); the actions run the same services as the API, as that key's name.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from app.api.deps import SessionDep
from app.db.tables import ReviewAction
from app.errors import PalletReidError
from app.events.repository import EventRepository
from app.images.dependencies import ImageStoreDep
from app.images.repository import BlockImageRepository
from app.images.service import BlockImageService
from app.pallets.repository import PalletRepository
from app.reviews.service import CorrectionService, ReviewService
from app.reviews.session import COOKIE_NAME, SESSION_SECONDS, ReviewSession, SessionSigner
from app.security import ANONYMOUS, KeyRing, Role

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/review", include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
QUEUE_PAGE_SIZE = 20


def _signer(request: Request) -> SessionSigner:
    signer: SessionSigner = request.app.state.review_sessions
    return signer


def _session(request: Request) -> ReviewSession | None:
    """The logged-in admin; with authentication off everyone is (the anonymous admin)."""
    key_ring: KeyRing = request.app.state.key_ring
    if not key_ring.enabled:
        cookie_session = _signer(request).read(request.cookies.get(COOKIE_NAME), key_ring)
        return cookie_session or ReviewSession(name=ANONYMOUS.name, csrf="", expires=0)
    return _signer(request).read(request.cookies.get(COOKIE_NAME), key_ring)


def _to_login() -> RedirectResponse:
    return RedirectResponse("/review/login", status_code=303)


@router.get("/login")
def login_form(request: Request) -> Response:
    return templates.TemplateResponse(request, "login.html", {"error": None})


@router.post("/login")
def login(request: Request, api_key: Annotated[str, Form(max_length=512)]) -> Response:
    key_ring: KeyRing = request.app.state.key_ring
    principal = key_ring.authenticate(api_key) if key_ring.enabled else ANONYMOUS
    if principal is None or principal.role is not Role.ADMIN:
        logger.warning("review page: refused login (%s)", "unknown key" if principal is None else "not admin")
        return templates.TemplateResponse(
            request, "login.html", {"error": "an admin API key is needed"}, status_code=401
        )
    cookie, _ = _signer(request).issue(principal.name)
    response = RedirectResponse("/review", status_code=303)
    response.set_cookie(
        COOKIE_NAME,
        cookie,
        max_age=SESSION_SECONDS,
        path="/review",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    logger.info("review page: %s logged in", principal.name)
    return response


@router.post("/logout")
def logout() -> Response:
    response = _to_login()
    response.delete_cookie(COOKIE_NAME, path="/review")
    return response


@router.get("")
def queue(
    request: Request, session: SessionDep, done: str | None = None, error: str | None = None
) -> Response:
    reviewer = _session(request)
    if reviewer is None:
        return _to_login()
    if not reviewer.csrf:  # authentication off: a session only for its CSRF token
        cookie, reviewer = _signer(request).issue(reviewer.name)
    else:
        cookie = None
    page = ReviewService(session).list(resolved=False, limit=QUEUE_PAGE_SIZE, cursor=None)
    images = BlockImageRepository(session)
    pallets = PalletRepository(session)
    items: list[dict[str, Any]] = []
    for review in page.data:
        result = review.model_dump(mode="json")
        items.append(
            {
                "review": result,
                "blocks": [row.position for row in images.for_event(review.event_id)],
                "similarities": _block_similarities(session, review.event_id),
                "candidates": [_candidate(pallets, images, candidate) for candidate in result["candidates"]],
            }
        )
    geometry = (
        request.app.state.matching_config.geometry if hasattr(request.app.state, "matching_config") else None
    )
    response = templates.TemplateResponse(
        request,
        "review.html",
        {
            "items": items,
            "csrf": reviewer.csrf,
            "name": reviewer.name,
            "geometry": geometry,
            "done": done,
            "error": error,
        },
    )
    if cookie is not None:
        response.set_cookie(
            COOKIE_NAME, cookie, max_age=SESSION_SECONDS, path="/review", httponly=True, samesite="strict"
        )
    return response


@router.get("/images/{event_id}/{position}")
def block_image(
    request: Request, event_id: int, position: int, session: SessionDep, store: ImageStoreDep
) -> Response:
    if _session(request) is None:
        return Response(status_code=401)
    try:
        data, media_type = BlockImageService(session, store).image(event_id, position)
    except PalletReidError:
        return Response(status_code=404)
    return Response(content=data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})


@router.post("/{event_id}")
def act(
    request: Request,
    event_id: int,
    session: SessionDep,
    action: Annotated[str, Form()],
    csrf: Annotated[str, Form()],
    pallet_id: Annotated[uuid.UUID | None, Form()] = None,
) -> Response:
    reviewer = _session(request)
    cookie_session = _signer(request).read(request.cookies.get(COOKIE_NAME), request.app.state.key_ring)
    if reviewer is None or cookie_session is None:
        return _to_login()
    if not csrf or csrf != cookie_session.csrf:
        logger.warning("review page: refused %s on event %d without a valid CSRF token", action, event_id)
        return Response("invalid or missing CSRF token", status_code=403)
    try:
        if action == "merge" and pallet_id is not None:
            ReviewService(session).resolve(event_id, ReviewAction.MERGE, pallet_id, actor=reviewer.name)
            message = f"event {event_id}: merged into {pallet_id}"
        elif action == "keep_new":
            ReviewService(session).resolve(event_id, ReviewAction.KEEP_NEW, None, actor=reviewer.name)
            message = f"event {event_id}: kept as a new pallet"
        elif action == "detach":
            detached = CorrectionService(session).detach(event_id, actor=reviewer.name)
            message = f"event {event_id}: detached to new pallet {detached.pallet_id}"
        else:
            return Response("unknown action", status_code=422)
    except PalletReidError as error:
        session.rollback()
        return RedirectResponse(f"/review?{urlencode({'error': error.detail})}", status_code=303)
    logger.info("review page: %s by %s", message, reviewer.name)
    return RedirectResponse(f"/review?{urlencode({'done': message})}", status_code=303)


def _block_similarities(session: Session, event_id: int) -> dict[int, float | None]:
    event = EventRepository(session).event(event_id)
    blocks = (event.result or {}).get("blocks", []) if event is not None else []
    return {block["position"]: block.get("similarity") for block in blocks}


def _candidate(
    pallets: PalletRepository, images: BlockImageRepository, candidate: dict[str, Any]
) -> dict[str, Any]:
    """A candidate with the stored blocks of its latest event; one merged since is shown as its survivor."""
    pallet_id = uuid.UUID(candidate["pallet_id"])
    pallet = pallets.get(pallet_id)
    survivor = pallet.merged_into if pallet is not None and pallet.merged_into is not None else None
    shown = survivor or pallet_id
    blocks = [{"event_id": row.event_id, "position": row.position} for row in images.latest_of_pallet(shown)]
    return {
        **candidate,
        "pallet_id": str(shown),
        "merged_from": str(pallet_id) if survivor is not None else None,
        "blocks": blocks,
    }
