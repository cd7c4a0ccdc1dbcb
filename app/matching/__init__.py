"""Matching: identify pallets from block fingerprints at receipt and dispatch."""
