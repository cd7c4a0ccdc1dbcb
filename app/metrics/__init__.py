"""Prometheus metrics: requests and latency, decisions, reviews, the impostor tail, webhook backlog, the word
indexer's backlog and lag."""
