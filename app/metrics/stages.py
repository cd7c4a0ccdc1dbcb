"""Per-stage latency of receipts and dispatches: ``palletreid_stage_duration_seconds{kind, stage}``.

Each stage is measured where it happens: ``decode`` (read and decode the uploaded blocks, the matching
router), ``detect`` (the block detector on side views) and ``forward`` (the fingerprint network), both on
the model's thread without the wait for it, and ``features`` (local features of the blocks on the feature
pool, beside the forward: from its submission to the last block's) in ``app.model_runner``; ``search``
(k-NN and the shortlisted pallets' captures), ``verify`` (block pairing, stored local features, geometric
check, and the visual-word search when the network's candidates gave no clear match) and ``store`` (the
event, its fingerprints with their index entries, and the block images; not the visual words, which the
word indexer writes after the commit) in ``app.matching.service``; and ``commit`` (the unit of work's final
flush and COMMIT, a session event).
Only requests that record an event are timed (:func:`app.request_context.note_recording`); each
observation also lands in the request's own timings, which its log line shows. A stage costs two
``perf_counter`` calls and one locked histogram update (about a microsecond).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import ParamSpec, TypeVar

from sqlalchemy import event
from sqlalchemy.orm import Session

from app.metrics.registry import Histogram
from app.request_context import current_request

_P = ParamSpec("_P")
_R = TypeVar("_R")


class Stage(StrEnum):
    DECODE = "decode"
    DETECT = "detect"
    FORWARD = "forward"
    FEATURES = "features"
    SEARCH = "search"
    VERIFY = "verify"
    STORE = "store"
    COMMIT = "commit"


STAGE_SECONDS = Histogram(
    "palletreid_stage_duration_seconds",
    "Time per processing stage of receipts and dispatches "
    "(decode, detect, forward, features, search, verify, store, commit).",
    ("kind", "stage"),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def record(stage: Stage, seconds: float) -> None:
    """Count ``seconds`` of ``stage`` for the current recording (nothing outside one)."""
    request = current_request()
    if request is None or request.kind is None:
        return
    request.stage_seconds[stage.value] = request.stage_seconds.get(stage.value, 0.0) + seconds
    STAGE_SECONDS.observe(seconds, request.kind, stage.value)


@contextmanager
def timed(stage: Stage) -> Iterator[None]:
    """Time the block as ``stage`` (also when it raises)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        record(stage, time.perf_counter() - started)


def timed_call(stage: Stage, function: Callable[_P, _R]) -> Callable[_P, _R]:
    """``function`` with each call timed as ``stage`` (for work handed to another thread in the request's
    context, e.g. by ``contextvars.copy_context().run``)."""

    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with timed(stage):
            return function(*args, **kwargs)

    return call


class StageStopwatch:
    """Consecutive stages timed by laps, each the time since the previous lap (or since creation)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def lap(self, stage: Stage) -> None:
        now = time.perf_counter()
        record(stage, now - self._last)
        self._last = now


_COMMIT_STARTED = "palletreid_commit_started"


def _commit_starts(session: Session) -> None:
    request = current_request()
    if request is not None and request.kind is not None:
        session.info[_COMMIT_STARTED] = time.perf_counter()


def _commit_ends(session: Session) -> None:
    started = session.info.pop(_COMMIT_STARTED, None)
    if started is not None:
        record(Stage.COMMIT, time.perf_counter() - started)


def _commit_fails(session: Session) -> None:
    session.info.pop(_COMMIT_STARTED, None)


def install_commit_timing() -> None:
    """Time every session commit made during a recording (``before_commit`` runs before the final flush)."""
    for name, listener in (
        ("before_commit", _commit_starts),
        ("after_commit", _commit_ends),
        ("after_rollback", _commit_fails),
    ):
        if not event.contains(Session, name, listener):
            event.listen(Session, name, listener)
