"""Search quality and cost: pgvector HNSW vs exact search on the same gallery; FAISS as the in-memory bound.

Ground truth is exact cosine search in numpy over the very values stored (float16 ``halfvec`` rows, queries
rounded to float16 as pgvector casts them), so recall measures the index alone. Queries go one at a time, as
the service sends them, with the service's session settings (``hnsw.ef_search``, ``relaxed_order`` iterative
scan, ``model_id`` filter): the service's table is searched with the service's own k-NN statement
(``app.matching.repository.nearest_fingerprints_query``), compiled once and run through psycopg.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import psycopg
from pgvector import HalfVector, Vector
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect

from app.matching.repository import hnsw_search_settings, nearest_fingerprints_query
from bench.gallery import Gallery
from bench.timing import latency_summary

logger = logging.getLogger(__name__)

RECALL_TARGET = 0.99
GROUND_TRUTH_CHUNK_ROWS = 65_536
EF_CONSTRUCTION = 64
"""pgvector's default, also what the service's migration uses."""


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids (row + 1) of the ``k`` most cosine-similar rows of unit ``vectors`` for each query."""
    queries32 = queries.astype(np.float16).astype(np.float32)
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.empty((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), GROUND_TRUTH_CHUNK_ROWS):
        chunk = vectors[start : start + GROUND_TRUTH_CHUNK_ROWS].astype(np.float32)
        scores = np.concatenate([best_scores, queries32 @ chunk.T], axis=1)
        ids = np.concatenate(
            [
                best_ids,
                np.broadcast_to(np.arange(start + 1, start + len(chunk) + 1), (len(queries), len(chunk))),
            ],
            axis=1,
        )
        keep = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        best_scores = np.take_along_axis(scores, keep, axis=1)
        best_ids = np.take_along_axis(ids, keep, axis=1)
    return best_ids


def recall(found: Sequence[Sequence[int]], truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(
        np.mean([len(set(ids) & set(row.tolist())) / k for ids, row in zip(found, truth, strict=True)])
    )


def _timed_queries(
    search: Callable[[np.ndarray], list[int]], queries: np.ndarray
) -> tuple[list[list[int]], list[float]]:
    results, seconds = [], []
    for query in queries:
        started = time.perf_counter()
        results.append(search(query))
        seconds.append(time.perf_counter() - started)
    return results, seconds


class PgSearcher:
    """k-NN through psycopg, one query at a time, with the service's HNSW session settings.

    ``sql`` returns ids first and takes the query vector as ``%(query)s``; ``params`` holds the other values.
    """

    def __init__(self, connection: psycopg.Connection[Any], *, sql: str, params: dict[str, Any]) -> None:
        self._connection = connection
        self._sql = sql
        self._fixed_params = params
        self.vector_type: Callable[[np.ndarray], Any] = HalfVector

    @classmethod
    def for_table(cls, connection: psycopg.Connection[Any], *, table: str, k: int) -> PgSearcher:
        """Plain k-NN over a benchmark table (``id``, ``embedding``)."""
        sql = f"SELECT id FROM {table} ORDER BY embedding <=> %(query)s LIMIT %(k)s"
        return cls(connection, sql=sql, params={"k": k})

    @classmethod
    def for_service(
        cls, connection: psycopg.Connection[Any], *, model_id: str, dim: int, k: int
    ) -> PgSearcher:
        """The service's own k-NN statement over its ``fingerprints`` table (``model_id`` inline, as the
        service sends it, so that its partial HNSW index applies)."""
        placeholder = np.zeros(dim, dtype=np.float32)
        compiled = nearest_fingerprints_query(placeholder, model_id=model_id, limit=k).compile(
            dialect=psycopg_dialect.dialect(), compile_kwargs={"render_postcompile": True}
        )
        (query_name,) = [name for name, value in compiled.params.items() if value is placeholder]
        params = {name: value for name, value in compiled.params.items() if name != query_name}
        return cls(connection, sql=str(compiled).replace(f"%({query_name})s", "%(query)s"), params=params)

    def configure(self, *, ef_search: int, exact: bool = False) -> None:
        for name, value in hnsw_search_settings(ef_search).items():
            self._connection.execute("SELECT set_config(%s, %s, false)", (name, value))
        self._connection.execute(f"SET enable_indexscan = {'off' if exact else 'on'}")

    def uses_index(self, query: np.ndarray) -> bool:
        plan = self._connection.execute(f"EXPLAIN {self._sql}", self._params(query)).fetchall()
        return any("hnsw" in row[0].lower() or "Index Scan" in row[0] for row in plan)

    def search(self, query: np.ndarray) -> list[int]:
        return [row[0] for row in self._connection.execute(self._sql, self._params(query), prepare=True)]

    def _params(self, query: np.ndarray) -> dict[str, Any]:
        return {**self._fixed_params, "query": self.vector_type(query)}


def _ef_sweep(
    searcher: PgSearcher, queries: np.ndarray, truth: np.ndarray, ef_values: Sequence[int]
) -> list[dict[str, Any]]:
    searcher.configure(ef_search=max(ef_values))
    _timed_queries(searcher.search, queries)  # warm the index pages
    rows = []
    for ef in sorted(ef_values):
        searcher.configure(ef_search=ef)
        found, seconds = _timed_queries(searcher.search, queries)
        rows.append({"ef_search": ef, "recall": round(recall(found, truth), 4), **latency_summary(seconds)})
    return rows


def pgvector_search(
    gallery: Gallery, queries: np.ndarray, truth: np.ndarray, *, ef_values: Sequence[int], exact_queries: int
) -> dict[str, Any]:
    """HNSW recall/time per ``ef_search`` on the service's table; PostgreSQL's exact scan for reference."""
    k = truth.shape[1]
    with gallery.connect(autocommit=True) as connection:
        searcher = PgSearcher.for_service(connection, model_id=gallery.model_id, dim=gallery.dim, k=k)
        searcher.configure(ef_search=max(ef_values))
        uses_index = searcher.uses_index(queries[0])
        sweep = _ef_sweep(searcher, queries, truth, ef_values)
        searcher.configure(ef_search=max(ef_values), exact=True)
        exact_found, exact_seconds = _timed_queries(searcher.search, queries[:exact_queries])
    return {
        "plan_uses_hnsw": uses_index,
        "ef_sweep": sweep,
        "exact_scan": {
            "queries": len(exact_found),
            "agreement_with_numpy": round(recall(exact_found, truth[: len(exact_found)]), 4),
            **latency_summary(exact_seconds),
        },
    }


def faiss_search(
    vectors: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    *,
    ef_values: Sequence[int],
    m: int,
    with_hnsw: bool,
) -> dict[str, Any]:
    """FAISS flat (exact) and HNSW (same ``m``, ``ef_construction``) on the same vectors, one query a time."""
    try:
        import faiss
    except ImportError:
        logger.warning(
            "faiss is not installed (pip install 'palletreid[bench]'); skipping the FAISS comparison"
        )
        return {"available": False}
    data = vectors.astype(np.float32)
    queries32 = queries.astype(np.float16).astype(np.float32)
    k = truth.shape[1]

    def searcher(index: Any) -> Callable[[np.ndarray], list[int]]:
        def search(query: np.ndarray) -> list[int]:
            _, labels = index.search(query[None, :], k)
            return [int(label) + 1 for label in labels[0]]

        return search

    results: dict[str, Any] = {"available": True, "threads": faiss.omp_get_max_threads()}
    started = time.perf_counter()
    flat = faiss.IndexFlatIP(data.shape[1])
    flat.add(data)
    flat_build = time.perf_counter() - started
    found, seconds = _timed_queries(searcher(flat), queries32)
    results["flat"] = {
        "build_s": round(flat_build, 3),
        "recall": round(recall(found, truth), 4),
        **latency_summary(seconds),
    }
    del flat
    if not with_hnsw:
        return results

    logger.info("building a FAISS HNSW index over %d vectors", len(data))
    started = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(data.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = EF_CONSTRUCTION
    hnsw.add(data)
    hnsw_build = time.perf_counter() - started
    sweep = []
    for ef in sorted(ef_values):
        hnsw.hnsw.efSearch = ef
        found, seconds = _timed_queries(searcher(hnsw), queries32)
        sweep.append({"ef_search": ef, "recall": round(recall(found, truth), 4), **latency_summary(seconds)})
    results["hnsw"] = {
        "m": m,
        "ef_construction": EF_CONSTRUCTION,
        "build_s": round(hnsw_build, 2),
        "ef_sweep": sweep,
    }
    return results


def index_variants(
    gallery: Gallery,
    queries: np.ndarray,
    *,
    pallets: int,
    k: int,
    m_values: Sequence[int],
    ef_values: Sequence[int],
) -> dict[str, Any]:
    """``halfvec`` with each HNSW ``m`` and ``vector`` (float32) with ``m`` = 16, on the first ``pallets``."""
    rows = min(pallets * 6, len(gallery.vectors))
    vectors = gallery.vectors[:rows]
    truth = exact_top_k(vectors, queries, k)
    studies = []
    with gallery.connect(autocommit=True) as connection:
        memory_mb = max(64, math.ceil(rows * 2 * (gallery.dim * 4 + 32 * 2 * 8) / 2**20))
        connection.execute(f"SET maintenance_work_mem = '{memory_mb}MB'")
        for column_type, opclass, wrap, type_m_values in (
            ("halfvec", "halfvec_cosine_ops", HalfVector, m_values),
            ("vector", "vector_cosine_ops", Vector, (16,)),
        ):
            table = f"bench_{column_type}"
            connection.execute(f"DROP TABLE IF EXISTS {table}")
            connection.execute(
                f"CREATE TABLE {table} (id bigint PRIMARY KEY, embedding {column_type}({gallery.dim}))"
            )
            with (
                connection.cursor() as cursor,
                cursor.copy(f"COPY {table} (id, embedding) FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.set_types(["int8", column_type])
                for row, vector in enumerate(vectors):
                    copy.write_row((row + 1, wrap(vector.astype(np.float32))))
            connection.execute(f"VACUUM ANALYZE {table}")
            heap_bytes = connection.execute("SELECT pg_relation_size(%s)", (table,)).fetchone()
            for m in type_m_values:
                index = f"{table}_m{m}"
                logger.info("index variant: %s, m=%d over %d rows", column_type, m, rows)
                started = time.perf_counter()
                connection.execute(
                    f"CREATE INDEX {index} ON {table} USING hnsw (embedding {opclass}) "
                    f"WITH (m = {int(m)}, ef_construction = {EF_CONSTRUCTION})"
                )
                build_s = time.perf_counter() - started
                index_bytes = connection.execute("SELECT pg_relation_size(%s)", (index,)).fetchone()
                searcher = PgSearcher.for_table(connection, table=table, k=k)
                searcher.vector_type = wrap
                studies.append(
                    {
                        "type": column_type,
                        "m": m,
                        "build_s": round(build_s, 2),
                        "index_bytes": index_bytes[0] if index_bytes else None,
                        "heap_bytes": heap_bytes[0] if heap_bytes else None,
                        "ef_sweep": _ef_sweep(searcher, queries, truth, ef_values),
                    }
                )
                connection.execute(f"DROP INDEX {index}")
            connection.execute(f"DROP TABLE {table}")
    return {
        "pallets": rows // 6,
        "fingerprints": rows,
        "ef_construction": EF_CONSTRUCTION,
        "variants": studies,
    }


def run_search(
    gallery: Gallery,
    queries: np.ndarray,
    *,
    k: int,
    ef_values: Sequence[int],
    exact_queries: int,
    with_faiss: bool,
    faiss_m: int,
    faiss_hnsw: bool,
) -> dict[str, Any]:
    """All search measurements at the gallery's current size."""
    started = time.perf_counter()
    truth = exact_top_k(gallery.vectors, queries, k)
    ground_truth_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "pallets": gallery.pallets,
        "fingerprints": len(gallery.vectors),
        "queries": len(queries),
        "k": k,
        "numpy_exact_batched_ms_per_query": round(1000 * ground_truth_s / len(queries), 3),
        "pgvector": pgvector_search(
            gallery, queries, truth, ef_values=ef_values, exact_queries=exact_queries
        ),
    }
    if with_faiss:
        # A child process: FAISS brings its own OpenMP runtime, which slows torch down in the same process.
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            result["faiss"] = pool.submit(
                faiss_search,
                gallery.vectors,
                queries,
                truth,
                ef_values=ef_values,
                m=faiss_m,
                with_hnsw=faiss_hnsw,
            ).result()
    return result
