"""Receipt and dispatch: identify the pallet from its block fingerprints, update the register, record it.

Concurrency. Identification and registration must be atomic: two dispatches of the same unknown pallet
arriving together would otherwise both find nothing and register two pallets. Every recording therefore
takes one transaction-level advisory lock (``pg_advisory_xact_lock``) before searching, and holds it until
its transaction commits or rolls back. Under READ COMMITTED each later statement sees everything committed
before the lock was granted, so the second request finds the pallet the first one registered. The critical
section is only the index lookups and a few inserts (the model runs before it, outside the transaction's
lock), so serialising is cheap at dock-door rates and far simpler to reason about than optimistic retries.
The pallet whose status changes is additionally row-locked (``SELECT ... FOR UPDATE``), so readers that lock
pallets and any future path that skips identification stay consistent with the status transition.
A side effect the event feed relies on: event ids are assigned under the lock, so they commit in increasing
order. All writes of one recording (pallet, event, fingerprints, idempotency key) share one transaction: a
failure anywhere leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
from sqlalchemy.orm import Session

from app.db.tables import (
    Event,
    EventKind,
    Fingerprint,
    IdempotencyKey,
    MatchDecision,
    Pallet,
    PalletStatus,
    QualityClass,
)
from app.errors import (
    IdempotencyConflictError,
    InvalidRequestError,
    PalletMergedError,
    PalletNotFoundError,
)
from app.events.repository import EventRepository
from app.images.service import BlockImageRecorder
from app.matching.repository import FingerprintRepository, StoredCapture, StoredNeighbour
from app.matching.schemas import BlockMatch, CandidateMatch, MatchResult, SideDetections, Verification
from app.metrics.stages import Stage, StageStopwatch
from app.model_runner import BlockAnalysis, BlockWords
from app.pallets.repository import PalletRepository
from app.settings import Settings
from models.runtime.thresholds import DecisionParameters
from models.runtime.visual_words import SparseWords
from models.runtime.voting import (
    Candidate,
    CaptureFeatures,
    GeometryParameters,
    Neighbour,
    Outcome,
    VerifiedDecision,
    VotingThresholds,
    WordCandidate,
    decide_verified,
    pair_blocks,
    rank_word_candidates,
    shortlist,
    unit_rows,
)

STATUS_AFTER: dict[EventKind, PalletStatus] = {
    EventKind.RECEIPT: PalletStatus.IN_STOCK,
    EventKind.DISPATCH: PalletStatus.DISPATCHED,
}


@dataclass(frozen=True)
class MatchingConfig:
    thresholds: VotingThresholds
    top_k: int
    shortlist_size: int
    captures_per_pallet: int
    ef_search: int
    words_ef_search: int
    max_candidates: int
    geometry: GeometryParameters = field(default_factory=GeometryParameters)

    @classmethod
    def from_settings(cls, settings: Settings, decision: DecisionParameters) -> MatchingConfig:
        """The service's search settings with the model's decision parameters (overrides applied)."""
        return cls(
            thresholds=decision.thresholds,
            top_k=decision.rule.top_k,
            shortlist_size=decision.rule.shortlist_size,
            captures_per_pallet=decision.rule.captures_per_pallet,
            ef_search=settings.hnsw_ef_search,
            words_ef_search=settings.hnsw_words_ef_search,
            max_candidates=settings.max_candidates,
            geometry=decision.geometry,
        )


@dataclass(frozen=True)
class EventDetails:
    """Client-supplied facts about one receipt or dispatch."""

    site: str | None = None
    gate: str | None = None
    external_ref: str | None = None
    captured_at: datetime | None = None
    pallet_id: uuid.UUID | None = None
    """Attach to this known pallet instead of identifying it."""
    quality_class: QualityClass | None = None
    damaged: bool | None = None
    """Null: not reported; implied true when damage codes are given."""
    damage_codes: tuple[str, ...] = ()
    sscc: str | None = None
    carrier: str | None = None
    grai: str | None = None
    asset_code: str | None = None
    idempotency_key: str | None = None
    request_digest: str | None = None
    """Digest of the request; the same idempotency key with another digest is a conflict."""

    def __post_init__(self) -> None:
        if (self.idempotency_key is None) != (self.request_digest is None):
            raise ValueError("idempotency_key and request_digest go together (use with_idempotency_key)")
        if self.damaged is False and self.damage_codes:
            raise InvalidRequestError("damage_codes were given with damaged=false")

    @property
    def damage_reported(self) -> bool | None:
        """``damaged``, or true when only damage codes were given."""
        return True if self.damage_codes and self.damaged is None else self.damaged

    def business_fields(self) -> dict[str, str]:
        """The reported business facts as text, by field name (unreported ones left out)."""
        values = {
            "quality_class": self.quality_class.value if self.quality_class is not None else None,
            "damaged": str(self.damaged).lower() if self.damaged is not None else None,
            "damage_codes": ",".join(self.damage_codes) if self.damage_codes else None,
            "sscc": self.sscc,
            "carrier": self.carrier,
            "grai": self.grai,
            "asset_code": self.asset_code,
        }
        return {name: value for name, value in values.items() if value is not None}

    def with_idempotency_key(
        self, key: str, kind: EventKind, images: Sequence[bytes], *, images_field: str = "blocks"
    ) -> EventDetails:
        """These details with ``key`` and the SHA-256 of everything the client sent (fields and images;
        ``images_field``: the form field that carried them, ``blocks`` or ``sides``)."""
        digest = hashlib.sha256(kind.value.encode())
        if images_field != "blocks":  # tagged only then, so digests of block uploads are unchanged
            encoded = b"\x03" + images_field.encode()
            digest.update(len(encoded).to_bytes(8, "big") + encoded)
        fields = [
            self.site,
            self.gate,
            self.external_ref,
            self.captured_at.isoformat() if self.captured_at is not None else None,
            str(self.pallet_id) if self.pallet_id is not None else None,
        ]
        for value in fields:
            encoded = b"\x00" if value is None else b"\x01" + value.encode()
            digest.update(len(encoded).to_bytes(8, "big") + encoded)
        # Business fields only when given (tagged by name), so digests of requests without them are unchanged.
        for name, value in self.business_fields().items():
            encoded = b"\x02" + name.encode() + b"=" + value.encode()
            digest.update(len(encoded).to_bytes(8, "big") + encoded)
        for image in images:
            digest.update(len(image).to_bytes(8, "big") + image)
        return replace(self, idempotency_key=key, request_digest=digest.hexdigest())


class MatchingService:
    """Applies the rule of ``models.runtime.voting`` to pgvector neighbours and records the outcome."""

    def __init__(self, session: Session, config: MatchingConfig, executor: Executor | None = None) -> None:
        self._config = config
        self._executor = executor
        self._pallets = PalletRepository(session)
        self._events = EventRepository(session)
        self._fingerprints = FingerprintRepository(session)

    def record(
        self,
        kind: EventKind,
        blocks: BlockAnalysis,
        *,
        model_id: str,
        details: EventDetails,
        block_images: BlockImageRecorder | None = None,
        detections: list[SideDetections] | None = None,
        detector: str | None = None,
    ) -> MatchResult:
        """Identify (or register) the pallet of ``blocks`` (fingerprints and local features, upload order).

        ``block_images`` keeps the uploaded images of the new event (written under the identification lock).
        ``detections`` and ``detector``: where the blocks came from when they were cut out of side views
        (kept in the event's result, so a replay answers them too).
        """
        embeddings = blocks.fingerprints
        if embeddings.ndim != 2 or 0 in embeddings.shape:
            raise InvalidRequestError(f"expected (blocks, dims) fingerprints, got {embeddings.shape}")
        if len(blocks.features) != len(embeddings):
            raise InvalidRequestError(f"{len(embeddings)} fingerprints need as many feature sets")
        # extracted beside the forward; waited for here, not while holding the identification lock
        at_side_scale = blocks.at_side_scale.get() if blocks.at_side_scale is not None else None
        if at_side_scale is not None and len(at_side_scale) != len(embeddings):
            raise InvalidRequestError(f"{len(embeddings)} fingerprints need as many side-scale feature sets")

        self._fingerprints.lock_identification()
        if details.idempotency_key is not None:
            replay = self._replay(kind, details)
            if replay is not None:
                return replay

        now = datetime.now(UTC)
        if details.pallet_id is not None:
            pallet = self._pallets.get_for_update(details.pallet_id)
            if pallet is None:
                raise PalletNotFoundError(f"no pallet {details.pallet_id}")
            if pallet.merged_into is not None:
                raise PalletMergedError(
                    f"pallet {pallet.id} was merged into {pallet.merged_into}; send that id"
                )
            decision: VerifiedDecision[uuid.UUID] | None = None
            outcome = MatchDecision.MATCHED
        else:
            decision = self.identify(kind, blocks, model_id=model_id)
            pallet, outcome = self._matched_or_new(decision.pallet, now)
        stored = StageStopwatch()

        pallet.status = STATUS_AFTER[kind].value
        if details.quality_class is not None:
            pallet.quality_class = details.quality_class.value
        pallet.last_seen = now
        reported = _reported_candidate(decision)
        event = self._events.add(
            Event(
                pallet_id=pallet.id,
                kind=kind.value,
                decision=outcome.value,
                score=reported.score if reported is not None else None,
                votes=reported.votes if reported is not None else 0,
                blocks_compared=len(embeddings) if decision is not None else 0,
                model_id=model_id,
                site=details.site,
                gate=details.gate,
                external_ref=details.external_ref,
                captured_at=details.captured_at,
                recorded_at=now,
                quality_class=details.quality_class.value if details.quality_class is not None else None,
                damaged=details.damage_reported,
                damage_codes=list(details.damage_codes) or None,
                sscc=details.sscc,
                carrier=details.carrier,
                grai=details.grai,
                asset_code=details.asset_code,
                result={},
                from_side_views=blocks.from_side_views,
                review=decision is not None and decision.review,
                inliers=decision.checked[0].inliers if decision is not None and decision.checked else None,
                runner_up_inliers=(
                    decision.runner_up.inliers if decision is not None and decision.runner_up else None
                ),
            )
        )
        self._fingerprints.add_all(
            [
                Fingerprint(
                    pallet_id=pallet.id,
                    event_id=event.id,
                    model_id=model_id,
                    position=position,
                    embedding=vector,
                    local_features=features.to_bytes(),
                    side_scale_features=(
                        at_side_scale[position].to_bytes() if at_side_scale is not None else None
                    ),
                )
                for position, (vector, features) in enumerate(zip(embeddings, blocks.features, strict=True))
            ]
        )
        if block_images is not None:
            block_images.write(event.id)
        result = _match_result(event, pallet.id, outcome, decision, model_id, self._config.max_candidates)
        if detections is not None:
            result = result.model_copy(update={"detections": detections, "detector": detector})
        event.result = result.model_dump(mode="json")
        if details.idempotency_key is not None and details.request_digest is not None:
            self._events.add_idempotency_key(
                IdempotencyKey(
                    kind=kind.value,
                    key=details.idempotency_key,
                    request_digest=details.request_digest,
                    event_id=event.id,
                )
            )
        stored.lap(Stage.STORE)
        return result

    def identify(
        self, kind: EventKind, blocks: BlockAnalysis, *, model_id: str
    ) -> VerifiedDecision[uuid.UUID]:
        """Shortlist pallets from the nearest stored blocks of the same model, pair, verify geometrically.

        A receipt can only be a pallet that is not in stock (a returning one), so in-stock pallets are left
        out of its shortlist. The six k-NN searches run in one statement; stored local features are read for
        the captures the rule is expected to check, in one more (see ``_captures_to_check``).
        With visual words (``blocks.words``), when the network's candidates give no clear match, the blocks
        sharing the most words are found in one more statement and their pallets ranked by word pairing
        (``_word_candidates``), and the rule checks the best of them too. Only then (timed as ``verify``):
        the word search costs tens of milliseconds (the query's words, sparse k-NN, the shortlisted pallets'
        words, pairing them), which a query the network's candidates clearly match does not need. The words
        of the blocks recorded here are written after the commit (``app.matching.word_indexer``).
        A pallet recorded before local features were stored cannot be verified: if the network alone
        matched it, the query is flagged for review rather than merged (or silently registered).
        """
        stopwatch = StageStopwatch()
        geometry = self._config.geometry
        self._fingerprints.configure_search(ef_search=self._config.ef_search)
        per_block = self._fingerprints.nearest_per_block(
            blocks.fingerprints, model_id=model_id, limit=self._config.top_k
        )
        if kind is EventKind.RECEIPT:
            per_block = _not_in_stock(per_block)
        neighbours = _neighbours(per_block)
        captures = self._fingerprints.latest_captures(
            shortlist(neighbours, self._config.shortlist_size),
            model_id=model_id,
            per_pallet=self._config.captures_per_pallet,
        )
        in_stock = {
            n.pallet_id for block in per_block for n in block if n.pallet_status == PalletStatus.IN_STOCK
        }
        # capture index (as decide_verified and load_features count them) -> event, per pallet: the
        # network's captures first, then those only the word search brought
        capture_events = {pallet: [c.event_id for c in stored] for pallet, stored in captures.items()}
        stopwatch.lap(Stage.SEARCH)
        without_features: set[uuid.UUID] = set()
        query_rows = unit_rows(blocks.fingerprints)
        network_checks = _captures_to_check(query_rows, captures, geometry)
        side_scale = blocks.from_side_views  # only a side view's blocks meet stored side-scale features
        prefetched = self._fingerprints.captures_features(
            [event for events in network_checks.values() for event in events],
            model_id=model_id,
            side_scale=side_scale,
        )
        words = blocks.words
        word_candidates = (
            (
                lambda: self._word_candidates(
                    kind, words.get(), model_id, capture_events, network_checks, prefetched, side_scale
                )
            )
            if words is not None
            else None
        )

        def load_features(pallet: uuid.UUID, capture: int) -> CaptureFeatures:
            event_id = capture_events[pallet][capture]
            features = prefetched.get(event_id)
            if features is None:
                features = self._fingerprints.capture_features(
                    event_id, model_id=model_id, side_scale=side_scale
                )
            if all(item is None for item in features.features):
                without_features.add(pallet)
            return features

        decision = decide_verified(
            neighbours,
            query_rows,
            blocks.capture_features(),
            {pallet: [c.fingerprints for c in stored] for pallet, stored in captures.items()},
            load_features,
            self._config.thresholds,
            geometry,
            preferred=in_stock,
            executor=self._executor,
            word_candidates=word_candidates,
        )
        decision = self._with_checked_candidates(
            decision, query_rows, captures, capture_events, in_stock, model_id
        )
        stopwatch.lap(Stage.VERIFY)
        if decision.outcome is Outcome.NEW and decision.network.pallet in without_features:
            return replace(decision, outcome=Outcome.REVIEW)
        return decision

    def _word_candidates(
        self,
        kind: EventKind,
        words: BlockWords,
        model_id: str,
        capture_events: dict[uuid.UUID, list[int]],
        network_checks: Collection[uuid.UUID],
        prefetched: dict[int, CaptureFeatures],
        side_scale: bool,
    ) -> list[WordCandidate[uuid.UUID]]:
        """Pallets whose stored blocks share the most visual words with the query, best word pairing first.

        The ``word_top_k`` blocks of most shared words per query block (a receipt's without pallets in
        stock) shortlist ``word_shortlist_size`` pallets; the words of each one's newest capture are paired
        with the query's. Each capture is added to ``capture_events`` (if the network's search had not
        brought it), so that the rule's features loader finds it under the candidate's capture index, and
        the local features of the captures the rule will check (the first ``word_candidates_checked`` of
        pallets outside ``network_checks``) are read into ``prefetched`` in one round trip.
        """
        geometry = self._config.geometry
        self._fingerprints.configure_search(ef_search=self._config.words_ef_search)
        per_block = self._fingerprints.nearest_words_per_block(
            words.per_block, model_id=model_id, vocabulary_id=words.vocabulary_id, limit=geometry.word_top_k
        )
        if kind is EventKind.RECEIPT:
            per_block = _not_in_stock(per_block)
        neighbours = _neighbours(per_block)
        if not any(neighbours):
            return []
        stored = self._fingerprints.latest_words(
            shortlist(neighbours, geometry.word_shortlist_size),
            model_id=model_id,
            vocabulary_id=words.vocabulary_id,
        )
        ranked: dict[uuid.UUID, list[tuple[int, list[SparseWords | None]]]] = {}
        for pallet, capture in stored.items():
            events = capture_events.setdefault(pallet, [])
            if capture.event_id not in events:
                events.append(capture.event_id)
            ranked[pallet] = [(events.index(capture.event_id), capture.words)]
        candidates = rank_word_candidates(list(words.per_block), ranked)
        fresh = [c for c in candidates if c.pallet not in network_checks][: geometry.word_candidates_checked]
        prefetched.update(
            self._fingerprints.captures_features(
                [capture_events[c.pallet][c.capture] for c in fresh], model_id=model_id, side_scale=side_scale
            )
        )
        return candidates

    def _with_checked_candidates(
        self,
        decision: VerifiedDecision[uuid.UUID],
        query_rows: np.ndarray,
        captures: Mapping[uuid.UUID, Sequence[StoredCapture]],
        capture_events: Mapping[uuid.UUID, Sequence[int]],
        in_stock: Collection[uuid.UUID],
        model_id: str,
    ) -> VerifiedDecision[uuid.UUID]:
        """The decision with every pallet checked geometrically listed among the network's candidates.

        A pallet the word search brought, or one the network paired but ranked below its listed candidates,
        gets its network evidence: votes, and the pairing score of the checked capture's fingerprints (read
        in one more round trip for captures the network's search did not bring). So the event's score, the
        reviewers and the calibration see every pallet the geometric evidence is about.
        """
        listed = {candidate.pallet for candidate in decision.network.candidates}
        extra = [evidence for evidence in decision.checked if evidence.pallet not in listed]
        if not extra:
            return decision
        known = {capture.event_id: capture.fingerprints for stored in captures.values() for capture in stored}
        events = [capture_events[evidence.pallet][evidence.capture] for evidence in extra]
        known.update(
            self._fingerprints.captures_fingerprints(
                [event for event in events if event not in known], model_id=model_id
            )
        )
        votes = Counter(block.pallet for block in decision.network.blocks if block.counted)
        added = [
            Candidate(
                pallet=evidence.pallet,
                votes=votes[evidence.pallet],
                score=pair_blocks(query_rows, known[event]).score,
                preferred=evidence.pallet in in_stock,
            )
            for evidence, event in zip(extra, events, strict=True)
            if event in known
        ]
        network = replace(decision.network, candidates=[*decision.network.candidates, *added])
        return replace(decision, network=network)

    def _matched_or_new(self, pallet_id: uuid.UUID | None, now: datetime) -> tuple[Pallet, MatchDecision]:
        """Row-lock the decided pallet, or register a new one when the vote found none."""
        if pallet_id is not None:
            pallet = self._pallets.get_for_update(pallet_id)
            assert pallet is not None, "pallets are never deleted and fingerprints reference them"
            return pallet, MatchDecision.MATCHED
        pallet = Pallet(id=uuid.uuid4(), status=PalletStatus.IN_STOCK.value, first_seen=now, last_seen=now)
        return self._pallets.add(pallet), MatchDecision.REGISTERED

    def _replay(self, kind: EventKind, details: EventDetails) -> MatchResult | None:
        """The stored result of an earlier request with the same idempotency key, if any."""
        assert details.idempotency_key is not None
        record = self._events.idempotency_key(kind.value, details.idempotency_key)
        if record is None:
            return None
        if record.request_digest != details.request_digest:
            raise IdempotencyConflictError(
                f"Idempotency-Key {details.idempotency_key!r} was already used for a different {kind.value}"
            )
        event = self._events.event(record.event_id)
        assert event is not None, "idempotency keys reference their event (foreign key)"
        return MatchResult.model_validate(event.result)


def _captures_to_check(
    query_rows: np.ndarray,
    captures: Mapping[uuid.UUID, Sequence[StoredCapture]],
    geometry: GeometryParameters,
) -> dict[uuid.UUID, list[int]]:
    """Events whose stored local features the rule will most likely read for the network's candidates: the
    best-paired captures of the ``candidates_checked`` best-paired pallets, in the rule's own order
    (``decide_verified``), by pallet.

    Read together (with the word candidates' captures) in one round trip instead of one per checked
    capture; the rule may stop early (a clear match) and read fewer, and any capture it asks for beyond
    these is still read on demand.
    """
    ranked = {
        pallet: sorted(
            ((pair_blocks(query_rows, capture.fingerprints).score, capture.event_id) for capture in stored),
            key=lambda item: -item[0],
        )
        for pallet, stored in captures.items()
        if stored
    }
    order = sorted(ranked, key=lambda pallet: (-ranked[pallet][0][0], str(pallet)))
    return {
        pallet: [event_id for _, event_id in ranked[pallet][: geometry.captures_checked]]
        for pallet in order[: geometry.candidates_checked]
    }


def _not_in_stock(per_block: Sequence[Sequence[StoredNeighbour]]) -> list[list[StoredNeighbour]]:
    """The neighbours a receipt may match: a pallet in stock cannot be received again."""
    return [[n for n in block if n.pallet_status != PalletStatus.IN_STOCK] for block in per_block]


def _neighbours(per_block: Sequence[Sequence[StoredNeighbour]]) -> list[list[Neighbour[uuid.UUID]]]:
    return [[Neighbour(pallet=n.pallet_id, similarity=n.similarity) for n in block] for block in per_block]


def _reported_candidate(decision: VerifiedDecision[uuid.UUID] | None) -> Candidate[uuid.UUID] | None:
    """The network's view of the decided pallet, or of the strongest checked candidate when none was."""
    if decision is None:
        return None
    pallet = (
        decision.pallet
        if decision.pallet is not None
        else (decision.checked[0].pallet if decision.checked else None)
    )
    candidates = decision.network.candidates
    return next((c for c in candidates if c.pallet == pallet), candidates[0] if candidates else None)


def _match_result(
    event: Event,
    pallet_id: uuid.UUID,
    outcome: MatchDecision,
    decision: VerifiedDecision[uuid.UUID] | None,
    model_id: str,
    max_candidates: int,
) -> MatchResult:
    evidence = {item.pallet: item for item in decision.checked} if decision is not None else {}
    listed = decision.network.candidates if decision is not None else []
    # the network's strongest, and every pallet checked geometrically (its evidence is the decision's)
    candidates = [c for rank, c in enumerate(listed) if rank < max_candidates or c.pallet in evidence]
    return MatchResult(
        event_id=event.id,
        kind=EventKind(event.kind),
        decision=outcome,
        review=event.review,
        pallet_id=pallet_id,
        score=event.score,
        votes=event.votes,
        blocks_compared=event.blocks_compared,
        verification=(
            Verification(
                band=decision.outcome.value,
                inliers=event.inliers,
                confirmed_blocks=decision.checked[0].confirmed_blocks if decision.checked else None,
                runner_up_inliers=event.runner_up_inliers,
                candidates_checked=len(decision.checked),
            )
            if decision is not None
            else None
        ),
        blocks=[
            BlockMatch(position=block.position, pallet_id=block.pallet, similarity=block.similarity)
            for block in (decision.network.blocks if decision is not None else [])
        ],
        candidates=[
            CandidateMatch(
                pallet_id=candidate.pallet,
                votes=candidate.votes,
                score=candidate.score,
                inliers=evidence[candidate.pallet].inliers if candidate.pallet in evidence else None,
                confirmed_blocks=(
                    evidence[candidate.pallet].confirmed_blocks if candidate.pallet in evidence else None
                ),
            )
            for candidate in candidates
        ],
        model=model_id,
    )
