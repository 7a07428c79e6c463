"""Measures of a result: metrics, per-layer metrics, evaluation against references."""
