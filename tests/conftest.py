"""Suite-wide guard: never test a stale compiled core (pipeline/native.py)."""

from __future__ import annotations

import pytest

from pipeline.native import stale_modules


def pytest_configure(config: pytest.Config) -> None:
    stale = stale_modules()
    if stale:
        raise pytest.UsageError(
            f"compiled modules older than their sources: {', '.join(stale)}; "
            "run `make native` (or `make clean-native` for plain Python)"
        )
