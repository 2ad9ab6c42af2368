"""pytest plugin: run the suite against the plain-Python core even where the
compiled one is built (``pytest -p tests.pure``; ``make test`` runs the unit
tests both ways). Loaded with ``-p``, it is imported before any conftest
imports the core."""

from pipeline.native import prefer_sources

prefer_sources()
