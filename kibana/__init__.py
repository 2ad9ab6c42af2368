"""Kibana saved objects (package data: grayscope.ndjson) and their generator (build.py)."""
