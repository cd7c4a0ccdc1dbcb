"""Prometheus metrics: requests and latency, decisions, reviews, the impostor tail, webhook backlog."""
