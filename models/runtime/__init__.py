"""What the service imports from ``models``: model artefact, inference, image loading, the decision rule.

Nothing here imports training, evaluation, synthetic data, plotting or the service; those depend on this, not
the other way round (see docs/architecture.md).
"""
