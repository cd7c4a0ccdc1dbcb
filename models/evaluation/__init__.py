"""Offline evaluation of a checkpoint: rank metrics, open-set protocol, threshold calibration, reports, plots.

The service never imports this package.
"""
