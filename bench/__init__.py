"""``palletreid bench``: measured throughput, latency, search quality and growth of the whole service.

Sections (each optional): ``embedding`` (service embedding path vs bare network forward), ``latency``
(end-to-end dispatches over HTTP against seeded galleries), ``search`` (HNSW recall and cost vs exact search,
pgvector vs FAISS) and ``growth`` (sizes and latency extrapolated past the measured galleries).
"""
