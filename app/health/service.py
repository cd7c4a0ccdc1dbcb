"""Readiness: database reachable, schema at the migrations' head, model loaded with its HNSW index (and
that of its visual words, when its checkpoint carries a vocabulary)."""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.db.migrations import head_revisions
from app.errors import ServiceNotReadyError
from app.health.repository import HealthRepository
from app.health.schemas import DecisionParametersOut, GeometryOut, ModelCoverageOut, Readiness
from app.images.reindex import CoverageCache, ModelCoverage
from app.matching.parameters import DecisionParametersInForce
from app.matching.repository import hnsw_index_valid, words_index_valid
from app.model_runner import ModelRunner

logger = logging.getLogger(__name__)


def check_readiness(
    session: Session,
    model: ModelRunner | None,
    decision: DecisionParametersInForce | None,
    coverage: CoverageCache | None = None,
) -> Readiness:
    """Run every check; raise ``ServiceNotReadyError`` (503) naming all that failed."""
    repository = HealthRepository(session)
    problems: list[str] = []
    current: set[str] = set()
    covered: list[ModelCoverage] = []
    try:
        repository.ping()
        current, head = repository.revisions(), head_revisions()
        if current != head:
            problems.append(f"database schema at {sorted(current)}, migrations head is {sorted(head)}")
        else:
            covered = coverage.current(session) if coverage is not None else []
            if model is not None and not hnsw_index_valid(session, model.model_id):
                problems.append(f"no valid HNSW index for the fingerprints of {model.model_id}")
            vocabulary = model.vocabulary_id if model is not None else None
            if (
                model is not None
                and vocabulary is not None
                and not words_index_valid(session, model.model_id, vocabulary)
            ):
                problems.append(f"no valid HNSW index for the visual words {vocabulary} of {model.model_id}")
    except SQLAlchemyError as error:
        logger.warning("readiness: database check failed: %s", error)
        problems.append(f"database unreachable or unusable ({type(error).__name__})")
    if model is None:
        problems.append("model not loaded")
    if decision is None:
        problems.append("decision parameters not resolved")
    if problems or model is None or decision is None:
        raise ServiceNotReadyError("; ".join(problems))
    parameters = decision.parameters
    return Readiness(
        status="ready",
        model=model.model_id,
        embedding_dim=model.embedding_dim,
        precision=model.precision,
        detector=model.detector_id,
        vocabulary=model.vocabulary_id,
        schema_revision=sorted(current),
        decision_parameters=DecisionParametersOut(
            model_id=parameters.model_id,
            block_threshold=parameters.thresholds.block_threshold,
            min_votes=parameters.thresholds.min_votes,
            score_threshold=parameters.thresholds.score_threshold,
            top_k=parameters.rule.top_k,
            shortlist_size=parameters.rule.shortlist_size,
            captures_per_pallet=parameters.rule.captures_per_pallet,
            fingerprint_normalisation=parameters.rule.fingerprint_normalisation,
            geometry=GeometryOut(
                **{name: getattr(parameters.geometry, name) for name in GeometryOut.model_fields}
            ),
            source=decision.source,
            overridden=list(decision.overridden),
        ),
        model_coverage=[
            ModelCoverageOut(model_id=item.model_id, pallets=item.pallets, share=item.share)
            for item in covered
        ],
    )
