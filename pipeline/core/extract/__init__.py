"""Extraction rules: pure functions from an AccessRecord to enrichment values."""
