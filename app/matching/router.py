"""``POST /v1/receipts`` and ``POST /v1/dispatches``: block images or side views in, one match result out."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, UploadFile
from PIL import Image
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.deps import EmbedderDep, MatchingConfigDep, SessionDep, SettingsDep, StationDep
from app.api.validation import MAX_DAMAGE_CODES, DamageCode, Grai, ShortText, Sscc, Timestamp
from app.db.tables import EventKind, QualityClass
from app.errors import (
    AuthenticationError,
    DatabaseUnavailableError,
    IdempotencyConflictError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidRequestError,
    PalletMergedError,
    PalletNotFoundError,
    PermissionDeniedError,
    RequestTooLargeError,
    UnsupportedImageTypeError,
    error_responses,
    image_errors_as_domain_errors,
)
from app.images.dependencies import ImageStoreDep
from app.images.service import BlockImageRecorder, ReceivedImage
from app.images.store import ImageStore
from app.matching.schemas import MatchResult, SideDetections
from app.matching.service import EventDetails, MatchingConfig, MatchingService
from app.matching.sides import MAX_SIDES, BlocksNotFoundError, SideViewBlocks, blocks_from_sides
from app.metrics.stages import Stage, timed
from app.model_runner import BlockAnalysis, ModelOverloadedError, ModelRunner
from app.request_context import note_outcome, note_recording
from app.security import Principal
from app.settings import Settings
from models.runtime.images import decode_image, read_limited

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["matching"])

_ERRORS = error_responses(
    AuthenticationError,
    PermissionDeniedError,
    InvalidImageError,
    BlocksNotFoundError,
    PalletNotFoundError,
    PalletMergedError,
    ImageTooLargeError,
    RequestTooLargeError,
    UnsupportedImageTypeError,
    IdempotencyConflictError,
    DatabaseUnavailableError,
    ModelOverloadedError,
)

# Absent file fields are empty lists, not null: a plain array of binary strings is what OpenAPI tools (and
# schemathesis) recognise as repeated file parts; `anyOf [array, null]` is sent as text fields.
BlocksField = Annotated[
    list[UploadFile],
    File(
        default_factory=list,
        description="1 to 12 block images (JPEG, PNG or WebP); repeat the field, order = block position. "
        "Send either `blocks` or `sides`.",
    ),
]
SidesField = Annotated[
    list[UploadFile],
    File(
        default_factory=list,
        description=f"Instead of `blocks`: 1 or {MAX_SIDES} side views of the pallet (JPEG, PNG or WebP, "
        "the limits of block images; e.g. 1280x720), each showing a long side with its three blocks; repeat "
        "the field. The service finds the blocks, cuts them out (perspective-corrected) and uses them as "
        "block images; `detections` in the result shows what it found. Fewer than "
        "PALLETREID_MIN_DETECTED_BLOCKS (default 2) on a side: 422 blocks_not_found, nothing stored. "
        "Example: `curl -F sides=@side_0.jpg -F sides=@side_1.jpg .../v1/receipts`.",
    ),
]
ExternalRefField = Annotated[ShortText | None, Form(description="Delivery note / ASN reference.")]
SiteField = Annotated[ShortText | None, Form(description="Site (warehouse) code.")]
GateField = Annotated[ShortText | None, Form(description="Gate or dock door.")]
CapturedAtField = Annotated[Timestamp | None, Form(description="When the images were taken (ISO 8601).")]
PalletIdField = Annotated[
    uuid.UUID | None, Form(description="Attach to this known pallet instead of identifying it.")
]
QualityClassField = Annotated[
    QualityClass | None, Form(description="Sorting grade: new, A, B, C, unsorted or defective.")
]
DamagedField = Annotated[
    bool | None, Form(description="Whether the pallet is damaged (implied true by damage_codes).")
]
DamageCodesField = Annotated[
    list[DamageCode] | None,
    Form(max_length=MAX_DAMAGE_CODES, description="Damage codes (repeat the field, up to 10)."),
]
SsccField = Annotated[
    Sscc | None, Form(description="SSCC of the load on the pallet: 18 digits, GS1 check digit verified.")
]
CarrierField = Annotated[ShortText | None, Form(description="Carrier (haulier) bringing or taking it.")]
GraiField = Annotated[
    Grai | None,
    Form(description="The pallet's GS1 GRAI with serial, e.g. from its label (check digit verified)."),
]
AssetCodeField = Annotated[
    ShortText | None, Form(description="Another code read from the pallet, e.g. its EPAL QR code.")
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Retry-safe key; a retry returns the same result.",
    ),
]


async def _record(
    kind: EventKind,
    blocks: list[UploadFile] | None,
    sides: list[UploadFile] | None,
    details: EventDetails,
    idempotency_key: str | None,
    session: Session,
    embedder: ModelRunner,
    settings: Settings,
    config: MatchingConfig,
    principal: Principal,
    store: ImageStore,
) -> MatchResult:
    """Decode the blocks in parallel threads (or cut them out of the side views), await the model, then
    record in a thread (sync database work).

    No thread is held while the request waits for the model (``ModelRunner.analyse``), so requests queued
    for it cannot exhaust the threadpool that database work runs in.
    """
    note_recording(kind.value)  # times its stages (app.metrics.stages)
    side_views: SideViewBlocks | None = None
    if blocks and sides:
        raise InvalidRequestError("send either block images (blocks) or side views (sides), not both")
    if sides:
        side_views = await blocks_from_sides(sides, embedder, settings)
        blobs, images = side_views.crops, side_views.images
        sent, images_field = side_views.side_images, "sides"
    else:
        with timed(Stage.DECODE):
            blobs, images = await _load_blocks(blocks or [], settings)
        sent, images_field = blobs, "blocks"
    analysis = await embedder.analyse(images, config.geometry, from_side_views=side_views is not None)
    if idempotency_key is not None:
        details = details.with_idempotency_key(idempotency_key, kind, sent, images_field=images_field)
    result = await run_in_threadpool(
        _record_in_database,
        kind,
        analysis,
        details,
        blobs,
        session,
        embedder,
        config,
        store,
        side_views.detections if side_views is not None else None,
    )
    note_outcome(result.decision.value, review=result.review, event_id=result.event_id)
    verification = result.verification
    logger.info(
        "%s by key %s (role %s): event %d, %s pallet %s%s, %d blocks%s, %s",
        kind.value,
        principal.name,
        principal.role.value,
        result.event_id,
        result.decision.value,
        result.pallet_id,
        " (flagged for review)" if result.review else "",
        len(blobs),
        f" from {len(side_views.side_images)} side views" if side_views is not None else "",
        (
            f"inliers {verification.inliers} vs runner-up {verification.runner_up_inliers}"
            if verification is not None
            else "pallet given by the client"
        ),
    )
    return result


async def _load_blocks(blocks: list[UploadFile], settings: Settings) -> tuple[list[bytes], list[Image.Image]]:
    """The uploaded blocks decoded in parallel threads; the first refused one in upload order is raised."""
    if not 1 <= len(blocks) <= settings.max_blocks:
        raise InvalidRequestError(
            f"send 1 to {settings.max_blocks} block images (blocks) or 1 to {MAX_SIDES} side views (sides), "
            f"got {len(blocks)} block images"
        )
    outcomes = await asyncio.gather(
        *(run_in_threadpool(_load_block, block, position, settings) for position, block in enumerate(blocks)),
        return_exceptions=True,
    )
    loaded = []
    for outcome in outcomes:  # the first refused block in upload order, as if decoded one by one
        if isinstance(outcome, BaseException):
            raise outcome
        loaded.append(outcome)
    return [blob for blob, _ in loaded], [image for _, image in loaded]


def _load_block(block: UploadFile, position: int, settings: Settings) -> tuple[bytes, Image.Image]:
    """One uploaded block, size-limited and decoded upright (the loader's refusals as the API's errors)."""
    name = f"blocks[{position}]"
    with image_errors_as_domain_errors():
        blob = read_limited(block.file, max_bytes=settings.max_image_bytes, name=name)
        return blob, decode_image(blob, max_pixels=settings.max_image_pixels, name=name)


def _record_in_database(
    kind: EventKind,
    analysis: BlockAnalysis,
    details: EventDetails,
    blobs: list[bytes],
    session: Session,
    embedder: ModelRunner,
    config: MatchingConfig,
    store: ImageStore,
    detections: list[SideDetections] | None,
) -> MatchResult:
    service = MatchingService(session, config, embedder.feature_pool)
    block_images = BlockImageRecorder(session, store, [ReceivedImage.of(blob) for blob in blobs])
    with block_images.removing_created_on_error():
        return service.record(
            kind,
            analysis,
            model_id=embedder.model_id,
            details=details,
            block_images=block_images,
            detections=detections,
            detector=embedder.detector_id if detections is not None else None,
        )


def _event_endpoint(kind: EventKind, name: str, summary: str) -> Callable[..., Awaitable[MatchResult]]:
    """The route function of one event kind; receipts and dispatches take the same inputs."""

    async def record_event(
        principal: StationDep,
        session: SessionDep,
        embedder: EmbedderDep,
        settings: SettingsDep,
        config: MatchingConfigDep,
        store: ImageStoreDep,
        blocks: BlocksField,
        sides: SidesField,
        external_ref: ExternalRefField = None,
        site: SiteField = None,
        gate: GateField = None,
        captured_at: CapturedAtField = None,
        pallet_id: PalletIdField = None,
        quality_class: QualityClassField = None,
        damaged: DamagedField = None,
        damage_codes: DamageCodesField = None,
        sscc: SsccField = None,
        carrier: CarrierField = None,
        grai: GraiField = None,
        asset_code: AssetCodeField = None,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> MatchResult:
        details = EventDetails(
            site=site,
            gate=gate,
            external_ref=external_ref,
            captured_at=captured_at,
            pallet_id=pallet_id,
            quality_class=quality_class,
            damaged=damaged,
            damage_codes=tuple(damage_codes or ()),
            sscc=sscc,
            carrier=carrier,
            grai=grai,
            asset_code=asset_code,
        )
        return await _record(
            kind,
            blocks,
            sides,
            details,
            idempotency_key,
            session,
            embedder,
            settings,
            config,
            principal,
            store,
        )

    record_event.__name__ = record_event.__qualname__ = name
    record_event.__doc__ = summary
    return record_event


_RECORDED: dict[int | str, dict[str, Any]] = {
    201: {
        "links": {
            "GetPallet": {
                "operationId": "get_pallet_v1_pallets__pallet_id__get",
                "parameters": {"pallet_id": "$response.body#/pallet_id"},
                "description": "The pallet the event was recorded under.",
            },
            "ListPalletEvents": {
                "operationId": "list_pallet_events_v1_pallets__pallet_id__events_get",
                "parameters": {"pallet_id": "$response.body#/pallet_id"},
                "description": "That pallet's history.",
            },
        }
    }
}
"""OpenAPI links of a recording's result (generated clients and schemathesis' stateful run follow them)."""

create_receipt = router.post("/receipts", status_code=201, responses={**_ERRORS, **_RECORDED})(
    _event_endpoint(
        EventKind.RECEIPT,
        "create_receipt",
        "Record an arriving pallet: link a returning pallet or register a new one; it becomes in stock.",
    )
)
create_dispatch = router.post("/dispatches", status_code=201, responses={**_ERRORS, **_RECORDED})(
    _event_endpoint(
        EventKind.DISPATCH,
        "create_dispatch",
        "Record a leaving pallet (in-stock ones preferred, unknown ones registered); it becomes dispatched.",
    )
)
