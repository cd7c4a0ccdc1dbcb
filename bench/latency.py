"""End-to-end dispatch latency over HTTP, and the database's share of it.

The real app runs under uvicorn in a subprocess on 127.0.0.1 (a free port), configured through its usual
``PALLETREID_*`` environment; asyncio httpx clients post six real JPEG block captures per dispatch with a
fixed number of requests in flight. Separately, the identification a dispatch runs in the database
(six HNSW searches in one statement, pairing, the checked captures' local features in one more read,
geometric verification of the best candidates) is timed in-process through ``MatchingService.identify``,
and the model's share through ``Embedder.embed`` on the same six images, to tell which of the two limits
throughput; ``round_trip_comparison`` times the batched reads against one statement per block / capture.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from app.db.session import build_engine, build_session_factory
from app.db.tables import EventKind
from app.matching.repository import FingerprintRepository, StoredNeighbour
from app.matching.service import MatchingConfig, MatchingService
from app.model_runner import BlockAnalysis, BlockWords
from app.settings import Settings
from bench.timing import latency_summary
from models.runtime.images import decode_image
from models.runtime.inference import Embedder
from models.runtime.visual_words import VisualVocabulary
from models.runtime.voting import CaptureFeatures, Neighbour, shortlist

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
P50_TARGET_MS = 200.0
P99_TARGET_MS = 400.0
TARGET_GALLERY = 100_000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class RunningServer:
    base_url: str
    pid: int

    def rss_bytes(self) -> int | None:
        """Resident memory of the server and its worker processes, ``None`` where unavailable."""
        try:
            server = psutil.Process(self.pid)
            return sum(process.memory_info().rss for process in [server, *server.children(recursive=True)])
        except psutil.Error:
            return None


@contextmanager
def running_server(
    database_url: str,
    checkpoint: Path,
    *,
    threads: int | None,
    processes: int = 1,
    startup_timeout_s: float = 300.0,
) -> Iterator[RunningServer]:
    """``uvicorn app.main:create_app`` on a free loopback port until the block ends, in ``processes``
    worker processes (as ``palletreid serve --workers``); without ``threads`` each process gets an equal
    share of the cores for torch."""
    port = free_port()
    env = {**os.environ, "PALLETREID_DATABASE_URL": database_url, "PALLETREID_MODEL_PATH": str(checkpoint)}
    if threads is not None:
        env["PALLETREID_MODEL_THREADS"] = str(threads)
    elif processes > 1:
        env["PALLETREID_MODEL_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    command = [
        sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--workers", str(processes),
        "--host", LOOPBACK, "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env)
    server = RunningServer(base_url=f"http://{LOOPBACK}:{port}", pid=process.pid)
    try:
        _wait_ready(server, process, startup_timeout_s)
        logger.info("service under test running at %s (pid %d)", server.base_url, process.pid)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(server: RunningServer, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.base_url, timeout=5) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the service under test exited with status {process.returncode}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
    raise RuntimeError(f"the service under test was not ready within {timeout_s:.0f} s")


@dataclass(frozen=True)
class DispatchOutcome:
    seconds: float
    """From the first attempt to the final answer, waits after ``503 overloaded`` included."""
    status: int
    pallet_id: str | None
    overloaded_retries: int = 0
    decision: str | None = None
    """``matched`` or ``registered`` (``None`` when refused)."""
    review: bool = False


MAX_OVERLOADED_RETRIES = 30


async def _post_dispatch(
    client: httpx.AsyncClient, images: Sequence[bytes], field: str = "blocks"
) -> DispatchOutcome:
    """One dispatch as a camera station sends it (``images`` as ``field``: block crops, or side views with
    ``sides``): refused with ``503 overloaded``, it waits ``Retry-After`` seconds and sends it again (nothing
    was stored), up to ``MAX_OVERLOADED_RETRIES`` times."""
    files = [(field, (f"{field}{index}.jpg", blob, "image/jpeg")) for index, blob in enumerate(images)]
    started = time.perf_counter()
    retries = 0
    while True:
        response = await client.post("/v1/dispatches", files=files)
        overloaded = response.status_code == 503 and response.json().get("type") == "overloaded"
        if not overloaded or retries == MAX_OVERLOADED_RETRIES:
            break
        retries += 1
        await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
    seconds = time.perf_counter() - started
    body = response.json() if response.status_code == 201 else {}
    return DispatchOutcome(
        seconds=seconds,
        status=response.status_code,
        pallet_id=body.get("pallet_id"),
        overloaded_retries=retries,
        decision=body.get("decision"),
        review=bool(body.get("review")),
    )


async def _load(
    base_url: str,
    payloads: Sequence[Sequence[bytes]],
    *,
    concurrency: int,
    requests: int,
    warmup: int,
    field: str = "blocks",
) -> tuple[list[tuple[int, DispatchOutcome]], float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
        for index in range(warmup):
            await _post_dispatch(client, payloads[index % len(payloads)], field)
        counter = itertools.count()
        outcomes: list[tuple[int, DispatchOutcome]] = []

        async def worker() -> None:
            while (index := next(counter)) < requests:
                outcomes.append((index, await _post_dispatch(client, payloads[index % len(payloads)], field)))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return outcomes, time.perf_counter() - started


def http_dispatch_load(
    server: RunningServer,
    payloads: Sequence[Sequence[bytes]],
    expected: Sequence[uuid.UUID],
    *,
    concurrency: int,
    requests: int,
    warmup: int,
    field: str = "blocks",
) -> dict[str, Any]:
    """Latency percentiles and throughput of ``requests`` dispatches with ``concurrency`` in flight; each
    payload is sent as the multipart ``field`` (``blocks``: block crops; ``sides``: side views)."""
    outcomes, wall_s = asyncio.run(
        _load(
            server.base_url, payloads, concurrency=concurrency, requests=requests, warmup=warmup, field=field
        )
    )
    return {"concurrency": concurrency, **_summary(outcomes, expected, wall_s)}


def _summary(
    outcomes: Sequence[tuple[int, DispatchOutcome]], expected: Sequence[uuid.UUID], wall_s: float
) -> dict[str, Any]:
    """Counts, decisions (request ``i`` expects pallet ``expected[i % len]``), throughput and latency."""
    ok = [outcome for _, outcome in outcomes if outcome.status == 201]
    failed = len(outcomes) - len(ok)
    if failed:
        logger.warning(
            "%d of %d dispatches failed (statuses %s)", failed, len(outcomes), {o.status for _, o in outcomes}
        )
    matched = sum(outcome.pallet_id == str(expected[index % len(expected)]) for index, outcome in outcomes)
    decisions = {"matched_expected": 0, "matched_other": 0, "registered_review": 0, "registered": 0}
    for index, outcome in outcomes:
        if outcome.decision == "matched":
            right = outcome.pallet_id == str(expected[index % len(expected)])
            decisions["matched_expected" if right else "matched_other"] += 1
        elif outcome.decision == "registered":
            decisions["registered_review" if outcome.review else "registered"] += 1
    return {
        "requests": len(outcomes),
        "failed": failed,
        "pallets_per_s": round(len(ok) / wall_s, 2),
        "overloaded_retries": sum(outcome.overloaded_retries for _, outcome in outcomes),
        "matched_expected_pallet": round(matched / len(outcomes), 3),
        "decisions": decisions,
        **latency_summary([outcome.seconds for outcome in ok]),
    }


@dataclass(frozen=True)
class DispatchKind:
    """A dispatch input of ``interleaved_dispatch_load``: payload ``i`` shows pallet ``expected[i]``."""

    field: str
    """The multipart field: ``blocks`` (block crops) or ``sides`` (side views)."""
    payloads: Sequence[Sequence[bytes]]
    expected: Sequence[uuid.UUID]


def interleaved_dispatch_load(
    server: RunningServer,
    kinds: Mapping[str, DispatchKind],
    *,
    requests: int,
    warmup: int,
    after_warmup: Callable[[], object] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per kind, the summary of ``requests`` dispatches sent one at a time with the kinds taking turns
    (which goes first alternates), so a machine whose load changes during the run slows every kind alike;
    each with ``stage_mean_ms``, the mean per stage of its dispatches read from the service's ``/metrics``.
    ``after_warmup`` runs between the warm-up dispatches and the timed ones (e.g. to forget the warm-up's
    events, so no timed dispatch finds its own images already recorded)."""
    return asyncio.run(
        _interleaved(server.base_url, kinds, requests=requests, warmup=warmup, after_warmup=after_warmup)
    )


async def _interleaved(
    base_url: str,
    kinds: Mapping[str, DispatchKind],
    *,
    requests: int,
    warmup: int,
    after_warmup: Callable[[], object] | None,
) -> dict[str, dict[str, Any]]:
    names = list(kinds)
    outcomes: dict[str, list[tuple[int, DispatchOutcome]]] = {name: [] for name in names}
    stages: dict[str, dict[str, tuple[float, float]]] = {name: {} for name in names}
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
        for index in range(warmup):
            for kind in kinds.values():
                await _post_dispatch(client, kind.payloads[index % len(kind.payloads)], kind.field)
        if after_warmup is not None:
            after_warmup()
        for index in range(requests):
            for name in names if index % 2 == 0 else names[::-1]:
                kind = kinds[name]
                before = parse_stage_seconds((await client.get("/metrics")).text)
                outcome = await _post_dispatch(client, kind.payloads[index % len(kind.payloads)], kind.field)
                after = parse_stage_seconds((await client.get("/metrics")).text)
                outcomes[name].append((index, outcome))
                for stage, (seconds, count) in after.items():
                    seconds_before, count_before = before.get(stage, (0.0, 0.0))
                    total, observed = stages[name].get(stage, (0.0, 0.0))
                    stages[name][stage] = (total + seconds - seconds_before, observed + count - count_before)
    return {
        name: {
            "concurrency": 1,
            **_summary(
                outcomes[name], kinds[name].expected, sum(outcome.seconds for _, outcome in outcomes[name])
            ),
            "stage_mean_ms": {
                stage: round(seconds / count * 1000, 1)
                for stage, (seconds, count) in stages[name].items()
                if count > 0
            },
        }
        for name in names
    }


_STAGE_SERIES = re.compile(
    r'^palletreid_stage_duration_seconds_(sum|count)\{kind="dispatch",stage="(\w+)"\} (\S+)$', re.MULTILINE
)


def parse_stage_seconds(text: str) -> dict[str, tuple[float, float]]:
    """Per stage of dispatches, (seconds, observations) so far, from the service's Prometheus text."""
    totals: dict[str, dict[str, float]] = {}
    for series, stage, value in _STAGE_SERIES.findall(text):
        totals.setdefault(stage, {})[series] = float(value)
    return {stage: (values.get("sum", 0.0), values.get("count", 0.0)) for stage, values in totals.items()}


def identify_breakdown(
    database_url: str,
    embedder: Embedder,
    payloads: Sequence[Sequence[bytes]],
    queries: Mapping[str, Sequence[BlockAnalysis]],
    settings: Settings,
    config: MatchingConfig,
    *,
    repeats: int,
    vocabulary: VisualVocabulary | None = None,
    expected: Sequence[uuid.UUID] = (),
) -> dict[str, Any]:
    """Per-dispatch time of the database identification vs the model on the same six images.

    ``queries["known"]`` are dispatches of gallery pallets (query ``i`` shows ``expected[i]``),
    ``queries["unknown"]`` (optional) of pallets never enrolled, the word stage's worst case: the network's
    candidates settle nothing, so the word search runs and more candidates are checked. With a
    ``vocabulary`` (the queries carry its ``words``), each query is identified with and without them, back
    to back (alternating which goes first), so the word stage's cost is a ratio within one run; the words'
    encoding (which the service runs on its feature pool next to extraction) and the word search's own
    statements are timed too.
    ``identify_db`` is the known dispatches as the service runs them (with words when it has them).
    """
    with_words = vocabulary is not None
    modes = ("words", "no_words") if with_words else ("no_words",)
    engine = build_engine(database_url, pool_size=1)
    seconds: dict[str, dict[str, list[float]]] = {kind: {mode: [] for mode in modes} for kind in queries}
    try:
        factory = build_session_factory(engine)
        for kind, analyses in queries.items():
            for index in range(repeats):
                query = analyses[index % len(analyses)]
                variants = {"words": query, "no_words": replace(query, words=None)}
                for mode in modes if index % 2 == 0 else modes[::-1]:
                    with factory() as session:
                        started = time.perf_counter()
                        MatchingService(session, config).identify(
                            EventKind.DISPATCH, variants[mode], model_id=embedder.model_id
                        )
                        seconds[kind][mode].append(time.perf_counter() - started)
                        session.rollback()
    finally:
        engine.dispose()
    embed_seconds = []
    for index in range(repeats):
        blobs = payloads[index % len(payloads)]
        started = time.perf_counter()
        images = [decode_image(blob, max_pixels=settings.max_image_pixels, name="bench") for blob in blobs]
        embedder.embed(images, batch_size=settings.embed_batch_size)
        embed_seconds.append(time.perf_counter() - started)
    embed = latency_summary(embed_seconds)
    by_kind: dict[str, Any] = {}
    for kind, timings in seconds.items():
        figures: dict[str, Any] = {mode: latency_summary(values) for mode, values in timings.items()}
        if with_words:
            words_p50, no_words_p50 = figures["words"]["p50_ms"], figures["no_words"]["p50_ms"]
            figures["words_vs_no_words_p50"] = _ratio(words_p50, no_words_p50)
        figures["db_vs_forward_p50"] = _ratio(figures[modes[0]]["p50_ms"], embed["p50_ms"])
        by_kind[kind] = figures
    db = by_kind["known"][modes[0]]
    result: dict[str, Any] = {
        "top_k": config.top_k,
        "ef_search": config.ef_search,
        "words_ef_search": config.words_ef_search,
        "identify_db": db,
        "identify_db_by_kind": by_kind,
        "embed_six_blocks": embed,
        "bound_by": "network" if embed["p50_ms"] >= db["p50_ms"] else "database",
        "round_trips": round_trip_comparison(
            database_url, queries["known"], model_id=embedder.model_id, config=config, repeats=repeats
        ),
    }
    if vocabulary is not None:
        result["words"] = word_stage(
            database_url,
            vocabulary,
            queries,
            expected,
            model_id=embedder.model_id,
            config=config,
            repeats=repeats,
        )
    return result


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 2) if denominator else None


WORD_EF_SEARCH_VALUES: tuple[int, ...] = (20, 40, 80, 150)
"""``hnsw.ef_search`` values tried for the word k-NN besides the service's (below ``word_top_k`` a block
gets fewer than ``word_top_k`` neighbours)."""


def word_stage(
    database_url: str,
    vocabulary: VisualVocabulary,
    queries: Mapping[str, Sequence[BlockAnalysis]],
    expected: Sequence[uuid.UUID],
    *,
    model_id: str,
    config: MatchingConfig,
    repeats: int,
) -> dict[str, Any]:
    """The visual-word stage's parts: encoding six blocks' words, the word k-NN statement and the read of
    the shortlisted pallets' words, per dispatch kind; and, per ``hnsw.ef_search``, the k-NN's time and how
    often the true pallet of a known dispatch is among its word shortlist (what the stage exists to find).
    """
    geometry = config.geometry
    encode_seconds: list[float] = []
    for index in range(repeats):
        features = queries["known"][index % len(queries["known"])].features
        started = time.perf_counter()
        BlockWords.encode(vocabulary, features)
        encode_seconds.append(time.perf_counter() - started)
    engine = build_engine(database_url, pool_size=1)
    timings: dict[str, dict[str, list[float]]] = {kind: {"knn": [], "latest_words": []} for kind in queries}
    ef_values = sorted({*WORD_EF_SEARCH_VALUES, config.words_ef_search})
    sweep: dict[int, dict[str, list[float]]] = {ef: {"knn": [], "found": []} for ef in ef_values}
    try:
        with build_session_factory(engine)() as session:
            repository = FingerprintRepository(session)

            def search_words(words: BlockWords) -> list[list[StoredNeighbour]]:
                return repository.nearest_words_per_block(
                    words.per_block,
                    model_id=model_id,
                    vocabulary_id=words.vocabulary_id,
                    limit=geometry.word_top_k,
                )

            for kind, analyses in queries.items():
                repository.configure_search(ef_search=config.words_ef_search)
                for index in range(repeats):
                    pending = analyses[index % len(analyses)].words
                    assert pending is not None
                    words = pending.get()
                    started = time.perf_counter()
                    per_block = search_words(words)
                    searched = time.perf_counter()
                    repository.latest_words(
                        _word_shortlist(per_block, geometry.word_shortlist_size),
                        model_id=model_id,
                        vocabulary_id=words.vocabulary_id,
                    )
                    timings[kind]["knn"].append(searched - started)
                    timings[kind]["latest_words"].append(time.perf_counter() - searched)
            known = queries["known"]
            for ef in ef_values:
                repository.configure_search(ef_search=ef)
                for index in range(max(repeats, len(known))):
                    pending = known[index % len(known)].words
                    assert pending is not None
                    words = pending.get()
                    started = time.perf_counter()
                    per_block = search_words(words)
                    sweep[ef]["knn"].append(time.perf_counter() - started)
                    if expected and index < len(known):
                        shortlisted = _word_shortlist(per_block, geometry.word_shortlist_size)
                        sweep[ef]["found"].append(float(expected[index] in shortlisted))
            session.rollback()
    finally:
        engine.dispose()
    return {
        "word_top_k": geometry.word_top_k,
        "word_shortlist_size": geometry.word_shortlist_size,
        "word_candidates_checked": geometry.word_candidates_checked,
        "encode_six_blocks": latency_summary(encode_seconds),
        "by_kind": {
            kind: {part: latency_summary(values) for part, values in parts.items()}
            for kind, parts in timings.items()
        },
        "ef_sweep": [
            {
                "ef_search": ef,
                "knn": latency_summary(figures["knn"]),
                "true_pallet_shortlisted": (
                    round(float(np.mean(figures["found"])), 3) if figures["found"] else None
                ),
            }
            for ef, figures in sweep.items()
        ],
    }


def _word_shortlist(per_block: Sequence[Sequence[StoredNeighbour]], size: int) -> list[uuid.UUID]:
    """The pallets the service shortlists from the word k-NN (``voting.shortlist`` of its neighbours)."""
    return shortlist(
        [[Neighbour(pallet=n.pallet_id, similarity=n.similarity) for n in block] for block in per_block], size
    )


def round_trip_comparison(
    database_url: str,
    queries: Sequence[BlockAnalysis],
    *,
    model_id: str,
    config: MatchingConfig,
    repeats: int,
) -> dict[str, Any]:
    """The dispatch's reads one statement per block / per capture vs batched, interleaved in one session.

    Both forms run back to back on the same query (alternating which goes first), so a loaded machine
    slows both alike and the ratio stands even when the absolute times do not.
    """
    engine = build_engine(database_url, pool_size=1)
    timings: dict[str, list[float]] = {
        "knn_per_block": [],
        "knn_one_statement": [],
        "features_per_capture": [],
        "features_one_statement": [],
    }
    checked = config.geometry.candidates_checked
    try:
        with build_session_factory(engine)() as session:
            repository = FingerprintRepository(session)
            repository.configure_search(ef_search=config.ef_search)
            for index in range(repeats):
                fingerprints = queries[index % len(queries)].fingerprints
                per_block = repository.nearest_per_block(fingerprints, model_id=model_id, limit=config.top_k)
                pallets = list(dict.fromkeys(n.pallet_id for block in per_block for n in block))[:checked]
                captures = repository.latest_captures(pallets, model_id=model_id, per_pallet=1)
                events = [stored[0].event_id for stored in captures.values()]
                forms: list[tuple[str, Callable[[], object]]] = [
                    (
                        "knn_per_block",
                        partial(_knn_per_block, repository, fingerprints, model_id, config.top_k),
                    ),
                    (
                        "knn_one_statement",
                        partial(
                            repository.nearest_per_block, fingerprints, model_id=model_id, limit=config.top_k
                        ),
                    ),
                    ("features_per_capture", partial(_features_per_capture, repository, events, model_id)),
                    (
                        "features_one_statement",
                        partial(repository.captures_features, events, model_id=model_id, side_scale=False),
                    ),
                ]
                for name, run in forms if index % 2 == 0 else forms[::-1]:
                    started = time.perf_counter()
                    run()
                    timings[name].append(time.perf_counter() - started)
            session.rollback()
    finally:
        engine.dispose()
    summary: dict[str, Any] = {name: latency_summary(seconds) for name, seconds in timings.items()}
    summary["captures_read"] = checked
    for form in ("knn", "features"):
        batched = summary[f"{form}_one_statement"]["p50_ms"]
        separate = summary[f"{form}_per_block" if form == "knn" else f"{form}_per_capture"]["p50_ms"]
        summary[f"{form}_speedup_p50"] = round(separate / batched, 2) if batched else None
    return summary


def _knn_per_block(
    repository: FingerprintRepository, fingerprints: np.ndarray, model_id: str, limit: int
) -> list[list[StoredNeighbour]]:
    return [repository.nearest(vector, model_id=model_id, limit=limit) for vector in fingerprints]


def _features_per_capture(
    repository: FingerprintRepository, events: Sequence[int], model_id: str
) -> list[CaptureFeatures]:
    return [repository.capture_features(event_id, model_id=model_id, side_scale=False) for event_id in events]


def latency_targets(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """p50/p99 at concurrency 1 and the throughput bound at the largest measured gallery."""
    if not rows:
        return {}
    largest = max(rows, key=lambda row: row["pallets"])
    single = next((run for run in largest["runs"] if run["concurrency"] == 1), None)
    note = "" if largest["pallets"] >= TARGET_GALLERY else f" (target is for {TARGET_GALLERY} pallets)"
    targets: dict[str, dict[str, Any]] = {}
    if single is not None:
        targets["p50_ms_concurrency_1"] = {
            "pallets": largest["pallets"],
            "target": f"<= {P50_TARGET_MS:g}{note}",
            "value": single["p50_ms"],
            "met": single["p50_ms"] <= P50_TARGET_MS,
        }
        targets["p99_ms_concurrency_1"] = {
            "pallets": largest["pallets"],
            "target": f"<= {P99_TARGET_MS:g}{note}",
            "value": single["p99_ms"],
            "met": single["p99_ms"] <= P99_TARGET_MS,
        }
    targets["bound_by_network"] = {
        "pallets": largest["pallets"],
        "target": "network forward, not database" + note,
        "value": largest["breakdown"]["bound_by"],
        "met": largest["breakdown"]["bound_by"] == "network",
    }
    return targets
