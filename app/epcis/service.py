"""Receipts and dispatches as GS1 EPCIS 2.0 ObjectEvents in an EPCISQueryDocument (JSON-LD).

One ObjectEvent per receipt/dispatch: ``action`` ADD when the event registered a new pallet, OBSERVE
otherwise; ``bizStep`` receiving/shipping and ``disposition`` in_progress/in_transit (CBV 2.0 bare words,
which the standard JSON-LD context maps); ``readPoint`` the gate and ``bizLocation`` the site, as URIs under
``PALLETREID_EPCIS_BASE_URI``; ``bizTransactionList`` from ``external_ref``. The pallet is its GRAI's GS1
Digital Link when the event carries one, else ``PALLETREID_EPC_BASE_URI`` + its id. A reported damage
sets (or unsets) the persistent disposition ``damaged``. What EPCIS has no field for — the match decision,
score, review flag, evidence and the business facts — is in the ``palletreid:`` extension namespace.

Published events do not change: a recording names the pallet it was recorded under. Operator corrections
are EPCIS error declarations, at the position of the correction in the event order: a merge of pallet B
into A re-publishes each event recorded under B with an ``errorDeclaration`` (reason ``incorrect_data``)
naming a corrective event, the same observation of A; a detach does the same for the moved event and its new
pallet. Events named by a GRAI need no correction (the GRAI identifies the pallet whatever the register
thought). Corrections of corrections (an event recorded under C, C merged into B, B into A) are declared
once, against the pallet the event was recorded under.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from sqlalchemy.orm import Session

from app.db.tables import RECORDING_KINDS, Event, EventKind, MatchDecision
from app.epcis.gs1 import DIGITAL_LINK_BASE, GRAI_AI, grai_digital_link, validate_grai
from app.epcis.repository import EpcisRepository, ObjectEventQuery
from app.pagination import decode_id_cursor, encode_cursor
from app.settings import Settings

EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
EXTENSION_PREFIX = "palletreid"
EXTENSION_NAMESPACE = "urn:palletreid:epcis:1:"
"""The project's EPCIS extension vocabulary (a fixed name, not where data lives)."""
QUERY_NAME = "SimpleEventQuery"

BIZ_STEP = {EventKind.RECEIPT: "receiving", EventKind.DISPATCH: "shipping"}
DISPOSITION = {EventKind.RECEIPT: "in_progress", EventKind.DISPATCH: "in_transit"}
_CBV_BIZ_STEP_URIS = ("https://ref.gs1.org/cbv/BizStep-", "urn:epcglobal:cbv:bizstep:")
_GRAI_LINK_PREFIX = f"{DIGITAL_LINK_BASE}/{GRAI_AI}/"


@dataclass(frozen=True)
class EpcisNames:
    """The URIs this deployment gives pallets, locations, transactions and events (and reads them back)."""

    epc_base_uri: str
    epcis_base_uri: str

    @classmethod
    def from_settings(cls, settings: Settings) -> EpcisNames:
        return cls(epc_base_uri=settings.epc_base_uri, epcis_base_uri=settings.epcis_base_uri)

    def pallet(self, event: Event, *, corrected_to: uuid.UUID | None = None) -> str:
        """The pallet of a recording as it was recorded (or as a correction names it)."""
        if event.grai is not None:
            return grai_digital_link(event.grai)
        if corrected_to is not None:
            return f"{self.epc_base_uri}{corrected_to}"
        return f"{self.epc_base_uri}{recorded_pallet_id(event)}"

    def site(self, site: str) -> str:
        return f"{self.epcis_base_uri}loc:{_segment(site)}"

    def gate(self, site: str | None, gate: str) -> str:
        return f"{self.epcis_base_uri}loc:{_segment(site) if site else ''}:gate:{_segment(gate)}"

    def transaction(self, external_ref: str) -> str:
        return f"{self.epcis_base_uri}bt:{_segment(external_ref)}"

    def event(self, event_id: int) -> str:
        return f"{self.epcis_base_uri}event:{event_id}"

    def site_of(self, uri: str) -> str | None:
        """The site a ``site`` URI names, or ``None`` for a URI that is not one of ours."""
        prefix = f"{self.epcis_base_uri}loc:"
        if not uri.startswith(prefix) or ":" in uri[len(prefix) :]:
            return None
        return unquote(uri[len(prefix) :]) or None

    def epc_of(self, uri: str) -> uuid.UUID | str | None:
        """The pallet id (our URI) or the GRAI (its Digital Link) an EPC names; ``None`` if neither."""
        if uri.startswith(_GRAI_LINK_PREFIX):
            try:
                return validate_grai(unquote(uri[len(_GRAI_LINK_PREFIX) :]))
            except ValueError:
                return None
        if uri.startswith(self.epc_base_uri):
            try:
                return uuid.UUID(uri[len(self.epc_base_uri) :])
            except ValueError:
                return None
        return None


def recorded_pallet_id(event: Event) -> uuid.UUID:
    """The pallet a recording named when it was made (kept in its stored result; corrections move events)."""
    recorded = (event.result or {}).get("pallet_id")
    return uuid.UUID(recorded) if recorded is not None else event.pallet_id


def _segment(value: str) -> str:
    """``value`` percent-encoded so that it is one URI segment without ``:`` or ``/``."""
    return quote(value, safe="-._~")


def epcis_time(value: datetime) -> str:
    """An EPCIS timestamp: UTC with milliseconds and ``Z``."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def biz_step_kinds(values: Sequence[str]) -> list[EventKind]:
    """The event kinds of EQ_bizStep values (bare CBV words or their URIs); unknown steps match nothing."""
    words = []
    for value in values:
        word = value
        for prefix in _CBV_BIZ_STEP_URIS:
            if value.startswith(prefix):
                word = value[len(prefix) :]
        words.append(word)
    return [kind for kind, step in BIZ_STEP.items() if step in words]


@dataclass(frozen=True)
class EpcisPage:
    document: dict[str, Any]
    next_page_token: str | None


class EpcisService:
    def __init__(self, session: Session, names: EpcisNames) -> None:
        self._events = EpcisRepository(session)
        self._names = names

    def query(
        self,
        *,
        event_time_from: datetime | None,
        event_time_before: datetime | None,
        biz_steps: Sequence[str] | None,
        biz_locations: Sequence[str] | None,
        epcs: Sequence[str] | None,
        per_page: int,
        page_token: str | None,
    ) -> EpcisPage:
        """One page of ObjectEvents in recording order, and the token of the next page (``None``: last)."""
        after_id = decode_id_cursor(page_token)
        named = [self._names.epc_of(epc) for epc in epcs] if epcs is not None else None
        query = ObjectEventQuery(
            kinds=biz_step_kinds(biz_steps) if biz_steps is not None else list(BIZ_STEP),
            event_time_from=event_time_from,
            event_time_before=event_time_before,
            sites=(
                [site for site in map(self._names.site_of, biz_locations) if site is not None]
                if biz_locations is not None
                else None
            ),
            pallets_without_grai=(
                [item for item in named if isinstance(item, uuid.UUID)] if named is not None else None
            ),
            grais=[item for item in named if isinstance(item, str)] if named is not None else None,
        )
        rows = self._events.object_events(query, after_id=after_id, limit=per_page + 1) if query.kinds else []
        page = rows[:per_page]
        requested_epcs = set(epcs) if epcs is not None else None
        items: list[dict[str, Any]] = []
        for event in page:
            if EventKind(event.kind) in RECORDING_KINDS:
                items.append(self.object_event(event))
            else:
                items.extend(self._declarations(event, query, requested_epcs))
        return EpcisPage(
            document=self.document(items),
            next_page_token=encode_cursor([page[-1].id]) if len(rows) > per_page else None,
        )

    def _declarations(
        self, correction: Event, query: ObjectEventQuery, epcs: set[str] | None
    ) -> list[dict[str, Any]]:
        """For a merge or detach: each event it corrects, with an errorDeclaration, and its correction."""
        assert correction.related_pallet_id is not None, "corrections name the other pallet"
        if correction.kind == EventKind.MERGE.value:
            wrong = self._events.recorded_as(correction.related_pallet_id, before_id=correction.id)
            corrected_to = correction.pallet_id
        else:
            moved = (
                self._events.event(correction.related_event_id)
                if correction.related_event_id is not None
                and self._events.first_detach_id(correction.related_event_id) == correction.id
                else None
            )
            wrong = [moved] if moved is not None and moved.grai is None else []
            corrected_to = correction.related_pallet_id
        items: list[dict[str, Any]] = []
        for event in wrong:
            if not _within(event, query):
                continue
            corrective_id = f"{self._names.event(event.id)}:corrected-by:{correction.id}"
            declared = self.object_event(event)
            declared["errorDeclaration"] = {
                "declarationTime": epcis_time(correction.recorded_at),
                "reason": "incorrect_data",
                "correctiveEventIDs": [corrective_id],
                f"{EXTENSION_PREFIX}:correction": correction.kind,
                f"{EXTENSION_PREFIX}:correctionEventId": correction.id,
            }
            corrective = self.object_event(event, corrected_to=corrected_to)
            corrective.update(
                eventID=corrective_id, action="OBSERVE", recordTime=epcis_time(correction.recorded_at)
            )
            corrective[f"{EXTENSION_PREFIX}:corrects"] = self._names.event(event.id)
            pair = (declared, corrective)
            items.extend(item for item in pair if epcs is None or item["epcList"][0] in epcs)
        return items

    def document(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "@context": [EPCIS_CONTEXT, {EXTENSION_PREFIX: EXTENSION_NAMESPACE}],
            "type": "EPCISQueryDocument",
            "schemaVersion": "2.0",
            "creationDate": epcis_time(datetime.now(UTC)),
            "epcisBody": {"queryResults": {"queryName": QUERY_NAME, "resultsBody": {"eventList": events}}},
        }

    def object_event(self, event: Event, *, corrected_to: uuid.UUID | None = None) -> dict[str, Any]:
        kind = EventKind(event.kind)
        names = self._names
        item: dict[str, Any] = {
            "type": "ObjectEvent",
            "eventID": names.event(event.id),
            "eventTime": epcis_time(event.captured_at or event.recorded_at),
            "recordTime": epcis_time(event.recorded_at),
            "eventTimeZoneOffset": "+00:00",
            "epcList": [names.pallet(event, corrected_to=corrected_to)],
            "action": "ADD" if event.decision == MatchDecision.REGISTERED.value else "OBSERVE",
            "bizStep": BIZ_STEP[kind],
            "disposition": DISPOSITION[kind],
        }
        if event.damaged is not None:
            item["persistentDisposition"] = {"set" if event.damaged else "unset": ["damaged"]}
        if event.gate is not None:
            item["readPoint"] = {"id": names.gate(event.site, event.gate)}
        if event.site is not None:
            item["bizLocation"] = {"id": names.site(event.site)}
        if event.external_ref is not None:
            item["bizTransactionList"] = [{"bizTransaction": names.transaction(event.external_ref)}]
        extension = {
            "palletId": str(corrected_to or recorded_pallet_id(event)),
            "eventId": event.id,
            "decision": event.decision,
            "review": event.review,
            "score": event.score,
            "inliers": event.inliers,
            "runnerUpInliers": event.runner_up_inliers,
            "model": event.model_id,
            "qualityClass": event.quality_class,
            "damageCodes": event.damage_codes,
            "sscc": event.sscc,
            "carrier": event.carrier,
            "assetCode": event.asset_code,
            "externalRef": event.external_ref,
        }
        item.update(
            {f"{EXTENSION_PREFIX}:{name}": value for name, value in extension.items() if value is not None}
        )
        return item


def _within(event: Event, query: ObjectEventQuery) -> bool:
    """Whether a corrected recording passes the query's kind, time and location filters."""
    time = event.captured_at or event.recorded_at
    return (
        EventKind(event.kind) in query.kinds
        and (query.event_time_from is None or time >= query.event_time_from)
        and (query.event_time_before is None or time < query.event_time_before)
        and (query.sites is None or event.site in query.sites)
    )
